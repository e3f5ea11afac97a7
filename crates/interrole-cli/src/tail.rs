//! `interrole tail`: every event on the topic, printed as it arrives.

use std::io::Write;

use interrole::{InterRoleEvent, Observer, ObserverError};
use tokio::sync::mpsc;

use crate::connect::Endpoint;
use crate::error::CliError;
use crate::format::Shown;

/// What the bus hands the printing loop.
enum Seen {
    Event(InterRoleEvent),
    Error(ObserverError),
    /// The bus closed (a fatal connection error): nothing more comes.
    Completed,
}

/// Forwards every event, and what the bus reports missed, to the printing loop.
struct Forward(mpsc::UnboundedSender<Seen>);

impl Observer<InterRoleEvent> for Forward {
    fn on_next(&self, event: &InterRoleEvent) {
        let _ = self.0.send(Seen::Event(event.clone()));
    }

    fn on_error(&self, error: ObserverError) {
        let _ = self.0.send(Seen::Error(error));
    }

    fn on_completed(&self) {
        let _ = self.0.send(Seen::Completed);
    }
}

/// Subscribes to every event on the topic, says `tail: listening` on standard error once the
/// bus is connected, and prints each event on standard output (`json`: one JSON object per
/// line) until `count` events were printed, or for ever.
///
/// # Errors
/// The connection did not open, or standard output failed.
pub(crate) async fn run(
    endpoint: &Endpoint,
    json: bool,
    count: Option<u64>,
) -> Result<(), CliError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bus = endpoint.build(&endpoint.instance, endpoint.topic.as_ref())?;
    let subscription = bus.observe_all(Forward(tx));
    if let Err(e) = endpoint.wait_opened(&bus).await {
        drop(subscription);
        bus.close().await;
        return Err(e);
    }
    eprintln!("tail: listening");
    let mut printed = 0u64;
    let result = loop {
        if count.is_some_and(|n| printed >= n) {
            break Ok(());
        }
        let Some(seen) = rx.recv().await else {
            break Ok(());
        };
        match seen {
            Seen::Event(event) => {
                let shown = Shown::of(&event);
                let line = if json { shown.json() } else { shown.line() };
                let mut out = std::io::stdout().lock();
                if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                    break Err(CliError::Output(e));
                }
                printed += 1;
            }
            Seen::Error(error) => eprintln!("tail: {error}"),
            Seen::Completed => break Err(CliError::Closed(closed_reason(&bus))),
        }
    };
    drop(subscription);
    bus.close().await;
    result
}

/// Why a bus closed without being asked to: its host's last error.
fn closed_reason(bus: &interrole::Bus) -> String {
    bus.host()
        .and_then(|h| h.status().error)
        .map_or_else(|| "the bus closed".to_owned(), |e| e.to_string())
}
