//! `compare sweep`: one publisher and 1 to 100 subscribers on the relay, then on NATS, round
//! after round, maximum throughput only; a table of medians and a CSV for the plot.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use benches::cpu::BrokerCpus;
use benches::relay::{self, Pace, RunResult};
use benches::verify::Counts;

use crate::broker::Broker;
use crate::support::{Error, Outcome, conclude, median_of, print_machine};

/// Where `compare sweep` writes its CSV without `--csv PATH`.
pub(crate) const SWEEP_CSV: &str = "target/sweep.csv";

/// Target: at every subscriber count, relay deliveries/s at least this times NATS's (the
/// multicast throughput target).
const TARGET_THROUGHPUT_VS_NATS: f64 = 1.0;

/// Runs `compare sweep` for `rounds` rounds, writing the CSV to `csv`.
pub(crate) fn sweep(csv: &Path, rounds: u32, check: bool) -> ExitCode {
    conclude("sweep", sweep_inner(csv, rounds), check)
}

/// One max-throughput run of `compare sweep`.
struct SweepRun {
    subscribers: usize,
    system: &'static str,
    run: RunResult,
}

/// Events published per second (first send to last delivery).
fn events_per_s(run: &RunResult) -> f64 {
    run.published as f64 / run.elapsed.as_secs_f64()
}

/// The runs of one system at one subscriber count, summed up.
struct SweepPoint {
    subscribers: usize,
    system: &'static str,
    deliveries_per_s: f64,
    events_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    counts: Counts,
    missed: u64,
}

fn sweep_pace() -> Pace {
    Pace::Max {
        events: relay::SWEEP_EVENTS,
        max: relay::SWEEP_MAX,
    }
}

fn sweep_inner(csv: &Path, rounds: u32) -> Result<Outcome, Error> {
    print_machine(interrole::pool_threads());
    let cpus = BrokerCpus::detect();
    println!(
        "1 publisher, {:?} subscribers, opaque {}-byte envelopes; max throughput only, \
         up to {} events or {} s per run; every delivery's latency recorded; {rounds} interleaved rounds",
        relay::SWEEP_SUBSCRIBERS,
        relay::ENVELOPE_BYTES,
        relay::SWEEP_EVENTS,
        relay::SWEEP_MAX.as_secs()
    );
    println!("{}", cpus.describe());
    let started = Instant::now();
    let rt = relay::runtime()?;
    let mut runs = Vec::new();
    let mut systems = Vec::new();
    for round in 1..=rounds {
        // One process of each broker for every subscriber count, a fresh topic each.
        Broker::each(&cpus, |broker| {
            let system = broker.name();
            // Each subscriber count printed as its run ends, on one line.
            print!("round {round}, {system}: subscribers");
            let _ = std::io::stdout().flush();
            for n in relay::SWEEP_SUBSCRIBERS {
                let topic = broker.topic(&format!("sweep-{round}-{n}"));
                let run = rt.block_on(broker.multicast_run(&topic, n, sweep_pace(), true))?;
                print!(" {n}");
                let _ = std::io::stdout().flush();
                runs.push(SweepRun {
                    subscribers: n,
                    system,
                    run,
                });
            }
            println!();
            if !systems.contains(&system) {
                systems.push(system);
            }
            Ok(())
        })?;
    }
    drop(rt);
    let took = started.elapsed();
    let mut outcome = Outcome::default();
    for r in &runs {
        outcome.check_run(
            &format!("{} {} subscribers", r.system, r.subscribers),
            &r.run,
        );
    }
    let mut points = Vec::new();
    for n in relay::SWEEP_SUBSCRIBERS {
        for &system in &systems {
            let of: Vec<&SweepRun> = runs
                .iter()
                .filter(|r| r.subscribers == n && r.system == system)
                .collect();
            points.push(SweepPoint {
                subscribers: n,
                system,
                deliveries_per_s: median_of(&of, |r| r.run.throughput()),
                events_per_s: median_of(&of, |r| events_per_s(&r.run)),
                p50_us: median_of(&of, |r| r.run.latency_us(0.5)),
                p99_us: median_of(&of, |r| r.run.latency_us(0.99)),
                counts: of.iter().map(|r| r.run.counts()).sum(),
                missed: of.iter().map(|r| r.run.missed).sum(),
            });
        }
    }
    println!();

    println!("medians over {rounds} rounds; lost, dup(licated), reord(ered), missed: sums");
    println!(
        "{:>4} | {:<6} | {:>12} | {:>10} | {:>8} | {:>8} | {:>5} | {:>5} | {:>5} | {:>6}",
        "subs",
        "system",
        "deliveries/s",
        "events/s",
        "p50 us",
        "p99 us",
        "lost",
        "dup",
        "reord",
        "missed"
    );
    println!("{}", "-".repeat(95));
    for p in &points {
        println!(
            "{:>4} | {:<6} | {:>12.0} | {:>10.0} | {:>8.1} | {:>8.1} | {:>5} | {:>5} | {:>5} | {:>6}",
            p.subscribers,
            p.system,
            p.deliveries_per_s,
            p.events_per_s,
            p.p50_us,
            p.p99_us,
            p.counts.lost,
            p.counts.duplicated,
            p.counts.reordered,
            p.missed,
        );
    }
    println!();
    println!(
        "each run: batches of up to {} events (nats: publishes, no flush), the publisher at most {} events ahead of the \
         slowest subscriber (relay: and of the ACKs);",
        relay::BATCH,
        relay::WINDOW
    );
    println!(
        "  deliveries/s = distinct events received over all subscribers per second, first send to last delivery;"
    );
    println!(
        "  events/s = events published per second; latency = receive time - send time of every delivery, under that load;"
    );
    println!("  every delivery checked by sender and sequence number");
    for r in &runs {
        if r.run.rejected > 0 {
            println!(
                "{} {} subscribers: {} PUBLISH frames rejected",
                r.system, r.subscribers, r.run.rejected
            );
        }
    }
    if systems.len() > 1 {
        let ratios: Vec<(usize, f64)> = relay::SWEEP_SUBSCRIBERS
            .iter()
            .filter_map(|&n| {
                let of = |system| {
                    points
                        .iter()
                        .find(|p| p.subscribers == n && p.system == system)
                        .map(|p| p.deliveries_per_s)
                };
                Some((n, of("relay")? / of("nats")?))
            })
            .collect();
        println!(
            "relay / nats deliveries/s by subscribers: {}",
            ratios
                .iter()
                .map(|(n, r)| format!("{n}: {r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!();
        let lowest = ratios.iter().map(|&(_, r)| r).fold(f64::INFINITY, f64::min);
        outcome.target(
            &format!(
                "relay deliveries/s >= {TARGET_THROUGHPUT_VS_NATS} x NATS's at every subscriber count (the lowest ratio)"
            ),
            lowest,
            lowest >= TARGET_THROUGHPUT_VS_NATS,
        );
    }

    if let Some(dir) = csv.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = String::from(
        "subscribers,system,deliveries_per_s,events_per_s,p50_us,p99_us,lost,duplicated,reordered\n",
    );
    for p in &points {
        out.push_str(&format!(
            "{},{},{:.0},{:.0},{:.1},{:.1},{},{},{}\n",
            p.subscribers,
            p.system,
            p.deliveries_per_s,
            p.events_per_s,
            p.p50_us,
            p.p99_us,
            p.counts.lost,
            p.counts.duplicated,
            p.counts.reordered,
        ));
    }
    std::fs::write(csv, out).map_err(|e| format!("writing {}: {e}", csv.display()))?;
    println!(
        "sweep took {:.1} s; CSV written to {}",
        took.as_secs_f64(),
        csv.display()
    );
    let all: Counts = runs.iter().map(|r| r.run.counts()).sum();
    println!();
    println!(
        "sweep points={} systems={} csv={} lost={} duplicated={} reordered={}",
        relay::SWEEP_SUBSCRIBERS.len(),
        systems.join(","),
        csv.display(),
        all.lost,
        all.duplicated,
        all.reordered
    );
    Ok(outcome)
}
