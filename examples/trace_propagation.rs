//! A trace that crosses processes: a publisher and a subscriber, each its own process with its
//! own OpenTelemetry pipeline, over a relay embedded in the publisher.
//!
//! ```text
//! cargo run --release --example trace_propagation
//! ```
//!
//! The publisher publishes an `OrderPlaced` inside a `checkout` span. The bus writes the span's
//! W3C trace context into the event's headers (feature `opentelemetry` of interrole); the
//! subscriber's bus continues the trace in its deliver span and in the observer call's span. Each
//! process exports its spans to the SDK's in-memory exporter; the subscriber reports what it
//! exported on its standard output, and the publisher checks that the subscriber's spans belong
//! to its trace and hang under its publish span. The last line says so:
//!
//! ```text
//! trace_propagation ok trace_id=<32 hex digits> processes=2 spans=<n>
//! ```
//!
//! It exits with 1, saying why, when the trace did not cross.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use interrole::Bus;
use interrole::relay::Credentials;
use interrole_relay_server::{Config, KeyConfig, Server};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// An order was placed: what the publisher tells the subscriber.
#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order: u64,
}
interrole::impl_event!(OrderPlaced = "example.order-placed");

const TOPIC: &str = "orders";
/// The relay key, handed to the subscriber process in its environment.
const KEY_ENV: &str = "TRACE_PROPAGATION_KEY";
const WAIT: Duration = Duration::from_secs(20);

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// This process's pipeline: `tracing` spans become OpenTelemetry spans, kept in memory.
fn pipeline(service: &'static str) -> InMemorySpanExporter {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .expect("the first subscriber of this process");
    exporter
}

/// The finished spans once `done` holds for them, or an error after [`WAIT`].
async fn finished(
    exporter: &InMemorySpanExporter,
    done: impl Fn(&[SpanData]) -> bool,
) -> Result<Vec<SpanData>, Failure> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let spans = exporter.get_finished_spans()?;
        if done(&spans) {
            return Ok(spans);
        }
        if tokio::time::Instant::now() > deadline {
            let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
            return Err(format!("the expected spans did not finish; have {names:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn find<'a>(spans: &'a [SpanData], name: &str) -> Result<&'a SpanData, Failure> {
    spans
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("no span named {name:?}").into())
}

fn bus(url: &str, key: &str, instance: &str) -> Result<Bus, Failure> {
    Ok(Bus::builder()
        .instance(instance)
        .topic(TOPIC)
        .relay(url, Credentials::parse_key(key)?)
        .build()?)
}

/// The subscriber process: waits for one order, then prints what its spans say.
async fn subscriber(url: String) -> Result<(), Failure> {
    let exporter = pipeline("subscriber");
    let key = std::env::var(KEY_ENV)?;
    let bus = bus(&url, &key, "subscriber")?;
    bus.host().expect("a relay bus").wait_opened(WAIT).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _orders = bus.subscribe(move |o: &OrderPlaced| {
        tracing::info!(order = o.order, "order seen");
        let _ = tx.send(o.order);
    });
    // Opened means subscribed: what the publisher sends from now on reaches this bus.
    println!("ready");
    let order = tokio::time::timeout(WAIT, rx.recv())
        .await
        .map_err(|_| "no order came")?
        .ok_or("the bus closed")?;
    let observer_name = "example.order-placed observer";
    let spans = finished(&exporter, |s| {
        s.iter().any(|s| s.name == observer_name) && s.iter().any(|s| s.name.starts_with("process"))
    })
    .await?;
    let deliver = find(&spans, &format!("process {TOPIC}"))?;
    let observer = find(&spans, observer_name)?;
    if observer.parent_span_id != deliver.span_context.span_id() {
        return Err("the observer span is not within the deliver span".into());
    }
    println!(
        "observed order={order} trace_id={} deliver_parent={} deliver={} observer={} spans={}",
        deliver.span_context.trace_id(),
        deliver.parent_span_id,
        deliver.span_context.span_id(),
        observer.span_context.span_id(),
        spans.len()
    );
    bus.close().await;
    Ok(())
}

/// One `key=value` field of the subscriber's report.
fn field<'a>(line: &'a str, key: &str) -> Result<&'a str, Failure> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .ok_or_else(|| format!("no {key} in {line:?}").into())
}

/// The publisher process: the relay, the subscriber process, the traced publish, the checks.
async fn publisher() -> Result<(), Failure> {
    let exporter = pipeline("publisher");
    let key = format!("example={:032x}", rand_u128());
    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse()?,
        keys: vec![KeyConfig::parse_flag(&key)?],
        ..Config::default()
    })
    .await?;
    let url = format!("ws://{}", server.local_addr());
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--subscriber", &url])
        .env(KEY_ENV, &key)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next_line = async || -> Result<String, Failure> {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .map_err(|_| "the subscriber said nothing in time")??;
        let line = line.ok_or("the subscriber ended early")?;
        println!("subscriber: {line}");
        Ok(line)
    };
    let bus = bus(&url, &key, "publisher")?;
    bus.host().expect("a relay bus").wait_opened(WAIT).await?;
    if next_line().await? != "ready" {
        return Err("the subscriber did not get ready".into());
    }

    let checkout = tracing::info_span!("checkout", order = 7);
    let trace_id = checkout.context().span().span_context().trace_id();
    checkout.in_scope(|| bus.publish(OrderPlaced { order: 7 }))?;
    drop(checkout);
    println!("publisher: published order 7 in trace {trace_id}");

    let report = next_line().await?;
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    if !status.success() {
        return Err(format!("the subscriber failed: {status}").into());
    }
    bus.close().await;
    server.shutdown().await;

    let spans = finished(&exporter, |s| {
        s.iter().any(|s| s.name == "checkout") && s.iter().any(|s| s.name.starts_with("send"))
    })
    .await?;
    let root = find(&spans, "checkout")?;
    let publish = find(&spans, &format!("send {TOPIC}"))?;
    let theirs = TraceId::from_hex(field(&report, "trace_id")?)?;
    let deliver_parent = SpanId::from_hex(field(&report, "deliver_parent")?)?;
    if root.span_context.trace_id() != trace_id || publish.span_context.trace_id() != trace_id {
        return Err("the publisher's spans are not in its trace".into());
    }
    if theirs != trace_id {
        return Err(format!("the subscriber's trace is {theirs}, not {trace_id}").into());
    }
    if deliver_parent != publish.span_context.span_id() {
        return Err("the subscriber's deliver span does not continue the publish span".into());
    }
    for span in &spans {
        println!(
            "publisher span: {:<28} trace={} span={} parent={}",
            span.name,
            span.span_context.trace_id(),
            span.span_context.span_id(),
            span.parent_span_id
        );
    }
    let theirs: usize = field(&report, "spans")?.parse()?;
    println!(
        "trace_propagation ok trace_id={trace_id} processes=2 spans={}",
        spans.len() + theirs
    );
    Ok(())
}

/// A random number for the relay key, from the standard library's hasher seeds.
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one(1u8);
    let b = RandomState::new().hash_one(2u8);
    (u128::from(a) << 64) | u128::from(b)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("trace_propagation: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (role, outcome) = match args.as_slice() {
        [flag, url] if flag == "--subscriber" => {
            ("subscriber", runtime.block_on(subscriber(url.clone())))
        }
        [] => ("publisher", runtime.block_on(publisher())),
        _ => {
            eprintln!("usage: trace_propagation");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trace_propagation ({role}): {e}");
            ExitCode::FAILURE
        }
    }
}
