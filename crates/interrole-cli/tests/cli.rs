//! The `interrole` binary as a process, against a relay server in a process of its own (this test
//! binary again, running the ignored `relay_child_process` with the `interrole-relay-server`
//! library: cargo builds another package's binary for that package's tests only) and against
//! `nats-server` (`#[ignore = "needs nats-server"]`: run them with
//! `cargo test -p interrole-cli -- --ignored`, which fails them, saying so, when nats-server is
//! not installed).

#[path = "../../interrole-nats/tests/common/mod.rs"]
mod nats;

use std::process::{Output, Stdio};
use std::time::Duration;

use interrole::relay::Credentials;
use interrole::{Bus, Headers};
use interrole_relay::sas::SharedAccessSignature;
use interrole_relay_server::{Config, KeyConfig, Server};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

/// A generous bound on every wait, only so that a broken build fails instead of hanging.
const LONG: Duration = Duration::from_secs(30);
/// The relay's key.
const KEY: (&str, &str) = ("root", "root-secret");

/// A typed event that buses of the tests publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    text: String,
}
interrole::impl_event!(Note = "tests.note");

/// Where [`relay_child_process`] is told to listen.
const CHILD_LISTEN: &str = "INTERROLE_CLI_TEST_RELAY_LISTEN";
/// What [`relay_child_process`] prints, followed by its address, once it listens.
const CHILD_READY: &str = "relay child process listening on ";

/// A relay server in a process of its own on 127.0.0.1 and an ephemeral port: this test binary,
/// running [`relay_child_process`]. Killed when dropped; it also exits when its standard input
/// closes, so that it does not outlive a test process that died.
struct RelayProcess {
    addr: SocketAddr,
    _child: Child,
}

impl RelayProcess {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Starts a relay process and waits until it listens.
async fn relay() -> RelayProcess {
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["relay_child_process", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_LISTEN, "127.0.0.1:0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the relay process starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let line = tokio::time::timeout(LONG, lines.next_line())
            .await
            .expect("the relay process says it listens")
            .expect("stdout reads")
            .expect("the relay process ended early");
        if let Some(addr) = line.strip_prefix(CHILD_READY) {
            let addr = addr.trim().parse().expect("an address");
            return RelayProcess {
                addr,
                _child: child,
            };
        }
    }
}

/// Not a test of its own: the relay of [`RelayProcess`], in the process it starts. Ignored, so
/// that `cargo test` does not run it; without [`CHILD_LISTEN`] (as `-- --ignored` runs it) it
/// returns at once.
#[test]
#[ignore = "the relay process of the other tests"]
fn relay_child_process() {
    let Some(listen) = std::env::var_os(CHILD_LISTEN) else {
        return;
    };
    let listen = listen
        .to_str()
        .expect("an address")
        .parse()
        .expect("an address");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let server = Server::bind(Config {
            listen,
            keys: vec![KeyConfig::parse_flag(&format!("{}={}", KEY.0, KEY.1)).expect("a key")],
            ..Config::default()
        })
        .await
        .expect("the relay starts");
        println!("{CHILD_READY}{}", server.local_addr());
        // Until the parent closes standard input (or dies).
        let _ = tokio::task::spawn_blocking(|| {
            use std::io::Read;
            let mut buf = [0u8; 64];
            while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
        })
        .await;
        server.shutdown().await;
    });
}

fn relay_url(server: &RelayProcess) -> String {
    format!("ws://{}", server.local_addr())
}

/// The global options that reach `server` with the right key, on `topic`.
fn relay_args(server: &RelayProcess, topic: &str) -> Vec<String> {
    [
        "--relay",
        &relay_url(server),
        "--key",
        &format!("{}={}", KEY.0, KEY.1),
        "--topic",
        topic,
    ]
    .map(String::from)
    .to_vec()
}

/// A bus of the test on `server`, connected.
async fn relay_bus(server: &RelayProcess, topic: &str, instance: &str) -> Bus {
    let bus = Bus::builder()
        .instance(instance)
        .topic(topic)
        .relay(&relay_url(server), Credentials::key(KEY.0, KEY.1))
        .build()
        .expect("a bus");
    bus.host()
        .expect("a network bus has a host")
        .wait_opened(LONG)
        .await
        .expect("the test's bus connects");
    bus
}

/// The binary, with nothing from the environment that would choose a server for it.
fn cli(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_interrole"));
    c.args(args)
        .env_remove("INTERROLE_RELAY")
        .env_remove("INTERROLE_KEY")
        .env_remove("INTERROLE_NATS")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs the binary to its end.
async fn run(args: &[String]) -> Output {
    tokio::time::timeout(LONG, cli(args).output())
        .await
        .expect("the command ends")
        .expect("the command runs")
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

fn with(mut global: Vec<String>, more: &[&str]) -> Vec<String> {
    global.extend(more.iter().map(|w| (*w).to_owned()));
    global
}

/// A `tail` process that has said it listens.
struct Tail {
    child: Child,
    /// The rest of its standard error.
    stderr: Lines<BufReader<ChildStderr>>,
}

/// Starts `tail` and waits for its `tail: listening` (the handshake: its bus is connected and
/// subscribed).
async fn start_tail(args: &[String]) -> Tail {
    let mut child = cli(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tail starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    loop {
        let line = tokio::time::timeout(LONG, stderr.next_line())
            .await
            .expect("tail says it listens")
            .expect("stderr reads");
        match line {
            Some(l) if l == "tail: listening" => break,
            Some(_) => {}
            None => panic!("tail ended before it listened: {:?}", child.wait().await),
        }
    }
    Tail { child, stderr }
}

impl Tail {
    /// Waits for its end; its standard output.
    async fn output(mut self) -> (std::process::ExitStatus, String) {
        let mut out = String::new();
        let mut stdout = self.child.stdout.take().expect("stdout");
        tokio::time::timeout(LONG, stdout.read_to_string(&mut out))
            .await
            .expect("tail ends")
            .expect("stdout reads");
        let status = tokio::time::timeout(LONG, self.child.wait())
            .await
            .expect("tail exits")
            .expect("tail's status");
        let mut rest = Vec::new();
        while let Ok(Some(l)) = self.stderr.next_line().await {
            rest.push(l);
        }
        assert!(rest.is_empty(), "tail said more: {rest:?}");
        (status, out)
    }
}

/// Standard error as one line starting `interrole: `.
fn one_error_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(text.lines().count(), 1, "not one line: {text:?}");
    assert!(text.starts_with("interrole: "), "{text:?}");
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    text
}

// ---------------------------------------------------------------------------------------------
// tail

/// Checks tail's JSON lines against two `Note`s (bincode) that `sender` published.
fn check_tail_json(out: &str, sender: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let o = v.as_object().expect("an object");
        for key in [
            "sender",
            "seq",
            "tag",
            "version",
            "time",
            "headers",
            "size",
            "payload_hex",
        ] {
            assert!(o.contains_key(key), "{key} missing from {line}");
        }
        assert_eq!(o["version"], 1, "{line}");
        assert_eq!(o["codec"], "bincode", "{line}");
        assert_eq!(o["sender"], sender);
        assert_eq!(o["tag"], "tests.note");
        assert!(o["seq"].as_u64().is_some(), "{line}");
        assert!(o["size"].as_u64().is_some_and(|s| s > 0), "{line}");
        assert!(
            o["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        let text = format!("note {i}");
        let expected_hex: String = [text.len() as u8]
            .iter()
            .chain(text.as_bytes())
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(o["payload_hex"], expected_hex.as_str(), "{line}");
    }
    let first: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(first["headers"], serde_json::json!({ "tenant": "acme" }));
}

/// Publishes `{"id": 1}` and `{"id": 2}` with the command line, as `orders.created`; checks
/// that `tail --json --count 2`, already listening, printed both with every key.
async fn publish_and_tail(global: Vec<String>) {
    let tail = start_tail(&with(global.clone(), &["tail", "--json", "--count", "2"])).await;
    for id in [1, 2] {
        let json = format!("{{\"id\":{id}}}");
        let out = run(&with(
            global.clone(),
            &[
                "--instance",
                "cli-pub",
                "publish",
                "--tag",
                "orders.created",
                "--json",
                &json,
            ],
        ))
        .await;
        assert!(out.status.success(), "{out:?}");
    }
    let (status, out) = tail.output().await;
    assert!(status.success(), "{status:?}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, id) in lines.iter().zip([1, 2]) {
        let o = line.as_object().expect("an object");
        for key in [
            "sender", "seq", "tag", "version", "time", "headers", "size", "payload",
        ] {
            assert!(o.contains_key(key), "{key} missing from {line}");
        }
        assert_eq!(o["sender"], "cli-pub");
        assert_eq!(o["tag"], "orders.created");
        assert_eq!(o["version"], 1);
        assert_eq!(o["codec"], "json");
        assert_eq!(o["headers"], serde_json::json!({}));
        assert!(o["size"].as_u64().is_some_and(|s| s > 8), "{line}");
        assert_eq!(o["payload"], serde_json::json!({ "id": id }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_json_events_that_publish_sent() {
    let server = relay().await;
    publish_and_tail(relay_args(&server, "publish-tail")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_a_typed_bus_s_events_with_headers_and_payload_in_hex() {
    let server = relay().await;
    let topic = "tail-json";
    let tail = start_tail(&with(
        relay_args(&server, topic),
        &["tail", "--json", "--count", "2"],
    ))
    .await;
    let bus = relay_bus(&server, topic, "pub-1").await;
    let headers = Headers::new().with("tenant", "acme").expect("a header");
    bus.publish_with(
        Note {
            text: "note 0".into(),
        },
        headers,
    )
    .expect("publish");
    bus.publish(Note {
        text: "note 1".into(),
    })
    .expect("publish");
    let (status, out) = tail.output().await;
    assert!(status.success(), "{status:?}");
    check_tail_json(&out, "pub-1");
    bus.close().await;
}

// ---------------------------------------------------------------------------------------------
// request

/// A request a test's bus serves: decoded from the command line's JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ask {
    n: u32,
}
interrole::impl_event!(Ask = "tests.ask");

/// The reply, in JSON so that the command line prints it as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Answer {
    doubled: u32,
}
interrole::impl_event!(Answer = "tests.answer", codec = Json);

/// Asks `server-1`, a bus of the test serving `Ask` on `bus`, to double 21.
async fn request_is_answered(bus: &Bus, global: Vec<String>) {
    let _serving = bus.serve(|q: &Ask| Answer { doubled: q.n * 2 });
    let out = run(&with(
        global,
        &[
            "request",
            "--to",
            "server-1",
            "--tag",
            "tests.ask",
            "--json",
            r#"{"n":21}"#,
            "--timeout",
            "10s",
        ],
    ))
    .await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    assert_eq!(stdout, "{\"doubled\":42}\n");
    let stderr = String::from_utf8(out.stderr).expect("UTF-8");
    assert!(stderr.contains("reply from server-1"), "{stderr}");
    assert!(stderr.contains("tag=tests.answer"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_prints_the_reply_of_a_serving_bus() {
    let server = relay().await;
    let bus = relay_bus(&server, "request", "server-1").await;
    request_is_answered(&bus, relay_args(&server, "request")).await;
    bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_answers_is_one_line_saying_so() {
    let server = relay().await;
    // A bus that is there but does not serve the tag.
    let bus = relay_bus(&server, "unanswered", "server-1").await;
    let out = run(&with(
        relay_args(&server, "unanswered"),
        &[
            "request",
            "--to",
            "server-1",
            "--tag",
            "tests.unknown",
            "--json",
            "{}",
            "--timeout",
            "1s",
        ],
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&out);
    assert!(line.contains("no reply within 1s"), "{line}");
    assert!(line.contains("tests.unknown"), "{line}");
    bus.close().await;
}

// ---------------------------------------------------------------------------------------------
// bench

/// Checks bench's last line, `bench events=2000 subscribers=3 delivered=6000 lost=0 ...`.
fn check_bench(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let last = stdout.lines().last().expect("a last line");
    let fields: Vec<(&str, &str)> = last
        .strip_prefix("bench ")
        .expect("starts with `bench `")
        .split(' ')
        .map(|kv| kv.split_once('=').expect("key=value"))
        .collect();
    let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        [
            "events",
            "subscribers",
            "delivered",
            "lost",
            "duplicated",
            "throughput",
            "p50_us",
            "p99_us"
        ],
        "{last}"
    );
    let value = |k: &str| fields.iter().find(|(key, _)| *key == k).expect("a key").1;
    assert_eq!(value("events"), "2000");
    assert_eq!(value("subscribers"), "3");
    assert_eq!(value("delivered"), "6000");
    assert_eq!(value("lost"), "0");
    assert_eq!(value("duplicated"), "0");
    let throughput = value("throughput").strip_suffix("/s").expect("per second");
    assert!(throughput.parse::<u64>().is_ok_and(|t| t > 0), "{last}");
    for k in ["p50_us", "p99_us"] {
        assert!(value(k).parse::<u64>().is_ok(), "{last}");
    }
    // The table: a row per subscriber, and the total.
    assert_eq!(
        stdout.lines().filter(|l| l.contains("-sub-")).count(),
        3,
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_delivers_every_event_to_every_subscriber() {
    let server = relay().await;
    let global = args(&[
        "--relay",
        &relay_url(&server),
        "--key",
        &format!("{}={}", KEY.0, KEY.1),
    ]);
    let out = run(&with(
        global,
        &["bench", "--events", "2000", "--subscribers", "3"],
    ))
    .await;
    check_bench(&out);
}

// ---------------------------------------------------------------------------------------------
// token

#[test]
fn token_prints_a_token_that_verifies() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_interrole"))
        .args([
            "token",
            "--key-name",
            "k",
            "--key",
            "s",
            "--resource",
            "https://h/p",
            "--ttl",
            "1h",
        ])
        .output()
        .expect("token runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let token = SharedAccessSignature::parse(text.trim()).expect("a token");
    assert_eq!(token.key_name(), "k");
    assert!(token.is_signed_by("s"));
    assert!(!token.is_signed_by("other"));
}

// ---------------------------------------------------------------------------------------------
// errors

#[tokio::test]
async fn an_unreachable_relay_is_one_line_saying_why() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let out = run(&args(&[
        "--relay",
        &format!("ws://127.0.0.1:{port}"),
        "--key",
        "root=x",
        "--connect-timeout",
        "1s",
        "tail",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&out);
    assert!(line.contains("cannot connect"), "{line}");
    assert!(line.contains("refused"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_one_line_saying_it_was_refused() {
    let server = relay().await;
    // Given through the environment, as a shell profile would.
    let out = tokio::time::timeout(
        LONG,
        cli(&args(&["tail"]))
            .env("INTERROLE_RELAY", relay_url(&server))
            .env("INTERROLE_KEY", "root=wrong")
            .output(),
    )
    .await
    .expect("the command ends")
    .expect("the command runs");
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&out);
    assert!(line.contains("401") && line.contains("signature"), "{line}");
}

#[tokio::test]
async fn bad_json_is_a_usage_error() {
    let out = run(&args(&[
        "--relay",
        "ws://127.0.0.1:1",
        "publish",
        "--tag",
        "t",
        "--json",
        "{x",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(&out);
    assert!(
        line.contains("--json") && line.contains("not JSON"),
        "{line}"
    );
}

#[tokio::test]
async fn a_bad_tag_is_a_usage_error() {
    let out = run(&args(&[
        "--relay",
        "ws://127.0.0.1:1",
        "publish",
        "--tag",
        "a b",
        "--json",
        "{}",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2));
    let line = one_error_line(&out);
    assert!(
        line.contains("--tag") && line.contains("type tag"),
        "{line}"
    );
}

#[tokio::test]
async fn a_bad_duration_and_a_missing_server_are_usage_errors() {
    let out = run(&args(&[
        "--relay",
        "ws://127.0.0.1:1",
        "--connect-timeout",
        "2 weeks",
        "tail",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out).contains("--connect-timeout"));
    let out = run(&args(&["tail"])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out).contains("--relay"));
}

// ---------------------------------------------------------------------------------------------
// NATS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn on_nats_tail_publish_request_and_bench_work_as_on_the_relay() {
    let server = nats::NatsServer::start("cli on nats");
    let global = args(&["--nats", &server.url(), "--topic", "cli-tail"]);
    let tail = start_tail(&with(global.clone(), &["tail", "--json", "--count", "2"])).await;
    let bus = Bus::builder()
        .instance("pub-1")
        .topic("cli-tail")
        .nats(interrole::nats::NatsOptions::new(&server.url()))
        .build()
        .expect("a bus");
    bus.host()
        .expect("a host")
        .wait_opened(LONG)
        .await
        .expect("connects");
    let headers = Headers::new().with("tenant", "acme").expect("a header");
    bus.publish_with(
        Note {
            text: "note 0".into(),
        },
        headers,
    )
    .expect("publish");
    bus.publish(Note {
        text: "note 1".into(),
    })
    .expect("publish");
    let (status, out) = tail.output().await;
    assert!(status.success(), "{status:?}");
    check_tail_json(&out, "pub-1");
    bus.close().await;

    let out = run(&with(
        args(&["--nats", &server.url()]),
        &["bench", "--events", "2000", "--subscribers", "3"],
    ))
    .await;
    check_bench(&out);
}
