//! A connection's handshake, before a service runs: TLS, the request head and its address, the
//! checks of a WebSocket upgrade and of a token, refusals, and the upgrade itself.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use interrole_relay::sas::{Access, KeySet, Right, SasError, SharedAccessSignature};
use interrole_relay::url::{Action, RelayAddress};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::conn::Conn;
use crate::ctx::Ctx;
use crate::http::{self, Head, HeadError};
use crate::metrics::Reason;
use crate::ws::{self, Ws};

/// Accepts TLS (when the port serves it) and reads the request head, both within the handshake
/// timeout. `None` when the connection failed or was answered (a malformed or oversized head).
pub(crate) async fn read_request(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: &Ctx,
) -> Option<(Conn, Head)> {
    let limits = &ctx.config.limits;
    // The TLS handshake and the request head share the handshake timeout.
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout();
    let mut stream = match &ctx.tls {
        None => Conn::Plain(tcp),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Err(_) => {
                ctx.metrics.reject(Reason::HandshakeTimeout);
                tracing::debug!(%peer, "TLS handshake timeout");
                return None;
            }
            Ok(Err(e)) => {
                ctx.metrics.reject(Reason::Tls);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return None;
            }
            Ok(Ok(tls)) => Conn::Tls(Box::new(tls)),
        },
    };
    let refusal = match tokio::time::timeout_at(
        deadline,
        http::read_head(&mut stream, limits.max_header_bytes),
    )
    .await
    {
        Err(_) => {
            ctx.metrics.reject(Reason::HandshakeTimeout);
            tracing::debug!(%peer, "handshake timeout");
            return None;
        }
        Ok(Err(HeadError::Io)) => return None,
        Ok(Err(HeadError::Malformed)) => Refusal::new(400, Reason::BadRequest, "malformed request"),
        Ok(Err(HeadError::TooLarge)) => {
            Refusal::new(431, Reason::BadRequest, "request head too large")
        }
        Ok(Ok(head)) => return Some((stream, head)),
    };
    refuse(&mut stream, peer, ctx, refusal).await;
    None
}

/// The relay address a request names.
pub(crate) fn address(head: &Head, ctx: &Ctx) -> Result<RelayAddress, Refusal> {
    if head.header("host").is_none_or(str::is_empty) {
        // HTTP/1.1 requires it (RFC 9112, 3.2), and a token's audience is checked against it.
        return Err(Refusal::new(
            400,
            Reason::BadRequest,
            "the Host header is missing",
        ));
    }
    RelayAddress::parse(&head.target, &ctx.config.limits.url_limits())
        .map_err(|e| Refusal::new(e.http_status(), Reason::BadAddress, e.to_string()))
}

/// A refused handshake: the status, the reason counted, and why (sent in the body).
#[derive(Debug)]
pub(crate) struct Refusal {
    status: u16,
    reason: Reason,
    why: String,
}

impl Refusal {
    pub(crate) fn new(status: u16, reason: Reason, why: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            why: why.into(),
        }
    }

    /// A token that does not verify: 401, or 403 for a token without the right.
    pub(crate) fn token(e: &SasError) -> Self {
        let status = e.http_status();
        let reason = if status == 401 {
            Reason::Unauthorized
        } else {
            Reason::Forbidden
        };
        Self::new(status, reason, e.to_string())
    }
}

/// Counts and answers a refused handshake.
pub(crate) async fn refuse(stream: &mut Conn, peer: SocketAddr, ctx: &Ctx, refusal: Refusal) {
    let Refusal {
        status,
        reason,
        why,
    } = refusal;
    ctx.metrics.reject(reason);
    tracing::debug!(%peer, status, why, "handshake refused");
    let extra = if status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    let body = format!("{status} {}: {why}\n", http::reason(status));
    http::respond(stream, status, "text/plain; charset=utf-8", extra, &body).await;
}

/// Checks the upgrade headers of a WebSocket handshake; returns the `Sec-WebSocket-Accept`
/// value.
pub(crate) fn upgrade_key(head: &Head) -> Result<String, Refusal> {
    let upgrade = head.method == "GET" && head.has_token("upgrade", "websocket");
    let key = head.header("sec-websocket-key").filter(|k| !k.is_empty());
    let Some(key) = key.filter(|_| upgrade) else {
        return Err(Refusal::new(
            400,
            Reason::BadRequest,
            "a WebSocket upgrade is required",
        ));
    };
    if head.header("sec-websocket-version") != Some("13") {
        return Err(Refusal::new(
            426,
            Reason::BadRequest,
            "WebSocket version 13 is required",
        ));
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// Answers a checked WebSocket handshake with 101 and takes the connection over; `rest` is what
/// was read past the request head. `None` when the answer cannot be written.
pub(crate) async fn upgrade(
    stream: Conn,
    rest: Vec<u8>,
    accept_key: &str,
    ctx: &Ctx,
) -> Option<Ws> {
    let mut stream = stream;
    http::respond_upgrade(&mut stream, accept_key, None)
        .await
        .ok()?;
    Some(ws::server_side(stream, rest, ctx.ws_config).await)
}

/// Verifies the handshake's token (`sb-hc-token`, else `ServiceBusAuthorization`, else, for
/// plain HTTP, `Authorization`); returns when it expires.
pub(crate) fn authorize(
    address: &RelayAddress,
    head: &Head,
    keys: &KeySet,
) -> Result<Option<Instant>, SasError> {
    let Some(right) = address.action().required_right() else {
        return Ok(None);
    };
    let token = address
        .token()
        .or_else(|| head.header("ServiceBusAuthorization"))
        .or_else(|| {
            (address.action() == Action::Http)
                .then(|| head.header("Authorization"))
                .flatten()
        })
        .ok_or_else(SasError::missing)?;
    verify_token(token, address.path(), right, head.header("host"), keys)
}

/// Verifies `token` for `right` on `path` (seen through `host`); returns when it expires.
pub(crate) fn verify_token(
    token: &str,
    path: &str,
    right: Right,
    host: Option<&str>,
    keys: &KeySet,
) -> Result<Option<Instant>, SasError> {
    let token = SharedAccessSignature::parse(token)?;
    let now = unix_now();
    let mut access = Access::new(path, right, now);
    if let Some(host) = host {
        access = access.with_host(host);
    }
    keys.verify(&token, &access)?;
    let left = token.expiry().saturating_sub(now);
    Ok(Instant::now().checked_add(Duration::from_secs(left)))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
