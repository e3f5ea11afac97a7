//! Multicast frames: any message decodes or fails with an error, within the limits; what decodes
//! re-encodes to the same bytes.
#![no_main]

use interrole_relay::frame::{FrameLimits, decode_message, encode_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = FrameLimits::for_envelope(64 * 1024);
    if let Ok(frames) = decode_message(data, &limits) {
        let out = encode_message(&frames);
        assert_eq!(out, data, "decoded frames re-encode to the same bytes");
    }
});
