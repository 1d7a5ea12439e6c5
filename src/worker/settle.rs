//! How a delivery's end becomes the job's outcome: the one place that charges
//! attempts and storage failures to the job's state, and the retry decision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::Settings;
use crate::job::{ErrorKind, Failure};
use crate::outcome::{Outcome, Report};

/// Where a delivery stopped when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Before any call: the body, the file, its type.
    Prepare,
    /// An execute call (of the whole file, or of a chunk) failed.
    Execute,
    /// Every call done; writing the storage record failed.
    Store,
}

/// What the worker needs besides the job.
pub struct WorkerConfig {
    pub allowed_types: Vec<String>,
    pub default_action: Option<String>,
    pub max_attempts: u32,
    pub retry_delays: Vec<Duration>,
    /// Job bodies larger than this are refused before they are parsed.
    pub max_job_bytes: usize,
    /// `MAX_REQUEST_BYTES` and `CHUNKING`.
    pub request: crate::encode::chunks::Limits,
}

impl WorkerConfig {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            allowed_types: s.files.allowed_types.clone(),
            default_action: s.api.default_action.clone(),
            max_attempts: s.max_attempts,
            retry_delays: s.retry_delays.clone(),
            max_job_bytes: s.max_job_bytes,
            request: crate::encode::chunks::Limits {
                max_request_bytes: s.api.max_request_bytes,
                chunking: s.api.chunking,
            },
        }
    }

    /// Charges a failed delivery to the job's state and decides what becomes of it.
    /// Successful calls were recorded as they happened (`JobState::step_done`);
    /// this charges the failure, once:
    /// - a failed call is an attempt of its step;
    /// - a retryable failure before any call is one too, or a file whose store
    ///   keeps timing out would be retried for ever;
    /// - once the action ran, a retryable failure (the record's write, or reading
    ///   the file again for it) is a storage failure, counted on its own: the
    ///   action is never run again for it.
    pub fn settle(&self, report: &mut Report, stopped: Step, failure: Failure) -> Outcome {
        let retryable = matches!(failure, Failure::Retryable { .. });
        let state = &mut report.state;
        match stopped {
            _ if matches!(failure, Failure::Systemic { .. }) => {}
            Step::Execute => state.charge_attempt(),
            _ if !retryable => {}
            _ if state.executed => state.sync_failures = state.sync_failures.saturating_add(1),
            Step::Prepare | Step::Store => state.charge_attempt(),
        }
        self.decide(report, failure)
    }

    /// Retry below `MAX_ATTEMPTS`, else `exhausted`; permanent failures end at once;
    /// systemic ones hand the job back.
    pub fn decide(&self, report: &Report, failure: Failure) -> Outcome {
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
                let state = &report.state;
                let tries = if state.executed {
                    state.sync_failures
                } else {
                    state.step_attempts
                };
                if tries >= self.max_attempts {
                    let what = if state.executed {
                        "storage writes"
                    } else if state.chunks.is_empty() {
                        "attempts"
                    } else {
                        "attempts of this chunk"
                    };
                    Outcome::Failed {
                        kind: ErrorKind::Exhausted,
                        error: format!("{message} (after {tries} {what})"),
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

/// The seed's five summary figures, logged at shutdown, each counting what its name
/// says.
#[derive(Default)]
pub struct Tally {
    /// Files encoded into a request body, and files whose type or size refused it.
    pub encoded: AtomicU64,
    pub encode_failed: AtomicU64,
    /// Jobs that succeeded, and the sum of their latencies.
    pub succeeded: AtomicU64,
    pub latency_ms: AtomicU64,
}

impl Tally {
    /// `executions` is the number of execute requests sent to the API.
    pub fn log(&self, executions: u64) {
        let encoded = self.encoded.load(Ordering::Relaxed);
        let failed = self.encode_failed.load(Ordering::Relaxed);
        let succeeded = self.succeeded.load(Ordering::Relaxed);
        // No rate out of nothing: a run that encoded (or completed) nothing says so.
        let accuracy = (encoded + failed > 0)
            .then(|| format!("{:.4}", encoded as f64 / (encoded + failed) as f64));
        let average_latency_ms = self
            .latency_ms
            .load(Ordering::Relaxed)
            .checked_div(succeeded);
        tracing::info!(
            total_executions = executions,
            successful_encodings = encoded,
            failed_encodings = failed,
            average_latency_ms,
            conversion_accuracy_rate = accuracy,
            "summary"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Systemic;
    use crate::state::JobState;

    fn config(max_attempts: u32) -> WorkerConfig {
        WorkerConfig {
            allowed_types: vec![],
            default_action: None,
            max_attempts,
            retry_delays: vec![Duration::from_secs(5), Duration::from_secs(30)],
            max_job_bytes: 1 << 20,
            request: crate::encode::chunks::Limits {
                max_request_bytes: 0,
                chunking: true,
            },
        }
    }

    fn report(step_attempts: u32, executed: bool, sync_failures: u32) -> Report {
        let state = JobState {
            attempts: step_attempts,
            step_attempts,
            executed,
            sync_failures,
            ..JobState::default()
        };
        Report::new("j".into(), "j".into(), state)
    }

    #[test]
    fn the_last_delay_repeats() {
        let config = config(9);
        let secs: Vec<u64> = (1..=4).map(|a| config.delay_after(a).as_secs()).collect();
        assert_eq!(secs, [5, 30, 30, 30]);
    }

    #[test]
    fn a_failed_call_counts_once_and_retries_until_max_attempts() {
        let c = config(3);
        let mut r = report(0, false, 0);
        let first = c.settle(&mut r, Step::Execute, Failure::retryable("503"));
        assert_eq!(
            first,
            Outcome::Retry {
                delay: Duration::from_secs(5),
                error: "503".into()
            }
        );
        assert_eq!((r.state.attempts, r.state.step_attempts), (1, 1));
        c.settle(&mut r, Step::Execute, Failure::retryable("503"));
        let last = c.settle(&mut r, Step::Execute, Failure::retryable("503"));
        assert!(
            matches!(&last, Outcome::Failed { kind: ErrorKind::Exhausted, error } if error.contains("after 3 attempts")),
            "{last:?}"
        );
    }

    #[test]
    fn a_transient_failure_before_the_call_is_an_attempt_too() {
        let c = config(2);
        let mut r = report(0, false, 0);
        c.settle(&mut r, Step::Prepare, Failure::retryable("s3 timed out"));
        assert_eq!(r.state.step_attempts, 1);
        let permanent = Failure::permanent(ErrorKind::FileNotFound, "gone");
        let mut r = report(0, false, 0);
        c.settle(&mut r, Step::Prepare, permanent);
        assert_eq!(r.state.step_attempts, 0, "nothing was attempted");
    }

    #[test]
    fn after_the_execution_only_storage_failures_count() {
        let c = config(3);
        let mut r = report(1, true, 2);
        let o = c.settle(&mut r, Step::Store, Failure::retryable("storage down"));
        assert!(
            matches!(&o, Outcome::Failed { kind: ErrorKind::Exhausted, error } if error.contains("3 storage writes")),
            "{o:?}"
        );
        assert_eq!(r.state.step_attempts, 1, "no new execution attempt");
        // A record-only retry that cannot even read the file again is a storage failure.
        let mut r = report(1, true, 0);
        c.settle(&mut r, Step::Prepare, Failure::retryable("file vanished"));
        assert_eq!((r.state.sync_failures, r.state.step_attempts), (1, 1));
    }

    #[test]
    fn permanent_and_systemic_failures_ignore_the_count() {
        let c = config(3);
        let mut r = report(0, false, 0);
        let o = c.settle(
            &mut r,
            Step::Execute,
            Failure::permanent(ErrorKind::Forbidden, "403"),
        );
        assert_eq!(
            o,
            Outcome::Failed {
                kind: ErrorKind::Forbidden,
                error: "403".into()
            }
        );
        assert_eq!(r.state.attempts, 1, "the call that got the 403 is counted");
        let mut r = report(9, false, 0);
        let o = c.settle(
            &mut r,
            Step::Execute,
            Failure::systemic(Systemic::CredentialsRefused, "401"),
        );
        assert_eq!(
            o,
            Outcome::HandBack {
                cause: Systemic::CredentialsRefused,
                error: "401".into()
            }
        );
        assert_eq!(r.state.step_attempts, 9, "not the job's fault: not charged");
    }
}
