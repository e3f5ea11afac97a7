//! Relay request targets: any input parses or fails with an error; what parses prints and parses
//! back to the same address.
#![no_main]

use interrole_relay::url::{RelayAddress, UrlLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = UrlLimits::default();
    if let Ok(address) = RelayAddress::parse(text, &limits) {
        let printed = address.to_request_target();
        let again = RelayAddress::parse(&printed, &limits).expect("what was printed parses");
        assert_eq!(again, address);
    }
});
