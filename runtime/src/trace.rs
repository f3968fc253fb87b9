//! Trace context across the pipeline (`docs/OPERATIONS.md`, "Tracing"): a
//! unit of work (the api's request, the consumer's message) runs in a span
//! that [`start`] puts in a W3C trace, the caller's or a new one; its log
//! lines carry the `trace_id`, and [`current`] hands the context on (into
//! the event's envelope). With `OTEL_EXPORTER_OTLP_ENDPOINT` set,
//! [`crate::init_tracing`] also exports the spans over OTLP ([`export`]),
//! and the ids are those of the exported spans.

pub mod export;

use obt_contract::{TraceContext, Traceparent};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Registry;
use tracing_subscriber::registry::LookupSpan;

/// The context [`start`] stored on a span, for [`current`].
#[derive(Clone)]
struct Started(TraceContext);

/// Puts `span` in the trace of `parent`, or in a new trace when there is
/// none; records its `trace_id` field (declare it on the span as
/// `trace_id = tracing::field::Empty`) and returns the context to hand on:
/// the same trace, `span` as the parent, the caller's `tracestate` kept.
///
/// Call it before the span is first entered: once entered, an exported
/// span's parent is fixed.
pub fn start(span: &Span, parent: Option<&TraceContext>) -> TraceContext {
    if let Some(parent) = parent {
        // Fails only without the OpenTelemetry layer (no export), where
        // the ids below are this module's own.
        let _ = span.set_parent(remote(parent));
    }
    let exported = span.context().span().span_context().clone();
    let traceparent = if exported.is_valid() {
        Traceparent::new(
            exported.trace_id().to_bytes(),
            exported.span_id().to_bytes(),
            exported.trace_flags().to_u8(),
        )
    } else {
        None
    }
    .unwrap_or_else(|| {
        let trace_id = parent.map_or_else(new_id, |p| p.traceparent.trace_id());
        let flags = parent.map_or(Traceparent::SAMPLED, |p| p.traceparent.flags());
        new_traceparent(trace_id, flags)
    });
    let context = TraceContext {
        traceparent,
        tracestate: parent.and_then(|p| p.tracestate.clone()),
    };
    span.record(
        "trace_id",
        tracing::field::display(traceparent.trace_id_hex()),
    );
    span.with_subscriber(|(id, dispatch)| {
        if let Some(span) = dispatch
            .downcast_ref::<Registry>()
            .and_then(|registry| registry.span(id))
        {
            span.extensions_mut().replace(Started(context.clone()));
        }
    });
    context
}

/// The context that [`start`] gave the current span or the nearest of
/// its parents; `None` outside of one, or when logging is off for it (a
/// disabled span keeps nothing).
pub fn current() -> Option<TraceContext> {
    Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<Registry>()?;
            let span = registry.span(id)?;
            span.scope()
                .find_map(|span| span.extensions().get::<Started>().map(|s| s.0.clone()))
        })
        .flatten()
}

/// The trace context of an HTTP request's `traceparent` and `tracestate`
/// headers; `None` when there is no valid traceparent.
pub fn from_headers(headers: &http::HeaderMap) -> Option<TraceContext> {
    // Two traceparent headers are no valid one. Several tracestate
    // headers are one list, joined by commas.
    let mut traceparents = headers.get_all("traceparent").iter();
    let traceparent = match (traceparents.next(), traceparents.next()) {
        (Some(one), None) => one.to_str().ok(),
        _ => None,
    };
    let tracestate = headers
        .get_all("tracestate")
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<Vec<_>>>()
        .map(|parts| parts.join(","));
    TraceContext::from_headers(traceparent, tracestate.as_deref())
}

/// The remote parent of an exported span.
fn remote(parent: &TraceContext) -> opentelemetry::Context {
    let traceparent = parent.traceparent;
    let state = parent
        .tracestate
        .as_ref()
        .and_then(|s| s.as_str().parse::<TraceState>().ok())
        .unwrap_or_default();
    let span_context = SpanContext::new(
        TraceId::from_bytes(traceparent.trace_id()),
        SpanId::from_bytes(traceparent.parent_id()),
        TraceFlags::new(traceparent.flags()),
        true,
        state,
    );
    opentelemetry::Context::new().with_remote_span_context(span_context)
}

/// A random id of `N` bytes, not all zero.
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id;
        }
    }
}

fn new_id() -> [u8; 16] {
    random_id()
}

fn new_traceparent(trace_id: [u8; 16], flags: u8) -> Traceparent {
    loop {
        if let Some(traceparent) = Traceparent::new(trace_id, random_id(), flags) {
            return traceparent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn in_subscriber<T>(f: impl FnOnce() -> T) -> T {
        let subscriber = Registry::default().with(tracing_subscriber::fmt::layer());
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_span_continues_its_callers_trace_as_a_new_parent() {
        in_subscriber(|| {
            let parent = TraceContext::from_headers(Some(PARENT), Some("congo=t61rcWkgMzE"));
            let span = tracing::info_span!("request", trace_id = tracing::field::Empty);
            let started = start(&span, parent.as_ref());
            assert_eq!(
                started.traceparent.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert_ne!(started.traceparent.parent_id_hex(), "00f067aa0ba902b7");
            assert!(started.traceparent.sampled());
            assert_eq!(started.tracestate, parent.and_then(|p| p.tracestate));
            let inner = span.in_scope(|| tracing::info_span!("inner").in_scope(current));
            assert_eq!(inner, Some(started));
        });
    }

    #[test]
    fn without_a_caller_each_span_starts_its_own_trace() {
        in_subscriber(|| {
            let span = |_| tracing::info_span!("message", trace_id = tracing::field::Empty);
            let one = start(&span(1), None);
            let two = start(&span(2), None);
            assert_ne!(one.traceparent.trace_id(), two.traceparent.trace_id());
            assert!(one.traceparent.sampled());
            assert_eq!(current(), None, "outside of a started span");
        });
    }
}
