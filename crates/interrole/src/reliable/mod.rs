//! The reliability layer between a bus and a transport that can fail: a reliable client and a
//! reliable host.
//!
//! - The **host** side keeps the connection: it opens it through the [`RetryPolicy`], re-opens it
//!   when it faults (resuming where the bus left off), stops on a fatal error and says why. Its
//!   state is a [`watch`] channel ([`ReliableHost`]) and a tracing event on each change.
//! - The **client** side keeps what was published: every event waits in a bounded outbox until
//!   the far end acknowledges it, and is re-sent, in order, on the next connection. Acknowledged
//!   events are retained a little longer and re-sent too, which repairs what a far end that died
//!   with events in flight had acknowledged but not delivered.
//! - The **receiver** side drops duplicates and finds gaps by each sender's
//!   [`StreamPos`](interrole_core::StreamPos): an event after a gap is held back (per sender and
//!   stream) until the gap fills or the gap timeout passes; then the observers are told how many
//!   events were missed.
//!
//! The layer is its own module tree and knows the bus only through [`Sink`](sink::Sink), which
//! the bus implements: it delivers what the layer releases, reports what is lost, and sends the
//! layer's own events. Its files:
//!
//! - `config`: [`Reliability`], the settings;
//! - `host`: the state machine that keeps the connection ([`ReliableHost`], [`HostState`]) and
//!   the engine (`Reliable`) that ties the others together;
//! - `outbox`: what was published and not yet acknowledged (or is retained for repair);
//! - `sequencer`: the receive side, per sender and stream: duplicates, gaps, held events;
//! - `repair`: the layer's own wire events (repair requests, repairs, heartbeats);
//! - `sink`: what the layer needs from the bus, and the error it reports to it.

pub(crate) mod config;
pub(crate) mod host;
pub(crate) mod outbox;
pub(crate) mod repair;
pub(crate) mod sequencer;
pub(crate) mod sink;

pub use config::Reliability;
pub use host::{HostState, HostStatus, ReliableHost, ReliableStats};
