//! The HTTP side of a connection: reading a request head and body, answering plain requests.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use interrole_relay::http::{ChunkedDecoder, HttpErrorKind, RequestHead, reason_phrase};

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    /// Bytes read past the head.
    pub(crate) rest: Vec<u8>,
}

impl Head {
    /// The first header named `name` (any case), as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Whether a header named `name` holds `token` in its comma-separated list (any case).
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Why no head could be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The peer closed or the socket failed.
    Io,
    /// Not HTTP: answer 400.
    Malformed,
    /// Over the size limit or too many headers: answer 431.
    TooLarge,
}

/// Reads a request head of at most `max` bytes ([`RequestHead::parse`] on what has arrived).
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Head, HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Io
            } else {
                HeadError::Malformed
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        match RequestHead::parse(&buf, max) {
            Ok(Some((head, len))) => {
                return Ok(Head {
                    method: head.method,
                    target: head.target,
                    headers: head.headers,
                    rest: buf.split_off(len),
                });
            }
            Ok(None) => {}
            Err(e) if e.kind() == HttpErrorKind::HeadTooLarge => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

/// Reads the body of a request, at most `max` bytes, by `deadline`: `Content-Length` bytes, or a
/// chunked body (decoded; trailers are dropped). Errors are the status to answer and why.
pub(crate) async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    head: &Head,
    max: usize,
    deadline: tokio::time::Instant,
) -> Result<Bytes, (u16, &'static str)> {
    if let Some(coding) = head.header("transfer-encoding") {
        if !coding
            .rsplit(',')
            .next()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
        {
            return Err((501, "unsupported transfer encoding"));
        }
        let mut raw = head.rest.clone();
        let mut chunks = ChunkedDecoder::new(max);
        loop {
            let used = chunks.decode(&raw).map_err(|e| match e.kind() {
                HttpErrorKind::BodyTooLarge => (413, "request body over the relay's message limit"),
                _ => (e.http_status(), e.message()),
            })?;
            raw.drain(..used);
            if chunks.is_done() {
                return Ok(Bytes::from(chunks.into_body()));
            }
            let mut more = [0u8; 16 * 1024];
            let n = tokio::time::timeout_at(deadline, stream.read(&mut more))
                .await
                .map_err(|_| (408, "request body timeout"))?
                .map_err(|_| (400, "request body cut short"))?;
            if n == 0 {
                return Err((400, "request body cut short"));
            }
            raw.extend_from_slice(&more[..n]);
        }
    }
    let len = match head.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| (400, "bad Content-Length"))?,
    };
    if len > max {
        return Err((413, "request body over the relay's message limit"));
    }
    let mut body = head.rest.clone();
    body.truncate(len);
    if body.len() < len {
        let mut more = vec![0u8; len - body.len()];
        tokio::time::timeout_at(deadline, stream.read_exact(&mut more))
            .await
            .map_err(|_| (408, "request body timeout"))?
            .map_err(|_| (400, "request body cut short"))?;
        body.extend_from_slice(&more);
    }
    Ok(Bytes::from(body))
}

/// The reason phrase of `status` ([`reason_phrase`]), `Error` for a status without one.
pub(crate) fn reason(status: u16) -> &'static str {
    reason_phrase(status).unwrap_or("Error")
}

/// Writes a complete response with a text body and `Connection: close`, then shuts the
/// socket's write side down. Errors are ignored: the connection is being dropped anyway.
pub(crate) async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &str,
) {
    let extra = format!("Content-Type: {content_type}\r\n{extra_headers}");
    respond_raw(
        stream,
        status,
        reason(status),
        &extra,
        body.as_bytes(),
        true,
    )
    .await;
}

/// Writes a complete response with any reason phrase (control characters become spaces),
/// `extra_headers` (each ending in CRLF), `Content-Length`, `Connection: close` and, when
/// `with_body`, the body; then shuts the socket's write side down.
pub(crate) async fn respond_raw<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &str,
    extra_headers: &str,
    body: &[u8],
    with_body: bool,
) {
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Writes a short text error.
pub(crate) async fn respond_error<S: AsyncWrite + Unpin>(stream: &mut S, status: u16, why: &str) {
    let body = format!("{status} {}: {why}\n", reason(status));
    respond(stream, status, "text/plain; charset=utf-8", "", &body).await;
}

/// Writes the 101 answer of a WebSocket upgrade, with the chosen subprotocol if any.
pub(crate) async fn respond_upgrade<S: AsyncWrite + Unpin>(
    stream: &mut S,
    accept_key: &str,
    protocol: Option<&str>,
) -> std::io::Result<()> {
    let protocol = protocol
        .filter(|p| !p.is_empty() && !p.chars().any(char::is_control))
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n{protocol}\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_head_and_keeps_the_rest() {
        let mut input: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\n0: odd\r\n\r\nabc";
        let head = read_head(&mut input, 1024).await.unwrap();
        assert_eq!((head.method.as_str(), head.target.as_str()), ("GET", "/x"));
        assert_eq!(head.header("host"), Some("a"));
        assert_eq!(head.header("0"), Some("odd"));
        assert_eq!(head.rest, b"abc");
    }

    #[tokio::test]
    async fn refuses_garbage_and_oversized_heads() {
        let mut input: &[u8] = b"\x00\x01\x02 garbage\r\n\r\n";
        assert!(matches!(
            read_head(&mut input, 1024).await,
            Err(HeadError::Malformed)
        ));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
        let mut input = long.as_bytes();
        assert!(matches!(
            read_head(&mut input, 1024).await,
            Err(HeadError::TooLarge)
        ));
    }
}
