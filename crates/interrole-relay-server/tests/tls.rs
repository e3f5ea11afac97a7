//! The relay over TLS: multicast and Hybrid Connections over `wss://`, plain text and silence
//! on the TLS port dropped.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::tls::{SelfSigned, TlsWs, connect_wss, connect_wss_url, tls_stream};
use common::*;
use futures::{SinkExt, StreamExt};
use interrole_core::InstanceId;
use interrole_relay::control::{ControlMessage, DEFAULT_MAX_CONTROL_LEN};
use interrole_relay::frame::{Frame, FrameLimits, MessageBuilder, decode_message_bytes};
use interrole_relay::url::{Action, RelayAddress};
use interrole_relay_server::metrics::Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn send(ws: &mut TlsWs, frames: &[Frame]) {
    let mut b = MessageBuilder::new();
    for f in frames {
        b.push(f);
    }
    ws.send(Message::Binary(b.finish())).await.unwrap();
}

/// The next data message, skipping pings.
async fn data(ws: &mut TlsWs) -> Message {
    loop {
        let m = tokio::time::timeout(LONG, ws.next())
            .await
            .expect("timed out")
            .expect("closed")
            .expect("failed");
        if matches!(m, Message::Text(_) | Message::Binary(_)) {
            return m;
        }
    }
}

async fn next_frames(ws: &mut TlsWs) -> Vec<Frame> {
    match data(ws).await {
        Message::Binary(b) => decode_message_bytes(&b, &FrameLimits::default()).unwrap(),
        other => panic!("expected frames, got {other:?}"),
    }
}

#[tokio::test]
async fn multicast_works_over_tls() {
    let cert = SelfSigned::new();
    let server = start(cert.config()).await;
    let addr = server.local_addr();
    let tls = cert.connector();
    let wss = |action, id: &str| {
        let t = target(action, "orders", id, Some(token(addr, "orders", ROOT)));
        let tls = tls.clone();
        async move { connect_wss(addr, &tls, &t).await.unwrap() }
    };
    let mut sub = wss(Action::Subscribe, "sub-1").await;
    send(
        &mut sub,
        &[Frame::Resume {
            replay_unlisted: false,
            positions: Vec::new(),
        }],
    )
    .await;
    let mut publisher = wss(Action::Publish, "pub-1").await;
    // Until the subscriber's RESUME is in, an event may be missed: publish until one arrives.
    let event = async {
        let mut seq = 0;
        loop {
            seq += 1;
            let f = Frame::Publish {
                seq,
                target: None,
                envelope: Bytes::from_static(b"over tls"),
            };
            send(&mut publisher, &[f]).await;
            if let Ok(frames) =
                tokio::time::timeout(Duration::from_millis(200), next_frames(&mut sub)).await
            {
                if let Some(event) = frames
                    .into_iter()
                    .find(|f| matches!(f, Frame::Event { .. }))
                {
                    return event;
                }
            }
        }
    };
    let event = tokio::time::timeout(LONG, event).await.expect("timed out");
    match &event {
        Frame::Event {
            sender, envelope, ..
        } => {
            assert_eq!(*sender, InstanceId::new("pub-1").unwrap());
            assert_eq!(&envelope[..], b"over tls");
        }
        other => panic!("expected an EVENT, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn hybrid_connections_rendezvous_says_wss() {
    let cert = SelfSigned::new();
    let server = start(cert.config()).await;
    let addr = server.local_addr();
    let tls = cert.connector();
    let listen = RelayAddress::new(Action::Listen, "hyco")
        .unwrap()
        .with_token(token(addr, "hyco", ROOT))
        .to_request_target();
    let mut control = connect_wss(addr, &tls, &listen).await.unwrap();
    let connect = RelayAddress::new(Action::Connect, "hyco")
        .unwrap()
        .with_token(token(addr, "hyco", ROOT))
        .to_request_target();
    let sender_tls = tls.clone();
    let sender = tokio::spawn(async move { connect_wss(addr, &sender_tls, &connect).await });
    let accept = match data(&mut control).await {
        Message::Text(t) => match ControlMessage::parse(t.as_str(), DEFAULT_MAX_CONTROL_LEN) {
            Ok(ControlMessage::Accept(a)) => a,
            other => panic!("expected an accept, got {other:?}"),
        },
        other => panic!("expected an accept, got {other:?}"),
    };
    assert!(
        accept
            .address
            .starts_with(&format!("wss://{addr}/$hc/hyco?")),
        "{}",
        accept.address
    );
    let mut rendezvous = connect_wss_url(addr, &tls, &accept.address).await.unwrap();
    let mut sender = tokio::time::timeout(LONG, sender)
        .await
        .expect("timed out")
        .unwrap()
        .unwrap();
    sender.send(Message::text("ping")).await.unwrap();
    assert_eq!(data(&mut rendezvous).await, Message::text("ping"));
    rendezvous.send(Message::text("pong")).await.unwrap();
    assert_eq!(data(&mut sender).await, Message::text("pong"));
    server.shutdown().await;
}

#[tokio::test]
async fn plain_text_on_the_tls_port_is_dropped_and_good_clients_still_work() {
    let cert = SelfSigned::new();
    let server = start(cert.config()).await;
    let addr = server.local_addr();
    let (status, text) = raw_request(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 0, "{text}");
    assert!(!text.contains("HTTP/1.1"), "{text}");
    let (status, _) = raw_request(addr, &upgrade_request(addr, "/$hc/x", "")).await;
    assert_eq!(status, 0);
    assert_eq!(server.metrics().rejections(Reason::Tls), 2);

    // A good client, meanwhile and after: plain HTTP over TLS.
    let tls = cert.connector();
    let mut stream = tls_stream(addr, &tls).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(LONG, stream.read_to_end(&mut out))
        .await
        .expect("timed out")
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok\n"), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_is_bounded_by_the_handshake_timeout() {
    let cert = SelfSigned::new();
    let mut config = cert.config();
    config.limits.handshake_timeout_secs = 1;
    let server = start(config).await;
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(LONG, tcp.read(&mut buf))
        .await
        .expect("the silent connection stayed open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(server.metrics().rejections(Reason::HandshakeTimeout), 1);
    server.shutdown().await;
}
