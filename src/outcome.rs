//! What a job became, and the contract's messages that say so: the result on
//! `P.results` and the audit events on `P.audit`.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::job::{ErrorKind, Systemic};
use crate::state::JobState;
use crate::text::{now, rfc3339};

/// The stages a job passes, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Received,
    Encoded,
    Executed,
    Synced,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Received => "received",
            Stage::Encoded => "encoded",
            Stage::Executed => "executed",
            Stage::Synced => "synced",
        }
    }
}

/// How one delivery of a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    /// A retryable failure below `MAX_ATTEMPTS`: wait `delay`, then try again.
    Retry {
        delay: Duration,
        error: String,
    },
    /// Failed for good: dead-lettered.
    Failed {
        kind: ErrorKind,
        error: String,
    },
    /// Not the job's fault: back to the queue, and the worker pauses.
    HandBack {
        cause: Systemic,
        error: String,
    },
}

/// Everything known about a job when its delivery ends; the messages are built from it.
#[derive(Debug, Clone)]
pub struct Report {
    /// The job's `job_id`, or its idempotency key when it has none.
    pub job_id: String,
    /// The `Idempotency-Key`; also the `request_id` of audit events and records.
    pub key: String,
    /// The job's file reference as outputs show it (no credentials), once known.
    pub file: Option<String>,
    pub data_action_id: Option<String>,
    pub content_type: Option<String>,
    pub original_size: Option<u64>,
    pub encoded_size: Option<u64>,
    pub sha256: Option<String>,
    /// The job's state: what earlier deliveries left, and this one's progress once
    /// it ends. Copies of the job carry it on.
    pub state: JobState,
    /// The chunks the state held when the delivery began, and whether the action
    /// had run: a hand-back after more progress than that must keep it.
    pub progress_at_start: (usize, bool),
    pub storage_uri: Option<String>,
    /// The API's answer to the (last) execution, JSON of at most 64 KiB; `None`
    /// when it sent none, when it was longer (`output_truncated`), or when the
    /// execution happened in an earlier delivery.
    pub output: Option<Value>,
    pub output_truncated: bool,
    pub stages: Vec<(Stage, OffsetDateTime)>,
    pub latency: Duration,
    pub outcome: Outcome,
}

impl Report {
    pub fn new(job_id: String, key: String, state: JobState) -> Self {
        Self {
            job_id,
            key,
            file: None,
            data_action_id: None,
            content_type: None,
            original_size: None,
            encoded_size: None,
            sha256: None,
            progress_at_start: (state.chunks.len(), state.executed),
            state,
            storage_uri: None,
            output: None,
            output_truncated: false,
            stages: Vec::with_capacity(4),
            latency: Duration::ZERO,
            outcome: Outcome::Succeeded,
        }
    }

    /// This delivery moved the job on (the action ran, or chunks went out) and a
    /// copy must say so, or the next delivery would send them again.
    pub fn progressed(&self) -> bool {
        (self.state.chunks.len(), self.state.executed) != self.progress_at_start
    }

    /// Keeps the API's answer of the execution that just succeeded.
    pub fn take_output(&mut self, output: crate::cxone::Output) {
        (self.output, self.output_truncated) = match output {
            crate::cxone::Output::Json(value) => (Some(value), false),
            crate::cxone::Output::Truncated => (None, true),
            crate::cxone::Output::None => (None, false),
        };
    }

    pub fn reach(&mut self, stage: Stage) {
        self.stages.push((stage, now()));
    }

    fn latency_ms(&self) -> u64 {
        self.latency.as_millis() as u64
    }

    /// The result message, or `None` for an outcome that is not the job's end.
    pub fn result(&self) -> Option<Value> {
        // A struct of references always serializes.
        self.result_doc()
            .map(|doc| serde_json::to_value(doc).expect("result json"))
    }

    /// The result as it is published: serialized straight from the report, without
    /// a `Value` in between (that map cost more than the rest of the result).
    pub fn result_json(&self) -> Option<Vec<u8>> {
        self.result_doc()
            .map(|doc| serde_json::to_vec(&doc).expect("result json"))
    }

    fn result_doc(&self) -> Option<ResultDoc<'_>> {
        let chunks = &self.state.chunks;
        match &self.outcome {
            Outcome::Succeeded => Some(ResultDoc::Succeeded(Succeeded {
                job_id: &self.job_id,
                status: "succeeded",
                data_action_id: self.data_action_id.as_deref(),
                execution_id: self.state.execution_id.as_deref(),
                content_type: self.content_type.as_deref(),
                original_size: self.original_size,
                encoded_size: self.encoded_size,
                sha256: self.sha256.as_deref(),
                attempts: self.state.attempts,
                latency_ms: self.latency_ms(),
                storage_uri: self.storage_uri.as_deref(),
                file: self.file.as_deref(),
                completed_at: rfc3339(now()),
                output: self.output.as_ref(),
                output_truncated: (self.output.is_none() && self.output_truncated).then_some(true),
                chunk_count: (!chunks.is_empty()).then_some(chunks.len()),
                chunks: (!chunks.is_empty()).then(|| {
                    chunks
                        .iter()
                        .enumerate()
                        .map(|(index, id)| ChunkDoc {
                            index,
                            execution_id: id.as_deref(),
                        })
                        .collect()
                }),
            })),
            Outcome::Failed { kind, error } => Some(ResultDoc::Failed(FailedDoc {
                job_id: &self.job_id,
                status: "failed",
                error_kind: kind.as_str(),
                error,
                attempts: self.state.attempts,
                file: self.file.as_deref(),
                failed_at: rfc3339(now()),
            })),
            Outcome::Retry { .. } | Outcome::HandBack { .. } => None,
        }
    }

    /// The terminal audit event of this delivery, if it has one.
    pub fn terminal_event(&self) -> Option<AuditEvent<'_>> {
        let event = match self.outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Retry { .. } => "retry_scheduled",
            Outcome::Failed { .. } => "failed",
            Outcome::HandBack { .. } => return None,
        };
        Some(self.event(event))
    }

    /// An audit event named `event` with what the report knows now.
    pub fn event(&self, event: &'static str) -> AuditEvent<'_> {
        let (error_kind, error) = match &self.outcome {
            Outcome::Failed { kind, error } => (Some(kind.as_str()), Some(error.as_str())),
            Outcome::Retry { error, .. } => (None, Some(error.as_str())),
            _ => (None, None),
        };
        AuditEvent {
            event,
            timestamp: rfc3339(now()),
            job_id: &self.job_id,
            request_id: &self.key,
            data_action_id: self.data_action_id.as_deref(),
            content_type: self.content_type.as_deref(),
            original_size: self.original_size,
            encoded_size: self.encoded_size,
            status: event,
            execution_id: self.state.execution_id.as_deref(),
            attempt: self.state.attempts,
            file: self.file.as_deref(),
            latency_ms: self.latency_ms(),
            error_kind,
            error,
            stages: self
                .stages
                .iter()
                .map(|(s, t)| (s.as_str(), rfc3339(*t)))
                .collect(),
        }
    }
}

/// A result as the contract shapes it.
#[derive(Serialize)]
#[serde(untagged)]
enum ResultDoc<'a> {
    Succeeded(Succeeded<'a>),
    Failed(FailedDoc<'a>),
}

/// `job.succeeded`: the contract's fields, the API's `output` (or
/// `output_truncated`), and the chunks of a chunked job.
#[derive(Serialize)]
struct Succeeded<'a> {
    job_id: &'a str,
    status: &'static str,
    data_action_id: Option<&'a str>,
    execution_id: Option<&'a str>,
    content_type: Option<&'a str>,
    original_size: Option<u64>,
    encoded_size: Option<u64>,
    sha256: Option<&'a str>,
    attempts: u32,
    latency_ms: u64,
    storage_uri: Option<&'a str>,
    file: Option<&'a str>,
    completed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunks: Option<Vec<ChunkDoc<'a>>>,
}

#[derive(Serialize)]
struct ChunkDoc<'a> {
    index: usize,
    execution_id: Option<&'a str>,
}

#[derive(Serialize)]
struct FailedDoc<'a> {
    job_id: &'a str,
    status: &'static str,
    error_kind: &'static str,
    error: &'a str,
    attempts: u32,
    file: Option<&'a str>,
    failed_at: String,
}

/// An audit event as the contract shapes it. It never holds payload bytes, tokens
/// or secrets: only sizes, types, ids and times.
#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    pub event: &'static str,
    pub timestamp: String,
    pub job_id: &'a str,
    pub request_id: &'a str,
    pub data_action_id: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub original_size: Option<u64>,
    pub encoded_size: Option<u64>,
    pub status: &'static str,
    pub execution_id: Option<&'a str>,
    pub attempt: u32,
    pub file: Option<&'a str>,
    pub latency_ms: u64,
    pub error_kind: Option<&'static str>,
    pub error: Option<&'a str>,
    pub stages: std::collections::BTreeMap<&'static str, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;

    fn report(outcome: Outcome) -> Report {
        let state = JobState {
            attempts: 2,
            step_attempts: 2,
            ..JobState::default()
        };
        let mut r = Report::new("job-1".into(), "job-1".into(), state);
        r.file = Some("file:///in/a.pdf".into());
        r.data_action_id = Some("act".into());
        r.reach(Stage::Received);
        r.reach(Stage::Encoded);
        r.outcome = outcome;
        r
    }

    #[test]
    fn succeeded_result_has_every_field() {
        let v = report(Outcome::Succeeded).result().unwrap();
        assert_eq!(v["status"], "succeeded");
        assert_eq!(v["file"], "file:///in/a.pdf");
        for field in [
            "job_id",
            "status",
            "data_action_id",
            "execution_id",
            "content_type",
            "original_size",
            "encoded_size",
            "sha256",
            "attempts",
            "latency_ms",
            "storage_uri",
            "file",
            "completed_at",
        ] {
            assert!(v.get(field).is_some(), "{field} missing from {v}");
        }
        assert_eq!(v["attempts"], 2);
    }

    #[test]
    fn failed_result_has_every_field() {
        let r = report(Outcome::Failed {
            kind: ErrorKind::TooLarge,
            error: "big".into(),
        });
        let v = r.result().unwrap();
        assert_eq!(v["file"], "file:///in/a.pdf");
        assert_eq!(v["error_kind"], "too_large");
        for field in [
            "job_id",
            "status",
            "error_kind",
            "error",
            "attempts",
            "file",
            "failed_at",
        ] {
            assert!(v.get(field).is_some(), "{field} missing from {v}");
        }
        OffsetDateTime::parse(v["failed_at"].as_str().unwrap(), &Rfc3339).unwrap();
    }

    #[test]
    fn retries_and_hand_backs_have_no_result() {
        assert!(
            report(Outcome::Retry {
                delay: Duration::from_secs(1),
                error: "503".into()
            })
            .result()
            .is_none()
        );
        let hb = report(Outcome::HandBack {
            cause: Systemic::CredentialsRefused,
            error: "x".into(),
        });
        assert!(hb.result().is_none() && hb.terminal_event().is_none());
    }

    #[test]
    fn terminal_event_holds_the_timeline() {
        let r = report(Outcome::Retry {
            delay: Duration::from_secs(1),
            error: "503".into(),
        });
        let e = serde_json::to_value(r.terminal_event().unwrap()).unwrap();
        assert_eq!(e["event"], "retry_scheduled");
        assert_eq!(e["error"], "503");
        assert_eq!(e["attempt"], 2);
        let stages = e["stages"].as_object().unwrap();
        assert_eq!(stages.keys().collect::<Vec<_>>(), ["encoded", "received"]);
        for field in [
            "event",
            "timestamp",
            "job_id",
            "request_id",
            "data_action_id",
            "content_type",
            "original_size",
            "encoded_size",
            "status",
            "execution_id",
            "attempt",
            "file",
            "latency_ms",
            "error_kind",
            "error",
            "stages",
        ] {
            assert!(e.get(field).is_some(), "{field} missing from {e}");
        }
    }
}
