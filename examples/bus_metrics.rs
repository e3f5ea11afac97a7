//! Bus metrics in Prometheus form: installs `metrics-exporter-prometheus` as the `metrics`
//! recorder (before any bus is built: a bus takes its handles from the recorder in place when
//! it is built), runs a controller and two workers over a relay that the example embeds, with
//! one worker's observer panicking on one job, then prints its own scrape.
//!
//! The last line is `bus_metrics ok series=<n>`, n being the sample lines of the scrape; the
//! example exits with status 1 when a series it expects is missing or says something else.
//!
//! ```text
//! cargo run --release --example bus_metrics
//! ```

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use interrole::Bus;
use interrole::relay::Credentials;
use interrole_relay_server::{Config, KeyConfig, Server};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};

/// A job for the workers.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    n: u32,
}
interrole::impl_event!(Job = "example.metrics.job");

/// The controller asks whether a worker hears it; the worker answers with the same.
#[derive(Debug, Serialize, Deserialize)]
struct Probe {
    worker: String,
}
interrole::impl_event!(Probe = "example.metrics.probe");

/// A worker finished a job.
#[derive(Debug, Serialize, Deserialize)]
struct Done {
    worker: String,
    n: u32,
}
interrole::impl_event!(Done = "example.metrics.done");

const JOBS: u32 = 5;
/// The job the second worker's observer panics on.
const BAD_JOB: u32 = 3;
const KEY: (&str, &str) = ("metrics-example", "made-up-for-this-run");
const WAIT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(series) => {
            println!("bus_metrics ok series={series}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bus_metrics failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<usize, Box<dyn Error>> {
    // First the recorder, then the buses.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse()?,
        keys: vec![KeyConfig::parse_flag(&format!("{}={}", KEY.0, KEY.1))?],
        ..Config::default()
    })
    .await?;
    let url = format!("ws://{}", server.local_addr());
    let join = |instance: &str| {
        Bus::builder()
            .topic("metrics-example")
            .instance(instance)
            .relay(&url, Credentials::key(KEY.0, KEY.1))
            .build()
    };
    let controller = join("controller")?;
    let workers = [join("worker-1")?, join("worker-2")?];
    for bus in workers.iter().chain([&controller]) {
        bus.host().expect("a relay bus").wait_opened(WAIT).await?;
    }

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let _done = controller.subscribe::<Done, _>(move |d| {
        let _ = done_tx.send((d.worker.clone(), d.n));
    });
    let mut guards = Vec::new();
    let controller_id = controller.instance().clone();
    for (i, worker) in workers.iter().enumerate() {
        let (bus, to) = (worker.clone(), controller_id.clone());
        guards.push(worker.subscribe::<Probe, _>(move |_| {
            let probe = Probe {
                worker: bus.instance().to_string(),
            };
            let _ = bus.send_to(&to, probe);
        }));
        let (bus, to) = (worker.clone(), controller_id.clone());
        guards.push(worker.subscribe::<Job, _>(move |job| {
            if i == 1 && job.n == BAD_JOB {
                panic!("intended panic: worker-2 does not take job {BAD_JOB}");
            }
            let done = Done {
                worker: bus.instance().to_string(),
                n: job.n,
            };
            if let Err(e) = bus.send_to(&to, done) {
                eprintln!("{e}");
            }
        }));
    }

    // Until both workers answer a probe: from then on, what the controller publishes reaches
    // them (each sender's events arrive in order).
    let (probe_tx, mut probe_rx) = tokio::sync::mpsc::unbounded_channel();
    let probes = controller.subscribe::<Probe, _>(move |p| {
        let _ = probe_tx.send(p.worker.clone());
    });
    let mut heard = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while heard.len() < workers.len() {
        controller.publish(Probe {
            worker: String::new(),
        })?;
        let every = tokio::time::Instant::now() + Duration::from_millis(50);
        while let Ok(Some(worker)) = tokio::time::timeout_at(every, probe_rx.recv()).await {
            heard.insert(worker);
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the workers never heard the controller".into());
        }
    }
    drop(probes);

    for n in 1..=JOBS {
        controller.publish(Job { n })?;
    }
    // Every job done by both workers, except the one worker-2 panicked on.
    let expected = 2 * JOBS as usize - 1;
    for _ in 0..expected {
        tokio::time::timeout(WAIT, done_rx.recv())
            .await?
            .ok_or("the controller's observer is gone")?;
    }
    for bus in workers.iter().chain([&controller]) {
        if !bus.drain(WAIT).await {
            return Err(format!("{} did not drain in time", bus.instance()).into());
        }
    }
    server.shutdown().await;

    let scrape = prometheus.render();
    print!("{scrape}");
    let series = scrape
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let expect = [
        (
            r#"interrole_events_published_total{topic="metrics-example",instance="controller",type="example.metrics.job"}"#,
            Some(JOBS as f64),
        ),
        (
            r#"interrole_deliveries_total{topic="metrics-example",instance="worker-1",type="example.metrics.job"}"#,
            Some(JOBS as f64),
        ),
        (
            r#"interrole_observer_errors_total{topic="metrics-example",instance="worker-2",type="example.metrics.job",reason="panic"}"#,
            Some(1.0),
        ),
        (
            r#"interrole_deliveries_total{topic="metrics-example",instance="controller",type="example.metrics.done"}"#,
            Some(expected as f64),
        ),
        (
            r#"interrole_events_received_total{topic="metrics-example",instance="controller"}"#,
            None,
        ),
        (
            r#"interrole_delivery_lag_seconds_count{topic="metrics-example",instance="controller"}"#,
            None,
        ),
        (
            r#"interrole_outbox_events{topic="metrics-example",instance="controller"}"#,
            Some(0.0),
        ),
        (
            r#"interrole_reconnections_total{topic="metrics-example",instance="worker-1"}"#,
            Some(0.0),
        ),
        (
            r#"interrole_observers{topic="metrics-example",instance="worker-2"}"#,
            None,
        ),
    ];
    for (series, value) in expect {
        let line = scrape
            .lines()
            .find(|l| l.starts_with(&format!("{series} ")))
            .ok_or_else(|| format!("missing from the scrape: {series}"))?;
        let got: f64 = line[series.len()..].trim().parse()?;
        if let Some(want) = value {
            if got != want {
                return Err(format!("{series} is {got}, expected {want}").into());
            }
        }
    }
    Ok(series)
}
