//! `compare bus`, the cross-process figures of record: a `Bus` per publisher and subscriber over
//! the relay and over NATS, against raw async-nats on nats-server (see [`benches::bus`]), in
//! interleaved rounds; every delivery checked.

use std::process::ExitCode;
use std::time::Duration;

use benches::bus::{BusNotes, EVENT_BYTES, SUBSCRIBERS, System, bus_run};
use benches::cpu::BrokerCpus;
use benches::measure::median;
use benches::nats::NATS_SERVER;
use benches::relay::{self, Pace, RunResult};
use benches::verify::Counts;

use crate::broker::{Broker, spawn_nats, spawn_relay};
use crate::support::{Error, Outcome, RunArgs, conclude, latency, list, median_of, print_machine};

/// Target: the relay bus's deliveries/s at least this times raw async-nats's.
const TARGET_RELAY_THROUGHPUT: f64 = 1.0;
/// Target: the relay bus's p99 at 20,000 events/s at most this times raw async-nats's.
const TARGET_RELAY_P99: f64 = 1.0;
/// Target: the NATS bus's deliveries/s at least this times raw async-nats's.
const TARGET_NATS_THROUGHPUT: f64 = 0.8;

/// Runs `compare bus`.
pub(crate) fn bus(args: &RunArgs) -> ExitCode {
    conclude("bus", bus_inner(args), args.check)
}

/// One system's max-throughput and paced runs in one round.
struct Round {
    round: u32,
    system: System,
    max: RunResult,
    paced: RunResult,
    notes: [BusNotes; 2],
}

impl Round {
    fn counts(&self) -> Counts {
        self.max.counts() + self.paced.counts()
    }
}

fn bus_inner(args: &RunArgs) -> Result<Outcome, Error> {
    print_machine(interrole::pool_threads());
    let cpus = BrokerCpus::detect();
    println!(
        "1 publisher, {SUBSCRIBERS} subscribers, each its own connection; typed events of about {EVENT_BYTES} bytes (bincode); \
         {} interleaved rounds ({})",
        args.rounds,
        System::ALL.map(System::name).join(", ")
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
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        println!("round {round}:");
        for system in System::ALL {
            // A fresh broker for each system, killed after its runs.
            let broker = start(system, &cpus)?;
            let url = broker.url();
            let (max, max_notes) = rt.block_on(bus_run(
                system,
                &url,
                &format!("bench-bus-{round}-max"),
                SUBSCRIBERS,
                max_pace,
                false,
            ))?;
            let (paced, paced_notes) = rt.block_on(bus_run(
                system,
                &url,
                &format!("bench-bus-{round}-paced"),
                SUBSCRIBERS,
                paced_pace,
                true,
            ))?;
            drop(broker);
            println!(
                "  {}: {:.0} deliveries/s, p99 {:.1} us",
                system.name(),
                max.throughput(),
                paced.latency_us(0.99)
            );
            rounds.push(Round {
                round,
                system,
                max,
                paced,
                notes: [max_notes, paced_notes],
            });
        }
    }
    drop(rt);
    println!();
    report(args, &rounds)
}

/// The broker `system` runs on, started on `cpus`.
fn start(system: System, cpus: &BrokerCpus) -> Result<Broker, Error> {
    if system.on_relay() {
        Ok(Broker::Relay(spawn_relay(cpus)?))
    } else {
        let server = spawn_nats(cpus)?
            .ok_or_else(|| format!("{NATS_SERVER} not found on PATH: compare bus needs it"))?;
        Ok(Broker::Nats(server))
    }
}

/// Prints the tables, the targets and the last line.
fn report(args: &RunArgs, rounds: &[Round]) -> Result<Outcome, Error> {
    let mut outcome = Outcome::default();
    println!(
        "{:<9} | {:>5} | {:>9} | {:>8} | {:>12} | {:>9} | {:>8} | {:>8} | {:>8} | {:>5} | {:>5} | {:>5} | {:>6}",
        "system",
        "round",
        "published",
        "seconds",
        "deliveries/s",
        "events/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "lost",
        "dup",
        "reord",
        "missed"
    );
    println!("{}", "-".repeat(132));
    for r in rounds {
        let c = r.counts();
        println!(
            "{:<9} | {:>5} | {:>9} | {:>8.3} | {:>12.0} | {:>9.0} | {:>8} | {:>8} | {:>8} | {:>5} | {:>5} | {:>5} | {:>6}",
            r.system.name(),
            r.round,
            r.max.published,
            r.max.elapsed.as_secs_f64(),
            r.max.throughput(),
            r.max.published as f64 / r.max.elapsed.as_secs_f64(),
            latency(&r.paced, 0.5),
            latency(&r.paced, 0.99),
            latency(&r.paced, 0.999),
            c.lost,
            c.duplicated,
            c.reordered,
            r.max.missed + r.paced.missed,
        );
        for (name, run) in [("max throughput", &r.max), ("paced", &r.paced)] {
            outcome.check_run(
                &format!("{} round {} {name}", r.system.name(), r.round),
                run,
            );
        }
    }
    println!();
    println!(
        "medians over {} rounds: {:<9} | {:>12} | {:>8} | {:>8} | {:>8}",
        args.rounds, "system", "deliveries/s", "p50 us", "p99 us", "p99.9 us"
    );
    let of =
        |system: System| -> Vec<&Round> { rounds.iter().filter(|r| r.system == system).collect() };
    for system in System::ALL {
        let rs = of(system);
        println!(
            "{:>25}{:<9} | {:>12.0} | {:>8.1} | {:>8.1} | {:>8.1}",
            "",
            system.name(),
            median_of(&rs, |r| r.max.throughput()),
            median_of(&rs, |r| r.paced.latency_us(0.5)),
            median_of(&rs, |r| r.paced.latency_us(0.99)),
            median_of(&rs, |r| r.paced.latency_us(0.999)),
        );
    }
    println!();
    println!(
        "seconds, deliveries/s, events/s: max-throughput run of up to {} events (or {} s), batches of up to {}, the publisher at most {} events",
        args.events,
        relay::THROUGHPUT_MAX.as_secs(),
        relay::BATCH,
        relay::WINDOW
    );
    println!(
        "  ahead of the slowest subscriber; first send to last delivery; deliveries/s = distinct events received by all {SUBSCRIBERS} subscribers per second"
    );
    println!(
        "p50, p99, p99.9: paced run, {} events/s for {} s; the time a subscriber's code gets an event - its send time (one Instant, this process)",
        relay::LATENCY_RATE,
        args.seconds
    );
    println!(
        "lost, dup(licated), reord(ered): both runs, every delivery checked by publisher and sequence number; missed: reported by a bus"
    );
    println!(
        "relay-bus / nats-bus: Bus::builder().relay(..) / .nats(NatsOptions::new(..)), one bus per publisher and subscriber, a typed observer each;"
    );
    println!(
        "  raw-nats: async-nats with default options, one client per subscriber (one subscription each) and one for the publisher,"
    );
    println!(
        "  Client::publish per event (no flush), the same event bincode-encoded, decoded by each subscriber"
    );
    for r in rounds {
        for (name, n) in [("max throughput", &r.notes[0]), ("paced", &r.notes[1])] {
            if n.outbox_full + n.filtered_duplicates + n.repaired + n.resent > 0 {
                println!(
                    "{} round {} {name}: publish found the outbox full {} times; the subscribers' buses dropped {} duplicates and repaired {}; the publisher resent {}",
                    r.system.name(),
                    r.round,
                    n.outbox_full,
                    n.filtered_duplicates,
                    n.repaired,
                    n.resent
                );
            }
        }
    }

    // Per round, each bus over raw async-nats of the same round; the median of those.
    let raw = of(System::RawNats);
    let per_round = |system: System, ratio: fn(&Round, &Round) -> f64| -> Vec<f64> {
        of(system)
            .iter()
            .zip(&raw)
            .map(|(b, r)| ratio(b, r))
            .collect()
    };
    let throughput = |b: &Round, r: &Round| b.max.throughput() / r.max.throughput();
    let p99 = |b: &Round, r: &Round| b.paced.latency_us(0.99) / r.paced.latency_us(0.99);
    let mut relay_throughput = per_round(System::RelayBus, throughput);
    let mut relay_p99 = per_round(System::RelayBus, p99);
    let mut nats_throughput = per_round(System::NatsBus, throughput);
    println!(
        "per round, over raw-nats: relay-bus deliveries/s {}; relay-bus p99 {}; nats-bus deliveries/s {}",
        list(&relay_throughput),
        list(&relay_p99),
        list(&nats_throughput)
    );
    let relay_throughput = median(&mut relay_throughput);
    let relay_p99 = median(&mut relay_p99);
    let nats_throughput = median(&mut nats_throughput);
    println!();
    outcome.target(
        &format!("relay-bus deliveries/s >= {TARGET_RELAY_THROUGHPUT} x raw-nats's (median of the rounds' ratios)"),
        relay_throughput,
        relay_throughput >= TARGET_RELAY_THROUGHPUT,
    );
    outcome.target(
        &format!("relay-bus p99 <= {TARGET_RELAY_P99} x raw-nats's (median of the rounds' ratios)"),
        relay_p99,
        relay_p99 <= TARGET_RELAY_P99,
    );
    outcome.target(
        &format!("nats-bus deliveries/s >= {TARGET_NATS_THROUGHPUT} x raw-nats's (median of the rounds' ratios)"),
        nats_throughput,
        nats_throughput >= TARGET_NATS_THROUGHPUT,
    );
    let all: Counts = rounds.iter().map(Round::counts).sum();
    println!();
    println!(
        "bus_vs_nats relay_bus_throughput_ratio={relay_throughput:.3} relay_bus_p99_ratio={relay_p99:.3} nats_bus_throughput_ratio={nats_throughput:.3} lost={} duplicated={} reordered={}",
        all.lost, all.duplicated, all.reordered
    );
    Ok(outcome)
}
