//! The bus across relay crashes, with real processes: a relay process is killed with SIGKILL and
//! started again three times while two publisher processes stream events to two subscriber
//! processes. Every subscriber must receive every event exactly once, in each publisher's order;
//! the `chaos` tool counts anything else and the test reports it.

use std::process::Command;

#[test]
fn every_event_arrives_once_in_order_across_relay_kills() {
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args([
            "--publishers",
            "2",
            "--subscribers",
            "2",
            "--events",
            "8000",
            "--kills",
            "3",
            "--rate",
            "1000",
            "--retry-ms",
            "100",
        ])
        .output()
        .expect("the chaos tool runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let field = |key: &str| -> u64 {
        last.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {last:?}\n{stdout}\n{stderr}"))
    };
    let report = format!("{stdout}\n{stderr}");
    assert!(last.starts_with("chaos "), "{report}");
    assert_eq!(field("events"), 8000, "{report}");
    assert_eq!(
        field("relay_kills"),
        3,
        "the relay was not killed 3 times:\n{report}"
    );
    assert_eq!(field("lost"), 0, "events lost:\n{report}");
    assert_eq!(field("duplicated"), 0, "events delivered twice:\n{report}");
    assert_eq!(field("reordered"), 0, "events out of order:\n{report}");
    assert!(out.status.success(), "{report}");
}
