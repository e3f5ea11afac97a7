//! Property tests of the HTTP/1.1 parsing the relay server and the clients share
//! (`interrole_relay::http`): any body, chunked any way and read in any pieces, decodes to itself;
//! any response reads the same whole or in pieces; no input makes a decoder panic.

use interrole_relay::control::{self, Headers};
use interrole_relay::http::{ChunkedDecoder, MAX_CHUNK_LINE, RequestHead, ResponseReader};
use proptest::prelude::*;

/// `body` cut into chunks of the given sizes (the last chunk takes the rest), with extensions
/// and trailers.
fn chunked(body: &[u8], sizes: &[usize], trailers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    for &size in sizes.iter().chain(std::iter::once(&usize::MAX)) {
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        if !chunk.is_empty() {
            out.extend_from_slice(format!("{:x};n=v\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        rest = after;
    }
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn header() -> impl Strategy<Value = (String, String)> {
    ("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,20}").prop_map(|(n, v)| (n, v.trim().to_owned()))
}

/// Feeds `raw` to a decoder in pieces of `piece` bytes; the body, or `None` when not done.
fn dechunk_in_pieces(raw: &[u8], piece: usize, max: usize) -> Option<Vec<u8>> {
    let mut d = ChunkedDecoder::new(max);
    let mut pending = Vec::new();
    for part in raw.chunks(piece) {
        pending.extend_from_slice(part);
        let used = d.decode(&pending).unwrap();
        pending.drain(..used);
        assert!(pending.len() <= MAX_CHUNK_LINE + 1);
        if d.is_done() {
            assert!(pending.is_empty());
            return Some(d.into_body());
        }
    }
    None
}

proptest! {
    #[test]
    fn chunked_bodies_decode_to_themselves_in_any_pieces(
        body in prop::collection::vec(any::<u8>(), 0..600),
        sizes in prop::collection::vec(1usize..200, 0..8),
        trailers in prop::collection::vec(header(), 0..3),
        piece in 1usize..64,
    ) {
        let raw = chunked(&body, &sizes, &trailers);
        prop_assert_eq!(dechunk_in_pieces(&raw, raw.len(), body.len()), Some(body.clone()));
        prop_assert_eq!(dechunk_in_pieces(&raw, piece, body.len()), Some(body.clone()));
        if !body.is_empty() {
            let mut d = ChunkedDecoder::new(body.len() - 1);
            prop_assert_eq!(d.decode(&raw).unwrap_err().http_status(), 413);
        }
    }

    #[test]
    fn responses_read_the_same_whole_or_in_pieces(
        status in prop_oneof![Just(101u16), 200u16..600],
        headers in prop::collection::vec(header(), 0..4),
        body in prop::collection::vec(any::<u8>(), 0..300),
        framing in 0u8..3,
        piece in 1usize..64,
    ) {
        let mut raw = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        raw.extend_from_slice(format!("HTTP/1.1 {status} Something\r\n").as_bytes());
        for (name, value) in &headers {
            if !name.eq_ignore_ascii_case("content-length")
                && !name.eq_ignore_ascii_case("transfer-encoding")
            {
                raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
        }
        match framing {
            0 => {
                raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                raw.extend_from_slice(&body);
            }
            1 => {
                raw.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                raw.extend_from_slice(&chunked(&body, &[7, 100], &[]));
            }
            _ => {
                raw.extend_from_slice(b"\r\n");
                raw.extend_from_slice(&body);
            }
        }
        let read = |piece: usize| {
            let mut reader = ResponseReader::new(false, 4096, 4096);
            let mut buf = Vec::new();
            for part in raw.chunks(piece) {
                buf.extend_from_slice(part);
                if let Some(r) = reader.advance(&mut buf, false).unwrap() {
                    return r;
                }
            }
            reader.advance(&mut buf, true).unwrap().unwrap()
        };
        let whole = read(raw.len());
        prop_assert_eq!(&read(piece), &whole);
        prop_assert_eq!(whole.status, status);
        let no_body = matches!(status, 101 | 204 | 304);
        prop_assert_eq!(&whole.body, if no_body { &Vec::new() } else { &body });
        let expected: Headers = headers.iter().fold(Headers::new(), |mut h, (n, v)| {
            if n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding") {
                return h;
            }
            match h.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(n)) {
                Some((_, old)) => { old.push_str(", "); old.push_str(v); }
                None => { h.insert(n.clone(), v.clone()); }
            }
            h
        });
        for (name, value) in &expected {
            prop_assert_eq!(control::header(&whole.headers, name), Some(value.as_str()));
        }
    }

    #[test]
    fn no_input_makes_a_decoder_panic(
        raw in prop::collection::vec(any::<u8>(), 0..512),
        max in 0usize..600,
        piece in 1usize..64,
    ) {
        let _ = RequestHead::parse(&raw, max);
        let mut d = ChunkedDecoder::new(max);
        let _ = d.decode(&raw);
        let _ = dechunk_pieces_lossy(&raw, piece, max);
        let mut buf = raw.clone();
        let mut reader = ResponseReader::new(false, max, max);
        prop_assert!(!matches!(reader.advance(&mut buf, true), Ok(None)));
    }
}

/// Feeds `raw` in pieces, stopping at the first error.
fn dechunk_pieces_lossy(raw: &[u8], piece: usize, max: usize) -> Option<Vec<u8>> {
    let mut d = ChunkedDecoder::new(max);
    let mut pending = Vec::new();
    for part in raw.chunks(piece) {
        pending.extend_from_slice(part);
        let used = d.decode(&pending).ok()?;
        pending.drain(..used);
    }
    d.is_done().then(|| d.into_body())
}
