//! Property tests of shared access signatures: tokens round-trip through their text; the
//! audience rules hold for every spelling of a resource; a wrong key never verifies; no text
//! makes the parser or the verifier panic.

use interrole_relay::sas::{
    Access, KeySet, Right, Rights, SasErrorKind, SasKey, SharedAccessSignature,
};
use proptest::prelude::*;

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,8}"
}

fn right() -> impl Strategy<Value = Right> {
    prop_oneof![Just(Right::Listen), Just(Right::Send), Just(Right::Manage)]
}

proptest! {
    #[test]
    fn tokens_round_trip(
        name in "\\PC{1,20}",
        key in "\\PC{1,30}",
        resource in "\\PC{1,60}",
        expiry in any::<u64>(),
    ) {
        let token = SharedAccessSignature::sign(&name, &key, &resource, expiry);
        let text = token.to_string();
        let back = SharedAccessSignature::parse(&text).unwrap();
        prop_assert_eq!(&back, &token);
        prop_assert!(back.is_signed_by(&key));
        prop_assert_eq!(back.key_name(), name.as_str());
        prop_assert_eq!(back.expiry(), expiry);
    }

    #[test]
    fn every_spelling_of_the_audience_verifies(
        scheme in prop::sample::select(vec!["http", "https", "sb", "wss"]),
        host in "[a-z]{1,10}(\\.[a-z]{1,6}){0,2}",
        upper in any::<bool>(),
        port in prop::option::of(any::<u16>()),
        path in prop::collection::vec(segment(), 0..4),
        deeper in prop::collection::vec(segment(), 0..3),
        slash in any::<bool>(),
        expiry in 1u64..u64::MAX,
        rights in prop::sample::select(vec![Rights::LISTEN, Rights::SEND, Rights::MANAGE]),
        wanted in right(),
    ) {
        let written_host = if upper { host.to_uppercase() } else { host.clone() };
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let slash = if slash { "/" } else { "" };
        let resource = format!("{scheme}://{written_host}{port}/{}{slash}", path.join("/"));
        let keys = KeySet::new().with(SasKey::new("k", "secret", rights));
        let token = SharedAccessSignature::sign("k", "secret", &resource, expiry);
        let entity = path.iter().chain(&deeper).cloned().collect::<Vec<_>>().join("/");
        let access = Access::new(&entity, wanted, expiry - 1).with_host(&host);
        match keys.verify(&token, &access) {
            Ok(key) => prop_assert!(key.rights().allows(wanted)),
            Err(e) => {
                prop_assert_eq!(e.kind(), SasErrorKind::InsufficientRights);
                prop_assert!(!rights.allows(wanted));
                prop_assert_eq!(e.http_status(), 403);
            }
        }
        // Expired at `expiry`, whatever else holds.
        let late = Access::new(&entity, wanted, expiry).with_host(&host);
        prop_assert_eq!(keys.verify(&token, &late).unwrap_err().kind(), SasErrorKind::Expired);
        // Another host is another audience.
        let other = Access::new(&entity, wanted, expiry - 1).with_host("other.invalid");
        if rights.allows(wanted) {
            prop_assert_eq!(keys.verify(&token, &other).unwrap_err().kind(), SasErrorKind::WrongAudience);
        }
    }

    #[test]
    fn a_wrong_key_never_verifies(key in "\\PC{1,20}", guess in "\\PC{1,20}", resource in "\\PC{1,40}") {
        prop_assume!(key != guess);
        let keys = KeySet::new().with(SasKey::new("k", key, Rights::MANAGE));
        let forged = SharedAccessSignature::sign("k", &guess, &resource, u64::MAX);
        let err = keys.verify(&forged, &Access::new("", Right::Listen, 0)).unwrap_err();
        prop_assert_eq!(err.kind(), SasErrorKind::BadSignature);
        prop_assert_eq!(err.http_status(), 401);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}", path in "\\PC{0,20}", now in any::<u64>()) {
        let keys = KeySet::new().with(SasKey::new("k", "secret", Rights::MANAGE));
        if let Ok(token) = SharedAccessSignature::parse(&text) {
            // What parses prints as a token that parses to the same value.
            prop_assert_eq!(SharedAccessSignature::parse(&token.to_string()).unwrap(), token.clone());
            let _ = keys.verify(&token, &Access::new(&path, Right::Send, now).with_host(&path));
        }
    }

    #[test]
    fn token_like_text_never_panics(parts in prop::collection::vec(prop::sample::select(vec![
        "SharedAccessSignature", " ", "+", "%20", "%3D", "%26", "sr", "sig", "se", "skn", "=",
        "&", "http%3A%2F%2Fh%2Fp", "%", "%zz", "%FF", "AAAA", "+/==", "-_", "1700000000",
        "99999999999999999999", "k", "\u{e9}",
    ]), 0..30)) {
        let text = parts.concat();
        if let Ok(token) = SharedAccessSignature::parse(&text) {
            prop_assert_eq!(SharedAccessSignature::parse(&token.to_string()).unwrap(), token);
        }
    }
}
