//! Worker roles on an interrole bus: a controller and N worker roles, each worker in its own
//! process, talking through an interrole relay that the example embeds; in the spirit of the
//! `SampleWorkerRole` and `InterRoleEventSubscriberExtension` of the original .NET design that
//! interrole descends from (see `docs/architecture.md`).
//!
//! By default the controller process starts a relay server on 127.0.0.1 (an ephemeral port, a
//! shared access key made up for the run), joins it, and starts every worker by running its own
//! executable again with the relay's address (the key travels in the environment, not on the
//! command line). `--relay URL --sas-key NAME=KEY` joins a relay that is already running instead;
//! `--transport nats [--nats-url URL]` runs the same processes with every bus on a NATS server
//! that is already running (default `nats://127.0.0.1:4222`; start one with `nats-server`);
//! `--transport loopback` keeps the controller and the workers in one process, on the in-process
//! [`Loopback`]. Every run across processes uses a topic of its own, made up for the run.
//!
//! Each worker role has the original's life cycle:
//! - `on_start` returns at once and starts its bus in a spawned task (the original uses the
//!   TPL); a failure there is logged and requests a recycle;
//! - the start task connects the bus, subscribes one full [`Observer`] of every inter-role event,
//!   which handles the original's two events, `RoleConfigurationSectionRefresh` and
//!   `RoleGracefulRecycle`, serves status queries, and tells the controller it is ready (with
//!   `send_to`);
//! - `run` is the role's main loop: it works until a recycle is requested;
//! - `on_stop` reports `RoleRecycled` to the controller, with what it saw, closes the bus (the
//!   observer gets `on_completed` once) and drops the subscription.
//!
//! The controller waits until every worker is listening, publishes a configuration refresh,
//! then (across processes) asks every worker for its status at once (`Bus::request_all`: one
//! query, a reply from each worker) until each one confirms the refresh, publishes a graceful
//! recycle, and waits for every worker to
//! report back and, across processes, for every worker process to exit with status 0. One
//! worker's refresh handler panics once, on purpose: the other workers are unaffected and the
//! failing one is told through its own `on_error`. A summary table and a one-line summary close
//! the run. Every worker process checks its own outcome (exit code 1 if anything is off), the
//! controller checks what the workers reported and how they exited: exit code 0 when everything
//! happened as described, 1 otherwise.
//!
//! ```text
//! cargo run --release --example worker_roles                 # 3 worker processes, embedded relay
//! cargo run --release --example worker_roles -- --workers 8
//! cargo run --release --example worker_roles -- --transport loopback   # one process
//! cargo run --release --example worker_roles -- --relay ws://127.0.0.1:9400 --sas-key root=secret
//! cargo run --release --example worker_roles -- --transport nats   # nats-server on 127.0.0.1:4222
//! cargo run --release --example worker_roles -- --transport nats --nats-url nats://127.0.0.1:4333
//! RUST_LOG=debug cargo run --release --example worker_roles  # more detail (default: info)
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use interrole::nats::NatsOptions;
use interrole::relay::Credentials;
use interrole::{
    Bus, InstanceId, InterRoleEvent, Loopback, Observable, Observer, ObserverError, Subscription,
    TransportErrorKind,
};
use interrole_relay_server::{Config, KeyConfig, Server};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

/// The longest wait for any step in one process, so that the example can never hang.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait for any step across processes (starting a process, connecting to the relay
/// or to NATS).
const PROCESS_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The role name every worker instance shares (the original's `RoleName`).
const WORKER_ROLE: &str = "worker";
/// The controller's instance id.
const CONTROLLER: &str = "controller";
/// The environment variable that hands the relay's shared access key (`NAME=KEY`) to workers.
const SAS_KEY_ENV: &str = "WORKER_ROLES_SAS_KEY";
/// The name of the key the embedded relay makes up for the run.
const EMBEDDED_KEY_NAME: &str = "worker-roles";
/// The NATS server `--transport nats` joins without `--nats-url`.
const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

const USAGE: &str = "\
usage: worker_roles [--workers N] [--transport relay|nats|loopback]
                    [--relay URL [--sas-key NAME=KEY]] [--nats-url URL]

A controller and N worker roles exchange inter-role events on an interrole bus. By default every
worker runs in its own process and they meet on a relay embedded in the controller's process.

options:
  --workers N            number of worker roles, 1 to 64 (default 3)
  --transport relay      one process per worker, over a relay (the default)
  --transport nats       one process per worker, over a running NATS server (nats-server)
  --transport loopback   everything in this process, over the in-process loopback
  --relay URL            join the relay at URL (ws://host:port) instead of embedding one
  --sas-key NAME=KEY     the shared access key for --relay
  --nats-url URL         the NATS server(s) for --transport nats, comma-separated for a cluster
                         (default nats://127.0.0.1:4222)
  -h, --help             print this help

environment:
  RUST_LOG               log filter (default info), e.g. RUST_LOG=debug";

// ---------------------------------------------------------------------------------------------
// Events

/// The original's `RoleConfigurationSectionRefreshEvent`: reload one configuration section.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleConfigurationSectionRefresh {
    section_name: String,
}
interrole::impl_event!(
    RoleConfigurationSectionRefresh = "interrole.role.configuration-section-refresh"
);

/// The original's `RoleGracefulRecycleEvent`: every instance of the role should recycle
/// gracefully.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleGracefulRecycle {
    role_name: String,
}
interrole::impl_event!(RoleGracefulRecycle = "interrole.role.graceful-recycle");

/// Worker to controller: my bus is up and my subscriber is listening.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleReady {
    instance: String,
    pid: u32,
}
interrole::impl_event!(RoleReady = "examples.worker-roles.role-ready");

/// Worker to controller, from `on_stop`: recycled gracefully (sent just before the bus closes,
/// since a closed bus cannot publish), with what the worker saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleRecycled {
    instance: String,
    reason: String,
    report: Report,
    /// Observer panics the worker's bus counted.
    panics_counted: u64,
}
interrole::impl_event!(RoleRecycled = "examples.worker-roles.role-recycled");

/// Controller to one worker, a request: how are you?
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StatusQuery;
interrole::impl_event!(StatusQuery = "examples.worker-roles.status-query");

/// The reply to a [`StatusQuery`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleStatus {
    instance: String,
    pid: u32,
    report: Report,
}
interrole::impl_event!(RoleStatus = "examples.worker-roles.role-status");

/// What a worker's subscriber saw, as plain values that can travel.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Report {
    refreshes: u64,
    recycles: u64,
    ignored: u64,
    /// What `on_error` was told, as text.
    errors: Vec<String>,
    /// How many of those were panics.
    panics: u64,
    /// Status queries served.
    status_queries: u64,
}

impl Report {
    fn events(&self) -> u64 {
        self.refreshes + self.recycles + self.ignored
    }
}

// ---------------------------------------------------------------------------------------------
// The subscriber: the original's `InterRoleEventSubscriberExtension`

/// What one worker's subscriber saw; shared with its role and read by the summary.
#[derive(Debug, Default)]
struct Tally {
    refreshes: AtomicU64,
    recycles: AtomicU64,
    ignored: AtomicU64,
    errors: Mutex<Vec<ObserverError>>,
    completed: AtomicU64,
    status_queries: AtomicU64,
}

impl Tally {
    fn report(&self) -> Report {
        let errors = self.errors.lock().unwrap();
        Report {
            refreshes: self.refreshes.load(Ordering::Relaxed),
            recycles: self.recycles.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            errors: errors.iter().map(ToString::to_string).collect(),
            panics: errors
                .iter()
                .filter(|e| matches!(e, ObserverError::Panicked { .. }))
                .count() as u64,
            status_queries: self.status_queries.load(Ordering::Relaxed),
        }
    }
}

/// A recycle request: `RoleEnvironment.RequestRecycle()` in the original. The first reason wins.
#[derive(Debug, Default)]
struct RecycleRequest {
    notify: Notify,
    reason: Mutex<Option<String>>,
}

impl RecycleRequest {
    fn request(&self, reason: impl Into<String>) {
        self.reason
            .lock()
            .unwrap()
            .get_or_insert_with(|| reason.into());
        // Stores a permit when `run` is not waiting yet: the request is never lost.
        self.notify.notify_one();
    }

    fn reason(&self) -> String {
        self.reason.lock().unwrap().clone().unwrap_or_default()
    }
}

/// One observer of every inter-role event, dispatching on the payload's type as the original
/// does. It runs on the publisher's thread, so it only records and signals; the role does the
/// work.
#[derive(Debug)]
struct InterRoleEventSubscriber {
    role_name: &'static str,
    tally: Arc<Tally>,
    recycle: Arc<RecycleRequest>,
    /// Set for the one worker whose refresh handler panics, once, on purpose.
    panic_once: AtomicBool,
    /// The role's span: the observer is called on the publisher's thread, outside it.
    span: Span,
}

impl Observer<InterRoleEvent> for InterRoleEventSubscriber {
    fn on_next(&self, event: &InterRoleEvent) {
        let _span = self.span.enter();
        if let Some(refresh) = event.payload::<RoleConfigurationSectionRefresh>() {
            self.handle_refresh(event, refresh);
        } else if let Some(recycle) = event.payload::<RoleGracefulRecycle>() {
            self.handle_recycle(event, recycle);
        } else {
            self.tally.ignored.fetch_add(1, Ordering::Relaxed);
            debug!(type_tag = %event.type_tag(), sender = %event.sender(), "event ignored");
        }
    }

    fn on_error(&self, error: ObserverError) {
        let _span = self.span.enter();
        match &error {
            ObserverError::Panicked { .. } => {
                warn!(%error, "on_error: my handler panicked; still subscribed, carrying on")
            }
            _ => error!(%error, "on_error"),
        }
        self.tally.errors.lock().unwrap().push(error);
    }

    fn on_completed(&self) {
        let _span = self.span.enter();
        self.tally.completed.fetch_add(1, Ordering::Relaxed);
        info!("on_completed: the bus closed, no more events");
    }
}

impl InterRoleEventSubscriber {
    fn handle_refresh(&self, event: &InterRoleEvent, e: &RoleConfigurationSectionRefresh) {
        self.tally.refreshes.fetch_add(1, Ordering::Relaxed);
        if self.panic_once.swap(false, Ordering::Relaxed) {
            warn!(
                section = %e.section_name,
                "INTENDED FAILURE: this refresh handler panics on purpose, once; the panic \
                 message below is expected"
            );
            panic!("intended panic in the refresh handler (demo of observer isolation)");
        }
        info!(section = %e.section_name, from = %event.sender(), seq = event.seq(),
            "configuration section refreshed");
    }

    fn handle_recycle(&self, event: &InterRoleEvent, e: &RoleGracefulRecycle) {
        self.tally.recycles.fetch_add(1, Ordering::Relaxed);
        if e.role_name != self.role_name {
            debug!(role = %e.role_name, "recycle request for another role; ignored");
            return;
        }
        info!(from = %event.sender(), seq = event.seq(), "graceful recycle requested");
        self.recycle
            .request(format!("graceful recycle requested by {}", event.sender()));
    }
}

// ---------------------------------------------------------------------------------------------
// The worker role: the original's `SampleWorkerRole`

/// How a role reaches the others.
#[derive(Debug, Clone)]
enum Fabric {
    /// The in-process loopback: every role in this process.
    Loopback(Loopback),
    /// An interrole relay, on a topic of its own for the run.
    Relay {
        url: String,
        credentials: Credentials,
        topic: String,
    },
    /// A NATS server (or cluster: a comma-separated list), on a topic of its own for the run.
    Nats { url: String, topic: String },
}

impl Fabric {
    /// The transport's name, for the logs and the closing line.
    fn name(&self) -> &'static str {
        match self {
            Self::Loopback(_) => "loopback",
            Self::Relay { .. } => "relay",
            Self::Nats { .. } => "nats",
        }
    }

    /// Builds the bus of `instance` and, across processes, waits until it is connected.
    async fn bus(&self, instance: &str) -> Result<Bus, Box<dyn Error + Send + Sync>> {
        let bus = match self {
            Self::Loopback(fabric) => {
                return Ok(Bus::builder()
                    .instance(instance)
                    .transport(fabric.clone())
                    .build()?);
            }
            Self::Relay {
                url,
                credentials,
                topic,
            } => Bus::builder()
                .instance(instance)
                .topic(topic.as_str())
                .relay(url, credentials.clone())
                .build()?,
            Self::Nats { url, topic } => Bus::builder()
                .instance(instance)
                .topic(topic.as_str())
                .nats(NatsOptions::new(url))
                .build()?,
        };
        if let Some(host) = bus.host() {
            if let Err(e) = host.wait_opened(PROCESS_STEP_TIMEOUT).await {
                // A timeout alone does not say what is wrong: add the last connection error.
                let last = host.status().error;
                bus.close().await;
                let timed_out = e.kind() == TransportErrorKind::Timeout;
                return Err(match (self, last) {
                    (Self::Nats { url, .. }, last) if timed_out => format!(
                        "cannot reach the NATS server at {url} in {PROCESS_STEP_TIMEOUT:?} ({}); \
                         is nats-server running? start it with `nats-server -p {}`",
                        last.map_or_else(|| e.to_string(), |l| l.to_string()),
                        nats_port(url)
                    ),
                    (Self::Nats { url, .. }, _) => format!("cannot use NATS at {url}: {e}"),
                    (_, Some(last)) if timed_out => format!("{e} (last error: {last})"),
                    _ => e.to_string(),
                }
                .into());
            }
        }
        Ok(bus)
    }

    /// The arguments that tell a worker process where to meet the others.
    fn worker_args(&self) -> Vec<&str> {
        match self {
            Self::Loopback(_) => Vec::new(),
            Self::Relay { url, topic, .. } => vec!["--relay", url, "--topic", topic],
            Self::Nats { url, topic } => vec!["--nats-url", url, "--topic", topic],
        }
    }
}

/// The port of the first server in a NATS URL list (4222, NATS's own, when it has none).
fn nats_port(urls: &str) -> &str {
    let first = urls.split(',').next().unwrap_or_default().trim();
    let authority = first.split_once("://").map_or(first, |(_, rest)| rest);
    let host_port = authority.split('/').next().unwrap_or_default();
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, hp)| hp);
    match host_port.rsplit_once(':') {
        Some((_, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => port,
        _ => "4222",
    }
}

/// The bus and the subscriptions of a started role.
#[derive(Debug)]
struct Comms {
    bus: Bus,
    subscription: Subscription,
    /// Answers the controller's status queries.
    serving: Subscription,
}

/// The original's `SampleWorkerRole`: one worker instance with its own bus.
#[derive(Debug)]
struct WorkerRole {
    instance: String,
    controller: InstanceId,
    fabric: Fabric,
    panics_on_refresh: bool,
    /// How long `run` waits for a recycle request before giving up.
    recycle_timeout: Duration,
    tally: Arc<Tally>,
    recycle: Arc<RecycleRequest>,
    /// Filled by the start task.
    comms: Arc<Mutex<Option<Comms>>>,
    start_task: Option<JoinHandle<()>>,
    /// Observer panics the bus counted (its `stats().hub.panics`), read before closing.
    panics_counted: u64,
}

/// What a worker reports when its life cycle ends.
#[derive(Debug)]
struct WorkerOutcome {
    instance: String,
    panics_on_refresh: bool,
    tally: Arc<Tally>,
    panics_counted: u64,
}

/// The original's start task: builds the bus, subscribes the subscriber, serves status queries,
/// tells the controller.
async fn start_comms(
    instance: String,
    controller: &InstanceId,
    fabric: &Fabric,
    subscriber: InterRoleEventSubscriber,
    slot: &Mutex<Option<Comms>>,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    let bus = fabric.bus(&instance).await?;
    // The subscriber observes every event and dispatches on the type itself: tell the bus which
    // types it knows, or those arriving from other processes are counted as unknown.
    bus.register::<RoleConfigurationSectionRefresh>();
    bus.register::<RoleGracefulRecycle>();
    let tally = subscriber.tally.clone();
    // `Bus::subscribe` takes a closure; a full observer of every event goes through the
    // `Observable` trait.
    let subscription = Observable::subscribe(&bus, Arc::new(subscriber));
    let me = instance.clone();
    let serving = bus.serve(move |_: &StatusQuery| {
        tally.status_queries.fetch_add(1, Ordering::Relaxed);
        RoleStatus {
            instance: me.clone(),
            pid: std::process::id(),
            report: tally.report(),
        }
    });
    *slot.lock().unwrap() = Some(Comms {
        bus: bus.clone(),
        subscription,
        serving,
    });
    info!("bus started, subscriber listening");
    bus.send_to(
        controller,
        RoleReady {
            instance,
            pid: std::process::id(),
        },
    )?;
    Ok(())
}

impl WorkerRole {
    fn new(instance: String, controller: InstanceId, fabric: Fabric, panics: bool) -> Self {
        Self {
            instance,
            controller,
            fabric,
            panics_on_refresh: panics,
            recycle_timeout: STEP_TIMEOUT,
            tally: Arc::default(),
            recycle: Arc::default(),
            comms: Arc::default(),
            start_task: None,
            panics_counted: 0,
        }
    }

    /// Starts inter-role communication without blocking start-up; always returns true, as the
    /// original does: a failure in the start task is logged and requests a recycle.
    fn on_start(&mut self) -> bool {
        let instance = self.instance.clone();
        let controller = self.controller.clone();
        let fabric = self.fabric.clone();
        let slot = self.comms.clone();
        let recycle = self.recycle.clone();
        let subscriber = InterRoleEventSubscriber {
            role_name: WORKER_ROLE,
            tally: self.tally.clone(),
            recycle: self.recycle.clone(),
            panic_once: AtomicBool::new(self.panics_on_refresh),
            span: Span::current(),
        };
        let start = async move {
            if let Err(e) = start_comms(instance, &controller, &fabric, subscriber, &slot).await {
                error!(error = %e, "starting inter-role communication failed; requesting a recycle");
                recycle.request(format!("start-up failed: {e}"));
            }
        };
        self.start_task = Some(tokio::spawn(start.in_current_span()));
        info!("on_start returned (inter-role communication starting in the background)");
        true
    }

    /// The role's main loop: works until a recycle is requested (or the timeout passes).
    async fn run(&self) {
        let mut heartbeat = tokio::time::interval(Duration::from_millis(100));
        let deadline = tokio::time::sleep(self.recycle_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = self.recycle.notify.notified() => {
                    info!(reason = %self.recycle.reason(), "run: leaving the main loop");
                    return;
                }
                _ = heartbeat.tick() => debug!("run: working"),
                () = &mut deadline => {
                    warn!(timeout = ?self.recycle_timeout,
                        "run: no recycle request in time; stopping");
                    self.recycle.request("timed out waiting for a recycle request");
                    return;
                }
            }
        }
    }

    /// Recycles gracefully: reports to the controller, closes the bus, drops the subscription.
    async fn on_stop(&mut self) {
        if let Some(task) = self.start_task.take() {
            if tokio::time::timeout(PROCESS_STEP_TIMEOUT, task)
                .await
                .is_err()
            {
                warn!("on_stop: the start task did not finish in time");
            }
        }
        let comms = self.comms.lock().unwrap().take();
        let Some(Comms {
            bus,
            subscription,
            serving,
        }) = comms
        else {
            warn!("on_stop: inter-role communication never started");
            return;
        };
        drop(serving);
        self.panics_counted = bus.stats().hub.panics;
        // Report first: a closed bus cannot publish.
        let recycled = RoleRecycled {
            instance: self.instance.clone(),
            reason: self.recycle.reason(),
            report: self.tally.report(),
            panics_counted: self.panics_counted,
        };
        if let Err(e) = bus.send_to(&self.controller, recycled) {
            error!(error = %e, "on_stop: could not report the recycle to the controller");
        }
        // Drain while the subscriber is still subscribed: it gets what it was given, then
        // `on_completed` exactly once. Dropping the guard first (the original's order) would
        // unsubscribe it silently, without `on_completed`; after the drain the guard is inactive
        // and dropping it is a no-op. Across processes, the drain also waits until the relay (or
        // NATS) has acknowledged the report.
        if !bus.drain(STEP_TIMEOUT).await {
            warn!(
                "on_stop: the drain ran out of time (an event not acknowledged, or a mailbox not drained)"
            );
        }
        debug_assert!(!subscription.is_active());
        drop(subscription);
        info!("on_stop: recycled gracefully");
    }

    /// The whole life cycle: on_start, run, on_stop.
    async fn live(mut self) -> WorkerOutcome {
        if !self.on_start() {
            error!("on_start refused to start");
        }
        self.run().await;
        self.on_stop().await;
        WorkerOutcome {
            instance: self.instance,
            panics_on_refresh: self.panics_on_refresh,
            tally: self.tally,
            panics_counted: self.panics_counted,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The controller, in one process

/// Receives up to `n` items from `rx`, waiting until `deadline` at most.
async fn collect<T>(rx: &mut mpsc::UnboundedReceiver<T>, n: usize, deadline: Instant) -> Vec<T> {
    let mut items = Vec::with_capacity(n);
    while items.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(item)) => items.push(item),
            Ok(None) | Err(_) => break,
        }
    }
    items
}

/// The worker whose refresh handler panics once: worker-2 (worker-1 with a single worker).
fn faulty_worker(workers: usize) -> usize {
    workers.min(2)
}

/// What a run found, for the closing line.
#[derive(Debug, Default)]
struct RunSummary {
    problems: Vec<String>,
    processes: usize,
    /// Events the controller published and received.
    events: u64,
}

/// Runs the scenario in this process, on the loopback.
async fn scenario_loopback(workers: usize) -> Result<RunSummary, Box<dyn Error + Send + Sync>> {
    let mut problems = Vec::new();
    let loopback = Loopback::new();
    let fabric = Fabric::Loopback(loopback);
    let controller = fabric.bus(CONTROLLER).await?;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (recycled_tx, mut recycled_rx) = mpsc::unbounded_channel();
    let _ready = controller.subscribe::<RoleReady, _>(move |e| {
        ready_tx.send(e.instance.clone()).ok();
    });
    // Called on the reporting worker's thread: log it in the controller's span.
    let span = Span::current();
    let _recycled = controller.subscribe::<RoleRecycled, _>(move |e| {
        let _span = span.enter();
        info!(instance = %e.instance, reason = %e.reason, "role recycled");
        recycled_tx.send(e.instance.clone()).ok();
    });

    let faulty = faulty_worker(workers);
    info!(workers, faulty = %format!("worker-{faulty}"), transport = "loopback", "starting roles");
    let mut lives = Vec::with_capacity(workers);
    for i in 1..=workers {
        let name = format!("worker-{i}");
        let span = info_span!(parent: None, "role", instance = %name);
        let role = WorkerRole::new(
            name,
            controller.instance().clone(),
            fabric.clone(),
            i == faulty,
        );
        lives.push(tokio::spawn(role.live().instrument(span)));
    }

    let ready = collect(&mut ready_rx, workers, Instant::now() + STEP_TIMEOUT).await;
    info!(ready = ready.len(), "workers listening");
    if ready.len() != workers {
        problems.push(format!(
            "only {} of {workers} workers became ready",
            ready.len()
        ));
    }

    let refresh = RoleConfigurationSectionRefresh {
        section_name: "Diagnostics".into(),
    };
    info!(section = %refresh.section_name, "publishing a configuration refresh");
    controller.publish(refresh)?;
    info!(role = WORKER_ROLE, "publishing a graceful recycle");
    controller.publish(RoleGracefulRecycle {
        role_name: WORKER_ROLE.into(),
    })?;

    let recycled = collect(&mut recycled_rx, workers, Instant::now() + STEP_TIMEOUT).await;
    let mut recycled_count: BTreeMap<String, u64> = BTreeMap::new();
    for instance in recycled {
        *recycled_count.entry(instance).or_default() += 1;
    }

    let mut outcomes = Vec::with_capacity(workers);
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    for (i, life) in lives.into_iter().enumerate() {
        match tokio::time::timeout_at(deadline, life).await {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(e)) => problems.push(format!("worker-{}'s task failed: {e}", i + 1)),
            Err(_) => problems.push(format!("worker-{} did not stop in time", i + 1)),
        }
    }
    let stats = controller.stats();
    controller.close().await;

    print_summary(&outcomes, &recycled_count);
    problems.extend(check(workers, faulty, &outcomes, &recycled_count));
    Ok(RunSummary {
        problems,
        processes: 1,
        events: stats.published + stats.received,
    })
}

fn print_summary(outcomes: &[WorkerOutcome], recycled: &BTreeMap<String, u64>) {
    println!();
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>13}",
        "instance", "refresh", "recycle", "events", "on_error", "recycled", "on_completed"
    );
    for o in outcomes {
        let report = o.tally.report();
        let times = recycled.get(&o.instance).copied().unwrap_or(0);
        let note = if o.panics_on_refresh {
            "  <- panicked once on purpose"
        } else {
            ""
        };
        println!(
            "{:<10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>13}{note}",
            o.instance,
            report.refreshes,
            report.recycles,
            report.events(),
            report.errors.len(),
            if times > 0 { "yes" } else { "no" },
            o.tally.completed.load(Ordering::Relaxed),
        );
    }
    println!();
}

/// Checks what one worker's subscriber saw: each event once, and a panic report only for the
/// faulty worker.
fn check_report(who: &str, faulty: bool, report: &Report) -> Vec<String> {
    let mut problems = Vec::new();
    for (what, n) in [
        ("configuration refresh", report.refreshes),
        ("graceful recycle", report.recycles),
    ] {
        if n != 1 {
            problems.push(format!("{who} got the {what} {n} times, expected once"));
        }
    }
    let expected = u64::from(faulty);
    if report.panics != expected || report.errors.len() as u64 != expected {
        problems.push(format!(
            "{who}'s on_error got {:?}, expected {expected} panic report(s) and nothing else",
            report.errors
        ));
    }
    problems
}

/// Checks the outcome against what the scenario promises.
fn check(
    workers: usize,
    faulty: usize,
    outcomes: &[WorkerOutcome],
    recycled: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if outcomes.len() != workers {
        problems.push(format!("{} of {workers} workers reported", outcomes.len()));
    }
    let faulty = format!("worker-{faulty}");
    let mut panics_reported = 0;
    let mut panics_counted = 0;
    for o in outcomes {
        let who = &o.instance;
        let report = o.tally.report();
        problems.extend(check_report(who, *who == faulty, &report));
        panics_reported += report.panics;
        panics_counted += o.panics_counted;
        match recycled.get(who).copied().unwrap_or(0) {
            1 => {}
            n => problems.push(format!(
                "{who} reported its recycle {n} times, expected once"
            )),
        }
        let completed = o.tally.completed.load(Ordering::Relaxed);
        if completed != 1 {
            problems.push(format!(
                "{who} saw on_completed {completed} times, expected once"
            ));
        }
    }
    if panics_reported != 1 || panics_counted != 1 {
        problems.push(format!(
            "expected exactly one panic: {panics_reported} reported to on_error, \
             {panics_counted} counted by the buses"
        ));
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// The controller, across processes

/// What the processes meet on.
#[derive(Debug, Clone)]
enum Network {
    Relay(RelaySource),
    /// A running NATS server, or cluster (comma-separated URLs).
    Nats(String),
}

impl Network {
    fn name(&self) -> &'static str {
        match self {
            Self::Relay(_) => "relay",
            Self::Nats(_) => "nats",
        }
    }
}

/// Where the relay comes from.
#[derive(Debug, Clone)]
enum RelaySource {
    /// A relay server in the controller's process, with a key made up for the run.
    Embedded,
    /// A relay that is already running.
    External { url: String, key: Option<String> },
}

/// A worker process and what the controller learnt about it.
#[derive(Debug)]
struct WorkerProcess {
    name: String,
    child: tokio::process::Child,
    pid: Option<u32>,
    ready: u64,
    status: Option<RoleStatus>,
    recycled: Vec<RoleRecycled>,
    exit: Option<ExitStatus>,
}

/// 128 random bits as hex, from the standard library's randomly keyed hasher.
fn random_hex() -> String {
    let mut text = String::with_capacity(32);
    for i in 0..2u64 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(i);
        hasher.write_u128(now_unix().as_nanos());
        hasher.write_u32(std::process::id());
        text.push_str(&format!("{:016x}", hasher.finish()));
    }
    text
}

fn now_unix() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Starts worker `name` by running this executable again, told to meet the others on `fabric`
/// (a relay's key, if any, travels in the environment).
fn spawn_worker(
    name: &str,
    faulty: bool,
    fabric: &Fabric,
    key: Option<&str>,
    origin: Duration,
) -> std::io::Result<tokio::process::Child> {
    let exe = std::env::current_exe()?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["--role", "worker", "--id", name])
        .args(fabric.worker_args())
        .args(["--origin-us", &origin.as_micros().to_string()])
        // A worker stops when the controller goes away and its stdin closes.
        .stdin(Stdio::piped())
        .kill_on_drop(true);
    if faulty {
        command.arg("--panic-once");
    }
    match key {
        Some(key) => command.env(SAS_KEY_ENV, key),
        None => command.env_remove(SAS_KEY_ENV),
    };
    command.spawn()
}

/// Where worker `name` is in `procs`.
fn position(procs: &[WorkerProcess], name: &str) -> Option<usize> {
    procs.iter().position(|p| p.name == name)
}

/// Asks every worker for its status at once (scatter-gather: one `StatusQuery` to the topic,
/// a `RoleStatus` back from each worker), round after round, until each has confirmed the
/// refresh (and the faulty worker the panic report) or `deadline` passes. Returns what kept the
/// query from being sent.
async fn status_round(
    bus: &Bus,
    procs: &mut [WorkerProcess],
    faulty: &str,
    deadline: Instant,
) -> Vec<String> {
    let settled = |p: &WorkerProcess| {
        p.status
            .as_ref()
            .is_some_and(|s| s.report.refreshes >= 1 && (p.name != faulty || s.report.panics >= 1))
    };
    let mut rounds = 0u32;
    while !procs.iter().all(settled) && Instant::now() < deadline {
        rounds += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let replies = match bus.request_all::<StatusQuery, RoleStatus>(
            StatusQuery,
            left.min(Duration::from_secs(2)),
            Some(procs.len()),
        ) {
            Ok(replies) => replies,
            Err(e) => return vec![format!("the status query could not be sent: {e}")],
        };
        let mut replies = std::pin::pin!(replies);
        while let Some(reply) = futures::StreamExt::next(&mut replies).await {
            match reply {
                Ok(status) => match position(procs, &status.instance) {
                    Some(i) => {
                        debug!(instance = %status.instance, status = ?*status, "status");
                        procs[i].status = Some(RoleStatus::clone(&status));
                    }
                    None => warn!(instance = %status.instance, "a status from an unknown worker"),
                },
                Err(e) => warn!(error = %e, "a status reply was refused"),
            }
        }
        if !procs.iter().all(settled) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    debug!(rounds, "status rounds");
    // What a worker did not confirm is reported by the checks that follow.
    Vec::new()
}

/// Runs the scenario with one process per worker, over a relay or NATS.
async fn scenario_processes(
    workers: usize,
    network: Network,
    origin: Duration,
) -> Result<RunSummary, Box<dyn Error + Send + Sync>> {
    // A topic of its own, so that runs sharing a relay or a NATS server do not hear each other.
    let topic = format!("worker-roles/{}", &random_hex()[..12]);
    let source = match network {
        Network::Relay(source) => source,
        Network::Nats(url) => {
            info!(%url, "joining NATS");
            let fabric = Fabric::Nats { url, topic };
            return drive(workers, &fabric, None, origin).await;
        }
    };
    let (server, url, key) = match source {
        RelaySource::Embedded => {
            let key = format!("{EMBEDDED_KEY_NAME}={}", random_hex());
            let server = Server::bind(Config {
                listen: "127.0.0.1:0".parse()?,
                keys: vec![KeyConfig::parse_flag(&key)?],
                ..Config::default()
            })
            .await?;
            let url = format!("ws://{}", server.local_addr());
            info!(%url, "relay embedded in this process");
            (Some(server), url, Some(key))
        }
        RelaySource::External { url, key } => (None, url, key),
    };
    let credentials = match &key {
        Some(key) => Credentials::parse_key(key)?,
        None => Credentials::None,
    };
    let fabric = Fabric::Relay {
        url,
        credentials,
        topic,
    };
    let result = drive(workers, &fabric, key.as_deref(), origin).await;
    if let Some(server) = server {
        server.shutdown().await;
    }
    result
}

/// The controller's side of the scenario across processes; `key` is the relay's shared access
/// key, for the workers.
async fn drive(
    workers: usize,
    fabric: &Fabric,
    key: Option<&str>,
    origin: Duration,
) -> Result<RunSummary, Box<dyn Error + Send + Sync>> {
    let mut problems = Vec::new();
    let controller = fabric.bus(CONTROLLER).await?;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (recycled_tx, mut recycled_rx) = mpsc::unbounded_channel();
    let _ready = controller.subscribe::<RoleReady, _>(move |e| {
        ready_tx.send(e.clone()).ok();
    });
    // Called on the bus's receiving task: log it in the controller's span.
    let span = Span::current();
    let _recycled = controller.subscribe::<RoleRecycled, _>(move |e| {
        let _span = span.enter();
        info!(instance = %e.instance, reason = %e.reason, "role recycled");
        recycled_tx.send(e.clone()).ok();
    });

    let faulty = faulty_worker(workers);
    let faulty_name = format!("worker-{faulty}");
    let topic = match fabric {
        Fabric::Relay { topic, .. } | Fabric::Nats { topic, .. } => topic.as_str(),
        Fabric::Loopback(_) => "-",
    };
    info!(workers, faulty = %faulty_name, transport = fabric.name(), %topic,
        "starting worker processes");
    let mut procs = Vec::with_capacity(workers);
    for i in 1..=workers {
        let name = format!("worker-{i}");
        let child = spawn_worker(&name, i == faulty, fabric, key, origin)
            .map_err(|e| format!("starting {name}: {e}"))?;
        procs.push(WorkerProcess {
            pid: child.id(),
            name,
            child,
            ready: 0,
            status: None,
            recycled: Vec::new(),
            exit: None,
        });
    }

    let ready = collect(
        &mut ready_rx,
        workers,
        Instant::now() + PROCESS_STEP_TIMEOUT,
    )
    .await;
    info!(ready = ready.len(), "workers listening");
    for r in &ready {
        match position(&procs, &r.instance) {
            Some(i) => procs[i].ready += 1,
            None => problems.push(format!("an unknown worker {:?} said ready", r.instance)),
        }
    }
    if ready.len() == workers {
        let refresh = RoleConfigurationSectionRefresh {
            section_name: "Diagnostics".into(),
        };
        info!(section = %refresh.section_name, "publishing a configuration refresh");
        controller.publish(refresh)?;

        let deadline = Instant::now() + PROCESS_STEP_TIMEOUT;
        problems.extend(status_round(&controller, &mut procs, &faulty_name, deadline).await);
        info!(
            answered = procs.iter().filter(|p| p.status.is_some()).count(),
            "status queries answered: every worker has the refresh"
        );
    } else {
        problems.push(format!(
            "only {} of {workers} workers became ready",
            ready.len()
        ));
    }

    // Published even when a step failed: the workers that are there recycle and stop.
    info!(role = WORKER_ROLE, "publishing a graceful recycle");
    controller.publish(RoleGracefulRecycle {
        role_name: WORKER_ROLE.into(),
    })?;
    for r in collect(
        &mut recycled_rx,
        workers,
        Instant::now() + PROCESS_STEP_TIMEOUT,
    )
    .await
    {
        match position(&procs, &r.instance) {
            Some(i) => procs[i].recycled.push(r),
            None => problems.push(format!("an unknown worker {:?} recycled", r.instance)),
        }
    }

    let deadline = tokio::time::Instant::now() + PROCESS_STEP_TIMEOUT;
    for p in &mut procs {
        match tokio::time::timeout_at(deadline, p.child.wait()).await {
            Ok(Ok(status)) => p.exit = Some(status),
            Ok(Err(e)) => problems.push(format!("waiting for {}: {e}", p.name)),
            Err(_) => {
                problems.push(format!("{} did not exit in time; killed", p.name));
                p.child.kill().await.ok();
            }
        }
    }
    // Every worker is gone: anything more would be a duplicate.
    tokio::time::sleep(Duration::from_millis(50)).await;
    while let Ok(r) = ready_rx.try_recv() {
        if let Some(i) = position(&procs, &r.instance) {
            procs[i].ready += 1;
        }
    }
    while let Ok(r) = recycled_rx.try_recv() {
        if let Some(i) = position(&procs, &r.instance) {
            procs[i].recycled.push(r);
        }
    }
    let stats = controller.stats();
    controller.close().await;

    print_process_summary(&procs, &faulty_name);
    problems.extend(check_processes(&procs, &faulty_name));
    Ok(RunSummary {
        problems,
        processes: workers + 1,
        events: stats.published + stats.received,
    })
}

fn print_process_summary(procs: &[WorkerProcess], faulty: &str) {
    println!();
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>9} {:>5}",
        "instance", "pid", "refresh", "recycle", "events", "on_error", "status", "recycled", "exit"
    );
    for p in procs {
        let report = p.recycled.first().map(|r| r.report.clone());
        let n = |f: fn(&Report) -> u64| report.as_ref().map_or("-".into(), |r| f(r).to_string());
        let exit = p.exit.map_or("-".into(), |s| {
            s.code().map_or("sig".into(), |c| c.to_string())
        });
        let note = if p.name == faulty {
            "  <- panicked once on purpose"
        } else {
            ""
        };
        println!(
            "{:<10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>9} {:>5}{note}",
            p.name,
            p.pid.map_or("-".into(), |pid| pid.to_string()),
            n(|r| r.refreshes),
            n(|r| r.recycles),
            n(Report::events),
            n(|r| r.errors.len() as u64),
            if p.status.is_some() { "ok" } else { "-" },
            if p.recycled.is_empty() { "no" } else { "yes" },
            exit,
        );
    }
    println!();
}

/// Checks what the worker processes said and how they ended.
fn check_processes(procs: &[WorkerProcess], faulty: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut panics_reported = 0;
    let mut panics_counted = 0;
    for p in procs {
        let who = &p.name;
        if p.ready != 1 {
            problems.push(format!("{who} said ready {} times, expected once", p.ready));
        }
        if let Some(status) = &p.status {
            if status.report.refreshes != 1 || status.pid != p.pid.unwrap_or(status.pid) {
                problems.push(format!("{who}'s status is not as expected: {status:?}"));
            }
        } else {
            problems.push(format!("{who} never answered a status query"));
        }
        match p.recycled.as_slice() {
            [r] => {
                problems.extend(check_report(who, who == faulty, &r.report));
                if r.report.status_queries == 0 {
                    problems.push(format!("{who} served no status query"));
                }
                panics_reported += r.report.panics;
                panics_counted += r.panics_counted;
            }
            list => problems.push(format!(
                "{who} reported its recycle {} times, expected once",
                list.len()
            )),
        }
        match p.exit {
            Some(status) if status.success() => {}
            Some(status) => problems.push(format!("{who} exited with {status}")),
            None => {}
        }
    }
    if panics_reported != 1 || panics_counted != 1 {
        problems.push(format!(
            "expected exactly one panic: {panics_reported} reported to on_error, \
             {panics_counted} counted by the buses"
        ));
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// A worker process

/// What a worker process is told by the controller that starts it.
#[derive(Debug, Clone)]
struct WorkerArgs {
    id: String,
    endpoint: Endpoint,
    topic: String,
    panic_once: bool,
}

/// Where a worker process meets the others.
#[derive(Debug, Clone)]
enum Endpoint {
    /// A relay's URL (`--relay`); the key comes in the environment.
    Relay(String),
    /// NATS server URLs (`--nats-url`).
    Nats(String),
}

/// The life of one worker process: the role's life cycle, then its own checks.
fn worker_main(args: WorkerArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: cannot start the tokio runtime: {e}", args.id);
            return ExitCode::FAILURE;
        }
    };
    let fabric = match args.endpoint {
        Endpoint::Relay(url) => {
            let credentials = match std::env::var(SAS_KEY_ENV) {
                Ok(key) => match Credentials::parse_key(&key) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{}: {SAS_KEY_ENV}: {e}", args.id);
                        return ExitCode::FAILURE;
                    }
                },
                Err(_) => Credentials::None,
            };
            Fabric::Relay {
                url,
                credentials,
                topic: args.topic,
            }
        }
        Endpoint::Nats(url) => Fabric::Nats {
            url,
            topic: args.topic,
        },
    };
    let controller = InstanceId::new(CONTROLLER).expect("a valid instance id");
    let span = info_span!(parent: None, "role", instance = %args.id);
    let mut role = WorkerRole::new(args.id.clone(), controller, fabric, args.panic_once);
    role.recycle_timeout = 3 * PROCESS_STEP_TIMEOUT;
    // The controller keeps this process's stdin open while it lives.
    let recycle = role.recycle.clone();
    std::thread::spawn(move || {
        std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink()).ok();
        recycle.request("the controller is gone (stdin closed)");
    });
    let outcome = runtime.block_on(role.live().instrument(span.clone()));
    let _span = span.enter();
    let report = outcome.tally.report();
    let mut problems = check_report(&outcome.instance, outcome.panics_on_refresh, &report);
    if report.status_queries == 0 {
        problems.push("no status query came".into());
    }
    let expected = u64::from(outcome.panics_on_refresh);
    if outcome.panics_counted != expected {
        problems.push(format!(
            "the bus counted {} observer panics, expected {expected}",
            outcome.panics_counted
        ));
    }
    let completed = outcome.tally.completed.load(Ordering::Relaxed);
    if completed != 1 {
        problems.push(format!(
            "on_completed came {completed} times, expected once"
        ));
    }
    if problems.is_empty() {
        info!("checks passed; exiting");
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            error!("check failed: {p}");
        }
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------------
// Command line

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    /// The controller, with its workers in this process.
    Loopback {
        workers: usize,
    },
    /// The controller, with one process per worker over a relay or NATS.
    Processes {
        workers: usize,
        network: Network,
    },
    /// A worker process, started by the controller.
    Worker(WorkerArgs),
    Help,
}

/// Parses the flags by hand: `--workers N`, `--transport relay|nats|loopback`, `--relay URL`,
/// `--sas-key NAME=KEY`, `--nats-url URL`, `--help`, and the worker processes' own (`--role
/// worker --id NAME --relay URL|--nats-url URL --topic TOPIC --origin-us MICROS [--panic-once]`).
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(Command, Duration), String> {
    let mut workers = 3;
    let mut transport = "relay";
    let (mut relay, mut key, mut nats_url) = (None, None, None);
    let (mut worker, mut id, mut topic, mut panic_once) = (false, None, None, false);
    let mut origin = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = |flag: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok((Command::Help, Duration::ZERO)),
            "--workers" => {
                let v = value("--workers")?;
                workers = match v.parse::<usize>() {
                    Ok(n @ 1..=64) => n,
                    _ => return Err(format!("--workers takes a number from 1 to 64, not {v:?}")),
                };
            }
            "--transport" => {
                transport = match value("--transport")?.as_str() {
                    "relay" => "relay",
                    "nats" => "nats",
                    "loopback" => "loopback",
                    other => {
                        return Err(format!(
                            "unknown transport {other:?}: \"relay\" or \"nats\" (one process per \
                             worker) or \"loopback\" (in-process)"
                        ));
                    }
                }
            }
            "--relay" => relay = Some(value("--relay")?),
            "--nats-url" => {
                let v = value("--nats-url")?;
                if NatsOptions::new(&v).servers.is_empty() {
                    return Err(format!(
                        "--nats-url needs a URL (nats://host:port), not {v:?}"
                    ));
                }
                nats_url = Some(v);
            }
            "--sas-key" => {
                let v = value("--sas-key")?;
                Credentials::parse_key(&v).map_err(|e| format!("--sas-key: {e}"))?;
                key = Some(v);
            }
            "--role" => match value("--role")?.as_str() {
                "worker" => worker = true,
                other => return Err(format!("unknown role {other:?}")),
            },
            "--id" => id = Some(value("--id")?),
            "--topic" => topic = Some(value("--topic")?),
            "--origin-us" => {
                let v = value("--origin-us")?;
                let us = v.parse().map_err(|_| format!("--origin-us: {v:?}"))?;
                origin = Some(Duration::from_micros(us));
            }
            "--panic-once" => panic_once = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let origin = origin.unwrap_or_else(now_unix);
    if !worker && (id.is_some() || topic.is_some() || panic_once) {
        return Err(
            "--id, --topic and --panic-once are for worker processes (--role worker)".into(),
        );
    }
    if worker {
        let endpoint = match (relay, nats_url) {
            (Some(url), None) => Some(Endpoint::Relay(url)),
            (None, Some(url)) => Some(Endpoint::Nats(url)),
            _ => None,
        };
        let (Some(id), Some(endpoint), Some(topic)) = (id, endpoint, topic) else {
            return Err("a worker process needs --id, --relay or --nats-url, and --topic".into());
        };
        let args = WorkerArgs {
            id,
            endpoint,
            topic,
            panic_once,
        };
        return Ok((Command::Worker(args), origin));
    }
    if transport != "relay" && (relay.is_some() || key.is_some()) {
        return Err("--relay and --sas-key need --transport relay".into());
    }
    if transport != "nats" && nats_url.is_some() {
        return Err("--nats-url needs --transport nats".into());
    }
    let network = match transport {
        "loopback" => return Ok((Command::Loopback { workers }, origin)),
        "nats" => Network::Nats(nats_url.unwrap_or_else(|| DEFAULT_NATS_URL.into())),
        _ => Network::Relay(match (relay, key) {
            (Some(url), key) => RelaySource::External { url, key },
            (None, None) => RelaySource::Embedded,
            (None, Some(_)) => return Err("--sas-key needs --relay".into()),
        }),
    };
    Ok((Command::Processes { workers, network }, origin))
}

/// Log timestamps counted from the controller's start, in every process, so that the lines of
/// the workers and of the controller line up.
#[derive(Debug, Clone, Copy)]
struct SinceOrigin(Duration);

impl tracing_subscriber::fmt::time::FormatTime for SinceOrigin {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let t = now_unix().saturating_sub(self.0);
        write!(w, "{:3}.{:06}s", t.as_secs(), t.subsec_micros())
    }
}

fn main() -> ExitCode {
    let (command, origin) = match parse_args(std::env::args().skip(1)) {
        Ok((Command::Help, _)) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // The bus's own connection states, the relay's and the NATS client's are left to RUST_LOG.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,interrole=warn,interrole_relay_server=warn,interrole_nats=warn,async_nats=warn",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(SinceOrigin(origin))
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let (workers, transport, run) = match command {
        Command::Worker(args) => return worker_main(args),
        Command::Help => unreachable!("handled above"),
        Command::Loopback { workers } => (workers, "loopback", None),
        Command::Processes { workers, network } => (workers, network.name(), Some(network)),
    };
    let started = Instant::now();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(
        async {
            match run {
                None => scenario_loopback(workers).await,
                Some(network) => scenario_processes(workers, network, origin).await,
            }
        }
        .instrument(info_span!("controller")),
    );
    let elapsed = started.elapsed();
    match result {
        Ok(summary) if summary.problems.is_empty() => {
            info!(
                ?elapsed,
                "all checks passed: every worker got both events once, one intended \
                panic reported to one on_error, all recycled, on_completed once each"
            );
            println!(
                "worker_roles: ok transport={transport} workers={workers} processes={} \
                 events={} elapsed={:.1}ms",
                summary.processes,
                summary.events,
                elapsed.as_secs_f64() * 1e3
            );
            ExitCode::SUCCESS
        }
        Ok(summary) => {
            for p in &summary.problems {
                error!("check failed: {p}");
            }
            eprintln!(
                "worker_roles: FAILED transport={transport} workers={workers}: {} check(s) failed",
                summary.problems.len()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            error!(error = %e, "the scenario could not run");
            eprintln!(
                "worker_roles: FAILED transport={transport}: the scenario could not run: {e}"
            );
            ExitCode::FAILURE
        }
    }
}
