//! A relay server in this process on an ephemeral port, and buses on it that are known to be
//! live: the tests that need a relay and no restart share these.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use interrole::relay::Credentials;
use interrole::{Bus, Event};
use interrole_relay_server::{Config, KeyConfig, Server};

pub const KEY: (&str, &str) = ("root", "root-secret");
pub const LONG: Duration = Duration::from_secs(20);

/// Starts a relay server on 127.0.0.1 with an ephemeral port.
pub async fn relay() -> Server {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        keys: vec![KeyConfig::parse_flag(&format!("{}={}", KEY.0, KEY.1)).unwrap()],
        ..Config::default()
    };
    Server::bind(config).await.unwrap()
}

/// A bus on `server`, connected.
pub async fn bus(server: &Server, topic: &str, id: &str) -> Bus {
    let bus = Bus::builder()
        .instance(id)
        .topic(topic)
        .relay(
            &format!("ws://{}", server.local_addr()),
            Credentials::key(KEY.0, KEY.1),
        )
        .build()
        .unwrap();
    bus.host().unwrap().wait_opened(LONG).await.unwrap();
    bus
}

/// Publishes `probe()` from `from` until `to` has an observer call for it: once one arrives,
/// what `from` publishes next reaches `to` (per-sender order). Bounded by [`LONG`].
pub async fn until_live<E: Event>(from: &Bus, to: &Bus, probe: impl Fn() -> E) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let guard = to.subscribe::<E, _>(move |_| {
        let _ = tx.send(());
    });
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        from.publish(probe()).unwrap();
        match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => continue,
            Err(_) => panic!("{} never heard {}", to.instance(), from.instance()),
        }
    }
    drop(guard);
}
