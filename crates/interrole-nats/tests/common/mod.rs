//! A real `nats-server` for the tests: started on a free port of 127.0.0.1, restarted on the
//! same port, killed when dropped. The tests that use it are `#[ignore = "needs nats-server"]`:
//! `cargo test` lists them as ignored, `cargo test -- --ignored` runs them, and there a missing
//! `nats-server` fails them with a message saying how to install it.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    pub addr: SocketAddr,
    child: Option<Child>,
    /// JetStream's storage directory, when enabled.
    store: Option<std::path::PathBuf>,
    /// More arguments for the server.
    extra: Vec<String>,
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(what: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "interrole-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// Panics, saying how to install it, when `nats-server` is not installed: a test that needs it
/// and was asked to run fails rather than passes without running.
fn require_installed(test: &str) {
    let ok = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{test} needs nats-server, which is not installed (apt-get install nats-server)"
    );
}

impl NatsServer {
    /// Starts a server.
    ///
    /// # Panics
    /// When `nats-server` is not installed, or does not listen in time.
    pub fn start(test: &str) -> Self {
        Self::start_with(test, false)
    }

    /// A server with JetStream, its storage in a fresh temporary directory.
    pub fn start_js(test: &str) -> Self {
        Self::start_with(test, true)
    }

    /// A server started with more arguments (`--user u --pass p`, say).
    pub fn start_args(test: &str, extra: &[&str]) -> Self {
        Self::start_with_extra(test, false, extra)
    }

    fn start_with(test: &str, js: bool) -> Self {
        Self::start_with_extra(test, js, &[])
    }

    fn start_with_extra(test: &str, js: bool, extra: &[&str]) -> Self {
        require_installed(test);
        let port = free_port();
        let mut server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
            store: js.then(|| temp_dir("nats-js")),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    fn spawn(&mut self) {
        let mut command = Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", &self.addr.port().to_string()]);
        if let Some(dir) = &self.store {
            command.arg("--js").arg("--sd").arg(dir);
        }
        command.args(&self.extra);
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.store {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A port free now and never handed out before in this process: tests run in parallel, and a
/// port released by one probe must not go to two servers.
fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// One node of a [`NatsCluster`].
pub struct Node {
    pub client: u16,
    pub cluster: u16,
    pub monitor: u16,
    child: Option<Child>,
}

/// Three (or more) `nats-server` nodes routed to each other on 127.0.0.1.
pub struct NatsCluster {
    pub nodes: Vec<Node>,
    store: Option<std::path::PathBuf>,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until each is routed to all the others.
    ///
    /// # Panics
    /// When `nats-server` is not installed, or the cluster does not form in time.
    pub fn start(test: &str, n: usize) -> Self {
        Self::start_with(test, n, false)
    }

    /// A cluster with JetStream on every node (storage in a fresh temporary directory).
    pub fn start_js(test: &str, n: usize) -> Self {
        Self::start_with(test, n, true)
    }

    fn start_with(test: &str, n: usize, js: bool) -> Self {
        require_installed(test);
        let mut nodes: Vec<Node> = (0..n)
            .map(|_| Node {
                client: free_port(),
                cluster: free_port(),
                monitor: free_port(),
                child: None,
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster))
            .collect();
        let store = js.then(|| temp_dir("nats-cluster"));
        for (i, node) in nodes.iter_mut().enumerate() {
            let others: Vec<&str> = routes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, r)| r.as_str())
                .collect();
            let mut command = Command::new("nats-server");
            if let Some(dir) = &store {
                command
                    .arg("--js")
                    .arg("--sd")
                    .arg(dir.join(format!("node-{i}")));
            }
            let child = command
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &node.client.to_string(),
                    "-m",
                    &node.monitor.to_string(),
                    "-n",
                    &format!("node-{i}"),
                    "--cluster_name",
                    "interrole-test",
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", node.cluster),
                    "--routes",
                    &others.join(","),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server starts");
            node.child = Some(child);
        }
        let cluster = Self { nodes, store };
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &cluster.nodes {
            loop {
                let routes = http_get(node.monitor, "/routez")
                    .and_then(|b| {
                        let i = b.find("\"num_routes\":")?;
                        b[i + 13..]
                            .trim_start()
                            .split(|c: char| !c.is_ascii_digit())
                            .next()?
                            .parse::<usize>()
                            .ok()
                    })
                    .unwrap_or(0);
                if routes + 1 >= cluster.nodes.len() {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not form");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// Every node's client URL, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node where a client named `name` is connected.
    pub fn node_of(&self, name: &str) -> Option<usize> {
        let needle = format!("\"name\":\"{name}\"");
        self.nodes.iter().position(|n| {
            n.child.is_some() && http_get(n.monitor, "/connz").is_some_and(|b| b.contains(&needle))
        })
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if let Some(dir) = &self.store {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A plain HTTP GET on 127.0.0.1:`port`; the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.replace([' ', '\n'], ""))
}
