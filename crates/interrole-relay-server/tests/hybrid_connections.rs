//! Hybrid Connections one-to-one through a real relay: listeners, senders, rendezvous, HTTP.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use interrole_relay::control::{self, ControlMessage, DEFAULT_MAX_CONTROL_LEN};
use interrole_relay::url::{Action, RelayAddress, reject_address};
use interrole_relay_server::Config;
use interrole_relay_server::metrics::Rendezvous;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};

fn hc_config(accept_secs: u64, request_secs: u64) -> Config {
    let mut c = config();
    c.limits.accept_timeout_secs = accept_secs;
    c.limits.request_timeout_secs = request_secs;
    c
}

fn hc_target(action: Action, path: &str, token: Option<String>) -> String {
    let mut a = RelayAddress::new(action, path).unwrap();
    if let Some(t) = token {
        a = a.with_token(t);
    }
    a.to_request_target()
}

async fn listener(addr: SocketAddr, path: &str) -> Ws {
    let t = hc_target(Action::Listen, path, Some(token(addr, path, ROOT)));
    connect_target(addr, &t).await.unwrap()
}

/// Opens a rendezvous (or reject) address, an absolute URL.
async fn connect_url(addr: SocketAddr, url: &str) -> Result<Ws, Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(url, tcp)
        .await
        .map(|(ws, _)| ws)
}

/// The status of a refused WebSocket handshake.
fn refused_status(r: Result<Ws, Error>) -> u16 {
    match r {
        Err(Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the handshake succeeded"),
    }
}

/// The next control message, skipping pings.
async fn control(ws: &mut Ws) -> ControlMessage {
    loop {
        let m = tokio::time::timeout(LONG, ws.next())
            .await
            .expect("timed out")
            .expect("closed")
            .expect("failed");
        if let Message::Text(t) = m {
            return ControlMessage::parse(t.as_str(), DEFAULT_MAX_CONTROL_LEN).unwrap();
        }
    }
}

async fn accept_of(ws: &mut Ws) -> control::Accept {
    match control(ws).await {
        ControlMessage::Accept(a) => a,
        other => panic!("expected an accept, got {other:?}"),
    }
}

/// The next data message or close code.
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

#[tokio::test]
async fn accepted_sender_is_spliced_and_close_codes_propagate() {
    let server = start(hc_config(10, 10)).await;
    let addr = server.local_addr();
    let mut l = listener(addr, "hyco").await;
    let target = RelayAddress::new(Action::Connect, "hyco/room/1")
        .unwrap()
        .with_query_param("app", "x y")
        .with_token(token(addr, "hyco", ROOT))
        .to_request_target();
    let sender = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("ws://{addr}{target}")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "chat".parse().unwrap());
        req.headers_mut().insert("X-App", "hello".parse().unwrap());
        tokio_tungstenite::client_async(req, tcp).await
    });
    let accept = accept_of(&mut l).await;
    assert!(
        accept.address.starts_with(&format!(
            "ws://{addr}/$hc/hyco/room/1?app=x%20y&sb-hc-action=accept&sb-hc-id="
        )),
        "{}",
        accept.address
    );
    assert!(accept.address.ends_with(&accept.id), "{}", accept.address);
    let h = &accept.connect_headers;
    assert!(control::header(h, "sec-websocket-key").is_some(), "{h:?}");
    assert_eq!(control::header(h, "x-app"), Some("hello"));
    assert_eq!(control::header(h, "sec-websocket-protocol"), Some("chat"));
    assert!(accept.remote_endpoint.is_some());

    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = accept.address.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "chat".parse().unwrap());
    let (mut rendezvous, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("chat")
    );
    let (mut s, resp) = sender.await.unwrap().unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("chat")
    );

    s.send(Message::text("to listener")).await.unwrap();
    assert_eq!(
        data(&mut rendezvous).await,
        Ok(Message::text("to listener"))
    );
    rendezvous
        .send(Message::Binary(Bytes::from_static(b"\x00to sender")))
        .await
        .unwrap();
    assert_eq!(
        data(&mut s).await,
        Ok(Message::Binary(Bytes::from_static(b"\x00to sender")))
    );
    rendezvous
        .send(Message::Close(Some(CloseFrame {
            code: 4321.into(),
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    assert_eq!(data(&mut s).await, Err(Some(4321)));

    // The rendezvous address is single use.
    let reused = connect_url(addr, &accept.address).await;
    assert_eq!(refused_status(reused), 404);
    assert_eq!(server.metrics().rendezvous_count(Rendezvous::Accepted), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn sender_close_reaches_the_listener_with_its_code() {
    let server = start(hc_config(10, 10)).await;
    let addr = server.local_addr();
    let mut l = listener(addr, "hyco").await;
    let target = hc_target(Action::Connect, "hyco", Some(token(addr, "hyco", ROOT)));
    let sender = tokio::spawn(async move { connect_target(addr, &target).await });
    let accept = accept_of(&mut l).await;
    let mut rendezvous = connect_url(addr, &accept.address).await.unwrap();
    let mut s = sender.await.unwrap().unwrap();
    s.close(Some(CloseFrame {
        code: 1000.into(),
        reason: "done".into(),
    }))
    .await
    .unwrap();
    assert_eq!(data(&mut rendezvous).await, Err(Some(1000)));
    server.shutdown().await;
}

#[tokio::test]
async fn rejected_sender_fails_with_the_listeners_status() {
    let server = start(hc_config(10, 10)).await;
    let addr = server.local_addr();
    let mut l = listener(addr, "hyco").await;
    let target = hc_target(Action::Connect, "hyco", Some(token(addr, "hyco", ROOT)));
    let sender =
        tokio::spawn(async move { raw_request(addr, &upgrade_request(addr, &target, "")).await });
    let accept = accept_of(&mut l).await;
    let reject = reject_address(&accept.address, 403, "nope");
    assert_eq!(refused_status(connect_url(addr, &reject).await), 410);
    let (status, text) = sender.await.unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.starts_with("HTTP/1.1 403 nope\r\n"), "{text}");
    assert_eq!(server.metrics().rendezvous_count(Rendezvous::Rejected), 1);

    // The unprefixed spelling one client sends.
    let target = hc_target(Action::Connect, "hyco", Some(token(addr, "hyco", ROOT)));
    let sender =
        tokio::spawn(async move { raw_request(addr, &upgrade_request(addr, &target, "")).await });
    let accept = accept_of(&mut l).await;
    let reject = format!("{}&statusCode=451&statusDescription=gone", accept.address);
    assert_eq!(refused_status(connect_url(addr, &reject).await), 410);
    let (status, text) = sender.await.unwrap();
    assert_eq!(status, 451, "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_sender_whose_listener_drops_goes_to_another() {
    let server = start(hc_config(10, 10)).await;
    let addr = server.local_addr();
    let mut first = listener(addr, "hyco").await;
    let target = hc_target(Action::Connect, "hyco", Some(token(addr, "hyco", ROOT)));
    let sender = tokio::spawn(async move { connect_target(addr, &target).await });
    let offered = accept_of(&mut first).await;
    let mut second = listener(addr, "hyco").await;
    drop(first);
    let accept = accept_of(&mut second).await;
    assert_eq!(accept.id, offered.id);
    let mut rendezvous = connect_url(addr, &accept.address).await.unwrap();
    let mut s = sender.await.unwrap().unwrap();
    s.send(Message::text("hi")).await.unwrap();
    assert_eq!(data(&mut rendezvous).await, Ok(Message::text("hi")));
    drop(second);
    // The last listener gone: a waiting sender fails with 500.
    let mut last = listener(addr, "solo").await;
    let target = hc_target(Action::Connect, "solo", Some(token(addr, "solo", ROOT)));
    let sender =
        tokio::spawn(async move { raw_request(addr, &upgrade_request(addr, &target, "")).await });
    accept_of(&mut last).await;
    drop(last);
    assert_eq!(sender.await.unwrap().0, 500);
    assert_eq!(server.metrics().rendezvous_count(Rendezvous::Failed), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn without_a_listener_a_sender_gets_404() {
    let server = start(hc_config(10, 10)).await;
    let addr = server.local_addr();
    let target = hc_target(Action::Connect, "nobody", Some(token(addr, "nobody", ROOT)));
    let (status, text) = raw_request(addr, &upgrade_request(addr, &target, "")).await;
    assert_eq!(status, 404, "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_26th_listener_is_refused() {
    let server = start(hc_config(10, 10)).await;
    let addr = server.local_addr();
    let mut listeners = Vec::new();
    for _ in 0..25 {
        listeners.push(listener(addr, "full").await);
    }
    let t = hc_target(Action::Listen, "full", Some(token(addr, "full", ROOT)));
    let (status, text) = raw_request(addr, &upgrade_request(addr, &t, "")).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("MaximumListenersPerEndpoint"), "{text}");
    assert_eq!(server.metrics().hc_listeners(), 25);
    let (_, metrics) = raw_request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        metrics.contains("interrole_relay_connections{kind=\"hc_listener\"} 25\n"),
        "{metrics}"
    );
    // Another path is not affected.
    let _other = listener(addr, "other").await;
    server.shutdown().await;
}

#[tokio::test]
async fn senders_are_spread_over_listeners() {
    let server = start(hc_config(10, 10)).await;
    let addr = server.local_addr();
    let counts: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    for count in &counts {
        let mut l = listener(addr, "spread").await;
        let count = count.clone();
        tokio::spawn(async move {
            loop {
                let accept = accept_of(&mut l).await;
                count.fetch_add(1, Ordering::SeqCst);
                let reject = reject_address(&accept.address, 409, "busy");
                let _ = connect_url(addr, &reject).await;
            }
        });
    }
    for _ in 0..40 {
        let target = hc_target(Action::Connect, "spread", Some(token(addr, "spread", ROOT)));
        let (status, _) = raw_request(addr, &upgrade_request(addr, &target, "")).await;
        assert_eq!(status, 409);
    }
    let counts: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(counts.iter().sum::<usize>(), 40);
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_listener_that_never_accepts_times_the_sender_out() {
    let server = start(hc_config(1, 10)).await;
    let addr = server.local_addr();
    let mut l = listener(addr, "slow").await;
    let target = hc_target(Action::Connect, "slow", Some(token(addr, "slow", ROOT)));
    let sender =
        tokio::spawn(async move { raw_request(addr, &upgrade_request(addr, &target, "")).await });
    let accept = accept_of(&mut l).await;
    let (status, text) = sender.await.unwrap();
    assert_eq!(status, 504, "{text}");
    // Too late: the address has expired.
    assert_eq!(
        refused_status(connect_url(addr, &accept.address).await),
        404
    );
    assert_eq!(server.metrics().rendezvous_count(Rendezvous::TimedOut), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn tokens_are_checked() {
    let server = start(hc_config(10, 10)).await;
    let addr = server.local_addr();
    let no_token = hc_target(Action::Listen, "hyco", None);
    assert_eq!(refused_status(connect_target(addr, &no_token).await), 401);
    let _l = listener(addr, "hyco").await;
    let listen_key = hc_target(
        Action::Connect,
        "hyco",
        Some(token(addr, "hyco", LISTEN_ONLY)),
    );
    assert_eq!(refused_status(connect_target(addr, &listen_key).await), 403);
    let no_token = hc_target(Action::Connect, "hyco", None);
    assert_eq!(refused_status(connect_target(addr, &no_token).await), 401);
    // The listen-only key may listen.
    let t = hc_target(
        Action::Listen,
        "hyco",
        Some(token(addr, "hyco", LISTEN_ONLY)),
    );
    connect_target(addr, &t).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn renew_token_keeps_the_channel_and_garbage_closes_it() {
    let server = start(hc_config(10, 10)).await;
    let addr = server.local_addr();
    let mut l = listener(addr, "renew").await;
    let renew = format!(
        r#"{{"renewToken":{{"token":"{}"}}}}"#,
        token(addr, "renew", ROOT)
    );
    l.send(Message::text(renew)).await.unwrap();
    l.send(Message::text(r#"{"unknown":{}}"#)).await.unwrap();
    // Still a listener: a sender reaches it.
    let target = hc_target(Action::Connect, "renew", Some(token(addr, "renew", ROOT)));
    let sender =
        tokio::spawn(async move { raw_request(addr, &upgrade_request(addr, &target, "")).await });
    let accept = accept_of(&mut l).await;
    let _ = connect_url(addr, &reject_address(&accept.address, 403, "no")).await;
    assert_eq!(sender.await.unwrap().0, 403);

    l.send(Message::text(
        r#"{"renewToken":{"token":"SharedAccessSignature sr=x&sig=y&se=1&skn=root"}}"#,
    ))
    .await
    .unwrap();
    assert_eq!(data(&mut l).await, Err(Some(1008)));

    let mut l = listener(addr, "renew").await;
    l.send(Message::text("{not json")).await.unwrap();
    assert_eq!(data(&mut l).await, Err(Some(1008)));
    server.shutdown().await;
}

#[tokio::test]
async fn http_requests_travel_inline_to_a_listener() {
    let server = start(hc_config(10, 10)).await;
    let addr = server.local_addr();
    let mut l = listener(addr, "web").await;
    let handler = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let ControlMessage::Request(r) = control(&mut l).await else {
                panic!("expected a request")
            };
            let body = if r.body == Some(true) {
                match data(&mut l).await {
                    Ok(Message::Binary(b)) => b.to_vec(),
                    other => panic!("expected a body, got {other:?}"),
                }
            } else {
                Vec::new()
            };
            let id = r.id.clone().unwrap();
            seen.push((r, body));
            let response = format!(
                r#"{{"response":{{"requestId":"{id}","statusCode":"201","statusDescription":"Made","responseHeaders":{{"X-Test":"yes"}},"body":true}}}}"#
            );
            l.send(Message::text(response)).await.unwrap();
            l.send(Message::Binary(Bytes::from_static(b"made it")))
                .await
                .unwrap();
        }
        (l, seen)
    });
    let tok = token(addr, "web", ROOT);
    let get = format!(
        "GET /web/x?y=1 HTTP/1.1\r\nHost: {addr}\r\nServiceBusAuthorization: {tok}\r\nAccept: text/plain\r\n\r\n"
    );
    let (status, text) = raw_request(addr, get.as_bytes()).await;
    assert_eq!(status, 201, "{text}");
    assert!(text.starts_with("HTTP/1.1 201 Made\r\n"), "{text}");
    assert!(text.contains("\r\nX-Test: yes\r\n"), "{text}");
    assert!(text.contains("\r\nVia: "), "{text}");
    assert!(text.ends_with("\r\n\r\nmade it"), "{text}");

    let post = format!(
        "POST /web?sb-hc-token={} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5\r\n\r\nhello",
        interrole_relay_percent(&tok)
    );
    let (status, text) = raw_request(addr, post.as_bytes()).await;
    assert_eq!(status, 201, "{text}");

    // A chunked body is decoded and relayed whole.
    let chunked = format!(
        "POST /web HTTP/1.1\r\nHost: {addr}\r\nServiceBusAuthorization: {tok}\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5;x=y\r\nworld\r\n0\r\n\r\n"
    );
    let (status, text) = raw_request(addr, chunked.as_bytes()).await;
    assert_eq!(status, 201, "{text}");

    let (_l, seen) = handler.await.unwrap();
    assert_eq!(seen[2].1, b"hello world");
    let chunked_headers = seen[2].0.request_headers.as_ref().unwrap();
    assert_eq!(control::header(chunked_headers, "transfer-encoding"), None);
    let (get, body) = &seen[0];
    assert_eq!(get.method.as_deref(), Some("GET"));
    assert_eq!(get.request_target.as_deref(), Some("/web/x?y=1"));
    assert!(body.is_empty());
    let headers = get.request_headers.as_ref().unwrap();
    assert_eq!(control::header(headers, "accept"), Some("text/plain"));
    assert_eq!(control::header(headers, "servicebusauthorization"), None);
    assert!(
        get.address.contains("sb-hc-action=request"),
        "{}",
        get.address
    );
    let (post, body) = &seen[1];
    assert_eq!(post.method.as_deref(), Some("POST"));
    assert_eq!(post.request_target.as_deref(), Some("/web"));
    assert_eq!(body, b"hello");
    server.shutdown().await;
}

#[tokio::test]
async fn large_requests_and_responses_use_the_request_rendezvous() {
    let server = start(hc_config(10, 10)).await;
    let addr = server.local_addr();
    let mut l = listener(addr, "big").await;
    let handler = tokio::spawn(async move {
        // A request over 64 KiB: only its address travels on the control channel.
        let ControlMessage::Request(r) = control(&mut l).await else {
            panic!("expected a request")
        };
        assert!(r.is_address_only(), "{r:?}");
        let mut rv = connect_url(addr, &r.address).await.unwrap();
        let ControlMessage::Request(full) = control(&mut rv).await else {
            panic!("expected the whole request")
        };
        assert_eq!(full.method.as_deref(), Some("PUT"));
        assert_eq!(full.request_target.as_deref(), Some("/big/file"));
        let Ok(Message::Binary(body)) = data(&mut rv).await else {
            panic!("expected the body")
        };
        assert_eq!(body.len(), 100_000);
        let id = full.id.unwrap();
        rv.send(Message::text(format!(
            r#"{{"response":{{"requestId":"{id}","statusCode":200,"body":true}}}}"#
        )))
        .await
        .unwrap();
        rv.send(Message::Binary(Bytes::from_static(b"stored")))
            .await
            .unwrap();
        assert_eq!(data(&mut rv).await, Err(Some(1000)));
        // The rendezvous is single use.
        assert_eq!(refused_status(connect_url(addr, &r.address).await), 404);

        // An inline request answered on its rendezvous (a response too large for the channel).
        let ControlMessage::Request(r) = control(&mut l).await else {
            panic!("expected a request")
        };
        assert_eq!(r.method.as_deref(), Some("GET"));
        let mut rv = connect_url(addr, &r.address).await.unwrap();
        rv.send(Message::text(
            r#"{"response":{"statusCode":200,"body":true}}"#,
        ))
        .await
        .unwrap();
        rv.send(Message::Binary(vec![b'x'; 200_000].into()))
            .await
            .unwrap();
        let _ = data(&mut rv).await;
        l
    });
    let tok = token(addr, "big", ROOT);
    let mut put = format!(
        "PUT /big/file HTTP/1.1\r\nHost: {addr}\r\nServiceBusAuthorization: {tok}\r\nContent-Length: 100000\r\n\r\n"
    )
    .into_bytes();
    put.extend_from_slice(&[b'a'; 100_000]);
    let (status, text) = raw_request(addr, &put).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("\r\n\r\nstored"), "{text}");
    let get =
        format!("GET /big HTTP/1.1\r\nHost: {addr}\r\nServiceBusAuthorization: {tok}\r\n\r\n");
    let (status, text) = raw_request(addr, get.as_bytes()).await;
    assert_eq!(status, 200);
    assert!(text.contains("Content-Length: 200000\r\n"));
    assert!(text.ends_with(&"x".repeat(200_000)));
    handler.await.unwrap();
    server.shutdown().await;
}

/// `sb-hc-token` as a query value.
fn interrole_relay_percent(token: &str) -> String {
    let t = RelayAddress::new(Action::Http, "x")
        .unwrap()
        .with_token(token)
        .to_request_target();
    t.split_once("sb-hc-token=").unwrap().1.to_owned()
}

#[tokio::test]
async fn http_without_a_listener_is_502_and_without_an_answer_504() {
    let server = start(hc_config(10, 1)).await;
    let addr = server.local_addr();
    let tok = token(addr, "web", ROOT);
    let get = format!("GET /web HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {tok}\r\n\r\n");
    let (status, text) = raw_request(addr, get.as_bytes()).await;
    assert_eq!(status, 502, "{text}");

    let _l = listener(addr, "web").await;
    let (status, text) = raw_request(addr, get.as_bytes()).await;
    assert_eq!(status, 504, "{text}");
    assert!(
        text.contains(r#"{"error":{"code":"GatewayTimeout","message":"#),
        "{text}"
    );
    let no_token = format!("GET /web HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(raw_request(addr, no_token.as_bytes()).await.0, 401);
    server.shutdown().await;
}
