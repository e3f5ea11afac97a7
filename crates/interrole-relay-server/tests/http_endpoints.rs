//! Health, metrics, configuration and the binary as a process.

mod common;

use std::process::Stdio;

use common::*;
use interrole_relay_server::{Config, DEFAULT_CONFIG_TOML};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn healthz_and_metrics_answer() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let (status, text) = raw_request(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(text.ends_with("ok\n"));
    // Something to count.
    let _ = raw_request(
        addr,
        &upgrade_request(addr, "/$hc/x?sb-hc-action=subscribe&sb-hc-id=s", ""),
    )
    .await;
    let (status, text) = raw_request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE interrole_relay_connections gauge"),
        "{text}"
    );
    assert!(
        text.contains("interrole_relay_rejections_total{reason=\"unauthorized\"} 1"),
        "{text}"
    );
    assert!(text.contains("interrole_relay_events_in_total 0"), "{text}");
    server.shutdown().await;
}

#[test]
fn generated_config_parses_to_the_defaults() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_interrole-relay"))
        .arg("generate-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, DEFAULT_CONFIG_TOML);
    assert_eq!(Config::from_toml(&text).unwrap(), Config::default());
}

#[test]
fn token_subcommand_prints_a_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_interrole-relay"))
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
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = interrole_relay::sas::SharedAccessSignature::parse(text.trim()).unwrap();
    assert_eq!(token.key_name(), "k");
    assert!(token.is_signed_by("s"));
}

#[tokio::test]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_interrole-relay"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--sas-key",
            &format!("{}={}", ROOT.0, ROOT.1),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(LONG, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr: std::net::SocketAddr = line.trim_start_matches("listening on ").parse().unwrap();

    let (mut sub, _) = subscribed(addr, "proc", "s", false, &[]).await;
    let mut p = connect(addr, interrole_relay::url::Action::Publish, "proc", "p").await;
    send_frames(&mut p, &[publish(1, None, b"via process")]).await;
    until_ack(&mut p, 1).await;
    assert_eq!(event_of(&frames(&mut sub, 1).await[0]).2, b"via process");

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    // Open WebSockets are closed with 1001.
    assert_eq!(until_closed(&mut sub).await.0, Some(1001));
    let status = tokio::time::timeout(LONG, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
