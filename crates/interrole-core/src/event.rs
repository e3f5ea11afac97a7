//! Application events and the envelope that carries them.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{
    self, Codec, CodecError, CodecErrorKind, ENVELOPE_VERSION, ENVELOPE_VERSION_PLAIN,
};
use crate::headers::Headers;
use crate::id::{EventId, InstanceId, TypeTag};

/// An application event: a plain serde type with a stable type tag.
///
/// The tag names the type on the wire and routes it to typed observers. It must stay the same for
/// as long as any process may send or receive the type; a reverse-domain style
/// (`"acme.billing.invoice-issued"`) avoids clashes. A tag is 1 to 256 ASCII letters, digits and
/// `- _ . :`, checked at compile time: by [`impl_event!`](crate::impl_event) where the type is
/// declared, and for a hand-written implementation wherever the type is used with a bus.
///
/// ```compile_fail
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Bad;
/// // error: impl_event!: the type tag must be 1 to 256 ASCII letters, digits or `- _ . :`
/// interrole_core::impl_event!(Bad = "has space");
/// ```
///
/// [`impl_event!`](crate::impl_event) writes the implementation in one line:
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// pub struct RoleGracefulRecycle {
///     pub role_name: String,
/// }
/// interrole_core::impl_event!(RoleGracefulRecycle = "interrole.role.graceful-recycle");
///
/// use interrole_core::Event;
/// assert_eq!(RoleGracefulRecycle::TYPE_TAG, "interrole.role.graceful-recycle");
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type's stable name.
    const TYPE_TAG: &'static str;

    /// The version of the event's contract this type is: 1 unless declared
    /// (`impl_event!(E = "tag", version = 2)`). Travels in the envelope; see
    /// [`Event::decode_payload`] for what a reader does with another version.
    const VERSION: u32 = 1;

    /// How the payload is encoded ([`Codec::Bincode`] unless declared,
    /// `impl_event!(E = "tag", codec = Json)`). The envelope records it; a reader decodes with
    /// the codec the writer used.
    const CODEC: Codec = Codec::Bincode;

    /// The tag as a [`TypeTag`].
    ///
    /// [`impl_event!`](crate::impl_event) overrides this to hand out copies of one `static` tag,
    /// so that every copy points at the same text and routing compares tags by address.
    fn type_tag() -> TypeTag {
        const { TypeTag::from_static(Self::TYPE_TAG) }
    }

    /// Decodes a payload that `version` of this contract wrote with `codec`.
    ///
    /// The default decodes this version only: an older one is [`PayloadError::NoUpgrade`], a
    /// newer one [`PayloadError::NewerVersion`] (never a guess). `impl_event!(V2 = "tag",
    /// version = 2, upgrades_from = V1)` decodes older versions as `V1` (recursively, so a
    /// chain of upgrades works) and converts with `From<V1> for V2`.
    ///
    /// # Errors
    /// As above, and [`PayloadError::Undecodable`] for bytes that are not a valid payload.
    fn decode_payload(version: u32, codec: Codec, bytes: &[u8]) -> Result<Self, PayloadError> {
        decode_this_version::<Self>(version, codec, bytes)
    }
}

/// [`Event::decode_payload`]'s default: the payload of exactly `E::VERSION`.
///
/// # Errors
/// As [`Event::decode_payload`].
pub fn decode_this_version<E: Event>(
    version: u32,
    codec: Codec,
    bytes: &[u8],
) -> Result<E, PayloadError> {
    if version > E::VERSION {
        return Err(PayloadError::NewerVersion {
            type_tag: E::type_tag(),
            version,
            known: E::VERSION,
        });
    }
    if version < E::VERSION {
        return Err(PayloadError::NoUpgrade {
            type_tag: E::type_tag(),
            version,
            known: E::VERSION,
        });
    }
    codec::decode_with(codec, bytes).map_err(|error| PayloadError::Undecodable {
        type_tag: E::type_tag(),
        error,
    })
}

/// Whether two strings are equal, in a constant (for [`impl_event!`](crate::impl_event)'s checks).
#[doc(hidden)]
pub const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Implements [`Event`] for a type with the given tag: `impl_event!(MyEvent = "my.event");`,
/// with options after it, in any order:
///
/// - `version = N`: the contract's version ([`Event::VERSION`], from 1);
/// - `codec = Json` (or `MessagePack`, `Bincode`): the payload codec ([`Event::CODEC`]); the
///   codec's feature must be on;
/// - `upgrades_from = OldType`: older versions are read as `OldType` (same tag, a lower
///   version) and converted with `From<OldType>`.
///
/// ```
/// # #[cfg(feature = "json")] {
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// pub struct ConfigRefreshV1 { pub section: String }
/// interrole_core::impl_event!(ConfigRefreshV1 = "acme.config-refresh", codec = Json);
///
/// #[derive(Debug, Serialize, Deserialize)]
/// pub struct ConfigRefreshV2 { pub section: String, #[serde(default)] pub reason: String }
/// interrole_core::impl_event!(
///     ConfigRefreshV2 = "acme.config-refresh",
///     version = 2,
///     codec = Json,
///     upgrades_from = ConfigRefreshV1
/// );
/// impl From<ConfigRefreshV1> for ConfigRefreshV2 {
///     fn from(v1: ConfigRefreshV1) -> Self {
///         Self { section: v1.section, reason: "unknown".into() }
///     }
/// }
/// # }
/// ```
///
/// The checks are made at compile time:
///
/// ```compile_fail
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Old;
/// interrole_core::impl_event!(Old = "a.tag");
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct New;
/// // error: impl_event!: upgrades_from needs a type with the same tag and a lower version
/// interrole_core::impl_event!(New = "another.tag", version = 2, upgrades_from = Old);
/// # impl From<Old> for New { fn from(_: Old) -> Self { New } }
/// ```
#[macro_export]
macro_rules! impl_event {
    ($ty:ty = $tag:expr $(, $($rest:tt)*)?) => {
        $crate::impl_event!(@parse $ty, $tag, [1u32] [$crate::Codec::Bincode] [] $($($rest)*)?);
    };
    (@parse $ty:ty, $tag:expr, [$v:expr] [$c:expr] [$($from:ty)?] version = $nv:expr $(, $($rest:tt)*)?) => {
        $crate::impl_event!(@parse $ty, $tag, [$nv] [$c] [$($from)?] $($($rest)*)?);
    };
    (@parse $ty:ty, $tag:expr, [$v:expr] [$c:expr] [$($from:ty)?] codec = $nc:ident $(, $($rest:tt)*)?) => {
        $crate::impl_event!(@parse $ty, $tag, [$v] [$crate::Codec::$nc] [$($from)?] $($($rest)*)?);
    };
    (@parse $ty:ty, $tag:expr, [$v:expr] [$c:expr] [] upgrades_from = $nf:ty $(, $($rest:tt)*)?) => {
        $crate::impl_event!(@parse $ty, $tag, [$v] [$c] [$nf] $($($rest)*)?);
    };
    (@parse $ty:ty, $tag:expr, [$v:expr] [$c:expr] [$($from:ty)?]) => {
        const _: () = ::core::assert!(
            $crate::tag_is_valid($tag),
            "impl_event!: the type tag must be 1 to 256 ASCII letters, digits or `- _ . :`"
        );
        const _: () = ::core::assert!($v >= 1, "impl_event!: versions start at 1");
        const _: () = ::core::assert!(
            $crate::Codec::is_built($c),
            "impl_event!: this codec's feature (`json`, `msgpack`) is not on in interrole-core"
        );
        $(
            const _: () = ::core::assert!(
                $crate::const_str_eq(<$from as $crate::Event>::TYPE_TAG, $tag)
                    && <$from as $crate::Event>::VERSION < $v,
                "impl_event!: upgrades_from needs a type with the same tag and a lower version"
            );
        )?
        impl $crate::Event for $ty {
            const TYPE_TAG: &'static str = $tag;
            const VERSION: u32 = $v;
            const CODEC: $crate::Codec = $c;

            fn type_tag() -> $crate::TypeTag {
                static TAG: $crate::TypeTag = $crate::TypeTag::from_static($tag);
                TAG.clone()
            }

            $(
                fn decode_payload(
                    version: u32,
                    codec: $crate::Codec,
                    bytes: &[u8],
                ) -> ::core::result::Result<Self, $crate::PayloadError> {
                    if version < $v {
                        <$from as $crate::Event>::decode_payload(version, codec, bytes)
                            .map(<Self as ::core::convert::From<$from>>::from)
                    } else {
                        $crate::decode_this_version::<Self>(version, codec, bytes)
                    }
                }
            )?
        }
    };
}

/// The envelope of every event on a bus: who sent it, its sequence number, its type tag, when it
/// was published, and the payload.
///
/// Cheap to clone: the envelope is shared. In the process that published it the payload is the
/// value itself, never serialized; it is encoded once, on first need, when a transport asks for
/// bytes ([`InterRoleEvent::to_wire`]). An envelope read off the wire
/// ([`InterRoleEvent::from_wire`]) decodes its payload once, on first typed access, and keeps the
/// result.
#[derive(Clone)]
pub struct InterRoleEvent {
    body: Arc<Envelope<dyn Any + Send + Sync>>,
}

/// One envelope: the header and the wire form at fixed places (no virtual call to reach them),
/// then the payload. For a local event the payload is the value itself, so a typed look is one
/// `TypeId` comparison; for an event off the wire it is a [`Remote`].
struct Envelope<P: ?Sized> {
    header: Header,
    wire: OnceLock<Result<Bytes, CodecError>>,
    /// Encodes a local payload (the value's `Serialize`); `None` for a remote one.
    encode: Option<EncodeFn>,
    /// The payload decoded as types other than the first one asked for (another version of the
    /// contract in this process), made on first need.
    others: OnceLock<Box<Others>>,
    payload: P,
}

/// Room for the payload as a few more types: one slot per type, filled once.
type Others = [OnceLock<Decoded>; 3];

/// A payload decoded as one type (or why it did not decode as that type).
type Decoded = (TypeId, Result<Box<dyn Any + Send + Sync>, PayloadError>);

type EncodeFn = fn(&(dyn Any + Send + Sync), &mut Vec<u8>) -> Result<(), CodecError>;

/// Encodes a local payload of type `T`.
fn encode_local<T: Event>(
    value: &(dyn Any + Send + Sync),
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    match value.downcast_ref::<T>() {
        Some(value) => codec::encode_with(T::CODEC, value, out),
        None => Err(CodecError::new(
            CodecErrorKind::Encode,
            "a local payload is not of its envelope's type",
        )),
    }
}

struct Header {
    id: EventId,
    type_tag: TypeTag,
    timestamp_micros: u64,
    stream: StreamPos,
    reply_to: u64,
    /// The event contract's version.
    version: u32,
    codec: Codec,
    headers: Headers,
}

/// Where an event stands in its sender's streams: what a receiver uses to drop duplicates, find
/// gaps and count what a gap lost.
///
/// A sender has one multicast stream and one directed stream per target. `n` numbers the events
/// of one stream from 1 without holes, while the sequence number of the [`EventId`] runs across
/// all of them: a receiver that sees multicast `n = 7` after `n = 5` knows one multicast event is
/// missing, which the sequence number alone cannot say (the sender may have sent directed events
/// to others in between). `epoch` names the sender's incarnation, so that a restarted sender's
/// streams start afresh. An event outside any stream has `epoch == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StreamPos {
    /// The sender's incarnation (its bus's first sequence number); 0 when not tracked.
    pub epoch: u64,
    /// Whether the event was directed to one instance (the sender's stream to that instance)
    /// rather than multicast.
    pub directed: bool,
    /// The event's position in its stream, from 1.
    pub n: u64,
}

impl StreamPos {
    /// Whether the event belongs to a stream at all.
    pub fn is_tracked(&self) -> bool {
        self.epoch != 0
    }
}

/// The payload of an envelope read off the wire (or made from bytes, [`RawEvent`]).
struct Remote {
    payload: Bytes,
    /// The payload decoded as the first type asked for.
    decoded: OnceLock<Decoded>,
}

/// An event given as its encoded payload rather than a value: what a tool that does not know the
/// Rust type publishes (the `interrole` command line publishes JSON this way). Receivers cannot
/// tell it from an event published as a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The type tag.
    pub tag: TypeTag,
    /// The contract version the payload follows.
    pub version: u32,
    /// How the payload is encoded.
    pub codec: Codec,
    /// The encoded payload.
    pub payload: Bytes,
}

/// Why a typed look at a payload found nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The event carries another type.
    #[error("event carries {actual:?}, not {expected:?}")]
    WrongType {
        /// The tag asked for.
        expected: &'static str,
        /// The tag the event carries.
        actual: TypeTag,
    },
    /// The payload came off the wire and does not decode as the type asked for.
    #[error("payload of {type_tag:?} does not decode: {error}")]
    Undecodable {
        /// The tag of the event.
        type_tag: TypeTag,
        /// The decoder's error.
        error: CodecError,
    },
    /// The event was written by a newer version of the contract than this process knows: it is
    /// not decoded (its fields could mean something else), it is reported.
    #[error("{type_tag:?} version {version} is newer than the version {known} this process knows")]
    NewerVersion {
        /// The tag of the event.
        type_tag: TypeTag,
        /// The event's version.
        version: u32,
        /// The newest version this process's type reads.
        known: u32,
    },
    /// The event was written by an older version of the contract, and the type asked for
    /// declares no upgrade from it (`impl_event!(.., upgrades_from = Old)`).
    #[error(
        "{type_tag:?} version {version} is older than {known}, and no upgrade from it is declared"
    )]
    NoUpgrade {
        /// The tag of the event.
        type_tag: TypeTag,
        /// The event's version.
        version: u32,
        /// The version of the type asked for.
        known: u32,
    },
}

#[derive(Serialize)]
struct WireHeaderRef<'a> {
    sender: &'a str,
    seq: u64,
    type_tag: &'a str,
    timestamp_micros: u64,
    epoch: u64,
    directed: bool,
    n: u64,
    reply_to: u64,
}

/// What version 2 of the envelope adds after the version 1 header, but for the headers.
#[derive(Serialize, Deserialize)]
struct WireHeader2 {
    version: u32,
    codec: u8,
}

/// The header as read off the wire: its names borrow from the received bytes.
#[derive(Deserialize)]
struct WireHeader<'a> {
    #[serde(borrow)]
    sender: &'a str,
    seq: u64,
    #[serde(borrow)]
    type_tag: &'a str,
    timestamp_micros: u64,
    epoch: u64,
    directed: bool,
    n: u64,
    reply_to: u64,
}

/// The names in envelopes read off the wire, made once per run of equal names on a thread: a
/// receiver reads the same sender and type again and again, and checking and allocating them
/// anew for every envelope was a sixth of what a subscriber spent per event.
mod names {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    use crate::id::{InstanceId, InvalidName, TypeTag};

    thread_local! {
        static SENDER: RefCell<Option<InstanceId>> = const { RefCell::new(None) };
        static TAG: RefCell<Option<TypeTag>> = const { RefCell::new(None) };
    }

    /// The instance id `text`, checked (or equal to the last one this thread checked).
    pub(super) fn sender(text: &str) -> Result<InstanceId, InvalidName> {
        reuse(&SENDER, text, InstanceId::as_str, |t| InstanceId::new(t))
    }

    /// The type tag `text`, checked (or equal to the last one this thread checked).
    pub(super) fn type_tag(text: &str) -> Result<TypeTag, InvalidName> {
        reuse(&TAG, text, TypeTag::as_str, |t| TypeTag::new(t))
    }

    /// The name kept in `last` when it reads `text`, else `text` checked by `make` and kept.
    fn reuse<T: Clone + 'static>(
        last: &'static LocalKey<RefCell<Option<T>>>,
        text: &str,
        as_str: fn(&T) -> &str,
        make: fn(&str) -> Result<T, InvalidName>,
    ) -> Result<T, InvalidName> {
        last.with(|last| {
            let mut last = last.borrow_mut();
            if let Some(name) = last.as_ref().filter(|name| as_str(name) == text) {
                return Ok(name.clone());
            }
            let name = make(text)?;
            *last = Some(name.clone());
            Ok(name)
        })
    }
}

/// Reads an envelope's header: the header, and where the payload starts.
fn decode_head(bytes: &[u8]) -> Result<(Header, usize), CodecError> {
    let Some(&version) = bytes.first() else {
        return Err(CodecError::new(CodecErrorKind::Decode, "empty envelope"));
    };
    if version != ENVELOPE_VERSION && version != ENVELOPE_VERSION_PLAIN {
        return Err(CodecError::new(
            CodecErrorKind::UnsupportedVersion,
            format!(
                "envelope version {version} is not supported (this build reads {ENVELOPE_VERSION_PLAIN} and {ENVELOPE_VERSION})"
            ),
        ));
    }
    let (header, used): (WireHeader<'_>, usize) = codec::decode_prefix_borrowed(&bytes[1..])
        .map_err(|e| CodecError::new(CodecErrorKind::Decode, format!("envelope header: {e}")))?;
    let invalid = |m: String| CodecError::new(CodecErrorKind::InvalidHeader, m);
    let sender = names::sender(header.sender).map_err(|e| invalid(e.to_string()))?;
    let type_tag = names::type_tag(header.type_tag).map_err(|e| invalid(e.to_string()))?;
    if header.seq == 0 {
        return Err(invalid("sequence number 0 is reserved".into()));
    }
    let mut used = 1 + used;
    let (mut contract, mut payload_codec, mut headers) = (1, Codec::Bincode, Headers::new());
    if version == ENVELOPE_VERSION {
        let (more, n): (WireHeader2, usize) =
            codec::decode_prefix(&bytes[used..]).map_err(|e| {
                CodecError::new(CodecErrorKind::Decode, format!("envelope header: {e}"))
            })?;
        used += n;
        if more.version == 0 {
            return Err(invalid("contract version 0 is reserved".into()));
        }
        contract = more.version;
        payload_codec = Codec::from_wire_id(more.codec).ok_or_else(|| {
            CodecError::new(
                CodecErrorKind::UnsupportedCodec,
                format!("payload codec id {} is not known to this build", more.codec),
            )
        })?;
        let (pairs, n): (Vec<(&str, &str)>, usize) = codec::decode_prefix_borrowed(&bytes[used..])
            .map_err(|e| {
                CodecError::new(CodecErrorKind::Decode, format!("envelope headers: {e}"))
            })?;
        headers = Headers::from_pairs(pairs).map_err(|e| invalid(e.to_string()))?;
        used += n;
    }
    let head = Header {
        id: EventId {
            sender,
            seq: header.seq,
        },
        type_tag,
        timestamp_micros: header.timestamp_micros,
        stream: StreamPos {
            epoch: header.epoch,
            directed: header.directed,
            n: header.n,
        },
        reply_to: header.reply_to,
        version: contract,
        codec: payload_codec,
        headers,
    };
    Ok((head, used))
}

impl InterRoleEvent {
    /// Wraps a value published by `id.sender`, stamped with the current time.
    pub fn new<T: Event>(id: EventId, value: T) -> Self {
        Self::in_stream(id, value, StreamPos::default(), None)
    }

    /// Wraps a value published by `id.sender` at `stream`'s position; `reply_to` is the
    /// sequence number of the request it answers, for a reply.
    pub fn in_stream<T: Event>(
        id: EventId,
        value: T,
        stream: StreamPos,
        reply_to: Option<u64>,
    ) -> Self {
        Self::with_headers(id, value, stream, reply_to, Headers::new())
    }

    /// [`InterRoleEvent::in_stream`] with headers.
    pub fn with_headers<T: Event>(
        id: EventId,
        value: T,
        stream: StreamPos,
        reply_to: Option<u64>,
        headers: Headers,
    ) -> Self {
        Self {
            body: Arc::new(Envelope {
                header: Header {
                    id,
                    type_tag: T::type_tag(),
                    timestamp_micros: crate::clock::now_micros(),
                    stream,
                    reply_to: reply_to.unwrap_or(0),
                    version: T::VERSION,
                    codec: T::CODEC,
                    headers,
                },
                wire: OnceLock::new(),
                encode: Some(encode_local::<T>),
                others: OnceLock::new(),
                payload: value,
            }),
        }
    }

    /// An event given as its encoded payload ([`RawEvent`]), published by `id.sender` at
    /// `stream`'s position. It behaves as one read off the wire: a typed look decodes it.
    pub fn raw(
        id: EventId,
        raw: RawEvent,
        stream: StreamPos,
        reply_to: Option<u64>,
        headers: Headers,
    ) -> Self {
        Self {
            body: Arc::new(Envelope {
                header: Header {
                    id,
                    type_tag: raw.tag,
                    timestamp_micros: crate::clock::now_micros(),
                    stream,
                    reply_to: reply_to.unwrap_or(0),
                    version: raw.version,
                    codec: raw.codec,
                    headers,
                },
                wire: OnceLock::new(),
                encode: None,
                others: OnceLock::new(),
                payload: Remote {
                    payload: raw.payload,
                    decoded: OnceLock::new(),
                },
            }),
        }
    }

    /// The version of the event's contract that wrote it ([`Event::VERSION`]).
    pub fn version(&self) -> u32 {
        self.body.header.version
    }

    /// How its payload is encoded.
    pub fn codec(&self) -> Codec {
        self.body.header.codec
    }

    /// Where the event stands in its sender's streams.
    pub fn stream(&self) -> StreamPos {
        self.body.header.stream
    }

    /// For a reply, the sequence number of the request it answers.
    pub fn reply_to(&self) -> Option<u64> {
        Some(self.body.header.reply_to).filter(|&s| s != 0)
    }

    /// The event's headers (empty for most events).
    pub fn headers(&self) -> &Headers {
        &self.body.header.headers
    }

    /// The event's id: sender and sequence number.
    pub fn id(&self) -> &EventId {
        &self.body.header.id
    }

    /// The instance that published the event.
    pub fn sender(&self) -> &InstanceId {
        &self.body.header.id.sender
    }

    /// The sender's sequence number of this event.
    pub fn seq(&self) -> u64 {
        self.body.header.id.seq
    }

    /// The payload's type tag.
    pub fn type_tag(&self) -> &TypeTag {
        &self.body.header.type_tag
    }

    /// When the sender published the event (its clock, microsecond precision).
    pub fn timestamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.body.header.timestamp_micros)
    }

    /// Whether the event was published in this process (its payload is the value itself) rather
    /// than read off the wire.
    pub fn is_local(&self) -> bool {
        self.body.encode.is_some()
    }

    /// The payload as a `T`, or `None` when the event carries another type or does not decode.
    pub fn payload<T: Event>(&self) -> Option<&T> {
        self.try_payload().ok()
    }

    /// The payload as a `T`, saying why not when it is not one.
    ///
    /// # Errors
    /// [`PayloadError::WrongType`] when the event's tag is not `T`'s;
    /// [`PayloadError::Undecodable`] when the payload came off the wire and is not a valid `T`.
    /// The decoding is done once per envelope and its result kept, so later calls cost a lookup.
    #[inline]
    pub fn try_payload<T: Event>(&self) -> Result<&T, PayloadError> {
        // The common case first, inline: a local event of the very type asked for.
        match self.local_payload::<T>() {
            Some(value) => Ok(value),
            None => self.try_payload_slow(),
        }
    }

    /// The payload as a `T` when the event was published in this process with a `T`: no
    /// decoding, one type comparison. `None` for an event off the wire or of another type (see
    /// [`InterRoleEvent::try_payload`], which decodes).
    #[inline]
    pub fn local_payload<T: Event>(&self) -> Option<&T> {
        self.body.payload.downcast_ref::<T>()
    }

    #[inline(never)]
    fn try_payload_slow<T: Event>(&self) -> Result<&T, PayloadError> {
        let header = &self.body.header;
        if header.type_tag.as_str() != T::TYPE_TAG {
            return Err(PayloadError::WrongType {
                expected: T::TYPE_TAG,
                actual: header.type_tag.clone(),
            });
        }
        let wanted = TypeId::of::<T>();
        let decode = || -> Result<Box<dyn Any + Send + Sync>, PayloadError> {
            let bytes = self
                .payload_bytes()
                .map_err(|error| PayloadError::Undecodable {
                    type_tag: header.type_tag.clone(),
                    error,
                })?;
            T::decode_payload(header.version, header.codec, &bytes)
                .map(|v| Box::new(v) as Box<dyn Any + Send + Sync>)
        };
        fn found<T: Event>(slot: &Decoded, wanted: TypeId) -> Option<Result<&T, PayloadError>> {
            (slot.0 == wanted).then(|| match &slot.1 {
                Ok(value) => Ok(value.downcast_ref::<T>().expect("stored under its TypeId")),
                Err(e) => Err(e.clone()),
            })
        }
        // The first type asked for of an event off the wire: its own slot.
        if let Some(remote) = self.remote() {
            if let Some(result) = found(remote.decoded.get_or_init(|| (wanted, decode())), wanted) {
                return result;
            }
        }
        // Another type with the same tag (another version of the contract in this process):
        // one of a few more slots.
        let others = self.body.others.get_or_init(Box::default);
        for slot in others.iter() {
            if let Some(result) = found(slot.get_or_init(|| (wanted, decode())), wanted) {
                return result;
            }
        }
        Err(PayloadError::Undecodable {
            type_tag: header.type_tag.clone(),
            error: CodecError::new(
                CodecErrorKind::Decode,
                "read as more Rust types than an envelope keeps (4)",
            ),
        })
    }

    /// The payload's encoded bytes: those that came off the wire, or the value encoded with its
    /// type's codec (once, kept with the envelope's wire form).
    ///
    /// # Errors
    /// [`CodecErrorKind::Encode`] when a local payload's `Serialize` implementation fails.
    pub fn payload_bytes(&self) -> Result<Bytes, CodecError> {
        if let Some(remote) = self.remote() {
            return Ok(remote.payload.clone());
        }
        let wire = self.to_wire()?;
        let at = wire.len() - self.payload_len_in(&wire)?;
        Ok(wire.slice(at..))
    }

    /// How many bytes at the end of `wire` (this envelope's wire form) are the payload.
    fn payload_len_in(&self, wire: &Bytes) -> Result<usize, CodecError> {
        // The header is re-read to find where it ends: rare (a local event read as another
        // version of its type), so not worth keeping the offset in every envelope.
        let (_, offset) = decode_head(wire)?;
        Ok(wire.len() - offset)
    }

    /// The payload's encoded bytes when the envelope came off the wire, without decoding them.
    pub fn raw_payload(&self) -> Option<&Bytes> {
        self.remote().map(|r| &r.payload)
    }

    fn remote(&self) -> Option<&Remote> {
        self.body.payload.downcast_ref::<Remote>()
    }

    /// The envelope in its wire form (see [`codec`](crate::codec)), encoded on the first call and
    /// kept: a transport sending one event to many peers encodes it once.
    ///
    /// # Errors
    /// [`CodecErrorKind::Encode`] when the payload's `Serialize` implementation fails.
    pub fn to_wire(&self) -> Result<Bytes, CodecError> {
        self.body
            .wire
            .get_or_init(|| {
                let h = &self.body.header;
                let mut out = Vec::with_capacity(64);
                // The first format when it says everything: readers of either version read it.
                let plain = h.headers.is_empty() && h.version == 1 && h.codec == Codec::Bincode;
                out.push(if plain {
                    ENVELOPE_VERSION_PLAIN
                } else {
                    ENVELOPE_VERSION
                });
                codec::encode_value_into(
                    &WireHeaderRef {
                        sender: h.id.sender.as_str(),
                        seq: h.id.seq,
                        type_tag: h.type_tag.as_str(),
                        timestamp_micros: h.timestamp_micros,
                        epoch: h.stream.epoch,
                        directed: h.stream.directed,
                        n: h.stream.n,
                        reply_to: h.reply_to,
                    },
                    &mut out,
                )?;
                if !plain {
                    codec::encode_value_into(
                        &WireHeader2 {
                            version: h.version,
                            codec: h.codec.wire_id(),
                        },
                        &mut out,
                    )?;
                    codec::encode_value_into(&h.headers, &mut out)?;
                }
                match (self.body.encode, self.remote()) {
                    (Some(encode), _) => encode(&self.body.payload, &mut out)?,
                    (None, Some(remote)) => out.extend_from_slice(&remote.payload),
                    (None, None) => unreachable!("an envelope is local or remote"),
                }
                Ok(Bytes::from(out))
            })
            .clone()
    }

    /// Reads an envelope off the wire. The payload stays encoded until a typed look
    /// ([`InterRoleEvent::payload`]) asks for it; the bytes are shared, not copied.
    ///
    /// Reads both format versions: 1, and 2 (version 1 with the event's contract version, its
    /// codec and its headers).
    ///
    /// # Errors
    /// [`CodecErrorKind::UnsupportedVersion`] for another format version,
    /// [`CodecErrorKind::Decode`] for a truncated or malformed header,
    /// [`CodecErrorKind::InvalidHeader`] for an invalid sender, tag or header, a sequence
    /// number of 0 or a contract version of 0, [`CodecErrorKind::UnsupportedCodec`] for a codec
    /// id this build does not know (a known codec whose feature is off fails at the typed look
    /// instead, so that the observers of every event still get the envelope).
    pub fn from_wire(bytes: Bytes) -> Result<Self, CodecError> {
        let (head, used) = decode_head(&bytes)?;
        let payload = bytes.slice(used..);
        Ok(Self {
            body: Arc::new(Envelope {
                header: head,
                wire: OnceLock::from(Ok(bytes)),
                encode: None,
                others: OnceLock::new(),
                payload: Remote {
                    payload,
                    decoded: OnceLock::new(),
                },
            }),
        })
    }

    /// Whether two handles share one envelope (no copy was made between them).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.body, &b.body)
    }

    /// Whether other handles to this envelope exist, so that dropping this one cannot drop the
    /// payload. A snapshot: another thread may drop its handle at any time, so `false` is
    /// certain only for a handle no other thread can reach.
    #[inline]
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.body) > 1
    }
}

impl fmt::Debug for InterRoleEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.body.header;
        f.debug_struct("InterRoleEvent")
            .field("id", &format_args!("{}", h.id))
            .field("type_tag", &h.type_tag)
            .field("timestamp_micros", &h.timestamp_micros)
            .field("version", &h.version)
            .field("codec", &h.codec)
            .field("headers", &h.headers)
            .field("local", &self.is_local())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Refresh {
        section_name: String,
    }
    crate::impl_event!(Refresh = "test.refresh");

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Other(u32);
    crate::impl_event!(Other = "test.other");

    fn id(seq: u64) -> EventId {
        EventId {
            sender: InstanceId::new("w-1").unwrap(),
            seq,
        }
    }

    #[test]
    fn local_payload_is_the_value_itself() {
        let e = InterRoleEvent::new(
            id(1),
            Refresh {
                section_name: "db".into(),
            },
        );
        assert!(e.is_local());
        assert_eq!(e.payload::<Refresh>().unwrap().section_name, "db");
        assert!(e.payload::<Other>().is_none());
        assert!(matches!(
            e.try_payload::<Other>(),
            Err(PayloadError::WrongType { .. })
        ));
        assert_eq!(e.type_tag(), &TypeTag::from_static("test.refresh"));
        let clone = e.clone();
        assert!(InterRoleEvent::ptr_eq(&e, &clone));
    }

    #[test]
    fn wire_round_trip_keeps_header_and_payload() {
        let e = InterRoleEvent::new(
            id(42),
            Refresh {
                section_name: "cache".into(),
            },
        );
        let wire = e.to_wire().unwrap();
        assert_eq!(wire[0], ENVELOPE_VERSION_PLAIN);
        // Encoded once: the second call returns the same buffer.
        assert_eq!(e.to_wire().unwrap().as_ptr(), wire.as_ptr());
        let back = InterRoleEvent::from_wire(wire.clone()).unwrap();
        assert!(!back.is_local());
        assert_eq!(back.id(), e.id());
        assert_eq!(back.type_tag(), e.type_tag());
        assert_eq!(back.timestamp(), e.timestamp());
        assert_eq!(back.payload::<Refresh>().unwrap().section_name, "cache");
        assert_eq!(back.to_wire().unwrap(), wire);
        assert_eq!(
            (back.stream(), back.reply_to()),
            (StreamPos::default(), None)
        );
    }

    #[test]
    fn stream_position_and_reply_to_travel() {
        let pos = StreamPos {
            epoch: 1_700_000_000_000_000,
            directed: true,
            n: 300,
        };
        let e = InterRoleEvent::in_stream(
            id(42),
            Refresh {
                section_name: "x".into(),
            },
            pos,
            Some(7),
        );
        let back = InterRoleEvent::from_wire(e.to_wire().unwrap()).unwrap();
        assert_eq!((back.stream(), back.reply_to()), (pos, Some(7)));
        assert!(back.stream().is_tracked());
    }

    #[test]
    fn headers_travel_in_version_2_and_only_then() {
        let headers = Headers::new()
            .with(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .unwrap()
            .with("tenant", "acme")
            .unwrap();
        let e = InterRoleEvent::with_headers(
            id(3),
            Other(5),
            StreamPos::default(),
            None,
            headers.clone(),
        );
        let wire = e.to_wire().unwrap();
        assert_eq!(wire[0], ENVELOPE_VERSION);
        let back = InterRoleEvent::from_wire(wire.clone()).unwrap();
        assert_eq!(back.headers(), &headers);
        assert_eq!(back.payload::<Other>(), Some(&Other(5)));
        assert_eq!(back.to_wire().unwrap(), wire);

        // Without headers the envelope is version 1 and readers of version 1 read it.
        let plain = InterRoleEvent::new(id(3), Other(5)).to_wire().unwrap();
        assert_eq!(plain[0], ENVELOPE_VERSION_PLAIN);
        // A version 2 envelope of contract version 1, bincode, with no headers reads too.
        let mut empty = plain.to_vec();
        empty[0] = ENVELOPE_VERSION;
        let at = plain.len() - 1;
        empty.splice(at..at, [1, 0, 0]);
        let back = InterRoleEvent::from_wire(Bytes::from(empty)).unwrap();
        assert!(back.headers().is_empty());
        assert_eq!(back.payload::<Other>(), Some(&Other(5)));
    }

    #[test]
    fn invalid_headers_off_the_wire_are_refused() {
        let e = InterRoleEvent::with_headers(
            id(3),
            Other(5),
            StreamPos::default(),
            None,
            Headers::new().with("ab", "v").unwrap(),
        );
        let wire = e.to_wire().unwrap();
        // The key "ab" becomes "a " (invalid), then "aa" twice is a repeat.
        let at = wire.windows(3).position(|w| w == b"\x02ab").unwrap();
        let mut bad = wire.to_vec();
        bad[at + 2] = b' ';
        let err = InterRoleEvent::from_wire(Bytes::from(bad)).unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::InvalidHeader, "{err}");
        // A count running past the end.
        let mut short = wire.to_vec();
        short[at - 1] = 9;
        let err = InterRoleEvent::from_wire(Bytes::from(short)).unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::Decode, "{err}");
    }

    #[test]
    fn undecodable_payload_is_reported_not_hidden() {
        let e = InterRoleEvent::new(id(1), Other(7));
        let wire = e.to_wire().unwrap();
        // Re-label the payload as another type: same length of tag so the header stays valid.
        let forged = {
            let mut v = wire.to_vec();
            let at = v.windows(10).position(|w| w == b"test.other").unwrap();
            v[at..at + 10].copy_from_slice(b"test.refre");
            v
        };
        let back = InterRoleEvent::from_wire(Bytes::from(forged)).unwrap();
        assert_eq!(back.type_tag().as_str(), "test.refre");
        let mut tagged = wire.to_vec();
        let at = tagged.windows(10).position(|w| w == b"test.other").unwrap();
        // A one-byte payload of 7 read as a String (length 7, then nothing): does not decode.
        tagged.splice(at..at + 10, b"test.refresh".iter().copied());
        tagged[at - 1] = 12;
        let back = InterRoleEvent::from_wire(Bytes::from(tagged)).unwrap();
        match back.try_payload::<Refresh>() {
            Err(PayloadError::Undecodable { type_tag, .. }) => {
                assert_eq!(type_tag.as_str(), "test.refresh")
            }
            other => panic!("expected Undecodable, got {other:?}"),
        }
    }

    #[test]
    fn malformed_envelopes_get_specific_errors() {
        assert_eq!(
            InterRoleEvent::from_wire(Bytes::new()).unwrap_err().kind(),
            CodecErrorKind::Decode
        );
        assert_eq!(
            InterRoleEvent::from_wire(Bytes::from_static(&[9, 1, 2]))
                .unwrap_err()
                .kind(),
            CodecErrorKind::UnsupportedVersion
        );
        assert_eq!(
            InterRoleEvent::from_wire(Bytes::from_static(&[1, 200]))
                .unwrap_err()
                .kind(),
            CodecErrorKind::Decode
        );
        let zero_seq = InterRoleEvent::new(id(0), Other(1)).to_wire().unwrap();
        assert_eq!(
            InterRoleEvent::from_wire(zero_seq).unwrap_err().kind(),
            CodecErrorKind::InvalidHeader
        );
    }
}
