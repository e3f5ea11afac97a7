//! The transport seam: how envelopes leave one process and reach the others.
//!
//! A [`Transport`] opens [`Connection`]s. A connection belongs to one instance on one topic: what
//! it sends reaches every other connection on the topic (multicast) or one named instance
//! (directed), and what others send to it arrives at the [`Inbound`] given when it was opened.
//! A transport never echoes an instance's own events back to it: the bus delivers its own events
//! to its local observers directly.
//!
//! Connections fail. Each failure is a [`TransportError`] that says whether it is
//! [transient](TransportError::is_transient) (retry: the connection was lost, the far end is
//! restarting) or fatal (stop: bad credentials, forbidden, payload too large). Reconnecting,
//! retrying and buffering belong to the reliability layer above, not to transports.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::event::InterRoleEvent;
use crate::id::{InstanceId, Topic};

/// What a transport can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TransportLimits {
    /// The largest envelope, in bytes, that a connection accepts; `None` when there is no limit
    /// (an in-process transport that never encodes).
    pub max_envelope: Option<usize>,
    /// Whether the transport itself never loses, duplicates or reorders events, and never
    /// disconnects on its own (an in-process transport). A bus skips its reliability layer
    /// (outbox, de-duplication, gap detection, reconnection) on such a transport.
    pub lossless: bool,
}

impl TransportLimits {
    /// Limits with the given largest envelope.
    pub fn with_max_envelope(max_envelope: Option<usize>) -> Self {
        Self {
            max_envelope,
            lossless: false,
        }
    }

    /// Marks the transport as lossless (see [`TransportLimits::lossless`]).
    pub fn lossless(mut self) -> Self {
        self.lossless = true;
        self
    }
}

/// What a connection is opened for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenSpec {
    /// The topic to join.
    pub topic: Topic,
    /// The instance the connection speaks for; directed events to it arrive on this connection.
    pub instance: InstanceId,
    /// Where to resume: for each sender, the last sequence number already received. A transport
    /// that keeps a replay window re-delivers what follows; others ignore it.
    pub resume: Vec<(InstanceId, u64)>,
    /// Whether the instance was connected before (a reconnection): a transport with a replay
    /// window then also re-delivers what it holds from senders not in `resume`, which may have
    /// started while the instance was away.
    pub rejoin: bool,
}

impl OpenSpec {
    /// A spec for `instance` on `topic`, with nothing to resume.
    pub fn new(topic: Topic, instance: InstanceId) -> Self {
        Self {
            topic,
            instance,
            resume: Vec::new(),
            rejoin: false,
        }
    }
}

/// A way to carry events between bus instances. Object safe: buses hold `Arc<dyn Transport>`.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and metrics (`"loopback"`, `"relay"`, `"nats"`).
    fn name(&self) -> &'static str;

    /// What this transport can carry.
    fn limits(&self) -> TransportLimits;

    /// Opens a connection for `spec.instance` on `spec.topic`. Everything other instances publish
    /// on the topic, and everything directed to `spec.instance`, is handed to `inbound` until the
    /// connection is closed or lost. The connection stays usable when the `Transport` handle that
    /// opened it is dropped.
    ///
    /// # Errors
    /// A [`TransportError`]; [transient](TransportError::is_transient) ones may succeed on retry.
    ///
    /// # Cancel safety
    ///
    /// Implementations must be cancel safe, and callers may rely on it: a caller may drop the
    /// future at any await point (to give up on a slow attempt, or after polling it once) and
    /// call `open` again. A dropped `open` leaves no connection, no task and no open socket
    /// behind, and hands `inbound` nothing after it is dropped. Two things may remain:
    ///
    /// - `inbound` may already have been handed events, acknowledgements or missed counts that
    ///   arrived while the connection was being set up (the relay transport reads the
    ///   subscription while it waits for the relay to confirm it). A caller that drops `open`
    ///   must be ready for that, as it is for duplicates after any reconnection.
    /// - The far end may have acted on the attempt: it may briefly count the abandoned socket as
    ///   the instance's connection until it sees it close (a new `open` of the same instance
    ///   replaces it on the relay), and what a transport creates to stay (NATS JetStream streams
    ///   and durable consumers) stays.
    async fn open(
        &self,
        spec: OpenSpec,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Arc<dyn Connection>, TransportError>;
}

/// One instance's open connection on one topic.
#[async_trait]
pub trait Connection: Send + Sync + fmt::Debug {
    /// Queues `event` for every other instance on the topic (`target` is `None`) or for the one
    /// instance `target` names. Never waits for the network: a transport that must write bytes
    /// queues them for its own task. The far end's acknowledgement, where the transport has one,
    /// arrives through [`Inbound::acknowledged`].
    ///
    /// # Errors
    /// [`TransportErrorKind::PayloadTooLarge`] for an envelope over the limit,
    /// [`TransportErrorKind::Closed`] after [`Connection::close`], a transient error when the
    /// connection is lost, [`TransportErrorKind::NoListener`] for a target not connected.
    fn send(
        &self,
        event: &InterRoleEvent,
        target: Option<&InstanceId>,
    ) -> Result<(), TransportError>;

    /// Waits until everything sent so far has been handed to the far end.
    ///
    /// # Errors
    /// The error that ended the connection, if it ended first.
    ///
    /// # Cancel safety
    ///
    /// Implementations must be cancel safe: `flush` only waits. If the future is dropped before
    /// it completes, nothing is lost: every event sent so far stays queued and is written as if
    /// `flush` had not been called. It may be called again at any time; each call waits for
    /// what was sent before that call.
    async fn flush(&self) -> Result<(), TransportError>;

    /// Closes the connection. Once it returns, the inbound is handed nothing more.
    ///
    /// # Cancel safety
    ///
    /// Closing must take effect at the first poll, so that a close whose future is dropped
    /// still closes: from then on [`send`](Connection::send) fails (with
    /// [`TransportErrorKind::Closed`], or the error that had already ended the connection),
    /// [`is_open`](Connection::is_open) is false, and the
    /// connection's tasks have been told to stop and stop on their own (an event being handed
    /// to the inbound at that moment may still complete). What a dropped `close` loses is the
    /// wait: the promise that the inbound is handed nothing more holds only once a `close`
    /// has returned, and a second `close` returns without waiting for what the dropped one had
    /// started. Network resources are released no later than when the last handle to the
    /// connection is dropped. A `close` future that is never polled does nothing.
    async fn close(&self);

    /// Whether the connection is still open.
    fn is_open(&self) -> bool;
}

/// Where a connection hands what arrives for it.
///
/// Called from the transport's own threads or tasks; implementations return quickly.
pub trait Inbound: Send + Sync + fmt::Debug {
    /// An event another instance published on the topic, or directed to this instance.
    fn event(&self, event: InterRoleEvent);

    /// The far end has accepted every event of this instance up to `seq`, inclusive.
    fn acknowledged(&self, seq: u64) {
        let _ = seq;
    }

    /// The far end refused this instance's event `seq` (it is not delivered): an envelope too
    /// large, a directed event whose target is not connected. Reported before the
    /// acknowledgement that covers `seq`. The default ignores it.
    fn rejected(&self, seq: u64, error: TransportError) {
        let _ = (seq, error);
    }

    /// Events were lost before they reached this connection: `count` of them, from `sender` when
    /// the transport knows whose.
    fn missed(&self, sender: Option<&InstanceId>, count: u64) {
        let _ = (sender, count);
    }

    /// The connection ended without [`Connection::close`] being called: the far end went away, or
    /// refused something. Nothing more arrives on it.
    fn closed(&self, error: TransportError);
}

/// What kind of transport failure this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// The connection was lost or could not be made (transient).
    ConnectionLost,
    /// The far end did not answer in time (transient).
    Timeout,
    /// The far end is restarting or over capacity (transient).
    Unavailable,
    /// Nobody is listening yet: no such instance, no listener on the path (transient).
    NoListener,
    /// The credentials were refused (fatal).
    Unauthorized,
    /// The credentials do not allow this path or action (fatal).
    Forbidden,
    /// The envelope is larger than the transport carries (fatal for that event).
    PayloadTooLarge,
    /// The far end broke the protocol, or refused ours (fatal).
    Protocol,
    /// An envelope could not be encoded or decoded (fatal for that event).
    Codec,
    /// The instance is already connected on this topic (fatal).
    Conflict,
    /// The connection was closed by its owner (fatal).
    Closed,
}

impl TransportErrorKind {
    /// Whether errors of this kind may go away on retry.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::ConnectionLost | Self::Timeout | Self::Unavailable | Self::NoListener
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLost => "connection lost",
            Self::Timeout => "timed out",
            Self::Unavailable => "unavailable",
            Self::NoListener => "no listener",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::PayloadTooLarge => "payload too large",
            Self::Protocol => "protocol error",
            Self::Codec => "codec error",
            Self::Conflict => "conflict",
            Self::Closed => "closed",
        }
    }
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport failure: its [kind](TransportError::kind), a message, and the underlying error.
///
/// The message is complete on one line: it says the underlying error's text too, so that a log
/// that prints the error with `{}` says everything. The underlying error is kept for callers
/// that match on it ([`cause`](TransportError::cause), e.g. an `std::io::Error`'s kind or a
/// transport's own typed error), and is deliberately not [`source`](std::error::Error::source):
/// a report that walks the chain of sources would print its text twice.
#[derive(Clone)]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl TransportError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            cause: None,
        }
    }

    /// Keeps the underlying error, whose text the message already says (see the type's docs),
    /// for callers that match on it.
    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// The underlying error, when one was kept: downcast it to match on it
    /// (`error.cause().and_then(|c| c.downcast_ref::<std::io::Error>())`).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// Whether the failure may go away on retry (see [`TransportErrorKind::is_transient`]).
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TransportError");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(c) = &self.cause {
            d.field("cause", c);
        }
        d.finish()
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// No `source`: the message says the cause's text already (see the type's docs).
impl std::error::Error for TransportError {}

impl From<crate::codec::CodecError> for TransportError {
    fn from(e: crate::codec::CodecError) -> Self {
        // The codec error's message is this error's; it is not also the source, so that a chain
        // of errors prints it once.
        Self::new(TransportErrorKind::Codec, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transience_is_a_property_of_the_kind() {
        let lost = TransportError::new(TransportErrorKind::ConnectionLost, "reset by peer");
        assert!(lost.is_transient());
        assert_eq!(lost.to_string(), "connection lost: reset by peer");
        for kind in [
            TransportErrorKind::Unauthorized,
            TransportErrorKind::Forbidden,
            TransportErrorKind::PayloadTooLarge,
            TransportErrorKind::Protocol,
            TransportErrorKind::Closed,
        ] {
            assert!(!TransportError::new(kind, "x").is_transient(), "{kind}");
        }
    }

    #[test]
    fn the_traits_are_object_safe() {
        fn _transport(_: &dyn Transport) {}
        fn _connection(_: &dyn Connection) {}
        fn _inbound(_: &dyn Inbound) {}
    }

    #[test]
    fn the_retry_policy_retries_transient_kinds_only() {
        let e = |k| TransportError::new(k, "x");
        assert!(e(TransportErrorKind::ConnectionLost).is_transient());
        assert!(e(TransportErrorKind::Unavailable).is_transient());
        assert!(!e(TransportErrorKind::Unauthorized).is_transient());
        assert!(!e(TransportErrorKind::Forbidden).is_transient());
    }
}
