//! Shared access signatures: any input parses or fails with an error; what parses prints and
//! parses back to the same token.
#![no_main]

use interrole_relay::sas::SharedAccessSignature;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = SharedAccessSignature::parse(text) {
        let printed = token.to_string();
        let again = SharedAccessSignature::parse(&printed).expect("what was printed parses");
        assert_eq!(again.to_string(), printed);
    }
});
