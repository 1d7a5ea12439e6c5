//! Logs, traces and metrics: set-up at start, flush at exit, and every metric name.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Every metric the worker records, in one place so `/metrics` reads as documented.
/// [`names::ALL`] holds each with its kind and `# HELP` text; the admin server
/// describes them all and sets every series to 0 at start.
pub mod names {
    /// 1, labelled with the crate `version`.
    pub const BUILD_INFO: &str = "cxone_build_info";
    /// Jobs that reached their end, by `outcome` (succeeded, failed): one per job.
    pub const JOBS: &str = "cxone_jobs_total";
    /// Jobs dead-lettered, by `error_kind`.
    pub const JOBS_FAILED: &str = "cxone_jobs_failed_total";
    /// Deliveries sent to a retry queue (not an end: the job comes back).
    pub const RETRIES: &str = "cxone_job_retries_total";
    /// Deliveries handed back to the jobs queue, by `reason` (a pause cause, or `shutdown`).
    pub const HANDED_BACK: &str = "cxone_jobs_handed_back_total";
    /// Seconds from delivery to settlement, by `outcome` (succeeded, failed, retried, handed_back).
    pub const JOB_DURATION: &str = "cxone_job_duration_seconds";
    /// Jobs being processed now.
    pub const IN_FLIGHT: &str = "cxone_jobs_in_flight";
    /// Bytes of file content held by jobs now (bounded by MAX_INFLIGHT_BYTES).
    pub const IN_FLIGHT_BYTES: &str = "cxone_in_flight_bytes";
    /// Raw file bytes encoded.
    pub const BYTES_ENCODED: &str = "cxone_bytes_encoded_total";
    /// Execute calls made, by `answer` (2xx, 401, 403, 429, 4xx, 5xx, transport_error).
    pub const EXECUTE_CALLS: &str = "cxone_execute_calls_total";
    /// Execution attempts counted against `MAX_ATTEMPTS`.
    pub const ATTEMPTS: &str = "cxone_execute_attempts_total";
    /// Seconds from the first send of an execute call to its success, 429 waits included.
    pub const EXECUTE_DURATION: &str = "cxone_execute_duration_seconds";
    /// Chunks of large files executed.
    pub const CHUNKS: &str = "cxone_chunks_executed_total";
    /// Waits the API asked for, by `source` (429, inin_ratelimit, fleet: another replica's).
    pub const RATE_LIMITED: &str = "cxone_rate_limited_total";
    /// Requests to the token endpoint, by `result` (ok, refused, failed).
    pub const TOKEN_REQUESTS: &str = "cxone_token_requests_total";
    /// 1 while the worker is paused, by `reason`.
    pub const PAUSED: &str = "cxone_paused";
    /// 1 while connected to the broker and consuming.
    pub const CONSUMING: &str = "cxone_consuming";
    /// Broker sessions started (1 + reconnections).
    pub const BROKER_SESSIONS: &str = "cxone_broker_sessions_total";
    /// Publishes that were nacked, returned or timed out.
    pub const PUBLISH_FAILURES: &str = "cxone_publish_failures_total";
    /// Jobs handed back as fresh copies to spare their delivery limit or keep their progress.
    pub const REFRESHED: &str = "cxone_handed_back_fresh_total";
    /// Storage record writes, by `result` (ok, error).
    pub const STORAGE_WRITES: &str = "cxone_storage_writes_total";
    /// Worker state headers ignored because this worker did not write them for that body.
    pub const UNTRUSTED_STATE: &str = "cxone_untrusted_state_total";
    /// Messages ready in each queue of the topology, by `queue` (jobs, dlq, results, audit, retry).
    pub const QUEUE_MESSAGES: &str = "cxone_queue_messages_ready";
    /// Consumers of each queue of the topology, by `queue`.
    pub const QUEUE_CONSUMERS: &str = "cxone_queue_consumers";
    /// Replicas sharing the fleet-wide limits (this one included).
    pub const FLEET_MEMBERS: &str = "cxone_fleet_members";
    /// This replica's share of `RATE_LIMIT_PER_MINUTE`, calls per minute.
    pub const FLEET_RATE_SHARE: &str = "cxone_fleet_rate_share_per_minute";
    /// This replica's share of `MAX_CONCURRENT_CALLS` (0 = no limit).
    pub const FLEET_CONCURRENCY_SHARE: &str = "cxone_fleet_concurrency_share";
    /// API calls in flight now.
    pub const CALLS_IN_FLIGHT: &str = "cxone_execute_calls_in_flight";

    /// What kind of series a metric is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        Counter,
        Gauge,
        Histogram,
    }

    /// Every metric: name, kind and `# HELP` text.
    pub const ALL: &[(&str, Kind, &str)] = &[
        (
            BUILD_INFO,
            Kind::Gauge,
            "Build of the running worker; always 1.",
        ),
        (
            JOBS,
            Kind::Counter,
            "Jobs that reached their end, by outcome.",
        ),
        (
            JOBS_FAILED,
            Kind::Counter,
            "Jobs dead-lettered, by error kind.",
        ),
        (RETRIES, Kind::Counter, "Deliveries sent to a retry queue."),
        (
            HANDED_BACK,
            Kind::Counter,
            "Deliveries handed back to the jobs queue, by reason.",
        ),
        (
            JOB_DURATION,
            Kind::Histogram,
            "Seconds from delivery to settlement, by outcome.",
        ),
        (IN_FLIGHT, Kind::Gauge, "Jobs being processed now."),
        (
            IN_FLIGHT_BYTES,
            Kind::Gauge,
            "Bytes of file content held by jobs now.",
        ),
        (BYTES_ENCODED, Kind::Counter, "Raw file bytes encoded."),
        (
            EXECUTE_CALLS,
            Kind::Counter,
            "Execute calls made, by answer.",
        ),
        (
            ATTEMPTS,
            Kind::Counter,
            "Execution attempts counted against MAX_ATTEMPTS.",
        ),
        (
            EXECUTE_DURATION,
            Kind::Histogram,
            "Seconds from the first send of an execute call to its success.",
        ),
        (CHUNKS, Kind::Counter, "Chunks of large files executed."),
        (
            RATE_LIMITED,
            Kind::Counter,
            "Waits the API asked for, by source.",
        ),
        (
            TOKEN_REQUESTS,
            Kind::Counter,
            "Requests to the token endpoint, by result.",
        ),
        (
            PAUSED,
            Kind::Gauge,
            "1 while the worker is paused, by reason.",
        ),
        (
            CONSUMING,
            Kind::Gauge,
            "1 while connected to the broker and consuming.",
        ),
        (BROKER_SESSIONS, Kind::Counter, "Broker sessions started."),
        (
            PUBLISH_FAILURES,
            Kind::Counter,
            "Publishes nacked, returned or timed out.",
        ),
        (
            REFRESHED,
            Kind::Counter,
            "Jobs handed back as fresh copies.",
        ),
        (
            STORAGE_WRITES,
            Kind::Counter,
            "Storage record writes, by result.",
        ),
        (
            UNTRUSTED_STATE,
            Kind::Counter,
            "Worker state headers ignored as not written by this worker for that body.",
        ),
        (
            QUEUE_MESSAGES,
            Kind::Gauge,
            "Messages ready in each queue of the topology.",
        ),
        (
            QUEUE_CONSUMERS,
            Kind::Gauge,
            "Consumers of each queue of the topology.",
        ),
        (
            FLEET_MEMBERS,
            Kind::Gauge,
            "Replicas sharing the fleet-wide limits.",
        ),
        (
            FLEET_RATE_SHARE,
            Kind::Gauge,
            "This replica's share of RATE_LIMIT_PER_MINUTE.",
        ),
        (
            FLEET_CONCURRENCY_SHARE,
            Kind::Gauge,
            "This replica's share of MAX_CONCURRENT_CALLS.",
        ),
        (CALLS_IN_FLIGHT, Kind::Gauge, "API calls in flight now."),
    ];
}

/// Every label value each labelled metric takes, so that each series exists (at 0)
/// from the start: a rate over a series that appears with its first event reads
/// as nothing, and an alert on it cannot fire.
fn label_values(name: &str) -> Option<(&'static str, Vec<&'static str>)> {
    use crate::job::{ErrorKind, Systemic};
    let systemic = || Systemic::ALL.iter().map(|s| s.as_str());
    Some(match name {
        names::JOBS => ("outcome", vec!["succeeded", "failed"]),
        names::JOBS_FAILED => (
            "error_kind",
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect(),
        ),
        names::HANDED_BACK => ("reason", systemic().collect()),
        names::JOB_DURATION => (
            "outcome",
            vec!["succeeded", "failed", "retried", "handed_back"],
        ),
        names::EXECUTE_CALLS => (
            "answer",
            vec!["2xx", "401", "403", "429", "4xx", "5xx", "transport_error"],
        ),
        names::RATE_LIMITED => ("source", vec!["429", "inin_ratelimit", "fleet"]),
        names::TOKEN_REQUESTS => ("result", vec!["ok", "refused", "failed"]),
        names::PAUSED => (
            "reason",
            std::iter::once("starting").chain(systemic()).collect(),
        ),
        names::STORAGE_WRITES => ("result", vec!["ok", "error"]),
        names::QUEUE_MESSAGES | names::QUEUE_CONSUMERS => {
            ("queue", vec!["jobs", "dlq", "results", "audit", "retry"])
        }
        names::BUILD_INFO => ("version", vec![env!("CARGO_PKG_VERSION")]),
        _ => return None,
    })
}

/// Describes every metric (`# HELP`) and creates each of its series at 0, on the
/// recorder just installed; `cxone_build_info` is 1.
pub fn register_metrics() {
    for &(name, kind, help) in names::ALL {
        let series: Vec<Vec<(&'static str, &'static str)>> = match label_values(name) {
            Some((label, values)) => values.into_iter().map(|v| vec![(label, v)]).collect(),
            None => vec![vec![]],
        };
        for labels in series {
            let labels: Vec<metrics::Label> = labels
                .into_iter()
                .map(|(k, v)| metrics::Label::new(k, v))
                .collect();
            match kind {
                names::Kind::Counter => {
                    metrics::describe_counter!(name, help);
                    metrics::counter!(name, labels).increment(0);
                }
                names::Kind::Gauge => {
                    metrics::describe_gauge!(name, help);
                    let value = if name == names::BUILD_INFO { 1.0 } else { 0.0 };
                    metrics::gauge!(name, labels).set(value);
                }
                names::Kind::Histogram => {
                    metrics::describe_histogram!(name, metrics::Unit::Seconds, help);
                    // Registered without a sample: its buckets render at 0.
                    let _ = metrics::histogram!(name, labels);
                }
            }
        }
    }
}

/// A metric handle looked up once per call site, for the hot path: the registry's
/// lookup (hashing the name and labels) is most of what a metric costs there. The
/// name and labels must be constants, and the recorder installed before the first
/// call (`run` installs it first thing; a handle taken before is a no-op).
#[macro_export]
macro_rules! hot {
    (counter, $($key:tt)+) => {{
        static HANDLE: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
        HANDLE.get_or_init(|| metrics::counter!($($key)+))
    }};
    (gauge, $($key:tt)+) => {{
        static HANDLE: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();
        HANDLE.get_or_init(|| metrics::gauge!($($key)+))
    }};
    (histogram, $($key:tt)+) => {{
        static HANDLE: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
        HANDLE.get_or_init(|| metrics::histogram!($($key)+))
    }};
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

/// Installs the log subscriber (level from `RUST_LOG`, default `info`) and the
/// tracer. Trace context is always kept and propagated (W3C `traceparent`), so
/// jobs' messages and API calls carry it whether or not spans are exported; spans
/// leave the process over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
/// `OTEL_SERVICE_NAME` wins over `service`.
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    // lapin's I/O loop logs its own ERROR for every connection it loses or cannot
    // open, racing the worker's report of the same failure (with its kind and what to
    // do): by default only the worker's is kept. RUST_LOG brings it back.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin::io_loop=off"));
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
    let provider = tracer_provider(service);
    crate::trace::set_exporting(provider.is_some());
    // The tracer sees the worker's own spans whatever RUST_LOG says: a job's trace
    // context must travel on even when its log lines are filtered out.
    let otel = provider.as_ref().map(|p| {
        let spans = tracing_subscriber::filter::Targets::new()
            .with_target("cxone_worker", tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(spans)
    });
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    Telemetry { tracer: provider }
}

/// The tracer, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: spans sampled unless
/// the producer's trace says otherwise. Without it there are no spans to export,
/// and `crate::trace` keeps the context.
fn tracer_provider(service: &'static str) -> Option<SdkTracerProvider> {
    use opentelemetry_sdk::trace::Sampler;
    let exporter = otlp_exporter()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name(service);
    }
    Some(
        SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_batch_exporter(exporter)
            .build(),
    )
}

fn otlp_exporter() -> Option<opentelemetry_otlp::SpanExporter> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())?;
    match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => Some(exporter),
        Err(e) => {
            eprintln!("cxone-worker: OTLP export disabled: {e}");
            None
        }
    }
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
