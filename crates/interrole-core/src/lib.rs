//! The stable contract of [interrole](https://docs.rs/interrole): what every part of the framework
//! and every transport agrees on, kept small so that it rarely changes.
//!
//! - [`Event`]: an application event, a serde type with a stable [`TypeTag`];
//! - [`InterRoleEvent`]: the envelope (sender [`InstanceId`], sequence number, type tag,
//!   timestamp, payload), shared in process and encoded once when it must travel;
//! - [`codec`]: the one place where values become bytes (bincode 2);
//! - [`Transport`], [`Connection`], [`Inbound`]: the seam that transports implement, and
//!   [`TransportError`], which says whether a failure is transient;
//! - `testkit` (feature `testkit`): the conformance checks every transport passes.
//!
//! Applications depend on the `interrole` crate, which re-exports what they need from here.
//!
//! ```
//! use interrole_core::{EventId, InstanceId, InterRoleEvent, impl_event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct RoleConfigurationSectionRefresh { section_name: String }
//! impl_event!(RoleConfigurationSectionRefresh = "interrole.role.configuration-section-refresh");
//!
//! let id = EventId { sender: InstanceId::new("controller-1")?, seq: 1 };
//! let event = InterRoleEvent::new(id, RoleConfigurationSectionRefresh { section_name: "db".into() });
//! // Shared in process, encoded only when a transport needs bytes:
//! let wire = event.to_wire()?;
//! let received = InterRoleEvent::from_wire(wire)?;
//! assert_eq!(received.payload::<RoleConfigurationSectionRefresh>().unwrap().section_name, "db");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Compatibility
//!
//! The envelope's wire form carries a version byte ([`codec::ENVELOPE_VERSION`]); a reader refuses
//! versions it does not know with a specific error rather than guessing. A writer uses the
//! oldest version that holds the event ([`codec::ENVELOPE_VERSION_PLAIN`] when it has no
//! headers), so that a fleet upgraded role by role keeps reading what the upgraded roles send
//! until they send headers.

mod clock;
pub mod codec;
mod event;
mod headers;
mod id;
#[cfg(feature = "link")]
pub mod link;
mod retry;
#[cfg(feature = "testkit")]
pub mod testkit;
mod transport;

pub use codec::{Codec, CodecError, CodecErrorKind};
pub use event::{
    Event, InterRoleEvent, PayloadError, RawEvent, StreamPos, const_str_eq, decode_this_version,
};
pub use headers::{
    HeaderError, Headers, MAX_HEADER_KEY_LEN, MAX_HEADER_VALUE_LEN, MAX_HEADERS, MAX_HEADERS_BYTES,
    header_key_is_valid, header_value_is_valid,
};
pub use id::{EventId, InstanceId, InvalidName, MAX_NAME_LEN, Topic, TypeTag, tag_is_valid};
pub use retry::{RetryDelays, RetryPolicy};
pub use transport::{
    Connection, Inbound, OpenSpec, Transport, TransportError, TransportErrorKind, TransportLimits,
};

#[doc(hidden)]
pub use bytes::Bytes;
