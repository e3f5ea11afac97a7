//! Control messages: the JSON text frames of a listener's control channel (and of an HTTP
//! request's rendezvous).
//!
//! ```text
//! relay -> listener   {"accept": {"address": .., "id": .., "connectHeaders": {..}, "remoteEndpoint": {..}}}
//! relay -> listener   {"request": {"address": .., "id": .., "requestTarget": .., "method": ..,
//!                                  "requestHeaders": {..}, "remoteEndpoint": {..}, "body": true}}
//! listener -> relay   {"response": {"requestId": .., "statusCode": 200, "statusDescription": ..,
//!                                   "responseHeaders": {..}, "body": true}}
//! listener -> relay   {"renewToken": {"token": "SharedAccessSignature .."}}
//! ```
//!
//! ```
//! use interrole_relay::control::{ControlMessage, Request, DEFAULT_MAX_CONTROL_LEN};
//!
//! // A request too large to travel inline is only an address: no "body", no "method".
//! let msg = ControlMessage::Request(Request::address_only("wss://h/$hc/p?sb-hc-action=request&sb-hc-id=1"));
//! assert_eq!(msg.to_json(), r#"{"request":{"address":"wss://h/$hc/p?sb-hc-action=request&sb-hc-id=1"}}"#);
//!
//! let response = ControlMessage::parse(
//!     r#"{"response":{"requestId":"1","statusCode":"404","x-unknown":true}}"#,
//!     DEFAULT_MAX_CONTROL_LEN,
//! )?;
//! let ControlMessage::Response(response) = response else { unreachable!() };
//! assert_eq!(response.status_code, 404);
//! # Ok::<(), interrole_relay::control::ControlError>(())
//! ```
//!
//! ## Tolerance
//!
//! [`ControlMessage::parse`] follows what real clients send: `statusCode` and `port` as a number
//! or a string; `body` as a boolean or `"true"`/`"false"`; header values as strings, numbers or
//! booleans (a `null` value is dropped); unknown fields ignored; the message kind matched in any
//! case. A JSON object whose kind is unknown is a [`ControlErrorKind::UnknownKind`] error that the
//! caller ignores ([`ControlError::is_ignorable`]), as clients ignore JSON they do not know.
//!
//! Serialization writes numbers for `statusCode`, omits absent optional fields, and so omits
//! `body` and `method` from an address-only request (one official client keys on each).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// The default largest control message [`ControlMessage::parse`] accepts: 64 KiB (headers are
/// limited to 32 KiB, bodies travel apart).
pub const DEFAULT_MAX_CONTROL_LEN: usize = 64 * 1024;

/// HTTP headers as control messages carry them: a JSON object of names to values. Look names up
/// with [`header`], which ignores case.
pub type Headers = BTreeMap<String, String>;

/// The value of header `name` in `headers`, its name compared without regard to case.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Where a connection came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RemoteEndpoint {
    /// The peer's IP address, as text.
    pub address: String,
    /// The peer's port.
    #[serde(deserialize_with = "lenient::port")]
    pub port: u16,
}

impl RemoteEndpoint {
    /// An endpoint at `address` and `port`.
    pub fn new(address: impl Into<String>, port: u16) -> Self {
        Self {
            address: address.into(),
            port,
        }
    }
}

/// Relay → listener: a WebSocket sender wants a connection; open the rendezvous at `address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Accept {
    /// The rendezvous address, used as given (`wss://host/$hc/path?sb-hc-action=accept&sb-hc-id=..`).
    pub address: String,
    /// The connection's id: the sender's `sb-hc-id` if it sent one, else generated.
    pub id: String,
    /// The sender's handshake headers; must include `Sec-WebSocket-Key` (one client refuses an
    /// accept without it).
    #[serde(default, deserialize_with = "lenient::headers")]
    pub connect_headers: Headers,
    /// The sender's address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<RemoteEndpoint>,
}

impl Accept {
    /// An accept for connection `id` at rendezvous `address`, with no header.
    pub fn new(address: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            id: id.into(),
            connect_headers: Headers::new(),
            remote_endpoint: None,
        }
    }
}

/// Relay → listener: an HTTP request. Small ones travel inline (with `body: true`, exactly one
/// binary message with the body follows); large or streamed ones are only an address, where the
/// listener finds the whole request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Request {
    /// The rendezvous address (`wss://host/$hc/path?sb-hc-action=request&sb-hc-id=..`); always
    /// present.
    pub address: String,
    /// The request's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The request target with the relay's `sb-hc-*` parameters stripped (`/path/abc?x=1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_target: Option<String>,
    /// The HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request headers.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_headers"
    )]
    pub request_headers: Option<Headers>,
    /// The sender's address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<RemoteEndpoint>,
    /// Whether one binary message with the body follows.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub body: Option<bool>,
}

impl Request {
    /// A request that is only an address: every other field absent, so none is written.
    pub fn address_only(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            id: None,
            request_target: None,
            method: None,
            request_headers: None,
            remote_endpoint: None,
            body: None,
        }
    }

    /// An inline request: `method` on `request_target`, with `body` telling whether a binary
    /// message with the body follows, and no header yet.
    pub fn inline(
        address: impl Into<String>,
        id: impl Into<String>,
        method: impl Into<String>,
        request_target: impl Into<String>,
        body: bool,
    ) -> Self {
        Self {
            id: Some(id.into()),
            method: Some(method.into()),
            request_target: Some(request_target.into()),
            request_headers: Some(Headers::new()),
            body: Some(body),
            ..Self::address_only(address)
        }
    }

    /// Whether this request is only an address (no method and no body flag).
    pub fn is_address_only(&self) -> bool {
        self.method.is_none() && self.body.is_none()
    }
}

/// Listener → relay: the response to a request, on the control channel or the request's
/// rendezvous. With `body: true`, exactly one binary message with the body follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Response {
    /// The id of the request answered (empty when the listener sent none).
    #[serde(default)]
    pub request_id: String,
    /// The HTTP status, 100 to 599 (a number or a string on the wire; written as a number).
    #[serde(deserialize_with = "lenient::status_code")]
    pub status_code: u16,
    /// The reason phrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_description: Option<String>,
    /// The response headers.
    #[serde(
        default,
        skip_serializing_if = "Headers::is_empty",
        deserialize_with = "lenient::headers"
    )]
    pub response_headers: Headers,
    /// Whether one binary message with the body follows.
    #[serde(default, deserialize_with = "lenient::bool")]
    pub body: bool,
}

impl Response {
    /// A response to `request_id` with `status_code`, no description, header or body.
    pub fn new(request_id: impl Into<String>, status_code: u16) -> Self {
        Self {
            request_id: request_id.into(),
            status_code,
            status_description: None,
            response_headers: Headers::new(),
            body: false,
        }
    }
}

/// Listener → relay: replace the control channel's token before it expires. When the new token
/// is refused the relay closes the channel with 1008.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RenewToken {
    /// The new token (`SharedAccessSignature sr=..&sig=..&se=..&skn=..`).
    pub token: String,
}

impl RenewToken {
    /// A renewal with `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
        }
    }
}

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ControlMessage {
    /// `{"accept": ..}`.
    Accept(Accept),
    /// `{"request": ..}`.
    Request(Request),
    /// `{"response": ..}`.
    Response(Response),
    /// `{"renewToken": ..}`.
    RenewToken(RenewToken),
}

impl ControlMessage {
    /// The message kind as it appears on the wire (`"accept"`, `"renewToken"`, ..).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Accept(_) => "accept",
            Self::Request(_) => "request",
            Self::Response(_) => "response",
            Self::RenewToken(_) => "renewToken",
        }
    }

    /// Parses one control message of at most `max_len` bytes.
    ///
    /// # Errors
    /// [`ControlErrorKind::TooLarge`] over `max_len` (before any parsing);
    /// [`ControlErrorKind::Syntax`] for text that is not JSON; [`ControlErrorKind::Malformed`]
    /// for JSON that is not a control message (not an object, two kinds in one object, a field
    /// missing or of the wrong type, a status code outside 100 to 599);
    /// [`ControlErrorKind::UnknownKind`] for an object with no known kind, which callers ignore.
    pub fn parse(json: &str, max_len: usize) -> Result<Self, ControlError> {
        if json.len() > max_len {
            return Err(ControlError::new(
                ControlErrorKind::TooLarge,
                format!("{} bytes, the limit is {max_len}", json.len()),
            ));
        }
        match serde_json::from_str::<Parsed>(json) {
            Ok(Parsed::Known(message)) => Ok(message),
            Ok(Parsed::Unknown(kind)) => Err(ControlError::new(
                ControlErrorKind::UnknownKind,
                format!("{:?}", crate::pct::excerpt(&kind)),
            )),
            Ok(Parsed::Empty) => Err(ControlError::new(
                ControlErrorKind::UnknownKind,
                "an empty object",
            )),
            Err(e) => {
                let kind = match e.classify() {
                    serde_json::error::Category::Data => ControlErrorKind::Malformed,
                    _ => ControlErrorKind::Syntax,
                };
                Err(ControlError::new(kind, e.to_string()))
            }
        }
    }

    /// The message as JSON text.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(128);
        self.write_json(&mut out);
        // serde_json writes UTF-8 only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the message as JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Serializing these types cannot fail: every map key is a string, every value plain data,
        // and writing to a Vec does not fail.
        let _ = serde_json::to_writer(out, self);
    }
}

impl From<Accept> for ControlMessage {
    fn from(m: Accept) -> Self {
        Self::Accept(m)
    }
}

impl From<Request> for ControlMessage {
    fn from(m: Request) -> Self {
        Self::Request(m)
    }
}

impl From<Response> for ControlMessage {
    fn from(m: Response) -> Self {
        Self::Response(m)
    }
}

impl From<RenewToken> for ControlMessage {
    fn from(m: RenewToken) -> Self {
        Self::RenewToken(m)
    }
}

/// The outcome of reading one JSON object: a message, or the first key when none is known.
enum Parsed {
    Known(ControlMessage),
    Unknown(String),
    Empty,
}

impl<'de> Deserialize<'de> for Parsed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessageVisitor;

        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Parsed;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object holding one control message")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
                let mut found: Option<ControlMessage> = None;
                let mut unknown: Option<String> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let known = ["accept", "request", "response", "renewToken"]
                        .into_iter()
                        .find(|k| k.eq_ignore_ascii_case(&key));
                    let Some(known) = known else {
                        map.next_value::<IgnoredAny>()?;
                        unknown.get_or_insert(key);
                        continue;
                    };
                    if let Some(first) = &found {
                        return Err(de::Error::custom(format_args!(
                            "two messages in one object: {} and {known}",
                            first.kind()
                        )));
                    }
                    found = Some(match known {
                        "accept" => ControlMessage::Accept(map.next_value()?),
                        "request" => ControlMessage::Request(map.next_value()?),
                        "response" => ControlMessage::Response(map.next_value()?),
                        _ => ControlMessage::RenewToken(map.next_value()?),
                    });
                }
                Ok(match (found, unknown) {
                    (Some(m), _) => Parsed::Known(m),
                    (None, Some(k)) => Parsed::Unknown(k),
                    (None, None) => Parsed::Empty,
                })
            }
        }

        deserializer.deserialize_map(MessageVisitor)
    }
}

/// What is wrong with a control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ControlErrorKind {
    /// Longer than the limit given to [`ControlMessage::parse`].
    TooLarge,
    /// Not JSON text.
    Syntax,
    /// JSON, but not a valid control message.
    Malformed,
    /// A JSON object of a kind this build does not know: ignore it.
    UnknownKind,
}

impl ControlErrorKind {
    /// The WebSocket close code for the channel that sent it: 1009 (message too big) for
    /// [`TooLarge`](ControlErrorKind::TooLarge), 1008 (policy violation) for
    /// [`Syntax`](ControlErrorKind::Syntax) and [`Malformed`](ControlErrorKind::Malformed), and
    /// `None` for [`UnknownKind`](ControlErrorKind::UnknownKind), which is ignored.
    pub fn close_code(self) -> Option<u16> {
        match self {
            Self::TooLarge => Some(1009),
            Self::Syntax | Self::Malformed => Some(1008),
            Self::UnknownKind => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "control message too large",
            Self::Syntax => "control message is not JSON",
            Self::Malformed => "malformed control message",
            Self::UnknownKind => "unknown control message",
        }
    }
}

impl fmt::Display for ControlErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A control message that could not be read: its [kind](ControlError::kind) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ControlError {
    kind: ControlErrorKind,
    message: String,
}

impl ControlError {
    fn new(kind: ControlErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What is wrong.
    pub fn kind(&self) -> ControlErrorKind {
        self.kind
    }

    /// Whether the message should be ignored rather than treated as a fault: true for an
    /// unknown kind.
    pub fn is_ignorable(&self) -> bool {
        self.kind == ControlErrorKind::UnknownKind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Deserializers that accept what real clients send.
mod lenient {
    use std::fmt;

    use serde::de::{self, MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    use super::Headers;

    /// A scalar read as text, or nothing for `null`.
    struct Scalar;

    impl Visitor<'_> for Scalar {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, a number, a boolean or null")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    struct ScalarValue(Option<String>);

    impl<'de> Deserialize<'de> for ScalarValue {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Scalar).map(ScalarValue)
        }
    }

    struct HeaderMap;

    impl<'de> Visitor<'de> for HeaderMap {
        type Value = Option<Headers>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of header names to values, or null")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut headers = Headers::new();
            while let Some((name, ScalarValue(value))) = map.next_entry::<String, ScalarValue>()? {
                if let Some(value) = value {
                    headers.insert(name, value);
                }
            }
            Ok(Some(headers))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    pub(super) fn headers<'de, D: Deserializer<'de>>(d: D) -> Result<Headers, D::Error> {
        Ok(d.deserialize_any(HeaderMap)?.unwrap_or_default())
    }

    pub(super) fn opt_headers<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Headers>, D::Error> {
        d.deserialize_any(HeaderMap)
    }

    fn integer<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<u64, D::Error> {
        let text = d
            .deserialize_any(Scalar)?
            .ok_or_else(|| de::Error::custom(format_args!("{what} is null")))?;
        let text = text.trim();
        if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(de::Error::custom(format_args!(
                "{what} {:?} is not a non-negative integer",
                crate::pct::excerpt(text)
            )));
        }
        text.parse()
            .map_err(|_| de::Error::custom(format_args!("{what} out of range")))
    }

    pub(super) fn status_code<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        let code = integer(d, "statusCode")?;
        u16::try_from(code)
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| {
                de::Error::custom(format_args!("statusCode {code} is not from 100 to 599"))
            })
    }

    pub(super) fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        let port = integer(d, "port")?;
        u16::try_from(port).map_err(|_| de::Error::custom(format_args!("port {port} out of range")))
    }

    fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        match d.deserialize_any(Scalar)?.as_deref().map(str::trim) {
            None => Ok(None),
            Some(t) if t.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(t) if t.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(t) => Err(de::Error::custom(format_args!(
                "body {:?} is not a boolean",
                crate::pct::excerpt(t)
            ))),
        }
    }

    pub(super) fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(flag(d)?.unwrap_or(false))
    }

    pub(super) fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        flag(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ControlMessage, ControlError> {
        ControlMessage::parse(json, DEFAULT_MAX_CONTROL_LEN)
    }

    fn kind(json: &str) -> ControlErrorKind {
        parse(json).unwrap_err().kind()
    }

    #[test]
    fn accept_as_the_relay_writes_it() {
        let mut accept = Accept::new("wss://h/$hc/p?sb-hc-action=accept&sb-hc-id=1", "1");
        accept
            .connect_headers
            .insert("Sec-WebSocket-Key".into(), "dGhlIHNhbXBsZQ==".into());
        accept.remote_endpoint = Some(RemoteEndpoint::new("10.0.0.1", 1234));
        let msg = ControlMessage::from(accept);
        let json = msg.to_json();
        assert_eq!(
            json,
            r#"{"accept":{"address":"wss://h/$hc/p?sb-hc-action=accept&sb-hc-id=1","id":"1","connectHeaders":{"Sec-WebSocket-Key":"dGhlIHNhbXBsZQ=="},"remoteEndpoint":{"address":"10.0.0.1","port":1234}}}"#
        );
        assert_eq!(parse(&json).unwrap(), msg);
        let ControlMessage::Accept(a) = msg else {
            unreachable!()
        };
        assert_eq!(
            header(&a.connect_headers, "sec-websocket-key"),
            Some("dGhlIHNhbXBsZQ==")
        );
    }

    #[test]
    fn requests_inline_and_address_only() {
        let mut inline = Request::inline("wss://a", "7", "GET", "/p/x?y=1", true);
        inline
            .request_headers
            .get_or_insert_with(Headers::new)
            .insert("Content-Type".into(), "text/plain".into());
        let json = ControlMessage::from(inline.clone()).to_json();
        assert!(
            json.contains(r#""method":"GET""#) && json.contains(r#""body":true"#),
            "{json}"
        );
        assert_eq!(parse(&json).unwrap(), ControlMessage::Request(inline));

        let only = Request::address_only("wss://a");
        assert!(only.is_address_only());
        let json = ControlMessage::from(only.clone()).to_json();
        assert_eq!(json, r#"{"request":{"address":"wss://a"}}"#);
        assert_eq!(parse(&json).unwrap(), ControlMessage::Request(only));
    }

    #[test]
    fn responses_are_read_leniently_and_written_with_numbers() {
        let lenient = r#"{"response":{"requestId":"1","statusCode":" 200 ","statusDescription":"OK",
            "responseHeaders":{"Content-Length":12,"X-Flag":true,"X-Null":null},"body":"true","extra":[1]}}"#;
        let ControlMessage::Response(r) = parse(lenient).unwrap() else {
            panic!("not a response")
        };
        assert_eq!(r.status_code, 200);
        assert!(r.body);
        assert_eq!(header(&r.response_headers, "content-length"), Some("12"));
        assert_eq!(header(&r.response_headers, "x-flag"), Some("true"));
        assert_eq!(header(&r.response_headers, "x-null"), None);
        let json = ControlMessage::from(r.clone()).to_json();
        assert!(json.contains(r#""statusCode":200"#), "{json}");
        assert_eq!(parse(&json).unwrap(), ControlMessage::Response(r));

        let minimal = parse(r#"{"Response":{"statusCode":204}}"#).unwrap();
        assert_eq!(minimal, ControlMessage::Response(Response::new("", 204)));
    }

    #[test]
    fn renew_token_and_ports_as_strings() {
        let msg = parse(r#"{"renewToken":{"token":"SharedAccessSignature sr=a"}}"#).unwrap();
        assert_eq!(msg.kind(), "renewToken");
        assert_eq!(
            msg,
            ControlMessage::RenewToken(RenewToken::new("SharedAccessSignature sr=a"))
        );
        let msg = parse(
            r#"{"accept":{"address":"a","id":"b","remoteEndpoint":{"address":"::1","port":"80"}}}"#,
        )
        .unwrap();
        let ControlMessage::Accept(a) = msg else {
            unreachable!()
        };
        assert_eq!(a.remote_endpoint.unwrap().port, 80);
        assert!(a.connect_headers.is_empty());
    }

    #[test]
    fn unknown_kinds_are_ignorable() {
        let err = parse(r#"{"ping":{}}"#).unwrap_err();
        assert_eq!(err.kind(), ControlErrorKind::UnknownKind);
        assert!(err.is_ignorable());
        assert_eq!(err.kind().close_code(), None);
        assert!(err.to_string().contains("ping"), "{err}");
        assert_eq!(kind("{}"), ControlErrorKind::UnknownKind);
        // An unknown key next to a known one is just an unknown field.
        assert_eq!(
            parse(r#"{"x":1,"renewToken":{"token":"t"}}"#)
                .unwrap()
                .kind(),
            "renewToken"
        );
    }

    #[test]
    fn error_kinds() {
        let big = format!(r#"{{"renewToken":{{"token":"{}"}}}}"#, "x".repeat(100));
        let err = ControlMessage::parse(&big, 50).unwrap_err();
        assert_eq!(err.kind(), ControlErrorKind::TooLarge);
        assert_eq!(err.kind().close_code(), Some(1009));
        assert_eq!(kind("not json"), ControlErrorKind::Syntax);
        assert_eq!(kind(r#"{"accept":"#), ControlErrorKind::Syntax);
        assert_eq!(kind("[1,2]"), ControlErrorKind::Malformed);
        assert_eq!(
            kind(r#"{"accept":{"id":"1"}}"#),
            ControlErrorKind::Malformed
        );
        assert_eq!(
            kind(r#"{"response":{"statusCode":"abc"}}"#),
            ControlErrorKind::Malformed
        );
        assert_eq!(
            kind(r#"{"response":{"statusCode":99}}"#),
            ControlErrorKind::Malformed
        );
        assert_eq!(
            kind(r#"{"response":{"statusCode":70000}}"#),
            ControlErrorKind::Malformed
        );
        assert_eq!(
            kind(r#"{"response":{"statusCode":-1}}"#),
            ControlErrorKind::Malformed
        );
        assert_eq!(
            kind(r#"{"response":{"statusCode":200.5}}"#),
            ControlErrorKind::Malformed
        );
        assert_eq!(
            kind(r#"{"response":{"statusCode":200,"body":"yes"}}"#),
            ControlErrorKind::Malformed
        );
        assert_eq!(
            kind(
                r#"{"accept":{"address":"a","id":"b","remoteEndpoint":{"address":"a","port":70000}}}"#
            ),
            ControlErrorKind::Malformed
        );
        assert_eq!(
            kind(r#"{"renewToken":{"token":"a"},"renewToken":{"token":"b"}}"#),
            ControlErrorKind::Malformed
        );
        assert_eq!(
            kind(r#"{"accept":{"address":"a","id":"b","connectHeaders":{"a":[1]}}}"#),
            ControlErrorKind::Malformed
        );
        assert_eq!(ControlErrorKind::Malformed.close_code(), Some(1008));
        // Deep nesting does not overflow the stack: serde_json skips ignored values without
        // recursing, and refuses what it would recurse into past its limit.
        let nest = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(
            kind(&format!(r#"{{"x":{}}}"#, nest(30_000))),
            ControlErrorKind::UnknownKind
        );
        let deep = format!(
            r#"{{"accept":{{"address":"a","id":"b","x":{}}}}}"#,
            nest(30_000)
        );
        assert_eq!(parse(&deep).unwrap().kind(), "accept");
        let deep = format!(r#"{{"accept":{}}}"#, nest(30_000));
        assert_eq!(kind(&deep), ControlErrorKind::Malformed);
    }
}
