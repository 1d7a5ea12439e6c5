//! Traces leave the worker over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
//! and are flushed at shutdown: a collector stand-in records what it receives.

#[path = "support/cleanup.rs"]
mod cleanup;
// Shared with tests/worker.rs, which uses all of it.
#[allow(dead_code)]
#[path = "worker/harness.rs"]
mod harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use cxone_worker::sim::SimConfig;
use harness::{Worker, job, pdf};

type Received = Arc<Mutex<Vec<usize>>>;

async fn collector() -> (String, Received) {
    let received: Received = Arc::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(r): State<Received>, body: Bytes| async move {
                r.lock().unwrap().push(body.len());
                ""
            }),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_and_flushed_at_shutdown() {
    let (endpoint, received) = collector().await;
    let mut w = Worker::new(
        SimConfig::default(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    )
    .await;
    w.start().await;
    w.publish(&job("traced-1", &w.file("t.pdf", &pdf(100))))
        .await;
    w.results(1, Duration::from_secs(20)).await;
    let (code, _) = w.stop(Duration::from_secs(20));
    assert_eq!(code, 0);
    let got = received.lock().unwrap().clone();
    assert!(
        !got.is_empty() && got.iter().all(|n| *n > 0),
        "no trace export reached the collector: {got:?}\n{}",
        w.logs()
    );
}
