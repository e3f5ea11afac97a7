//! Counters kept with atomics and rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why something was refused, for the `rejections` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A malformed request head.
    BadRequest,
    /// A handshake refused for its address (400, 404, 414).
    BadAddress,
    /// A missing or invalid token (401).
    Unauthorized,
    /// A token without the right for this path or action (403).
    Forbidden,
    /// Over a capacity limit (connections, paths, subscribers).
    Capacity,
    /// A handshake that did not finish in time.
    HandshakeTimeout,
    /// A multicast message that did not decode, or a protocol violation.
    Protocol,
    /// REJECT TOO_LARGE.
    TooLarge,
    /// REJECT TARGET_NOT_CONNECTED.
    TargetNotConnected,
    /// REJECT BUSY (over `limits.max_publish_rate`).
    Busy,
    /// A failed TLS handshake.
    Tls,
}

impl Reason {
    const ALL: [Reason; 11] = [
        Reason::BadRequest,
        Reason::BadAddress,
        Reason::Unauthorized,
        Reason::Forbidden,
        Reason::Capacity,
        Reason::HandshakeTimeout,
        Reason::Protocol,
        Reason::TooLarge,
        Reason::TargetNotConnected,
        Reason::Busy,
        Reason::Tls,
    ];

    fn name(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::BadAddress => "bad_address",
            Reason::Unauthorized => "unauthorized",
            Reason::Forbidden => "forbidden",
            Reason::Capacity => "capacity",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::Protocol => "protocol",
            Reason::TooLarge => "too_large",
            Reason::TargetNotConnected => "target_not_connected",
            Reason::Busy => "busy",
            Reason::Tls => "tls",
        }
    }
}

/// The kind of an open connection, for the `connections` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Accepted, before or during its handshake, or a plain HTTP request.
    Handshake,
    /// A multicast publisher.
    Publisher,
    /// A multicast subscriber.
    Subscriber,
    /// A Hybrid Connections listener's control channel.
    Listener,
    /// A sender spliced to a listener through a rendezvous (one per pair).
    Relayed,
}

/// Counts an open connection in the gauge of its [`Kind`] while alive.
pub(crate) struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    pub(crate) fn new(metrics: &'a Metrics, kind: Kind) -> Self {
        let gauge = metrics.gauge(kind);
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What became of a Hybrid Connections sender's connect, for the `hc_rendezvous` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendezvous {
    /// The listener opened the rendezvous.
    Accepted,
    /// The listener rejected the sender.
    Rejected,
    /// The listener did nothing in time.
    TimedOut,
    /// The listener's control channel went away meanwhile.
    Failed,
}

/// What became of a plain HTTP request, for the `hc_http_requests` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpOutcome {
    /// A listener answered.
    Answered,
    /// No listener was connected (502).
    NoListener,
    /// No answer in time (504).
    TimedOut,
    /// The listener went away, or the request was refused before reaching it.
    Failed,
}

/// The relay's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) conn_handshake: AtomicU64,
    pub(crate) conn_publisher: AtomicU64,
    pub(crate) conn_subscriber: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) paths: AtomicU64,
    pub(crate) events_in: AtomicU64,
    pub(crate) events_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) slow_disconnects: AtomicU64,
    pub(crate) conn_listener: AtomicU64,
    pub(crate) conn_relayed: AtomicU64,
    rendezvous: [AtomicU64; 4],
    http_requests: [AtomicU64; 4],
    rejections: [AtomicU64; Reason::ALL.len()],
}

impl Metrics {
    fn gauge(&self, kind: Kind) -> &AtomicU64 {
        match kind {
            Kind::Handshake => &self.conn_handshake,
            Kind::Publisher => &self.conn_publisher,
            Kind::Subscriber => &self.conn_subscriber,
            Kind::Listener => &self.conn_listener,
            Kind::Relayed => &self.conn_relayed,
        }
    }

    pub(crate) fn rendezvous(&self, outcome: Rendezvous) {
        self.rendezvous[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn http_request(&self, outcome: HttpOutcome) {
        self.http_requests[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count of sender connects that ended with `outcome` so far.
    pub fn rendezvous_count(&self, outcome: Rendezvous) -> u64 {
        self.rendezvous[outcome as usize].load(Ordering::Relaxed)
    }

    /// The count of plain HTTP requests that ended with `outcome` so far.
    pub fn http_request_count(&self, outcome: HttpOutcome) -> u64 {
        self.http_requests[outcome as usize].load(Ordering::Relaxed)
    }

    /// The Hybrid Connections listeners connected now.
    pub fn hc_listeners(&self) -> u64 {
        self.conn_listener.load(Ordering::Relaxed)
    }

    pub(crate) fn reject(&self, reason: Reason) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.rejections[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The count of refusals for `reason` so far.
    pub fn rejections(&self, reason: Reason) -> u64 {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.rejections[i].load(Ordering::Relaxed)
    }

    /// Events dropped from slow subscribers' queues so far.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::with_capacity(2048);
        let mut metric = |name: &str, ty: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {ty}");
            for (labels, v) in rows {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        metric(
            "interrole_relay_connections",
            "gauge",
            "Open connections by kind.",
            &[
                ("{kind=\"handshake\"}", l(&self.conn_handshake)),
                ("{kind=\"publisher\"}", l(&self.conn_publisher)),
                ("{kind=\"subscriber\"}", l(&self.conn_subscriber)),
                ("{kind=\"hc_listener\"}", l(&self.conn_listener)),
                ("{kind=\"hc_relayed\"}", l(&self.conn_relayed)),
            ],
        );
        metric(
            "interrole_relay_connections_total",
            "counter",
            "Connections accepted.",
            &[("", l(&self.connections_total))],
        );
        metric(
            "interrole_relay_paths",
            "gauge",
            "Multicast paths held.",
            &[("", l(&self.paths))],
        );
        metric(
            "interrole_relay_events_in_total",
            "counter",
            "Events accepted from publishers.",
            &[("", l(&self.events_in))],
        );
        metric(
            "interrole_relay_events_out_total",
            "counter",
            "Events queued to subscribers (replays included).",
            &[("", l(&self.events_out))],
        );
        metric(
            "interrole_relay_bytes_in_total",
            "counter",
            "Multicast message bytes received.",
            &[("", l(&self.bytes_in))],
        );
        metric(
            "interrole_relay_bytes_out_total",
            "counter",
            "Multicast message bytes sent.",
            &[("", l(&self.bytes_out))],
        );
        metric(
            "interrole_relay_dropped_total",
            "counter",
            "Events dropped from slow subscribers' queues.",
            &[("", l(&self.dropped))],
        );
        metric(
            "interrole_relay_duplicates_total",
            "counter",
            "PUBLISH frames at or below the sender's last sequence number.",
            &[("", l(&self.duplicates))],
        );
        metric(
            "interrole_relay_slow_consumer_disconnects_total",
            "counter",
            "Subscribers closed with 4000.",
            &[("", l(&self.slow_disconnects))],
        );
        let r = &self.rendezvous;
        metric(
            "interrole_relay_hc_rendezvous_total",
            "counter",
            "Hybrid Connections sender connects by outcome.",
            &[
                (
                    "{outcome=\"accepted\"}",
                    l(&r[Rendezvous::Accepted as usize]),
                ),
                (
                    "{outcome=\"rejected\"}",
                    l(&r[Rendezvous::Rejected as usize]),
                ),
                (
                    "{outcome=\"timed_out\"}",
                    l(&r[Rendezvous::TimedOut as usize]),
                ),
                ("{outcome=\"failed\"}", l(&r[Rendezvous::Failed as usize])),
            ],
        );
        let h = &self.http_requests;
        metric(
            "interrole_relay_hc_http_requests_total",
            "counter",
            "Plain HTTP requests relayed to listeners, by outcome.",
            &[
                (
                    "{outcome=\"answered\"}",
                    l(&h[HttpOutcome::Answered as usize]),
                ),
                (
                    "{outcome=\"no_listener\"}",
                    l(&h[HttpOutcome::NoListener as usize]),
                ),
                (
                    "{outcome=\"timed_out\"}",
                    l(&h[HttpOutcome::TimedOut as usize]),
                ),
                ("{outcome=\"failed\"}", l(&h[HttpOutcome::Failed as usize])),
            ],
        );
        let rows: Vec<(String, u64)> = Reason::ALL
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    format!("{{reason=\"{}\"}}", r.name()),
                    l(&self.rejections[i]),
                )
            })
            .collect();
        let rows: Vec<(&str, u64)> = rows.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        metric(
            "interrole_relay_rejections_total",
            "counter",
            "Handshakes, connections and events refused, by reason.",
            &rows,
        );
        s
    }
}
