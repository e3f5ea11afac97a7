//! Trace context through the bus (feature `opentelemetry`), over a relay: what a traced publisher
//! sends continues its trace in the receiver's deliver and observer spans; a request and its
//! reply are one trace; an event published outside any span carries no trace and makes no span.
//!
//! One OpenTelemetry pipeline (the SDK's in-memory exporter behind tracing-opentelemetry) is the
//! global `tracing` subscriber of this test binary: the bus calls observers on threads of its
//! own. Each test tells its spans apart by trace id.

mod relay_support;

use std::sync::OnceLock;
use std::time::Duration;

use interrole::trace::{TRACEPARENT, parse_traceparent};
use interrole::{Headers, InterRoleEvent};
use opentelemetry::trace::{SpanKind, TraceContextExt, TraceId, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use relay_support::{LONG, bus, relay, until_live};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order(u64);
interrole::impl_event!(Order = "test.trace.order");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Quote(u64);
interrole::impl_event!(Quote = "test.trace.quote");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Probe;
interrole::impl_event!(Probe = "test.trace.probe");

/// The in-memory exporter every span of this binary ends in.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only subscriber of this binary");
        exporter
    })
}

/// The finished spans of `trace`, once `done` holds for them (bounded by [`LONG`]).
async fn spans_of(trace: TraceId, done: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let spans: Vec<SpanData> = exporter()
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        if done(&spans) {
            return spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans of {trace}: {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    match named(spans, name).as_slice() {
        [span] => span,
        other => panic!("{} spans named {name:?}", other.len()),
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_event_continues_the_publishers_trace_in_every_observer() {
    exporter();
    let server = relay().await;
    let (a, b) = (
        bus(&server, "orders", "a").await,
        bus(&server, "orders", "b").await,
    );
    until_live(&a, &b, || Probe).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut guards = Vec::new();
    for _ in 0..2 {
        let tx = tx.clone();
        guards.push(b.subscribe_all(move |e: &InterRoleEvent| {
            if e.payload::<Order>().is_some() {
                let _ = tx.send(e.headers().get(TRACEPARENT).map(str::to_owned));
            }
        }));
    }

    let work = tracing::info_span!("place order");
    let trace = work.context().span().span_context().trace_id();
    assert_ne!(trace, TraceId::INVALID, "the pipeline is installed");
    work.in_scope(|| a.publish(Order(1)).unwrap());
    drop(work);
    for _ in 0..2 {
        let header = rx.recv().await.unwrap().expect("a traceparent header");
        assert_eq!(parse_traceparent(&header).unwrap().0, trace);
    }

    // The publisher's process: place order > send orders > relay send; the publisher's own
    // bus has no observer of Order, so no deliver span there. The receiver: process orders (a
    // child of the publish span, remote) > two observer spans.
    let spans = spans_of(trace, |s| {
        named(s, "test.trace.order observer").len() == 2 && !named(s, "process orders").is_empty()
    })
    .await;
    let root = one(&spans, "place order");
    let publish = one(&spans, "send orders");
    let send = one(&spans, "relay send");
    let deliver = one(&spans, "process orders");
    assert_eq!(publish.parent_span_id, root.span_context.span_id());
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(send.parent_span_id, publish.span_context.span_id());
    assert_eq!(deliver.parent_span_id, publish.span_context.span_id());
    assert_eq!(deliver.span_kind, SpanKind::Consumer);
    for observer in named(&spans, "test.trace.order observer") {
        assert_eq!(observer.parent_span_id, deliver.span_context.span_id());
    }
    // The messaging semantic conventions.
    assert_eq!(
        attribute(publish, "messaging.system").as_deref(),
        Some("interrole")
    );
    assert_eq!(
        attribute(publish, "messaging.destination.name").as_deref(),
        Some("orders")
    );
    assert_eq!(
        attribute(publish, "messaging.operation.type").as_deref(),
        Some("send")
    );
    assert_eq!(
        attribute(deliver, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attribute(deliver, "messaging.client.id").as_deref(),
        Some("b")
    );
    assert_eq!(
        attribute(deliver, "messaging.message.id"),
        attribute(publish, "messaging.message.id")
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_its_reply_are_one_trace() {
    exporter();
    let server = relay().await;
    let (a, b) = (
        bus(&server, "quotes", "a").await,
        bus(&server, "quotes", "b").await,
    );
    until_live(&a, &b, || Probe).await;
    let _serving = b.serve(|o: &Order| Quote(o.0 * 2));

    let work = tracing::info_span!("ask for a quote");
    let trace = work.context().span().span_context().trace_id();
    let quote = a
        .request::<Order, Quote>(b.instance(), Order(21), LONG)
        .instrument(work)
        .await
        .unwrap();
    assert_eq!(quote.0, 42);
    assert_eq!(
        parse_traceparent(quote.headers().get(TRACEPARENT).unwrap())
            .unwrap()
            .0,
        trace
    );
    let spans = spans_of(trace, |s| {
        !named(s, "request quotes").is_empty() && named(s, "send quotes").len() == 2
    })
    .await;
    let root = one(&spans, "ask for a quote");
    let request = one(&spans, "request quotes");
    assert_eq!(request.parent_span_id, root.span_context.span_id());
    assert_eq!(request.span_kind, SpanKind::Client);
    assert_eq!(
        attribute(request, "interrole.replies").as_deref(),
        Some("1")
    );
    let deliver = one(&spans, "process quotes");
    let observer = one(&spans, "test.trace.order observer");
    assert_eq!(observer.parent_span_id, deliver.span_context.span_id());
    // The reply is published from inside the server's observer span.
    let sends = named(&spans, "send quotes");
    let reply = sends
        .iter()
        .find(|s| attribute(s, "messaging.operation.name").as_deref() == Some("reply"))
        .expect("a reply publish span");
    assert_eq!(reply.parent_span_id, observer.span_context.span_id());
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_outside_any_span_carries_no_trace() {
    exporter();
    let server = relay().await;
    let (a, b) = (
        bus(&server, "plain", "a").await,
        bus(&server, "plain", "b").await,
    );
    until_live(&a, &b, || Probe).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _g = b.subscribe::<Order, _>(move |_| {
        let _ = tx.send(());
    });
    let (tx_headers, mut headers) = tokio::sync::mpsc::unbounded_channel();
    let _all = b.subscribe_all(move |e: &InterRoleEvent| {
        if e.payload::<Order>().is_some() {
            let _ = tx_headers.send(e.headers().clone());
        }
    });
    let before = exporter().get_finished_spans().unwrap().len();
    a.publish(Order(3)).unwrap();
    rx.recv().await.unwrap();
    assert_eq!(headers.recv().await.unwrap(), Headers::new());
    let after: Vec<String> = exporter()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .skip(before)
        .filter(|s| s.name.contains("plain") || s.name.contains("order"))
        .map(|s| s.name.to_string())
        .collect();
    assert!(after.is_empty(), "{after:?}");
    // A traceparent the caller set is kept as it is.
    let mine = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let work = tracing::info_span!("with my own parent");
    work.in_scope(|| {
        a.publish_with(Order(4), Headers::new().with(TRACEPARENT, mine).unwrap())
            .unwrap()
    });
    rx.recv().await.unwrap();
    assert_eq!(headers.recv().await.unwrap().get(TRACEPARENT), Some(mine));
    a.close().await;
    b.close().await;
}
