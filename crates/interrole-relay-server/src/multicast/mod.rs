//! Multicast paths: publishers, subscribers, fan-out, the replay window and slow consumers.
//!
//! Each path holds its subscribers' outboxes, its publishers' outboxes (for replacement), the
//! highest sequence number accepted from each sender, and the replay window ([`paths`]).
//! Publishing takes the path's lock, encodes the EVENT once and appends a reference to it to
//! each subscriber's bounded outbox; it never waits on a socket. One writer task per connection
//! drains its outbox into batched WebSocket messages ([`outbox`]). A connection's admission and
//! its life after the upgrade are its [`session`].

mod outbox;
mod paths;
mod session;

pub(crate) use paths::PathTable;
pub(crate) use session::{Admitted, admit, run};
