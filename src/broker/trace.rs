//! W3C trace context through AMQP headers: a job's `traceparent`/`tracestate` make
//! its span a child of the producer's, and every message published for the job
//! carries the job's context. The job's span follows OpenTelemetry's messaging
//! conventions (a consumer span `{queue} process`).

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::publisher::Outgoing;
use super::topology::{headers_without, text};

/// The headers of W3C Trace Context.
const FIELDS: [&str; 2] = ["traceparent", "tracestate"];

/// Reads text headers; anything else (a number, a table) is no trace context.
struct Headers<'a>(&'a FieldTable);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        FIELDS.to_vec()
    }
}

struct Writer<'a>(&'a mut FieldTable);

impl Injector for Writer<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.into(), text(&value));
    }
}

/// The span one delivery is processed in: the producer's trace continued (a new
/// one when its headers carry none, or no valid one). Its log lines carry
/// `trace_id` and `span_id`.
pub(super) fn delivery_span(queue: &str, properties: &BasicProperties) -> tracing::Span {
    let message_id = properties.message_id().as_ref().map(|m| m.as_str());
    let span = tracing::info_span!(
        "job",
        otel.name = format!("{queue} process"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = queue,
        messaging.message.id = message_id,
        job_id = tracing::field::Empty,
        file = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if let Some(headers) = properties.headers() {
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
        // Only a remote context the propagator could read becomes the parent.
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", ids.trace_id().to_string());
        span.record("span_id", ids.span_id().to_string());
    }
    span
}

/// Puts `span`'s trace context on every message (replacing the job's own, on its
/// copies: the next delivery continues from this one).
pub(super) fn inject(span: &tracing::Span, messages: &mut [Outgoing]) {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    for message in messages {
        let old = message.properties.headers().clone().unwrap_or_default();
        // The job's own context goes: a tracestate must not outlive its traceparent.
        let mut headers = headers_without(&old, |k| FIELDS.contains(&k));
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut Writer(&mut headers));
        });
        message.properties = message.properties.clone().with_headers(headers);
    }
}
