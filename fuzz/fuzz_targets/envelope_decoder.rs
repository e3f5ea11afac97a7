//! Envelopes (`InterRoleEvent::from_wire`, format versions 1 and 2): any bytes decode or fail
//! with an error. A decoded envelope's wire form is its input, its payload the input's tail, and
//! its header (with version 2's contract version, codec and headers), encoded again from what the
//! accessors say, decodes to the same envelope, in at most as many bytes as the
//! input (the decoder also reads longer, non-minimal varints; the encoder writes the shortest). A
//! payload tagged as the probe type decodes or fails, and what decodes encodes and decodes back.
#![no_main]

use std::time::UNIX_EPOCH;

use interrole_core::codec::{self, ENVELOPE_VERSION};
use interrole_core::{Bytes, InterRoleEvent, PayloadError};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Probe {
    name: String,
    values: Vec<u64>,
    flag: bool,
    nested: Option<(i32, String)>,
}
interrole_core::impl_event!(Probe = "fuzz.probe");

/// The fields of an envelope's header, in wire order.
type Fields = (String, u64, String, u64, u64, bool, u64, u64);

fn fields(event: &InterRoleEvent) -> Fields {
    let micros = event
        .timestamp()
        .duration_since(UNIX_EPOCH)
        .expect("a timestamp is after the epoch")
        .as_micros();
    let stream = event.stream();
    (
        event.sender().as_str().to_owned(),
        event.seq(),
        event.type_tag().as_str().to_owned(),
        u64::try_from(micros).expect("a timestamp holds in u64 micros"),
        stream.epoch,
        stream.directed,
        stream.n,
        event.reply_to().unwrap_or(0),
    )
}

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let Ok(event) = InterRoleEvent::from_wire(input.clone()) else {
        return;
    };
    assert!(!event.is_local());
    assert_eq!(
        event.to_wire().expect("a decoded envelope has a wire form"),
        input
    );
    let payload = event
        .raw_payload()
        .expect("a decoded envelope has a raw payload");
    assert!(data.ends_with(payload));
    let _ = format!("{event:?}");

    // The header again, from the accessors: a canonical encoding of the same envelope.
    let header = fields(&event);
    let mut canonical = vec![data[0]];
    canonical.extend(codec::encode_value(&header).expect("a header encodes"));
    if data[0] == ENVELOPE_VERSION {
        let more = (event.version(), event.codec().wire_id());
        canonical.extend(codec::encode_value(&more).expect("encodes"));
        canonical.extend(codec::encode_value(event.headers()).expect("headers encode"));
    } else {
        assert!(event.headers().is_empty() && event.version() == 1);
    }
    canonical.extend_from_slice(payload);
    assert!(
        canonical.len() <= data.len(),
        "the encoder's form is the shortest"
    );
    let again = InterRoleEvent::from_wire(Bytes::from(canonical.clone()))
        .expect("an encoded header decodes");
    assert_eq!(fields(&again), header);
    assert_eq!(
        (again.version(), again.codec(), again.headers()),
        (event.version(), event.codec(), event.headers())
    );
    assert_eq!(again.raw_payload(), Some(payload));

    match event.try_payload::<Probe>() {
        Ok(probe) => {
            let bytes = codec::encode_value(probe).expect("a probe encodes");
            assert_eq!(
                &codec::decode_value::<Probe>(&bytes).expect("decodes"),
                probe
            );
        }
        Err(PayloadError::WrongType { .. }) => assert_ne!(event.type_tag().as_str(), "fuzz.probe"),
        Err(_) => assert_eq!(event.type_tag().as_str(), "fuzz.probe"),
    }
});
