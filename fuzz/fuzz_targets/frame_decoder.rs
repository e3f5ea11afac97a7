//! Multicast frames: any message decodes or fails with an error, within the limits; what decodes
//! re-encodes, in the message's own protocol version, to the same bytes; a message of an older
//! version holds no frame that version lacks.
#![no_main]

use interrole_relay::frame::{
    FrameLimits, MessageBuilder, VERSION, decode_message, encode_message,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = FrameLimits::for_envelope(64 * 1024);
    if let Ok(frames) = decode_message(data, &limits) {
        let version = data[0];
        assert!(frames.iter().all(|f| f.frame_type().since() <= version));
        let mut builder = MessageBuilder::with_version(version, data.len());
        for f in &frames {
            builder.push(f);
        }
        assert_eq!(
            &builder.finish()[..],
            data,
            "decoded frames re-encode to the same bytes"
        );
        if version == VERSION {
            assert_eq!(encode_message(&frames), data);
        }
    }
});
