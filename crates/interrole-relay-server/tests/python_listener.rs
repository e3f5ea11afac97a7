//! The seed's Python listener (`tests/python/listener.py`, websocket-client) against the relay
//! over TLS, with a Rust sender.
//!
//! `#[ignore = "needs python3 with websocket-client"]`: run it with `cargo test -- --ignored`,
//! which fails it, saying so, when python3 or websocket-client is missing.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::tls::{SelfSigned, connect_wss};
use common::*;
use futures::{SinkExt, StreamExt};
use interrole_relay::url::{Action, RelayAddress};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

fn python_ready() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import websocket"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
#[ignore = "needs python3 with websocket-client"]
async fn python_listener_answers_a_rust_sender_over_wss() {
    assert!(
        python_ready(),
        "python3 with websocket-client is not installed (pip install websocket-client)"
    );
    let cert = SelfSigned::new();
    let server = start(cert.config()).await;
    let addr = server.local_addr();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/listener.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(addr.to_string())
        .arg("hyco")
        .env("RELAY_TOKEN", token(addr, "hyco", ROOT))
        .env("SSL_CERT_FILE", &cert.cert)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("listening") {
                return;
            }
            println!("listener: {line}");
        }
        panic!("the listener exited before it was listening");
    };
    tokio::time::timeout(LONG, ready)
        .await
        .expect("the listener did not start listening");
    // Echo what the listener prints from now on, for a failure's sake.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("listener: {line}");
        }
    });

    let connect = RelayAddress::new(Action::Connect, "hyco")
        .unwrap()
        .with_token(token(addr, "hyco", ROOT))
        .to_request_target();
    let mut sender = tokio::time::timeout(LONG, connect_wss(addr, &cert.connector(), &connect))
        .await
        .expect("timed out")
        .expect("the listener accepted");
    sender.send(Message::text("hello relay")).await.unwrap();
    let answer = loop {
        let m = tokio::time::timeout(LONG, sender.next())
            .await
            .expect("timed out")
            .expect("closed")
            .expect("failed");
        if let Message::Text(t) = m {
            break t.as_str().to_owned();
        }
    };
    assert_eq!(answer, "processed: yaler olleh");
    drop(sender);
    let _ = child.start_kill();
    server.shutdown().await;
}
