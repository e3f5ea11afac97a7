//! Worker roles on an interrole bus: a controller and N worker roles in one process, in the
//! spirit of the seed's `SampleWorkerRole` and `InterRoleEventSubscriberExtension`.
//!
//! Each worker role has the seed's life cycle:
//! - `on_start` returns at once and starts its bus in a spawned task (the seed uses the TPL); a
//!   failure there is logged and requests a recycle;
//! - the start task subscribes one full [`Observer`] of every inter-role event, which handles the
//!   seed's two events, `RoleConfigurationSectionRefresh` and `RoleGracefulRecycle`;
//! - `run` is the role's main loop: it works until a recycle is requested;
//! - `on_stop` reports `RoleRecycled` to the controller, closes the bus (the observer gets
//!   `on_completed` once) and drops the subscription.
//!
//! The controller waits until every worker is listening, publishes a configuration refresh and
//! then a graceful recycle, and waits for every worker to report back. One worker's refresh
//! handler panics once, on purpose: the other workers are unaffected and the failing one is told
//! through its own `on_error`. A summary table closes the run, and the program checks its own
//! outcome: exit code 0 when everything happened as described, 1 otherwise.
//!
//! ```text
//! cargo run --release --example worker_roles                 # 4 workers
//! cargo run --release --example worker_roles -- --workers 8
//! RUST_LOG=debug cargo run --release --example worker_roles  # more detail (default: info)
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use interrole::{
    Bus, InstanceId, InterRoleEvent, Loopback, Observable, Observer, ObserverError, Subscription,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

/// The longest wait for any step, so that the example can never hang.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// The role name every worker instance shares (the seed's `RoleName`).
const WORKER_ROLE: &str = "worker";
/// The controller's instance id.
const CONTROLLER: &str = "controller";

const USAGE: &str = "\
usage: worker_roles [--workers N] [--transport loopback] [--help]

A controller and N worker roles exchange inter-role events on an interrole bus.

options:
  --workers N            number of worker roles, 1 to 64 (default 4)
  --transport loopback   the transport connecting the roles; loopback (in-process) is the only
                         one available for now (default loopback)
  -h, --help             print this help

environment:
  RUST_LOG               log filter (default info), e.g. RUST_LOG=debug";

// ---------------------------------------------------------------------------------------------
// Events

/// The seed's `RoleConfigurationSectionRefreshEvent`: reload one configuration section.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleConfigurationSectionRefresh {
    section_name: String,
}
interrole::impl_event!(
    RoleConfigurationSectionRefresh = "interrole.role.configuration-section-refresh"
);

/// The seed's `RoleGracefulRecycleEvent`: every instance of the role should recycle gracefully.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleGracefulRecycle {
    role_name: String,
}
interrole::impl_event!(RoleGracefulRecycle = "interrole.role.graceful-recycle");

/// Worker to controller: my bus is up and my subscriber is listening.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleReady {
    instance: String,
}
interrole::impl_event!(RoleReady = "examples.worker-roles.role-ready");

/// Worker to controller, from `on_stop`: recycled gracefully (sent just before the bus closes,
/// since a closed bus cannot publish).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleRecycled {
    instance: String,
    reason: String,
}
interrole::impl_event!(RoleRecycled = "examples.worker-roles.role-recycled");

// ---------------------------------------------------------------------------------------------
// The subscriber: the seed's `InterRoleEventSubscriberExtension`

/// What one worker's subscriber saw; shared with its role and read by the summary.
#[derive(Debug, Default)]
struct Tally {
    refreshes: AtomicU64,
    recycles: AtomicU64,
    ignored: AtomicU64,
    errors: Mutex<Vec<ObserverError>>,
    completed: AtomicU64,
}

/// A recycle request: `RoleEnvironment.RequestRecycle()` in the seed. The first reason wins.
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

/// One observer of every inter-role event, dispatching on the payload's type as the seed does.
/// It runs on the publisher's thread, so it only records and signals; the role does the work.
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
// The worker role: the seed's `SampleWorkerRole`

/// The bus and the subscription of a started role.
#[derive(Debug)]
struct Comms {
    bus: Bus,
    subscription: Subscription,
}

/// The seed's `SampleWorkerRole`: one worker instance with its own bus.
#[derive(Debug)]
struct WorkerRole {
    instance: String,
    controller: InstanceId,
    fabric: Loopback,
    panics_on_refresh: bool,
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

/// The seed's start task: builds the bus, subscribes the subscriber, tells the controller.
fn start_comms(
    instance: String,
    controller: &InstanceId,
    fabric: Loopback,
    subscriber: InterRoleEventSubscriber,
    slot: &Mutex<Option<Comms>>,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    let bus = Bus::builder()
        .instance(instance.clone())
        .transport(fabric)
        .build()?;
    // `Bus::subscribe` takes a closure; a full observer of every event goes through the
    // `Observable` trait.
    let subscription = Observable::subscribe(&bus, Arc::new(subscriber));
    *slot.lock().unwrap() = Some(Comms {
        bus: bus.clone(),
        subscription,
    });
    info!("bus started, subscriber listening");
    bus.send_to(controller, RoleReady { instance })?;
    Ok(())
}

impl WorkerRole {
    fn new(instance: String, controller: InstanceId, fabric: Loopback, panics: bool) -> Self {
        Self {
            instance,
            controller,
            fabric,
            panics_on_refresh: panics,
            tally: Arc::default(),
            recycle: Arc::default(),
            comms: Arc::default(),
            start_task: None,
            panics_counted: 0,
        }
    }

    /// Starts inter-role communication without blocking start-up; always returns true, as the
    /// seed does: a failure in the start task is logged and requests a recycle.
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
            if let Err(e) = start_comms(instance, &controller, fabric, subscriber, &slot) {
                error!(error = %e, "starting inter-role communication failed; requesting a recycle");
                recycle.request(format!("start-up failed: {e}"));
            }
        };
        self.start_task = Some(tokio::spawn(start.in_current_span()));
        info!("on_start returned (inter-role communication starting in the background)");
        true
    }

    /// The role's main loop: works until a recycle is requested (or the step timeout passes).
    async fn run(&self) {
        let mut heartbeat = tokio::time::interval(Duration::from_millis(100));
        let deadline = tokio::time::sleep(STEP_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = self.recycle.notify.notified() => {
                    info!(reason = %self.recycle.reason(), "run: leaving the main loop");
                    return;
                }
                _ = heartbeat.tick() => debug!("run: working"),
                () = &mut deadline => {
                    warn!(timeout = ?STEP_TIMEOUT, "run: no recycle request in time; stopping");
                    self.recycle.request("timed out waiting for a recycle request");
                    return;
                }
            }
        }
    }

    /// Recycles gracefully: reports to the controller, closes the bus, drops the subscription.
    async fn on_stop(&mut self) {
        if let Some(task) = self.start_task.take() {
            if tokio::time::timeout(STEP_TIMEOUT, task).await.is_err() {
                warn!("on_stop: the start task did not finish in time");
            }
        }
        let comms = self.comms.lock().unwrap().take();
        let Some(Comms { bus, subscription }) = comms else {
            warn!("on_stop: inter-role communication never started");
            return;
        };
        // Report first: a closed bus cannot publish.
        let recycled = RoleRecycled {
            instance: self.instance.clone(),
            reason: self.recycle.reason(),
        };
        if let Err(e) = bus.send_to(&self.controller, recycled) {
            error!(error = %e, "on_stop: could not report the recycle to the controller");
        }
        self.panics_counted = bus.stats().hub.panics;
        // Close while the subscriber is still subscribed: it gets `on_completed` exactly once.
        // Dropping the guard first (the seed's order) would unsubscribe it silently, without
        // `on_completed`; after `close` the guard is inactive and dropping it is a no-op.
        bus.close().await;
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
// The controller

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

/// Runs the scenario; returns the problems found (empty when everything went as described).
async fn scenario(workers: usize) -> Result<Vec<String>, Box<dyn Error>> {
    let mut problems = Vec::new();
    let fabric = Loopback::new();
    let controller = Bus::builder()
        .instance(CONTROLLER)
        .transport(fabric.clone())
        .build()?;
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

    // The worker whose refresh handler panics once: worker-2 (worker-1 with a single worker).
    let faulty = workers.min(2);
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
    controller.close().await;

    print_summary(&outcomes, &recycled_count);
    problems.extend(check(workers, faulty, &outcomes, &recycled_count));
    Ok(problems)
}

fn print_summary(outcomes: &[WorkerOutcome], recycled: &BTreeMap<String, u64>) {
    println!();
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>13}",
        "instance", "refresh", "recycle", "events", "on_error", "recycled", "on_completed"
    );
    for o in outcomes {
        let t = &o.tally;
        let refreshes = t.refreshes.load(Ordering::Relaxed);
        let recycles = t.recycles.load(Ordering::Relaxed);
        let events = refreshes + recycles + t.ignored.load(Ordering::Relaxed);
        let errors = t.errors.lock().unwrap().len();
        let times = recycled.get(&o.instance).copied().unwrap_or(0);
        let note = if o.panics_on_refresh {
            "  <- panicked once on purpose"
        } else {
            ""
        };
        println!(
            "{:<10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>13}{note}",
            o.instance,
            refreshes,
            recycles,
            events,
            errors,
            if times > 0 { "yes" } else { "no" },
            t.completed.load(Ordering::Relaxed),
        );
    }
    println!();
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
        let t = &o.tally;
        let who = &o.instance;
        for (what, n) in [
            ("configuration refresh", t.refreshes.load(Ordering::Relaxed)),
            ("graceful recycle", t.recycles.load(Ordering::Relaxed)),
        ] {
            if n != 1 {
                problems.push(format!("{who} got the {what} {n} times, expected once"));
            }
        }
        let errors = t.errors.lock().unwrap();
        let panicked = errors
            .iter()
            .filter(|e| matches!(e, ObserverError::Panicked { .. }))
            .count();
        panics_reported += panicked;
        let expected = usize::from(*who == faulty);
        if panicked != expected || errors.len() != expected {
            problems.push(format!(
                "{who}'s on_error got {errors:?}, expected {expected} panic report(s) and nothing else"
            ));
        }
        panics_counted += o.panics_counted;
        match recycled.get(who).copied().unwrap_or(0) {
            1 => {}
            n => problems.push(format!(
                "{who} reported its recycle {n} times, expected once"
            )),
        }
        let completed = t.completed.load(Ordering::Relaxed);
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
// Command line

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    Run { workers: usize },
    Help,
}

/// Parses the flags by hand: `--workers N`, `--transport loopback`, `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut workers = 4;
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
            "-h" | "--help" => return Ok(Command::Help),
            "--workers" => {
                let v = value("--workers")?;
                workers = match v.parse::<usize>() {
                    Ok(n @ 1..=64) => n,
                    _ => return Err(format!("--workers takes a number from 1 to 64, not {v:?}")),
                };
            }
            "--transport" => match value("--transport")?.as_str() {
                "loopback" => {}
                other => {
                    return Err(format!(
                        "unknown transport {other:?}: only \"loopback\" (in-process) is \
                         available for now"
                    ));
                }
            },
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Command::Run { workers })
}

fn main() -> ExitCode {
    let workers = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run { workers }) => workers,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let started = Instant::now();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(scenario(workers).instrument(info_span!("controller")));
    let elapsed = started.elapsed();
    match result {
        Ok(problems) if problems.is_empty() => {
            info!(
                ?elapsed,
                "all checks passed: every worker got both events, one intended \
                panic reported to one on_error, all recycled, on_completed once each"
            );
            ExitCode::SUCCESS
        }
        Ok(problems) => {
            for p in &problems {
                error!("check failed: {p}");
            }
            eprintln!("worker_roles: {} check(s) failed", problems.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            error!(error = %e, "the scenario could not run");
            eprintln!("worker_roles: the scenario could not run: {e}");
            ExitCode::FAILURE
        }
    }
}
