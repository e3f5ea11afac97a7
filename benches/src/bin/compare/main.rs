//! `compare`: quick comparisons of interrole against its peers, timed with `std::time::Instant`
//! (warm-up, interleaved repetitions, median), for a readable table and one machine-readable
//! last line.
//!
//! ```text
//! cargo run --release -p benches --bin compare -- fanout
//! cargo run --release -p benches --bin compare -- bus
//! cargo run --release -p benches --bin compare -- multicast
//! cargo run --release -p benches --bin compare -- sweep --csv target/sweep.csv
//! cargo run --release -p benches --bin compare -- scale
//! cargo run --release -p benches --bin compare -- scale --subscribers 2000 --check
//! cargo run --release -p benches --bin compare -- recovery
//! ```
//!
//! `bus` runs a `Bus` per publisher and subscriber over the relay (a child process: this
//! executable's hidden `relay-server` subcommand) and over nats-server (a child process), and raw
//! async-nats on nats-server, in interleaved rounds. `multicast` and `scale` start the relay in a
//! child process on 127.0.0.1 and kill it at the end; `multicast` then does the same with
//! `nats-server` (skipped, and said so, when it is not installed), round after round. `sweep` does
//! the same for each subscriber count of [`relay::SWEEP_SUBSCRIBERS`] (max throughput only) and
//! writes a CSV. The brokers of `bus`, `multicast` and `sweep` are pinned to the same CPUs
//! ([`benches::cpu`]).
//!
//! Every subcommand exits with code 1 when a delivery check fails (an event lost, duplicated or
//! out of order) and, with `--check`, when a target is missed.
//!
//! One module per subcommand; `broker` runs the relay and nats-server in turn for `multicast`
//! and `sweep`; `support` holds what they all share.

mod broker;
mod bus;
mod fanout;
mod multicast;
mod recovery;
mod scale;
mod support;
mod sweep;

use std::path::PathBuf;
use std::process::ExitCode;

use benches::relay;
use clap::{Parser, Subcommand};

use crate::support::RunArgs;

/// Quick comparisons of interrole against its peers.
#[derive(Debug, Parser)]
#[command(name = "compare", arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cheap fan-out vs tokio broadcast and crossbeam; heavy observers, parallel vs sequential
    Fanout {
        /// Exit with code 1 when a target is missed
        #[arg(long)]
        check: bool,
    },
    /// A Bus over the relay and over NATS against raw async-nats (child processes): 1
    /// publisher, 20 subscribers, typed events, every delivery checked; max throughput, paced
    /// latency
    Bus(RunArgs),
    /// Relay, then NATS (child processes): 1 publisher, 20 subscribers; max throughput, paced
    /// latency
    Multicast(RunArgs),
    /// Relay, then NATS: 1 publisher, 1 to 100 subscribers, max throughput each
    Sweep {
        /// Where to write the CSV
        #[arg(long, value_name = "PATH", default_value = sweep::SWEEP_CSV)]
        csv: PathBuf,
        /// Interleaved rounds (relay, nats, relay, ...); the figures are medians over them
        #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// Exit with code 1 when a target is missed
        #[arg(long)]
        check: bool,
    },
    /// Relay (child process): idle subscribers; memory each, publish-to-last latency
    Scale {
        /// Idle subscribers
        #[arg(long, value_name = "N", default_value_t = relay::SCALE_SUBSCRIBERS, value_parser = subscribers)]
        subscribers: usize,
        /// Exit with code 1 when over the memory target per idle subscriber
        #[arg(long)]
        check: bool,
    },
    /// Relay killed and restarted; a NATS cluster node killed: until every bus is back and
    /// events flow
    Recovery {
        /// Accepted for every subcommand; recovery has no target (its failures always exit 1)
        #[arg(long)]
        check: bool,
    },
    /// The relay server that `multicast`, `sweep`, `scale` and `recovery` start as a child
    /// process (`--listen ADDR --sas-key NAME=KEY`, read by `relay::serve`).
    #[command(hide = true, disable_help_flag = true)]
    RelayServer {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// A `--subscribers` value: 1 to [`relay::SCALE_MAX_SUBSCRIBERS`].
fn subscribers(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=relay::SCALE_MAX_SUBSCRIBERS).contains(&n) => Ok(n),
        _ => Err(format!("takes 1 to {}", relay::SCALE_MAX_SUBSCRIBERS)),
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Fanout { check } => fanout::fanout(check),
        Command::Bus(args) => bus::bus(&args),
        Command::Multicast(args) => multicast::multicast(&args),
        Command::Sweep { csv, rounds, check } => sweep::sweep(&csv, rounds, check),
        Command::Scale { subscribers, check } => scale::scale(subscribers, check),
        Command::Recovery { check } => recovery::recovery(check),
        Command::RelayServer { args } => match relay::serve(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("compare relay-server: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
