//! Property tests of the control messages: every message round-trips through its JSON; status
//! codes read the same as numbers or strings; no text makes the parser panic.

use interrole_relay::control::{
    Accept, ControlErrorKind, ControlMessage, Headers, RemoteEndpoint, RenewToken, Request,
    Response,
};
use proptest::prelude::*;

const MAX: usize = 64 * 1024;

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn headers() -> impl Strategy<Value = Headers> {
    prop::collection::btree_map("[A-Za-z0-9-]{1,16}", text(), 0..5)
}

fn endpoint() -> impl Strategy<Value = Option<RemoteEndpoint>> {
    prop::option::of(
        ("[0-9a-f.:]{1,20}", any::<u16>()).prop_map(|(a, p)| RemoteEndpoint::new(a, p)),
    )
}

fn message() -> impl Strategy<Value = ControlMessage> {
    prop_oneof![
        (text(), text(), headers(), endpoint()).prop_map(|(address, id, h, e)| {
            let mut a = Accept::new(address, id);
            a.connect_headers = h;
            a.remote_endpoint = e;
            ControlMessage::Accept(a)
        }),
        text().prop_map(|a| ControlMessage::Request(Request::address_only(a))),
        (
            text(),
            text(),
            "[A-Z]{1,7}",
            text(),
            any::<bool>(),
            prop::option::of(headers()),
            endpoint()
        )
            .prop_map(|(address, id, method, target, body, h, e)| {
                let mut r = Request::inline(address, id, method, target, body);
                r.request_headers = h;
                r.remote_endpoint = e;
                ControlMessage::Request(r)
            }),
        (
            text(),
            100u16..600,
            prop::option::of(text()),
            headers(),
            any::<bool>()
        )
            .prop_map(|(id, code, description, h, body)| {
                let mut r = Response::new(id, code);
                r.status_description = description;
                r.response_headers = h;
                r.body = body;
                ControlMessage::Response(r)
            }),
        text().prop_map(|t| ControlMessage::RenewToken(RenewToken::new(t))),
    ]
}

proptest! {
    #[test]
    fn messages_round_trip(msg in message()) {
        let json = msg.to_json();
        prop_assert_eq!(ControlMessage::parse(&json, MAX).unwrap(), msg.clone());
        let mut bytes = Vec::new();
        msg.write_json(&mut bytes);
        prop_assert_eq!(bytes, json.as_bytes());
        if let ControlMessage::Request(r) = &msg {
            if r.is_address_only() {
                prop_assert!(!json.contains("\"body\"") && !json.contains("\"method\""), "{}", json);
            }
        }
    }

    #[test]
    fn status_codes_as_strings_read_the_same(id in text(), code in 100u16..600) {
        let msg = ControlMessage::Response(Response::new(id, code));
        let json = msg.to_json();
        let numeric = format!("\"statusCode\":{code}");
        prop_assert!(json.contains(&numeric), "{}", json);
        let quoted = json.replace(&numeric, &format!("\"statusCode\":\"{code}\""));
        prop_assert_eq!(ControlMessage::parse(&quoted, MAX).unwrap(), msg);
    }

    #[test]
    fn the_size_limit_is_exact(msg in message()) {
        let json = msg.to_json();
        prop_assert!(ControlMessage::parse(&json, json.len()).is_ok());
        let err = ControlMessage::parse(&json, json.len() - 1).unwrap_err();
        prop_assert_eq!(err.kind(), ControlErrorKind::TooLarge);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = ControlMessage::parse(&text, MAX);
    }

    #[test]
    fn json_like_text_never_panics(parts in prop::collection::vec(prop::sample::select(vec![
        "{", "}", "[", "]", ":", ",", "\"", "\"accept\"", "\"request\"", "\"response\"",
        "\"renewToken\"", "\"address\"", "\"id\"", "\"statusCode\"", "\"port\"", "\"body\"",
        "\"connectHeaders\"", "\"requestHeaders\"", "\"remoteEndpoint\"", "\"x\"", "true",
        "\"true\"", "null", "0", "200", "\"404\"", "-1", "1e999", "65536", "\"a\"", "\\u0000",
    ]), 0..40)) {
        let text = parts.concat();
        if let Ok(msg) = ControlMessage::parse(&text, MAX) {
            // Whatever is accepted serializes and reads back the same.
            prop_assert_eq!(ControlMessage::parse(&msg.to_json(), MAX).unwrap(), msg);
        }
    }
}
