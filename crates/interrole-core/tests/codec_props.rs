//! Property tests of the envelope codec: every envelope round-trips; no input makes the decoder
//! panic; every truncation of a valid envelope is refused with an error, not misread.

use bytes::Bytes;
use interrole_core::{
    CodecErrorKind, EventId, Headers, InstanceId, InterRoleEvent, StreamPos, impl_event,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payload {
    text: String,
    numbers: Vec<i64>,
    flag: Option<bool>,
    blob: Vec<u8>,
}
impl_event!(Payload = "props.payload");

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,40}"
}

fn payload() -> impl Strategy<Value = Payload> {
    (
        ".{0,40}",
        prop::collection::vec(any::<i64>(), 0..20),
        any::<Option<bool>>(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(text, numbers, flag, blob)| Payload {
            text,
            numbers,
            flag,
            blob,
        })
}

/// Valid headers: up to 8 keys with values of any printable text.
fn headers() -> impl Strategy<Value = Headers> {
    prop::collection::vec(("[A-Za-z0-9._-]{1,20}", "[^\\p{Cc}]{0,30}"), 0..8).prop_map(|pairs| {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.insert(&k, &v).unwrap();
        }
        h
    })
}

proptest! {
    #[test]
    fn envelopes_round_trip(
        sender in name(), seq in 1..u64::MAX, p in payload(), h in headers(),
    ) {
        let id = EventId { sender: InstanceId::new(&sender).unwrap(), seq };
        let event = InterRoleEvent::with_headers(
            id.clone(), p.clone(), StreamPos::default(), None, h.clone(),
        );
        let wire = event.to_wire().unwrap();
        let back = InterRoleEvent::from_wire(wire.clone()).unwrap();
        prop_assert_eq!(back.id(), &id);
        prop_assert_eq!(back.type_tag().as_str(), "props.payload");
        prop_assert_eq!(back.timestamp(), event.timestamp());
        prop_assert_eq!(back.payload::<Payload>(), Some(&p));
        prop_assert_eq!(back.headers(), &h);
        // Re-encoding a received envelope gives the same bytes.
        prop_assert_eq!(back.to_wire().unwrap(), wire);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(e) = InterRoleEvent::from_wire(Bytes::from(bytes)) {
            // A header that parses may still carry a payload that does not decode: an error, not
            // a panic.
            let _ = e.try_payload::<Payload>();
        }
    }

    #[test]
    fn every_truncation_is_refused(sender in name(), p in payload(), h in headers()) {
        let id = EventId { sender: InstanceId::new(&sender).unwrap(), seq: 1 };
        let wire = InterRoleEvent::with_headers(id, p, StreamPos::default(), None, h)
            .to_wire()
            .unwrap();
        // Every cut, from the empty envelope to the one missing only its last byte.
        for cut in 0..wire.len() {
            let short = wire.slice(..cut);
            match InterRoleEvent::from_wire(short) {
                Err(e) => prop_assert!(
                    matches!(e.kind(), CodecErrorKind::Decode | CodecErrorKind::InvalidHeader),
                    "cut at {cut} of {}: {e}", wire.len()
                ),
                // The header survived the cut: the payload must then fail to decode.
                Ok(e) => prop_assert!(
                    e.try_payload::<Payload>().is_err(),
                    "cut at {cut} of {} decoded", wire.len()
                ),
            }
        }
    }
}
