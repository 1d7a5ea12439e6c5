//! One dead-lettered message as operators see it (job id, file, error kind, error,
//! attempts, failed at), the filters that select it, and the copy that a replay publishes.
//!
//! A DLQ message comes either from the worker (the contract's `x-error-*` headers) or
//! from RabbitMQ itself, when the jobs queue's delivery limit ran out (only `x-death`,
//! reason `delivery_limit`): both are read, neither may crash the reader, and a body
//! that is not even JSON still has the job id the worker would give it.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::broker::publisher::Outgoing;
use crate::broker::topology::{Topology, header_int, header_text, headers, headers_without};
use crate::job::{ErrorKind, idempotency_key, loose_job_id, shown_file};
use crate::state::JobState;
use crate::text::rfc3339;

/// Kinds that only RabbitMQ gives (the `reason` of `x-death`), and `unknown` for a
/// message that carries neither the contract's headers nor `x-death`.
pub const BROKER_KINDS: [&str; 4] = ["delivery_limit", "expired", "maxlen", "unknown"];

#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Place in the DLQ when it was read (0 = head).
    pub position: u64,
    pub job_id: String,
    /// The job's `file` as outputs show it (no userinfo, query or fragment), read
    /// loosely: a body that is not a valid job may still name its file.
    pub file: Option<String>,
    pub kind: String,
    pub error: String,
    pub attempts: Option<u32>,
    pub failed_at: Option<OffsetDateTime>,
    /// Times it was replayed before, as the state the worker wrote on it says.
    pub replays: u32,
    pub message_id: Option<String>,
    /// Dead-lettered by RabbitMQ rather than by the worker.
    pub by_broker: bool,
}

impl DeadLetter {
    pub fn read(position: u64, properties: &BasicProperties, body: &[u8]) -> Self {
        let empty = FieldTable::default();
        let h = properties.headers().as_ref().unwrap_or(&empty);
        let message_id = properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned());
        let job_id = idempotency_key(loose_job_id(body).as_deref(), message_id.as_deref(), body);
        let count = |key| header_int(h, key).and_then(|n| u32::try_from(n).ok());
        let mut letter = DeadLetter {
            position,
            job_id,
            file: loose_file(body).as_deref().map(shown_file),
            kind: "unknown".into(),
            error: format!("no {} or {} header", headers::ERROR_KIND, headers::DEATH),
            attempts: count(headers::DLQ_ATTEMPTS).or(count(headers::ATTEMPTS)),
            failed_at: header_text(h, headers::FAILED_AT)
                .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok()),
            replays: replays(h),
            message_id,
            by_broker: false,
        };
        if let Some(kind) = header_text(h, headers::ERROR_KIND) {
            letter.kind = kind;
            letter.error = header_text(h, headers::ERROR).unwrap_or_default();
        } else if let Some(death) = first_death(h) {
            let reason =
                header_text(death, headers::death::REASON).unwrap_or_else(|| "unknown".into());
            let queue = header_text(death, headers::death::QUEUE).unwrap_or_default();
            letter.error = format!("dead-lettered by RabbitMQ from {queue}: {reason}");
            letter.kind = reason;
            letter.by_broker = true;
            if letter.failed_at.is_none() {
                letter.failed_at = match death.inner().get(headers::death::TIME) {
                    Some(AMQPValue::Timestamp(t)) => i64::try_from(*t)
                        .ok()
                        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok()),
                    _ => None,
                };
            }
        }
        letter
    }

    /// Time since it failed; `None` when no header says when.
    pub fn age(&self, now: OffsetDateTime) -> Option<Duration> {
        self.failed_at
            .map(|t| (now - t).try_into().unwrap_or(Duration::ZERO))
    }

    pub fn to_json(&self, now: OffsetDateTime) -> Value {
        json!({
            "position": self.position,
            "job_id": self.job_id,
            "file": self.file,
            "error_kind": self.kind,
            "error": self.error,
            "attempts": self.attempts,
            "failed_at": self.failed_at.map(rfc3339),
            "age_seconds": self.age(now).map(|d| d.as_secs()),
            "replays": self.replays,
            "message_id": self.message_id,
            "dead_lettered_by": if self.by_broker { "rabbitmq" } else { "worker" },
        })
    }
}

/// The `file` of a body that may not be a valid job (unknown fields, a missing
/// `job_id`, a wrong type elsewhere), as `loose_job_id` reads the id: only a body
/// that is not JSON, or whose `file` is not a string, has none.
fn loose_file(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Loose {
        file: Option<String>,
    }
    serde_json::from_slice::<Loose>(body)
        .ok()?
        .file
        .filter(|f| !f.trim().is_empty())
}

/// The most recent entry of `x-death` (RabbitMQ keeps it first).
fn first_death(h: &FieldTable) -> Option<&FieldTable> {
    match h.inner().get(headers::DEATH)? {
        AMQPValue::FieldArray(entries) => entries.as_slice().iter().find_map(|e| match e {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

/// Which dead letters a command acts on; an empty list matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kinds: Vec<String>,
    pub job_ids: Vec<String>,
    /// Failed at or after; a message that does not say when it failed never matches.
    pub since: Option<OffsetDateTime>,
    /// Matching messages acted on at most; the rest stay where they are.
    pub limit: Option<usize>,
    /// Only the message at this place in the queue (0 = head), as `dlq list` shows it.
    pub position: Option<u64>,
}

impl Filter {
    pub fn matches(&self, d: &DeadLetter) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&d.kind))
            && (self.job_ids.is_empty() || self.job_ids.contains(&d.job_id))
            && self
                .since
                .is_none_or(|since| d.failed_at.is_some_and(|t| t >= since))
            && self.position.is_none_or(|p| p == d.position)
    }

    /// Whether no message after `scanned` ones can match, so reading may stop.
    pub fn done(&self, scanned: u64, picked: usize) -> bool {
        self.limit.is_some_and(|limit| picked >= limit)
            || self.position.is_some_and(|p| scanned > p)
    }
}

/// A `--kind` value: one of the contract's error kinds or of [`BROKER_KINDS`].
pub fn parse_kind(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if ErrorKind::parse(raw).is_some() || BROKER_KINDS.contains(&raw) {
        return Ok(raw.to_owned());
    }
    let known: Vec<&str> = ErrorKind::ALL
        .iter()
        .map(|k| k.as_str())
        .chain(BROKER_KINDS)
        .collect();
    Err(format!("{raw:?} is not one of {}", known.join(", ")))
}

/// A `--since` value: an RFC 3339 time, or a duration ago (`90m`, `2h`, `7d`).
pub fn parse_since(raw: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let raw = raw.trim();
    if let Ok(t) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(t);
    }
    let ago = match raw.strip_suffix('d').and_then(|n| n.parse::<u64>().ok()) {
        Some(days) => days.checked_mul(86_400).map(Duration::from_secs),
        None => crate::text::parse_duration(raw),
    };
    ago.and_then(|d| time::Duration::try_from(d).ok())
        .and_then(|d| now.checked_sub(d))
        .ok_or_else(|| {
            format!("{raw:?} is neither an RFC 3339 time nor a duration like 90m, 2h or 7d")
        })
}

/// The replays the worker's signed state on a dead letter counts. Read for display
/// only, unverified (an operator tool holds no key): the worker itself trusts the
/// state only when its signature checks out.
fn replays(h: &FieldTable) -> u32 {
    header_text(h, headers::STATE)
        .and_then(|s| serde_json::from_str::<JobState>(&s).ok())
        .map_or(0, |state| state.replays)
}

/// The message a replay publishes: the same body and properties, straight to the jobs
/// queue (not through the jobs exchange: other bindings saw the job once already).
/// The failure headers and the broker's dead-letter and delivery headers go; the
/// worker's signed state stays as it is, and the worker, seeing a dead letter come
/// back, starts its attempts over, counts the replay and keeps the execution mark
/// (the action already ran and only the storage write was left). A replay therefore
/// needs no key, and a replay by hand (a shovel, the management UI) counts the same.
pub fn replay_copy(topology: &Topology, properties: &BasicProperties, body: &[u8]) -> Outgoing {
    let old = properties.headers().clone().unwrap_or_default();
    let dropped = |key: &str| {
        [
            headers::DLQ_ATTEMPTS,
            headers::FAILED_AT,
            headers::DELIVERY_COUNT,
            headers::DEATH,
        ]
        .contains(&key)
            || headers::LEGACY.contains(&key)
            || [
                headers::ERROR_PREFIX,
                headers::FIRST_DEATH_PREFIX,
                headers::LAST_DEATH_PREFIX,
            ]
            .iter()
            .any(|p| key.starts_with(p))
    };
    Outgoing {
        exchange: String::new(),
        routing_key: topology.jobs(),
        body: body.to_vec(),
        properties: properties
            .clone()
            .with_headers(headers_without(&old, dropped)),
    }
}

#[cfg(test)]
mod tests;
