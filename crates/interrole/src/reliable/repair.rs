//! The reliability layer's own events, carried by the bus like any other but never delivered to
//! observers: a receiver's repair request ([`Nak`]), a sender's answer ([`Repair`]), and a
//! sender's position ([`Heartbeat`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A receiver's request for the events of a gap (a negative acknowledgement), directed to
/// their sender, which answers from its retention with a [`Repair`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Nak {
    /// The sender's incarnation the positions belong to.
    pub(super) epoch: u64,
    /// Which stream: the multicast one, or the sender's directed stream to the requester.
    pub(super) directed: bool,
    /// The first missing position.
    pub(super) from: u64,
    /// The last missing position.
    pub(super) to: u64,
}
interrole_core::impl_event!(Nak = "interrole.reliable.nak");

/// A sender's position, multicast when it has published since its last heartbeat (and every
/// few seconds while idle): a loss at the end of a stream shows as a gap before it, which is
/// then repaired or reported like any other. Never delivered to observers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Heartbeat;
interrole_core::impl_event!(Heartbeat = "interrole.reliable.heartbeat");

/// How often a sender that has published announces its position.
pub(super) const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
/// How often an idle sender announces it anyway.
pub(super) const HEARTBEAT_IDLE: Duration = Duration::from_secs(5);

/// A sender's answer to a [`Nak`]: the envelopes it still retains, as they were first sent,
/// and how many of the asked positions it no longer has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Repair {
    /// Which stream the envelopes belong to.
    pub(super) directed: bool,
    pub(super) envelopes: Vec<Vec<u8>>,
    pub(super) unavailable: u64,
}
interrole_core::impl_event!(Repair = "interrole.reliable.repair");


/// The most envelope bytes in one repair event.
pub(super) const REPAIR_BYTES: usize = 256 * 1024;

/// One of the layer's own events, to be sent by the bus (see [`Sink::control`](super::sink::Sink::control)).
#[derive(Debug)]
pub(crate) enum Control {
    /// A repair request, directed to the sender of the gap.
    Nak(Nak),
    /// An answer to a repair request, directed to the requester.
    Repair(Repair),
    /// This instance's position, to every other instance.
    Heartbeat(Heartbeat),
}

impl Control {
    /// What it is, for logs.
    pub(crate) fn what(&self) -> &'static str {
        match self {
            Control::Nak(_) => "a repair request",
            Control::Repair(_) => "a repair",
            Control::Heartbeat(_) => "a heartbeat",
        }
    }
}

/// The reliability layer's events travel between processes of different builds: their bytes are
/// kept in `tests/golden`, and a change that an older build would misread fails here.
#[cfg(all(test, feature = "testing"))]
mod golden {
    use super::*;
    use crate::testing::golden::Golden;

    #[test]
    fn the_reliability_events_keep_their_wire_bytes() {
        let golden = Golden::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden"));
        golden
            .check(&Nak {
                epoch: 1_700_000_000_000_000,
                directed: true,
                from: 5,
                to: 300,
            })
            .unwrap();
        golden
            .check(&Repair {
                directed: false,
                envelopes: vec![vec![1, 2, 3], vec![]],
                unavailable: 2,
            })
            .unwrap();
        golden.check(&Heartbeat).unwrap();
    }
}
