//! The brokers that `multicast` and `sweep` load: the relay, then nats-server, each in a child
//! process started just before its runs and killed after them, so that the two never share the
//! CPU; both pinned to the same CPUs, nats-server with `GOMAXPROCS` = the relay's workers.

use benches::cpu::BrokerCpus;
use benches::nats::{NATS_SERVER, NatsProcess, nats_multicast_run};
use benches::relay::{self, Pace, RelayProcess, RunResult};

use crate::support::Error;

/// A broker running in a child process (killed when dropped).
#[derive(Debug)]
pub(crate) enum Broker {
    Relay(RelayProcess),
    Nats(NatsProcess),
}

impl Broker {
    /// Runs `measure` on the relay, then on nats-server when it is installed (and says so when
    /// it is not), both on `cpus`. Each broker is started just before and killed just after its
    /// `measure`, on errors too.
    pub(crate) fn each(
        cpus: &BrokerCpus,
        mut measure: impl FnMut(&Broker) -> Result<(), Error>,
    ) -> Result<(), Error> {
        measure(&Broker::Relay(spawn_relay(cpus)?))?;
        // The relay is gone before NATS starts.
        match spawn_nats(cpus)? {
            Some(server) => measure(&Broker::Nats(server)),
            None => {
                println!("nats: {NATS_SERVER} not found on PATH: the NATS side was skipped");
                Ok(())
            }
        }
    }

    /// The broker's name in tables and summary lines.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Relay(_) => "relay",
            Self::Nats(_) => "nats",
        }
    }

    /// The broker's URL: `ws://ADDR` for the relay, `nats://ADDR` for nats-server.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Relay(server) => format!("ws://{}", server.addr()),
            Self::Nats(server) => server.url(),
        }
    }

    /// The relay path or NATS subject of the run called `name`.
    pub(crate) fn topic(&self, name: &str) -> String {
        match self {
            Self::Relay(_) => format!("bench/{name}"),
            Self::Nats(_) => format!("bench.{name}"),
        }
    }

    /// One publisher and `subscribers` subscribers on `topic`, at `pace` (see
    /// [`relay::multicast_run`] and [`nats_multicast_run`]).
    pub(crate) async fn multicast_run(
        &self,
        topic: &str,
        subscribers: usize,
        pace: Pace,
        record_latency: bool,
    ) -> Result<RunResult, Error> {
        match self {
            Self::Relay(server) => {
                relay::multicast_run(server.addr(), topic, subscribers, pace, record_latency).await
            }
            Self::Nats(server) => {
                nats_multicast_run(&server.url(), topic, subscribers, pace, record_latency).await
            }
        }
    }
}

/// Starts the relay in a child process on `cpus` and says where it listens.
pub(crate) fn spawn_relay(cpus: &BrokerCpus) -> Result<RelayProcess, Error> {
    let server = RelayProcess::spawn_pinned(cpus)?;
    println!("relay: pid {} on {}", server.pid(), server.addr());
    Ok(server)
}

/// Starts `nats-server` in a child process on `cpus`, when it is installed, and says where it
/// listens.
pub(crate) fn spawn_nats(cpus: &BrokerCpus) -> Result<Option<NatsProcess>, Error> {
    let server = NatsProcess::spawn_pinned(cpus)?;
    if let Some(server) = &server {
        println!(
            "nats: pid {} on {} ({})",
            server.pid(),
            server.url(),
            server.version()
        );
    }
    Ok(server)
}
