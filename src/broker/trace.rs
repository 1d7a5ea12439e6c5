//! A delivery's trace context through AMQP headers: its `traceparent`/`tracestate`
//! make the job's span a child of the producer's, and every message published for
//! the job carries the job's context (see `crate::trace`). Exported, the job's span
//! follows OpenTelemetry's messaging conventions (a consumer span `{queue} process`).

use lapin::BasicProperties;
use lapin::types::FieldTable;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::publisher::Outgoing;
use super::topology::{header_text, headers_without, text};
use crate::trace::{self, Context};

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The span one delivery is processed in and its trace context: the producer's trace
/// continued, or a new one when its headers carry no valid context. Its log lines
/// carry `trace_id` and `span_id`.
pub(super) fn delivery_span(queue: &str, properties: &BasicProperties) -> (tracing::Span, Context) {
    let parent = properties.headers().as_ref().and_then(|h| {
        Context::parse(
            &header_text(h, TRACEPARENT)?,
            header_text(h, TRACESTATE).as_deref(),
        )
    });
    if !trace::exporting() {
        let context = Context::child_of(parent.as_ref());
        let span = tracing::info_span!(
            "job",
            job_id = tracing::field::Empty,
            file = tracing::field::Empty,
            trace_id = %context.trace_id(),
            span_id = %context.span_id(),
        );
        return (span, context);
    }
    let message_id = properties.message_id().as_ref().map(|m| m.as_str());
    let span = tracing::info_span!(
        "job",
        otel.name = format!("{queue} process"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = queue,
        messaging.message.id = message_id,
        job_id = tracing::field::Empty,
        file = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if let Some(parent) = &parent {
        let _ = span.set_parent(parent.to_otel());
    }
    let context = Context::of_span(&span).unwrap_or_else(|| Context::child_of(parent.as_ref()));
    span.record("trace_id", context.trace_id());
    span.record("span_id", context.span_id());
    (span, context)
}

/// Puts the job's trace context on every message (replacing the job's own on its
/// copies: the next delivery continues from this one).
pub(super) fn inject(context: &Context, messages: &mut [Outgoing]) {
    let traceparent = text(&context.traceparent());
    for message in messages {
        // The job's own context goes: a tracestate must not outlive its traceparent.
        let mut headers: FieldTable = match message.properties.headers() {
            Some(old) => headers_without(old, |k| k == TRACEPARENT || k == TRACESTATE),
            None => FieldTable::default(),
        };
        headers.insert(TRACEPARENT.into(), traceparent.clone());
        if let Some(state) = context.tracestate() {
            headers.insert(TRACESTATE.into(), text(state));
        }
        message.properties = message.properties.clone().with_headers(headers);
    }
}
