//! Versions of an event's contract and the payload codecs, at the envelope: what a reader of one
//! version makes of what a writer of another wrote, with each codec.

use bytes::Bytes;
use interrole_core::{
    Codec, CodecErrorKind, EventId, Headers, InstanceId, InterRoleEvent, PayloadError, RawEvent,
    StreamPos, TypeTag, impl_event,
};
use serde::{Deserialize, Serialize};

fn id() -> EventId {
    EventId {
        sender: InstanceId::new("w1").unwrap(),
        seq: 1,
    }
}

/// `value` as it arrives in another process.
fn across<T: interrole_core::Event>(value: T) -> InterRoleEvent {
    InterRoleEvent::from_wire(InterRoleEvent::new(id(), value).to_wire().unwrap()).unwrap()
}

// A bincode contract in two versions: a field renamed and retyped, so an upgrade is declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RecycleV1 {
    role: String,
    grace_secs: u32,
}
impl_event!(RecycleV1 = "test.recycle");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RecycleV2 {
    role: String,
    grace_ms: u64,
}
impl_event!(
    RecycleV2 = "test.recycle",
    version = 2,
    upgrades_from = RecycleV1
);
impl From<RecycleV1> for RecycleV2 {
    fn from(v1: RecycleV1) -> Self {
        Self {
            role: v1.role,
            grace_ms: u64::from(v1.grace_secs) * 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RecycleV3 {
    roles: Vec<String>,
    grace_ms: u64,
}
impl_event!(
    RecycleV3 = "test.recycle",
    version = 3,
    upgrades_from = RecycleV2
);
impl From<RecycleV2> for RecycleV3 {
    fn from(v2: RecycleV2) -> Self {
        Self {
            roles: vec![v2.role],
            grace_ms: v2.grace_ms,
        }
    }
}

#[test]
fn an_older_version_is_upgraded_through_the_chain() {
    let v1 = RecycleV1 {
        role: "web".into(),
        grace_secs: 3,
    };
    let e = across(v1.clone());
    assert_eq!((e.version(), e.codec()), (1, Codec::Bincode));
    // One envelope read as three versions of the contract, each decoded once.
    assert_eq!(e.payload::<RecycleV1>(), Some(&v1));
    assert_eq!(
        e.payload::<RecycleV2>(),
        Some(&RecycleV2 {
            role: "web".into(),
            grace_ms: 3000
        })
    );
    assert_eq!(
        e.payload::<RecycleV3>().unwrap().roles,
        vec!["web".to_owned()]
    );
    // A local event too: the publisher's own observers of the newer version.
    let local = InterRoleEvent::new(id(), v1);
    assert_eq!(local.payload::<RecycleV2>().unwrap().grace_ms, 3000);
}

#[test]
fn a_newer_version_is_refused_not_misread() {
    let v2 = across(RecycleV2 {
        role: "db".into(),
        grace_ms: 5,
    });
    assert_eq!(v2.version(), 2);
    assert!(matches!(
        v2.try_payload::<RecycleV1>(),
        Err(PayloadError::NewerVersion {
            version: 2,
            known: 1,
            ..
        })
    ));
    // An older version with no upgrade declared: refused too.
    #[derive(Debug, Serialize, Deserialize)]
    struct Strict {
        role: String,
    }
    impl_event!(Strict = "test.strict", version = 2);
    #[derive(Debug, Serialize, Deserialize)]
    struct StrictV1 {
        role: String,
    }
    impl_event!(StrictV1 = "test.strict");
    let old = across(StrictV1 { role: "x".into() });
    assert!(matches!(
        old.try_payload::<Strict>(),
        Err(PayloadError::NoUpgrade {
            version: 1,
            known: 2,
            ..
        })
    ));
}

// Self-describing codecs: a field added with a default needs no new version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderOld {
    order: u64,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderNew {
    order: u64,
    #[serde(default)]
    priority: u8,
}

macro_rules! tolerant {
    ($test:ident, $codec:ident, $tag:literal) => {
        #[test]
        fn $test() {
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            struct Old(OrderOld);
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            struct New(OrderNew);
            impl_event!(Old = $tag, codec = $codec);
            impl_event!(New = $tag, codec = $codec);

            let from_new = across(New(OrderNew {
                order: 7,
                priority: 9,
            }));
            assert_eq!(from_new.codec(), Codec::$codec);
            // The old reader ignores the field it does not know...
            assert_eq!(from_new.payload::<Old>().unwrap().0.order, 7);
            // ...and the new reader defaults the field that is missing.
            let from_old = across(Old(OrderOld { order: 8 }));
            assert_eq!(
                from_old.payload::<New>().unwrap().0,
                OrderNew {
                    order: 8,
                    priority: 0
                }
            );
            // A payload with bytes left over, or not of the type, is refused.
            let mut longer = from_old.raw_payload().unwrap().to_vec();
            longer.push(0);
            let raw = RawEvent {
                tag: TypeTag::new($tag).unwrap(),
                version: 1,
                codec: Codec::$codec,
                payload: Bytes::from(longer),
            };
            let e = InterRoleEvent::raw(id(), raw, StreamPos::default(), None, Headers::new());
            assert!(matches!(
                e.try_payload::<Old>(),
                Err(PayloadError::Undecodable { .. })
            ));
        }
    };
}
tolerant!(
    json_tolerates_added_and_missing_fields,
    Json,
    "test.order.json"
);
tolerant!(
    msgpack_tolerates_added_and_missing_fields,
    MessagePack,
    "test.order.msgpack"
);

#[test]
fn a_raw_json_event_reads_as_the_type() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
        #[serde(default)]
        level: u8,
    }
    impl_event!(Note = "test.note", codec = Json);
    let raw = RawEvent {
        tag: TypeTag::new("test.note").unwrap(),
        version: 1,
        codec: Codec::Json,
        payload: Bytes::from_static(br#"{"text":"hi","unknown":[1,2]}"#),
    };
    let e = InterRoleEvent::raw(id(), raw, StreamPos::default(), None, Headers::new());
    assert!(!e.is_local());
    assert_eq!(
        e.payload::<Note>(),
        Some(&Note {
            text: "hi".into(),
            level: 0
        })
    );
    let back = InterRoleEvent::from_wire(e.to_wire().unwrap()).unwrap();
    assert_eq!((back.version(), back.codec()), (1, Codec::Json));
    assert_eq!(
        back.payload_bytes().unwrap(),
        Bytes::from_static(br#"{"text":"hi","unknown":[1,2]}"#)
    );
    // The payload of a local event, encoded with its codec.
    let local = InterRoleEvent::new(
        id(),
        Note {
            text: "x".into(),
            level: 2,
        },
    );
    assert_eq!(
        local.payload_bytes().unwrap(),
        Bytes::from_static(br#"{"text":"x","level":2}"#)
    );
}

#[test]
fn version_and_codec_travel_in_envelope_version_2_only_when_needed() {
    let plain = InterRoleEvent::new(
        id(),
        RecycleV1 {
            role: "a".into(),
            grace_secs: 1,
        },
    );
    assert_eq!(plain.to_wire().unwrap()[0], 1);
    let v2 = InterRoleEvent::new(
        id(),
        RecycleV2 {
            role: "a".into(),
            grace_ms: 1,
        },
    );
    assert_eq!(v2.to_wire().unwrap()[0], 2);
    let bad = RawEvent {
        tag: TypeTag::new("test.recycle").unwrap(),
        version: 0,
        codec: Codec::Bincode,
        payload: Bytes::new(),
    };
    let e = InterRoleEvent::raw(id(), bad, StreamPos::default(), None, Headers::new());
    assert_eq!(
        InterRoleEvent::from_wire(e.to_wire().unwrap())
            .unwrap_err()
            .kind(),
        CodecErrorKind::InvalidHeader
    );
}
