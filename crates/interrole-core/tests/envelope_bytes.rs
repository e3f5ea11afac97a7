//! The byte examples of `docs/protocol.md` section 10, "The envelope": every value, shape and
//! envelope written there is encoded here and compared with the bytes the document gives, and
//! the document's bytes are decoded back into the value. A change to the codec or the envelope
//! that moves a byte fails here, and the document must change with it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use interrole_core::codec::{decode_value, encode_value};
use interrole_core::{
    CodecErrorKind, EventId, Headers, InstanceId, InterRoleEvent, StreamPos, impl_event,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bytes written as in the document: hexadecimal pairs separated by spaces.
fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|pair| u8::from_str_radix(pair, 16).expect("a hexadecimal byte"))
        .collect()
}

/// `value` encodes to `bytes`, and `bytes` decode to `value`.
#[track_caller]
fn shape<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T, bytes: &str) {
    let expected = hex(bytes);
    assert_eq!(encode_value(&value).unwrap(), expected, "{value:?}");
    assert_eq!(decode_value::<T>(&expected).unwrap(), value, "{bytes}");
}

/// `bytes` do not decode as a `T`.
#[track_caller]
fn refused<T: DeserializeOwned + Debug>(bytes: &str) {
    let err = decode_value::<T>(&hex(bytes)).unwrap_err();
    assert_eq!(err.kind(), CodecErrorKind::Decode, "{bytes}");
}

#[test]
fn unsigned_integers() {
    shape(0u64, "00");
    shape(250u64, "fa");
    shape(251u64, "fb fb 00");
    shape(300u64, "fb 2c 01");
    shape(65_535u64, "fb ff ff");
    shape(65_536u64, "fc 00 00 01 00");
    shape(4_294_967_295u64, "fc ff ff ff ff");
    shape(4_294_967_296u64, "fd 00 00 00 00 01 00 00 00");
    shape(1_700_000_000_000_000u64, "fd 00 40 1e 18 24 0a 06 00");
    shape(u64::MAX, "fd ff ff ff ff ff ff ff ff");
    shape(
        u128::MAX,
        "fe ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff",
    );
    // u16, u32 and usize use the same forms, up to their size.
    shape(300u16, "fb 2c 01");
    shape(65_536u32, "fc 00 00 01 00");
    shape(300usize, "fb 2c 01");
    // u8 is one byte as it is, never a varint.
    shape(5u8, "05");
    shape(255u8, "ff");
}

#[test]
fn signed_integers_are_zigzagged() {
    shape(0i64, "00");
    shape(-1i64, "01");
    shape(1i64, "02");
    shape(-2i64, "03");
    shape(2i64, "04");
    shape(125i64, "fa");
    shape(-126i64, "fb fb 00");
    shape(-300i64, "fb 57 02");
    shape(i64::MAX, "fd fe ff ff ff ff ff ff ff");
    shape(i64::MIN, "fd ff ff ff ff ff ff ff ff");
    shape(-300i32, "fb 57 02");
    shape(-300i16, "fb 57 02");
    // i8 is one byte, two's complement.
    shape(-1i8, "ff");
    shape(5i8, "05");
}

#[test]
fn integer_forms_readers_accept_and_refuse() {
    // A longer form than needed is accepted...
    assert_eq!(decode_value::<u64>(&hex("fb 05 00")).unwrap(), 5);
    // ...but not a form wider than the type, nor the reserved first byte ff.
    refused::<u16>("fc 05 00 00 00");
    refused::<u32>("fd 01 00 00 00 00 00 00 00");
    refused::<u64>("ff");
}

#[test]
fn other_scalars() {
    shape(false, "00");
    shape(true, "01");
    refused::<bool>("02");
    shape(1.5f32, "00 00 c0 3f");
    shape(-2.5f64, "00 00 00 00 00 00 04 c0");
    shape('A', "41");
    shape('é', "c3 a9");
    shape('✓', "e2 9c 93");
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Marker;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Meters(u32);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Phase {
    Idle,
    Running(u32),
    Failed { code: u16, reason: String },
}

#[test]
fn text_bytes_options_and_sequences() {
    shape(String::new(), "00");
    shape("hi".to_owned(), "02 68 69");
    shape("é".to_owned(), "02 c3 a9");
    shape(vec![1u8, 2, 3], "03 01 02 03");
    shape(None::<u32>, "00");
    shape(Some(5u32), "01 05");
    shape(Some(Some(3u8)), "01 01 03");
    refused::<Option<u8>>("02 01");
    // A length past the end of the bytes.
    refused::<String>("05 68 69");
    shape(vec![1u32, 251], "02 01 fb fb 00");
    shape(Vec::<String>::new(), "00");
    // A fixed-size array is a tuple: no length.
    shape([1u16, 2, 3], "01 02 03");
    shape(
        BTreeMap::from([("a".to_owned(), 1u32), ("b".to_owned(), 300)]),
        "02 01 61 01 01 62 fb 2c 01",
    );
}

#[test]
fn structs_tuples_and_enums() {
    shape((), "");
    shape(Marker, "");
    shape(Meters(7), "07");
    shape(Point { x: -1, y: 300 }, "01 fb 58 02");
    shape((1u8, 300u64, "x".to_owned()), "01 fb 2c 01 01 78");
    shape(Phase::Idle, "00");
    shape(Phase::Running(300), "01 fb 2c 01");
    shape(
        Phase::Failed {
            code: 503,
            reason: "busy".into(),
        },
        "02 fb f7 01 04 62 75 73 79",
    );
    refused::<Phase>("03");
    shape(Duration::from_millis(1500), "01 fc 00 65 cd 1d");
    // Not human readable: the compact form.
    shape(Ipv4Addr::new(10, 0, 0, 1), "0a 00 00 01");
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    Number(u32),
    Text(String),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Internal {
    Started { at: u32 },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", content = "c")]
enum Adjacent {
    Started(u32),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Flattened {
    id: u32,
    #[serde(flatten)]
    point: Point,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Skipping {
    a: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    b: Option<u32>,
    c: u32,
}

/// What section 10 tells users to avoid: each of these fails, on one side or the other.
#[test]
fn unsupported_serde_shapes_fail() {
    // Encoded, but not decodable: the decoder would have to guess the shape.
    let bytes = encode_value(&Untagged::Number(5)).unwrap();
    assert!(decode_value::<Untagged>(&bytes).is_err());
    let bytes = encode_value(&Internal::Started { at: 5 }).unwrap();
    assert!(decode_value::<Internal>(&bytes).is_err());
    let bytes = encode_value(&Adjacent::Started(5)).unwrap();
    assert!(decode_value::<Adjacent>(&bytes).is_err());
    // Not even encoded: a map of unknown length.
    let err = encode_value(&Flattened {
        id: 1,
        point: Point { x: 1, y: 2 },
    })
    .unwrap_err();
    assert_eq!(err.kind(), CodecErrorKind::Encode);
    // The skipped field is missing and the next one is read in its place.
    let skipping = Skipping {
        a: 1,
        b: None,
        c: 2,
    };
    let bytes = encode_value(&skipping).unwrap();
    assert_eq!(bytes, hex("01 02"));
    assert!(decode_value::<Skipping>(&bytes).is_err());
}

// ---------------------------------------------------------------------------------------------
// Whole envelopes

/// One envelope as the document lays it out: named fields, each with its bytes.
type Layout = &'static [(&'static str, &'static str)];

fn concat(layout: Layout) -> Vec<u8> {
    layout.iter().flat_map(|(_, bytes)| hex(bytes)).collect()
}

fn field(layout: Layout, name: &str) -> Vec<u8> {
    let (_, bytes) = layout.iter().find(|(n, _)| *n == name).unwrap();
    hex(bytes)
}

/// The document's timestamp: 2023-11-14 22:13:20 UTC.
const TIMESTAMP_MICROS: u64 = 1_700_000_000_000_000;

/// Checks `layout` both ways: `event` encodes to it (but for the timestamp, which a new envelope
/// takes from the clock), and it decodes to an envelope with `event`'s header and payload.
fn check_envelope<T: interrole_core::Event + PartialEq + Debug>(
    layout: Layout,
    event: &InterRoleEvent,
    value: &T,
) {
    let doc = concat(layout);
    assert_eq!(
        field(layout, "timestamp_micros"),
        encode_value(&TIMESTAMP_MICROS).unwrap()
    );

    // Encoding: the same bytes, with the clock's timestamp in its place.
    let micros = event.timestamp().duration_since(UNIX_EPOCH).unwrap();
    let micros = u64::try_from(micros.as_micros()).unwrap();
    let expected: Vec<u8> = layout
        .iter()
        .flat_map(|(name, bytes)| match *name {
            "timestamp_micros" => encode_value(&micros).unwrap(),
            _ => hex(bytes),
        })
        .collect();
    assert_eq!(event.to_wire().unwrap().to_vec(), expected);

    // Decoding the document's bytes.
    let back = InterRoleEvent::from_wire(Bytes::from(doc.clone())).unwrap();
    assert_eq!(back.id(), event.id());
    assert_eq!(back.type_tag(), event.type_tag());
    assert_eq!(
        back.timestamp(),
        UNIX_EPOCH + Duration::from_micros(TIMESTAMP_MICROS)
    );
    assert_eq!(back.stream(), event.stream());
    assert_eq!(back.reply_to(), event.reply_to());
    assert_eq!(back.headers(), event.headers());
    assert_eq!(
        back.raw_payload().unwrap().to_vec(),
        field(layout, "payload")
    );
    assert_eq!(back.payload::<T>(), Some(value));
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Recycle {
    role: String,
    grace_secs: u32,
}
impl_event!(Recycle = "demo.recycle");

/// Section 10, example 1.
const RECYCLE: Layout = &[
    ("version", "01"),
    ("sender", "02 77 31"),
    ("seq", "01"),
    ("type_tag", "0c 64 65 6d 6f 2e 72 65 63 79 63 6c 65"),
    ("timestamp_micros", "fd 00 40 1e 18 24 0a 06 00"),
    ("epoch", "00"),
    ("directed", "00"),
    ("n", "00"),
    ("reply_to", "00"),
    ("payload", "03 77 65 62 1e"),
];

#[test]
fn example_1_an_event_outside_any_stream() {
    let value = Recycle {
        role: "web".into(),
        grace_secs: 30,
    };
    let id = EventId {
        sender: InstanceId::new("w1").unwrap(),
        seq: 1,
    };
    let event = InterRoleEvent::new(id, value.clone());
    check_envelope(RECYCLE, &event, &value);
    assert_eq!(concat(RECYCLE).len(), 36);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct JobReport {
    job: u64,
    drift: i64,
    worker: String,
    note: Option<String>,
    samples: Vec<u32>,
    healthy: bool,
    phase: Phase,
    ratio: f64,
}
impl_event!(JobReport = "demo.job-report");

/// Section 10, example 2.
const JOB_REPORT: Layout = &[
    ("version", "01"),
    ("sender", "02 77 32"),
    ("seq", "fd 06 40 1e 18 24 0a 06 00"),
    (
        "type_tag",
        "0f 64 65 6d 6f 2e 6a 6f 62 2d 72 65 70 6f 72 74",
    ),
    ("timestamp_micros", "fd 00 40 1e 18 24 0a 06 00"),
    ("epoch", "fd 00 40 1e 18 24 0a 06 00"),
    ("directed", "01"),
    ("n", "02"),
    ("reply_to", "2a"),
    (
        "payload",
        "fd 00 00 00 00 00 01 00 00 \
         fb 57 02 \
         02 77 32 \
         01 02 6f 6b \
         04 00 fa fb fb 00 fc 00 00 01 00 \
         01 \
         02 fb f7 01 04 62 75 73 79 \
         00 00 00 00 00 00 04 c0",
    ),
];

#[test]
fn example_2_a_reply_in_a_directed_stream() {
    let value = JobReport {
        job: 1 << 40,
        drift: -300,
        worker: "w2".into(),
        note: Some("ok".into()),
        samples: vec![0, 250, 251, 65_536],
        healthy: true,
        phase: Phase::Failed {
            code: 503,
            reason: "busy".into(),
        },
        ratio: -2.5,
    };
    let id = EventId {
        sender: InstanceId::new("w2").unwrap(),
        seq: TIMESTAMP_MICROS + 6,
    };
    let stream = StreamPos {
        epoch: TIMESTAMP_MICROS,
        directed: true,
        n: 2,
    };
    let event = InterRoleEvent::in_stream(id, value.clone(), stream, Some(42));
    check_envelope(JOB_REPORT, &event, &value);
    assert_eq!(field(JOB_REPORT, "payload").len(), 48);
}

/// Section 10, example 3: example 1 with two headers, in version 2 (contract version 1, bincode).
const RECYCLE_WITH_HEADERS: Layout = &[
    ("version", "02"),
    ("sender", "02 77 31"),
    ("seq", "01"),
    ("type_tag", "0c 64 65 6d 6f 2e 72 65 63 79 63 6c 65"),
    ("timestamp_micros", "fd 00 40 1e 18 24 0a 06 00"),
    ("epoch", "00"),
    ("directed", "00"),
    ("n", "00"),
    ("reply_to", "00"),
    ("contract_version", "01"),
    ("codec", "00"),
    (
        "headers",
        "02 06 74 65 6e 61 6e 74 04 61 63 6d 65 07 61 74 74 65 6d 70 74 01 32",
    ),
    ("payload", "03 77 65 62 1e"),
];

#[test]
fn example_3_headers_in_version_2() {
    let value = Recycle {
        role: "web".into(),
        grace_secs: 30,
    };
    let id = EventId {
        sender: InstanceId::new("w1").unwrap(),
        seq: 1,
    };
    let headers = Headers::new()
        .with("tenant", "acme")
        .unwrap()
        .with("attempt", "2")
        .unwrap();
    let event =
        InterRoleEvent::with_headers(id, value.clone(), StreamPos::default(), None, headers);
    check_envelope(RECYCLE_WITH_HEADERS, &event, &value);
    assert_eq!(concat(RECYCLE_WITH_HEADERS).len(), 61);
    // The headers are example 1's envelope with the version byte changed and the map inserted.
    let mut v1 = concat(RECYCLE);
    v1[0] = 2;
    let payload = v1.len() - 5;
    let added: Vec<u8> = ["contract_version", "codec", "headers"]
        .iter()
        .flat_map(|name| field(RECYCLE_WITH_HEADERS, name))
        .collect();
    v1.splice(payload..payload, added);
    assert_eq!(v1, concat(RECYCLE_WITH_HEADERS));
}

#[test]
fn what_readers_refuse() {
    let doc = concat(RECYCLE);
    let kind = |bytes: Vec<u8>| {
        InterRoleEvent::from_wire(Bytes::from(bytes))
            .unwrap_err()
            .kind()
    };
    // Another version.
    for version in [0, 3, 0xff] {
        let mut other = doc.clone();
        other[0] = version;
        assert_eq!(kind(other), CodecErrorKind::UnsupportedVersion);
    }
    // Version 2 whose header map is cut short, has an invalid key, or repeats one; whose
    // contract version is 0; whose codec id is unknown.
    let with = concat(RECYCLE_WITH_HEADERS);
    let at = with.len() - 5 - 23;
    let mut version_0 = with.clone();
    version_0[at - 2] = 0;
    assert_eq!(kind(version_0), CodecErrorKind::InvalidHeader);
    let mut codec_9 = with.clone();
    codec_9[at - 1] = 9;
    assert_eq!(kind(codec_9), CodecErrorKind::UnsupportedCodec);
    assert_eq!(kind(with[..at + 5].to_vec()), CodecErrorKind::Decode);
    let mut bad_key = with.clone();
    bad_key[at + 2] = b' ';
    assert_eq!(kind(bad_key), CodecErrorKind::InvalidHeader);
    let mut repeated = with.clone();
    repeated.splice(at + 14..at + 21, b"tenant ".iter().copied());
    repeated[at + 13] = 6;
    repeated.remove(at + 20);
    assert_eq!(kind(repeated), CodecErrorKind::InvalidHeader);
    // A header cut short.
    assert_eq!(kind(doc[..10].to_vec()), CodecErrorKind::Decode);
    // Sequence number 0.
    let mut zero = doc.clone();
    zero[4] = 0;
    assert_eq!(kind(zero), CodecErrorKind::InvalidHeader);
    // A sender that is not an instance id ("w!"), also right after the valid one was read (the
    // names of the last envelope read are reused, never unchecked ones).
    assert!(InterRoleEvent::from_wire(Bytes::from(doc.clone())).is_ok());
    let mut sender = doc.clone();
    sender[3] = b'!';
    assert_eq!(kind(sender), CodecErrorKind::InvalidHeader);
    let again = InterRoleEvent::from_wire(Bytes::from(doc.clone())).unwrap();
    assert_eq!(again.sender().as_str(), "w1");
    // A payload with a byte left over decodes as a header but not as the type.
    let mut longer = doc;
    longer.push(0);
    let event = InterRoleEvent::from_wire(Bytes::from(longer)).unwrap();
    assert!(event.try_payload::<Recycle>().is_err());
}
