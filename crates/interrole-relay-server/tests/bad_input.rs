//! Refused handshakes and bad input: each bad connection is refused or closed alone.

mod common;

use common::*;
use futures::SinkExt;
use interrole_relay::frame::{Frame, RejectCode};
use interrole_relay::url::Action;
use interrole_relay_server::metrics::Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn handshakes_are_refused_with_the_documented_status() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let no_token = target(Action::Subscribe, "orders", "s", None);
    let (status, text) = raw_request(addr, &upgrade_request(addr, &no_token, "")).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("Connection: close"), "{text}");

    let wrong_key = token(addr, "orders", (ROOT.0, "not-the-key"));
    let t = target(Action::Subscribe, "orders", "s", Some(wrong_key));
    assert_eq!(
        raw_request(addr, &upgrade_request(addr, &t, "")).await.0,
        401
    );

    let unknown_key = token(addr, "orders", ("nobody", "x"));
    let t = target(Action::Subscribe, "orders", "s", Some(unknown_key));
    assert_eq!(
        raw_request(addr, &upgrade_request(addr, &t, "")).await.0,
        401
    );

    // A listen-only key may subscribe but not publish.
    let listen = token(addr, "orders", LISTEN_ONLY);
    let t = target(Action::Publish, "orders", "p", Some(listen.clone()));
    assert_eq!(
        raw_request(addr, &upgrade_request(addr, &t, "")).await.0,
        403
    );
    let t = target(Action::Subscribe, "orders", "s", Some(listen.clone()));
    assert!(connect_target(addr, &t).await.is_ok());

    // The token in the ServiceBusAuthorization header.
    let t = target(Action::Subscribe, "orders", "s2", None);
    let header = format!("ServiceBusAuthorization: {listen}\r\n");
    assert_eq!(
        raw_request(addr, &upgrade_request(addr, &t, &header))
            .await
            .0,
        101
    );

    // A token for another path.
    let other = token(addr, "elsewhere", ROOT);
    let t = target(Action::Subscribe, "orders", "s", Some(other));
    assert_eq!(
        raw_request(addr, &upgrade_request(addr, &t, "")).await.0,
        403
    );

    // Malformed targets.
    for bad in [
        "/$hc/a//b?sb-hc-action=subscribe&sb-hc-id=s",
        "/$hc/orders?sb-hc-action=fly&sb-hc-id=s",
        "/$hc/orders?sb-hc-action=subscribe&sb-hc-id=bad%20id",
        "/$hc/orders?sb-hc-action=subscribe",
        "/$hc/or%zzders?sb-hc-action=subscribe&sb-hc-id=s",
    ] {
        assert_eq!(
            raw_request(addr, &upgrade_request(addr, bad, "")).await.0,
            400,
            "{bad}"
        );
    }
    // Hybrid Connections listeners and plain HTTP senders need a token too; an unknown request
    // rendezvous is 404.
    let listen_hc = "/$hc/orders?sb-hc-action=listen";
    assert_eq!(
        raw_request(addr, &upgrade_request(addr, listen_hc, ""))
            .await
            .0,
        401
    );
    let (status, _) = raw_request(addr, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 401);
    let request_hc = "/$hc/orders?sb-hc-action=request&sb-hc-id=1";
    assert_eq!(
        raw_request(addr, &upgrade_request(addr, request_hc, ""))
            .await
            .0,
        404
    );
    // A multicast address without an upgrade.
    let t = target(
        Action::Subscribe,
        "orders",
        "s",
        Some(token(addr, "orders", ROOT)),
    );
    let plain = format!("GET {t} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(raw_request(addr, plain.as_bytes()).await.0, 400);
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_and_stalled_handshakes_are_dropped_while_others_work() {
    let mut c = config();
    c.limits.handshake_timeout_secs = 1;
    let server = start(c).await;
    let addr = server.local_addr();

    // Garbage: answered 400 and closed.
    let (status, text) = raw_request(addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await;
    assert_eq!(status, 400, "{text:?}");

    // An oversized head: refused.
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(40 * 1024));
    assert_eq!(raw_request(addr, big.as_bytes()).await.0, 431);

    // A handshake that never finishes is dropped by the handshake timeout (1 s here).
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    // Meanwhile another client works.
    let (mut sub, _) = subscribed(addr, "live", "s", false, &[]).await;
    let mut p = connect(addr, Action::Publish, "live", "p").await;
    send_frames(&mut p, &[publish(1, None, b"ok")]).await;
    assert_eq!(event_of(&frames(&mut sub, 1).await[0]).2, b"ok");

    // Waited for no longer than half the default timeout: a server that ignored the setting
    // would keep the connection past it.
    let default = interrole_relay_server::Config::default()
        .limits
        .handshake_timeout();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(default / 2, stalled.read(&mut buf))
        .await
        .expect("the stalled handshake was not dropped by its timeout");
    assert_eq!(n.unwrap_or(0), 0, "closed without an answer");
    assert_eq!(
        server.metrics().rejections(Reason::HandshakeTimeout),
        1,
        "dropped, but not by the handshake timeout"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_envelopes_are_rejected_and_oversized_frames_close() {
    let mut c = config();
    c.limits.max_envelope_bytes = 1000;
    let server = start(c).await;
    let addr = server.local_addr();
    let mut p = connect(addr, Action::Publish, "big", "p").await;
    send_frames(
        &mut p,
        &[publish(1, None, &[0; 1001]), publish(2, None, &[0; 1000])],
    )
    .await;
    let answer = until_ack(&mut p, 2).await;
    assert!(
        matches!(
            &answer[0],
            Frame::Reject {
                seq: 1,
                code: RejectCode::TooLarge,
                ..
            }
        ),
        "{answer:?}"
    );
    // Over the frame limit (envelope + overhead): the connection is closed with 1009.
    send_frames(&mut p, &[publish(3, None, &[0; 4000])]).await;
    assert_eq!(until_closed(&mut p).await.0, Some(1009));
    server.shutdown().await;
}

#[tokio::test]
async fn protocol_violations_close_only_the_offender() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let (mut sub, _) = subscribed(addr, "pv", "s", false, &[]).await;

    // Another version: 4002.
    let mut p = connect(addr, Action::Publish, "pv", "bad1").await;
    p.send(Message::Binary(vec![3, 1, 0].into())).await.unwrap();
    assert_eq!(until_closed(&mut p).await.0, Some(4002));
    // Text: 1003.
    let mut p = connect(addr, Action::Publish, "pv", "bad2").await;
    p.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(until_closed(&mut p).await.0, Some(1003));
    // A truncated frame: 1002.
    let mut p = connect(addr, Action::Publish, "pv", "bad3").await;
    p.send(Message::Binary(vec![1, 1, 9, 1].into()))
        .await
        .unwrap();
    assert_eq!(until_closed(&mut p).await.0, Some(1002));
    // A subscriber whose first frame is not RESUME: 1002.
    let mut s = connect(addr, Action::Subscribe, "pv", "bad4").await;
    send_frames(&mut s, &[publish(1, None, b"x")]).await;
    assert_eq!(until_closed(&mut s).await.0, Some(1002));
    // A repeated RESUME: 1002.
    let mut s = subscribe(addr, "pv", "bad5", false, &[]).await;
    send_frames(
        &mut s,
        &[Frame::Resume {
            replay_unlisted: false,
            positions: vec![],
        }],
    )
    .await;
    assert_eq!(until_closed(&mut s).await.0, Some(1002));

    // The good subscriber still works.
    let mut p = connect(addr, Action::Publish, "pv", "good").await;
    send_frames(&mut p, &[publish(1, None, b"fine")]).await;
    assert_eq!(
        event_of(&frames(&mut sub, 1).await[0]),
        ("good".into(), 1, b"fine".to_vec())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_without_resume_is_closed() {
    let mut c = config();
    c.limits.resume_timeout_secs = 1;
    let server = start(c).await;
    let addr = server.local_addr();
    let mut s = connect(addr, Action::Subscribe, "quiet", "s").await;
    assert_eq!(until_closed(&mut s).await.0, Some(1002));
    server.shutdown().await;
}

#[tokio::test]
async fn over_the_subscriber_limit_closes_with_1013() {
    let mut c = config();
    c.limits.max_subscribers_per_path = 2;
    let server = start(c).await;
    let addr = server.local_addr();
    let _a = subscribed(addr, "cap", "a", false, &[]).await;
    let _b = subscribed(addr, "cap", "b", false, &[]).await;
    let mut third = subscribe(addr, "cap", "c", false, &[]).await;
    assert_eq!(until_closed(&mut third).await.0, Some(1013));
    // Replacing an existing instance is not one more.
    let (mut again, _) = subscribed(addr, "cap", "a", false, &[]).await;
    let mut p = connect(addr, Action::Publish, "cap", "p").await;
    send_frames(&mut p, &[publish(1, None, b"x")]).await;
    assert_eq!(event_of(&frames(&mut again, 1).await[0]).1, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_connection_is_closed_with_1008_when_its_token_expires() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let resource = format!("http://{addr}/exp");
    let token =
        interrole_relay::sas::SharedAccessSignature::sign(ROOT.0, ROOT.1, &resource, now + 2);
    let t = target(Action::Publish, "exp", "p", Some(token.to_string()));
    let mut p = connect_target(addr, &t).await.unwrap();
    assert_eq!(until_closed(&mut p).await.0, Some(1008));
    server.shutdown().await;
}

/// A handshake without a `Host` header is refused 400: HTTP/1.1 requires it, and the token's
/// audience is checked against it.
#[tokio::test]
async fn a_handshake_without_a_host_header_is_refused() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let t = target(
        interrole_relay::url::Action::Subscribe,
        "nohost",
        "s",
        Some(token(addr, "nohost", ROOT)),
    );
    let request = format!(
        "GET {t} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (status, text) = raw_request(addr, request.as_bytes()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Host"), "{text}");
    server.shutdown().await;
}
