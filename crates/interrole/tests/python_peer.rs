//! A peer in another language: `tests/python/interrole_peer.py`, a multicast client written
//! from `docs/protocol.md` alone (the token, the frames, RESUME and READY, the envelope of
//! section 10), exchanges typed events with a Rust bus over a relay in this process. A Rust
//! observer receives, as its own type, the event the Python peer published; the Python peer
//! decodes the event the Rust bus published, prints it, and publishes it back.
//!
//! `#[ignore = "needs python3 with websocket-client"]`: run them with `cargo test -- --ignored`,
//! which fails them, saying so, when python3 or websocket-client is missing.

mod relay_support;

use std::path::PathBuf;
use std::process::Stdio;

use interrole::{Bus, InterRoleEvent};
use relay_support::{KEY, LONG, bus, relay};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use tokio::sync::mpsc;

/// The event type of `docs/protocol.md` section 10's second example; the Python peer knows it
/// by the same tag and field order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct JobReport {
    job: u64,
    drift: i64,
    worker: String,
    note: Option<String>,
    samples: Vec<u32>,
    healthy: bool,
    phase: Phase,
    ratio: f64,
}
interrole::impl_event!(JobReport = "demo.job-report");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Phase {
    Idle,
    Running(u32),
    Failed { code: u16, reason: String },
}

/// What the Python peer publishes first (`FROM_PYTHON` in the script).
fn from_python() -> JobReport {
    JobReport {
        job: 7,
        drift: -1_000_000_000_000,
        worker: "pythön ✓".into(),
        note: None,
        samples: vec![],
        healthy: false,
        phase: Phase::Failed {
            code: 503,
            reason: "busy".into(),
        },
        ratio: 0.1,
    }
}

/// What the Rust bus publishes: every integer width, both ends of the ranges, UTF-8 beyond ASCII.
fn from_rust() -> JobReport {
    JobReport {
        job: u64::MAX,
        drift: i64::MIN,
        worker: "rust-1".into(),
        note: Some("é ✓ 中".into()),
        samples: vec![0, 250, 251, 65_535, 65_536, u32::MAX],
        healthy: true,
        phase: Phase::Running(4_000_000_000),
        ratio: -2.5,
    }
}

const TOPIC: &str = "python-peer";
const RUST: &str = "rust-1";
const PYTHON: &str = "py-1";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/interrole_peer.py")
}

fn python_ready() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import websocket"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const MISSING: &str =
    "python3 with websocket-client is not installed (pip install websocket-client)";

/// The next line the peer prints that starts with `word`, echoing the others; bounded by
/// [`LONG`].
async fn expect(lines: &mut Lines<BufReader<ChildStdout>>, word: &str) -> String {
    let wait = async {
        while let Some(line) = lines.next_line().await.expect("the peer's stdout") {
            println!("peer: {line}");
            if let Some(rest) = line.strip_prefix(word) {
                return rest.trim().to_owned();
            }
        }
        panic!("the peer exited before it printed {word:?}");
    };
    tokio::time::timeout(LONG, wait)
        .await
        .unwrap_or_else(|_| panic!("the peer did not print {word:?} in time"))
}

/// The next item of `rx`, within [`LONG`].
async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(LONG, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} did not arrive in time"))
        .expect("the observer is gone")
}

/// The peer's encoders and decoders against the byte examples of `docs/protocol.md`.
#[test]
#[ignore = "needs python3 with websocket-client"]
fn the_python_peer_reproduces_the_documented_bytes() {
    assert!(python_ready(), "{MISSING}");
    let out = std::process::Command::new("python3")
        .arg(script())
        .arg("self-test")
        .output()
        .expect("python3 starts");
    assert!(
        out.status.success(),
        "self-test failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with websocket-client"]
async fn a_python_peer_and_a_rust_bus_exchange_typed_events() {
    assert!(python_ready(), "{MISSING}");
    let server = relay().await;
    // Opened means subscribed: the relay has answered this bus's RESUME.
    let rust: Bus = bus(&server, TOPIC, RUST).await;
    // The typed observer, and beside it what the envelopes say of their senders. (What this
    // bus publishes reaches its own observers too.)
    let (tx, mut received) = mpsc::unbounded_channel();
    let _typed = rust.subscribe::<JobReport, _>(move |e: &JobReport| {
        let _ = tx.send(e.clone());
    });
    let (tx, mut senders) = mpsc::unbounded_channel();
    let _all = rust.subscribe_all(move |e: &InterRoleEvent| {
        if e.type_tag().as_str() == "demo.job-report" {
            let _ = tx.send((
                e.sender().to_string(),
                e.stream(),
                e.reply_to(),
                e.headers().clone(),
            ));
        }
    });

    let mut child = Command::new("python3")
        .arg(script())
        .args([
            "exchange",
            "--url",
            &format!("ws://{}", server.local_addr()),
        ])
        .args(["--topic", TOPIC, "--instance", PYTHON, "--key-name", KEY.0])
        .env("INTERROLE_KEY", KEY.1)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    // 1. Python -> Rust: the Rust observer gets the peer's event as a JobReport.
    expect(&mut lines, "ready").await;
    expect(&mut lines, "published").await;
    assert_eq!(next(&mut received, "the peer's event").await, from_python());
    let (sender, stream, reply_to, headers) = next(&mut senders, "the peer's envelope").await;
    assert_eq!(sender, PYTHON);
    assert!(headers.is_empty());
    assert!(!stream.is_tracked(), "the peer writes events in no stream");
    assert_eq!(reply_to, None);

    // 2. Rust -> Python: the peer has READY (it printed "ready"), so what the bus publishes now
    // reaches it; it decodes the header and the value.
    // With headers, which the peer reads (envelope version 2) and sends back with its echo.
    let headers = interrole::Headers::new()
        .with(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap()
        .with("note", "ünïcode ✓")
        .unwrap();
    rust.publish_with(from_rust(), headers.clone()).unwrap();
    assert_eq!(
        next(&mut received, "the bus's own event").await,
        from_rust()
    );
    assert_eq!(next(&mut senders, "the bus's own envelope").await.0, RUST);
    let line = expect(&mut lines, "received").await;
    let printed: serde_json::Value = serde_json::from_str(&line).expect("the peer prints JSON");
    assert_eq!(
        printed["value"],
        serde_json::to_value(from_rust()).unwrap(),
        "the value the peer decoded"
    );
    let header = &printed["header"];
    assert_eq!(header["sender"], RUST);
    assert_eq!(header["type_tag"], "demo.job-report");
    assert_eq!(header["reply_to"], 0);
    assert_eq!(header["directed"], false);
    assert!(header["epoch"].as_u64().unwrap() > 0, "{header}");
    assert!(header["n"].as_u64().unwrap() >= 1, "{header}");
    assert_eq!(
        (&header["contract"], &header["codec"]),
        (&1.into(), &0.into())
    );
    assert_eq!(
        header["headers"],
        serde_json::json!({"traceparent": headers.get("traceparent"), "note": "ünïcode ✓"})
    );

    // 3. ...and published it back: its encoder gives the Rust decoder the same value.
    expect(&mut lines, "echoed").await;
    assert_eq!(next(&mut received, "the echo").await, from_rust());
    let echo = next(&mut senders, "the echo's envelope").await;
    assert_eq!((echo.0, echo.3), (PYTHON.to_owned(), headers));

    expect(&mut lines, "done").await;
    let status = tokio::time::timeout(LONG, child.wait())
        .await
        .expect("the peer did not exit")
        .unwrap();
    assert!(status.success(), "the peer failed: {status}");
    rust.close().await;
    server.shutdown().await;
}
