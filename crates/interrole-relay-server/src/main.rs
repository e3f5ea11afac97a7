//! `interrole-relay`: the interrole relay server.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use interrole_relay::sas::{SharedAccessSignature, parse_duration};
use interrole_relay_server::{Config, DEFAULT_CONFIG_TOML, KeyConfig, Server, TlsConfig};

/// The interrole relay: multicast publish/subscribe over WebSockets, Azure Relay style.
#[derive(Debug, Parser)]
#[command(name = "interrole-relay", version)]
struct Cli {
    /// A TOML configuration file (see `generate-config`).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The address to listen on (overrides the file).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// A shared access key, `NAME=KEY[:rights][@/scope]`; rights are listen,send,manage
    /// (default manage). Repeatable; added to the file's keys.
    #[arg(long = "sas-key", value_name = "NAME=KEY[:rights][@/scope]")]
    sas_keys: Vec<String>,
    /// Serve TLS with this certificate chain (PEM; overrides the file's `[tls]`, needs
    /// `--tls-key`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM; needs `--tls-cert`).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the commented default configuration.
    GenerateConfig,
    /// Prints a shared access signature token.
    Token {
        /// The key's name.
        #[arg(long)]
        key_name: String,
        /// The key.
        #[arg(long)]
        key: String,
        /// The resource, e.g. `https://relay.example/orders`.
        #[arg(long)]
        resource: String,
        /// How long the token is valid: `90s`, `30m`, `1h`, `7d`, or seconds.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(cli: &Cli) -> Result<Config, Box<dyn std::error::Error + Send + Sync>> {
    let mut config = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        config.tls = Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    for k in &cli.sas_keys {
        let key = KeyConfig::parse_flag(k).map_err(|e| format!("--sas-key: {e}"))?;
        config.keys.retain(|old| old.name != key.name);
        config.keys.push(key);
    }
    config.key_set()?;
    Ok(config)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::GenerateConfig) => {
            print!("{DEFAULT_CONFIG_TOML}");
            return std::process::ExitCode::SUCCESS;
        }
        Some(Command::Token {
            key_name,
            key,
            resource,
            ttl,
        }) => {
            let token = SharedAccessSignature::sign_for(key_name, key, resource, *ttl);
            println!("{token}");
            return std::process::ExitCode::SUCCESS;
        }
        None => {}
    }
    init_tracing(cli.verbose);
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("interrole-relay: {}", one_line(&*e));
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("interrole-relay: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interrole-relay: {}", one_line(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its sources on one line, joined with `: ` (each error's message leaves its
/// source out).
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if config.keys.is_empty() {
        tracing::warn!("no --sas-key configured: every multicast handshake will be refused (401)");
    }
    let server = Server::bind(config).await?;
    // Listening for signals before saying it listens: a SIGTERM sent as soon as a script has read
    // the line below shuts the relay down instead of killing it.
    let signalled = shutdown_signal();
    // Printed on stdout so that scripts and tests can find an ephemeral port.
    println!("listening on {}", server.local_addr());
    tracing::info!(addr = %server.local_addr(), "relay started");
    let handle = server.shutdown_handle();
    tokio::spawn(async move {
        signalled.await;
        tracing::info!("signal received, shutting down");
        handle.shutdown();
    });
    server.wait().await;
    tracing::info!("relay stopped");
    Ok(())
}

/// SIGTERM or SIGINT, listened for from this call on (the handlers are installed before the
/// future is first polled).
#[cfg(unix)]
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}

/// Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
