//! What both modes' tasks share: the connection's state, the events on their way out, failing
//! the connection once, and decoding what arrives.

use bytes::Bytes;
use interrole_core::InterRoleEvent;
use interrole_core::link::LinkState;
use tokio::sync::mpsc;

use crate::error::NatsError;

/// The connection's state, shared by its handle and its tasks.
pub(crate) type Shared = LinkState;

/// Fails the connection, saying so once.
pub(crate) fn fail(shared: &Shared, error: NatsError) {
    let error = interrole_core::TransportError::from(error);
    let message = error.to_string();
    if shared.fail(error) {
        tracing::debug!(error = %message, "NATS connection lost");
    }
}

/// One event on its way to the server.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) subject: String,
    pub(crate) seq: u64,
    pub(crate) envelope: Bytes,
    /// Directed to one instance (core mode asks the server to say when nobody listens).
    pub(crate) directed: bool,
}

/// The next batch to write: the first event to come, and up to 1,023 more already waiting;
/// `None` once the channel is closed.
pub(crate) async fn next_batch(
    rx: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> Option<Vec<Outgoing>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < 1024 {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// The event of an envelope that arrived on `subject`; `None`, logged and reported missed to
/// the inbound, when it does not decode.
pub(crate) fn decode(shared: &Shared, subject: &str, envelope: Bytes) -> Option<InterRoleEvent> {
    match InterRoleEvent::from_wire(envelope) {
        Ok(event) => Some(event),
        Err(error) => {
            tracing::warn!(%subject, %error, "an undecodable envelope was dropped");
            shared.inbound().missed(None, 1);
            None
        }
    }
}
