//! One multicast connection: its admission, then its life after the upgrade, a publisher's
//! PUBLISH frames or a subscriber's RESUME, with the writer on a task of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use interrole_core::InstanceId;
use interrole_relay::frame::{CloseCode, Frame, FrameLimits, MessageReader};
use interrole_relay::url::{Action, RelayAddress};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{self, Message};

use super::outbox::{Close, Outbox, write_loop};
use super::paths::{Allowance, Full, Path, PathTable, Published};
use crate::ctx::Ctx;
use crate::handshake::{self, Refusal};
use crate::http::Head;
use crate::metrics::{Gauge, Kind, Metrics, Reason};
use crate::wait::{self, CLOSE_GRACE};
use crate::ws::Ws;

/// A multicast handshake that passed its checks.
pub(crate) struct Admitted {
    action: Action,
    /// The `Sec-WebSocket-Accept` value of the upgrade.
    pub(crate) accept_key: String,
    info: ConnInfo,
}

/// Checks a multicast handshake: upgrade headers, id, token.
pub(crate) fn admit(head: &Head, address: &RelayAddress, ctx: &Ctx) -> Result<Admitted, Refusal> {
    let action = address.action();
    let accept_key = handshake::upgrade_key(head)?;
    let id = address
        .id()
        .and_then(|id| InstanceId::new(id).ok())
        .ok_or_else(|| Refusal::new(400, Reason::BadAddress, "sb-hc-id must be an instance id"))?;
    let expires = handshake::authorize(address, head, &ctx.keys).map_err(|e| Refusal::token(&e))?;
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

/// A multicast connection after its upgrade: reads on this task, writes on a task of its own.
pub(crate) async fn run(
    ws: Ws,
    peer: SocketAddr,
    admitted: Admitted,
    table: &PathTable,
    shutdown: watch::Receiver<bool>,
) {
    let limits = &table.config.limits;
    let publisher = admitted.action == Action::Publish;
    let _gauge = Gauge::new(
        &table.metrics,
        if publisher {
            Kind::Publisher
        } else {
            Kind::Subscriber
        },
    );
    tracing::debug!(%peer, path = %admitted.info.path, id = %admitted.info.id, publisher, "multicast connection");
    let (sink, stream) = ws.split();
    let outbox = Outbox::new();
    let idle = limits.idle_timeout();
    let writer = tokio::spawn(write_loop(
        sink,
        outbox.clone(),
        table.metrics.clone(),
        shutdown,
        idle / 2,
        limits.frame_limits(),
    ));
    if publisher {
        run_publisher(table, stream, &outbox, &admitted.info).await;
    } else {
        run_subscriber(table, stream, &outbox, &admitted.info).await;
    }
    outbox.request_close(CloseCode::Normal, "");
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        // A peer that reads nothing: drop its socket.
        writer.abort();
    }
}

/// What a multicast connection needs besides its socket.
pub(crate) struct ConnInfo {
    pub(crate) path: String,
    pub(crate) id: InstanceId,
    /// When the token expires (close 1008 then).
    pub(crate) expires: Option<Instant>,
}

/// What the reader saw next.
enum Next {
    Message(Bytes),
    Stop,
}

/// Reads the next binary message; text, errors, idleness and expiry close the connection.
async fn next_binary<R>(
    stream: &mut R,
    outbox: &Outbox,
    close_rx: &mut watch::Receiver<Option<Close>>,
    idle: Duration,
    expires: Option<Instant>,
    metrics: &Metrics,
    info: &ConnInfo,
) -> Next
where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::select! {
            _ = close_rx.wait_for(Option::is_some) => return Next::Stop,
            () = wait::until(expires) => {
                outbox.request_close(CloseCode::PolicyViolation, "token expired");
                return Next::Stop;
            }
            m = tokio::time::timeout(idle, stream.next()) => m,
        };
        match msg {
            Err(_) => {
                outbox.request_close(CloseCode::GoingAway, "idle timeout");
                return Next::Stop;
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => {
                outbox.request_close(CloseCode::Normal, "");
                return Next::Stop;
            }
            Ok(Some(Err(e))) => {
                let code = match e {
                    tungstenite::Error::Capacity(_) => CloseCode::MessageTooBig,
                    tungstenite::Error::Protocol(_) => CloseCode::ProtocolError,
                    _ => CloseCode::Normal,
                };
                if code != CloseCode::Normal {
                    violation(metrics, info, code, &e.to_string());
                }
                outbox.request_close(code, e.to_string());
                return Next::Stop;
            }
            Ok(Some(Ok(Message::Binary(b)))) => {
                metrics
                    .bytes_in
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                return Next::Message(b);
            }
            Ok(Some(Ok(Message::Text(_)))) => {
                let why = "text messages are not used";
                violation(metrics, info, CloseCode::UnsupportedData, why);
                outbox.request_close(CloseCode::UnsupportedData, why);
                return Next::Stop;
            }
            Ok(Some(Ok(_))) => {} // ping, pong
        }
    }
}

/// Most REJECT frames waiting for a publisher that does not read them.
const MAX_PENDING_REJECTS: usize = 65_536;

/// Runs a publisher connection until it closes.
async fn run_publisher<R>(table: &PathTable, mut stream: R, outbox: &Arc<Outbox>, info: &ConnInfo)
where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let limits = table.config.limits.frame_limits();
    let path = match table.add_publisher(&info.path, &info.id, outbox) {
        Ok(p) => p,
        Err(Full(why)) => {
            table.metrics.reject(Reason::Capacity);
            outbox.request_close(CloseCode::TryAgainLater, why);
            return;
        }
    };
    let mut allowance = Allowance::new(table.config.limits.max_publish_rate);
    let mut close_rx = outbox.close_requests();
    let idle = table.config.limits.idle_timeout();
    while let Next::Message(bytes) = next_binary(
        &mut stream,
        outbox,
        &mut close_rx,
        idle,
        info.expires,
        &table.metrics,
        info,
    )
    .await
    {
        if let Err((code, why)) =
            publish_message(table, &path, info, outbox, &bytes, &limits, &mut allowance)
        {
            violation(&table.metrics, info, code, &why);
            outbox.request_close(code, why);
            break;
        }
    }
    table.remove(&info.path, &info.id, outbox, true);
}

/// Handles one publisher message: decoded and checked whole first, so that a message refused
/// for a decoding error or a limit has none of its frames acted on.
fn publish_message(
    table: &PathTable,
    path: &Path,
    info: &ConnInfo,
    outbox: &Outbox,
    bytes: &Bytes,
    limits: &FrameLimits,
    allowance: &mut Allowance,
) -> Result<(), Close> {
    let reader =
        MessageReader::shared(bytes, limits).map_err(|e| (e.close_code(), e.to_string()))?;
    outbox.peer_version(reader.version());
    let frames = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (e.close_code(), e.to_string()))?;
    if let Some(other) = frames.iter().find(|f| !matches!(f, Frame::Publish { .. })) {
        return Err((
            CloseCode::ProtocolError,
            format!("{} frame on a publisher connection", other.frame_type()),
        ));
    }
    let mut handled = 0;
    let mut pending = 0;
    for frame in frames {
        let Frame::Publish {
            seq,
            target,
            envelope,
        } = frame
        else {
            continue;
        };
        handled = handled.max(seq);
        if let Published::Rejected(code, reason) =
            table.publish(path, &info.id, seq, target, &envelope, allowance)
        {
            pending = outbox.push_control(Frame::Reject { seq, code, reason });
        }
    }
    if pending > MAX_PENDING_REJECTS {
        return Err((
            CloseCode::PolicyViolation,
            "not reading acknowledgements".into(),
        ));
    }
    outbox.set_ack(handled);
    Ok(())
}

/// A connection closed for breaking the protocol: counted, and logged (at most
/// [`VIOLATIONS_LOGGED_PER_SECOND`] lines a second; the lines after say how many were not).
fn violation(metrics: &Metrics, info: &ConnInfo, code: CloseCode, why: &str) {
    metrics.reject(Reason::Protocol);
    static SECOND: AtomicU64 = AtomicU64::new(0);
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = START.elapsed().as_secs() + 1;
    if SECOND.swap(now, Ordering::AcqRel) != now {
        LOGGED.store(0, Ordering::Release);
    }
    if LOGGED.fetch_add(1, Ordering::AcqRel) >= VIOLATIONS_LOGGED_PER_SECOND {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
    tracing::warn!(
        path = %info.path,
        instance = %info.id,
        code = code.code(),
        suppressed,
        "protocol violation, connection closed: {why}"
    );
}

/// At most this many protocol violations are logged per second.
const VIOLATIONS_LOGGED_PER_SECOND: u64 = 20;

static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// Runs a subscriber connection until it closes: RESUME first, then only reads to notice the
/// close (a subscriber sends nothing else).
async fn run_subscriber<R>(table: &PathTable, mut stream: R, outbox: &Arc<Outbox>, info: &ConnInfo)
where
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let limits = table.config.limits.frame_limits();
    let mut close_rx = outbox.close_requests();
    let idle = table.config.limits.idle_timeout();
    let first = tokio::time::timeout(
        table.config.limits.resume_timeout(),
        next_binary(
            &mut stream,
            outbox,
            &mut close_rx,
            idle,
            info.expires,
            &table.metrics,
            info,
        ),
    )
    .await;
    let bytes = match first {
        Err(_) => {
            let why = "no RESUME in time";
            violation(&table.metrics, info, CloseCode::ProtocolError, why);
            outbox.request_close(CloseCode::ProtocolError, why);
            return;
        }
        Ok(Next::Stop) => return,
        Ok(Next::Message(b)) => b,
    };
    let (replay_unlisted, positions) = match read_resume(&bytes, &limits) {
        Ok(r) => r,
        Err((code, why)) => {
            violation(&table.metrics, info, code, &why);
            outbox.request_close(code, why);
            return;
        }
    };
    // A version 2 RESUME is answered with READY, and the connection written in version 2.
    outbox.peer_version(
        bytes
            .first()
            .copied()
            .unwrap_or(interrole_relay::frame::MIN_VERSION),
    );
    if let Err(Full(why)) =
        table.add_subscriber(&info.path, &info.id, outbox, replay_unlisted, &positions)
    {
        table.metrics.reject(Reason::Capacity);
        outbox.request_close(CloseCode::TryAgainLater, why);
        return;
    }
    // A subscriber sends nothing after its RESUME: reading only notices the close.
    if let Next::Message(bytes) = next_binary(
        &mut stream,
        outbox,
        &mut close_rx,
        idle,
        info.expires,
        &table.metrics,
        info,
    )
    .await
    {
        let why = match interrole_relay::frame::decode_message_bytes(&bytes, &limits) {
            Err(e) => (e.close_code(), e.to_string()),
            Ok(_) => (
                CloseCode::ProtocolError,
                "RESUME repeated, or a frame in the wrong direction".to_owned(),
            ),
        };
        violation(&table.metrics, info, why.0, &why.1);
        outbox.request_close(why.0, why.1);
    }
    table.remove(&info.path, &info.id, outbox, false);
}

type Positions = Vec<(InstanceId, u64)>;

/// Reads a subscriber's first message: exactly one RESUME frame.
fn read_resume(bytes: &Bytes, limits: &FrameLimits) -> Result<(bool, Positions), Close> {
    let frames = interrole_relay::frame::decode_message_bytes(bytes, limits)
        .map_err(|e| (e.close_code(), e.to_string()))?;
    let mut frames = frames.into_iter();
    match (frames.next(), frames.next()) {
        (
            Some(Frame::Resume {
                replay_unlisted,
                positions,
            }),
            None,
        ) => Ok((replay_unlisted, positions)),
        (Some(Frame::Resume { .. }), Some(f)) => Err((
            CloseCode::ProtocolError,
            format!("{} frame after RESUME", f.frame_type()),
        )),
        (f, _) => Err((
            CloseCode::ProtocolError,
            format!(
                "the first frame must be RESUME, not {}",
                f.map_or("nothing".to_owned(), |f| f.frame_type().to_string())
            ),
        )),
    }
}
