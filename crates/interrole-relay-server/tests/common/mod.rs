//! Helpers shared by the integration tests: a real server on 127.0.0.1:0 and a
//! tokio-tungstenite client.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod cert;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use interrole_core::InstanceId;
use interrole_relay::frame::{Frame, FrameLimits, MessageBuilder, decode_message_bytes};
use interrole_relay::sas::SharedAccessSignature;
use interrole_relay::url::{Action, RelayAddress};
use interrole_relay_server::{Config, KeyConfig, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A generous bound, only to avoid hanging.
pub const LONG: Duration = Duration::from_secs(10);

pub const ROOT: (&str, &str) = ("root", "root-secret");
pub const LISTEN_ONLY: (&str, &str) = ("listener", "listen-secret");

pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        keys: vec![
            KeyConfig::parse_flag(&format!("{}={}", ROOT.0, ROOT.1)).unwrap(),
            KeyConfig::parse_flag(&format!("{}={}:listen", LISTEN_ONLY.0, LISTEN_ONLY.1)).unwrap(),
        ],
        ..Config::default()
    }
}

pub async fn start(config: Config) -> Server {
    Server::bind(config).await.unwrap()
}

pub fn token(addr: SocketAddr, path: &str, key: (&str, &str)) -> String {
    let resource = format!("http://{addr}/{path}");
    SharedAccessSignature::sign(key.0, key.1, &resource, 4_000_000_000).to_string()
}

pub fn target(action: Action, path: &str, id: &str, token: Option<String>) -> String {
    let mut a = RelayAddress::new(action, path).unwrap().with_id(id);
    if let Some(t) = token {
        a = a.with_token(t);
    }
    a.to_request_target()
}

pub type Ws = WebSocketStream<TcpStream>;

pub async fn connect_target(
    addr: SocketAddr,
    target: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}{target}");
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
    Ok(ws)
}

pub async fn connect(addr: SocketAddr, action: Action, path: &str, id: &str) -> Ws {
    let t = target(action, path, id, Some(token(addr, path, ROOT)));
    connect_target(addr, &t).await.unwrap()
}

/// A subscriber that has sent its RESUME.
pub async fn subscribe(
    addr: SocketAddr,
    path: &str,
    id: &str,
    replay_unlisted: bool,
    positions: &[(&str, u64)],
) -> Ws {
    let mut ws = connect(addr, Action::Subscribe, path, id).await;
    let positions = positions
        .iter()
        .map(|(s, q)| (InstanceId::new(*s).unwrap(), *q))
        .collect();
    send_frames(
        &mut ws,
        &[Frame::Resume {
            replay_unlisted,
            positions,
        }],
    )
    .await;
    ws
}

/// A subscriber that the relay has registered: its RESUME was answered with READY. Returns the
/// frames of the messages read until READY came, READY included: the MISSED frames of the resume
/// before it, and after it the first of what the subscriber asked to be replayed (the rest of
/// the replay, if any, is read with [`frames`]).
pub async fn subscribed(
    addr: SocketAddr,
    path: &str,
    id: &str,
    replay_unlisted: bool,
    positions: &[(&str, u64)],
) -> (Ws, Vec<Frame>) {
    let mut ws = subscribe(addr, path, id, replay_unlisted, positions).await;
    let mut seen = Vec::new();
    loop {
        match next(&mut ws).await {
            Seen::Frames(frames) => seen.extend(frames),
            Seen::Closed(c) => panic!("{id} closed with {c:?} before READY: {seen:?}"),
        }
        if seen.iter().any(|f| matches!(f, Frame::Ready { .. })) {
            return (ws, seen);
        }
    }
}

/// The frames after READY in what [`subscribed`] returned.
pub fn after_ready(seen: &[Frame]) -> Vec<Frame> {
    let at = seen
        .iter()
        .position(|f| matches!(f, Frame::Ready { .. }))
        .expect("no READY");
    seen[at + 1..].to_vec()
}

pub fn publish(seq: u64, target: Option<&str>, envelope: &[u8]) -> Frame {
    Frame::Publish {
        seq,
        target: target.map(|t| InstanceId::new(t).unwrap()),
        envelope: Bytes::copy_from_slice(envelope),
    }
}

pub async fn send_frames(ws: &mut Ws, frames: &[Frame]) {
    let mut b = MessageBuilder::new();
    for f in frames {
        b.push(f);
    }
    ws.send(Message::Binary(b.finish())).await.unwrap();
}

/// What a client sees next.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Frames(Vec<Frame>),
    Closed(Option<u16>),
}

/// The next data message's frames, or how the connection closed.
pub async fn next(ws: &mut Ws) -> Seen {
    loop {
        let m = tokio::time::timeout(LONG, ws.next())
            .await
            .expect("timed out");
        match m {
            Some(Ok(Message::Binary(b))) => {
                let limits = FrameLimits::default().with_max_message(64 * 1024 * 1024);
                return Seen::Frames(decode_message_bytes(&b, &limits).unwrap());
            }
            Some(Ok(Message::Close(c))) => return Seen::Closed(c.map(|c| c.code.into())),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Seen::Closed(None),
        }
    }
}

/// Reads frames until `n` have arrived.
pub async fn frames(ws: &mut Ws, n: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    while out.len() < n {
        match next(ws).await {
            Seen::Frames(f) => out.extend(f),
            Seen::Closed(c) => panic!("closed with {c:?} after {} frames: {out:?}", out.len()),
        }
    }
    out
}

/// Reads until the connection closes, returning the close code and the frames seen.
pub async fn until_closed(ws: &mut Ws) -> (Option<u16>, Vec<Frame>) {
    let mut out = Vec::new();
    loop {
        match next(ws).await {
            Seen::Frames(f) => out.extend(f),
            Seen::Closed(c) => return (c, out),
        }
    }
}

/// Reads ACK/REJECT frames until an ACK of at least `seq`.
pub async fn until_ack(ws: &mut Ws, seq: u64) -> Vec<Frame> {
    let mut out = Vec::new();
    loop {
        let f = frames(ws, 1).await;
        let done = f
            .iter()
            .any(|f| matches!(f, Frame::Ack { seq: s } if *s >= seq));
        out.extend(f);
        if done {
            return out;
        }
    }
}

pub fn event_of(f: &Frame) -> (String, u64, Vec<u8>) {
    match f {
        Frame::Event {
            sender,
            seq,
            envelope,
        } => (sender.to_string(), *seq, envelope.to_vec()),
        other => panic!("expected an EVENT, got {other:?}"),
    }
}

/// Sends a raw request and returns the status code (0 if the connection closed without one)
/// and the whole response.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(request).await;
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            // An upgrade stays open: stop at the end of its head.
            if out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(LONG, read).await.expect("timed out");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

pub fn upgrade_request(addr: SocketAddr, target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}
