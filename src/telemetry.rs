//! Logs, traces and metrics: set-up at start, flush at exit, and every metric name.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Every metric the worker records, in one place so `/metrics` reads as documented.
pub mod names {
    /// Jobs ended, by `outcome` (succeeded, failed, retried, handed_back) and `error_kind`.
    pub const JOBS: &str = "cxone_jobs_total";
    /// Execute calls made, by `answer` (2xx, 401, 403, 429, 4xx, 5xx, transport_error).
    pub const EXECUTE_CALLS: &str = "cxone_execute_calls_total";
    /// Execution attempts counted against `MAX_ATTEMPTS`.
    pub const ATTEMPTS: &str = "cxone_execute_attempts_total";
    /// Seconds from the first send of an execute call to its success.
    pub const EXECUTE_LATENCY: &str = "cxone_execute_latency_seconds";
    /// Jobs being processed now.
    pub const IN_FLIGHT: &str = "cxone_jobs_in_flight";
    /// Bytes of file content held by jobs now (bounded by MAX_INFLIGHT_BYTES).
    pub const IN_FLIGHT_BYTES: &str = "cxone_inflight_bytes";
    /// Raw file bytes encoded.
    pub const BYTES_ENCODED: &str = "cxone_bytes_encoded_total";
    /// Requests to the token endpoint, and tokens obtained.
    pub const TOKEN_REQUESTS: &str = "cxone_token_requests_total";
    pub const TOKEN_REFRESHES: &str = "cxone_token_refreshes_total";
    /// 429 answers (each pauses every call of the process).
    pub const RATE_LIMITED: &str = "cxone_rate_limited_total";
    /// Jobs sent to a retry queue.
    pub const RETRIES: &str = "cxone_retries_total";
    /// 1 while the worker is paused, by `reason`.
    pub const PAUSED: &str = "cxone_paused";
    /// 1 while connected to the broker and consuming.
    pub const CONSUMING: &str = "cxone_consuming";
    /// Broker sessions started (1 + reconnections).
    pub const BROKER_SESSIONS: &str = "cxone_broker_sessions_total";
    /// Publishes that were nacked, returned or timed out.
    pub const PUBLISH_FAILURES: &str = "cxone_publish_failures_total";
    /// Jobs handed back as fresh copies to spare their delivery limit.
    pub const REFRESHED: &str = "cxone_handed_back_fresh_total";
    /// Storage record writes, by `result`.
    pub const STORAGE_WRITES: &str = "cxone_storage_writes_total";
}

/// Flushes traces when dropped; hold it until the program ends.
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer.take()
            && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("cxone-worker: flushing traces failed: {e}");
        }
    }
}

/// Installs the log subscriber (level from `RUST_LOG`, default `info`), and the OTLP
/// trace exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    };
    let tracer = otlp_provider(service);
    let otel = tracer
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { tracer }
}

fn otlp_provider(service: &'static str) -> Option<SdkTracerProvider> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("cxone-worker: OTLP export disabled: {e}");
            return None;
        }
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build(),
    )
}

/// An error and its causes on one line: `outer: cause: root cause`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
