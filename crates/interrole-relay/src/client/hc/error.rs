//! [`HcError`], the error of every Hybrid Connections call, and how one is made from what went
//! wrong.
//!
//! The Hybrid Connections clients have an error of their own rather than the bus's
//! `TransportError`: the same HTTP status means different things here (a 404 is a hybrid
//! connection that does not exist for a listener, no listener yet for a sender), the relay's
//! listener quota must be told from a refused right, and callers want the status a listener
//! rejected them with.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use tokio_tungstenite::tungstenite;

use crate::client::dial::DialError;
use crate::url::UrlError;

/// What kind of failure an [`HcError`] is. [`is_transient`](HcErrorKind::is_transient) says
/// which kinds may go away on retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HcErrorKind {
    /// The connection could not be made, or broke (transient).
    ConnectionLost,
    /// Something did not happen in time: a connection, a handshake, a response, the relay's
    /// keep-alive answers (transient).
    Timeout,
    /// The relay is restarting, overloaded, or waited in vain for a listener: it answered 408,
    /// 429 or 5xx (transient).
    Unavailable,
    /// A sender's handshake was answered 404: nobody listens on the path, yet (transient). (A
    /// listener that rejects a sender with 404 looks the same.)
    NoListener,
    /// The path already has as many listeners as the relay allows: 403 with
    /// `MaximumListenersPerEndpoint` (transient: a quota may clear).
    ListenerLimit,
    /// A 404 to a listener: no such hybrid connection, or a rendezvous address that expired or
    /// was used (fatal).
    NotFound,
    /// The credentials were refused: 401 (fatal).
    Unauthorized,
    /// The credentials do not grant this right on this path: 403 (fatal).
    Forbidden,
    /// Another refusal, with its [`status`](HcError::status): a listener rejecting a sender
    /// with it, or a relay answering 400, 410 or another 4xx not named here (fatal).
    Refused,
    /// A target over the relay's limit (413, 414), or a response body over 64 MiB (fatal).
    PayloadTooLarge,
    /// A bad argument (path, method, header, status), a malformed answer, or a TLS handshake
    /// that refused the relay's certificate (fatal).
    Protocol,
    /// The listener was closed by its owner (fatal).
    Closed,
}

impl HcErrorKind {
    /// Whether errors of this kind may go away on retry: `ConnectionLost`, `Timeout`,
    /// `Unavailable`, `NoListener` and `ListenerLimit`. A listener re-opens its control channel
    /// after these and ends on any other.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::ConnectionLost
                | Self::Timeout
                | Self::Unavailable
                | Self::NoListener
                | Self::ListenerLimit
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLost => "connection lost",
            Self::Timeout => "timed out",
            Self::Unavailable => "unavailable",
            Self::NoListener => "no listener",
            Self::ListenerLimit => "listener limit reached",
            Self::NotFound => "not found",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Refused => "refused",
            Self::PayloadTooLarge => "payload too large",
            Self::Protocol => "protocol error",
            Self::Closed => "closed",
        }
    }
}

impl fmt::Display for HcErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Hybrid Connections failure: its [kind](HcError::kind), the HTTP
/// [status](HcError::status) of a refused handshake, a one-line message, and the underlying
/// error as its [`source`](Error::source). The message never repeats the source: print the
/// chain of sources to see it.
///
/// ```
/// use interrole_relay::client::hc::{HcError, HcErrorKind};
///
/// /// Whether to try a sender's request again later.
/// fn worth_retrying(e: &HcError) -> bool {
///     match e.kind() {
///         HcErrorKind::NoListener => true, // a listener may come
///         HcErrorKind::Refused if e.status() == Some(409) => true, // the listener's "not now"
///         _ => e.is_transient(),
///     }
/// }
/// # let _ = worth_retrying;
/// ```
#[derive(Clone)]
pub struct HcError {
    kind: HcErrorKind,
    message: String,
    status: Option<u16>,
    source: Option<Arc<dyn Error + Send + Sync>>,
}

/// What a WebSocket handshake was opening, which decides what a 404 means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opening {
    /// A listener's control channel: a 404 is no such hybrid connection.
    ControlChannel,
    /// A sender's connection: a 404 is no listener on the path.
    Sender,
    /// A rendezvous address (accepting or rejecting a sender, fetching or answering a request):
    /// a 404 is an address that expired or was used.
    Rendezvous,
}

impl HcError {
    /// What kind of failure this is.
    pub fn kind(&self) -> HcErrorKind {
        self.kind
    }

    /// Whether the failure may go away on retry (see [`HcErrorKind::is_transient`]).
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }

    /// The HTTP status a handshake was refused with (by the relay, or by the listener that
    /// rejected a sender), when that is the failure.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(super) fn new(kind: HcErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            source: None,
        }
    }

    pub(super) fn with_source(mut self, source: impl Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    pub(super) fn lost(message: impl Into<String>) -> Self {
        Self::new(HcErrorKind::ConnectionLost, message)
    }

    pub(super) fn protocol(message: impl Into<String>) -> Self {
        Self::new(HcErrorKind::Protocol, message)
    }

    pub(super) fn timeout(message: impl Into<String>) -> Self {
        Self::new(HcErrorKind::Timeout, message)
    }

    /// A path that is not a valid relay path.
    pub(super) fn bad_path(path: &str, e: UrlError) -> Self {
        Self::protocol(format!("bad relay path `{path}`")).with_source(e)
    }

    /// The listener was closed by its owner.
    pub(super) fn closed() -> Self {
        Self::new(HcErrorKind::Closed, "the listener was closed")
    }

    /// A WebSocket that failed after it was open.
    pub(super) fn websocket(e: tungstenite::Error) -> Self {
        Self::lost("the WebSocket failed").with_source(e)
    }

    /// A stream that failed while `doing` something.
    pub(super) fn io(doing: &str, e: std::io::Error) -> Self {
        Self::lost(format!("{doing} failed")).with_source(e)
    }

    /// The retrying of a listener that ran out of attempts, after `last`.
    pub(super) fn gave_up(last: Self) -> Self {
        Self {
            kind: last.kind,
            message: "gave up retrying".into(),
            status: last.status,
            source: Some(Arc::new(last)),
        }
    }

    /// A WebSocket handshake answered `status` (not 101), with the relay's `description`. The
    /// kind is decided here, once: by the status, by what was `opening` for a 404, and by the
    /// description for the listener quota.
    pub(super) fn refused(status: u16, description: &str, opening: Opening) -> Self {
        let kind = match status {
            401 => HcErrorKind::Unauthorized,
            403 if description.contains("MaximumListenersPerEndpoint") => {
                HcErrorKind::ListenerLimit
            }
            403 => HcErrorKind::Forbidden,
            404 if opening == Opening::Sender => HcErrorKind::NoListener,
            404 => HcErrorKind::NotFound,
            408 | 429 | 500..=599 => HcErrorKind::Unavailable,
            413 | 414 => HcErrorKind::PayloadTooLarge,
            _ => HcErrorKind::Refused,
        };
        let message = if description.is_empty() {
            format!("the relay answered {status}")
        } else {
            format!("the relay answered {status}: {description}")
        };
        Self {
            status: Some(status),
            ..Self::new(kind, message)
        }
    }

    /// A connection to the relay or a rendezvous that could not be opened.
    pub(super) fn dial(e: DialError, opening: Opening) -> Self {
        use tungstenite::Error as E;
        let (bad_certificate, tls_refusal) = (e.is_bad_certificate(), e.is_tls_refusal());
        match e {
            DialError::Tcp { endpoint, source } => {
                Self::lost(format!("connecting to {endpoint} failed")).with_source(source)
            }
            DialError::ServerName(source) => {
                Self::protocol("the host is not a valid TLS server name").with_source(source)
            }
            DialError::Tls { endpoint, source } => {
                let error = if bad_certificate {
                    Self::protocol(format!("the certificate of {endpoint} does not verify"))
                } else if tls_refusal {
                    Self::protocol(format!("TLS handshake with {endpoint} failed"))
                } else {
                    Self::lost(format!("TLS handshake with {endpoint} failed"))
                };
                error.with_source(source)
            }
            DialError::Url(source) => {
                Self::protocol("the URL is not a WebSocket request").with_source(source)
            }
            DialError::Refused {
                status,
                description,
            } => Self::refused(status, &description, opening),
            DialError::Handshake(E::ConnectionClosed | E::AlreadyClosed) => {
                Self::lost("closed during the WebSocket handshake")
            }
            DialError::Handshake(source) => {
                Self::lost("the WebSocket handshake failed").with_source(source)
            }
            DialError::Timeout { endpoint, after } => {
                Self::timeout(format!("connecting to {endpoint} took over {after:?}"))
            }
        }
    }
}

impl fmt::Debug for HcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HcError");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(status) = self.status {
            d.field("status", &status);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for HcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl Error for HcError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// An error and its sources, `: `-separated, for log lines.
pub(super) struct Chain<'a>(pub(super) &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_404_means_what_was_being_opened() {
        let e = HcError::refused(404, "", Opening::Sender);
        assert_eq!((e.kind(), e.status()), (HcErrorKind::NoListener, Some(404)));
        assert!(e.is_transient());
        for opening in [Opening::ControlChannel, Opening::Rendezvous] {
            let e = HcError::refused(404, "no such entity", opening);
            assert_eq!(e.kind(), HcErrorKind::NotFound, "{opening:?}");
            assert!(!e.is_transient());
        }
    }

    #[test]
    fn only_lasting_refusals_are_fatal() {
        let kind = |status, description| {
            let e = HcError::refused(status, description, Opening::ControlChannel);
            (e.kind(), e.is_transient())
        };
        assert_eq!(kind(401, ""), (HcErrorKind::Unauthorized, false));
        assert_eq!(
            kind(403, "no Listen right"),
            (HcErrorKind::Forbidden, false)
        );
        assert_eq!(
            kind(403, "MaximumListenersPerEndpoint: at most 25"),
            (HcErrorKind::ListenerLimit, true)
        );
        assert_eq!(kind(503, ""), (HcErrorKind::Unavailable, true));
        assert_eq!(kind(429, ""), (HcErrorKind::Unavailable, true));
        assert_eq!(kind(414, ""), (HcErrorKind::PayloadTooLarge, false));
        assert_eq!(kind(418, "not today"), (HcErrorKind::Refused, false));
        let e = HcError::refused(418, "not today", Opening::Sender);
        assert_eq!(e.status(), Some(418));
        assert_eq!(e.to_string(), "refused: the relay answered 418: not today");
    }

    #[test]
    fn the_source_is_said_once_in_the_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = HcError::io("reading the HTTP response", io);
        assert_eq!(
            e.to_string(),
            "connection lost: reading the HTTP response failed"
        );
        assert_eq!(
            Chain(&e).to_string(),
            "connection lost: reading the HTTP response failed: reset by peer"
        );
        let e = HcError::gave_up(e);
        assert_eq!(e.kind(), HcErrorKind::ConnectionLost);
        assert_eq!(
            Chain(&e).to_string(),
            "connection lost: gave up retrying: connection lost: reading the HTTP response \
             failed: reset by peer"
        );
    }
}
