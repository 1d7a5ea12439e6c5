//! One job from delivery to outcome: parse -> source -> encode -> execute -> sync.
//!
//! Nothing here knows AMQP: a delivery comes in as [`Incoming`], and a [`Report`]
//! goes out, saying what the job became and the state its copies carry on. The
//! broker glue turns that into publishes and an ack; tests call
//! [`Worker::process`] directly.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the steps of one delivery |
//! | `chunked.rs` | a file larger than one request may carry, sent in chunks |
//! | `settle.rs` | where a delivery stopped -> the job's counts and outcome; the summary |

mod chunked;
mod settle;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::time::Instant;

use crate::admin::Paused;
use crate::budget::ByteBudget;
use crate::config::StoragePayload;
use crate::cxone::{Client, Executed};
use crate::encode::{self, Encoded};
use crate::job::{self, ErrorKind, Failure, Job, Systemic};
use crate::outcome::{Outcome, Report, Stage};
use crate::source::Sources;
use crate::state::JobState;
use crate::storage::{Record, Storage, StorageError, StorageErrorKind, StoreError};
use crate::telemetry::names;

use chunked::Opened;
pub use settle::{Step, Tally, WorkerConfig};

/// Bodies above this are encoded on the blocking pool: a 10 MiB file takes ~10 ms
/// of CPU, too long to hold an async worker thread.
const INLINE_ENCODE_MAX: usize = 256 * 1024;

/// A delivery, as the job logic needs it.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    /// What earlier deliveries left: trusted state only (see `state`), else the
    /// default of a new job.
    pub state: JobState,
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

/// Everything one job needs; shared by every job task of the process.
pub struct Worker {
    /// Reads the file a job names, within `FILE_ROOTS` and the allowlists.
    pub sources: Sources,
    /// The API: one token, the shared pacing and limits.
    pub client: Arc<Client>,
    /// Where records of succeeded jobs go; `None` without `EXTERNAL_STORAGE_ENDPOINT`.
    pub storage: Option<Storage>,
    /// File bytes all jobs hold at once.
    pub budget: ByteBudget,
    pub config: WorkerConfig,
    /// The shutdown summary's figures.
    pub tally: Tally,
}

/// A step's failure, and where it happened.
type Stopped = (Step, Failure);

/// What the storage record carries of the file.
enum Payload<'a> {
    /// The file was read whole: its base64 (a slice of the request body) and, for
    /// `STORAGE_PAYLOAD=raw`, its bytes.
    Whole { base64: Bytes, raw: Option<Bytes> },
    /// A chunked job's: the file read again piece by piece.
    Pieces {
        total: u64,
        pieces: futures_util::stream::BoxStream<'a, Result<Bytes, Failure>>,
    },
}

fn at(step: Step) -> impl FnOnce(Failure) -> Stopped {
    move |failure| (step, failure)
}

impl Worker {
    /// Processes one delivery of a job and says what it became. Never panics on bad
    /// input: every refusal is an outcome.
    pub async fn process(&self, incoming: &Incoming, sink: &dyn StageSink) -> Report {
        let started = Instant::now();
        // A body over the limit is not even parsed for its id: parsing is what costs.
        let small = incoming.body.len() <= self.config.max_job_bytes;
        let loose_id = small.then(|| job::loose_job_id(&incoming.body)).flatten();
        let key = job::idempotency_key(
            loose_id.as_deref(),
            incoming.message_id.as_deref(),
            &incoming.body,
        );
        let job_id = loose_id.unwrap_or_else(|| key.clone());
        let mut report = Report::new(job_id, key, incoming.state.clone());
        report.reach(Stage::Received);
        sink.reached(&report, Stage::Received);

        // The span the caller runs the job in (the broker's delivery span) takes
        // the job's fields; its log lines carry them.
        tracing::Span::current().record("job_id", report.job_id.as_str());
        let ran = self.run(incoming, &mut report, sink).await;
        if report.file.is_none() && small {
            report.file = job::loose_file(&incoming.body);
        }
        report.latency = started.elapsed();
        report.outcome = match ran {
            Ok(()) => Outcome::Succeeded,
            Err((step, failure)) => self.config.settle(&mut report, step, failure),
        };
        self.count(&report);
        log(&report);
        report
    }

    /// Whether the cause of a pause has cleared: the storage endpoint for a storage
    /// pause, else the token endpoint (which tells both whether the API answers and
    /// whether it takes the credentials).
    pub async fn probe(&self, cause: Paused) -> Result<(), Failure> {
        match (cause, &self.storage) {
            (Paused::Because(c), Some(storage)) if c.is_storage() => {
                storage.probe().await.map_err(storage_failure)
            }
            _ => self.client.probe().await,
        }
    }

    async fn run(
        &self,
        incoming: &Incoming,
        report: &mut Report,
        sink: &dyn StageSink,
    ) -> Result<(), Stopped> {
        let (job, action) = self.parse(incoming, report).map_err(at(Step::Prepare))?;
        let fetched = if self.config.request.max_request_bytes == 0 {
            self.sources
                .fetch(&job.file, &self.budget)
                .await
                .map_err(|f| self.refetch_context(report, f))
                .map_err(at(Step::Prepare))?
        } else {
            // A cap on requests: the size decides between one request and chunks.
            // Boxed: their state would otherwise make every job's future (moved
            // into its task at each delivery) several kilobytes larger.
            match Box::pin(self.open_for_chunks(report, &job)).await? {
                Opened::Whole(fetched) => fetched,
                Opened::Chunks(pieces, plan) => {
                    let chunks = self.run_chunks(report, &job, &action, *pieces, plan, sink);
                    return Box::pin(chunks).await;
                }
            }
        };
        let _reservation = fetched.reservation;
        let bytes = fetched.bytes;
        report.original_size = Some(bytes.len() as u64);
        let encoded = self.encode(&bytes, &job).await.map_err(at(Step::Prepare))?;
        crate::hot!(counter, names::BYTES_ENCODED).increment(bytes.len() as u64);
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

        if !report.state.executed {
            let executed = self
                .execute(&action, &report.key, encoded.body.clone())
                .await
                .map_err(at(Step::Execute))?;
            report.take_output(executed.output);
            report.state.step_done(executed.execution_id, None);
            report.reach(Stage::Executed);
            sink.reached(report, Stage::Executed);
        }
        let payload = Payload::Whole {
            base64: encoded.base64(),
            raw,
        };
        self.store(report, &job, &action, payload).await?;
        if self.storage.is_some() {
            sink.reached(report, Stage::Synced);
        }
        Ok(())
    }

    /// One execute call of the current step, counted.
    async fn execute(&self, action: &str, key: &str, body: Bytes) -> Result<Executed, Failure> {
        crate::hot!(counter, names::ATTEMPTS).increment(1);
        self.client.execute(action, key, body).await
    }

    /// A file that cannot be read again for a job whose action already ran: say so,
    /// or `file_not_found` would mislead.
    fn refetch_context(&self, report: &Report, failure: Failure) -> Failure {
        if report.state.executed {
            failure.context("the action already ran; writing its record needs the file: ")
        } else {
            failure
        }
    }

    /// The job and the data action it runs.
    fn parse(&self, incoming: &Incoming, report: &mut Report) -> Result<(Job, String), Failure> {
        let (size, max) = (incoming.body.len(), self.config.max_job_bytes);
        if size > max {
            return Err(Failure::permanent(
                ErrorKind::InvalidJob,
                format!("the job message has {size} bytes, more than MAX_JOB_BYTES ({max})"),
            ));
        }
        let job = Job::parse(&incoming.body)?;
        let shown = job::shown_file(&job.file);
        tracing::Span::current().record("file", shown.as_str());
        report.file = Some(shown);
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
        Ok((job, action))
    }

    /// Writes the storage record, when storage is configured.
    async fn store(
        &self,
        report: &mut Report,
        job: &Job,
        action: &str,
        payload: Payload<'_>,
    ) -> Result<(), Stopped> {
        let Some(storage) = &self.storage else {
            return Ok(());
        };
        let written = {
            let (base64, raw) = match &payload {
                Payload::Whole { base64, raw } => (base64.clone(), raw.clone()),
                Payload::Pieces { .. } => (Bytes::new(), None),
            };
            let record = Record {
                request_id: &report.key,
                job_id: &report.job_id,
                execution_id: report.state.execution_id.as_deref(),
                data_action_id: action,
                content_type: report.content_type.as_deref().unwrap_or_default(),
                sha256: report.sha256.as_deref().unwrap_or_default(),
                original_size: report.original_size.unwrap_or_default(),
                metadata: job.metadata.as_ref(),
                file: report.file.as_deref(),
                base64,
                raw,
            };
            match payload {
                Payload::Whole { .. } => storage.write(&record).await.map_err(StoreError::from),
                Payload::Pieces { total, pieces } => {
                    storage.write_streamed(&record, total, pieces).await
                }
            }
        };
        if let Err(e) = written {
            return Err(match e {
                StoreError::Storage(e) => (Step::Store, storage_failure(e)),
                // Reading the file again for its record: as any other failure of
                // the file, after the action ran.
                StoreError::Source(f) => (Step::Prepare, self.refetch_context(report, f)),
            });
        }
        report.storage_uri = Some(storage.uri(&report.job_id));
        report.reach(Stage::Synced);
        Ok(())
    }

    async fn encode(&self, bytes: &Bytes, job: &Job) -> Result<Encoded, Failure> {
        let allowed = &self.config.allowed_types;
        let format = &self.client.profile().body;
        let encoded = if bytes.len() <= INLINE_ENCODE_MAX {
            encode::encode(
                bytes,
                job.content_type.as_deref(),
                allowed,
                job.metadata.as_ref(),
                format,
            )
        } else {
            let (bytes, declared, allowed, metadata, format) = (
                bytes.clone(),
                job.content_type.clone(),
                allowed.clone(),
                job.metadata.clone(),
                format.clone(),
            );
            tokio::task::spawn_blocking(move || {
                encode::encode(
                    &bytes,
                    declared.as_deref(),
                    &allowed,
                    metadata.as_ref(),
                    &format,
                )
            })
            .await
            .unwrap_or_else(|e| Err(Failure::retryable(format!("encoding task failed: {e}"))))
        };
        let counter = match &encoded {
            Ok(_) => &self.tally.encoded,
            Err(Failure::Permanent { .. }) => &self.tally.encode_failed,
            Err(_) => return encoded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        encoded
    }

    fn count(&self, report: &Report) {
        match &report.outcome {
            Outcome::Succeeded => {
                self.tally.succeeded.fetch_add(1, Ordering::Relaxed);
                self.tally
                    .latency_ms
                    .fetch_add(report.latency.as_millis() as u64, Ordering::Relaxed);
                crate::hot!(counter, names::JOBS, "outcome" => "succeeded").increment(1);
            }
            Outcome::Failed { kind, .. } => {
                metrics::counter!(names::JOBS, "outcome" => "failed").increment(1);
                metrics::counter!(names::JOBS_FAILED, "error_kind" => kind.as_str()).increment(1);
            }
            Outcome::Retry { .. } => crate::hot!(counter, names::RETRIES).increment(1),
            Outcome::HandBack { cause, .. } => {
                metrics::counter!(names::HANDED_BACK, "reason" => cause.as_str()).increment(1)
            }
        }
    }
}

/// A storage error, sorted by the decision it drives: the deployment's problem
/// pauses the worker (the job, whose action ran, is handed back with that mark),
/// anything else is a retry of the record's write.
fn storage_failure(e: StorageError) -> Failure {
    let message = e.to_string();
    match e.kind() {
        StorageErrorKind::Refused => Failure::systemic(Systemic::StorageRefused, message),
        StorageErrorKind::Unavailable => Failure::systemic(Systemic::StorageUnavailable, message),
        StorageErrorKind::Failed => Failure::retryable(message),
    }
}

fn log(report: &Report) {
    let attempts = report.state.attempts;
    let latency_ms = report.latency.as_millis() as u64;
    match &report.outcome {
        Outcome::Succeeded => tracing::info!(
            execution_id = report.state.execution_id.as_deref().unwrap_or(""),
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
