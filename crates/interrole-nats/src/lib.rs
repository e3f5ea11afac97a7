//! The NATS transport of [interrole](https://docs.rs/interrole): the bus across machines on a NATS
//! server or cluster, through [async-nats](https://docs.rs/async-nats).
//!
//! # Subjects
//!
//! With the default prefix `interrole`, a bus on topic `orders` as instance `worker-1`:
//!
//! | what | subject |
//! |---|---|
//! | multicast (`publish`) | `interrole.t.orders` |
//! | directed to `worker-1` (`send_to`, requests, replies, repairs) | `interrole.i.orders.worker-1` |
//!
//! The prefix is [`NatsOptions::prefix`]. A topic or instance id containing `.` spans several
//! subject tokens; subjects are only ever used whole, so that is harmless, but NATS permissions
//! granted by token must account for it.
//!
//! # What it promises
//!
//! Each connection is one NATS client (`no_echo`: a bus never hears itself). Events are
//! published in order on the client's single connection, and NATS keeps per-publisher order to
//! each subscriber. An event is acknowledged to the bus (`Inbound::acknowledged`) once a round
//! trip to the server has confirmed that the server has it; a connection is open once a round
//! trip has confirmed its subscriptions. A directed event carries a reply subject in the
//! client's inbox, so that the server answers "no responders" when its target is not connected;
//! the bus hears it as a refusal (`Inbound::rejected`, `NoListener`) before the acknowledgement,
//! and a request to an absent instance fails at once instead of timing out. Core NATS keeps
//! nothing for a subscriber that is away: what it misses while disconnected is found by the bus
//! as a gap and repaired from the publisher's retention (see `docs/reliability.md`), or reported.
//!
//! # Durable mode (JetStream)
//!
//! With [`NatsOptions::durable`] set, events are published to a JetStream stream per topic
//! (`INTERROLE_orders`: the prefix in capitals, then the topic, characters outside
//! `A-Z a-z 0-9 - _` as `_`) holding the topic's multicast and directed subjects, with the
//! message id `{sender}:{seq}` so that the stream drops duplicates within its duplicate window.
//! An event is acknowledged to the bus only when the stream has stored it (on every replica). Each
//! instance reads through two durable consumers (`{instance}-t` for multicast, `{instance}-i`
//! for what is directed to it), acknowledging each event once the bus has it: an instance that is
//! down, or whose process restarts, resumes where it left off and misses nothing the stream still
//! holds ([`Durable::max_age`], [`Durable::max_bytes`]). A new instance starts with the events
//! published after its consumers were created.
//!
//! # Reconnection
//!
//! The client does not reconnect on its own: when it loses its server it reports the connection
//! closed (transient), and the bus's reliable host opens a new one on its retry policy, to any of
//! the [`servers`](NatsOptions::servers) (a cluster's nodes), which drives the same host states
//! and tracing events as the relay transport.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{ConnectErrorKind, ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use interrole_core::link::LinkState;
use interrole_core::{
    Connection, Inbound, InstanceId, InterRoleEvent, OpenSpec, Topic, Transport, TransportError,
    TransportErrorKind, TransportLimits,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How a client proves who it is to the NATS server.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum NatsAuth {
    /// Nothing (a server without authorization).
    #[default]
    None,
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An NKey seed (`SU...`).
    NKey(String),
    /// A credentials file (a JWT and an NKey seed, as `nsc` writes them).
    CredsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret.
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .finish_non_exhaustive(),
            Self::Token(_) => f.write_str("Token(..)"),
            Self::NKey(_) => f.write_str("NKey(..)"),
            Self::CredsFile(p) => f.debug_tuple("CredsFile").field(p).finish(),
        }
    }
}

/// TLS settings, as async-nats offers them.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct NatsTls {
    /// Refuse a server that does not offer TLS.
    pub required: bool,
    /// Trust the certificates of this PEM file (a private CA), beside the system's.
    pub root_certificates: Option<PathBuf>,
    /// Present this client certificate and key (PEM files) for mutual TLS.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

impl NatsTls {
    /// TLS required, trusting the certificates of the PEM file `roots` (and the system's).
    pub fn trusting(roots: impl Into<PathBuf>) -> Self {
        Self {
            required: true,
            root_certificates: Some(roots.into()),
            client_certificate: None,
        }
    }

    /// These settings, presenting `cert` and `key` (PEM files) for mutual TLS.
    pub fn with_client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_certificate = Some((cert.into(), key.into()));
        self
    }
}

/// The durable mode's stream settings (see the crate docs).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Durable {
    /// Copies of the stream in a cluster (1, 3 or 5). Default 1.
    pub replicas: usize,
    /// Events older than this are dropped from the stream. Default 24 h.
    pub max_age: Duration,
    /// The most bytes the stream keeps (-1: no limit). Default -1.
    pub max_bytes: i64,
    /// Keep the stream in memory instead of files. Default false.
    pub memory: bool,
    /// How long the stream remembers message ids to drop duplicates. Default 2 min.
    pub duplicate_window: Duration,
}

impl Default for Durable {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: -1,
            memory: false,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl Durable {
    /// The default settings with `replicas` copies.
    pub fn replicated(replicas: usize) -> Self {
        Self {
            replicas: replicas.max(1),
            ..Self::default()
        }
    }
}

/// Where the NATS servers are and how to use them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatsOptions {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); several for a cluster. A new
    /// connection tries them in a random order.
    pub servers: Vec<String>,
    /// The first token of every subject. Default `interrole`.
    pub prefix: String,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
    /// How long connecting may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How often the client pings the server; a server that does not answer two pings in a
    /// row is considered lost. Default 2 s.
    pub ping_interval: Duration,
    /// JetStream durable mode; `None` (the default) for core NATS.
    pub durable: Option<Durable>,
}

impl NatsOptions {
    /// Options for the servers of `urls`, a comma-separated list (`nats://a:4222,nats://b:4222`).
    pub fn new(urls: &str) -> Self {
        Self {
            servers: urls
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            prefix: "interrole".into(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(2),
            durable: None,
        }
    }

    /// These options in durable mode (JetStream).
    pub fn with_durable(mut self, durable: Durable) -> Self {
        self.durable = Some(durable);
        self
    }

    /// The JetStream stream of `topic` in durable mode.
    pub fn stream_name(&self, topic: &Topic) -> String {
        format!(
            "{}_{}",
            sanitize(&self.prefix).to_ascii_uppercase(),
            sanitize(topic.as_str())
        )
    }

    /// These options with `prefix`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// These options with `auth`.
    pub fn with_auth(mut self, auth: NatsAuth) -> Self {
        self.auth = auth;
        self
    }

    /// These options with `tls`.
    pub fn with_tls(mut self, tls: NatsTls) -> Self {
        self.tls = tls;
        self
    }

    /// The multicast subject of `topic`.
    pub fn topic_subject(&self, topic: &Topic) -> String {
        format!("{}.t.{}", self.prefix, topic.as_str())
    }

    /// The subject of what is directed to `instance` on `topic`.
    pub fn instance_subject(&self, topic: &Topic, instance: &InstanceId) -> String {
        format!("{}.i.{}.{}", self.prefix, topic.as_str(), instance.as_str())
    }
}

/// A name JetStream accepts: `A-Z a-z 0-9 - _`, anything else as `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The NATS transport.
///
/// ```no_run
/// use interrole_nats::{NatsOptions, NatsTransport};
/// let transport = NatsTransport::new(NatsOptions::new("nats://127.0.0.1:4222"));
/// # let _ = transport;
/// ```
#[derive(Debug, Clone)]
pub struct NatsTransport {
    options: Arc<NatsOptions>,
    /// The largest payload the servers accept, learned from the first connection.
    max_payload: Arc<AtomicU64>,
    /// Which server the next connection tries first.
    next_server: Arc<std::sync::atomic::AtomicUsize>,
    /// Durable consumers being made again from a stream sequence (see [`durable_consumers`]):
    /// should that fail half-way, the next connection finishes it rather than start with new
    /// events.
    resets: Arc<Mutex<HashMap<String, u64>>>,
}

/// Where a new transport starts in its server list: different for each transport of a process
/// and across processes, so that clients spread over a cluster's nodes.
fn spread() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
        .wrapping_add(std::process::id() as usize)
}

/// The payload limit assumed before a server said its own (the NATS default).
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

impl NatsTransport {
    /// A transport with `options`.
    pub fn new(options: NatsOptions) -> Self {
        Self {
            options: Arc::new(options),
            max_payload: Arc::new(AtomicU64::new(DEFAULT_MAX_PAYLOAD as u64)),
            next_server: Arc::new(std::sync::atomic::AtomicUsize::new(spread())),
            resets: Arc::default(),
        }
    }

    /// The options.
    pub fn options(&self) -> &NatsOptions {
        &self.options
    }

    /// The client's options, reporting connection loss on `lost`.
    async fn connect_options(
        &self,
        name: &str,
        lost: mpsc::UnboundedSender<TransportError>,
    ) -> Result<ConnectOptions, TransportError> {
        let o = &self.options;
        let mut c = match &o.auth {
            NatsAuth::None => ConnectOptions::new(),
            NatsAuth::UserPassword { user, password } => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(t) => ConnectOptions::with_token(t.clone()),
            NatsAuth::NKey(seed) => ConnectOptions::with_nkey(seed.clone()),
            NatsAuth::CredsFile(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| {
                    TransportError::new(
                        TransportErrorKind::Unauthorized,
                        format!("reading the credentials file {}: {e}", path.display()),
                    )
                })?,
        };
        if o.tls.required {
            c = c.require_tls(true);
        }
        if let Some(path) = &o.tls.root_certificates {
            c = c.add_root_certificates(path.clone());
        }
        if let Some((cert, key)) = &o.tls.client_certificate {
            c = c.add_client_certificate(cert.clone(), key.clone());
        }
        let c = c
            .name(name)
            .no_echo()
            .connection_timeout(o.connect_timeout)
            .ping_interval(o.ping_interval)
            // One attempt: reconnecting is the bus's reliable host's job.
            .max_reconnects(1)
            .event_callback(move |event| {
                let lost = lost.clone();
                async move {
                    match event {
                        Event::Disconnected => {
                            let _ = lost.send(TransportError::new(
                                TransportErrorKind::ConnectionLost,
                                "disconnected from the NATS server",
                            ));
                        }
                        Event::LameDuckMode => {
                            let _ = lost.send(TransportError::new(
                                TransportErrorKind::Unavailable,
                                "the NATS server is shutting down (lame duck mode)",
                            ));
                        }
                        Event::ServerError(e) => {
                            tracing::warn!(error = %e, "NATS server error");
                            if let async_nats::ServerError::AuthorizationViolation = e {
                                let _ = lost.send(TransportError::new(
                                    TransportErrorKind::Forbidden,
                                    format!("NATS: {e}"),
                                ));
                            }
                        }
                        Event::SlowConsumer(sid) => {
                            tracing::warn!(
                                sid,
                                "NATS: this client is a slow consumer; messages were dropped"
                            );
                        }
                        other => tracing::debug!(event = %other, "NATS client event"),
                    }
                }
            });
        Ok(c)
    }

    /// Connects to one of the servers: each in turn, from a different one each time, until one
    /// answers (a dead node of a cluster costs an attempt, not a retry delay).
    async fn connect(
        &self,
        name: &str,
        lost: mpsc::UnboundedSender<TransportError>,
    ) -> Result<async_nats::Client, TransportError> {
        let o = &self.options;
        let servers: Vec<async_nats::ServerAddr> = o
            .servers
            .iter()
            .map(|s| {
                s.parse().map_err(|e| {
                    TransportError::new(
                        TransportErrorKind::Protocol,
                        format!("NATS server address `{s}`: {e}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        if servers.is_empty() {
            return Err(TransportError::new(
                TransportErrorKind::Protocol,
                "no NATS server address given",
            ));
        }
        let first = self.next_server.fetch_add(1, Ordering::Relaxed) % servers.len();
        let mut last = None;
        for k in 0..servers.len() {
            let server = servers[(first + k) % servers.len()].clone();
            let c = self.connect_options(name, lost.clone()).await?;
            match c.connect(server).await.map_err(|e| self.connect_error(e)) {
                Ok(client) => return Ok(client),
                Err(e) if e.is_transient() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one server was tried"))
    }

    fn connect_error(&self, e: async_nats::ConnectError) -> TransportError {
        let o = &self.options;
        {
            let kind = match e.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    TransportErrorKind::Unauthorized
                }
                ConnectErrorKind::ServerParse => TransportErrorKind::Protocol,
                ConnectErrorKind::Tls => TransportErrorKind::Protocol,
                ConnectErrorKind::TimedOut => TransportErrorKind::Timeout,
                // A certificate that does not verify will not verify on retry either.
                _ if e.to_string().contains("certificate") => TransportErrorKind::Protocol,
                _ => TransportErrorKind::ConnectionLost,
            };
            TransportError::new(
                kind,
                format!("connecting to NATS ({}): {e}", o.servers.join(",")),
            )
        }
    }
}

#[async_trait]
impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn limits(&self) -> TransportLimits {
        TransportLimits::with_max_envelope(Some(self.max_payload.load(Ordering::Relaxed) as usize))
    }

    async fn open(
        &self,
        spec: OpenSpec,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Arc<dyn Connection>, TransportError> {
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let client = self.connect(spec.instance.as_str(), lost_tx).await?;
        let max_payload = client.server_info().max_payload;
        if max_payload > 0 {
            self.max_payload
                .store(max_payload as u64, Ordering::Relaxed);
        }
        let shared = Arc::new(LinkState::new(inbound));
        let mut refusals = None;
        let (reader, js) = match &self.options.durable {
            None => {
                let subscribe_error = |e: async_nats::SubscribeError| {
                    TransportError::new(
                        TransportErrorKind::ConnectionLost,
                        format!("subscribing: {e}"),
                    )
                };
                let multicast = client
                    .subscribe(self.options.topic_subject(&spec.topic))
                    .await
                    .map_err(subscribe_error)?;
                let directed = client
                    .subscribe(self.options.instance_subject(&spec.topic, &spec.instance))
                    .await
                    .map_err(subscribe_error)?;
                let prefix = client.new_inbox();
                let refused = client
                    .subscribe(format!("{prefix}.*"))
                    .await
                    .map_err(subscribe_error)?;
                refusals = Some(Refusals {
                    prefix,
                    subscriber: refused,
                });
                // The subscriptions are registered once the server has answered a round trip.
                round_trip(&client).await.map_err(|e| {
                    TransportError::new(e.kind(), format!("subscribing: {}", e.message()))
                })?;
                (
                    tokio::spawn(read_loop(multicast, directed, shared.clone())),
                    None,
                )
            }
            Some(durable) => {
                let info = client.server_info();
                if !info.jetstream {
                    return Err(TransportError::new(
                        TransportErrorKind::Protocol,
                        format!(
                            "durable mode needs JetStream, which is not enabled on the NATS server {} ({}:{}): start it with --js",
                            info.server_name, info.host, info.port
                        ),
                    ));
                }
                let js = async_nats::jetstream::new(client.clone());
                let (multicast, directed) =
                    durable_consumers(&js, &self.options, durable, &spec, &self.resets).await?;
                let own = spec.instance.clone();
                (
                    tokio::spawn(durable_read_loop(multicast, directed, own, shared.clone())),
                    Some(js),
                )
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = match (js, refusals) {
            (None, Some(refusals)) => {
                tokio::spawn(write_loop(client.clone(), rx, refusals, shared.clone()))
            }
            (None, None) => unreachable!("core mode subscribes for refusals"),
            (Some(js), _) => tokio::spawn(durable_write_loop(
                js,
                spec.instance.clone(),
                rx,
                shared.clone(),
            )),
        };
        let tasks = vec![
            writer,
            reader,
            tokio::spawn(watch_loss(lost_rx, shared.clone())),
        ];
        tracing::debug!(instance = %spec.instance, topic = %spec.topic, "NATS connection open");
        Ok(Arc::new(NatsConnection {
            options: self.options.clone(),
            topic: spec.topic,
            instance: spec.instance,
            client,
            shared,
            tx,
            tasks: Mutex::new(tasks),
            max_payload: self.max_payload.clone(),
        }))
    }
}

/// The connection's state, shared by its handle and its tasks.
type Shared = LinkState;

/// Fails the connection, saying so once.
fn fail(shared: &Shared, error: TransportError) {
    let message = error.to_string();
    if shared.fail(error) {
        tracing::debug!(error = %message, "NATS connection lost");
    }
}

/// A round trip to the server: a request to a subject nobody serves, which the server answers
/// with "no responders" once it has processed everything this client sent before. (The client's
/// `flush` only writes the socket.)
async fn round_trip(client: &async_nats::Client) -> Result<(), TransportError> {
    use async_nats::RequestErrorKind;
    let request = client.request(client.new_inbox(), Bytes::new());
    match tokio::time::timeout(Duration::from_secs(10), request).await {
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == RequestErrorKind::TimedOut => Err(TransportError::new(
            TransportErrorKind::Timeout,
            "the NATS server did not answer a round trip in time",
        )),
        Ok(Err(e)) => Err(TransportError::new(
            TransportErrorKind::ConnectionLost,
            format!("a round trip to the NATS server: {e}"),
        )),
        Err(_) => Err(TransportError::new(
            TransportErrorKind::Timeout,
            "the NATS server did not answer a round trip in 10 s",
        )),
    }
}

/// One event on its way to the server.
struct Outgoing {
    subject: String,
    seq: u64,
    envelope: Bytes,
    /// Directed to one instance (core mode asks the server to say when nobody listens).
    directed: bool,
}

/// Where the server's "no responders" answers to directed events arrive: `{prefix}.{seq}`.
struct Refusals {
    prefix: String,
    subscriber: async_nats::Subscriber,
}

impl Refusals {
    /// Reports every refusal that has arrived, without waiting.
    fn report(&mut self, shared: &Shared) {
        use futures::FutureExt;
        while let Some(Some(message)) = self.subscriber.next().now_or_never() {
            if message.status != Some(async_nats::StatusCode::NO_RESPONDERS) {
                continue;
            }
            let seq = message
                .subject
                .rsplit('.')
                .next()
                .and_then(|s| s.parse::<u64>().ok());
            let Some(seq) = seq else { continue };
            if !shared.is_ending() {
                shared.inbound().rejected(
                    seq,
                    TransportError::new(
                        TransportErrorKind::NoListener,
                        "no instance of that name is connected to the topic (NATS: no responders)",
                    ),
                );
            }
        }
    }
}

/// Publishes in order; after each batch, a round trip to the server acknowledges it to the bus.
async fn write_loop(
    client: async_nats::Client,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut refusals: Refusals,
    shared: Arc<Shared>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut last = 0;
        let n = batch.len() as u64;
        for Outgoing {
            subject,
            seq,
            envelope,
            directed,
        } in batch
        {
            // A directed event carries a reply subject, so that the server says at once when
            // nobody subscribes to its target's subject ("no responders").
            let published = if directed {
                let reply = format!("{}.{seq}", refusals.prefix);
                client.publish_with_reply(subject, reply, envelope).await
            } else {
                client.publish(subject, envelope).await
            };
            if let Err(e) = published {
                fail(
                    &shared,
                    TransportError::new(
                        TransportErrorKind::ConnectionLost,
                        format!("publishing: {e}"),
                    ),
                );
                return;
            }
            last = seq;
        }
        if let Err(e) = round_trip(&client).await {
            fail(&shared, e);
            return;
        }
        // The server answered the round trip after everything before it, and the client hands
        // messages to subscriptions in the order they arrive: every refusal of this batch is
        // waiting, and is reported before the acknowledgement that covers it.
        refusals.report(&shared);
        shared.written(n);
        if !shared.is_ending() {
            shared.inbound().acknowledged(last);
        }
    }
}

/// Hands what arrives on both subscriptions to the inbound.
async fn read_loop(
    mut multicast: async_nats::Subscriber,
    mut directed: async_nats::Subscriber,
    shared: Arc<Shared>,
) {
    loop {
        let message = tokio::select! {
            m = multicast.next() => m,
            m = directed.next() => m,
        };
        let Some(message) = message else {
            fail(
                &shared,
                TransportError::new(
                    TransportErrorKind::ConnectionLost,
                    "the NATS subscription ended",
                ),
            );
            return;
        };
        if shared.is_ending() {
            return;
        }
        match InterRoleEvent::from_wire(message.payload) {
            Ok(event) => shared.inbound().event(event),
            Err(error) => {
                tracing::warn!(subject = %message.subject, %error, "an undecodable envelope was dropped");
                shared.inbound().missed(None, 1);
            }
        }
    }
}

type Pull =
    async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>;

/// Creates (or finds) the topic's stream and this instance's two durable consumers.
async fn durable_consumers(
    js: &async_nats::jetstream::Context,
    options: &NatsOptions,
    durable: &Durable,
    spec: &OpenSpec,
    resets: &Mutex<HashMap<String, u64>>,
) -> Result<(Pull, Pull), TransportError> {
    use async_nats::jetstream::{consumer, stream};
    let name = options.stream_name(&spec.topic);
    let topic_subject = options.topic_subject(&spec.topic);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![
                topic_subject.clone(),
                format!("{}.i.{}.>", options.prefix, spec.topic.as_str()),
            ],
            storage: if durable.memory {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            num_replicas: durable.replicas,
            max_age: durable.max_age,
            max_bytes: durable.max_bytes,
            duplicate_window: durable.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            let text = e.to_string();
            let kind = if text.contains("no responders") || text.contains("not enabled") {
                // JetStream is off on the server: configuration, not a passing fault.
                TransportErrorKind::Protocol
            } else {
                TransportErrorKind::Unavailable
            };
            TransportError::new(
                kind,
                format!("JetStream stream {name}: {e} (is JetStream enabled on the server?)"),
            )
        })?;
    let consumer = |suffix: &str, filter: String| {
        let durable_name = format!("{}-{suffix}", sanitize(spec.instance.as_str()));
        let key = format!("{name}/{durable_name}");
        let stream = stream.clone();
        async move {
            let unavailable = |what: &str, e: &dyn fmt::Display| {
                TransportError::new(
                    TransportErrorKind::Unavailable,
                    format!("JetStream consumer {durable_name}: {what}{e}"),
                )
            };
            let config = |deliver_policy| consumer::pull::Config {
                durable_name: Some(durable_name.clone()),
                filter_subject: filter.clone(),
                deliver_policy,
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 20_000,
                ..Default::default()
            };
            let unfinished = resets.lock().get(&key).copied();
            let policy = unfinished.map_or(consumer::DeliverPolicy::New, |start_sequence| {
                consumer::DeliverPolicy::ByStartSequence { start_sequence }
            });
            let found: Pull = stream
                .get_or_create_consumer(&durable_name, config(policy))
                .await
                .map_err(|e| unavailable("", &e))?;
            resets.lock().remove(&key);
            // The server's answer to finding or making it carries its state.
            let Some(start) = resume_from(found.cached_info()) else {
                return Ok(found);
            };
            // A previous connection of this instance left events delivered and not acknowledged
            // (or pull requests the server still serves): JetStream would hand them out again
            // only after the acknowledgement wait, behind newer ones, and this instance would
            // drop them as old. The consumer is made again from the first event not
            // acknowledged, which also ends the old connection's requests.
            tracing::debug!(consumer = %durable_name, start, "resuming a durable consumer from its acknowledgement floor");
            resets.lock().insert(key.clone(), start);
            stream
                .delete_consumer(&durable_name)
                .await
                .map_err(|e| unavailable("resetting: ", &e))?;
            let made = stream
                .create_consumer(config(consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                }))
                .await
                .map_err(|e| unavailable("resetting: ", &e))?;
            resets.lock().remove(&key);
            Ok::<Pull, TransportError>(made)
        }
    };
    let multicast = consumer("t", topic_subject).await?;
    let directed = consumer("i", options.instance_subject(&spec.topic, &spec.instance)).await?;
    Ok((multicast, directed))
}

/// Where a durable consumer found at open must start again: the stream sequence after its
/// acknowledgement floor, when a previous connection left events delivered and not acknowledged or
/// pull requests waiting; `None` when it can go on as it is.
fn resume_from(info: &async_nats::jetstream::consumer::Info) -> Option<u64> {
    (info.num_ack_pending > 0 || info.num_waiting > 0).then(|| info.ack_floor.stream_sequence + 1)
}

/// Publishes to the stream in order; each event is acknowledged to the bus once stored.
async fn durable_write_loop(
    js: async_nats::jetstream::Context,
    // Every event a connection sends is its own instance's.
    sender: InstanceId,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let lost = |shared: &Shared, what: &str, e: &dyn fmt::Display| {
        fail(
            shared,
            TransportError::new(TransportErrorKind::ConnectionLost, format!("{what}: {e}")),
        );
    };
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let mut pending = Vec::with_capacity(batch.len());
        for Outgoing {
            subject,
            seq,
            envelope: payload,
            ..
        } in batch
        {
            let mut headers = async_nats::HeaderMap::new();
            // The stream drops a message id it has seen: (sender, seq) de-duplication.
            headers.insert("Nats-Msg-Id", format!("{sender}:{seq}").as_str());
            match js.publish_with_headers(subject, headers, payload).await {
                Ok(ack) => pending.push((seq, ack)),
                Err(e) => return lost(&shared, "publishing to JetStream", &e),
            }
        }
        for (seq, ack) in pending {
            match ack.await {
                Ok(_) => {
                    if !shared.is_ending() {
                        shared.inbound().acknowledged(seq);
                    }
                }
                Err(e) => return lost(&shared, "JetStream did not store an event", &e),
            }
        }
        shared.written(n);
    }
}

/// Reads both durable consumers, hands events to the inbound, then acknowledges them.
async fn durable_read_loop(multicast: Pull, directed: Pull, own: InstanceId, shared: Arc<Shared>) {
    let open = |c: Pull| async move { c.messages().await };
    let (mut m, mut d) = match tokio::try_join!(open(multicast), open(directed)) {
        Ok(x) => x,
        Err(e) => {
            fail(
                &shared,
                TransportError::new(
                    TransportErrorKind::ConnectionLost,
                    format!("reading the durable consumers: {e}"),
                ),
            );
            return;
        }
    };
    loop {
        let next = tokio::select! {
            x = m.next() => x,
            x = d.next() => x,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "durable consumer");
                continue;
            }
            None => {
                fail(
                    &shared,
                    TransportError::new(
                        TransportErrorKind::ConnectionLost,
                        "a durable consumer ended",
                    ),
                );
                return;
            }
        };
        if shared.is_ending() {
            return;
        }
        match InterRoleEvent::from_wire(message.payload.clone()) {
            // The stream holds this instance's own multicast events too: no echo.
            Ok(event) if event.sender() == &own => {}
            Ok(event) => shared.inbound().event(event),
            Err(error) => {
                tracing::warn!(subject = %message.subject, %error, "an undecodable envelope was dropped");
                shared.inbound().missed(None, 1);
            }
        }
        if let Err(e) = message.ack().await {
            tracing::debug!(error = %e, "acknowledging a JetStream message");
        }
    }
}

async fn watch_loss(mut lost: mpsc::UnboundedReceiver<TransportError>, shared: Arc<Shared>) {
    if let Some(error) = lost.recv().await {
        fail(&shared, error);
    }
}

struct NatsConnection {
    options: Arc<NatsOptions>,
    topic: Topic,
    instance: InstanceId,
    client: async_nats::Client,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Outgoing>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    max_payload: Arc<AtomicU64>,
}

impl fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConnection")
            .field("topic", &self.topic)
            .field("instance", &self.instance)
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Connection for NatsConnection {
    fn send(
        &self,
        event: &InterRoleEvent,
        target: Option<&InstanceId>,
    ) -> Result<(), TransportError> {
        self.shared.check_open()?;
        let envelope = event.to_wire()?;
        let max = self.max_payload.load(Ordering::Relaxed) as usize;
        if envelope.len() > max {
            return Err(TransportError::new(
                TransportErrorKind::PayloadTooLarge,
                format!(
                    "an envelope of {} bytes is over the NATS server's max_payload of {max} bytes",
                    envelope.len()
                ),
            ));
        }
        let subject = match target {
            None => self.options.topic_subject(&self.topic),
            Some(t) => self.options.instance_subject(&self.topic, t),
        };
        self.shared.queued();
        let outgoing = Outgoing {
            subject,
            seq: event.seq(),
            envelope,
            directed: target.is_some(),
        };
        self.tx.send(outgoing).map_err(|_| {
            TransportError::new(TransportErrorKind::ConnectionLost, "the writer has stopped")
        })
    }

    async fn flush(&self) -> Result<(), TransportError> {
        self.shared.flush().await
    }

    async fn close(&self) {
        self.shared.end();
        // All aborted before any is awaited, so that a close dropped at an await leaves none.
        let tasks = std::mem::take(&mut *self.tasks.lock());
        tasks.iter().for_each(JoinHandle::abort);
        for task in tasks {
            let _ = task.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.drain()).await;
    }

    fn is_open(&self) -> bool {
        self.shared.is_open()
    }
}

impl Drop for NatsConnection {
    fn drop(&mut self) {
        self.shared.end();
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}
