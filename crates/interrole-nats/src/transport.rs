//! The transport and its connections, in either mode: connecting to one of the servers, opening
//! a connection in core or durable mode, and the connection handle the bus holds.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use async_trait::async_trait;
use interrole_core::link::LinkState;
use interrole_core::{
    Connection, Inbound, InstanceId, InterRoleEvent, OpenSpec, Topic, Transport, TransportError,
    TransportLimits,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::durable::Resets;
use crate::error::NatsError;
use crate::options::{NatsAuth, NatsOptions};
use crate::shared::{Outgoing, Shared, fail};

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
    next_server: Arc<AtomicUsize>,
    /// Durable consumers being made again from a stream sequence: should that fail half-way,
    /// the next connection finishes it rather than start with new events.
    resets: Arc<Resets>,
}

/// Where a new transport starts in its server list: different for each transport of a process
/// and across processes, so that clients spread over a cluster's nodes.
fn spread() -> usize {
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
            next_server: Arc::new(AtomicUsize::new(spread())),
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
        lost: mpsc::UnboundedSender<NatsError>,
    ) -> Result<ConnectOptions, NatsError> {
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
                .map_err(|source| NatsError::CredentialsFile {
                    path: path.clone(),
                    source,
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
                            let _ = lost.send(NatsError::Disconnected);
                        }
                        Event::LameDuckMode => {
                            let _ = lost.send(NatsError::LameDuck);
                        }
                        Event::ServerError(e) => {
                            tracing::warn!(error = %e, "NATS server error");
                            if let async_nats::ServerError::AuthorizationViolation = e {
                                let _ = lost.send(NatsError::AuthorizationViolation);
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
        lost: mpsc::UnboundedSender<NatsError>,
    ) -> Result<async_nats::Client, NatsError> {
        let o = &self.options;
        let servers: Vec<async_nats::ServerAddr> = o
            .servers
            .iter()
            .map(|s| {
                s.parse().map_err(|source| NatsError::InvalidAddress {
                    address: s.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        if servers.is_empty() {
            return Err(NatsError::NoServer);
        }
        let first = self.next_server.fetch_add(1, Ordering::Relaxed) % servers.len();
        let mut last = None;
        for k in 0..servers.len() {
            let server = servers[(first + k) % servers.len()].clone();
            let c = self.connect_options(name, lost.clone()).await?;
            match c.connect(server).await {
                Ok(client) => return Ok(client),
                Err(source) => {
                    let e = NatsError::Connect {
                        servers: o.servers.clone(),
                        source,
                    };
                    if !e.is_transient() {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one server was tried"))
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
        let (tx, rx) = mpsc::unbounded_channel();
        let (reader, writer) = match &self.options.durable {
            None => crate::core::start(&client, &self.options, &spec, rx, &shared).await?,
            Some(durable) => {
                let resets = &self.resets;
                crate::durable::start(&client, &self.options, durable, &spec, resets, rx, &shared)
                    .await?
            }
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

/// Fails the connection with the first loss the client reports.
async fn watch_loss(mut lost: mpsc::UnboundedReceiver<NatsError>, shared: Arc<Shared>) {
    if let Some(error) = lost.recv().await {
        fail(&shared, error);
    }
}

/// A connection: the handle the bus holds, its tasks stopped when it closes or is dropped.
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
            let size = envelope.len();
            return Err(NatsError::PayloadTooLarge { size, max }.into());
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
        self.tx
            .send(outgoing)
            .map_err(|_| NatsError::WriterStopped.into())
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
