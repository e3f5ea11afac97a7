//! What can go wrong after the arguments parsed: each failure says what it was doing, on one
//! line (`main` prints it after `interrole: ` and exits 1).

use std::time::Duration;

use interrole::{
    BuildError, InstanceId, InvalidName, PublishError, RequestError, TransportError, TypeTag,
};

/// A failure of a command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Neither `--relay` nor `--nats` (nor their environment variables) was given.
    #[error("no server: give --relay URL [--key NAME=KEY] or --nats URL")]
    NoServer,
    /// `--key` is not `NAME=KEY`.
    #[error("--key: {0}")]
    Key(String),
    /// `--key` without a relay to use it on.
    #[error("--key is for --relay; NATS takes no key here")]
    KeyWithoutRelay,
    /// The instance id or the topic is not a valid name.
    #[error("{what}: {source}")]
    Name {
        /// `--instance`, `--topic` or `--to`.
        what: &'static str,
        /// Why it is not acceptable.
        source: InvalidName,
    },
    /// The bus could not be built (a bad relay URL, say).
    #[error("{server}: {source}")]
    Build {
        /// The server's URL.
        server: String,
        /// Why.
        source: BuildError,
    },
    /// The connection did not open within `--connect-timeout`.
    #[error("cannot connect to {server} within {timeout:?}: {last}")]
    ConnectTimeout {
        /// The server's URL.
        server: String,
        /// `--connect-timeout`.
        timeout: Duration,
        /// The last connection error, or the state the connection was in.
        last: String,
    },
    /// The connection was refused for good (bad credentials, say).
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The server's URL.
        server: String,
        /// What the transport said.
        source: TransportError,
    },
    /// The connection closed for good while the command ran.
    #[error("the connection closed: {0}")]
    Closed(String),
    /// A publish failed.
    #[error("publish: {0}")]
    Publish(PublishError),
    /// What was published was not acknowledged before the bus closed.
    #[error("publish: not every event was acknowledged by the server within {0:?}")]
    NotAcknowledged(Duration),
    /// No reply came in time.
    #[error(
        "request to {to}: no reply within {timeout:?} (is {to} connected, on this topic, and serving {tag}?)"
    )]
    NoReply {
        /// The target instance.
        to: InstanceId,
        /// The request's tag.
        tag: TypeTag,
        /// `--timeout`.
        timeout: Duration,
    },
    /// A request failed otherwise.
    #[error("request to {to}: {source}")]
    Request {
        /// The target instance.
        to: InstanceId,
        /// Why.
        source: RequestError,
    },
    /// The reply could not be shown.
    #[error("the reply from {to}: {detail}")]
    Reply {
        /// The target instance.
        to: InstanceId,
        /// Why.
        detail: String,
    },
    /// The bench could not run to its end.
    #[error("bench: {0}")]
    Bench(String),
    /// Standard output is closed or failing.
    #[error("writing to standard output: {0}")]
    Output(#[from] std::io::Error),
    /// The tokio runtime could not start.
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
}

impl CliError {
    /// Whether the command line itself is wrong (exit status 2, as clap's usage errors).
    pub(crate) fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::NoServer | Self::Key(_) | Self::KeyWithoutRelay | Self::Name { .. }
        )
    }
}
