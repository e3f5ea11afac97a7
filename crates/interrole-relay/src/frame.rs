//! Multicast frames: the binary messages of the interrole multicast extension
//! (`sb-hc-action=publish` and `sb-hc-action=subscribe`).
//!
//! `docs/protocol.md` is the normative description (byte tables, semantics, close codes, an
//! example); this is a summary.
//!
//! ```text
//! message  = version:u8 (= 1)  frame+              one binary WebSocket message
//! frame    = type:u8  length:varint  body[length]
//! varint   = unsigned LEB128, at most 10 bytes, minimal (no trailing 0x80.. 0x00 padding)
//! instance = length:varint  UTF-8[length]          an interrole InstanceId; length 0 = none
//!
//! 0x01 PUBLISH  publisher -> relay   seq:varint  target:instance  envelope:rest
//! 0x02 ACK      relay -> publisher   seq:varint                    (cumulative)
//! 0x03 REJECT   relay -> publisher   seq:varint  code:u8  reason:varint-length UTF-8
//! 0x10 RESUME   subscriber -> relay  flags:u8  count:varint  (sender:instance  seq:varint)*count
//! 0x11 EVENT    relay -> subscriber  sender:instance  seq:varint  envelope:rest
//! 0x12 MISSED   relay -> subscriber  sender:instance (0 = unknown)  count:varint
//! ```
//!
//! The relay never decodes envelopes: the sender and sequence number travel beside them.
//!
//! ```
//! use bytes::Bytes;
//! use interrole_core::InstanceId;
//! use interrole_relay::frame::{decode_message, Frame, FrameLimits, MessageBuilder, SharedFrame};
//!
//! // A publisher batches two events into one message.
//! let mut batch = MessageBuilder::new();
//! batch.push(&Frame::Publish { seq: 1, target: None, envelope: Bytes::from_static(b"e1") });
//! batch.push(&Frame::Publish { seq: 2, target: None, envelope: Bytes::from_static(b"e2") });
//! let message = batch.finish();
//!
//! // The relay decodes it (envelopes are slices of the message, not copies) ...
//! let frames = interrole_relay::frame::decode_message_bytes(&message, &FrameLimits::default())?;
//! let Frame::Publish { seq, envelope, .. } = &frames[0] else { unreachable!() };
//!
//! // ... encodes each EVENT once, and sends the same bytes to every subscriber.
//! let sender = InstanceId::new("worker-1")?;
//! let event = SharedFrame::event(&sender, *seq, envelope);
//! let to_each_subscriber = event.message(); // a cheap clone of shared bytes
//! let decoded = decode_message(&to_each_subscriber, &FrameLimits::default())?;
//! assert_eq!(decoded, [Frame::Event { sender, seq: 1, envelope: Bytes::from_static(b"e1") }]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Decoding
//!
//! [`decode_message`], [`decode_message_bytes`] and [`MessageReader`] never panic, whatever the
//! input, and never allocate on the word of the input beyond the [`FrameLimits`]: lengths and
//! counts are checked against the limits and against the bytes actually present before anything
//! is reserved. Every failure is a [`FrameError`] of a specific [kind](FrameErrorKind) with the
//! byte offset where it was found, and maps to the WebSocket [close code](FrameError::close_code)
//! the offending connection is closed with.

use std::collections::HashSet;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use interrole_core::{InstanceId, MAX_NAME_LEN, TransportErrorKind};

/// The version byte that starts every message this build writes (the newest it reads).
///
/// Version 2 adds the READY frame ([`Frame::Ready`]), the relay's answer to RESUME. This build
/// reads versions [`MIN_VERSION`] to [`VERSION`]; a relay answers each connection in the version
/// of the first message it received from it.
pub const VERSION: u8 = 2;

/// The oldest version this build reads (and writes, to a peer that spoke it).
pub const MIN_VERSION: u8 = 1;

/// The longest encoded `u64` varint, in bytes.
pub const MAX_VARINT_LEN: usize = 10;

/// The longest REJECT reason, in bytes; encoders truncate longer ones at a character boundary.
pub const MAX_REASON_LEN: usize = 1024;

/// The RESUME flag bit asking for a replay of senders not listed. The other bits are reserved:
/// written as 0, and refused by this version's decoder.
pub const RESUME_REPLAY_UNLISTED: u8 = 0x01;

/// The READY flag bit saying that the path has more senders than READY lists. The other bits
/// are reserved: written as 0, and refused by this version's decoder.
pub const READY_PARTIAL: u8 = 0x01;

/// The most bytes a PUBLISH or EVENT body adds to its envelope: a sequence number (10), an
/// instance length (2) and the longest instance id (256).
pub const MAX_BODY_OVERHEAD: usize = MAX_VARINT_LEN + 2 + MAX_NAME_LEN;

// ---------------------------------------------------------------------------------------------
// Types

/// Who sends a frame to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// On a `publish` connection, from the client.
    PublisherToRelay,
    /// On a `publish` connection, from the relay.
    RelayToPublisher,
    /// On a `subscribe` connection, from the client.
    SubscriberToRelay,
    /// On a `subscribe` connection, from the relay.
    RelayToSubscriber,
}

/// The kinds of frame, with their type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// `0x01`: an event from a publisher.
    Publish,
    /// `0x02`: the relay has handled a publisher's events up to a sequence number.
    Ack,
    /// `0x03`: the relay refused one of a publisher's events.
    Reject,
    /// `0x10`: where a subscriber resumes, sent once, first.
    Resume,
    /// `0x11`: an event delivered to a subscriber.
    Event,
    /// `0x12`: events a subscriber will not receive.
    Missed,
    /// `0x13` (version 2): the relay has registered a subscriber; the answer to RESUME.
    Ready,
}

impl FrameType {
    /// The type code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::Publish => 0x01,
            Self::Ack => 0x02,
            Self::Reject => 0x03,
            Self::Resume => 0x10,
            Self::Event => 0x11,
            Self::Missed => 0x12,
            Self::Ready => 0x13,
        }
    }

    /// The first protocol version that has this frame type: a message of an older version that
    /// carries it is refused as an unknown type.
    pub fn since(self) -> u8 {
        match self {
            Self::Ready => 2,
            _ => 1,
        }
    }

    /// The frame type of a type code.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x01 => Self::Publish,
            0x02 => Self::Ack,
            0x03 => Self::Reject,
            0x10 => Self::Resume,
            0x11 => Self::Event,
            0x12 => Self::Missed,
            0x13 => Self::Ready,
            _ => return None,
        })
    }

    /// Who may send this frame. A frame received in another direction is a protocol error
    /// ([`CloseCode::ProtocolError`]).
    pub fn direction(self) -> Direction {
        match self {
            Self::Publish => Direction::PublisherToRelay,
            Self::Ack | Self::Reject => Direction::RelayToPublisher,
            Self::Resume => Direction::SubscriberToRelay,
            Self::Event | Self::Missed | Self::Ready => Direction::RelayToSubscriber,
        }
    }

    /// The frame's name in upper case, as the protocol document spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Publish => "PUBLISH",
            Self::Ack => "ACK",
            Self::Reject => "REJECT",
            Self::Resume => "RESUME",
            Self::Event => "EVENT",
            Self::Missed => "MISSED",
            Self::Ready => "READY",
        }
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the relay refused a published event (the `code` of a REJECT frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// `1`: the envelope is larger than the relay accepts (fatal for the event).
    TooLarge,
    /// `2`: the directed event's target is not connected to the path (transient).
    TargetNotConnected,
    /// `3`: the publisher may not send directed events to that target (fatal for the event).
    TargetForbidden,
    /// `4`: the publisher is over the relay's publish rate (transient: resend later, with the
    /// same sequence number).
    Busy,
    /// `5`: the frame was well formed but its content is not acceptable (fatal for the event).
    Malformed,
    /// Any other code, from a newer relay: treat as fatal for the event.
    Other(u8),
}

impl RejectCode {
    /// The code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::TooLarge => 1,
            Self::TargetNotConnected => 2,
            Self::TargetForbidden => 3,
            Self::Busy => 4,
            Self::Malformed => 5,
            Self::Other(c) => c,
        }
    }

    /// The reject code of a wire code (unknown codes are [`RejectCode::Other`]).
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::TooLarge,
            2 => Self::TargetNotConnected,
            3 => Self::TargetForbidden,
            4 => Self::Busy,
            5 => Self::Malformed,
            c => Self::Other(c),
        }
    }

    /// The transport error kind a publisher reports for the refused event.
    pub fn error_kind(self) -> TransportErrorKind {
        match self {
            Self::TooLarge => TransportErrorKind::PayloadTooLarge,
            Self::TargetNotConnected => TransportErrorKind::NoListener,
            Self::TargetForbidden => TransportErrorKind::Forbidden,
            Self::Busy => TransportErrorKind::Unavailable,
            Self::Malformed | Self::Other(_) => TransportErrorKind::Protocol,
        }
    }

    /// Whether sending the event again later may succeed.
    pub fn is_transient(self) -> bool {
        self.error_kind().is_transient()
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Frame {
    /// Publisher → relay: one event. The sender is the connection's instance (its `sb-hc-id`),
    /// not a field: a publisher cannot speak for another.
    Publish {
        /// The publisher's sequence number for the event, from 1, increasing.
        seq: u64,
        /// The one instance to deliver to (directed delivery), or `None` for every subscriber.
        target: Option<InstanceId>,
        /// The envelope, opaque to the relay.
        envelope: Bytes,
    },
    /// Relay → publisher: every PUBLISH with a sequence number up to `seq` has been handled,
    /// accepted or refused by a REJECT sent before this ACK.
    Ack {
        /// The highest sequence number handled.
        seq: u64,
    },
    /// Relay → publisher: the PUBLISH with sequence number `seq` was refused.
    Reject {
        /// The refused event's sequence number.
        seq: u64,
        /// Why.
        code: RejectCode,
        /// A human-readable reason (at most [`MAX_REASON_LEN`] bytes).
        reason: String,
    },
    /// Subscriber → relay: where to resume. The first frame a subscriber sends, exactly once.
    Resume {
        /// Also replay what the window holds from senders not listed in `positions` (for a
        /// reconnecting subscriber); when false, unlisted senders start with live events.
        replay_unlisted: bool,
        /// For each sender, the last sequence number already received (0: none).
        positions: Vec<(InstanceId, u64)>,
    },
    /// Relay → subscriber: one event.
    Event {
        /// The instance that published it.
        sender: InstanceId,
        /// The sender's sequence number for it.
        seq: u64,
        /// The envelope, as the publisher sent it.
        envelope: Bytes,
    },
    /// Relay → subscriber: `count` events will not arrive (dropped by the slow-consumer policy,
    /// or older than the replay window).
    Missed {
        /// Whose events, when they were all from one sender.
        sender: Option<InstanceId>,
        /// How many.
        count: u64,
    },
    /// Relay → subscriber (version 2): the answer to RESUME. The subscriber is registered:
    /// every event accepted on the path from now on reaches it.
    Ready {
        /// The path has more senders than `positions` lists.
        partial: bool,
        /// For each sender the path has accepted events from, the highest sequence number
        /// accepted when the subscriber was registered.
        positions: Vec<(InstanceId, u64)>,
    },
}

impl Frame {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Publish { .. } => FrameType::Publish,
            Self::Ack { .. } => FrameType::Ack,
            Self::Reject { .. } => FrameType::Reject,
            Self::Resume { .. } => FrameType::Resume,
            Self::Event { .. } => FrameType::Event,
            Self::Missed { .. } => FrameType::Missed,
            Self::Ready { .. } => FrameType::Ready,
        }
    }

    /// Appends the frame (type, length, body; no version byte) to `out`.
    pub fn encode<B: BufMut>(&self, out: &mut B) {
        match self {
            Self::Publish {
                seq,
                target,
                envelope,
            } => encode_publish(out, *seq, target.as_ref(), envelope),
            Self::Ack { seq } => encode_ack(out, *seq),
            Self::Reject { seq, code, reason } => encode_reject(out, *seq, *code, reason),
            Self::Resume {
                replay_unlisted,
                positions,
            } => encode_resume(out, *replay_unlisted, positions),
            Self::Event {
                sender,
                seq,
                envelope,
            } => encode_event(out, sender, *seq, envelope),
            Self::Missed { sender, count } => encode_missed(out, sender.as_ref(), *count),
            Self::Ready { partial, positions } => encode_ready(out, *partial, positions),
        }
    }

    /// The length of [`Frame::encode`]'s output, in bytes.
    pub fn encoded_len(&self) -> usize {
        let body = match self {
            Self::Publish {
                seq,
                target,
                envelope,
            } => publish_body_len(*seq, target.as_ref(), envelope.len()),
            Self::Ack { seq } => varint_len(*seq),
            Self::Reject { seq, reason, .. } => reject_body_len(*seq, truncate(reason)),
            Self::Resume { positions, .. } => resume_body_len(positions),
            Self::Event {
                sender,
                seq,
                envelope,
            } => event_body_len(sender, *seq, envelope.len()),
            Self::Missed { sender, count } => missed_body_len(sender.as_ref(), *count),
            Self::Ready { positions, .. } => resume_body_len(positions),
        };
        1 + varint_len(body as u64) + body
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_varint<B: BufMut>(out: &mut B, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// The length of `value` as a varint, 1 to [`MAX_VARINT_LEN`] bytes.
pub fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends the version byte that starts every message ([`VERSION`]). Frames follow.
pub fn start_message<B: BufMut>(out: &mut B) {
    out.put_u8(VERSION);
}

fn instance_len(id: Option<&InstanceId>) -> usize {
    let len = id.map_or(0, |i| i.as_str().len());
    varint_len(len as u64) + len
}

fn put_instance<B: BufMut>(out: &mut B, id: Option<&InstanceId>) {
    let s = id.map_or("", InstanceId::as_str);
    put_varint(out, s.len() as u64);
    out.put_slice(s.as_bytes());
}

fn put_header<B: BufMut>(out: &mut B, ty: FrameType, body_len: usize) {
    out.put_u8(ty.code());
    put_varint(out, body_len as u64);
}

fn publish_body_len(seq: u64, target: Option<&InstanceId>, envelope: usize) -> usize {
    varint_len(seq) + instance_len(target) + envelope
}

fn event_body_len(sender: &InstanceId, seq: u64, envelope: usize) -> usize {
    instance_len(Some(sender)) + varint_len(seq) + envelope
}

fn reject_body_len(seq: u64, reason: &str) -> usize {
    varint_len(seq) + 1 + varint_len(reason.len() as u64) + reason.len()
}

fn missed_body_len(sender: Option<&InstanceId>, count: u64) -> usize {
    instance_len(sender) + varint_len(count)
}

fn resume_body_len(positions: &[(InstanceId, u64)]) -> usize {
    1 + varint_len(positions.len() as u64)
        + positions
            .iter()
            .map(|(id, seq)| instance_len(Some(id)) + varint_len(*seq))
            .sum::<usize>()
}

/// `reason` cut to at most [`MAX_REASON_LEN`] bytes at a character boundary.
fn truncate(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Appends a PUBLISH frame.
pub fn encode_publish<B: BufMut>(
    out: &mut B,
    seq: u64,
    target: Option<&InstanceId>,
    envelope: &[u8],
) {
    put_header(
        out,
        FrameType::Publish,
        publish_body_len(seq, target, envelope.len()),
    );
    put_varint(out, seq);
    put_instance(out, target);
    out.put_slice(envelope);
}

/// Appends an ACK frame.
pub fn encode_ack<B: BufMut>(out: &mut B, seq: u64) {
    put_header(out, FrameType::Ack, varint_len(seq));
    put_varint(out, seq);
}

/// Appends a REJECT frame; a `reason` over [`MAX_REASON_LEN`] bytes is truncated.
pub fn encode_reject<B: BufMut>(out: &mut B, seq: u64, code: RejectCode, reason: &str) {
    let reason = truncate(reason);
    put_header(out, FrameType::Reject, reject_body_len(seq, reason));
    put_varint(out, seq);
    out.put_u8(code.code());
    put_varint(out, reason.len() as u64);
    out.put_slice(reason.as_bytes());
}

/// Appends a RESUME frame.
pub fn encode_resume<B: BufMut>(
    out: &mut B,
    replay_unlisted: bool,
    positions: &[(InstanceId, u64)],
) {
    put_header(out, FrameType::Resume, resume_body_len(positions));
    out.put_u8(if replay_unlisted {
        RESUME_REPLAY_UNLISTED
    } else {
        0
    });
    put_varint(out, positions.len() as u64);
    for (sender, seq) in positions {
        put_instance(out, Some(sender));
        put_varint(out, *seq);
    }
}

/// Appends an EVENT frame.
pub fn encode_event<B: BufMut>(out: &mut B, sender: &InstanceId, seq: u64, envelope: &[u8]) {
    put_header(
        out,
        FrameType::Event,
        event_body_len(sender, seq, envelope.len()),
    );
    put_instance(out, Some(sender));
    put_varint(out, seq);
    out.put_slice(envelope);
}

/// Appends a READY frame (version 2).
pub fn encode_ready<B: BufMut>(out: &mut B, partial: bool, positions: &[(InstanceId, u64)]) {
    put_header(out, FrameType::Ready, resume_body_len(positions));
    out.put_u8(if partial { READY_PARTIAL } else { 0 });
    put_varint(out, positions.len() as u64);
    for (sender, seq) in positions {
        put_instance(out, Some(sender));
        put_varint(out, *seq);
    }
}

/// Appends a MISSED frame.
pub fn encode_missed<B: BufMut>(out: &mut B, sender: Option<&InstanceId>, count: u64) {
    put_header(out, FrameType::Missed, missed_body_len(sender, count));
    put_instance(out, sender);
    put_varint(out, count);
}

/// Encodes `frames` as one message (version byte, then each frame).
pub fn encode_message(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + frames.iter().map(Frame::encoded_len).sum::<usize>());
    start_message(&mut out);
    for frame in frames {
        frame.encode(&mut out);
    }
    out
}

/// A frame encoded once, to be sent to many: held as a complete one-frame message, so that
/// [`SharedFrame::message`] is a cheap clone and [`MessageBuilder::push_shared`] a copy of the
/// frame's bytes into a batch.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SharedFrame {
    message: Bytes,
}

impl SharedFrame {
    /// Encodes `frame`.
    pub fn new(frame: &Frame) -> Self {
        let mut out = BytesMut::with_capacity(1 + frame.encoded_len());
        start_message(&mut out);
        frame.encode(&mut out);
        Self {
            message: out.freeze(),
        }
    }

    /// Encodes an EVENT frame without building a [`Frame`] first.
    pub fn event(sender: &InstanceId, seq: u64, envelope: &[u8]) -> Self {
        let body = event_body_len(sender, seq, envelope.len());
        let mut out = BytesMut::with_capacity(2 + varint_len(body as u64) + body);
        start_message(&mut out);
        encode_event(&mut out, sender, seq, envelope);
        Self {
            message: out.freeze(),
        }
    }

    /// The frame as a complete one-frame message (a reference-counted clone, not a copy).
    pub fn message(&self) -> Bytes {
        self.message.clone()
    }

    /// The frame's bytes without the version byte, to batch with others.
    pub fn frame_bytes(&self) -> &[u8] {
        self.message.get(1..).unwrap_or_default()
    }

    /// The length of the frame's bytes (without the version byte).
    pub fn len(&self) -> usize {
        self.message.len().saturating_sub(1)
    }

    /// Always false: a frame has at least a type and a length. Here for the `len` convention.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = self
            .message
            .get(1)
            .and_then(|&c| FrameType::from_code(c))
            .map_or("?", FrameType::name);
        f.debug_struct("SharedFrame")
            .field("type", &ty)
            .field("len", &self.len())
            .finish()
    }
}

/// Builds one message frame by frame: the version byte first, then each frame pushed.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    buf: BytesMut,
    frames: usize,
}

impl Default for MessageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageBuilder {
    /// An empty message (only the version byte).
    pub fn new() -> Self {
        Self::with_capacity(256)
    }

    /// An empty message with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_version(VERSION, capacity)
    }

    /// An empty message of protocol `version` (for a peer that speaks an older one, between
    /// [`MIN_VERSION`] and [`VERSION`]) with room for `capacity` bytes. The caller pushes only
    /// frames that `version` has ([`FrameType::since`]).
    pub fn with_version(version: u8, capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity.max(1));
        buf.put_u8(version);
        Self { buf, frames: 0 }
    }

    /// Appends `frame`.
    pub fn push(&mut self, frame: &Frame) {
        frame.encode(&mut self.buf);
        self.frames += 1;
    }

    /// Appends a frame encoded earlier.
    pub fn push_shared(&mut self, frame: &SharedFrame) {
        self.buf.put_slice(frame.frame_bytes());
        self.frames += 1;
    }

    /// The message's length so far, version byte included: compare it with the peer's
    /// [`FrameLimits::max_message`] before pushing more.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no frame has been pushed (a message needs at least one).
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// How many frames have been pushed.
    pub fn frame_count(&self) -> usize {
        self.frames
    }

    /// The finished message.
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

// ---------------------------------------------------------------------------------------------
// Limits and errors

/// What a decoder accepts. Both ends should agree; the defaults are the protocol's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrameLimits {
    /// The longest message, version byte included (default 4 MiB + 1 KiB).
    pub max_message: usize,
    /// The longest frame body, the value of a frame's length field (default 1 MiB +
    /// [`MAX_BODY_OVERHEAD`]: a 1 MiB envelope).
    pub max_frame: usize,
    /// The most frames in one message (default 8192).
    pub max_frames: usize,
    /// The most senders in one RESUME frame (default 8192).
    pub max_resume_entries: usize,
}

/// The default largest envelope: 1 MiB.
pub const DEFAULT_MAX_ENVELOPE: usize = 1024 * 1024;

impl Default for FrameLimits {
    fn default() -> Self {
        Self::for_envelope(DEFAULT_MAX_ENVELOPE)
    }
}

impl FrameLimits {
    /// Limits for envelopes of at most `max_envelope` bytes: `max_frame` is
    /// `max_envelope + MAX_BODY_OVERHEAD`, and `max_message` the larger of 4 MiB + 1 KiB and
    /// one such frame with its headers.
    pub fn for_envelope(max_envelope: usize) -> Self {
        let max_frame = max_envelope.saturating_add(MAX_BODY_OVERHEAD);
        Self {
            max_message: (4 * 1024 * 1024 + 1024).max(max_frame.saturating_add(2 + MAX_VARINT_LEN)),
            max_frame,
            max_frames: 8192,
            max_resume_entries: 8192,
        }
    }

    /// The largest envelope a PUBLISH or EVENT may carry under these limits, whatever its
    /// instance id and sequence number.
    pub fn max_envelope(&self) -> usize {
        self.max_frame.saturating_sub(MAX_BODY_OVERHEAD)
    }

    /// These limits with `max_message`.
    pub fn with_max_message(mut self, max_message: usize) -> Self {
        self.max_message = max_message;
        self
    }

    /// These limits with `max_frame`.
    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// These limits with `max_frames`.
    pub fn with_max_frames(mut self, max_frames: usize) -> Self {
        self.max_frames = max_frames;
        self
    }

    /// These limits with `max_resume_entries`.
    pub fn with_max_resume_entries(mut self, max_resume_entries: usize) -> Self {
        self.max_resume_entries = max_resume_entries;
        self
    }
}

/// WebSocket close codes on multicast connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// `1000`: closed on purpose by its owner.
    Normal,
    /// `1001`: the relay is shutting down, or the path is gone (transient: reconnect).
    GoingAway,
    /// `1002`: the peer broke the protocol: an undecodable message, a frame sent in the wrong
    /// direction, RESUME missing, late or repeated (fatal).
    ProtocolError,
    /// `1003`: a text message on a multicast connection (fatal).
    UnsupportedData,
    /// `1008`: the connection's token expired (reconnect with a fresh token and RESUME).
    PolicyViolation,
    /// `1009`: a message or frame over the limits (fatal).
    MessageTooBig,
    /// `1011`: the relay failed (transient).
    InternalError,
    /// `1013`: the relay is over capacity, e.g. too many subscribers on the path (transient).
    TryAgainLater,
    /// `4000`: the subscriber did not keep up and the path's slow-consumer policy is to
    /// disconnect (transient: reconnect and RESUME).
    SlowConsumer,
    /// `4001`: a newer connection of the same instance, action and path replaced this one
    /// (fatal for this connection).
    Replaced,
    /// `4002`: the message's version byte is not one the relay reads (fatal).
    UnsupportedVersion,
    /// Any other code.
    Other(u16),
}

impl CloseCode {
    /// The code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::UnsupportedData => 1003,
            Self::PolicyViolation => 1008,
            Self::MessageTooBig => 1009,
            Self::InternalError => 1011,
            Self::TryAgainLater => 1013,
            Self::SlowConsumer => 4000,
            Self::Replaced => 4001,
            Self::UnsupportedVersion => 4002,
            Self::Other(c) => c,
        }
    }

    /// The close code of a wire code.
    pub fn from_code(code: u16) -> Self {
        match code {
            1000 => Self::Normal,
            1001 => Self::GoingAway,
            1002 => Self::ProtocolError,
            1003 => Self::UnsupportedData,
            1008 => Self::PolicyViolation,
            1009 => Self::MessageTooBig,
            1011 => Self::InternalError,
            1013 => Self::TryAgainLater,
            4000 => Self::SlowConsumer,
            4001 => Self::Replaced,
            4002 => Self::UnsupportedVersion,
            c => Self::Other(c),
        }
    }

    /// The transport error kind a client reports when the relay closes with this code.
    pub fn error_kind(self) -> TransportErrorKind {
        match self {
            Self::Normal | Self::GoingAway | Self::PolicyViolation | Self::SlowConsumer => {
                TransportErrorKind::ConnectionLost
            }
            Self::InternalError | Self::TryAgainLater => TransportErrorKind::Unavailable,
            Self::MessageTooBig => TransportErrorKind::PayloadTooLarge,
            Self::Replaced => TransportErrorKind::Conflict,
            Self::ProtocolError
            | Self::UnsupportedData
            | Self::UnsupportedVersion
            | Self::Other(_) => TransportErrorKind::Protocol,
        }
    }

    /// Whether reconnecting may help.
    pub fn is_transient(self) -> bool {
        self.error_kind().is_transient()
    }
}

/// What is wrong with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameErrorKind {
    /// The message is empty, or its first byte is not [`VERSION`].
    BadVersion,
    /// The message, a frame or a field ends before its declared length.
    Truncated,
    /// A frame type code this build does not know.
    UnknownType,
    /// Over a [`FrameLimits`] limit (message, frame, frame count, RESUME entries) or over
    /// [`MAX_REASON_LEN`].
    TooLarge,
    /// A varint longer than 10 bytes, over `u64`, or not minimally encoded.
    BadVarint,
    /// An instance id that is empty where one is required, over 256 bytes, not UTF-8 or not a
    /// valid [`InstanceId`].
    InvalidInstance,
    /// A REJECT reason that is not UTF-8.
    InvalidText,
    /// Anything else: a message without frames, bytes left in a frame body after its last field,
    /// a sequence number 0 where one must be at least 1, a sender twice in one RESUME, reserved
    /// RESUME flag bits set.
    Malformed,
}

impl FrameErrorKind {
    /// The close code for the connection that sent the message: [`CloseCode::MessageTooBig`]
    /// for [`TooLarge`](FrameErrorKind::TooLarge), [`CloseCode::UnsupportedVersion`] for
    /// [`BadVersion`](FrameErrorKind::BadVersion), [`CloseCode::ProtocolError`] otherwise.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::TooLarge => CloseCode::MessageTooBig,
            Self::BadVersion => CloseCode::UnsupportedVersion,
            _ => CloseCode::ProtocolError,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::BadVersion => "bad version",
            Self::Truncated => "truncated",
            Self::UnknownType => "unknown frame type",
            Self::TooLarge => "too large",
            Self::BadVarint => "bad varint",
            Self::InvalidInstance => "invalid instance id",
            Self::InvalidText => "invalid text",
            Self::Malformed => "malformed frame",
        }
    }
}

impl fmt::Display for FrameErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that could not be decoded: its [kind](FrameError::kind), where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}: {message}")]
pub struct FrameError {
    kind: FrameErrorKind,
    offset: usize,
    message: String,
}

impl FrameError {
    fn new(kind: FrameErrorKind, offset: usize, message: impl Into<String>) -> Self {
        Self {
            kind,
            offset,
            message: message.into(),
        }
    }

    /// What is wrong.
    pub fn kind(&self) -> FrameErrorKind {
        self.kind
    }

    /// The offset in the message where the problem was found.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The close code for the connection that sent the message (see
    /// [`FrameErrorKind::close_code`]).
    pub fn close_code(&self) -> CloseCode {
        self.kind.close_code()
    }

    /// The message, without the kind and offset.
    pub fn message(&self) -> &str {
        &self.message
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Where envelopes come from: copied out of a slice, or sliced out of shared bytes.
#[derive(Debug, Clone, Copy)]
enum Input<'a> {
    Slice(&'a [u8]),
    Shared(&'a Bytes),
}

impl Input<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Slice(s) => s,
            Self::Shared(b) => b,
        }
    }

    fn envelope(&self, start: usize, end: usize) -> Bytes {
        match self {
            Self::Slice(s) => Bytes::copy_from_slice(s.get(start..end).unwrap_or_default()),
            Self::Shared(b) if start <= end && end <= b.len() => b.slice(start..end),
            Self::Shared(_) => Bytes::new(),
        }
    }
}

/// A cursor over one frame body (or the whole message), tracking absolute offsets.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn err(&self, kind: FrameErrorKind, message: impl Into<String>) -> FrameError {
        FrameError::new(kind, self.pos, message)
    }

    fn u8(&mut self, what: &str) -> Result<u8, FrameError> {
        if self.pos >= self.end {
            return Err(self.err(FrameErrorKind::Truncated, format!("{what} missing")));
        }
        let b = self.bytes[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self, what: &str) -> Result<u64, FrameError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..MAX_VARINT_LEN {
            let b = self.u8(what)?;
            if i == MAX_VARINT_LEN - 1 && b > 1 {
                return Err(FrameError::new(
                    FrameErrorKind::BadVarint,
                    start,
                    format!("{what} does not fit in 64 bits"),
                ));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(FrameError::new(
                        FrameErrorKind::BadVarint,
                        start,
                        format!("{what} is not minimally encoded"),
                    ));
                }
                return Ok(value);
            }
        }
        // The last byte's check above returns before the loop ends.
        Err(FrameError::new(
            FrameErrorKind::BadVarint,
            start,
            format!("{what} is longer than {MAX_VARINT_LEN} bytes"),
        ))
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        // Callers checked `n <= remaining`.
        let end = (self.pos + n).min(self.end);
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        s
    }

    fn instance(&mut self, what: &str, required: bool) -> Result<Option<InstanceId>, FrameError> {
        let at = self.pos;
        let invalid = |why: String| {
            FrameError::new(
                FrameErrorKind::InvalidInstance,
                at,
                format!("{what}: {why}"),
            )
        };
        let len = self.varint(what)?;
        if len == 0 {
            return if required {
                Err(invalid("empty".into()))
            } else {
                Ok(None)
            };
        }
        if len > MAX_NAME_LEN as u64 {
            return Err(invalid(format!("{len} bytes, more than {MAX_NAME_LEN}")));
        }
        if len > self.remaining() as u64 {
            return Err(FrameError::new(
                FrameErrorKind::Truncated,
                at,
                format!("{what} of {len} bytes, only {} left", self.remaining()),
            ));
        }
        let bytes = self.take(len as usize);
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
        InstanceId::new(text)
            .map(Some)
            .map_err(|e| invalid(e.to_string()))
    }

    fn required_instance(&mut self, what: &str) -> Result<InstanceId, FrameError> {
        let at = self.pos;
        self.instance(what, true)?.ok_or_else(|| {
            FrameError::new(
                FrameErrorKind::InvalidInstance,
                at,
                format!("{what}: empty"),
            )
        })
    }

    fn seq(&mut self, what: &str) -> Result<u64, FrameError> {
        let at = self.pos;
        let seq = self.varint(what)?;
        if seq == 0 {
            return Err(FrameError::new(
                FrameErrorKind::Malformed,
                at,
                format!("{what} is 0; sequence numbers start at 1"),
            ));
        }
        Ok(seq)
    }

    fn finish(&self, ty: FrameType) -> Result<(), FrameError> {
        if self.pos != self.end {
            return Err(self.err(
                FrameErrorKind::Malformed,
                format!(
                    "{} bytes left after the last field of {ty}",
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }
}

/// Reads the frames of one message, one at a time.
///
/// Created by [`MessageReader::new`] (envelopes copied out of the input) or
/// [`MessageReader::shared`] (envelopes sliced out of the input, no copy). Yields each frame or
/// the first error, then nothing more.
#[derive(Debug)]
pub struct MessageReader<'a> {
    input: Input<'a>,
    version: u8,
    pos: usize,
    frames: usize,
    limits: FrameLimits,
    done: bool,
}

impl<'a> MessageReader<'a> {
    /// A reader of `message`, copying envelopes out of it.
    ///
    /// # Errors
    /// [`FrameErrorKind::TooLarge`] over [`FrameLimits::max_message`],
    /// [`FrameErrorKind::BadVersion`] for an empty message or another version,
    /// [`FrameErrorKind::Malformed`] for a message without frames.
    pub fn new(message: &'a [u8], limits: &FrameLimits) -> Result<Self, FrameError> {
        Self::with_input(Input::Slice(message), limits)
    }

    /// A reader of `message` whose envelopes share its bytes.
    ///
    /// # Errors
    /// As [`MessageReader::new`].
    pub fn shared(message: &'a Bytes, limits: &FrameLimits) -> Result<Self, FrameError> {
        Self::with_input(Input::Shared(message), limits)
    }

    fn with_input(input: Input<'a>, limits: &FrameLimits) -> Result<Self, FrameError> {
        let bytes = input.bytes();
        if bytes.len() > limits.max_message {
            return Err(FrameError::new(
                FrameErrorKind::TooLarge,
                0,
                format!(
                    "message of {} bytes, the limit is {}",
                    bytes.len(),
                    limits.max_message
                ),
            ));
        }
        let version = match bytes.first() {
            None => {
                return Err(FrameError::new(
                    FrameErrorKind::BadVersion,
                    0,
                    "empty message",
                ));
            }
            Some(&v) if (MIN_VERSION..=VERSION).contains(&v) => v,
            Some(&v) => {
                return Err(FrameError::new(
                    FrameErrorKind::BadVersion,
                    0,
                    format!("version {v}, this build reads {MIN_VERSION} to {VERSION}"),
                ));
            }
        };
        if bytes.len() == 1 {
            return Err(FrameError::new(
                FrameErrorKind::Malformed,
                1,
                "message has no frame",
            ));
        }
        Ok(Self {
            input,
            version,
            pos: 1,
            frames: 0,
            limits: *limits,
            done: false,
        })
    }

    /// The message's protocol version (its first byte).
    pub fn version(&self) -> u8 {
        self.version
    }

    fn next_frame(&mut self) -> Result<Frame, FrameError> {
        let bytes = self.input.bytes();
        let mut head = Cursor {
            bytes,
            pos: self.pos,
            end: bytes.len(),
        };
        let at = head.pos;
        if self.frames >= self.limits.max_frames {
            return Err(head.err(
                FrameErrorKind::TooLarge,
                format!("more than {} frames in one message", self.limits.max_frames),
            ));
        }
        let code = head.u8("frame type")?;
        let ty = FrameType::from_code(code)
            .filter(|ty| ty.since() <= self.version)
            .ok_or_else(|| {
                FrameError::new(
                    FrameErrorKind::UnknownType,
                    at,
                    format!(
                        "frame type {code:#04x} in a version {} message",
                        self.version
                    ),
                )
            })?;
        let len_at = head.pos;
        let len = head.varint("frame length")?;
        if len > self.limits.max_frame as u64 {
            return Err(FrameError::new(
                FrameErrorKind::TooLarge,
                len_at,
                format!(
                    "{ty} frame of {len} bytes, the limit is {}",
                    self.limits.max_frame
                ),
            ));
        }
        if len > head.remaining() as u64 {
            return Err(FrameError::new(
                FrameErrorKind::Truncated,
                len_at,
                format!("{ty} frame of {len} bytes, only {} left", head.remaining()),
            ));
        }
        let end = head.pos + len as usize;
        let mut body = Cursor {
            bytes,
            pos: head.pos,
            end,
        };
        let frame = self.body(ty, &mut body)?;
        self.pos = end;
        self.frames += 1;
        Ok(frame)
    }

    fn body(&self, ty: FrameType, c: &mut Cursor<'a>) -> Result<Frame, FrameError> {
        let frame = match ty {
            FrameType::Publish => {
                let seq = c.seq("PUBLISH seq")?;
                let target = c.instance("PUBLISH target", false)?;
                let envelope = self.input.envelope(c.pos, c.end);
                c.pos = c.end;
                Frame::Publish {
                    seq,
                    target,
                    envelope,
                }
            }
            FrameType::Ack => Frame::Ack {
                seq: c.varint("ACK seq")?,
            },
            FrameType::Reject => {
                let seq = c.seq("REJECT seq")?;
                let code = RejectCode::from_code(c.u8("REJECT code")?);
                let at = c.pos;
                let len = c.varint("REJECT reason length")?;
                if len > MAX_REASON_LEN as u64 {
                    return Err(FrameError::new(
                        FrameErrorKind::TooLarge,
                        at,
                        format!("REJECT reason of {len} bytes, the limit is {MAX_REASON_LEN}"),
                    ));
                }
                if len > c.remaining() as u64 {
                    return Err(FrameError::new(
                        FrameErrorKind::Truncated,
                        at,
                        format!("REJECT reason of {len} bytes, only {} left", c.remaining()),
                    ));
                }
                let reason = std::str::from_utf8(c.take(len as usize))
                    .map_err(|_| {
                        FrameError::new(
                            FrameErrorKind::InvalidText,
                            at,
                            "REJECT reason is not UTF-8",
                        )
                    })?
                    .to_owned();
                Frame::Reject { seq, code, reason }
            }
            FrameType::Resume => {
                let at = c.pos;
                let flags = c.u8("RESUME flags")?;
                if flags & !RESUME_REPLAY_UNLISTED != 0 {
                    return Err(FrameError::new(
                        FrameErrorKind::Malformed,
                        at,
                        format!("RESUME flags {flags:#04x} set reserved bits"),
                    ));
                }
                let positions = self.positions(c, "RESUME", false)?;
                Frame::Resume {
                    replay_unlisted: flags & RESUME_REPLAY_UNLISTED != 0,
                    positions,
                }
            }
            FrameType::Event => {
                let sender = c.required_instance("EVENT sender")?;
                let seq = c.seq("EVENT seq")?;
                let envelope = self.input.envelope(c.pos, c.end);
                c.pos = c.end;
                Frame::Event {
                    sender,
                    seq,
                    envelope,
                }
            }
            FrameType::Missed => Frame::Missed {
                sender: c.instance("MISSED sender", false)?,
                count: c.varint("MISSED count")?,
            },
            FrameType::Ready => {
                let at = c.pos;
                let flags = c.u8("READY flags")?;
                if flags & !READY_PARTIAL != 0 {
                    return Err(FrameError::new(
                        FrameErrorKind::Malformed,
                        at,
                        format!("READY flags {flags:#04x} set reserved bits"),
                    ));
                }
                let positions = self.positions(c, "READY", true)?;
                Frame::Ready {
                    partial: flags & READY_PARTIAL != 0,
                    positions,
                }
            }
        };
        c.finish(ty)?;
        Ok(frame)
    }
}

impl<'a> MessageReader<'a> {
    /// Reads the `count` and `(sender, seq)` entries of a RESUME or READY body: at most
    /// [`FrameLimits::max_resume_entries`], no sender twice; READY's sequence numbers are at
    /// least 1 (`seq_at_least_one`).
    fn positions(
        &self,
        c: &mut Cursor<'a>,
        what: &str,
        seq_at_least_one: bool,
    ) -> Result<Vec<(InstanceId, u64)>, FrameError> {
        let at = c.pos;
        let count = c.varint(&format!("{what} count"))?;
        if count > self.limits.max_resume_entries as u64 {
            return Err(FrameError::new(
                FrameErrorKind::TooLarge,
                at,
                format!(
                    "{what} of {count} senders, the limit is {}",
                    self.limits.max_resume_entries
                ),
            ));
        }
        // Each entry takes at least 3 bytes: never reserve for more than are present.
        let room = (count as usize).min(c.remaining() / 3);
        let mut positions = Vec::with_capacity(room);
        let mut seen = HashSet::with_capacity(room);
        for _ in 0..count {
            let at = c.pos;
            let sender = c.required_instance(&format!("{what} sender"))?;
            let seq = if seq_at_least_one {
                c.seq(&format!("{what} seq"))?
            } else {
                c.varint(&format!("{what} seq"))?
            };
            if !seen.insert(sender.clone()) {
                return Err(FrameError::new(
                    FrameErrorKind::Malformed,
                    at,
                    format!("{what} lists {sender} twice"),
                ));
            }
            positions.push((sender, seq));
        }
        Ok(positions)
    }
}

impl Iterator for MessageReader<'_> {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.input.bytes().len() {
            return None;
        }
        let result = self.next_frame();
        self.done = result.is_err();
        Some(result)
    }
}

/// Decodes every frame of `message`, copying envelopes out of it.
///
/// # Errors
/// The first [`FrameError`] met: see [`FrameErrorKind`] for the kinds.
pub fn decode_message(message: &[u8], limits: &FrameLimits) -> Result<Vec<Frame>, FrameError> {
    MessageReader::new(message, limits)?.collect()
}

/// Decodes every frame of `message`; envelopes are slices of `message` (no copy).
///
/// # Errors
/// As [`decode_message`].
pub fn decode_message_bytes(
    message: &Bytes,
    limits: &FrameLimits,
) -> Result<Vec<Frame>, FrameError> {
    MessageReader::shared(message, limits)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    fn decode(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        decode_message(bytes, &FrameLimits::default())
    }

    fn kind(bytes: &[u8]) -> FrameErrorKind {
        decode(bytes).unwrap_err().kind()
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Publish {
                seq: 1,
                target: None,
                envelope: Bytes::from_static(b"hi"),
            },
            Frame::Publish {
                seq: u64::MAX,
                target: Some(id("w-2")),
                envelope: Bytes::new(),
            },
            Frame::Ack { seq: 0 },
            Frame::Ack { seq: 300 },
            Frame::Reject {
                seq: 2,
                code: RejectCode::TooLarge,
                reason: "envelope of 2000000 bytes".into(),
            },
            Frame::Reject {
                seq: 3,
                code: RejectCode::Other(200),
                reason: String::new(),
            },
            Frame::Resume {
                replay_unlisted: true,
                positions: vec![(id("a"), 0), (id("b"), 12)],
            },
            Frame::Resume {
                replay_unlisted: false,
                positions: vec![],
            },
            Frame::Event {
                sender: id("w-1"),
                seq: 7,
                envelope: Bytes::from_static(&[1, 2, 3]),
            },
            Frame::Missed {
                sender: None,
                count: 5,
            },
            Frame::Missed {
                sender: Some(id("w-1")),
                count: 1,
            },
        ]
    }

    #[test]
    fn every_frame_round_trips_in_one_batch() {
        let frames = all_frames();
        let message = encode_message(&frames);
        assert_eq!(
            message.len(),
            1 + frames.iter().map(Frame::encoded_len).sum::<usize>()
        );
        assert_eq!(decode(&message).unwrap(), frames);
        let shared = Bytes::from(message);
        assert_eq!(
            decode_message_bytes(&shared, &FrameLimits::default()).unwrap(),
            frames
        );
        let mut builder = MessageBuilder::new();
        assert!(builder.is_empty());
        for f in &frames {
            builder.push(f);
        }
        assert_eq!(builder.frame_count(), frames.len());
        assert_eq!(builder.len(), shared.len());
        assert_eq!(builder.finish(), shared);
    }

    #[test]
    fn the_documented_example_bytes() {
        // docs/protocol.md, §8 "Multicast: examples": a PUBLISH of seq 1 to everyone, envelope
        // "hi", then a directed PUBLISH of seq 2 to "w2", envelope 0x00.
        let message = encode_message(&[
            Frame::Publish {
                seq: 1,
                target: None,
                envelope: Bytes::from_static(b"hi"),
            },
            Frame::Publish {
                seq: 2,
                target: Some(id("w2")),
                envelope: Bytes::from_static(&[0]),
            },
        ]);
        assert_eq!(
            message,
            [
                0x02, 0x01, 0x04, 0x01, 0x00, 0x68, 0x69, 0x01, 0x05, 0x02, 0x02, 0x77, 0x32, 0x00
            ]
        );
        let event = SharedFrame::event(&id("w1"), 300, b"hi");
        assert_eq!(
            &event.message()[..],
            [0x02, 0x11, 0x07, 0x02, 0x77, 0x31, 0xac, 0x02, 0x68, 0x69]
        );
        let mut out = Vec::new();
        start_message(&mut out);
        encode_resume(&mut out, true, &[(id("w1"), 41)]);
        assert_eq!(out, [0x02, 0x10, 0x06, 0x01, 0x01, 0x02, 0x77, 0x31, 0x29]);
        // The new subscriber's RESUME, and READY for a new path.
        let empty = encode_message(&[Frame::Resume {
            replay_unlisted: false,
            positions: vec![],
        }]);
        assert_eq!(empty, [0x02, 0x10, 0x02, 0x00, 0x00]);
        let ready = encode_message(&[Frame::Ready {
            partial: false,
            positions: vec![],
        }]);
        assert_eq!(ready, [0x02, 0x13, 0x02, 0x00, 0x00]);
        // READY: "w1" up to 300, "w2" up to 7.
        let ready = encode_message(&[Frame::Ready {
            partial: false,
            positions: vec![(id("w1"), 300), (id("w2"), 7)],
        }]);
        assert_eq!(
            ready,
            [
                0x02, 0x13, 0x0b, 0x00, 0x02, 0x02, 0x77, 0x31, 0xac, 0x02, 0x02, 0x77, 0x32, 0x07
            ]
        );
        let mut batch = MessageBuilder::new();
        batch.push_shared(&event);
        batch.push(&Frame::Missed {
            sender: None,
            count: 5,
        });
        assert_eq!(
            &batch.finish()[..],
            [
                0x02, 0x11, 0x07, 0x02, 0x77, 0x31, 0xac, 0x02, 0x68, 0x69, 0x12, 0x02, 0x00, 0x05
            ]
        );
        let mut out = Vec::new();
        start_message(&mut out);
        encode_ack(&mut out, 2);
        encode_reject(&mut out, 3, RejectCode::Busy, "full");
        assert_eq!(
            out,
            [
                0x02, 0x02, 0x01, 0x02, 0x03, 0x07, 0x03, 0x04, 0x04, b'f', b'u', b'l', b'l'
            ]
        );
    }

    #[test]
    fn shared_frames_are_encoded_once() {
        let frame = Frame::Event {
            sender: id("w-1"),
            seq: 9,
            envelope: Bytes::from_static(b"payload"),
        };
        let shared = SharedFrame::new(&frame);
        assert_eq!(shared, SharedFrame::event(&id("w-1"), 9, b"payload"));
        assert_eq!(shared.len(), frame.encoded_len());
        assert!(!shared.is_empty());
        let a = shared.message();
        let b = shared.message();
        assert_eq!(a.as_ptr(), b.as_ptr(), "one buffer for every subscriber");
        let mut batch = MessageBuilder::with_capacity(0);
        batch.push_shared(&shared);
        batch.push_shared(&shared);
        assert_eq!(decode(&batch.finish()).unwrap(), [frame.clone(), frame]);
        assert!(format!("{shared:?}").contains("EVENT"));
    }

    #[test]
    fn shared_decoding_does_not_copy_envelopes() {
        let message = Bytes::from(encode_message(&[Frame::Event {
            sender: id("s"),
            seq: 1,
            envelope: Bytes::from_static(b"abcdef"),
        }]));
        let frames = decode_message_bytes(&message, &FrameLimits::default()).unwrap();
        let Frame::Event { envelope, .. } = &frames[0] else {
            panic!("not an event")
        };
        let inside = message.as_ptr_range();
        assert!(inside.contains(&envelope.as_ptr()));
    }

    #[test]
    fn varints() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut c = Cursor {
                bytes: &out,
                pos: 0,
                end: out.len(),
            };
            assert_eq!(c.varint("v").unwrap(), v);
        }
        assert_eq!(varint_len(u64::MAX), MAX_VARINT_LEN);
        let bad = |bytes: &[u8]| {
            let mut c = Cursor {
                bytes,
                pos: 0,
                end: bytes.len(),
            };
            c.varint("v").unwrap_err().kind()
        };
        assert_eq!(bad(&[0x80, 0x00]), FrameErrorKind::BadVarint);
        assert_eq!(bad(&[0xff; 10]), FrameErrorKind::BadVarint);
        assert_eq!(
            bad(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            FrameErrorKind::BadVarint
        );
        assert_eq!(bad(&[0x80]), FrameErrorKind::Truncated);
        assert_eq!(bad(&[]), FrameErrorKind::Truncated);
    }

    #[test]
    fn version_and_envelope_of_the_message() {
        assert_eq!(kind(&[]), FrameErrorKind::BadVersion);
        assert_eq!(kind(&[3, 2, 1, 0]), FrameErrorKind::BadVersion);
        assert_eq!(kind(&[0, 2, 1, 0]), FrameErrorKind::BadVersion);
        // Both versions read; a version 1 message has no READY.
        let limits = FrameLimits::default();
        for version in [1, 2] {
            let message = [version, 2, 1, 0];
            let reader = MessageReader::new(&message, &limits).unwrap();
            assert_eq!(reader.version(), version);
        }
        assert_eq!(kind(&[1, 0x13, 2, 0, 0]), FrameErrorKind::UnknownType);
        assert_eq!(
            decode(&[2, 0x13, 2, 0, 0]).unwrap(),
            [Frame::Ready {
                partial: false,
                positions: vec![]
            }]
        );
        // READY's reserved flags, a sequence number 0, a sender twice.
        assert_eq!(kind(&[2, 0x13, 2, 2, 0]), FrameErrorKind::Malformed);
        assert_eq!(
            kind(&[2, 0x13, 5, 0, 1, 1, b'a', 0]),
            FrameErrorKind::Malformed
        );
        assert_eq!(
            kind(&[2, 0x13, 8, 1, 2, 1, b'a', 1, 1, b'a', 2]),
            FrameErrorKind::Malformed
        );
        let mut old = MessageBuilder::with_version(1, 8);
        old.push(&Frame::Ack { seq: 4 });
        assert_eq!(&old.finish()[..], [1, 2, 1, 4]);
        assert_eq!(kind(&[1]), FrameErrorKind::Malformed);
        let err = decode(&[7]).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::UnsupportedVersion);
        let limits = FrameLimits::default().with_max_message(3);
        let err = decode_message(&[1, 2, 1, 0], &limits).unwrap_err();
        assert_eq!(
            (err.kind(), err.close_code()),
            (FrameErrorKind::TooLarge, CloseCode::MessageTooBig)
        );
    }

    #[test]
    fn frame_level_errors() {
        assert_eq!(kind(&[1, 0x7f, 0]), FrameErrorKind::UnknownType);
        assert_eq!(decode(&[1, 0x7f, 0]).unwrap_err().offset(), 1);
        assert_eq!(kind(&[1, 2]), FrameErrorKind::Truncated);
        assert_eq!(kind(&[1, 2, 5, 1]), FrameErrorKind::Truncated);
        assert_eq!(kind(&[1, 2, 0x80, 0x00]), FrameErrorKind::BadVarint);
        let limits = FrameLimits::default().with_max_frame(4);
        let err = decode_message(&[1, 1, 5, 1, 0, 1, 2, 3], &limits).unwrap_err();
        assert_eq!(err.kind(), FrameErrorKind::TooLarge);
        // A huge declared length is refused before anything is reserved.
        let mut huge = vec![1, 1];
        put_varint(&mut huge, u64::MAX);
        assert_eq!(kind(&huge), FrameErrorKind::TooLarge);
        let limits = FrameLimits::default().with_max_frames(2);
        let three_acks = [1, 2, 1, 1, 2, 1, 2, 2, 1, 3];
        assert_eq!(
            decode_message(&three_acks, &limits).unwrap_err().kind(),
            FrameErrorKind::TooLarge
        );
        assert_eq!(decode(&three_acks).unwrap().len(), 3);
    }

    #[test]
    fn body_level_errors() {
        // Trailing bytes after an ACK's seq.
        assert_eq!(kind(&[1, 2, 2, 1, 0]), FrameErrorKind::Malformed);
        // PUBLISH and EVENT with seq 0; REJECT with seq 0.
        assert_eq!(kind(&[1, 1, 2, 0, 0]), FrameErrorKind::Malformed);
        assert_eq!(kind(&[1, 0x11, 3, 1, b'a', 0]), FrameErrorKind::Malformed);
        assert_eq!(kind(&[1, 3, 3, 0, 1, 0]), FrameErrorKind::Malformed);
        // A field running past its frame, though the message goes on.
        assert_eq!(kind(&[1, 2, 1, 0x80, 0]), FrameErrorKind::Truncated);
        // Instance ids: empty where required, too long, not UTF-8, not valid.
        assert_eq!(kind(&[1, 0x11, 2, 0, 1]), FrameErrorKind::InvalidInstance);
        let mut long = vec![1, 0x11, 0x84, 0x02, 0x81, 0x02];
        long.extend(std::iter::repeat_n(b'a', 257));
        long.push(1);
        assert_eq!(kind(&long), FrameErrorKind::InvalidInstance);
        assert_eq!(
            kind(&[1, 0x11, 3, 1, 0xff, 1]),
            FrameErrorKind::InvalidInstance
        );
        assert_eq!(
            kind(&[1, 0x11, 4, 2, b'a', b' ', 1]),
            FrameErrorKind::InvalidInstance
        );
        assert_eq!(kind(&[1, 0x12, 3, 5, b'a', 1]), FrameErrorKind::Truncated);
        // REJECT reason: not UTF-8, too long, truncated.
        assert_eq!(kind(&[1, 3, 4, 1, 1, 1, 0xff]), FrameErrorKind::InvalidText);
        // 0x81 0x08 = 1025, one byte over the limit.
        assert_eq!(kind(&[1, 3, 4, 1, 1, 0x81, 0x08]), FrameErrorKind::TooLarge);
        assert_eq!(kind(&[1, 3, 4, 1, 1, 5, b'a']), FrameErrorKind::Truncated);
        // RESUME: too many entries, the same sender twice.
        let limits = FrameLimits::default().with_max_resume_entries(1);
        let two = encode_message(&[Frame::Resume {
            replay_unlisted: false,
            positions: vec![(id("a"), 1), (id("b"), 2)],
        }]);
        assert_eq!(
            decode_message(&two, &limits).unwrap_err().kind(),
            FrameErrorKind::TooLarge
        );
        let twice = encode_message(&[Frame::Resume {
            replay_unlisted: false,
            positions: vec![(id("a"), 1), (id("a"), 2)],
        }]);
        assert_eq!(kind(&twice), FrameErrorKind::Malformed);
        assert_eq!(kind(&[1, 0x10, 2, 0x02, 0]), FrameErrorKind::Malformed);
        assert_eq!(kind(&[1, 0x10, 1, 0x01]), FrameErrorKind::Truncated);
        // A count far above what the bytes hold is truncated, not a large allocation.
        assert_eq!(
            kind(&[1, 0x10, 4, 0, 0xff, 0x3f, 1]),
            FrameErrorKind::Truncated
        );
        assert_eq!(
            FrameErrorKind::Truncated.close_code(),
            CloseCode::ProtocolError
        );
    }

    #[test]
    fn reasons_are_truncated_at_a_char_boundary() {
        let reason = "é".repeat(MAX_REASON_LEN);
        let frame = Frame::Reject {
            seq: 1,
            code: RejectCode::Malformed,
            reason: reason.clone(),
        };
        let message = encode_message(std::slice::from_ref(&frame));
        assert_eq!(message.len(), 1 + frame.encoded_len());
        let Frame::Reject { reason: back, .. } = &decode(&message).unwrap()[0] else {
            panic!("not a reject")
        };
        assert_eq!(back.len(), MAX_REASON_LEN);
        assert!(reason.starts_with(back.as_str()));
    }

    #[test]
    fn the_reader_stops_after_an_error() {
        let mut message = encode_message(&[Frame::Ack { seq: 1 }]);
        message.extend_from_slice(&[0x7f, 0, 2, 1, 2]);
        let mut reader = MessageReader::new(&message, &FrameLimits::default()).unwrap();
        assert_eq!(reader.next(), Some(Ok(Frame::Ack { seq: 1 })));
        assert_eq!(
            reader.next().unwrap().unwrap_err().kind(),
            FrameErrorKind::UnknownType
        );
        assert_eq!(reader.next(), None);
    }

    #[test]
    fn codes_and_directions() {
        for ty in [
            FrameType::Publish,
            FrameType::Ack,
            FrameType::Reject,
            FrameType::Resume,
            FrameType::Event,
            FrameType::Missed,
        ] {
            assert_eq!(FrameType::from_code(ty.code()), Some(ty));
        }
        assert_eq!(FrameType::Resume.direction(), Direction::SubscriberToRelay);
        assert_eq!(FrameType::Ack.to_string(), "ACK");
        for c in 0..=u8::MAX {
            assert_eq!(RejectCode::from_code(c).code(), c);
        }
        assert!(RejectCode::Busy.is_transient());
        assert!(RejectCode::TargetNotConnected.is_transient());
        assert!(!RejectCode::TooLarge.is_transient());
        assert_eq!(
            RejectCode::TargetForbidden.error_kind(),
            TransportErrorKind::Forbidden
        );
        for c in [
            1000, 1001, 1002, 1003, 1008, 1009, 1011, 1013, 4000, 4001, 4002, 4999,
        ] {
            assert_eq!(CloseCode::from_code(c).code(), c);
        }
        assert!(CloseCode::SlowConsumer.is_transient());
        assert!(CloseCode::GoingAway.is_transient());
        assert!(!CloseCode::Replaced.is_transient());
        assert!(!CloseCode::ProtocolError.is_transient());
        let limits = FrameLimits::for_envelope(100);
        assert_eq!(limits.max_envelope(), 100);
        assert!(limits.max_message >= limits.max_frame + 2 + MAX_VARINT_LEN);
    }
}
