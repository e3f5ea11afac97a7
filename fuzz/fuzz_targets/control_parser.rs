//! Control-channel JSON: any input parses or fails with an error; what parses re-serializes and
//! parses back to the same message.
#![no_main]

use interrole_relay::control::ControlMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = ControlMessage::parse(text, 64 * 1024) {
        let json = message.to_json();
        let again = ControlMessage::parse(&json, usize::MAX).expect("what was printed parses");
        assert_eq!(again, message);
    }
});
