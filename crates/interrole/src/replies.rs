//! The stream of replies to a request sent to every instance ([`Bus::request_all`]).
//!
//! [`Bus::request_all`]: crate::Bus::request_all

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use interrole_core::{Event, InterRoleEvent, TransportError};
use tokio::sync::mpsc;

use crate::error::RequestError;
use crate::inbound::Receiver;
use crate::observe::mailbox::Received;

/// The replies of type `R` to a request sent to every instance, as they come
/// ([`Bus::request_all`](crate::Bus::request_all)): a [`Stream`] that ends after the expected
/// number of replies, at the timeout, or when the bus closes. A reply that is not an `R` is an
/// `Err(`[`RequestError::Reply`]`)` item; a refusal of the request by the transport is an
/// `Err(`[`RequestError::Refused`]`)` item, the last.
///
/// Dropping it forgets the request: later replies are dropped.
#[must_use = "a stream does nothing unless polled"]
pub struct Replies<R> {
    rx: mpsc::UnboundedReceiver<Result<InterRoleEvent, TransportError>>,
    receiver: Arc<Receiver>,
    key: u64,
    deadline: Instant,
    /// Made on the first poll, inside the runtime that polls.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    remaining: Option<usize>,
    ended: bool,
    reply: PhantomData<fn() -> R>,
}

impl<R> Replies<R> {
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<Result<InterRoleEvent, TransportError>>,
        receiver: Arc<Receiver>,
        key: u64,
        timeout: Duration,
        expected: Option<usize>,
    ) -> Self {
        Self {
            rx,
            receiver,
            key,
            deadline: Instant::now() + timeout,
            timer: None,
            remaining: expected,
            ended: expected == Some(0),
            reply: PhantomData,
        }
    }

    fn end(&mut self) {
        self.ended = true;
        self.rx.close();
        self.receiver.pending.lock().remove(&self.key);
    }
}

impl<R: Event> Stream for Replies<R> {
    type Item = Result<Received<R>, RequestError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(reply))) => {
                if let Some(n) = &mut this.remaining {
                    *n -= 1;
                    if *n == 0 {
                        this.end();
                    }
                }
                return Poll::Ready(Some(Received::new(reply).map_err(RequestError::Reply)));
            }
            Poll::Ready(Some(Err(refused))) => {
                this.end();
                return Poll::Ready(Some(Err(RequestError::Refused(refused))));
            }
            Poll::Ready(None) => {
                this.end();
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let deadline = this.deadline;
        let timer = this.timer.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
                deadline,
            )))
        });
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<R> Drop for Replies<R> {
    fn drop(&mut self) {
        self.receiver.pending.lock().remove(&self.key);
    }
}

impl<R> fmt::Debug for Replies<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replies")
            .field("request", &self.key)
            .field("remaining", &self.remaining)
            .field("ended", &self.ended)
            .finish()
    }
}
