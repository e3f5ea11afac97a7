//! Shared access signatures: any input parses or fails with an error; what parses prints and
//! parses back to the same token, unless printing made it longer than a token may be (the
//! printed form escapes what the parser accepts unescaped, such as `+` and `/` in `sig`, so a
//! token near the limit can print past it).
#![no_main]

use interrole_relay::sas::{MAX_TOKEN_LEN, SharedAccessSignature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = SharedAccessSignature::parse(text) {
        let printed = token.to_string();
        if printed.len() > MAX_TOKEN_LEN {
            return;
        }
        let again = SharedAccessSignature::parse(&printed).expect("what was printed parses");
        assert_eq!(again.to_string(), printed);
    }
});
