//! WebSockets over a [`Conn`]: the server side of one after its 101, and close frames.

use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::conn::Conn;

/// A WebSocket the relay serves.
pub(crate) type Ws = WebSocketStream<Conn>;

/// The server side of a WebSocket on `stream`, whose 101 has been written; `rest` is what was
/// read past the request head.
pub(crate) async fn server_side(stream: Conn, rest: Vec<u8>, config: WebSocketConfig) -> Ws {
    WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await
}

/// A close frame with `code` and `reason`, cut to 120 bytes (a close reason is at most 123).
pub(crate) fn close_frame(code: u16, reason: &str) -> Message {
    let mut reason = reason.to_owned();
    while reason.len() > 120 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}
