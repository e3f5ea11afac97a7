//! The listener: accepts connections, reads request heads, routes them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use interrole_core::InstanceId;
use interrole_relay::sas::{Access, KeySet, Right, SasError, SharedAccessSignature};
use interrole_relay::url::{Action, RelayAddress};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::config::Config;
use crate::conn::{self, Conn};
use crate::error::StartError;
use crate::hc;
use crate::http::{self, Head, HeadError};
use crate::metrics::{Kind, Metrics, Reason};
use crate::multicast::{self, ConnInfo, Hub, Outbox};

/// A running relay server.
///
/// Dropping it does not stop it: call [`Server::shutdown`] (or trigger a [`ShutdownHandle`] and
/// [`Server::wait`]).
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
}

/// Stops a [`Server`] gracefully: it stops accepting, closes WebSockets with 1001 and waits for
/// them up to the configured shutdown timeout.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    /// Starts the shutdown (idempotent).
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }
}

/// What every connection shares.
pub(crate) struct Ctx {
    pub(crate) config: Arc<Config>,
    pub(crate) keys: KeySet,
    pub(crate) metrics: Arc<Metrics>,
    hub: Hub,
    pub(crate) hc: hc::Relay,
    pub(crate) ws_config: WebSocketConfig,
    /// Set when the port serves TLS.
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Binds `config.listen` and starts serving.
    ///
    /// # Errors
    /// [`StartError::Bind`] when the address cannot be bound; otherwise as [`Server::start`].
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Its only await is binding the socket, and nothing is served
    /// before it returns: if the future is dropped, no server was started and nothing is left
    /// bound. `bind` may be called again.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Self::start(listener, config)
    }

    /// Starts serving on `listener` (which may be bound to port 0). Must be called within a
    /// tokio runtime.
    ///
    /// # Errors
    /// [`StartError::Config`] when a key's rights do not parse; a TLS error
    /// ([`StartError::TlsCertificate`], [`StartError::NoCertificate`], [`StartError::TlsKey`],
    /// [`StartError::Tls`]) when the TLS files do not load; [`StartError::LocalAddr`] when the
    /// listener has no local address.
    pub fn start(listener: TcpListener, config: Config) -> Result<Self, StartError> {
        let keys = config.key_set()?;
        let tls = config.tls.as_ref().map(conn::acceptor).transpose()?;
        let addr = listener.local_addr().map_err(StartError::LocalAddr)?;
        let limits = config.limits.frame_limits();
        // tungstenite's default read buffer is 128 KiB per connection, allocated up front: with
        // thousands of idle subscribers that is most of the relay's memory. Reads are copied out
        // of it into each message, so a small buffer only costs more read calls on busy sockets.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.limits.ws_read_buffer_bytes)
            .write_buffer_size(0)
            .max_message_size(Some(limits.max_message))
            .max_frame_size(Some(limits.max_message));
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let ctx = Arc::new(Ctx {
            hub: Hub::new(config.clone(), metrics.clone()),
            hc: hc::Relay::new(),
            config,
            keys,
            metrics: metrics.clone(),
            ws_config,
            tls,
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, ctx, rx));
        Ok(Self {
            addr,
            shutdown: ShutdownHandle { tx: Arc::new(tx) },
            metrics,
            task,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that shuts the server down.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Shuts down gracefully and waits until done.
    ///
    /// # Cancel safety
    ///
    /// The shutdown starts at the first poll and is not undone by dropping the future: the
    /// server still stops accepting, closes its connections and finishes on its own task. What
    /// is lost is the way to wait for it: `self` was moved into the call, so the shutdown cannot
    /// be awaited again. To bound the wait and still know when the server has stopped, keep a
    /// [`ShutdownHandle`] and await [`Server::wait`] on a task of its own. A `shutdown` future
    /// that is never polled does not shut anything down (dropping a `Server` does not stop it).
    pub async fn shutdown(self) {
        self.shutdown.shutdown();
        self.wait().await;
    }

    /// Waits until the server has stopped (after a [`ShutdownHandle::shutdown`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future changes nothing about the server: it keeps running, or keeps
    /// shutting down, as before. But `self` was moved into the call, so the server cannot be
    /// waited for again; take a [`ShutdownHandle`] first if it must still be stopped after an
    /// abandoned wait (for example one raced against a signal in `tokio::select!`).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = sweep.tick() => ctx.hub.sweep(),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                ctx.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
                if conns.len() >= ctx.config.limits.max_connections {
                    ctx.metrics.reject(Reason::Capacity);
                    if ctx.tls.is_some() {
                        // No plain-text answer on a TLS port: just close.
                        continue;
                    }
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            http::respond_error(&mut stream, 503, "too many connections"),
                        )
                        .await;
                    });
                    continue;
                }
                conns.spawn(connection(stream, peer, ctx.clone(), shutdown.clone()));
            }
        }
    }
    drop(listener);
    tracing::info!(connections = conns.len(), "shutting down");
    ctx.hub.close_all();
    let wait = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(ctx.config.shutdown_timeout(), wait)
        .await
        .is_err()
    {
        tracing::warn!(left = conns.len(), "shutdown timeout: dropping connections");
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// Counts a connection in a gauge while alive.
pub(crate) struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    pub(crate) fn new(g: &'a AtomicU64) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        Self(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves one accepted connection: its handshake, then, for a multicast connection, its life.
///
/// The handshake is a boxed future of its own, freed when it ends, and within it a Hybrid
/// Connections exchange is boxed again. A task's future is allocated once, as large as its
/// largest state, and kept until the task ends: were they inlined, every idle multicast
/// subscriber would keep the request head's 4 KiB read buffer and a Hybrid Connections request
/// body's 16 KiB one (an 18.4 KiB future instead of 1.6 KiB), and every multicast handshake would
/// allocate the latter (`docs/benchmarks.md`, "Where the memory went").
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    shutdown: watch::Receiver<bool>,
) {
    let Some((ws, admitted)) = Box::pin(handshake(tcp, peer, &ctx, &shutdown)).await else {
        return;
    };
    multicast_connection(ws, peer, admitted, &ctx, shutdown).await;
}

/// Everything before a multicast connection runs: TLS, the request head, the health and metrics
/// answers, Hybrid Connections (served here to their end), a multicast connection's admission and
/// upgrade. Returns the upgraded multicast connection, or `None` when the connection was
/// answered, refused or served.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<Ctx>,
    shutdown: &watch::Receiver<bool>,
) -> Option<(WebSocketStream<Conn>, Admitted)> {
    let gauge = Gauge::new(ctx.metrics.gauge(Kind::Handshake));
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
    let head = match tokio::time::timeout_at(
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
        Ok(Err(HeadError::Malformed)) => {
            ctx.metrics.reject(Reason::BadRequest);
            http::respond_error(&mut stream, 400, "malformed request").await;
            return None;
        }
        Ok(Err(HeadError::TooLarge)) => {
            ctx.metrics.reject(Reason::BadRequest);
            http::respond_error(&mut stream, 431, "request head too large").await;
            return None;
        }
        Ok(Ok(head)) => head,
    };
    let route = head.target.split('?').next().unwrap_or_default();
    if route == "/healthz" || route == "/metrics" {
        if head.method != "GET" && head.method != "HEAD" {
            http::respond_error(&mut stream, 405, "use GET").await;
        } else {
            let (ct, mut body) = if route == "/healthz" {
                ("text/plain; charset=utf-8", "ok\n".to_owned())
            } else {
                (
                    "text/plain; version=0.0.4; charset=utf-8",
                    ctx.metrics.render(),
                )
            };
            if head.method == "HEAD" {
                body.clear();
            }
            http::respond(&mut stream, 200, ct, "", &body).await;
        }
        return None;
    }
    if head.header("host").is_none_or(str::is_empty) {
        // HTTP/1.1 requires it (RFC 9112, 3.2), and a token's audience is checked against it.
        ctx.metrics.reject(Reason::BadRequest);
        http::respond_error(&mut stream, 400, "the Host header is missing").await;
        return None;
    }
    let address = match RelayAddress::parse(&head.target, &limits.url_limits()) {
        Ok(a) => a,
        Err(e) => {
            refuse(
                &mut stream,
                peer,
                ctx,
                (e.http_status(), Reason::BadAddress, e.to_string()),
            )
            .await;
            return None;
        }
    };
    if *shutdown.borrow() {
        http::respond_error(&mut stream, 503, "relay shutting down").await;
        return None;
    }
    if !address.action().is_multicast() {
        drop(gauge);
        // Boxed, so that a multicast handshake's future is not as large as this (see
        // `connection`).
        Box::pin(hc::serve(
            stream,
            peer,
            head,
            address,
            ctx,
            shutdown.clone(),
        ))
        .await;
        return None;
    }
    let admitted = match admit(&head, &address, ctx) {
        Ok(a) => a,
        Err(refusal) => {
            refuse(&mut stream, peer, ctx, refusal).await;
            return None;
        }
    };
    if http::respond_upgrade(&mut stream, &admitted.accept_key, None)
        .await
        .is_err()
    {
        return None;
    }
    let ws =
        WebSocketStream::from_partially_read(stream, head.rest, Role::Server, Some(ctx.ws_config))
            .await;
    drop(gauge);
    Some((ws, admitted))
}

/// A multicast connection after its upgrade: reads on this task, writes on a task of its own.
async fn multicast_connection(
    ws: WebSocketStream<Conn>,
    peer: SocketAddr,
    admitted: Admitted,
    ctx: &Ctx,
    shutdown: watch::Receiver<bool>,
) {
    let limits = &ctx.config.limits;
    let publisher = admitted.action == Action::Publish;
    let _gauge = Gauge::new(ctx.metrics.gauge(if publisher {
        Kind::Publisher
    } else {
        Kind::Subscriber
    }));
    tracing::debug!(%peer, path = %admitted.info.path, id = %admitted.info.id, publisher, "multicast connection");
    let (sink, stream) = ws.split();
    let outbox = Outbox::new();
    let idle = limits.idle_timeout();
    let writer = tokio::spawn(multicast::write_loop(
        sink,
        outbox.clone(),
        ctx.metrics.clone(),
        shutdown,
        idle / 2,
        limits.frame_limits(),
    ));
    if publisher {
        multicast::run_publisher(&ctx.hub, stream, &outbox, &admitted.info).await;
    } else {
        multicast::run_subscriber(&ctx.hub, stream, &outbox, &admitted.info).await;
    }
    outbox.request_close(interrole_relay::frame::CloseCode::Normal, "");
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        // A peer that reads nothing: drop its socket.
        writer.abort();
    }
}

struct Admitted {
    action: Action,
    accept_key: String,
    info: ConnInfo,
}

/// A refused handshake: the status, the reason counted, and why (sent in the body).
pub(crate) type Refusal = (u16, Reason, String);

/// Counts and answers a refused handshake.
pub(crate) async fn refuse(stream: &mut Conn, peer: SocketAddr, ctx: &Ctx, refusal: Refusal) {
    let (status, reason, why) = refusal;
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
        return Err((
            400,
            Reason::BadRequest,
            "a WebSocket upgrade is required".into(),
        ));
    };
    if head.header("sec-websocket-version") != Some("13") {
        return Err((
            426,
            Reason::BadRequest,
            "WebSocket version 13 is required".into(),
        ));
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// Maps a token failure to its refusal (401 or 403).
pub(crate) fn token_refusal(e: &SasError) -> Refusal {
    let status = e.http_status();
    let reason = if status == 401 {
        Reason::Unauthorized
    } else {
        Reason::Forbidden
    };
    (status, reason, e.to_string())
}

/// Checks a multicast handshake: upgrade headers, id, token.
fn admit(head: &Head, address: &RelayAddress, ctx: &Ctx) -> Result<Admitted, Refusal> {
    let action = address.action();
    let accept_key = upgrade_key(head)?;
    let id = address
        .id()
        .and_then(|id| InstanceId::new(id).ok())
        .ok_or_else(|| {
            (
                400,
                Reason::BadAddress,
                "sb-hc-id must be an instance id".into(),
            )
        })?;
    let expires = authorize(address, head, &ctx.keys).map_err(|e| token_refusal(&e))?;
    Ok(Admitted {
        action,
        accept_key,
        info: ConnInfo {
            path: address.path().to_owned(),
            id,
            expires,
        },
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection task's future is allocated once, as large as its largest state, and kept
    /// for the connection's life: what only the handshake needs must not be part of it (see
    /// [`connection`]). Were the handshake inlined, it would be over 4 KiB (the request head's
    /// read buffer alone is 4 KiB); were a Hybrid Connections exchange inlined into the
    /// handshake, that would be over 16 KiB (its request body buffer).
    #[tokio::test]
    async fn connection_futures_stay_under_4_kib_and_handshakes_under_8() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(Config::default());
        let metrics = Arc::new(Metrics::default());
        let ctx = Arc::new(Ctx {
            hub: Hub::new(config.clone(), metrics.clone()),
            hc: hc::Relay::new(),
            keys: config.key_set().unwrap(),
            config,
            metrics,
            ws_config: WebSocketConfig::default(),
            tls: None,
        });
        let (_tx, shutdown) = watch::channel(false);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let handshake = handshake(tcp, addr, &ctx, &shutdown);
        let handshake_bytes = std::mem::size_of_val(&handshake);
        drop(handshake);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connection = connection(tcp, addr, ctx.clone(), shutdown.clone());
        let connection_bytes = std::mem::size_of_val(&connection);
        drop(connection);
        assert!(
            connection_bytes <= 4096,
            "a connection task's future is {connection_bytes} bytes: is the handshake inlined?"
        );
        assert!(
            handshake_bytes <= 8192,
            "a handshake future is {handshake_bytes} bytes: is a Hybrid Connections exchange inlined?"
        );
    }
}
