//! Trace context through events (feature `opentelemetry`): W3C `traceparent` and `tracestate`
//! in the event's [`Headers`], and `tracing` spans that tracing-opentelemetry turns into
//! OpenTelemetry spans with the messaging semantic-convention attributes.
//!
//! A bus continues traces; it does not start them. An event published, sent or requested while a
//! `tracing` span is current gets a *publish* span (kind producer, a child of the current one)
//! whose context travels in the headers; its handing to the transport is a *transport send*
//! span. Wherever an event with a `traceparent` is delivered (in the publishing process too),
//! the dispatch runs in a *deliver* span (kind consumer) that continues the publisher's trace,
//! and each observer call in an *observer* span within it; a [`Bus::request`](crate::Bus::request)
//! is a *request* span (kind client) around the publish and the wait for the reply, and the
//! reply, sent from inside the server's observer span, is a publish span of that trace too.
//! An event published outside any span, or delivered without a `traceparent`, makes no span.
//!
//! The spans are `tracing` spans at level INFO with the target `interrole::trace`: a subscriber
//! filter that drops that target turns all of this off. Without the feature none of this code
//! exists; with it and no subscriber, the cost is one disabled-callsite check per publish and a
//! look at the headers per delivery (`docs/benchmarks.md` has the measurement).

use interrole_core::{Headers, InstanceId, InterRoleEvent, Topic};
use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use tracing::{Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header that carries the W3C trace parent: `00-<trace id>-<span id>-<flags>`.
pub const TRACEPARENT: &str = "traceparent";
/// The header that carries the W3C trace state, when there is one.
pub const TRACESTATE: &str = "tracestate";

/// The W3C `traceparent` of a span context (version `00`), or `None` for an invalid context.
pub fn traceparent(cx: &SpanContext) -> Option<String> {
    cx.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            cx.trace_id(),
            cx.span_id(),
            cx.trace_flags().to_u8()
        )
    })
}

/// Reads a W3C `traceparent`: its trace id, parent span id and flags. `None` when it is not
/// valid: the version `ff`, a field of the wrong length or not lower-case hex, an id of all
/// zeros, or for version `00` anything after the flags. A later version's extra fields are
/// ignored, as the W3C specification asks.
pub fn parse_traceparent(text: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    fn hex(s: &str, len: usize) -> Option<&str> {
        (s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then_some(s)
    }
    let mut parts = text.splitn(5, '-');
    let version = hex(parts.next()?, 2)?;
    let trace_id = hex(parts.next()?, 32)?;
    let span_id = hex(parts.next()?, 16)?;
    let flags = hex(parts.next()?, 2)?;
    let rest = parts.next();
    if version == "ff" || (version == "00" && rest.is_some()) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, span_id, TraceFlags::new(flags & 0x01)))
}

/// Writes `cx` into `headers` as `traceparent` (and `tracestate` when not empty). Returns
/// whether it did: not for an invalid context, nor when the headers have no room left.
pub fn inject(cx: &SpanContext, headers: &mut Headers) -> bool {
    let Some(parent) = traceparent(cx) else {
        return false;
    };
    if headers.insert(TRACEPARENT, &parent).is_err() {
        return false;
    }
    let state = cx.trace_state().header();
    if !state.is_empty() && headers.insert(TRACESTATE, &state).is_err() {
        // A trace state that does not fit is dropped; the parent alone still links the trace.
        headers.remove(TRACESTATE);
    }
    true
}

/// The remote span context in `headers`, or `None` when there is no valid `traceparent`. A
/// `tracestate` that does not parse is dropped (the parent is kept), as the W3C specification
/// asks.
pub fn extract(headers: &Headers) -> Option<SpanContext> {
    let (trace_id, span_id, flags) = parse_traceparent(headers.get(TRACEPARENT)?)?;
    let state = headers
        .get(TRACESTATE)
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// What a publish is, for its span.
#[derive(Clone, Copy)]
pub(crate) enum Operation {
    Publish,
    Send,
    Reply,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Publish => "publish",
            Operation::Send => "send",
            Operation::Reply => "reply",
        }
    }
}

/// Whether the bus's spans are wanted at all: the cheap check before anything else.
#[inline]
fn enabled() -> bool {
    tracing::enabled!(target: "interrole::trace", Level::INFO)
}

/// The publish span of an event about to be numbered, when a span is current; its context is
/// written into `headers` (unless they carry a `traceparent` already: the caller's own).
#[inline]
pub(crate) fn publish(
    op: Operation,
    topic: &Topic,
    instance: &InstanceId,
    type_tag: &str,
    target: Option<&InstanceId>,
    headers: &mut Headers,
) -> Option<Span> {
    if !enabled() {
        return None;
    }
    publish_slow(op, topic, instance, type_tag, target, headers)
}

#[cold]
#[inline(never)]
fn publish_slow(
    op: Operation,
    topic: &Topic,
    instance: &InstanceId,
    type_tag: &str,
    target: Option<&InstanceId>,
    headers: &mut Headers,
) -> Option<Span> {
    if Span::current().is_none() {
        return None;
    }
    let span = tracing::info_span!(
        target: "interrole::trace",
        "interrole.publish",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        messaging.system = "interrole",
        messaging.operation.type = "send",
        messaging.operation.name = op.name(),
        messaging.destination.name = %topic,
        messaging.client.id = %instance,
        messaging.message.id = tracing::field::Empty,
        interrole.type_tag = type_tag,
        interrole.target = target.map(|t| t.as_str()),
    );
    if span.is_disabled() {
        return None;
    }
    if !headers.contains_key(TRACEPARENT) {
        inject(span.context().span().span_context(), headers);
    }
    Some(span)
}

/// Records the event's id on its publish span, once numbered.
#[cold]
#[inline(never)]
pub(crate) fn numbered(span: &Span, event: &InterRoleEvent) {
    span.record("messaging.message.id", tracing::field::display(event.id()));
}

/// The span of handing one event to the transport, inside its publish span.
#[cold]
#[inline(never)]
pub(crate) fn transport_send(transport: &'static str, envelope: &InterRoleEvent) -> Span {
    tracing::info_span!(
        target: "interrole::trace",
        "interrole.transport.send",
        otel.name = %format_args!("{transport} send"),
        otel.kind = "client",
        messaging.system = "interrole",
        messaging.message.id = %envelope.id(),
        interrole.transport = transport,
    )
}

/// The request span, when a span is current.
pub(crate) fn request(
    topic: &Topic,
    instance: &InstanceId,
    type_tag: &str,
    target: Option<&InstanceId>,
) -> Option<Span> {
    if !enabled() || Span::current().is_none() {
        return None;
    }
    let span = tracing::info_span!(
        target: "interrole::trace",
        "interrole.request",
        otel.name = %format_args!("request {topic}"),
        otel.kind = "client",
        messaging.system = "interrole",
        messaging.operation.name = "request",
        messaging.destination.name = %topic,
        messaging.client.id = %instance,
        interrole.type_tag = type_tag,
        interrole.target = target.map(|t| t.as_str()),
        interrole.replies = tracing::field::Empty,
    );
    (!span.is_disabled()).then_some(span)
}

/// Who a hub delivers for, for its deliver spans.
#[derive(Debug, Clone)]
pub(crate) struct Labels {
    pub(crate) topic: Topic,
    pub(crate) instance: InstanceId,
}

/// The deliver span of an event that carries a trace context, continuing it; `None` for an
/// event without one or when the spans are not wanted. The caller looks at the headers first
/// (an event without headers, the common case, costs that look alone).
#[cold]
#[inline(never)]
pub(crate) fn deliver(event: &InterRoleEvent, labels: Option<&Labels>) -> Option<Span> {
    if !enabled() {
        return None;
    }
    let parent = extract(event.headers())?;
    let topic = labels.map(|l| l.topic.as_str());
    let span = tracing::info_span!(
        target: "interrole::trace",
        "interrole.deliver",
        otel.name = %format_args!("process {}", topic.unwrap_or("hub")),
        otel.kind = "consumer",
        messaging.system = "interrole",
        messaging.operation.type = "process",
        messaging.operation.name = "deliver",
        messaging.destination.name = topic,
        messaging.client.id = labels.map(|l| l.instance.as_str()),
        messaging.message.id = %event.id(),
        interrole.sender = %event.sender(),
        interrole.type_tag = %event.type_tag(),
    );
    if span.is_disabled() {
        return None;
    }
    // A span that was just made and never entered takes its parent.
    let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    Some(span)
}

/// The span of one observer call within a deliver span.
pub(crate) fn observer(deliver: &Span, observer: u64, event: &InterRoleEvent) -> Span {
    tracing::info_span!(
        target: "interrole::trace",
        parent: deliver,
        "interrole.observer",
        otel.name = %format_args!("{} observer", event.type_tag()),
        otel.kind = "internal",
        messaging.system = "interrole",
        interrole.observer.id = observer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_w3c_example_parses_and_formats_back() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, span, flags) = parse_traceparent(text).unwrap();
        assert_eq!(trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.to_string(), "00f067aa0ba902b7");
        assert!(flags.is_sampled());
        let cx = SpanContext::new(trace, span, flags, true, TraceState::default());
        assert_eq!(traceparent(&cx).as_deref(), Some(text));
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        // A later version may add fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn inject_and_extract_round_trip_with_state() {
        let (trace, span, flags) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let state: TraceState = "vendor=abc,other=x".parse().unwrap();
        let cx = SpanContext::new(trace, span, flags, false, state);
        let mut headers = Headers::new().with("tenant", "acme").unwrap();
        assert!(inject(&cx, &mut headers));
        assert_eq!(headers.get(TRACESTATE), Some("vendor=abc,other=x"));
        let back = extract(&headers).unwrap();
        assert_eq!(
            (back.trace_id(), back.span_id(), back.trace_flags()),
            (trace, span, flags)
        );
        assert!(back.is_remote());
        assert_eq!(back.trace_state().get("vendor"), Some("abc"));
        assert!(!inject(&SpanContext::empty_context(), &mut Headers::new()));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_text_is_parsed_or_refused_without_panic(text in ".{0,80}") {
                let _ = parse_traceparent(&text);
            }

            #[test]
            fn valid_ids_round_trip(trace in 1..u128::MAX, span in 1..u64::MAX, sampled: bool) {
                let cx = SpanContext::new(
                    TraceId::from_bytes(trace.to_be_bytes()),
                    SpanId::from_bytes(span.to_be_bytes()),
                    if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() },
                    false,
                    TraceState::default(),
                );
                let text = traceparent(&cx).unwrap();
                prop_assert_eq!(text.len(), 55);
                let (t, s, f) = parse_traceparent(&text).unwrap();
                prop_assert_eq!((t, s, f), (cx.trace_id(), cx.span_id(), cx.trace_flags()));
            }
        }
    }
}
