//! `compare scale`: idle subscribers on one relay path; the relay's memory for each, and the
//! time from a publish to its last delivery.

use std::process::ExitCode;
use std::time::Duration;

use benches::measure::median;
use benches::relay;

use crate::support::{Error, Outcome, conclude, print_machine, start_relay};

/// `compare scale [--subscribers N] [--check]`: `n` idle subscribers; with `check`, a missed
/// memory target is a failure (exit code 1), so that CI can run it; without, only the verdict
/// line says so. An event that does not reach every subscriber always is.
pub(crate) fn scale(n: usize, check: bool) -> ExitCode {
    conclude("scale", scale_inner(n), check)
}

/// Runs `compare scale` with `n` subscribers.
fn scale_inner(n: usize) -> Result<Outcome, Error> {
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
    let mut outcome = Outcome::default();
    outcome.target(
        &format!(
            "<= {} KiB per idle subscriber",
            relay::TARGET_KIB_PER_SUBSCRIBER
        ),
        per,
        per <= relay::TARGET_KIB_PER_SUBSCRIBER,
    );
    if latencies.len() < r.rounds.len() {
        outcome.failed_checks.push(format!(
            "{} of {} events did not reach every subscriber",
            r.rounds.len() - latencies.len(),
            r.rounds.len()
        ));
    }
    let last_ms = if latencies.is_empty() {
        f64::NAN
    } else {
        median(&mut latencies)
    };
    println!(
        "publish to last delivery: median of {} single events",
        latencies.len()
    );
    println!();
    println!(
        "scale subscribers={n} rss_per_subscriber_kib={per:.2} publish_to_last_delivery_ms={last_ms:.2}"
    );
    Ok(outcome)
}
