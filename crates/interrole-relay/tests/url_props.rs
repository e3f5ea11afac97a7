//! Property tests of relay addresses: what the builder writes, the parser reads back; what the
//! parser accepts, it writes back and reads the same; rendezvous addresses carry a sender's path
//! and parameters; no text makes the parser panic.

use interrole_relay::url::{Action, RelayAddress, Rendezvous, UrlLimits};
use proptest::prelude::*;

/// A path segment under the path rules: no `/`, `\`, control character, not `.` or `..`.
fn segment() -> impl Strategy<Value = String> {
    "[^/\\\\\\x00-\\x1f\\x7f-\\x9f]{1,8}".prop_filter("dot segment", |s| s != "." && s != "..")
}

fn topic_segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,8}".prop_filter("dot segment", |s| s != "." && s != "..")
}

fn action() -> impl Strategy<Value = Action> {
    prop::sample::select(vec![
        Action::Listen,
        Action::Connect,
        Action::Accept,
        Action::Request,
        Action::Publish,
        Action::Subscribe,
        Action::Http,
    ])
}

fn address() -> impl Strategy<Value = RelayAddress> {
    address_with(action())
}

fn address_with(action: impl Strategy<Value = Action>) -> impl Strategy<Value = RelayAddress> {
    (
        action,
        prop::collection::vec(segment(), 1..4),
        prop::collection::vec(topic_segment(), 1..4),
        "[A-Za-z0-9._:-]{1,20}",
        "[^\\x00-\\x1f\\x7f-\\x9f]{1,20}",
        prop::option::of("\\PC{0,40}"),
        prop::collection::vec(("\\PC{0,8}", "\\PC{0,8}"), 0..4),
        prop::option::of((100u16..600, "\\PC{0,20}")),
        any::<bool>(),
    )
        .prop_map(
            |(action, path, topic, instance, id, token, params, reject, with_id)| {
                let path = if action.is_multicast() { topic } else { path };
                let mut a = RelayAddress::new(action, &path.join("/")).unwrap();
                for (name, value) in &params {
                    let lower = name.to_ascii_lowercase();
                    let reserved = lower.starts_with("sb-hc-")
                        || lower == "statuscode"
                        || lower == "statusdescription";
                    if !reserved {
                        a = a.with_query_param(name, value);
                    }
                }
                if action.is_multicast() {
                    a = a.with_id(instance);
                } else if with_id || action.is_rendezvous() {
                    a = a.with_id(id);
                }
                if let Some(token) = token {
                    a = a.with_token(token);
                }
                if let (Action::Accept, Some((code, description))) = (action, reject) {
                    a = a.with_reject(code, description);
                }
                a
            },
        )
}

fn limits() -> UrlLimits {
    UrlLimits::default()
}

proptest! {
    #[test]
    fn built_addresses_round_trip(a in address()) {
        let target = a.to_request_target();
        prop_assert_eq!(&RelayAddress::parse(&target, &limits()).unwrap(), &a);
        prop_assert_eq!(&RelayAddress::parse(&a.to_url("wss://relay.example:443/"), &limits()).unwrap(), &a);
    }

    #[test]
    fn rendezvous_addresses_carry_the_sender_along(
        a in address_with(Just(Action::Connect)),
        id in "\\PC{1,20}",
    ) {
        for kind in [Rendezvous::Accept, Rendezvous::Request] {
            let address = a.rendezvous_address("wss://h", kind, &id);
            let back = RelayAddress::parse(&address, &limits()).unwrap();
            prop_assert_eq!(back.action(), Action::from(kind));
            prop_assert_eq!(back.id(), Some(id.as_str()));
            prop_assert_eq!(back.path(), a.path());
            prop_assert_eq!(back.raw_path(), a.raw_path());
            prop_assert_eq!(back.app_query(), a.app_query());
            prop_assert_eq!(back.reject(), None);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        reparses_the_same(&text)?;
    }

    #[test]
    fn target_like_text_never_panics(parts in prop::collection::vec(prop::sample::select(vec![
        "/", "$hc", "%24hc", "?", "&", "=", "#", "%", "%2F", "%zz", "%C3%A9", "%FF", ".", "..",
        "a", "sb-hc-action", "listen", "accept", "publish", "subscribe", "sb-hc-id", "w-1",
        "sb-hc-token", "sb-hc-statusCode", "statusCode", "404", "sb-hc-statusDescription",
        "statusDescription", "+", " ", "wss://h", "SB-HC-ACTION", "\u{e9}",
    ]), 0..30)) {
        reparses_the_same(&parts.concat())?;
    }
}

/// Parsing never panics, and whatever parses writes a target that parses to the same address.
fn reparses_the_same(text: &str) -> Result<(), TestCaseError> {
    if let Ok(a) = RelayAddress::parse(text, &limits()) {
        let again = RelayAddress::parse(&a.to_request_target(), &limits());
        prop_assert_eq!(again.as_ref(), Ok(&a), "{}", text);
        let _ = a.app_params().count();
        let _ = a.path_prefixes().count();
        let _ = a.stripped_target();
    }
    Ok(())
}
