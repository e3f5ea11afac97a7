//! What went wrong, typed: every [`TransportError`] this crate makes carries a [`NatsError`] as
//! its source, so that a caller can tell the cases apart without reading the message.

use std::path::PathBuf;

use async_nats::ConnectErrorKind;
use async_nats::jetstream::consumer::StreamError;
use async_nats::jetstream::context::{CreateStreamError, PublishError as JetStreamPublishError};
use async_nats::jetstream::stream::ConsumerError;
use interrole_core::{TransportError, TransportErrorKind};

/// A failure of the NATS transport.
///
/// It reaches a caller as the [cause](TransportError::cause) of a [`TransportError`]
/// ([`NatsError::of`] finds it), whose kind is [`NatsError::kind`] and whose message is this
/// error's line followed by its source's (the async-nats error, when there is one). This
/// error's own `Display` never repeats its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// [`NatsOptions::servers`](crate::options::NatsOptions::servers) is empty.
    #[error("no NATS server address given")]
    NoServer,
    /// A server address does not parse.
    #[error("NATS server address `{address}` is not valid")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why it does not parse.
        source: std::io::Error,
    },
    /// The credentials file of
    /// [`NatsAuth::CredsFile`](crate::options::NatsAuth::CredsFile) could not be read.
    #[error("reading the credentials file {}", path.display())]
    CredentialsFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// No server of the list could be connected to (the last server's error).
    #[error("connecting to NATS ({})", servers.join(","))]
    Connect {
        /// The servers of the options.
        servers: Vec<String>,
        /// The last server's answer.
        source: async_nats::ConnectError,
    },
    /// The client lost its server.
    #[error("disconnected from the NATS server")]
    Disconnected,
    /// The server is shutting down (lame duck mode).
    #[error("the NATS server is shutting down (lame duck mode)")]
    LameDuck,
    /// The server refused an action of this client's user.
    #[error("the NATS server reported an authorization violation")]
    AuthorizationViolation,
    /// A subscription could not be made.
    #[error("subscribing to a NATS subject")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// The server did not answer a round trip (which confirms subscriptions and acknowledges
    /// events) in time.
    #[error("the NATS server did not answer a round trip in time")]
    RoundTripTimeout,
    /// A round trip to the server failed.
    #[error("a round trip to the NATS server failed")]
    RoundTrip(#[source] async_nats::RequestError),
    /// A subscription ended: the client is closing or lost its server.
    #[error("the NATS subscription ended")]
    SubscriptionEnded,
    /// An event could not be published.
    #[error("publishing to NATS")]
    Publish(#[source] async_nats::PublishError),
    /// A directed event's target is not connected to the topic: the server answered "no
    /// responders".
    #[error("no instance of that name is connected to the topic (NATS: no responders)")]
    NoResponders,
    /// An envelope is larger than the server accepts.
    #[error("an envelope of {size} bytes is over the NATS server's max_payload of {max} bytes")]
    PayloadTooLarge {
        /// The envelope's size, in bytes.
        size: usize,
        /// The server's `max_payload`, in bytes.
        max: usize,
    },
    /// The connection's writer task has stopped.
    #[error("the writer has stopped")]
    WriterStopped,
    /// Durable mode on a server without JetStream.
    #[error(
        "durable mode needs JetStream, which is not enabled on the NATS server {server} \
         ({host}:{port}): start it with --js"
    )]
    JetStreamDisabled {
        /// The server's name.
        server: String,
        /// The server's host, as it says it.
        host: String,
        /// The server's port.
        port: u16,
    },
    /// The topic's JetStream stream could not be found or made.
    #[error("finding or making the JetStream stream {name} (is JetStream enabled on the server?)")]
    Stream {
        /// The stream's name.
        name: String,
        /// The server's answer.
        source: CreateStreamError,
    },
    /// A durable consumer could not be found or made.
    #[error("finding or making the JetStream consumer {name}")]
    Consumer {
        /// The consumer's name.
        name: String,
        /// The server's answer.
        source: ConsumerError,
    },
    /// A durable consumer could not be made again from its acknowledgement floor.
    #[error("making the JetStream consumer {name} again from its acknowledgement floor")]
    ConsumerReset {
        /// The consumer's name.
        name: String,
        /// The server's answer.
        source: ConsumerError,
    },
    /// The durable consumers could not be read.
    #[error("reading the durable consumers")]
    ConsumerMessages(#[source] StreamError),
    /// A durable consumer's messages ended.
    #[error("a durable consumer ended")]
    ConsumerEnded,
    /// An event could not be published to JetStream.
    #[error("publishing to JetStream")]
    JetStreamPublish(#[source] JetStreamPublishError),
    /// JetStream did not confirm that it stored an event.
    #[error("JetStream did not store an event")]
    NotStored(#[source] JetStreamPublishError),
}

impl NatsError {
    /// The kind of transport failure this is, which says whether it is worth retrying.
    pub fn kind(&self) -> TransportErrorKind {
        use TransportErrorKind as K;
        match self {
            Self::NoServer | Self::InvalidAddress { .. } | Self::JetStreamDisabled { .. } => {
                K::Protocol
            }
            Self::CredentialsFile { .. } => K::Unauthorized,
            Self::Connect { source, .. } => match source.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    K::Unauthorized
                }
                ConnectErrorKind::ServerParse | ConnectErrorKind::Tls => K::Protocol,
                ConnectErrorKind::TimedOut => K::Timeout,
                // A certificate that does not verify will not verify on retry either.
                _ if source.to_string().contains("certificate") => K::Protocol,
                _ => K::ConnectionLost,
            },
            Self::LameDuck | Self::Consumer { .. } | Self::ConsumerReset { .. } => K::Unavailable,
            Self::AuthorizationViolation => K::Forbidden,
            Self::RoundTripTimeout => K::Timeout,
            Self::NoResponders => K::NoListener,
            Self::PayloadTooLarge { .. } => K::PayloadTooLarge,
            Self::Stream { source, .. } => {
                let text = source.to_string();
                if text.contains("no responders") || text.contains("not enabled") {
                    // JetStream is off on the server: configuration, not a passing fault.
                    K::Protocol
                } else {
                    K::Unavailable
                }
            }
            Self::Disconnected
            | Self::Subscribe(_)
            | Self::RoundTrip(_)
            | Self::SubscriptionEnded
            | Self::Publish(_)
            | Self::WriterStopped
            | Self::ConsumerMessages(_)
            | Self::ConsumerEnded
            | Self::JetStreamPublish(_)
            | Self::NotStored(_) => K::ConnectionLost,
        }
    }

    /// Whether the failure may go away on retry (see [`TransportErrorKind::is_transient`]).
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// The NATS error that `error` carries, when this crate made it.
    ///
    /// ```
    /// use interrole_core::TransportError;
    /// use interrole_nats::NatsError;
    ///
    /// let error = TransportError::from(NatsError::NoServer);
    /// assert!(matches!(NatsError::of(&error), Some(NatsError::NoServer)));
    /// ```
    pub fn of(error: &TransportError) -> Option<&NatsError> {
        error.cause()?.downcast_ref()
    }
}

impl From<NatsError> for TransportError {
    /// A transport error of the NATS error's kind, saying its line and its source's, with the
    /// NATS error as its [`cause`](TransportError::cause).
    fn from(error: NatsError) -> Self {
        let message = match std::error::Error::source(&error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        };
        TransportError::new(error.kind(), message).with_cause(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_error_carries_the_nats_error_and_says_it_once() {
        let error = TransportError::from(NatsError::PayloadTooLarge { size: 10, max: 5 });
        assert_eq!(error.kind(), TransportErrorKind::PayloadTooLarge);
        assert_eq!(
            error.to_string(),
            "payload too large: an envelope of 10 bytes is over the NATS server's max_payload of \
             5 bytes"
        );
        assert!(matches!(
            NatsError::of(&error),
            Some(NatsError::PayloadTooLarge { size: 10, max: 5 })
        ));
        let other = TransportError::new(TransportErrorKind::Closed, "closed");
        assert!(NatsError::of(&other).is_none());
    }

    #[test]
    fn the_message_adds_the_source_which_the_nats_error_does_not_say() {
        let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let nats = NatsError::CredentialsFile {
            path: "/x.creds".into(),
            source,
        };
        assert_eq!(nats.to_string(), "reading the credentials file /x.creds");
        assert!(!nats.is_transient());
        let error = TransportError::from(nats);
        assert_eq!(
            error.to_string(),
            "unauthorized: reading the credentials file /x.creds: no such file"
        );
        // Said once in a chain of sources: the transport error's message says it all.
        assert!(std::error::Error::source(&error).is_none());
        let nats = NatsError::of(&error).unwrap();
        assert_eq!(
            std::error::Error::source(nats).unwrap().to_string(),
            "no such file"
        );
    }

    #[test]
    fn a_server_without_jetstream_is_a_configuration_error() {
        let error = NatsError::JetStreamDisabled {
            server: "n1".into(),
            host: "0.0.0.0".into(),
            port: 4222,
        };
        assert_eq!(error.kind(), TransportErrorKind::Protocol);
        assert!(error.to_string().contains("start it with --js"), "{error}");
    }
}
