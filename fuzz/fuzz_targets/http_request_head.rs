//! The relay server's request-head parser (`RequestHead::parse`): any bytes give a head, a need
//! for more bytes or an error. A head ends where it says, on the same head whatever follows it,
//! and none before; a head is at most the limit; what any prefix of the input gives agrees with
//! what the whole gives (the server parses what has arrived so far, read by read); a head printed
//! again parses to the same head.
#![no_main]

use interrole_relay::http::{HttpErrorKind, RequestHead};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 2048;

fn print(head: &RequestHead) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\n", head.method, head.target).into_bytes();
    for (name, value) in &head.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fuzz_target!(|data: &[u8]| {
    let whole = RequestHead::parse(data, MAX);
    // A few prefixes, as reads could have cut the input.
    let cuts = [
        data.len() / 2,
        data.len().saturating_sub(1),
        usize::from(data.first().copied().unwrap_or(0)) * data.len() / 256,
    ];
    for cut in cuts {
        let part = RequestHead::parse(&data[..cut], MAX);
        match &whole {
            Ok(Some((_, len))) if cut < *len => assert_eq!(part, Ok(None), "cut at {cut}"),
            Ok(Some(_)) | Ok(None) => assert_eq!(part, whole, "cut at {cut}"),
            Err(e) => match part {
                Ok(None) => {}
                Err(p) => assert_eq!(p.kind(), e.kind(), "cut at {cut}"),
                Ok(Some(_)) => panic!("a prefix is a head where the whole is an error"),
            },
        }
    }
    match whole {
        Ok(Some((head, len))) => {
            assert!(len <= MAX && len <= data.len());
            assert_eq!(
                RequestHead::parse(&data[..len], MAX),
                Ok(Some((head.clone(), len)))
            );
            assert_eq!(RequestHead::parse(&data[..len - 1], MAX), Ok(None));
            let printed = print(&head);
            let again = RequestHead::parse(&printed, usize::MAX);
            assert_eq!(
                again,
                Ok(Some((head, printed.len()))),
                "printed: {:?}",
                String::from_utf8_lossy(&printed)
            );
        }
        Ok(None) => assert!(data.len() <= MAX),
        Err(e) => assert!(
            matches!(
                e.kind(),
                HttpErrorKind::Malformed | HttpErrorKind::HeadTooLarge
            ),
            "{e:?}"
        ),
    }
});
