//! The errors of the Hybrid Connections clients.

use interrole_core::{TransportError, TransportErrorKind};
use tokio_tungstenite::tungstenite;

pub(super) fn closed_error() -> TransportError {
    TransportError::new(TransportErrorKind::Closed, "the listener was closed")
}

pub(super) fn lost(message: impl Into<String>) -> TransportError {
    TransportError::new(TransportErrorKind::ConnectionLost, message)
}

pub(super) fn protocol(message: impl Into<String>) -> TransportError {
    TransportError::new(TransportErrorKind::Protocol, message)
}

pub(super) fn ws_error(e: tungstenite::Error) -> TransportError {
    lost(format!("WebSocket: {e}")).with_source(e)
}

pub(super) fn io_error(e: std::io::Error) -> TransportError {
    lost(format!("HTTP: {e}")).with_source(e)
}
