//! `compare`: quick comparisons of interrole against its peers, timed with `std::time::Instant`
//! (warm-up, interleaved repetitions, median), for a readable table and one machine-readable
//! last line.
//!
//! ```text
//! cargo run --release -p benches --bin compare -- fanout
//! ```

use std::process::ExitCode;
use std::time::Duration;

use benches::fanout::InterroleFanout;
use benches::fanout::{Fanout, System};
use benches::heavy::{self, heavy_fanout};
use benches::measure::{calls_for, median, ns_per_call};
use benches::{FANOUT_SIZES, TARGET_N, TARGET_RATIO_VS_TOKIO, TARGET_SPEEDUP_PER_CORE};
use interrole::Dispatch;

/// One subcommand: its name, a one-line description, and what it runs.
struct Command {
    name: &'static str,
    about: &'static str,
    run: fn() -> ExitCode,
}

/// Every subcommand. Later ones (multicast, scale, recovery) go here.
const COMMANDS: &[Command] = &[Command {
    name: "fanout",
    about: "cheap fan-out vs tokio broadcast and crossbeam; heavy observers, parallel vs sequential",
    run: fanout,
}];

fn usage() -> String {
    let mut s = String::from("usage: compare <command>\n\ncommands:\n");
    for c in COMMANDS {
        s.push_str(&format!("  {:<10} {}\n", c.name, c.about));
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("help" | "-h" | "--help") => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        Some(name) => match COMMANDS.iter().find(|c| c.name == name) {
            Some(command) if args.len() == 1 => (command.run)(),
            Some(_) => {
                eprintln!("compare {name}: unexpected arguments {:?}\n", &args[1..]);
                eprint!("{}", usage());
                ExitCode::from(2)
            }
            None => {
                eprintln!("compare: unknown command {name:?}\n");
                eprint!("{}", usage());
                ExitCode::from(2)
            }
        },
        None => {
            eprint!("{}", usage());
            ExitCode::from(2)
        }
    }
}

/// Repetitions of each cheap fan-out measurement (interleaved across the systems).
const FANOUT_REPS: usize = 15;
/// Time per repetition of a cheap fan-out measurement.
const FANOUT_BATCH: Duration = Duration::from_millis(20);
/// Repetitions of each heavy-observer measurement (interleaved across the modes).
const HEAVY_REPS: usize = 21;
/// Publishes per repetition of a heavy-observer measurement.
const HEAVY_BATCH: u64 = 25;

fn fanout() -> ExitCode {
    let cores = interrole::pool_threads();
    print_machine(cores);
    println!(
        "== cheap fan-out: one publish to N observers that each bump an atomic, one thread =="
    );
    println!(
        "   median of {FANOUT_REPS} interleaved repetitions of ~{} ms each; ns per delivery = ns per publish / N",
        FANOUT_BATCH.as_millis()
    );
    println!();
    for header in [
        [
            "N",
            "interrole",
            "tokio",
            "crossbeam",
            "interrole",
            "tokio",
            "crossbeam",
            "vs tokio",
            "vs xbeam",
            "hub only",
        ],
        [
            "",
            "ns/publish",
            "ns/publish",
            "ns/publish",
            "ns/deliv",
            "ns/deliv",
            "ns/deliv",
            "ratio",
            "ratio",
            "ns/deliv",
        ],
    ] {
        let [n, a, b, c, d, e, f, g, h, i] = header;
        println!(
            "{n:>4} | {a:>11} {b:>11} {c:>11} | {d:>10} {e:>10} {f:>10} | {g:>8} {h:>8} | {i:>10}"
        );
    }
    println!("{}", "-".repeat(112));
    let mut ratio_at_target = f64::NAN;
    for n in FANOUT_SIZES {
        let [ours, tokio, xbeam, hub] = measure_fanout(n);
        let per = |x: f64| x / n as f64;
        let ratio_tokio = ours / tokio;
        let ratio_xbeam = ours / xbeam;
        if n == TARGET_N {
            ratio_at_target = ratio_tokio;
        }
        println!(
            "{n:>4} | {ours:>11.1} {tokio:>11.1} {xbeam:>11.1} | {:>10.2} {:>10.2} {:>10.2} | {ratio_tokio:>8.3} {ratio_xbeam:>8.3} | {:>10.2}",
            per(ours),
            per(tokio),
            per(xbeam),
            per(hub),
        );
    }
    println!();
    println!(
        "tokio = tokio::sync::broadcast; crossbeam = one crossbeam channel per subscriber; ratio = interrole / peer"
    );
    println!(
        "hub only (not a peer): Hub::publish of a prebuilt envelope to raw observers: no bus, no envelope, no typed adapter"
    );
    println!();
    println!(
        "target: interrole ns/delivery <= {TARGET_RATIO_VS_TOKIO} x tokio broadcast's at N = {TARGET_N}: ratio {ratio_at_target:.3} -> {}",
        verdict(ratio_at_target <= TARGET_RATIO_VS_TOKIO)
    );
    println!();

    let (speedup, cores_line) = heavy_observers(cores);
    println!();
    println!("{cores_line}");
    println!(
        "fanout n={TARGET_N} ratio_vs_tokio_broadcast={ratio_at_target:.3} parallel_speedup={speedup:.3} cores={cores}"
    );
    ExitCode::SUCCESS
}

/// Median ns per publish with `n` receivers, for each of [`System::ALL`], in that order.
fn measure_fanout(n: usize) -> [f64; 4] {
    let mut fixtures: Vec<Box<dyn Fanout>> = System::ALL.iter().map(|s| s.fixture(n)).collect();
    let calls: Vec<u64> = fixtures
        .iter_mut()
        .map(|f| calls_for(FANOUT_BATCH, Duration::from_millis(40), || f.publish_once()))
        .collect();
    let mut samples = vec![Vec::with_capacity(FANOUT_REPS); fixtures.len()];
    for _ in 0..FANOUT_REPS {
        for (i, f) in fixtures.iter_mut().enumerate() {
            samples[i].push(ns_per_call(calls[i], || f.publish_once()));
        }
    }
    for f in &fixtures {
        // Every publish reached every receiver: the systems did the same work.
        assert_eq!(f.delivered() % n as u64, 0, "{}: lost deliveries", f.name());
        assert!(f.delivered() >= (FANOUT_REPS as u64) * n as u64);
    }
    let mut out = [0.0; 4];
    for (o, s) in out.iter_mut().zip(samples.iter_mut()) {
        *o = median(s);
    }
    out
}

/// Runs the heavy-observer comparison; returns the parallel speed-up and a summary line.
fn heavy_observers(cores: usize) -> (f64, String) {
    let iterations = heavy::calibrate(heavy::WORK);
    println!(
        "== heavy observers: {} observers, each ~{} us of CPU (busy loop: {iterations} iterations) ==",
        heavy::OBSERVERS,
        heavy::WORK.as_micros()
    );
    println!(
        "   median of {HEAVY_REPS} interleaved repetitions of {HEAVY_BATCH} publishes; pool threads (cores): {cores}"
    );
    println!();
    let modes = [
        ("sequential", Dispatch::Sequential),
        ("parallel", Dispatch::Parallel),
        ("adaptive", Dispatch::Adaptive),
    ];
    let mut fixtures: Vec<InterroleFanout> = modes
        .iter()
        .map(|&(_, mode)| heavy_fanout(mode, iterations))
        .collect();
    for f in &mut fixtures {
        for _ in 0..8 {
            f.publish_once(); // warm-up; lets Adaptive measure its observers
        }
    }
    let before: Vec<(u64, u64)> = fixtures.iter().map(dispatch_counts).collect();
    let mut samples = vec![Vec::with_capacity(HEAVY_REPS); fixtures.len()];
    for _ in 0..HEAVY_REPS {
        for (i, f) in fixtures.iter_mut().enumerate() {
            samples[i].push(ns_per_call(HEAVY_BATCH, || f.publish_once()) / 1000.0);
        }
    }
    for f in &fixtures {
        assert_eq!(
            f.delivered() % heavy::OBSERVERS as u64,
            0,
            "lost deliveries"
        );
    }
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let sequential = medians[0];
    println!(
        "{:<11} | {:>11} | {:>13} | {:>8} | {:>20}",
        "mode", "us/publish", "us/observer", "speed-up", "parallel dispatches"
    );
    println!("{}", "-".repeat(76));
    for (i, (name, _)) in modes.iter().enumerate() {
        let (dispatched, parallel) = dispatch_counts(&fixtures[i]);
        let (d0, p0) = before[i];
        println!(
            "{name:<11} | {:>11.1} | {:>13.2} | {:>7.3}x | {:>9} of {}",
            medians[i],
            medians[i] / heavy::OBSERVERS as f64,
            sequential / medians[i],
            parallel - p0,
            dispatched - d0
        );
    }
    let speedup = sequential / medians[1];
    let target = TARGET_SPEEDUP_PER_CORE * cores as f64;
    println!();
    println!(
        "target: parallel speed-up >= {TARGET_SPEEDUP_PER_CORE} x {cores} cores = {target:.2}: speed-up {speedup:.3} -> {} (ceiling on {cores} cores: {cores}x)",
        verdict(speedup >= target)
    );
    let adaptive_parallel = {
        let (d, p) = dispatch_counts(&fixtures[2]);
        (p - before[2].1) == (d - before[2].0)
    };
    let line = format!(
        "cores={cores} adaptive chose parallel for every measured dispatch: {}",
        if adaptive_parallel { "yes" } else { "no" }
    );
    (speedup, line)
}

/// (events dispatched, parallel dispatches) of a fixture's hub.
fn dispatch_counts(f: &InterroleFanout) -> (u64, u64) {
    let hub = f.bus().stats().hub;
    (hub.dispatched, hub.parallel_dispatches)
}

/// Prints the cores and the load average: other processes running skew every figure, the
/// parallel speed-up above all.
fn print_machine(cores: usize) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    println!("cores available: {cores}; 1-minute load average before the run: {load}");
    println!();
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
