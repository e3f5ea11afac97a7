//! Events as `tail` prints them: one line of `key=value` fields, or one JSON object.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use interrole::core::codec::decode_with;
use interrole::{Codec, InterRoleEvent};
use serde_json::{Value, json};

/// What `tail` shows of an event, read once from its envelope.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shown {
    sender: String,
    seq: u64,
    tag: String,
    version: u32,
    codec: Codec,
    time: String,
    headers: Value,
    /// The envelope's bytes on the wire.
    size: usize,
    payload: Payload,
}

/// An event's payload, as it can be shown.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Payload {
    /// Decoded, from a self-describing codec.
    Json(Value),
    /// The encoded bytes, in hex: a codec that does not describe itself (or bytes that did not
    /// decode as their codec says).
    Hex(String),
    /// The payload could not be read; why.
    Unreadable(String),
}

impl Payload {
    /// `bytes` encoded with `codec`: JSON when the codec describes itself and they decode, else
    /// hex.
    pub(crate) fn of(codec: Codec, bytes: &[u8]) -> Self {
        if codec.is_self_describing()
            && let Ok(value) = decode_with::<Value>(codec, bytes)
        {
            return Payload::Json(value);
        }
        Payload::Hex(hex(bytes))
    }

    /// Of an event's payload.
    pub(crate) fn of_event(event: &InterRoleEvent) -> Self {
        match event.payload_bytes() {
            Ok(bytes) => Self::of(event.codec(), &bytes),
            Err(e) => Payload::Unreadable(e.to_string()),
        }
    }

    /// As one field: `payload` (JSON), `payload_hex` or `payload_error`, and its value.
    pub(crate) fn field(&self) -> (&'static str, Value) {
        match self {
            Payload::Json(v) => ("payload", v.clone()),
            Payload::Hex(h) => ("payload_hex", json!(h)),
            Payload::Unreadable(why) => ("payload_error", json!(why)),
        }
    }
}

impl Shown {
    /// Reads what is shown of `event`.
    pub(crate) fn of(event: &InterRoleEvent) -> Self {
        Self {
            sender: event.sender().to_string(),
            seq: event.seq(),
            tag: event.type_tag().to_string(),
            version: event.version(),
            codec: event.codec(),
            time: rfc3339(event.timestamp()),
            headers: serde_json::to_value(event.headers()).unwrap_or(Value::Null),
            size: event.to_wire().map_or(0, |w| w.len()),
            payload: Payload::of_event(event),
        }
    }

    /// One line: `TIME sender=.. seq=.. tag=.. version=.. codec=.. size=.. [headers={..}]`
    /// and `payload=JSON` (or `payload_hex=..`).
    pub(crate) fn line(&self) -> String {
        let mut out = format!(
            "{} sender={} seq={} tag={} version={} codec={} size={}",
            self.time, self.sender, self.seq, self.tag, self.version, self.codec, self.size
        );
        if self.headers.as_object().is_some_and(|h| !h.is_empty()) {
            let _ = write!(out, " headers={}", self.headers);
        }
        let (key, value) = self.payload.field();
        match value {
            Value::String(text) if key != "payload" => {
                let _ = write!(out, " {key}={text}");
            }
            value => {
                let _ = write!(out, " {key}={value}");
            }
        }
        out
    }

    /// One JSON object, its keys in this order: `sender`, `seq`, `tag`, `version`, `codec`,
    /// `time`, `headers`, `size` and `payload` (or `payload_hex`, or `payload_error`).
    pub(crate) fn json(&self) -> String {
        let (key, payload) = self.payload.field();
        // Written key by key: a `serde_json::Map` sorts its keys (keeping their order would take
        // serde_json's `preserve_order` and another crate).
        let fields: [(&str, Value); 9] = [
            ("sender", json!(self.sender)),
            ("seq", json!(self.seq)),
            ("tag", json!(self.tag)),
            ("version", json!(self.version)),
            ("codec", json!(self.codec.name())),
            ("time", json!(self.time)),
            ("headers", self.headers.clone()),
            ("size", json!(self.size)),
            (key, payload),
        ];
        let mut out = String::from("{");
        for (i, (key, value)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}:{value}", json!(key));
        }
        out.push('}');
        out
    }
}

/// Lower-case hex digits, two per byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `time` in UTC, RFC 3339 with microseconds: `2026-12-07T11:43:49.123456Z`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let micros = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let secs = micros / 1_000_000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        micros % 1_000_000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_print_as_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // 2024-02-29 (a leap day) 23:59:59.5
        let t = UNIX_EPOCH + Duration::from_micros(1_709_251_199_500_000);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.500000Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_800); // 2100-01-01
        assert_eq!(rfc3339(t), "2100-01-01T00:00:00.000000Z");
    }

    #[test]
    fn self_describing_payloads_show_as_json_and_the_others_as_hex() {
        let value = json!({ "id": 7, "items": ["a", "b"] });
        let mut msgpack = Vec::new();
        interrole::core::codec::encode_with(Codec::MessagePack, &value, &mut msgpack)
            .expect("encodes");
        assert_eq!(
            Payload::of(Codec::MessagePack, &msgpack),
            Payload::Json(value.clone())
        );
        let text = serde_json::to_vec(&value).expect("encodes");
        assert_eq!(Payload::of(Codec::Json, &text), Payload::Json(value));
        assert_eq!(
            Payload::of(Codec::Bincode, &[1, 2]),
            Payload::Hex("0102".into())
        );
        // Bytes that are not what their codec says are still shown.
        assert_eq!(Payload::of(Codec::Json, b"{x"), Payload::Hex("7b78".into()));
    }

    #[test]
    fn an_event_prints_as_a_line_and_as_json_with_its_keys_in_order() {
        let raw = interrole::RawEvent {
            tag: interrole::TypeTag::new("orders.created").expect("a tag"),
            version: 2,
            codec: Codec::Json,
            payload: bytes::Bytes::from_static(br#"{"id":7}"#),
        };
        let id = interrole::EventId {
            sender: interrole::InstanceId::new("pub-1").expect("an id"),
            seq: 9,
        };
        let headers = interrole::Headers::new()
            .with("tenant", "acme")
            .expect("a header");
        let event = InterRoleEvent::raw(id, raw, Default::default(), None, headers);
        let shown = Shown::of(&event);
        let line = shown.line();
        let size = event.to_wire().expect("encodes").len();
        let expected = format!(
            " sender=pub-1 seq=9 tag=orders.created version=2 codec=json size={size} \
             headers={{\"tenant\":\"acme\"}} payload={{\"id\":7}}"
        );
        assert!(line.ends_with(&expected), "{line}");
        let json = shown.json();
        let keys: Vec<&str> = [
            "sender", "seq", "tag", "version", "codec", "time", "headers", "size", "payload",
        ]
        .into_iter()
        .collect();
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| json.find(&format!("\"{k}\":")).expect(k))
            .collect();
        assert!(positions.is_sorted(), "{json}");
        let value: Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(value["payload"], json!({ "id": 7 }));
        assert_eq!(value["headers"], json!({ "tenant": "acme" }));
        assert_eq!(value["version"], 2);
    }

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }
}
