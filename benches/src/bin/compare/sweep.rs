//! `compare sweep`: one publisher and 1 to 100 subscribers on the relay, then on NATS, maximum
//! throughput only; a table and a CSV for the plot.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use benches::relay::{self, Pace};

use crate::broker::Broker;
use crate::support::{Error, print_machine, report};

/// Where `compare sweep` writes its CSV without `--csv PATH`.
pub(crate) const SWEEP_CSV: &str = "target/sweep.csv";

/// Runs `compare sweep`, writing the CSV to `csv`.
pub(crate) fn sweep(csv: &Path) -> ExitCode {
    report("sweep", sweep_inner(csv))
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

fn sweep_inner(csv: &Path) -> Result<(), Error> {
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
    let mut systems = Vec::new();
    // One process of each broker for every subscriber count, a fresh topic each.
    Broker::each(|broker| {
        let system = broker.name();
        // Each subscriber count printed as its run ends, on one line.
        print!("{system}: subscribers");
        let _ = std::io::stdout().flush();
        for n in relay::SWEEP_SUBSCRIBERS {
            let topic = broker.topic(&format!("sweep-{n}"));
            let run = rt.block_on(broker.multicast_run(&topic, n, sweep_pace(), true))?;
            print!(" {n}");
            let _ = std::io::stdout().flush();
            points.push(SweepPoint {
                subscribers: n,
                system,
                run,
            });
        }
        println!();
        systems.push(system);
        Ok(())
    })?;
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
