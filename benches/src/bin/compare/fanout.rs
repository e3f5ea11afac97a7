//! `compare fanout`: one publish to N cheap observers, the bus against tokio broadcast,
//! crossbeam, the hub alone and a closure-list floor; heavy observers, parallel against
//! sequential; async observers against tokio broadcast receiver tasks.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use benches::fanout::{Fanout, InterroleFanout, System};
use benches::heavy::{self, heavy_fanout};
use benches::measure::{calls_for, median, ns_per_call};
use benches::{FANOUT_SIZES, TARGET_N, TARGET_RATIO_VS_TOKIO, TARGET_SPEEDUP_PER_CORE};
use interrole::Dispatch;

use crate::support::{Outcome, conclude, print_machine};

/// Repetitions of each cheap fan-out measurement (interleaved across the systems).
const FANOUT_REPS: usize = 15;
/// Time per repetition of a cheap fan-out measurement.
const FANOUT_BATCH: Duration = Duration::from_millis(20);
/// Repetitions of each heavy-observer measurement (interleaved across the modes).
const HEAVY_REPS: usize = 21;
/// Publishes per repetition of a heavy-observer measurement.
const HEAVY_BATCH: u64 = 25;

/// Runs `compare fanout`; with `check`, a missed target exits with code 1. (A delivery check
/// that fails, a publish not reaching every receiver exactly once, panics: exit code 101.)
pub(crate) fn fanout(check: bool) -> ExitCode {
    let mut outcome = Outcome::default();
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
    outcome.target(
        &format!("a Bus::publish per delivery <= {TARGET_BUS_VS_TOKIO} x tokio broadcast's at N = {TARGET_N}"),
        bus_tokio,
        bus_tokio <= TARGET_BUS_VS_TOKIO,
    );
    outcome.target(
        &format!("the hub within {TARGET_HUB_VS_FLOOR} x the closure-list floor at N = {TARGET_N}"),
        hub_floor,
        hub_floor <= TARGET_HUB_VS_FLOOR,
    );
    outcome.target(
        &format!("the hub alone <= {TARGET_RATIO_VS_TOKIO} x tokio broadcast's at N = {TARGET_N}"),
        hub_tokio,
        hub_tokio <= TARGET_RATIO_VS_TOKIO,
    );
    println!();

    // The heavy observers first: the async comparison's runtime threads are gone by then.
    let (speedup, cores_line) = heavy_observers(cores, &mut outcome);
    println!();
    let async_ratio = async_fanout();
    println!();
    println!("{cores_line}");
    println!(
        "fanout n={TARGET_N} ratio_vs_tokio_broadcast={bus_tokio:.3} ratio_vs_floor={bus_floor:.3} hub_ratio_vs_tokio_broadcast={hub_tokio:.3} hub_ratio_vs_floor={hub_floor:.3} async_ratio_vs_tokio_tasks={async_ratio:.3} parallel_speedup={speedup:.3} cores={cores}"
    );
    conclude("fanout", Ok(outcome), check)
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
fn heavy_observers(cores: usize, outcome: &mut Outcome) -> (f64, String) {
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
    outcome.target(
        &format!(
            "parallel speed-up >= {TARGET_SPEEDUP_PER_CORE} x {cores} cores = {target:.2} (ceiling on {cores} cores: {cores}x)"
        ),
        speedup,
        speedup >= target,
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
