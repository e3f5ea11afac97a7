//! Property tests of the multicast frames: every frame and batch round-trips through every
//! encoder and decoder; no input makes a decoder panic; every truncation of a valid message is
//! refused or falls on a frame boundary; limits hold whatever the input.

use bytes::Bytes;
use interrole_core::InstanceId;
use interrole_relay::frame::{
    Frame, FrameLimits, MessageBuilder, MessageReader, RejectCode, SharedFrame, decode_message,
    decode_message_bytes, encode_message,
};
use proptest::prelude::*;

fn instance() -> impl Strategy<Value = InstanceId> {
    prop_oneof![
        4 => "[A-Za-z0-9._:-]{1,16}",
        1 => "[a-z]{256}",
    ]
    .prop_map(|s| InstanceId::new(s).unwrap())
}

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1), Just(u64::MAX), 1..u64::MAX]
}

fn envelope() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (seq(), prop::option::of(instance()), envelope()).prop_map(|(seq, target, envelope)| {
            Frame::Publish {
                seq,
                target,
                envelope,
            }
        }),
        any::<u64>().prop_map(|seq| Frame::Ack { seq }),
        (seq(), any::<u8>(), "\\PC{0,40}").prop_map(|(seq, code, reason)| Frame::Reject {
            seq,
            code: RejectCode::from_code(code),
            reason,
        }),
        (
            any::<bool>(),
            prop::collection::btree_map("[A-Za-z0-9._:-]{1,12}", any::<u64>(), 0..8)
        )
            .prop_map(|(replay_unlisted, positions)| Frame::Resume {
                replay_unlisted,
                positions: positions
                    .into_iter()
                    .map(|(s, q)| (InstanceId::new(s).unwrap(), q))
                    .collect(),
            }),
        (instance(), seq(), envelope()).prop_map(|(sender, seq, envelope)| Frame::Event {
            sender,
            seq,
            envelope
        }),
        (prop::option::of(instance()), any::<u64>())
            .prop_map(|(sender, count)| Frame::Missed { sender, count }),
        (
            any::<bool>(),
            prop::collection::btree_map("[A-Za-z0-9._:-]{1,12}", seq(), 0..8)
        )
            .prop_map(|(partial, positions)| Frame::Ready {
                partial,
                positions: positions
                    .into_iter()
                    .map(|(s, q)| (InstanceId::new(s).unwrap(), q))
                    .collect(),
            }),
    ]
}

/// The length of a frame's body: `encoded_len` is a type byte, the body's length as a varint,
/// and the body.
fn body_len(f: &Frame) -> usize {
    let n = f.encoded_len() - 1;
    (1..=n.min(10))
        .map(|k| n - k)
        .find(|&body| interrole_relay::frame::varint_len(body as u64) == n - body)
        .unwrap()
}

fn limits() -> FrameLimits {
    FrameLimits::default()
}

proptest! {
    #[test]
    fn batches_round_trip(frames in prop::collection::vec(frame(), 1..16)) {
        let message = encode_message(&frames);
        prop_assert_eq!(
            message.len(),
            1 + frames.iter().map(Frame::encoded_len).sum::<usize>()
        );
        prop_assert_eq!(&decode_message(&message, &limits()).unwrap(), &frames);
        let shared = Bytes::from(message.clone());
        prop_assert_eq!(&decode_message_bytes(&shared, &limits()).unwrap(), &frames);

        let mut builder = MessageBuilder::new();
        let mut from_shared = MessageBuilder::with_capacity(1);
        for f in &frames {
            builder.push(f);
            let once = SharedFrame::new(f);
            prop_assert_eq!(&decode_message(&once.message(), &limits()).unwrap(), std::slice::from_ref(f));
            prop_assert_eq!(once.len(), f.encoded_len());
            from_shared.push_shared(&once);
        }
        prop_assert_eq!(&builder.finish()[..], &message[..]);
        prop_assert_eq!(&from_shared.finish()[..], &message[..]);
    }

    #[test]
    fn events_encoded_once_equal_events_encoded_as_frames(
        sender in instance(), seq in seq(), envelope in envelope()
    ) {
        let shared = SharedFrame::event(&sender, seq, &envelope);
        let frame = Frame::Event { sender, seq, envelope };
        prop_assert_eq!(shared, SharedFrame::new(&frame));
    }

    #[test]
    fn truncations_fail_or_fall_on_a_frame_boundary(
        frames in prop::collection::vec(frame(), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let message = encode_message(&frames);
        let cut = cut.index(message.len());
        let mut boundaries = vec![1];
        for f in &frames {
            boundaries.push(boundaries.last().unwrap() + f.encoded_len());
        }
        match decode_message(&message[..cut], &limits()) {
            Ok(decoded) => {
                let k = boundaries.iter().position(|&b| b == cut);
                prop_assert!(k.is_some(), "decoded a cut at {} that is no boundary", cut);
                prop_assert_eq!(&decoded[..], &frames[..k.unwrap()]);
            }
            Err(e) => prop_assert!(!boundaries[1..].contains(&cut) || cut <= 1, "{}", e),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_message(&bytes, &limits());
        let mut versioned = vec![1 + u8::from(bytes.len() % 2 == 0)];
        versioned.extend_from_slice(&bytes);
        let a = decode_message(&versioned, &limits());
        let b = decode_message_bytes(&Bytes::from(versioned.clone()), &limits());
        prop_assert_eq!(a.clone(), b);
        if let Ok(frames) = a {
            // What decodes re-encodes to the same bytes: the encoding is canonical.
            prop_assert_eq!(encode_message(&frames), versioned);
        }
    }

    #[test]
    fn corrupted_messages_never_panic(
        frames in prop::collection::vec(frame(), 1..6),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut message = encode_message(&frames);
        for (at, byte) in edits {
            let i = at.index(message.len());
            message[i] = byte;
        }
        if let Ok(decoded) = decode_message(&message, &limits()) {
            prop_assert_eq!(encode_message(&decoded), message);
        }
    }

    #[test]
    fn tiny_limits_hold(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        max_message in 0usize..300,
        max_frame in 0usize..64,
        max_frames in 0usize..8,
        max_resume in 0usize..4,
    ) {
        let limits = FrameLimits::default()
            .with_max_message(max_message)
            .with_max_frame(max_frame)
            .with_max_frames(max_frames)
            .with_max_resume_entries(max_resume);
        let mut versioned = vec![1 + u8::from(bytes.len() % 2 == 0)];
        versioned.extend_from_slice(&bytes);
        if let Ok(frames) = decode_message(&versioned, &limits) {
            prop_assert!(versioned.len() <= max_message);
            prop_assert!(frames.len() <= max_frames);
            for f in &frames {
                prop_assert!(body_len(f) <= max_frame);
                if let Frame::Resume { positions, .. } | Frame::Ready { positions, .. } = f {
                    prop_assert!(positions.len() <= max_resume);
                }
            }
        }
        // The reader yields at most one error, then stops.
        if let Ok(reader) = MessageReader::new(&versioned, &limits) {
            let results: Vec<_> = reader.collect();
            let errors = results.iter().filter(|r| r.is_err()).count();
            prop_assert!(errors <= 1);
            if errors == 1 {
                prop_assert!(results.last().unwrap().is_err());
            }
        }
    }
}
