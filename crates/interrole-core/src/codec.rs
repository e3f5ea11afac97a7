//! The codec seam: the one place where values become bytes and bytes become values.
//!
//! Payloads and envelope headers are encoded with bincode 2 (`config::standard()`: varint
//! integers, little endian) through its serde support, pinned at `=2.0.1` because bincode is no
//! longer maintained upstream. Nothing else in interrole calls bincode, so changing the codec means
//! changing this file and the envelope version byte.
//!
//! # The envelope on the wire (versions 1 and 2)
//!
//! ```text
//! +------+----------------------------------------------+-------------+-------------------+
//! | 0x01 | header: bincode(standard) of                 |             | payload: the rest |
//! | 0x02 |   sender: str, seq: u64, type_tag: str,      | 0x02 only:  | of the buffer:    |
//! |      |   timestamp_micros: u64, epoch: u64,         | version u32,| the event value   |
//! |      |   directed: bool, n: u64, reply_to: u64      | codec u8,   | in its codec      |
//! |      |                                              | headers map |                   |
//! +------+----------------------------------------------+-------------+-------------------+
//! ```
//!
//! `epoch`, `directed` and `n` are the event's [`StreamPos`](crate::StreamPos) (all 0 when it is
//! not tracked); `reply_to` is the sequence number of the request a reply answers (0: none).
//! A `bool` is one byte, 0 or 1. A `str` is a varint length followed by UTF-8 bytes; a `u64` is a varint (one byte below 251).
//! `version` is the event contract's version ([`Event::VERSION`](crate::Event::VERSION)),
//! `codec` the payload's [`Codec`] (its wire id); the headers ([`Headers`](crate::Headers)) are
//! a varint count, then each key and its value. A writer uses version 1 for an event without
//! headers, of contract version 1, in bincode, so that readers of version 1 still read every
//! such event; this build reads both.
//! The payload has no length prefix: it runs to the end of the buffer the transport delivered.
//!
//! Section 10 of `docs/protocol.md` defines every byte of this, and how bincode lays out each
//! serde shape, for clients in other languages; `tests/envelope_bytes.rs` checks its examples.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The envelope format version this build writes for an event with headers, and reads.
pub const ENVELOPE_VERSION: u8 = 2;

/// The first envelope format version, which this build writes for an event without headers
/// (so that readers of version 1 read it), and reads.
pub const ENVELOPE_VERSION_PLAIN: u8 = 1;

/// How an event's payload is encoded: chosen per event type
/// ([`impl_event!`](crate::impl_event)`(E = "tag", codec = Json)`), recorded in the envelope, and
/// read by the receiver from there (so a reader decodes what the writer wrote).
///
/// | codec | wire id | self-describing | a reader of another version of the type |
/// |---|---|---|---|
/// | `Bincode` (the default) | 0 | no: positional, no names | must have exactly the writer's fields |
/// | `Json` (feature `json`) | 1 | yes: names and values, as text | ignores fields it does not know; a missing field takes its serde default (`#[serde(default)]`) |
/// | `MessagePack` (feature `msgpack`) | 2 | yes: field names and values, binary | as `Json` |
///
/// `docs/benchmarks.md` ("Codecs") has the cost of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// bincode 2, standard configuration: compact and fast, positional.
    #[default]
    Bincode,
    /// JSON (serde_json): self-describing text.
    Json,
    /// MessagePack with named fields (rmp-serde): self-describing binary.
    MessagePack,
}

impl Codec {
    /// The codec's id in the envelope.
    pub const fn wire_id(self) -> u8 {
        match self {
            Codec::Bincode => 0,
            Codec::Json => 1,
            Codec::MessagePack => 2,
        }
    }

    /// The codec with this envelope id.
    pub const fn from_wire_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Codec::Bincode),
            1 => Some(Codec::Json),
            2 => Some(Codec::MessagePack),
            _ => None,
        }
    }

    /// Its name: `bincode`, `json`, `msgpack`.
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Bincode => "bincode",
            Codec::Json => "json",
            Codec::MessagePack => "msgpack",
        }
    }

    /// Whether the bytes say their own structure (field names), so that a reader can show them
    /// without the type, and tolerate fields it does not know.
    pub const fn is_self_describing(self) -> bool {
        !matches!(self, Codec::Bincode)
    }

    /// Whether this build of interrole-core encodes and decodes it (its feature is on).
    pub const fn is_built(self) -> bool {
        match self {
            Codec::Bincode => true,
            Codec::Json => cfg!(feature = "json"),
            Codec::MessagePack => cfg!(feature = "msgpack"),
        }
    }

    fn not_built(self) -> CodecError {
        CodecError::new(
            CodecErrorKind::UnsupportedCodec,
            format!(
                "the {} codec is not built in (interrole-core feature `{}`)",
                self.name(),
                self.name()
            ),
        )
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Appends the encoding of `value` with `codec` to `out`.
///
/// # Errors
/// [`CodecErrorKind::Encode`] when the value's `Serialize` implementation fails;
/// [`CodecErrorKind::UnsupportedCodec`] when the codec is not built in.
pub fn encode_with<T: Serialize + ?Sized>(
    codec: Codec,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let failed = |e: &dyn std::fmt::Display| {
        CodecError::new(
            CodecErrorKind::Encode,
            format!("cannot encode value ({codec}): {e}"),
        )
    };
    match codec {
        Codec::Bincode => encode_value_into(value, out),
        #[cfg(feature = "json")]
        Codec::Json => serde_json::to_writer(out, value).map_err(|e| failed(&e)),
        #[cfg(feature = "msgpack")]
        Codec::MessagePack => {
            let mut ser = rmp_serde::Serializer::new(out).with_struct_map();
            value.serialize(&mut ser).map_err(|e| failed(&e))
        }
        #[allow(unreachable_patterns)]
        other => {
            let _ = failed;
            Err(other.not_built())
        }
    }
}

/// Decodes a value encoded with `codec` that fills all of `bytes`.
///
/// # Errors
/// [`CodecErrorKind::Decode`] when the bytes are not a valid encoding of `T` (bytes left over
/// included); [`CodecErrorKind::UnsupportedCodec`] when the codec is not built in.
pub fn decode_with<T: DeserializeOwned>(codec: Codec, bytes: &[u8]) -> Result<T, CodecError> {
    let failed = |e: &dyn std::fmt::Display| {
        CodecError::new(
            CodecErrorKind::Decode,
            format!("cannot decode value ({codec}): {e}"),
        )
    };
    match codec {
        Codec::Bincode => decode_value(bytes),
        #[cfg(feature = "json")]
        Codec::Json => serde_json::from_slice(bytes).map_err(|e| failed(&e)),
        #[cfg(feature = "msgpack")]
        Codec::MessagePack => {
            // A reader over a cursor says how far it got; it reads a claimed length in steps,
            // never allocating it up front.
            let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
            let value = <T as serde::Deserialize>::deserialize(&mut de).map_err(|e| failed(&e))?;
            let left = bytes.len() - de.position() as usize;
            if left != 0 {
                return Err(failed(&format_args!(
                    "{left} trailing bytes after the value"
                )));
            }
            Ok(value)
        }
        #[allow(unreachable_patterns)]
        other => {
            let _ = failed;
            Err(other.not_built())
        }
    }
}

/// The largest value the decoder will allocate for, in bytes: a guard against hostile lengths.
pub const DECODE_LIMIT: usize = 64 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
>;

const CONFIG: Config = bincode::config::standard().with_limit::<DECODE_LIMIT>();

/// What went wrong while encoding or decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecErrorKind {
    /// A value could not be encoded (a serde `Serialize` implementation failed).
    Encode,
    /// Bytes could not be decoded into the expected value.
    Decode,
    /// The envelope was written by a format version this build does not read.
    UnsupportedVersion,
    /// The envelope decoded but a header field is not acceptable (an invalid name, say).
    InvalidHeader,
    /// The payload's codec is not built into this process (or its id is unknown).
    UnsupportedCodec,
}

/// An encoding or decoding failure, with a message saying where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    kind: CodecErrorKind,
    message: String,
}

impl CodecError {
    pub(crate) fn new(kind: CodecErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> CodecErrorKind {
        self.kind
    }
}

/// Encodes a value with the project codec.
///
/// # Errors
/// [`CodecErrorKind::Encode`] when the value's `Serialize` implementation fails.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, CONFIG)
        .map_err(|e| CodecError::new(CodecErrorKind::Encode, format!("cannot encode value: {e}")))
}

/// Appends the encoding of a value to `out`.
///
/// # Errors
/// As [`encode_value`].
pub fn encode_value_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, CONFIG)
        .map(drop)
        .map_err(|e| CodecError::new(CodecErrorKind::Encode, format!("cannot encode value: {e}")))
}

/// Decodes a value that fills all of `bytes`.
///
/// # Errors
/// [`CodecErrorKind::Decode`] when the bytes are not a valid encoding of `T`, or when bytes are
/// left over after it.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(CodecError::new(
            CodecErrorKind::Decode,
            format!("{} trailing bytes after the value", bytes.len() - used),
        ));
    }
    Ok(value)
}

/// Decodes a value at the start of `bytes`, returning it and how many bytes it used.
///
/// # Errors
/// [`CodecErrorKind::Decode`] when the bytes do not start with a valid encoding of `T`.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::decode_from_slice(bytes, CONFIG)
        .map_err(|e| CodecError::new(CodecErrorKind::Decode, format!("cannot decode value: {e}")))
}

/// [`decode_prefix`] for a value that borrows from `bytes` (its strings, say), so that decoding
/// it allocates nothing.
pub(crate) fn decode_prefix_borrowed<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
) -> Result<(T, usize), CodecError> {
    bincode::serde::borrow_decode_from_slice(bytes, CONFIG)
        .map_err(|e| CodecError::new(CodecErrorKind::Decode, format!("cannot decode value: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_trailing_bytes_are_refused() {
        let v = (7u64, "abc".to_string(), vec![1u8, 2, 3]);
        let bytes = encode_value(&v).unwrap();
        let back: (u64, String, Vec<u8>) = decode_value(&bytes).unwrap();
        assert_eq!(back, v);
        let mut longer = bytes.clone();
        longer.push(0);
        let err = decode_value::<(u64, String, Vec<u8>)>(&longer).unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::Decode);
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        // A Vec<u8> claiming u64::MAX elements: varint marker 253 followed by 8 bytes.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        let err = decode_value::<Vec<u8>>(&bytes).unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::Decode);
    }
}
