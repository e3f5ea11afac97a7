//! The Hybrid Connections client (`interrole_relay::client::hc`) against a real relay: a
//! listener accepting and rejecting senders, answering HTTP requests inline and through the
//! rendezvous, giving up on refused credentials, re-registering after a relay restart, renewing
//! its token, and all of it over TLS.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use interrole_relay::client::hc::{
    HcError, HcErrorKind, HcListener, HcSender, Incoming, ListenerStatus,
};
use interrole_relay::client::{Credentials, Relay, Tls, Ws};
use interrole_relay::control::{Headers, header};
use interrole_relay::sas::SharedAccessSignature;
use interrole_relay_server::{Config, Server};
use tokio_tungstenite::tungstenite::Message;

fn relay(addr: SocketAddr, key: (&str, &str)) -> Relay {
    Relay::connect_to(&format!("ws://{addr}"), Credentials::key(key.0, key.1)).unwrap()
}

/// The next item a listener receives, within [`LONG`].
async fn next_incoming(listener: &HcListener) -> Incoming {
    tokio::time::timeout(LONG, listener.accept())
        .await
        .expect("timed out")
        .expect("the listener ended")
}

/// The next data message, or how the WebSocket closed.
async fn data(ws: &mut Ws) -> Result<Message, Option<u16>> {
    loop {
        let m = tokio::time::timeout(LONG, ws.next())
            .await
            .expect("timed out");
        match m {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
            Some(Ok(Message::Close(c))) => return Err(c.map(|c| c.code.into())),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Accepts every sender and echoes each of its messages back; answers every HTTP request with
/// what it received: the body echoed, the method, target and `X-Echo` header as headers.
fn echo(listener: HcListener) -> tokio::task::JoinHandle<HcListener> {
    tokio::spawn(async move {
        while let Ok(incoming) = listener.accept().await {
            match incoming {
                Incoming::Connection(c) => {
                    tokio::spawn(async move {
                        let mut ws = c.accept().await.unwrap();
                        while let Ok(m) = data(&mut ws).await {
                            ws.send(m).await.unwrap();
                        }
                    });
                }
                Incoming::Request(r) => {
                    tokio::spawn(async move {
                        let mut headers = Headers::new();
                        headers.insert("X-Method".into(), r.method().into());
                        headers.insert("X-Target".into(), r.target().into());
                        if let Some(v) = r.header("x-echo") {
                            headers.insert("X-Echo".into(), v.into());
                        }
                        let body = r.body().clone();
                        r.respond(200, headers, body).await.unwrap();
                    });
                }
            }
        }
        listener
    })
}

/// Waits until the listener's status matches.
async fn wait_status(
    rx: &mut tokio::sync::watch::Receiver<ListenerStatus>,
    what: &str,
    wanted: impl Fn(&ListenerStatus) -> bool,
    within: Duration,
) {
    if tokio::time::timeout(within, rx.wait_for(|s| wanted(s)))
        .await
        .is_err()
    {
        panic!("the listener did not become {what}: {:?}", *rx.borrow());
    }
}

/// The error of a connect that must fail (a WebSocket is not `Debug`).
fn failed(r: Result<Ws, HcError>) -> HcError {
    match r {
        Ok(_) => panic!("the connection succeeded"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn accepted_sender_and_listener_talk_through_the_splice() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let listener = HcListener::bind(relay(addr, ROOT), "hyco").await.unwrap();
    assert!(matches!(listener.status(), ListenerStatus::Online));
    let sender = HcSender::new(relay(addr, ROOT), "hyco/room/1");
    let connecting = tokio::spawn(async move { sender.connect_with_id("conn-1").await });

    let Incoming::Connection(c) = next_incoming(&listener).await else {
        panic!("expected a connection");
    };
    assert_eq!((c.id(), c.path(), c.query()), ("conn-1", "hyco/room/1", ""));
    assert!(header(c.connect_headers(), "Sec-WebSocket-Key").is_some());
    assert_eq!(c.remote_endpoint().unwrap().address, "127.0.0.1");
    let mut at_listener = c.accept().await.unwrap();
    let mut at_sender = connecting.await.unwrap().unwrap();

    at_sender.send(Message::text("hello")).await.unwrap();
    assert_eq!(data(&mut at_listener).await, Ok(Message::text("hello")));
    let big = Bytes::from(vec![7u8; 200 * 1024]);
    at_listener
        .send(Message::Binary(big.clone()))
        .await
        .unwrap();
    assert_eq!(data(&mut at_sender).await, Ok(Message::Binary(big)));
    at_sender.close(None).await.unwrap();
    assert_eq!(data(&mut at_listener).await, Err(Some(1000)));

    listener.close().await;
    assert!(matches!(listener.status(), ListenerStatus::Closed(None)));
    let e = listener.accept().await.unwrap_err();
    assert_eq!(e.kind(), HcErrorKind::Closed);
    server.shutdown().await;
}

#[tokio::test]
async fn rejected_sender_fails_with_the_listeners_status() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let listener = HcListener::bind(relay(addr, ROOT), "hyco").await.unwrap();
    let sender = HcSender::new(relay(addr, ROOT), "hyco");
    let connecting = tokio::spawn(async move { sender.connect().await });
    let Incoming::Connection(c) = next_incoming(&listener).await else {
        panic!("expected a connection");
    };
    c.reject(418, "not today").await.unwrap();
    let e = failed(connecting.await.unwrap());
    assert_eq!(
        (e.kind(), e.status()),
        (HcErrorKind::Refused, Some(418)),
        "{e}"
    );
    assert!(
        e.message().contains("418") && e.message().contains("not today"),
        "{e}"
    );

    // Nobody listening: 404.
    listener.close().await;
    let e = failed(HcSender::new(relay(addr, ROOT), "hyco").connect().await);
    assert_eq!(e.kind(), HcErrorKind::NoListener, "{e}");
    server.shutdown().await;
}

#[tokio::test]
async fn http_requests_are_answered_inline_and_through_the_rendezvous() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let listener = HcListener::bind(relay(addr, ROOT), "hyco").await.unwrap();
    let echoing = echo(listener);
    let sender = HcSender::new(relay(addr, ROOT), "hyco");
    let mut headers = Headers::new();
    headers.insert("X-Echo".into(), "echoed".into());

    // Small: inline on the control channel, body in the next binary message.
    let r = sender
        .request("POST", "/orders?id=7", &headers, "hello")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"hello");
    assert_eq!(header(&r.headers, "x-method"), Some("POST"));
    assert_eq!(header(&r.headers, "x-target"), Some("/hyco/orders?id=7"));
    assert_eq!(header(&r.headers, "x-echo"), Some("echoed"));
    assert!(header(&r.headers, "via").is_some(), "{:?}", r.headers);

    // No body at all.
    let r = sender
        .request("GET", "", &Headers::new(), "")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(header(&r.headers, "x-target"), Some("/hyco"));

    // Over 64 KiB: the request is fetched from the rendezvous and answered there.
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let r = sender
        .request("PUT", "/blob", &headers, big.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(header(&r.headers, "x-method"), Some("PUT"));
    assert_eq!(header(&r.headers, "x-echo"), Some("echoed"));
    assert!(r.body == big, "the large body came back changed");

    // Just over the inline limit, from several senders at once.
    let limit = 64 * 1024;
    let mut tasks = Vec::new();
    for n in 0..4usize {
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let body = vec![n as u8; limit + n];
            let r = sender
                .request("POST", "/n", &Headers::new(), body.clone())
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            assert!(r.body == body);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // A bad key is the relay's 401, not the listener's.
    let r = HcSender::new(relay(addr, ("root", "wrong")), "hyco")
        .request("GET", "", &Headers::new(), "")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    echoing.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn large_response_to_an_inline_request_goes_through_the_rendezvous() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let listener = HcListener::bind(relay(addr, ROOT), "hyco").await.unwrap();
    let big = Bytes::from(vec![b'x'; 300 * 1024]);
    let answer = big.clone();
    let answering = tokio::spawn(async move {
        let Incoming::Request(r) = next_incoming(&listener).await else {
            panic!("expected a request");
        };
        assert_eq!((r.method(), r.body().len()), ("GET", 0));
        let mut headers = Headers::new();
        headers.insert("Content-Type".into(), "text/plain".into());
        r.respond(201, headers, answer).await.unwrap();
        listener
    });
    let r = HcSender::new(relay(addr, ROOT), "hyco")
        .request("GET", "/big", &Headers::new(), "")
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(header(&r.headers, "content-type"), Some("text/plain"));
    assert!(r.body == big);
    answering.await.unwrap().close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn refused_credentials_end_the_listener() {
    let server = start(config()).await;
    let addr = server.local_addr();

    // A bad key: the first attempt is refused.
    let e = HcListener::bind(relay(addr, ("root", "wrong")), "hyco")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), HcErrorKind::Unauthorized, "{e}");
    // A key without the Listen right... may not send.
    let e = failed(
        HcSender::new(relay(addr, LISTEN_ONLY), "hyco")
            .connect()
            .await,
    );
    assert_eq!(e.kind(), HcErrorKind::Forbidden, "{e}");

    // A fixed token that expires: the relay closes the channel, re-opening it is refused 401,
    // and `accept` reports that.
    let expiry = interrole_unix_now() + 2;
    let token = SharedAccessSignature::sign(ROOT.0, ROOT.1, &format!("http://{addr}/hyco"), expiry)
        .to_string();
    let r = Relay::connect_to(&format!("ws://{addr}"), Credentials::Token(token)).unwrap();
    let listener = HcListener::bind(r, "hyco").await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(15), listener.accept())
        .await
        .expect("the listener did not end")
        .unwrap_err();
    assert_eq!(e.kind(), HcErrorKind::Unauthorized, "{e}");
    let ListenerStatus::Closed(Some(e)) = listener.status() else {
        panic!("{:?}", listener.status());
    };
    assert_eq!(e.kind(), HcErrorKind::Unauthorized, "{e}");
    server.shutdown().await;
}

fn interrole_unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn listener_registers_again_after_a_relay_restart() {
    let first = start(config()).await;
    let addr = first.local_addr();
    let listener = HcListener::bind(relay(addr, ROOT), "hyco").await.unwrap();
    let mut status = listener.watch_status();
    first.shutdown().await;
    wait_status(
        &mut status,
        "reconnecting",
        |s| matches!(s, ListenerStatus::Reconnecting { .. }),
        LONG,
    )
    .await;

    // A new relay on the same address: the listener finds it on its own.
    let second = Server::bind(Config {
        listen: addr,
        ..config()
    })
    .await
    .unwrap();
    wait_status(
        &mut status,
        "online",
        |s| matches!(s, ListenerStatus::Online),
        Duration::from_secs(20),
    )
    .await;
    let echoing = echo(listener);
    let mut ws = HcSender::new(relay(addr, ROOT), "hyco")
        .connect()
        .await
        .unwrap();
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(data(&mut ws).await, Ok(Message::text("again")));
    echoing.abort();
    second.shutdown().await;
}

#[tokio::test]
async fn token_is_renewed_before_it_expires() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let credentials = Credentials::Key {
        name: ROOT.0.into(),
        key: ROOT.1.into(),
        ttl: Duration::from_secs(3),
    };
    let r = Relay::connect_to(&format!("ws://{addr}"), credentials).unwrap();
    let listener = HcListener::bind(r, "hyco").await.unwrap();
    let status = listener.watch_status();
    // Twice the token's lifetime: without renewal the relay closes the channel with 1008.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        !status.has_changed().unwrap(),
        "the channel was lost: {:?}",
        listener.status()
    );
    assert!(matches!(listener.status(), ListenerStatus::Online));
    let echoing = echo(listener);
    let r = HcSender::new(relay(addr, ROOT), "hyco")
        .request("POST", "", &Headers::new(), "still here")
        .await
        .unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"still here"[..]));
    echoing.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn everything_works_over_tls() {
    let cert = tls::SelfSigned::new();
    let server = start(cert.config()).await;
    let addr = server.local_addr();
    let trust = Tls::from_pem_file(&cert.cert).unwrap();
    let relay = Relay::connect_to(&format!("wss://{addr}"), Credentials::key(ROOT.0, ROOT.1))
        .unwrap()
        .with_tls(trust);
    let listener = HcListener::bind(relay.clone(), "hyco").await.unwrap();
    let echoing = echo(listener);
    let sender = HcSender::new(relay.clone(), "hyco");

    let mut ws = sender.connect().await.unwrap();
    ws.send(Message::text("secret")).await.unwrap();
    assert_eq!(data(&mut ws).await, Ok(Message::text("secret")));
    ws.close(None).await.unwrap();

    let r = sender
        .request("POST", "/x", &Headers::new(), "over tls")
        .await
        .unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"over tls"[..]));
    let big = vec![1u8; 100 * 1024];
    let r = sender
        .request("POST", "/x", &Headers::new(), big.clone())
        .await
        .unwrap();
    assert!(r.status == 200 && r.body == big);

    // The web PKI does not trust the self-signed certificate.
    let untrusted =
        Relay::connect_to(&format!("wss://{addr}"), Credentials::key(ROOT.0, ROOT.1)).unwrap();
    let e = HcListener::bind(untrusted, "hyco").await.unwrap_err();
    // A certificate that does not verify will not verify on retry: fatal, and said.
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
    echoing.abort();
    server.shutdown().await;
}
