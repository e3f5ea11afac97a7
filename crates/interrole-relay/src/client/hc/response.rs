//! Reading the HTTP/1.1 response to `HcSender::request`, a hand-written loop over
//! [`http::ResponseReader`]: an [`HcResponse`].

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::error::{HcError, HcErrorKind};
use crate::client::dial::Io;
use crate::control::Headers;
use crate::http::{self, HttpErrorKind};

/// The largest HTTP response head and body `HcSender::request` reads.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

/// An HTTP response to `HcSender::request`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HcResponse {
    /// The HTTP status.
    pub status: u16,
    /// The response headers, names as received; repeated headers joined with `, `. Look names
    /// up with [`control::header`](crate::control::header).
    pub headers: Headers,
    /// The body, de-chunked.
    pub body: Bytes,
}

/// Reads more bytes into `buf`; `Ok(0)` at the end of the stream.
async fn read_more(stream: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> Result<usize, HcError> {
    buf.reserve(16 * 1024);
    match stream.read_buf(buf).await {
        Ok(n) => Ok(n),
        // A TLS peer that closes without close_notify.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(HcError::io("reading the HTTP response", e)),
    }
}

fn cut_short() -> HcError {
    HcError::lost("the connection closed before the response was complete")
}

/// Reads one HTTP/1.1 response (skipping interim 1xx ones): the body by `Content-Length`,
/// chunked, or up to the end of the stream ([`http::ResponseReader`]).
pub(super) async fn read_response(
    stream: &mut Box<dyn Io>,
    is_head: bool,
) -> Result<HcResponse, HcError> {
    let mut reader = http::ResponseReader::new(is_head, MAX_RESPONSE_HEAD, MAX_RESPONSE_BODY);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut end = false;
    loop {
        let read = reader.advance(&mut buf, end).map_err(|e| match e.kind() {
            HttpErrorKind::Incomplete => cut_short(),
            HttpErrorKind::BodyTooLarge => HcError::new(
                HcErrorKind::PayloadTooLarge,
                "HTTP response body over 64 MiB",
            ),
            HttpErrorKind::HeadTooLarge => {
                HcError::protocol("HTTP response head over 64 KiB").with_source(e)
            }
            _ => HcError::protocol("malformed HTTP response").with_source(e),
        })?;
        if let Some(response) = read {
            return Ok(HcResponse {
                status: response.status,
                headers: response.headers,
                body: Bytes::from(response.body),
            });
        }
        if end {
            return Err(cut_short());
        }
        end = read_more(stream, &mut buf).await? == 0;
    }
}
