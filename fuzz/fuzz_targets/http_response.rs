//! The client's HTTP/1.1 response reader (`ResponseReader`): the first byte says whether the
//! request was a HEAD and how the rest is cut into reads, the rest is what the connection
//! delivers before it ends. Read whole or in pieces, it gives the same response or the same
//! error, never asks for more once the stream has ended, and keeps to its limits; a response it
//! read, written out again, reads back the same.
#![no_main]

use interrole_relay::http::{HttpError, MAX_RESPONSE_HEADERS, Response, ResponseReader};
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 1024;
const MAX_BODY: usize = 1024;

fn read(raw: &[u8], is_head: bool, piece: usize) -> Result<Response, HttpError> {
    read_with(raw, is_head, piece, MAX_HEAD)
}

fn read_with(
    raw: &[u8],
    is_head: bool,
    piece: usize,
    max_head: usize,
) -> Result<Response, HttpError> {
    let mut reader = ResponseReader::new(is_head, max_head, MAX_BODY);
    let mut buf = Vec::new();
    for part in raw.chunks(piece) {
        buf.extend_from_slice(part);
        if let Some(response) = reader.advance(&mut buf, false)? {
            return Ok(response);
        }
        assert!(
            buf.len() <= max_head.max(MAX_BODY) + 4096,
            "holding {} bytes",
            buf.len()
        );
    }
    Ok(reader
        .advance(&mut buf, true)?
        .expect("an ended stream gives a response or an error"))
}

fn write(response: &Response) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {} Fuzz\r\n", response.status).into_bytes();
    for (name, value) in &response.headers {
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            continue;
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", response.body.len()).as_bytes());
    out.extend_from_slice(&response.body);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let is_head = flags & 1 == 1;
    let whole = read(raw, is_head, raw.len().max(1));
    let pieces = read(raw, is_head, usize::from(flags >> 1) + 1);
    assert_eq!(whole, pieces);
    let Ok(response) = whole else {
        return;
    };
    assert!((100..600).contains(&response.status));
    assert!(!(100..200).contains(&response.status) || response.status == 101);
    assert!(response.body.len() <= MAX_BODY);
    if is_head || matches!(response.status, 101 | 204 | 304) {
        assert!(response.body.is_empty());
    }
    if response.headers.len() >= MAX_RESPONSE_HEADERS {
        return; // No room for Content-Length.
    }
    let written = write(&response);
    // Bytes of header values that are not UTF-8 were read as U+FFFD (three bytes each), so the
    // written head may be up to three times the one read: the limit is not what this checks.
    let again = read_with(&written, is_head, written.len(), written.len().max(MAX_HEAD))
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&written)));
    assert_eq!(again.status, response.status);
    if !(is_head || matches!(response.status, 101 | 204 | 304)) {
        assert_eq!(again.body, response.body);
    }
    let trimmed = |r: &Response| -> Vec<(String, String)> {
        r.headers
            .iter()
            .filter(|(n, _)| {
                !n.eq_ignore_ascii_case("content-length")
                    && !n.eq_ignore_ascii_case("transfer-encoding")
            })
            .map(|(n, v)| (n.clone(), v.trim().to_owned()))
            .collect()
    };
    assert_eq!(trimmed(&again), trimmed(&response));
});
