//! `compare recovery`: the relay killed and restarted, a NATS cluster node killed; how long
//! from the kill until every bus is back and events flow.

use std::process::ExitCode;
use std::time::Duration;

use benches::relay;

use crate::support::{Error, Outcome, conclude, median_of, print_machine};

/// Runs `compare recovery`; `check` changes nothing (recovery has no target): every failure to
/// recover, or to measure, already exits with code 1.
pub(crate) fn recovery(check: bool) -> ExitCode {
    conclude("recovery", recovery_inner(), check)
}

fn recovery_inner() -> Result<Outcome, Error> {
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
    let max_of = |runs: &[Recovery], f: &dyn Fn(&Recovery) -> f64| {
        runs.iter().map(f).fold(f64::NAN, f64::max)
    };
    let summary = |runs: &[Recovery]| {
        let back = |r: &Recovery| ms(r.reconnected);
        let flow = |r: &Recovery| ms(r.flowing);
        (
            median_of(runs, back),
            max_of(runs, &back),
            median_of(runs, flow),
            max_of(runs, &flow),
        )
    };
    println!(
        "{:<52} | {:>5} | {:>17} | {:>17} | {:>17}",
        "fault", "kills", "server back ms", "reconnected ms", "events flow ms"
    );
    println!(
        "{:<52} | {:>5} | {:>8} {:>8} | {:>8} {:>8} | {:>8} {:>8}",
        "", "", "median", "max", "median", "max", "median", "max"
    );
    println!("{}", "-".repeat(120));
    let server_back = |r: &Recovery| r.server_back.map_or(f64::NAN, ms);
    let (sb, sbm) = (
        median_of(&relay_runs, server_back),
        max_of(&relay_runs, &server_back),
    );
    let (rb, rbm, rf, rfm) = summary(&relay_runs);
    println!(
        "{:<52} | {:>5} | {sb:>8.1} {sbm:>8.1} | {rb:>8.1} {rbm:>8.1} | {rf:>8.1} {rfm:>8.1}",
        "relay SIGKILLed, restarted on the same port",
        relay_runs.len()
    );
    let mut last = format!("recovery relay_reconnect_ms={rb:.1} relay_flow_ms={rf:.1}");
    if let Some(runs) = &nats_runs {
        let (nb, nbm, nf, nfm) = summary(runs);
        println!(
            "{:<52} | {:>5} | {:>8} {:>8} | {nb:>8.1} {nbm:>8.1} | {nf:>8.1} {nfm:>8.1}",
            "NATS node SIGKILLed (3-node cluster)",
            runs.len(),
            "-",
            "-"
        );
        last.push_str(&format!(" nats_reconnect_ms={nb:.1} nats_flow_ms={nf:.1}"));
    }
    println!();
    println!(
        "every figure from the moment before the SIGKILL. server back = the new relay process listens (the old one reaped, \
         the new one started at once); reconnected = every bus that lost its server is connected again; events flow = every \
         subscriber has a probe published after the kill"
    );
    println!();
    println!("{last}");
    Ok(Outcome::default())
}
