//! One job from delivery to outcome: parse -> source -> encode -> execute -> sync.
//!
//! Nothing here knows AMQP: a delivery comes in as [`Incoming`], and a [`Report`]
//! goes out, saying what the job became. The broker glue turns that into publishes
//! and an ack; tests call [`Worker::process`] directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use crate::budget::ByteBudget;
use crate::config::{Settings, StoragePayload};
use crate::cxone::Client;
use crate::encode::{self, Encoded};
use crate::job::{self, ErrorKind, Failure, Job};
use crate::outcome::{Outcome, Report, Stage};
use crate::source::Sources;
use crate::storage::{Record, Storage};
use crate::telemetry::names;

/// Bodies above this are encoded on the blocking pool: a 10 MiB file takes ~10 ms
/// of CPU, too long to hold an async worker thread.
const INLINE_ENCODE_MAX: usize = 256 * 1024;

/// A delivery, as the job logic needs it.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    /// What earlier deliveries of this job left in its headers.
    pub carried: Carried,
}

/// A job's progress as earlier deliveries leave it for the next one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// Execution attempts made so far.
    pub attempts: u32,
    /// The execution already succeeded and only the storage write is left. Kept
    /// apart from the id because the API may answer success without one.
    pub executed: bool,
    pub execution_id: Option<String>,
    /// Storage writes that failed after the execution succeeded.
    pub sync_failures: u32,
}

/// Told about each stage a job reaches (for `AUDIT_EVENTS=all`).
pub trait StageSink: Send + Sync {
    fn reached(&self, report: &Report, stage: Stage);
}

/// A sink that ignores stages.
pub struct NoStages;

impl StageSink for NoStages {
    fn reached(&self, _: &Report, _: Stage) {}
}

/// What the worker needs besides the job.
pub struct WorkerConfig {
    pub allowed_types: Vec<String>,
    pub default_action: Option<String>,
    pub max_attempts: u32,
    pub retry_delays: Vec<Duration>,
}

impl WorkerConfig {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            allowed_types: s.files.allowed_types.clone(),
            default_action: s.api.default_action.clone(),
            max_attempts: s.max_attempts,
            retry_delays: s.retry_delays.clone(),
        }
    }

    /// Turns a failure into the job's outcome: retry below `MAX_ATTEMPTS`, else
    /// `exhausted`; permanent failures end at once; systemic ones hand the job back.
    pub fn decide(&self, report: &Report, failure: Failure) -> Outcome {
        let max = self.max_attempts;
        match failure {
            Failure::Permanent { kind, message } => Outcome::Failed {
                kind,
                error: message,
            },
            Failure::Systemic { cause, message } => Outcome::HandBack {
                cause,
                error: message,
            },
            Failure::Retryable { message } => {
                // A failed storage write after a successful execution counts its own
                // tries: the job is not executed again.
                let tries = if report.executed {
                    report.sync_failures
                } else {
                    report.attempts
                };
                if tries >= max {
                    Outcome::Failed {
                        kind: ErrorKind::Exhausted,
                        error: format!("{message} (after {tries} attempts)"),
                    }
                } else {
                    Outcome::Retry {
                        delay: self.delay_after(tries.max(1)),
                        error: message,
                    }
                }
            }
        }
    }

    /// The wait before attempt `attempts + 1`; the last delay repeats.
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) - 1) as usize;
        self.retry_delays[i.min(self.retry_delays.len() - 1)]
    }
}

/// The seed's summary figures, kept for the log line at shutdown.
#[derive(Default)]
pub struct Tally {
    pub executions: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub latency_ms: AtomicU64,
}

impl Tally {
    pub fn log(&self) {
        let executions = self.executions.load(Ordering::Relaxed);
        let succeeded = self.succeeded.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let ended = succeeded + failed;
        let average_latency_ms = self
            .latency_ms
            .load(Ordering::Relaxed)
            .checked_div(succeeded)
            .unwrap_or(0);
        let accuracy = if ended == 0 {
            1.0
        } else {
            succeeded as f64 / ended as f64
        };
        tracing::info!(
            total_executions = executions,
            successful_encodings = succeeded,
            failed_encodings = failed,
            average_latency_ms,
            conversion_accuracy_rate = format!("{:.4}", accuracy),
            "summary"
        );
    }
}

pub struct Worker {
    pub sources: Sources,
    pub client: Arc<Client>,
    pub storage: Option<Storage>,
    pub budget: ByteBudget,
    pub config: WorkerConfig,
    pub tally: Tally,
}

/// How far a job got before it failed; the failure and the report say the rest.
type Step<T> = Result<T, Failure>;

impl Worker {
    /// Processes one delivery of a job and says what it became. Never panics on bad
    /// input: every refusal is an outcome.
    pub async fn process(&self, incoming: &Incoming, sink: &dyn StageSink) -> Report {
        let started = Instant::now();
        let loose_id = job::loose_job_id(&incoming.body);
        let key = job::idempotency_key(
            loose_id.as_deref(),
            incoming.message_id.as_deref(),
            &incoming.body,
        );
        let mut report = Report::new(
            loose_id.unwrap_or_else(|| key.clone()),
            key,
            incoming.carried.attempts,
        );
        report.executed = incoming.carried.executed;
        report.execution_id = incoming.carried.execution_id.clone();
        report.sync_failures = incoming.carried.sync_failures;
        report.reach(Stage::Received);
        sink.reached(&report, Stage::Received);

        let span = tracing::info_span!("job", job_id = %report.job_id);
        let failure = match self
            .run(incoming, &mut report, sink)
            .instrument(span.clone())
            .await
        {
            Ok(()) => {
                report.outcome = Outcome::Succeeded;
                None
            }
            Err(f) => Some(f),
        };
        report.latency = started.elapsed();
        if let Some(failure) = failure {
            // A transient failure before the execute call (the file's store timing
            // out, say) counts as an attempt too, or it could be retried forever.
            let before_execution = report.attempts == incoming.carried.attempts && !report.executed;
            let retryable = matches!(failure, Failure::Retryable { .. });
            if before_execution && retryable {
                report.attempts += 1;
            }
            // Likewise after the execution: a record-only retry that fails before
            // the storage write (the file cannot be read again) counts as a storage
            // failure, or it could be retried for ever.
            let unsynced = report.executed
                && incoming.carried.executed
                && report.sync_failures == incoming.carried.sync_failures;
            if unsynced && retryable {
                report.sync_failures += 1;
            }
            report.outcome = self.config.decide(&report, failure);
        }
        self.count(&report);
        span.in_scope(|| log(&report));
        report
    }

    async fn run(
        &self,
        incoming: &Incoming,
        report: &mut Report,
        sink: &dyn StageSink,
    ) -> Step<()> {
        let job = Job::parse(&incoming.body)?;
        let action = job
            .data_action_id
            .clone()
            .or_else(|| self.config.default_action.clone())
            .ok_or_else(|| {
                Failure::permanent(
                    ErrorKind::InvalidJob,
                    "the job names no data_action_id and CXONE_DATA_ACTION_ID is not set",
                )
            })?;
        report.data_action_id = Some(action.clone());

        let executed = report.executed;
        let fetched = self
            .sources
            .fetch(&job.file, &self.budget)
            .await
            .map_err(|f| {
                if executed {
                    // Only the record is left to write, and it needs the file again:
                    // say that the action did run, or `file_not_found` would mislead.
                    f.context("the action already ran; writing its record needs the file: ")
                } else {
                    f
                }
            })?;
        let _reservation = fetched.reservation;
        let bytes = fetched.bytes;
        report.original_size = Some(bytes.len() as u64);
        let encoded = self.encode(&bytes, &job).await?;
        metrics::counter!(names::BYTES_ENCODED).increment(bytes.len() as u64);
        report.content_type = Some(encoded.content_type.clone());
        report.encoded_size = Some(encoded.encoded_size());
        report.sha256 = Some(encoded.sha256.clone());
        report.reach(Stage::Encoded);
        sink.reached(report, Stage::Encoded);
        let raw = self
            .storage
            .as_ref()
            .filter(|s| s.payload() == StoragePayload::Raw)
            .map(|_| bytes.clone());
        drop(bytes);

        if !report.executed {
            report.attempts += 1;
            metrics::counter!(names::ATTEMPTS).increment(1);
            self.tally.executions.fetch_add(1, Ordering::Relaxed);
            let executed = self
                .client
                .execute(&action, &report.key, encoded.body.clone())
                .await?;
            report.executed = true;
            report.execution_id = executed.execution_id;
            report.reach(Stage::Executed);
            sink.reached(report, Stage::Executed);
        }

        if let Some(storage) = &self.storage {
            let record = Record {
                request_id: &report.key,
                job_id: &report.job_id,
                execution_id: report.execution_id.as_deref(),
                data_action_id: &action,
                content_type: &encoded.content_type,
                sha256: &encoded.sha256,
                original_size: encoded.original_size,
                metadata: job.metadata.as_ref(),
                base64: encoded.base64(),
                raw,
            };
            if let Err(e) = storage.write(&record).await {
                report.sync_failures += 1;
                return Err(Failure::retryable(e.to_string()));
            }
            report.storage_uri = Some(storage.uri(&report.job_id));
            report.reach(Stage::Synced);
            sink.reached(report, Stage::Synced);
        }
        Ok(())
    }

    async fn encode(&self, bytes: &Bytes, job: &Job) -> Step<Encoded> {
        let allowed = &self.config.allowed_types;
        if bytes.len() <= INLINE_ENCODE_MAX {
            return encode::encode(
                bytes,
                job.content_type.as_deref(),
                allowed,
                job.metadata.as_ref(),
            );
        }
        let (bytes, declared, allowed, metadata) = (
            bytes.clone(),
            job.content_type.clone(),
            allowed.clone(),
            job.metadata.clone(),
        );
        tokio::task::spawn_blocking(move || {
            encode::encode(&bytes, declared.as_deref(), &allowed, metadata.as_ref())
        })
        .await
        .unwrap_or_else(|e| Err(Failure::retryable(format!("encoding task failed: {e}"))))
    }

    fn count(&self, report: &Report) {
        match &report.outcome {
            Outcome::Succeeded => {
                self.tally.succeeded.fetch_add(1, Ordering::Relaxed);
                self.tally
                    .latency_ms
                    .fetch_add(report.latency.as_millis() as u64, Ordering::Relaxed);
                metrics::counter!(names::JOBS, "outcome" => "succeeded").increment(1);
            }
            Outcome::Failed { kind, .. } => {
                self.tally.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::JOBS, "outcome" => "failed").increment(1);
                metrics::counter!(names::JOBS_FAILED, "error_kind" => kind.as_str()).increment(1);
            }
            Outcome::Retry { .. } => metrics::counter!(names::RETRIES).increment(1),
            Outcome::HandBack { cause, .. } => {
                metrics::counter!(names::HANDED_BACK, "reason" => cause.as_str()).increment(1)
            }
        }
    }
}

fn log(report: &Report) {
    let attempts = report.attempts;
    let latency_ms = report.latency.as_millis() as u64;
    match &report.outcome {
        Outcome::Succeeded => tracing::info!(
            execution_id = report.execution_id.as_deref().unwrap_or(""),
            attempts,
            latency_ms,
            "job succeeded"
        ),
        Outcome::Retry { delay, error } => {
            tracing::warn!(error = %error, attempts, retry_in = ?delay, "attempt failed; job will be retried")
        }
        Outcome::Failed { kind, error } => {
            tracing::warn!(error_kind = kind.as_str(), error = %error, attempts, "job failed")
        }
        Outcome::HandBack { cause, error } => {
            tracing::warn!(cause = cause.as_str(), error = %error, "job handed back")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Systemic;

    fn config(max_attempts: u32) -> WorkerConfig {
        WorkerConfig {
            allowed_types: vec![],
            default_action: None,
            max_attempts,
            retry_delays: vec![Duration::from_secs(5), Duration::from_secs(30)],
        }
    }

    fn report(attempts: u32, execution_id: Option<&str>, sync_failures: u32) -> Report {
        let mut r = Report::new("j".into(), "j".into(), attempts);
        r.executed = execution_id.is_some();
        r.execution_id = execution_id.map(str::to_owned);
        r.sync_failures = sync_failures;
        r
    }

    #[test]
    fn the_last_delay_repeats() {
        let config = config(9);
        let secs: Vec<u64> = (1..=4).map(|a| config.delay_after(a).as_secs()).collect();
        assert_eq!(secs, [5, 30, 30, 30]);
    }

    #[test]
    fn retryable_failures_retry_until_max_attempts_then_exhaust() {
        let c = config(3);
        let retry = |attempts| c.decide(&report(attempts, None, 0), Failure::retryable("503"));
        assert_eq!(
            retry(1),
            Outcome::Retry {
                delay: Duration::from_secs(5),
                error: "503".into()
            }
        );
        assert_eq!(
            retry(2),
            Outcome::Retry {
                delay: Duration::from_secs(30),
                error: "503".into()
            }
        );
        assert!(
            matches!(retry(3), Outcome::Failed { kind: ErrorKind::Exhausted, error } if error.contains("after 3 attempts"))
        );
    }

    #[test]
    fn storage_failures_count_their_own_tries() {
        let c = config(3);
        // Executed once, storage failed twice: retried without a new execution.
        let r = c.decide(
            &report(1, Some("exec-1"), 2),
            Failure::retryable("storage down"),
        );
        assert!(matches!(r, Outcome::Retry { .. }), "{r:?}");
        let r = c.decide(
            &report(1, Some("exec-1"), 3),
            Failure::retryable("storage down"),
        );
        assert!(
            matches!(
                r,
                Outcome::Failed {
                    kind: ErrorKind::Exhausted,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn permanent_and_systemic_failures_ignore_the_count() {
        let c = config(3);
        let r = c.decide(
            &report(0, None, 0),
            Failure::permanent(ErrorKind::Forbidden, "403"),
        );
        assert_eq!(
            r,
            Outcome::Failed {
                kind: ErrorKind::Forbidden,
                error: "403".into()
            }
        );
        let r = c.decide(
            &report(9, None, 0),
            Failure::systemic(Systemic::CredentialsRefused, "401"),
        );
        assert_eq!(
            r,
            Outcome::HandBack {
                cause: Systemic::CredentialsRefused,
                error: "401".into()
            }
        );
    }
}
