//! `compare multicast`: one publisher and 20 subscribers on the relay, then on NATS; the
//! maximum throughput, and the latency at a set pace.

use std::process::ExitCode;

use benches::relay::{self, Pace};

use crate::broker::Broker;
use crate::support::{Error, print_machine, report, verdict};

/// Runs `compare multicast`.
pub(crate) fn multicast() -> ExitCode {
    report("multicast", multicast_inner())
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

fn multicast_inner() -> Result<(), Error> {
    print_machine(interrole::pool_threads());
    let subs = relay::MULTICAST_SUBSCRIBERS;
    println!(
        "1 publisher, {subs} subscribers, opaque {}-byte envelopes (send timestamp in the first 8 bytes)",
        relay::ENVELOPE_BYTES
    );
    let rt = relay::runtime()?;
    let mut systems = Vec::new();
    Broker::each(|broker| {
        let topic = broker.topic("throughput");
        let max = rt.block_on(broker.multicast_run(&topic, subs, max_pace(), false))?;
        let topic = broker.topic("latency");
        let paced = rt.block_on(broker.multicast_run(&topic, subs, paced_pace(), true))?;
        systems.push(Multicast {
            system: broker.name(),
            max,
            paced,
        });
        Ok(())
    })?;
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
