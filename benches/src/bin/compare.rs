//! `compare`: quick comparisons of interrole against its peers, timed with `std::time::Instant`
//! (warm-up, interleaved repetitions, median), for a readable table and one machine-readable
//! last line.
//!
//! ```text
//! cargo run --release -p benches --bin compare -- fanout
//! cargo run --release -p benches --bin compare -- multicast
//! cargo run --release -p benches --bin compare -- sweep --csv target/sweep.csv
//! cargo run --release -p benches --bin compare -- scale
//! cargo run --release -p benches --bin compare -- scale --subscribers 2000 --check
//! cargo run --release -p benches --bin compare -- recovery
//! ```
//!
//! `multicast` and `scale` start the relay server in a child process (this executable's hidden
//! `relay-server` subcommand) on 127.0.0.1 and kill it at the end; `multicast` then does the same
//! with `nats-server` (skipped, and said so, when it is not installed). `sweep` does the same for
//! each subscriber count of [`relay::SWEEP_SUBSCRIBERS`] (max throughput only) and writes a CSV.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use benches::fanout::InterroleFanout;
use benches::fanout::{Fanout, System};
use benches::heavy::{self, heavy_fanout};
use benches::measure::{calls_for, median, ns_per_call};
use benches::nats::{NatsProcess, nats_multicast_run};
use benches::relay::{self, Pace, RelayProcess};
use benches::{FANOUT_SIZES, TARGET_N, TARGET_RATIO_VS_TOKIO, TARGET_SPEEDUP_PER_CORE};
use interrole::Dispatch;

/// One subcommand: its name, a one-line description, and what it runs.
struct Command {
    name: &'static str,
    about: &'static str,
    run: Run,
}

/// What a subcommand runs.
enum Run {
    /// A command that takes no arguments after its name.
    Bare(fn() -> ExitCode),
    /// A command given the arguments after its name (it checks them itself).
    Args(fn(&[String]) -> ExitCode),
}

/// Every subcommand.
const COMMANDS: &[Command] = &[
    Command {
        name: "fanout",
        about: "cheap fan-out vs tokio broadcast and crossbeam; heavy observers, parallel vs sequential",
        run: Run::Bare(fanout),
    },
    Command {
        name: "multicast",
        about: "relay, then NATS (child processes): 1 publisher, 20 subscribers; max throughput, paced latency",
        run: Run::Bare(multicast),
    },
    Command {
        name: "sweep",
        about: "relay, then NATS: 1 publisher, 1 to 100 subscribers, max throughput each; [--csv PATH]",
        run: Run::Args(sweep),
    },
    Command {
        name: "scale",
        about: "relay (child process): idle subscribers; memory each, publish-to-last latency; [--subscribers N] [--check]",
        run: Run::Args(scale),
    },
    Command {
        name: "recovery",
        about: "relay killed and restarted; a NATS cluster node killed: until every bus is back and events flow",
        run: Run::Bare(recovery),
    },
];

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
        // Hidden: the relay server that `multicast` and `scale` start as a child process.
        Some("relay-server") => match relay::serve(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("compare relay-server: {e}");
                ExitCode::FAILURE
            }
        },
        Some(name) => match COMMANDS.iter().find(|c| c.name == name) {
            Some(Command {
                run: Run::Args(run),
                ..
            }) => run(&args[1..]),
            Some(Command {
                run: Run::Bare(run),
                ..
            }) if args.len() == 1 => run(),
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
    println!(
        "{:>4} | {:>10} {:>10} {:>10} {:>10} {:>10} | {:>8} {:>8} {:>8} {:>8}",
        "N", "bus", "tokio", "crossbeam", "hub only", "floor", "bus/", "bus/", "hub/", "hub/"
    );
    println!(
        "{:>4} | {:>10} {:>10} {:>10} {:>10} {:>10} | {:>8} {:>8} {:>8} {:>8}",
        "",
        "ns/deliv",
        "ns/deliv",
        "ns/deliv",
        "ns/deliv",
        "ns/deliv",
        "tokio",
        "floor",
        "tokio",
        "floor"
    );
    println!("{}", "-".repeat(106));
    let mut at_target = [f64::NAN; 4];
    for n in FANOUT_SIZES {
        let [bus, tokio, xbeam, hub, floor] = measure_fanout(n);
        let per = |x: f64| x / n as f64;
        let ratios = [bus / tokio, bus / floor, hub / tokio, hub / floor];
        if n == TARGET_N {
            at_target = ratios;
        }
        println!(
            "{n:>4} | {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} | {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            per(bus),
            per(tokio),
            per(xbeam),
            per(hub),
            per(floor),
            ratios[0],
            ratios[1],
            ratios[2],
            ratios[3],
        );
    }
    let [bus_tokio, bus_floor, hub_tokio, hub_floor] = at_target;
    println!();
    println!(
        "bus = a default Bus::publish (adaptive dispatch, typed closure observers, private Loopback); tokio = tokio::sync::broadcast;"
    );
    println!(
        "crossbeam = one crossbeam channel per subscriber; hub only = Hub::publish of a prebuilt envelope to raw observers;"
    );
    println!(
        "floor = a Vec<Box<dyn Fn(&Tick)>> called in a loop. Every publish was checked to reach every receiver exactly."
    );
    println!();
    println!(
        "target: a Bus::publish per delivery <= {TARGET_BUS_VS_TOKIO} x tokio broadcast's at N = {TARGET_N}: {bus_tokio:.3} -> {}",
        verdict(bus_tokio <= TARGET_BUS_VS_TOKIO)
    );
    println!(
        "target: the hub within {TARGET_HUB_VS_FLOOR} x the closure-list floor at N = {TARGET_N}: {hub_floor:.3} -> {}",
        verdict(hub_floor <= TARGET_HUB_VS_FLOOR)
    );
    println!(
        "target: the hub alone <= {TARGET_RATIO_VS_TOKIO} x tokio broadcast's at N = {TARGET_N}: {hub_tokio:.3} -> {}",
        verdict(hub_tokio <= TARGET_RATIO_VS_TOKIO)
    );
    println!();

    // The heavy observers first: the async comparison's runtime threads are gone by then.
    let (speedup, cores_line) = heavy_observers(cores);
    println!();
    let async_ratio = async_fanout();
    println!();
    println!("{cores_line}");
    println!(
        "fanout n={TARGET_N} ratio_vs_tokio_broadcast={bus_tokio:.3} ratio_vs_floor={bus_floor:.3} hub_ratio_vs_tokio_broadcast={hub_tokio:.3} hub_ratio_vs_floor={hub_floor:.3} async_ratio_vs_tokio_tasks={async_ratio:.3} parallel_speedup={speedup:.3} cores={cores}"
    );
    ExitCode::SUCCESS
}

/// A default `Bus::publish` per delivery against tokio broadcast's, at most.
const TARGET_BUS_VS_TOKIO: f64 = 1.0;
/// The hub's cost per delivery against the closure-list floor's, at most.
const TARGET_HUB_VS_FLOOR: f64 = 2.0;
/// Events per run of the async comparison, and runs.
const ASYNC_EVENTS: u64 = 20_000;
const ASYNC_REPS: usize = 5;

/// Async consumers: a bus's async observers (each its own task, fed by its mailbox) against
/// tokio broadcast receivers each in its own task, on one multi-thread runtime. Every event
/// reaches every consumer (checked); the time is from the first publish to the last delivery.
/// Returns the bus's ns per delivery over tokio's (median of interleaved runs).
fn async_fanout() -> f64 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let n = TARGET_N;
    println!(
        "== async consumers: {ASYNC_EVENTS} events to {n} consumers, each its own task (median of {ASYNC_REPS} interleaved runs) =="
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let wait_for = |counter: &AtomicU64, want: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while counter.load(Ordering::Acquire) < want {
            assert!(Instant::now() < deadline, "async deliveries stalled");
            std::thread::yield_now();
        }
    };
    let want = ASYNC_EVENTS * n as u64;
    let mut bus_ns = Vec::new();
    let mut tokio_ns = Vec::new();
    for _ in 0..ASYNC_REPS {
        // The bus: n async closure observers with a mailbox that holds the whole run.
        let bus = interrole::Bus::builder()
            .instance("bench")
            .transport(interrole::Loopback::new())
            .runtime(rt.handle().clone())
            .build()
            .expect("bus");
        let counter = Arc::new(AtomicU64::new(0));
        let mailbox = interrole::Mailbox::bounded(ASYNC_EVENTS as usize);
        let guards: Vec<_> = (0..n)
            .map(|_| {
                let counter = counter.clone();
                bus.subscribe_async::<benches::Tick, _, _>(mailbox, move |t| {
                    let counter = counter.clone();
                    async move {
                        std::hint::black_box(&*t);
                        counter.fetch_add(1, Ordering::Release);
                    }
                })
            })
            .collect();
        let t = Instant::now();
        for i in 0..ASYNC_EVENTS {
            bus.publish(benches::Tick(i)).expect("publish");
        }
        wait_for(&counter, want);
        bus_ns.push(t.elapsed().as_nanos() as f64 / want as f64);
        assert_eq!(counter.load(Ordering::Acquire), want, "bus: deliveries");
        assert_eq!(bus.stats().hub.lagged, 0, "bus: a mailbox dropped events");
        drop(guards);

        // tokio broadcast: n receivers, each in its own task, a channel that holds the run.
        let counter = Arc::new(AtomicU64::new(0));
        let (tx, _) = tokio::sync::broadcast::channel::<benches::Tick>(ASYNC_EVENTS as usize);
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let mut rx = tx.subscribe();
                let counter = counter.clone();
                rt.spawn(async move {
                    for _ in 0..ASYNC_EVENTS {
                        let t = rx.recv().await.expect("no lag: the channel holds the run");
                        std::hint::black_box(t);
                        counter.fetch_add(1, Ordering::Release);
                    }
                })
            })
            .collect();
        let t = Instant::now();
        for i in 0..ASYNC_EVENTS {
            tx.send(benches::Tick(i)).expect("send");
        }
        wait_for(&counter, want);
        tokio_ns.push(t.elapsed().as_nanos() as f64 / want as f64);
        for task in tasks {
            rt.block_on(task).expect("receiver task");
        }
    }
    let (bus, tokio) = (median(&mut bus_ns), median(&mut tokio_ns));
    println!(
        "bus async observers: {bus:.1} ns/delivery; tokio broadcast receiver tasks: {tokio:.1} ns/delivery; ratio {:.3}",
        bus / tokio
    );
    bus / tokio
}

/// Median ns per publish with `n` receivers, for each of [`System::ALL`], in that order.
fn measure_fanout(n: usize) -> [f64; 5] {
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
        // Every publish reached every receiver exactly: the systems did the same work.
        assert_eq!(
            f.delivered(),
            f.published() * n as u64,
            "{}: deliveries lost or duplicated",
            f.name()
        );
        assert!(f.published() >= FANOUT_REPS as u64);
    }
    let mut out = [0.0; 5];
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

fn multicast() -> ExitCode {
    report("multicast", multicast_inner())
}

/// `compare scale [--subscribers N] [--check]`: N idle subscribers (default
/// [`relay::SCALE_SUBSCRIBERS`]); with `--check`, a missed memory target is a failure (exit code
/// 1), so that CI can run it; without, only the verdict line says so.
fn scale(args: &[String]) -> ExitCode {
    let mut n = relay::SCALE_SUBSCRIBERS;
    let mut check = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.clone().next()) {
            ("--check", _) => check = true,
            ("--subscribers", Some(v)) => match v.parse::<usize>() {
                Ok(v) if (1..=relay::SCALE_MAX_SUBSCRIBERS).contains(&v) => {
                    n = v;
                    it.next();
                }
                _ => {
                    eprintln!(
                        "compare scale: --subscribers takes 1 to {}, not {v:?}",
                        relay::SCALE_MAX_SUBSCRIBERS
                    );
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!(
                    "compare scale: unexpected arguments {args:?} (expected: [--subscribers N] [--check])\n"
                );
                eprint!("{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    match scale_inner(n) {
        Ok(met) if check && !met => {
            eprintln!(
                "compare scale: over the target of {} KiB per idle subscriber (--check)",
                relay::TARGET_KIB_PER_SUBSCRIBER
            );
            ExitCode::FAILURE
        }
        r => report("scale", r.map(|_| ())),
    }
}

fn report(name: &str, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn recovery() -> ExitCode {
    report("recovery", recovery_inner())
}

fn recovery_inner() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use benches::recovery::{self, KILLS, Recovery, SUBSCRIBERS};
    print_machine(interrole::pool_threads());
    println!(
        "{SUBSCRIBERS} subscriber buses and 1 publisher bus (this process, the default retry policy: 0, 1, 2, 5, 10, 30 s); a probe published every ms"
    );
    println!();
    let rt = relay::runtime()?;
    let relay_runs = rt.block_on(recovery::relay_recovery(KILLS))?;
    let nats_runs = if recovery::nats_installed() {
        Some(rt.block_on(recovery::nats_recovery(KILLS))?)
    } else {
        println!("nats: nats-server not found on PATH: the NATS side was skipped");
        None
    };
    drop(rt);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let summary = |runs: &[Recovery]| {
        let mut back: Vec<f64> = runs.iter().map(|r| ms(r.reconnected)).collect();
        let mut flow: Vec<f64> = runs.iter().map(|r| ms(r.flowing)).collect();
        back.sort_by(f64::total_cmp);
        flow.sort_by(f64::total_cmp);
        (
            back[back.len() / 2],
            back[back.len() - 1],
            flow[flow.len() / 2],
            flow[flow.len() - 1],
        )
    };
    println!(
        "{:<52} | {:>5} | {:>17} | {:>17}",
        "fault", "kills", "reconnected ms", "events flow ms"
    );
    println!(
        "{:<52} | {:>5} | {:>8} {:>8} | {:>8} {:>8}",
        "", "", "median", "max", "median", "max"
    );
    println!("{}", "-".repeat(100));
    let (rb, rbm, rf, rfm) = summary(&relay_runs);
    println!(
        "{:<52} | {:>5} | {rb:>8.1} {rbm:>8.1} | {rf:>8.1} {rfm:>8.1}",
        "relay SIGKILLed, restarted on the same port",
        relay_runs.len()
    );
    let mut last = format!("recovery relay_reconnect_ms={rb:.1} relay_flow_ms={rf:.1}");
    if let Some(runs) = &nats_runs {
        let (nb, nbm, nf, nfm) = summary(runs);
        println!(
            "{:<52} | {:>5} | {nb:>8.1} {nbm:>8.1} | {nf:>8.1} {nfm:>8.1}",
            "NATS node SIGKILLed (3-node cluster)",
            runs.len()
        );
        last.push_str(&format!(" nats_reconnect_ms={nb:.1} nats_flow_ms={nf:.1}"));
    }
    println!();
    println!(
        "relay: measured from when the new relay process listens; NATS: from the kill. \
         reconnected = every bus connected again; events flow = every subscriber has a probe published after that moment"
    );
    println!();
    println!("{last}");
    Ok(())
}

/// Starts the relay as a child process and says where it runs.
fn start_relay() -> Result<RelayProcess, Box<dyn std::error::Error + Send + Sync>> {
    let server = RelayProcess::spawn()?;
    println!(
        "relay: pid {} on {} (child process, 2 tokio workers); load: 2 tokio workers",
        server.pid(),
        server.addr()
    );
    Ok(server)
}

/// Target: relay deliveries/s at least this times NATS's (max-throughput run).
const TARGET_THROUGHPUT_VS_NATS: f64 = 1.0;
/// Target: relay p99 latency at most this times NATS's (paced run).
const TARGET_P99_VS_NATS: f64 = 1.0;

/// The max-throughput and the paced run of one system.
struct Multicast {
    system: &'static str,
    max: relay::RunResult,
    paced: relay::RunResult,
}

fn max_pace() -> Pace {
    Pace::Max {
        events: relay::THROUGHPUT_EVENTS,
        max: relay::THROUGHPUT_MAX,
    }
}

fn paced_pace() -> Pace {
    Pace::Paced {
        rate: relay::LATENCY_RATE,
        run: relay::LATENCY_RUN,
    }
}

fn multicast_inner() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    print_machine(interrole::pool_threads());
    let subs = relay::MULTICAST_SUBSCRIBERS;
    println!(
        "1 publisher, {subs} subscribers, opaque {}-byte envelopes (send timestamp in the first 8 bytes)",
        relay::ENVELOPE_BYTES
    );
    let rt = relay::runtime()?;
    let mut systems = Vec::new();
    {
        // Dropped (killed) on every way out of this block.
        let server = start_relay()?;
        let max = rt.block_on(relay::multicast_run(
            server.addr(),
            "bench/throughput",
            subs,
            max_pace(),
            false,
        ))?;
        let paced = rt.block_on(relay::multicast_run(
            server.addr(),
            "bench/latency",
            subs,
            paced_pace(),
            true,
        ))?;
        systems.push(Multicast {
            system: "relay",
            max,
            paced,
        });
    }
    // The relay is gone before NATS starts: the two never share the CPU.
    match spawn_nats()? {
        Some(server) => {
            let url = server.url();
            let max = rt.block_on(nats_multicast_run(
                &url,
                "bench.throughput",
                subs,
                max_pace(),
                false,
            ))?;
            let paced = rt.block_on(nats_multicast_run(
                &url,
                "bench.latency",
                subs,
                paced_pace(),
                true,
            ))?;
            systems.push(Multicast {
                system: "nats",
                max,
                paced,
            });
        }
        None => println!(
            "nats: {} not found on PATH: the NATS side was skipped",
            benches::nats::NATS_SERVER
        ),
    }
    drop(rt);
    println!();

    println!(
        "{:<6} | {:<34} | {:>9} | {:>10} | {:>8} | {:>12} | {:>8} | {:>8} | {:>8} | {:>5} | {:>6}",
        "system",
        "run",
        "published",
        "delivered",
        "seconds",
        "deliveries/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "lost",
        "missed"
    );
    println!("{}", "-".repeat(139));
    let max_name = format!("max throughput (<= {} events)", relay::THROUGHPUT_EVENTS);
    let paced_name = format!(
        "paced {} ev/s for {} s",
        relay::LATENCY_RATE,
        relay::LATENCY_RUN.as_secs()
    );
    // Latencies are recorded in the paced run only.
    let lat = |r: &relay::RunResult, q: f64| {
        if r.latencies_ns.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1}", r.latency_us(q))
        }
    };
    for m in &systems {
        for (name, r) in [(&max_name, &m.max), (&paced_name, &m.paced)] {
            println!(
                "{:<6} | {name:<34} | {:>9} | {:>10} | {:>8.3} | {:>12.0} | {:>8} | {:>8} | {:>8} | {:>5} | {:>6}",
                m.system,
                r.published,
                r.delivered(),
                r.elapsed.as_secs_f64(),
                r.throughput(),
                lat(r, 0.5),
                lat(r, 0.99),
                lat(r, 0.999),
                r.lost(),
                r.missed,
            );
        }
    }
    println!();
    println!(
        "max throughput: batches of up to {} events (relay: PUBLISH frames per WebSocket message; nats: publishes, then a flush),",
        relay::BATCH
    );
    println!(
        "  the publisher at most {} events ahead of the slowest subscriber (relay: and of the ACKs);",
        relay::WINDOW
    );
    println!(
        "  seconds = first send to last delivery; deliveries/s = events received over all {subs} subscribers per second"
    );
    println!(
        "latency: receive time - send time (one Instant clock, this process), every delivery to every subscriber"
    );
    if systems.len() > 1 {
        println!(
            "nats: one async-nats client per subscriber and one for the publisher, core NATS (no acknowledgements; missed is always 0)"
        );
    }
    for m in &systems {
        for (name, r) in [("max throughput", &m.max), ("paced", &m.paced)] {
            if r.rejected > 0 {
                println!(
                    "{} {name}: {} PUBLISH frames rejected",
                    m.system, r.rejected
                );
            }
        }
    }
    let ratios = match &systems[..] {
        [relay, nats] => {
            let throughput = relay.max.throughput() / nats.max.throughput();
            let p99 = relay.paced.latency_us(0.99) / nats.paced.latency_us(0.99);
            println!();
            println!(
                "target: relay deliveries/s >= {TARGET_THROUGHPUT_VS_NATS} x NATS's: ratio {throughput:.3} -> {}",
                verdict(throughput >= TARGET_THROUGHPUT_VS_NATS)
            );
            println!(
                "target: relay p99 <= {TARGET_P99_VS_NATS} x NATS's: ratio {p99:.3} -> {}",
                verdict(p99 <= TARGET_P99_VS_NATS)
            );
            Some((throughput, p99))
        }
        _ => None,
    };
    let relay = &systems[0];
    let lost = relay.max.lost() + relay.paced.lost();
    println!();
    println!(
        "multicast subscribers={subs} throughput_eps={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} lost={lost}",
        relay.max.throughput(),
        relay.paced.latency_us(0.5),
        relay.paced.latency_us(0.99),
        relay.paced.latency_us(0.999),
    );
    if let Some((throughput, p99)) = ratios {
        println!("relay_vs_nats throughput_ratio={throughput:.3} p99_ratio={p99:.3}");
    }
    Ok(())
}

/// Where `compare sweep` writes its CSV without `--csv PATH`.
const SWEEP_CSV: &str = "target/sweep.csv";

fn sweep(args: &[String]) -> ExitCode {
    let csv = match args {
        [] => PathBuf::from(SWEEP_CSV),
        [flag, path] if flag == "--csv" => PathBuf::from(path),
        _ => {
            eprintln!("compare sweep: unexpected arguments {args:?} (expected: [--csv PATH])\n");
            eprint!("{}", usage());
            return ExitCode::from(2);
        }
    };
    report("sweep", sweep_inner(&csv))
}

/// One max-throughput run of `compare sweep`.
struct SweepPoint {
    subscribers: usize,
    system: &'static str,
    run: relay::RunResult,
}

impl SweepPoint {
    /// Events published per second (first send to last delivery).
    fn events_per_s(&self) -> f64 {
        self.run.published as f64 / self.run.elapsed.as_secs_f64()
    }
}

fn sweep_pace() -> Pace {
    Pace::Max {
        events: relay::SWEEP_EVENTS,
        max: relay::SWEEP_MAX,
    }
}

/// Prints `label` then each subscriber count as its run ends, on one line.
fn sweep_progress(label: &str, n: Option<usize>) {
    match n {
        None => print!("{label}: subscribers"),
        Some(n) => print!(" {n}"),
    }
    let _ = std::io::stdout().flush();
}

fn sweep_inner(csv: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    print_machine(interrole::pool_threads());
    println!(
        "1 publisher, {:?} subscribers, opaque {}-byte envelopes; max throughput only, \
         up to {} events or {} s per run; every delivery's latency recorded",
        relay::SWEEP_SUBSCRIBERS,
        relay::ENVELOPE_BYTES,
        relay::SWEEP_EVENTS,
        relay::SWEEP_MAX.as_secs()
    );
    let started = Instant::now();
    let rt = relay::runtime()?;
    let mut points = Vec::new();
    let mut systems = vec!["relay"];
    {
        // One relay process for every subscriber count, a fresh path each; killed on every way
        // out of this block.
        let server = start_relay()?;
        sweep_progress("relay", None);
        for n in relay::SWEEP_SUBSCRIBERS {
            let run = rt.block_on(relay::multicast_run(
                server.addr(),
                &format!("bench/sweep-{n}"),
                n,
                sweep_pace(),
                true,
            ))?;
            sweep_progress("relay", Some(n));
            points.push(SweepPoint {
                subscribers: n,
                system: "relay",
                run,
            });
        }
        println!();
    }
    // The relay is gone before NATS starts: the two never share the CPU.
    match spawn_nats()? {
        Some(server) => {
            let url = server.url();
            sweep_progress("nats", None);
            for n in relay::SWEEP_SUBSCRIBERS {
                let run = rt.block_on(nats_multicast_run(
                    &url,
                    &format!("bench.sweep.{n}"),
                    n,
                    sweep_pace(),
                    true,
                ))?;
                sweep_progress("nats", Some(n));
                points.push(SweepPoint {
                    subscribers: n,
                    system: "nats",
                    run,
                });
            }
            println!();
            systems.push("nats");
        }
        None => println!(
            "nats: {} not found on PATH: the NATS side was skipped",
            benches::nats::NATS_SERVER
        ),
    }
    drop(rt);
    let took = started.elapsed();
    // By subscriber count, the relay first (a stable sort keeps the measuring order).
    points.sort_by_key(|p| p.subscribers);
    println!();

    println!(
        "{:>4} | {:<6} | {:>9} | {:>10} | {:>8} | {:>12} | {:>10} | {:>8} | {:>8} | {:>5} | {:>6}",
        "subs",
        "system",
        "published",
        "delivered",
        "seconds",
        "deliveries/s",
        "events/s",
        "p50 us",
        "p99 us",
        "lost",
        "missed"
    );
    println!("{}", "-".repeat(117));
    for p in &points {
        let r = &p.run;
        println!(
            "{:>4} | {:<6} | {:>9} | {:>10} | {:>8.3} | {:>12.0} | {:>10.0} | {:>8.1} | {:>8.1} | {:>5} | {:>6}",
            p.subscribers,
            p.system,
            r.published,
            r.delivered(),
            r.elapsed.as_secs_f64(),
            r.throughput(),
            p.events_per_s(),
            r.latency_us(0.5),
            r.latency_us(0.99),
            r.lost(),
            r.missed,
        );
    }
    println!();
    println!(
        "each run: batches of up to {} events, the publisher at most {} events ahead of the slowest subscriber \
         (relay: and of the ACKs);",
        relay::BATCH,
        relay::WINDOW
    );
    println!(
        "  seconds = first send to last delivery; deliveries/s = events received over all subscribers per second;"
    );
    println!(
        "  events/s = events published per second; latency = receive time - send time of every delivery, under that load"
    );
    for p in &points {
        if p.run.rejected > 0 {
            println!(
                "{} {} subscribers: {} PUBLISH frames rejected",
                p.system, p.subscribers, p.run.rejected
            );
        }
    }
    if systems.len() > 1 {
        let ratios: Vec<String> = relay::SWEEP_SUBSCRIBERS
            .iter()
            .filter_map(|&n| {
                let of = |system| {
                    points
                        .iter()
                        .find(|p| p.subscribers == n && p.system == system)
                        .map(|p| p.run.throughput())
                };
                Some(format!("{n}: {:.2}", of("relay")? / of("nats")?))
            })
            .collect();
        println!(
            "relay / nats deliveries/s by subscribers: {}",
            ratios.join(", ")
        );
    }

    if let Some(dir) = csv.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut out =
        String::from("subscribers,system,deliveries_per_s,events_per_s,p50_us,p99_us,lost\n");
    for p in &points {
        out.push_str(&format!(
            "{},{},{:.0},{:.0},{:.1},{:.1},{}\n",
            p.subscribers,
            p.system,
            p.run.throughput(),
            p.events_per_s(),
            p.run.latency_us(0.5),
            p.run.latency_us(0.99),
            p.run.lost()
        ));
    }
    std::fs::write(csv, out).map_err(|e| format!("writing {}: {e}", csv.display()))?;
    println!(
        "sweep took {:.1} s; CSV written to {}",
        took.as_secs_f64(),
        csv.display()
    );
    println!();
    println!(
        "sweep points={} systems={} csv={}",
        relay::SWEEP_SUBSCRIBERS.len(),
        systems.join(","),
        csv.display()
    );
    Ok(())
}

/// Runs `compare scale` with `n` subscribers; returns whether the memory target was met.
fn scale_inner(n: usize) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    print_machine(interrole::pool_threads());
    let server = start_relay()?;
    println!(
        "{n} idle subscribers on one path, {} connecting at a time, each sends RESUME",
        relay::CONNECT_CONCURRENCY
    );
    println!();
    let rt = relay::runtime()?;
    let r = rt.block_on(relay::scale_run(&server, n))?;
    drop(rt);
    drop(server);

    let per = r.kib_per_subscriber();
    println!("{:<44} | {:>12}", "measure", "value");
    println!("{}", "-".repeat(60));
    println!(
        "{:<44} | {:>12.2}",
        "connect all (s)",
        r.connect_time.as_secs_f64()
    );
    let mut batches: Vec<f64> = r.batch_times.iter().map(Duration::as_secs_f64).collect();
    batches.sort_by(f64::total_cmp);
    println!(
        "{:<44} | {:>12}",
        format!(
            "batch of {} (s): min / median / max",
            relay::CONNECT_CONCURRENCY
        ),
        format!(
            "{:.2}/{:.2}/{:.2}",
            batches.first().copied().unwrap_or(f64::NAN),
            median(&mut batches.clone()),
            batches.last().copied().unwrap_or(f64::NAN)
        )
    );
    println!(
        "{:<44} | {:>12}",
        "relay VmRSS before subscribers (KiB)", r.rss_before_kib
    );
    println!(
        "{:<44} | {:>12}",
        "relay VmRSS, all connected, idle 1 s (KiB)", r.rss_after_kib
    );
    println!("{:<44} | {:>12.2}", "KiB per idle subscriber", per);
    let mut latencies = Vec::new();
    for (i, (latency, got)) in r.rounds.iter().enumerate() {
        let text = match latency {
            Some(d) => {
                latencies.push(d.as_secs_f64() * 1000.0);
                format!("{:.2}", d.as_secs_f64() * 1000.0)
            }
            None => format!("{got}/{n} got it"),
        };
        println!(
            "{:<44} | {:>12}",
            format!("event {}: publish to last delivery (ms)", i + 1),
            text
        );
    }
    println!();
    let met = per <= relay::TARGET_KIB_PER_SUBSCRIBER;
    println!(
        "target: <= {} KiB per idle subscriber: {per:.2} -> {}",
        relay::TARGET_KIB_PER_SUBSCRIBER,
        verdict(met)
    );
    if latencies.len() < r.rounds.len() {
        return Err("an event did not reach every subscriber".into());
    }
    let last_ms = median(&mut latencies);
    println!(
        "publish to last delivery: median of {} single events",
        latencies.len()
    );
    println!();
    println!(
        "scale subscribers={n} rss_per_subscriber_kib={per:.2} publish_to_last_delivery_ms={last_ms:.2}"
    );
    Ok(met)
}

/// Starts `nats-server` in a child process, when it is installed, and says where it listens.
fn spawn_nats() -> Result<Option<NatsProcess>, Box<dyn std::error::Error + Send + Sync>> {
    let server = NatsProcess::spawn()?;
    if let Some(server) = &server {
        println!(
            "nats: pid {} on {} ({}, child process, default configuration); load: 2 tokio workers, async-nats",
            server.pid(),
            server.url(),
            server.version()
        );
    }
    Ok(server)
}
