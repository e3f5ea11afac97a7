//! What the subcommands share: the machine line, the flags of the multicast measurements,
//! verdicts, delivery checks, exit codes, and starting the relay.

use std::process::ExitCode;

use benches::measure::median;
use benches::relay::{self, RelayProcess, RunResult};
use clap::Args;

/// The error of a subcommand's run.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// The flags of the multicast measurements (`bus`, `multicast`).
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Interleaved rounds, each system once per round; the figures are medians over them
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rounds: u32,
    /// Events of each max-throughput run (it also stops after 10 s)
    #[arg(long, value_name = "N", default_value_t = relay::THROUGHPUT_EVENTS, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) events: u64,
    /// Seconds of each paced run (20,000 events/s), whose latencies are reported
    #[arg(long, value_name = "S", default_value_t = relay::LATENCY_RUN.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) seconds: u64,
    /// Exit with code 1 when a target is missed (a failed delivery check always does)
    #[arg(long)]
    pub(crate) check: bool,
}

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

/// What a subcommand's run concluded beyond its figures: the delivery checks that failed and
/// the targets missed, each described in a sentence.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Failed delivery checks: always a failure.
    pub(crate) failed_checks: Vec<String>,
    /// Missed targets: a failure with `--check`.
    pub(crate) missed_targets: Vec<String>,
}

impl Outcome {
    /// Prints and records target `what` (`measured` against the bar), met or not.
    pub(crate) fn target(&mut self, what: &str, measured: f64, met: bool) {
        println!("target: {what}: {measured:.3} -> {}", verdict(met));
        if !met {
            self.missed_targets.push(format!("{what}: {measured:.3}"));
        }
    }

    /// Records a failed delivery check unless `run` delivered every event to every subscriber
    /// exactly once, in order, with nothing reported missed or rejected.
    pub(crate) fn check_run(&mut self, label: &str, run: &RunResult) {
        if !run.is_exact() {
            let c = run.counts();
            self.failed_checks.push(format!(
                "{label}: lost {}, duplicated {}, reordered {}, stray {}, reported missed {}, rejected {}",
                c.lost, c.duplicated, c.reordered, c.stray, run.missed, run.rejected
            ));
        }
    }
}

/// The exit code of subcommand `name`'s run: failure on an error or a failed delivery check,
/// and on a missed target when `check`; each reason printed on stderr.
pub(crate) fn conclude(name: &str, result: Result<Outcome, Error>, check: bool) -> ExitCode {
    match result {
        Ok(o) => {
            for f in &o.failed_checks {
                eprintln!("compare {name}: delivery check failed: {f}");
            }
            if check {
                for t in &o.missed_targets {
                    eprintln!("compare {name}: target missed (--check): {t}");
                }
            }
            if o.failed_checks.is_empty() && (!check || o.missed_targets.is_empty()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
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

/// A latency quantile for a table: `-` without samples.
pub(crate) fn latency(run: &RunResult, q: f64) -> String {
    if run.latencies_ns.is_empty() {
        "-".to_owned()
    } else {
        format!("{:.1}", run.latency_us(q))
    }
}

/// The median of the values `f` gives for `items`; NaN for none.
pub(crate) fn median_of<T>(items: &[T], f: impl Fn(&T) -> f64) -> f64 {
    let mut values: Vec<f64> = items.iter().map(f).collect();
    if values.is_empty() {
        f64::NAN
    } else {
        median(&mut values)
    }
}

/// Ratios for a line: `1.234, 1.456`.
pub(crate) fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}
