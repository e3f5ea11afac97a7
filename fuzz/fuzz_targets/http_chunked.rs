//! The chunked-body decoder (`ChunkedDecoder`: request bodies on the relay server, response
//! bodies on the client): the first byte says how the rest is cut into reads, the rest is the
//! body as sent. Read whole or in pieces, it decodes to the same body, uses the same bytes and
//! fails the same way; the body never exceeds the limit; between reads the caller never holds
//! more than an unfinished line; a finished body, encoded again in other chunks, decodes to the
//! same body.
#![no_main]

use interrole_relay::http::{ChunkedDecoder, HttpError, MAX_CHUNK_LINE};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1024;

/// The body (as far as decoded), how many bytes were used, and whether the body is done.
type Outcome = Result<(Vec<u8>, usize, bool), HttpError>;

fn decode(raw: &[u8], piece: usize) -> Outcome {
    let mut d = ChunkedDecoder::new(MAX);
    let mut pending = Vec::new();
    let mut used = 0;
    for part in raw.chunks(piece) {
        pending.extend_from_slice(part);
        let n = d.decode(&pending)?;
        assert!(n <= pending.len());
        pending.drain(..n);
        used += n;
        assert!(d.body().len() <= MAX, "a body over the limit");
        if d.is_done() {
            break;
        }
        assert!(
            pending.len() <= MAX_CHUNK_LINE + 1,
            "the caller holds {} bytes",
            pending.len()
        );
    }
    let done = d.is_done();
    Ok((d.into_body(), used, done))
}

fn encode(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in body.chunks(chunk) {
        out.extend_from_slice(format!("{:X};x=y\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nTrailer: t\r\n\r\n");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, raw)) = data.split_first() else {
        return;
    };
    let whole = decode(raw, raw.len().max(1));
    let pieces = decode(raw, usize::from(cut % 64) + 1);
    assert_eq!(whole, pieces);
    if let Ok((body, used, true)) = whole {
        assert_eq!(
            decode(&raw[..used], used.max(1)),
            Ok((body.clone(), used, true))
        );
        let again = encode(&body, usize::from(cut) + 1);
        assert_eq!(decode(&again, again.len()), Ok((body, again.len(), true)));
    }
});
