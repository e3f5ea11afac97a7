//! The server: binds, accepts connections and hands each to its service: the handshake
//! ([`handshake`]), then Hybrid Connections ([`hc`]) or a multicast session
//! ([`multicast`]), or the health and metrics answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::Config;
use crate::conn::{self, Conn};
use crate::ctx::Ctx;
use crate::error::StartError;
use crate::handshake;
use crate::hc::{self, Directory};
use crate::http::{self, Head};
use crate::metrics::{Gauge, Kind, Metrics, Reason};
use crate::multicast::{self, Admitted, PathTable};
use crate::ws::Ws;

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

/// What every connection task shares: the handshake's context and each service's state.
struct State {
    ctx: Ctx,
    /// The multicast paths.
    paths: PathTable,
    /// The Hybrid Connections listeners and what waits for them.
    directory: Directory,
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
        let state = Arc::new(State {
            paths: PathTable::new(config.clone(), metrics.clone()),
            directory: Directory::new(),
            ctx: Ctx {
                config,
                keys,
                metrics: metrics.clone(),
                ws_config,
                tls,
            },
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, state, rx));
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

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = &state.ctx;
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
            _ = sweep.tick() => state.paths.sweep(),
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
                conns.spawn(connection(stream, peer, state.clone(), shutdown.clone()));
            }
        }
    }
    drop(listener);
    tracing::info!(connections = conns.len(), "shutting down");
    state.paths.close_all();
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
    state: Arc<State>,
    shutdown: watch::Receiver<bool>,
) {
    let Some((ws, admitted)) = Box::pin(dispatch(tcp, peer, &state, &shutdown)).await else {
        return;
    };
    multicast::run(ws, peer, admitted, &state.paths, shutdown).await;
}

/// Everything before a multicast connection runs: the handshake, the health and metrics
/// answers, Hybrid Connections (served here to their end), a multicast connection's admission
/// and upgrade. Returns the upgraded multicast connection, or `None` when the connection was
/// answered, refused or served.
async fn dispatch(
    tcp: TcpStream,
    peer: SocketAddr,
    state: &State,
    shutdown: &watch::Receiver<bool>,
) -> Option<(Ws, Admitted)> {
    let ctx = &state.ctx;
    let gauge = Gauge::new(&ctx.metrics, Kind::Handshake);
    let (mut stream, head) = handshake::read_request(tcp, peer, ctx).await?;
    let route = head.target.split('?').next().unwrap_or_default();
    if route == "/healthz" || route == "/metrics" {
        endpoint(&mut stream, &head, route, &ctx.metrics).await;
        return None;
    }
    let address = match handshake::address(&head, ctx) {
        Ok(a) => a,
        Err(refusal) => {
            handshake::refuse(&mut stream, peer, ctx, refusal).await;
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
        let directory = &state.directory;
        Box::pin(hc::serve(
            stream,
            peer,
            head,
            address,
            ctx,
            directory,
            shutdown.clone(),
        ))
        .await;
        return None;
    }
    let admitted = match multicast::admit(&head, &address, ctx) {
        Ok(a) => a,
        Err(refusal) => {
            handshake::refuse(&mut stream, peer, ctx, refusal).await;
            return None;
        }
    };
    let ws = handshake::upgrade(stream, head.rest, &admitted.accept_key, ctx).await?;
    drop(gauge);
    Some((ws, admitted))
}

/// Answers `GET /healthz` and `GET /metrics` (and `HEAD`).
async fn endpoint(stream: &mut Conn, head: &Head, route: &str, metrics: &Metrics) {
    if head.method != "GET" && head.method != "HEAD" {
        http::respond_error(stream, 405, "use GET").await;
        return;
    }
    let (ct, mut body) = if route == "/healthz" {
        ("text/plain; charset=utf-8", "ok\n".to_owned())
    } else {
        ("text/plain; version=0.0.4; charset=utf-8", metrics.render())
    };
    if head.method == "HEAD" {
        body.clear();
    }
    http::respond(stream, 200, ct, "", &body).await;
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
        let state = Arc::new(State {
            paths: PathTable::new(config.clone(), metrics.clone()),
            directory: Directory::new(),
            ctx: Ctx {
                keys: config.key_set().unwrap(),
                config,
                metrics,
                ws_config: WebSocketConfig::default(),
                tls: None,
            },
        });
        let (_tx, shutdown) = watch::channel(false);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let handshake = dispatch(tcp, addr, &state, &shutdown);
        let handshake_bytes = std::mem::size_of_val(&handshake);
        drop(handshake);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connection = connection(tcp, addr, state.clone(), shutdown.clone());
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
