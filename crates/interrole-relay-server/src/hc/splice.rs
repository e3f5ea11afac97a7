//! Two WebSockets spliced message for message: a sender and its listener after their
//! rendezvous.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::wait::{self, CLOSE_GRACE};
use crate::ws::{self, Ws};

/// Relays messages between a sender and its listener until one closes.
pub(crate) async fn splice(a: Ws, b: Ws, mut shutdown: watch::Receiver<bool>) {
    let (mut a_tx, mut a_rx) = a.split();
    let (mut b_tx, mut b_rx) = b.split();
    // The close each side gets, when the other initiated it.
    let (to_a, to_b): (Option<Message>, Option<Message>) = loop {
        tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    let m = ws::close_frame(1001, "relay shutting down");
                    break (Some(m.clone()), Some(m));
                }
            }
            m = a_rx.next() => match forward(m, &mut b_tx).await {
                Flow::Continue => {}
                Flow::Closed(close) => break (None, Some(close)),
                Flow::OtherGone => break (Some(ws::close_frame(1001, "peer gone")), None),
            },
            m = b_rx.next() => match forward(m, &mut a_tx).await {
                Flow::Continue => {}
                Flow::Closed(close) => break (Some(close), None),
                Flow::OtherGone => break (None, Some(ws::close_frame(1001, "peer gone"))),
            },
        }
    };
    let finish = async {
        let a = async {
            if let Some(m) = to_a {
                let _ = a_tx.send(m).await;
            }
            let _ = a_tx.close().await;
            while let Some(Ok(_)) = a_rx.next().await {}
        };
        let b = async {
            if let Some(m) = to_b {
                let _ = b_tx.send(m).await;
            }
            let _ = b_tx.close().await;
            while let Some(Ok(_)) = b_rx.next().await {}
        };
        futures::join!(a, b);
    };
    // Wait for both closing handshakes, but no more than a short grace after a shutdown.
    let closing = async {
        wait::shutdown(&mut shutdown).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tokio::select! {
        _ = tokio::time::timeout(CLOSE_GRACE, finish) => {}
        () = closing => {}
    }
}

enum Flow {
    Continue,
    /// The side read from closed: send this close to the other.
    Closed(Message),
    /// The other side could not be written to.
    OtherGone,
}

async fn forward<W>(m: Option<Result<Message, tungstenite::Error>>, to: &mut W) -> Flow
where
    W: futures::Sink<Message> + Unpin,
{
    match m {
        Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
            if to.send(m).await.is_err() {
                return Flow::OtherGone;
            }
            Flow::Continue
        }
        Some(Ok(Message::Close(frame))) => Flow::Closed(match frame {
            Some(f) => ws::close_frame(u16::from(f.code), &f.reason),
            None => ws::close_frame(1000, "peer closed"),
        }),
        Some(Ok(_)) => Flow::Continue,
        None | Some(Err(_)) => Flow::Closed(ws::close_frame(1001, "peer gone")),
    }
}
