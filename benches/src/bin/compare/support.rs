//! What the subcommands share: the machine line, verdicts, exit codes, and starting the relay.

use std::process::ExitCode;

use benches::relay::RelayProcess;

/// The error of a subcommand's run.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// Prints the cores and the load average: other processes running skew every figure, the
/// parallel speed-up above all.
pub(crate) fn print_machine(cores: usize) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    println!("cores available: {cores}; 1-minute load average before the run: {load}");
    println!();
}

/// How a target line ends.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// The exit code of subcommand `name`'s run, its error printed.
pub(crate) fn report(name: &str, result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the relay as a child process and says where it runs.
pub(crate) fn start_relay() -> Result<RelayProcess, Error> {
    let server = RelayProcess::spawn()?;
    println!(
        "relay: pid {} on {} (child process, 2 tokio workers); load: 2 tokio workers",
        server.pid(),
        server.addr()
    );
    Ok(server)
}
