//! The NATS transport of [interrole](https://docs.rs/interrole): the bus across machines on a NATS
//! server or cluster, through [async-nats](https://docs.rs/async-nats).
//!
//! # Subjects
//!
//! With the default prefix `interrole`, a bus on topic `orders` as instance `worker-1`:
//!
//! | what | subject |
//! |---|---|
//! | multicast (`publish`) | `interrole.t.orders` |
//! | directed to `worker-1` (`send_to`, requests, replies, repairs) | `interrole.i.orders.worker-1` |
//!
//! The prefix is [`NatsOptions::prefix`]. A topic or instance id containing `.` spans several
//! subject tokens; subjects are only ever used whole, so that is harmless, but NATS permissions
//! granted by token must account for it.
//!
//! # What it promises
//!
//! Each connection is one NATS client (`no_echo`: a bus never hears itself). Events are
//! published in order on the client's single connection, and NATS keeps per-publisher order to
//! each subscriber. An event is acknowledged to the bus (`Inbound::acknowledged`) once a round
//! trip to the server has confirmed that the server has it; a connection is open once a round
//! trip has confirmed its subscriptions. A directed event carries a reply subject in the
//! client's inbox, so that the server answers "no responders" when its target is not connected;
//! the bus hears it as a refusal (`Inbound::rejected`, `NoListener`) before the acknowledgement,
//! and a request to an absent instance fails at once instead of timing out. Core NATS keeps
//! nothing for a subscriber that is away: what it misses while disconnected is found by the bus
//! as a gap and repaired from the publisher's retention (see `docs/reliability.md`), or reported.
//!
//! # Durable mode (JetStream)
//!
//! With [`NatsOptions::durable`] set, events are published to a JetStream stream per topic
//! (`INTERROLE_orders`: the prefix in capitals, then the topic, characters outside
//! `A-Z a-z 0-9 - _` as `_`) holding the topic's multicast and directed subjects, with the
//! message id `{sender}:{seq}` so that the stream drops duplicates within its duplicate window.
//! An event is acknowledged to the bus only when the stream has stored it (on every replica). Each
//! instance reads through two durable consumers (`{instance}-t` for multicast, `{instance}-i`
//! for what is directed to it), acknowledging each event once the bus has it: an instance that is
//! down, or whose process restarts, resumes where it left off and misses nothing the stream still
//! holds ([`Durable::max_age`], [`Durable::max_bytes`]). A new instance starts with the events
//! published after its consumers were created.
//!
//! # Reconnection
//!
//! The client does not reconnect on its own: when it loses its server it reports the connection
//! closed (transient), and the bus's reliable host opens a new one on its retry policy, to any of
//! the [`servers`](NatsOptions::servers) (a cluster's nodes), which drives the same host states
//! and tracing events as the relay transport.
//!
//! # Errors
//!
//! Every [`TransportError`](interrole_core::TransportError) this transport makes carries a
//! [`NatsError`] as its [cause](interrole_core::TransportError::cause), which says what failed ([`NatsError::of`] finds it): a server
//! without JetStream in durable mode, an address that does not parse, a credentials file that
//! cannot be read, a refused connection, and so on.

mod core;
mod durable;
mod error;
mod options;
mod shared;
mod transport;

pub use error::NatsError;
pub use options::{Durable, NatsAuth, NatsOptions, NatsTls};
pub use transport::NatsTransport;
