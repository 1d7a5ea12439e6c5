//! `/healthz`, `/readyz` and `/metrics` on `ADMIN_ADDR`, and the health state the
//! consumer keeps for them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::job::Systemic;
use crate::telemetry::names;

/// Why the worker takes no jobs although it is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paused {
    /// It has no API token yet (contract "Start-up").
    Starting,
    /// Something that is not the jobs' fault.
    Because(Systemic),
}

impl Paused {
    pub fn as_str(self) -> &'static str {
        match self {
            Paused::Starting => "starting",
            Paused::Because(cause) => cause.as_str(),
        }
    }

    fn describe(self) -> String {
        match self {
            Paused::Starting => "starting: waiting for the first API token".into(),
            Paused::Because(cause) => format!("paused: {}", cause.describe()),
        }
    }
}

/// What `/readyz` reports: ready means connected, consuming and not paused.
#[derive(Default)]
pub struct Health {
    connected: AtomicBool,
    consuming: AtomicBool,
    paused: Mutex<Option<Paused>>,
}

impl Health {
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        if !connected {
            self.set_consuming(false);
        }
    }

    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
        metrics::gauge!(names::CONSUMING).set(f64::from(u8::from(consuming)));
    }

    pub fn set_paused(&self, cause: Option<Paused>) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(previous) = *paused {
            metrics::gauge!(names::PAUSED, "reason" => previous.as_str()).set(0.0);
        }
        if let Some(cause) = cause {
            metrics::gauge!(names::PAUSED, "reason" => cause.as_str()).set(1.0);
        }
        *paused = cause;
    }

    pub fn paused(&self) -> Option<Paused> {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `None` when ready, else why not.
    pub fn not_ready(&self) -> Option<String> {
        if !self.connected.load(Ordering::Relaxed) {
            return Some("not connected to the broker".into());
        }
        if let Some(cause) = self.paused() {
            return Some(cause.describe());
        }
        if !self.consuming.load(Ordering::Relaxed) {
            return Some("not consuming".into());
        }
        None
    }
}

/// Buckets of the duration histograms: a 10 KB job takes milliseconds, a chunked
/// 100 MB one minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The standard `process_*` series (CPU, memory, file descriptors, start time),
/// read at each scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Installs the Prometheus recorder for this process (once; later calls reuse it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(names::EXECUTE_DURATION.to_owned()),
                    SECONDS_BUCKETS,
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(names::JOB_DURATION.to_owned()),
                    SECONDS_BUCKETS,
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (a test harness): then
            // this handle renders nothing, which the caller can live with.
            if metrics::set_global_recorder(recorder).is_ok() {
                crate::telemetry::register_metrics();
                process_collector().describe();
            }
            handle
        })
        .clone()
}

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AdminState {
        health,
        metrics: metrics_handle(),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` (port 0 picks one) and says where it listens.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, String) {
    match state.health.not_ready() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn render_metrics(
    State(state): State<AdminState>,
) -> ([(&'static str, &'static str); 1], String) {
    process_collector().collect();
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_connected_consuming_and_not_paused() {
        let h = Health::default();
        assert!(h.not_ready().is_some());
        h.set_connected(true);
        assert_eq!(h.not_ready().as_deref(), Some("not consuming"));
        h.set_consuming(true);
        assert_eq!(h.not_ready(), None);
        h.set_paused(Some(Paused::Because(Systemic::CredentialsRefused)));
        assert!(h.not_ready().unwrap().contains("credentials"));
        h.set_paused(Some(Paused::Starting));
        assert!(h.not_ready().unwrap().contains("first API token"));
        h.set_paused(None);
        assert_eq!(h.not_ready(), None);
        h.set_connected(false);
        assert!(h.not_ready().is_some());
    }
}
