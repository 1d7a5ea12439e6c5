//! Trace context end to end (contract "Trace context"): a job's `traceparent` makes
//! its span a child of the producer's; its result, audit events, retry and DLQ
//! copies and its API calls carry the job's trace; its log lines name it; and over
//! OTLP a collector stand-in sees the spans and their parent-child links.

#[path = "support/cleanup.rs"]
mod cleanup;
#[path = "support/worker.rs"]
mod harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use cxone_worker::broker::topology::header_text;
use cxone_worker::sim::SimConfig;
use harness::{Worker, job, pdf};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn traced(trace: &str, parent: &str) -> BasicProperties {
    let mut h = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.as_bytes().into());
    h.insert(
        "traceparent".into(),
        text(&format!("00-{trace}-{parent}-01")),
    );
    h.insert("tracestate".into(), text("vendor=kept"));
    BasicProperties::default().with_headers(h)
}

/// The trace id of a message's `traceparent`, and its `tracestate`.
fn trace_of(properties: &BasicProperties) -> (Option<String>, Option<String>) {
    let h = properties.headers().clone().unwrap_or_default();
    let id = header_text(&h, "traceparent").and_then(|t| t.split('-').nth(1).map(str::to_owned));
    (id, header_text(&h, "tracestate"))
}

async fn sim_traces(w: &Worker, key: &str) -> Vec<Value> {
    let stats = w.stats().await;
    stats["keys"][key]["trace"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_message_and_call_of_a_job_carries_its_trace() {
    let mut w = Worker::new(
        SimConfig {
            fail_first: 1,
            ..SimConfig::default()
        },
        &[("RETRY_DELAYS", "10m"), ("AUDIT_EVENTS", "all")],
    )
    .await;
    w.start().await;
    let body = serde_json::to_vec(&job("traced-1", &w.file("t.pdf", &pdf(100)))).unwrap();
    w.publish_raw(body, traced(TRACE, PARENT)).await;

    // The first attempt fails: its retry copy and events carry the trace.
    let copy = w.drain("retry.10m", 1, Duration::from_secs(20)).await;
    assert_eq!(copy.len(), 1, "{}", w.logs());
    assert_eq!(
        trace_of(&copy[0].delivery.properties),
        (Some(TRACE.into()), Some("vendor=kept".into()))
    );
    // Put back, it succeeds: result and audit events in the same trace.
    w.publish_raw(
        copy[0].delivery.data.clone(),
        copy[0].delivery.properties.clone(),
    )
    .await;
    let got = w.results(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].routing_key, "job.succeeded");
    assert_eq!(trace_of(&got[0].properties).0.as_deref(), Some(TRACE));
    // The simulator records the calls it accepts: the second one.
    let calls = sim_traces(&w, "traced-1").await;
    let sent = calls[0]["traceparent"].as_str().unwrap();
    assert_eq!(
        sent.split('-').nth(1),
        Some(TRACE),
        "the API call is in the job's trace"
    );
    assert_ne!(sent.split('-').nth(2), Some(PARENT), "a span of its own");
    assert_eq!(calls[0]["tracestate"], "vendor=kept");
    let audit = w.drain("audit", 20, Duration::from_secs(3)).await;
    assert!(audit.len() >= 5, "stage events and terminal events");
    for m in &audit {
        assert_eq!(
            trace_of(&m.delivery.properties).0.as_deref(),
            Some(TRACE),
            "{}",
            m.delivery.routing_key
        );
    }
    // Its log lines name the trace.
    let logs = w.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("job succeeded"))
        .expect("a log line of the job");
    assert!(line.contains(&format!(r#""trace_id":"{TRACE}""#)), "{line}");
    assert!(line.contains(r#""span_id":""#), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_and_a_job_without_a_trace_get_one_all_the_same() {
    // Logs filtered to warnings: the trace context travels on all the same.
    let mut w = Worker::new(SimConfig::default(), &[("RUST_LOG", "warn")]).await;
    w.start().await;
    let other = "0af7651916cd43dd8448eb211c80319c";
    let body = serde_json::to_vec(&serde_json::json!({
        "job_id": "dead-1", "file": w.file("d.pdf", &pdf(10)), "data_action_id": "status-400"}))
    .unwrap();
    w.publish_raw(body, traced(other, PARENT)).await;
    let dlq = w.drain("jobs.dlq", 1, Duration::from_secs(20)).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        trace_of(&dlq[0].delivery.properties).0.as_deref(),
        Some(other)
    );
    let failed = w.results(1, Duration::from_secs(10)).await;
    assert_eq!(trace_of(&failed[0].properties).0.as_deref(), Some(other));

    // No traceparent: a new trace, on the result and on the API call alike.
    w.publish(&job("fresh-1", &w.file("f.pdf", &pdf(10)))).await;
    let got = w.results(1, Duration::from_secs(20)).await;
    let (trace, _) = trace_of(&got[0].properties);
    let trace = trace.expect("a traceparent on the result of an untraced job");
    assert_eq!(trace.len(), 32);
    let calls = sim_traces(&w, "fresh-1").await;
    assert_eq!(
        calls[0]["traceparent"]
            .as_str()
            .and_then(|t| t.split('-').nth(1)),
        Some(trace.as_str())
    );
}

type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP collector stand-in: decodes what it receives.
async fn collector() -> (String, Received) {
    let received: Received = Arc::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(r): State<Received>, body: Bytes| async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap_or_default();
                let spans = request
                    .resource_spans
                    .into_iter()
                    .flat_map(|r| r.scope_spans)
                    .flat_map(|s| s.spans);
                r.lock().unwrap().extend(spans);
                ""
            }),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            V::StringValue(s) => Some(s.clone()),
            V::IntValue(n) => Some(n.to_string()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_with_their_parents_and_flushed_at_shutdown() {
    let (endpoint, received) = collector().await;
    let mut w = Worker::new(
        SimConfig::default(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "cxone-worker-under-test"),
        ],
    )
    .await;
    w.start().await;
    let body = serde_json::to_vec(&job("otlp-1", &w.file("t.pdf", &pdf(100)))).unwrap();
    w.publish_raw(body, traced(TRACE, PARENT)).await;
    w.results(1, Duration::from_secs(20)).await;
    let (code, _) = w.stop(Duration::from_secs(20));
    assert_eq!(code, 0);
    let spans = received.lock().unwrap().clone();
    let hex = |b: &[u8]| hex::encode(b);
    let job = spans
        .iter()
        .find(|s| s.name.ends_with(".jobs process"))
        .unwrap_or_else(|| {
            panic!(
                "no consumer span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(hex(&job.trace_id), TRACE);
    assert_eq!(
        hex(&job.parent_span_id),
        PARENT,
        "a child of the producer's span"
    );
    assert_eq!(job.kind, 5, "SPAN_KIND_CONSUMER");
    assert_eq!(
        attribute(job, "messaging.system").as_deref(),
        Some("rabbitmq")
    );
    assert_eq!(
        attribute(job, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attribute(job, "messaging.destination.name"),
        Some(w.q("jobs"))
    );
    let call = spans
        .iter()
        .find(|s| s.name == "POST")
        .expect("the API call's span");
    assert_eq!(call.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(
        call.parent_span_id, job.span_id,
        "the call is the job's child"
    );
    assert_eq!(
        attribute(call, "http.response.status_code").as_deref(),
        Some("202")
    );
    let sent = sim_traces(&w, "otlp-1").await;
    assert_eq!(
        sent[0]["traceparent"]
            .as_str()
            .and_then(|t| t.split('-').nth(2)),
        Some(hex(&call.span_id).as_str()),
        "the API saw the call's span as its parent"
    );
}
