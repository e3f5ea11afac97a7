//! What the reliability layer needs from the bus it serves, and the error it reports to it.

use interrole_core::{InstanceId, InterRoleEvent, TransportError};

use super::repair::Control;

/// The bus, as the reliability layer sees it. Implemented by the bus; the layer holds it from
/// the start (the bus is built around the layer, not the other way round).
pub(crate) trait Sink: Send + Sync {
    /// Delivers an event the layer released (in its stream's order, once) to the bus.
    fn deliver(&self, event: InterRoleEvent);
    /// `count` events of `sender` (or of senders unknown) are lost for good: the observers are
    /// told.
    fn missed(&self, sender: Option<InstanceId>, count: u64);
    /// The far end refused the event numbered `seq` for good: a request waiting on it fails.
    fn refused(&self, seq: u64, error: TransportError);
    /// Sends one of the layer's own events through the bus's numbering: a repair request or a
    /// repair directed to `to`, or a heartbeat to every other instance (`to` unused). Returns
    /// whether it was taken; the sink logs why not.
    fn control(&self, to: &InstanceId, control: Control) -> bool;
}

/// Why the layer did not take an event to send.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The bus's connection is closed for good, without an error.
    Closed,
    /// The transport refused the event, or the connection closed with this error.
    Transport(TransportError),
    /// Too many events wait for acknowledgement.
    OutboxFull {
        /// Events waiting.
        events: usize,
        /// Their bytes.
        bytes: usize,
    },
}
