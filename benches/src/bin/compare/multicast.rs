//! `compare multicast`: one publisher and 20 subscribers on the relay, then on NATS, round after
//! round; the maximum throughput and the latency at a set pace, every delivery checked.

use std::process::ExitCode;
use std::time::Duration;

use benches::cpu::BrokerCpus;
use benches::measure::median;
use benches::relay::{self, Pace, RunResult};
use benches::verify::Counts;

use crate::broker::Broker;
use crate::support::{Error, Outcome, RunArgs, conclude, latency, list, median_of, print_machine};

/// Runs `compare multicast`.
pub(crate) fn multicast(args: &RunArgs) -> ExitCode {
    conclude("multicast", multicast_inner(args), args.check)
}

/// Target: relay deliveries/s at least this times NATS's (max-throughput run).
const TARGET_THROUGHPUT_VS_NATS: f64 = 1.0;
/// Target: relay p99 latency at most this times NATS's (paced run).
const TARGET_P99_VS_NATS: f64 = 1.0;

/// The max-throughput and the paced run of one system in one round.
struct Multicast {
    round: u32,
    system: &'static str,
    max: RunResult,
    paced: RunResult,
}

impl Multicast {
    fn counts(&self) -> Counts {
        self.max.counts() + self.paced.counts()
    }
}

fn multicast_inner(args: &RunArgs) -> Result<Outcome, Error> {
    print_machine(interrole::pool_threads());
    let subs = relay::MULTICAST_SUBSCRIBERS;
    let cpus = BrokerCpus::detect();
    println!(
        "1 publisher, {subs} subscribers, opaque {}-byte envelopes (send timestamp in the first 8 bytes); {} interleaved rounds (relay, nats, relay, ...)",
        relay::ENVELOPE_BYTES,
        args.rounds
    );
    println!("{}", cpus.describe());
    let max_pace = Pace::Max {
        events: args.events,
        max: relay::THROUGHPUT_MAX,
    };
    let paced_pace = Pace::Paced {
        rate: relay::LATENCY_RATE,
        run: Duration::from_secs(args.seconds),
    };
    let rt = relay::runtime()?;
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        println!("round {round}:");
        Broker::each(&cpus, |broker| {
            let topic = broker.topic(&format!("throughput-{round}"));
            let max = rt.block_on(broker.multicast_run(&topic, subs, max_pace, false))?;
            let topic = broker.topic(&format!("latency-{round}"));
            let paced = rt.block_on(broker.multicast_run(&topic, subs, paced_pace, true))?;
            runs.push(Multicast {
                round,
                system: broker.name(),
                max,
                paced,
            });
            Ok(())
        })?;
    }
    drop(rt);
    println!();

    println!(
        "{:<6} | {:>5} | {:<34} | {:>9} | {:>10} | {:>8} | {:>12} | {:>8} | {:>8} | {:>8} | {:>5} | {:>5} | {:>5} | {:>6}",
        "system",
        "round",
        "run",
        "published",
        "delivered",
        "seconds",
        "deliveries/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "lost",
        "dup",
        "reord",
        "missed"
    );
    println!("{}", "-".repeat(165));
    let max_name = format!("max throughput (<= {} events)", args.events);
    let paced_name = format!("paced {} ev/s for {} s", relay::LATENCY_RATE, args.seconds);
    let mut outcome = Outcome::default();
    for m in &runs {
        for (name, r) in [(&max_name, &m.max), (&paced_name, &m.paced)] {
            let c = r.counts();
            println!(
                "{:<6} | {:>5} | {name:<34} | {:>9} | {:>10} | {:>8.3} | {:>12.0} | {:>8} | {:>8} | {:>8} | {:>5} | {:>5} | {:>5} | {:>6}",
                m.system,
                m.round,
                r.published,
                r.delivered(),
                r.elapsed.as_secs_f64(),
                r.throughput(),
                latency(r, 0.5),
                latency(r, 0.99),
                latency(r, 0.999),
                c.lost,
                c.duplicated,
                c.reordered,
                r.missed,
            );
            outcome.check_run(&format!("{} round {} {name}", m.system, m.round), r);
        }
    }
    println!();
    let systems: Vec<&'static str> = {
        let mut s: Vec<_> = runs.iter().map(|m| m.system).collect();
        s.dedup();
        s.truncate(2);
        s
    };
    println!(
        "medians over {} rounds: {:<6} | {:>12} | {:>8} | {:>8} | {:>8}",
        args.rounds, "system", "deliveries/s", "p50 us", "p99 us", "p99.9 us"
    );
    let of =
        |system: &str| -> Vec<&Multicast> { runs.iter().filter(|m| m.system == system).collect() };
    for system in &systems {
        let ms = of(system);
        println!(
            "{:>25}{:<6} | {:>12.0} | {:>8.1} | {:>8.1} | {:>8.1}",
            "",
            system,
            median_of(&ms, |m| m.max.throughput()),
            median_of(&ms, |m| m.paced.latency_us(0.5)),
            median_of(&ms, |m| m.paced.latency_us(0.99)),
            median_of(&ms, |m| m.paced.latency_us(0.999)),
        );
    }
    println!();
    println!(
        "max throughput: batches of up to {} events (relay: PUBLISH frames per WebSocket message; nats: publishes, no flush),",
        relay::BATCH
    );
    println!(
        "  the publisher at most {} events ahead of the slowest subscriber (relay: and of the ACKs);",
        relay::WINDOW
    );
    println!(
        "  seconds = first send to last delivery; deliveries/s = distinct events received over all {subs} subscribers per second"
    );
    println!(
        "latency: receive time - send time (one Instant clock, this process), every delivery to every subscriber"
    );
    println!(
        "every delivery checked by sender and sequence number: lost, dup(licated) and reord(ered) counted apart"
    );
    if systems.len() > 1 {
        println!(
            "nats: one async-nats client per subscriber and one for the publisher, core NATS (no acknowledgements; missed is always 0)"
        );
    }
    for m in &runs {
        for (name, r) in [("max throughput", &m.max), ("paced", &m.paced)] {
            if r.rejected > 0 {
                println!(
                    "{} round {} {name}: {} PUBLISH frames rejected",
                    m.system, m.round, r.rejected
                );
            }
        }
    }
    let relay_runs = of("relay");
    let relay_counts: Counts = relay_runs.iter().map(|m| m.counts()).sum();
    let all_counts: Counts = runs.iter().map(Multicast::counts).sum();
    // Per round, relay over NATS; the median of those.
    let mut ratios = None;
    if systems.len() > 1 {
        let nats_runs = of("nats");
        let (mut throughput, mut p99): (Vec<f64>, Vec<f64>) = relay_runs
            .iter()
            .zip(&nats_runs)
            .map(|(r, n)| {
                (
                    r.max.throughput() / n.max.throughput(),
                    r.paced.latency_us(0.99) / n.paced.latency_us(0.99),
                )
            })
            .unzip();
        println!(
            "relay / nats per round: deliveries/s {}; p99 {}",
            list(&throughput),
            list(&p99)
        );
        let (throughput, p99) = (median(&mut throughput), median(&mut p99));
        println!();
        outcome.target(
            &format!("relay deliveries/s >= {TARGET_THROUGHPUT_VS_NATS} x NATS's (median of the rounds' ratios)"),
            throughput,
            throughput >= TARGET_THROUGHPUT_VS_NATS,
        );
        outcome.target(
            &format!("relay p99 <= {TARGET_P99_VS_NATS} x NATS's (median of the rounds' ratios)"),
            p99,
            p99 <= TARGET_P99_VS_NATS,
        );
        ratios = Some((throughput, p99));
    }
    println!();
    println!(
        "multicast subscribers={subs} throughput_eps={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} lost={} duplicated={} reordered={}",
        median_of(&relay_runs, |m| m.max.throughput()),
        median_of(&relay_runs, |m| m.paced.latency_us(0.5)),
        median_of(&relay_runs, |m| m.paced.latency_us(0.99)),
        median_of(&relay_runs, |m| m.paced.latency_us(0.999)),
        relay_counts.lost,
        relay_counts.duplicated,
        relay_counts.reordered,
    );
    if let Some((throughput, p99)) = ratios {
        println!(
            "relay_vs_nats throughput_ratio={throughput:.3} p99_ratio={p99:.3} lost={} duplicated={} reordered={}",
            all_counts.lost, all_counts.duplicated, all_counts.reordered
        );
    }
    Ok(outcome)
}
