//! The errors of the bus's calls. Each error's message includes its cause's; none also returns
//! it as its `source`, so that a chain of errors prints each message once.

use std::time::Duration;

use interrole_core::{InvalidName, PayloadError, TransportError};

use crate::reliable::sink::SendError;

/// Why a publish failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The bus was closed.
    #[error("the bus is closed")]
    Closed,
    /// The bus is not connected to its transport yet.
    #[error("the bus is not connected yet")]
    NotConnected,
    /// The transport refused the event.
    #[error("transport: {0}")]
    Transport(TransportError),
    /// Too many published events wait for the far end's acknowledgement (the connection is
    /// down or slow): the event was not published. Retry later, or raise
    /// [`Reliability::outbox_events`](crate::Reliability::outbox_events) /
    /// [`outbox_bytes`](crate::Reliability::outbox_bytes).
    #[error("the outbox is full: {events} events ({bytes} bytes) wait for acknowledgement")]
    OutboxFull {
        /// Events waiting.
        events: usize,
        /// Their bytes.
        bytes: usize,
    },
    /// A raw event ([`RawEvent`](interrole_core::RawEvent)) may not take this tag: it is one of
    /// the reliability layer's own (`interrole.reliable.`).
    #[error("the type tag {0} is reserved")]
    ReservedTag(String),
}

impl PublishError {
    /// Whether publishing the same event again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NotConnected | Self::OutboxFull { .. } => true,
            Self::Transport(e) => e.is_transient(),
            Self::Closed | Self::ReservedTag(_) => false,
        }
    }
}

/// Why a bus could not be built.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The instance id or the topic is not acceptable.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The transport refused to open.
    #[error("opening the transport: {0}")]
    Transport(TransportError),
    /// The relay URL given to [`BusBuilder::relay`](crate::BusBuilder::relay) is not
    /// acceptable.
    #[cfg(feature = "relay")]
    #[error("the relay URL: {0}")]
    Relay(crate::relay::ConfigError),
    /// The transport opens asynchronously and no tokio runtime was given or current.
    #[error(
        "the {0} transport needs a tokio runtime: build the bus inside one or give .runtime(handle)"
    )]
    NoRuntime(&'static str),
}

/// Why a [`Bus::request`](crate::Bus::request) got no reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request could not be sent.
    #[error("sending the request: {0}")]
    Publish(PublishError),
    /// The transport refused the request (the target is not connected, say).
    #[error("the request was refused: {0}")]
    Refused(TransportError),
    /// No reply came in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The reply is not of the type asked for, or does not decode.
    #[error("the reply: {0}")]
    Reply(PayloadError),
}


impl From<TransportError> for PublishError {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}

impl From<SendError> for PublishError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Closed => Self::Closed,
            SendError::Transport(e) => Self::Transport(e),
            SendError::OutboxFull { events, bytes } => Self::OutboxFull { events, bytes },
        }
    }
}

impl From<TransportError> for BuildError {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}
