//! `interrole`: the interrole command line, on an interrole relay (`--relay URL --key NAME=KEY`)
//! or NATS (`--nats URL`).
//!
//! - `interrole tail [--json] [--count N]`: every event on the topic, as it arrives;
//! - `interrole publish --tag TAG --json JSON [--count N]`: an event, with the JSON codec;
//! - `interrole request --to INSTANCE --tag TAG --json JSON [--timeout 2s]`: the reply;
//! - `interrole bench --events N --subscribers S [--size BYTES]`: a publisher and S subscriber
//!   buses in this process, every delivery checked;
//! - `interrole token --key-name NAME --key KEY --resource URL [--ttl 1h]`: a shared access
//!   signature, as `interrole-relay token` prints it.
//!
//! Every failure is one line on standard error, `interrole: ...`; the exit status is 2 for a
//! usage error (as clap's), 1 for the rest (and for a bench that lost or duplicated anything).
//! `docs/operations.md` ("Command line") lists every option.

mod args;
mod bench;
mod connect;
mod error;
mod format;
mod send;
mod tail;
mod tally;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use interrole_relay::sas::SharedAccessSignature;

use crate::args::{Cli, Command, ConnectionArgs};
use crate::connect::Endpoint;
use crate::error::CliError;

/// The exit status of a usage error, as clap's.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    match run(cli) {
        Ok(code) => code,
        // `interrole tail | head`: the reader has gone, which is not a failure.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interrole: {}", one_line(&e));
            if e.is_usage() {
                ExitCode::from(USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Help and version as clap prints them; any other parse error as one line, exit status 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.use_stderr() {
            ExitCode::from(USAGE)
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("interrole: {first} (see --help)");
    ExitCode::from(USAGE)
}

/// An error and its sources on one line, joined with `: ` where a source adds to the message.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text.replace(['\n', '\r'], " ")
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let Cli {
        connection,
        command,
    } = cli;
    match command {
        Command::Token {
            key_name,
            key,
            resource,
            ttl,
        } => {
            let token = SharedAccessSignature::sign_for(&key_name, &key, &resource, ttl);
            writeln!(std::io::stdout(), "{token}")?;
        }
        Command::Tail { json, count } => {
            let (endpoint, runtime) = setup(&connection)?;
            runtime.block_on(tail::run(&endpoint, json, count))?;
        }
        Command::Publish { tag, json, count } => {
            let (endpoint, runtime) = setup(&connection)?;
            runtime.block_on(send::publish(&endpoint, &tag, &json, count))?;
        }
        Command::Request {
            to,
            tag,
            json,
            timeout,
        } => {
            let (endpoint, runtime) = setup(&connection)?;
            runtime.block_on(send::request(&endpoint, &to, &tag, &json, timeout))?;
        }
        Command::Bench(args) => {
            let (endpoint, runtime) = setup(&connection)?;
            let report = runtime.block_on(bench::run(&endpoint, &args))?;
            let mut out = std::io::stdout().lock();
            report.print(&mut out)?;
            out.flush()?;
            if !report.is_exact() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The endpoint the global options name, and a runtime for the buses.
fn setup(connection: &ConnectionArgs) -> Result<(Endpoint, tokio::runtime::Runtime), CliError> {
    let endpoint = Endpoint::from_args(connection)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    Ok((endpoint, runtime))
}
