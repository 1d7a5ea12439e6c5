//! A job's report -> the messages that carry it: the result, audit events, and the
//! copies of the job that go to a retry queue, back to the jobs queue, or to the DLQ,
//! each with the job's state signed for it.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::publisher::Outgoing;
use super::topology::{Topology, header_int, headers, headers_without, routing, short, text};
use crate::outcome::{AuditEvent, Outcome, Report};
use crate::state::{JobState, StateKey};
use crate::text::rfc3339;

/// A delivery as it came: copies keep its body and properties.
pub struct Original<'a> {
    pub body: &'a [u8],
    pub properties: &'a BasicProperties,
}

/// The messages for a delivery that ended with `report` (not a hand-back).
pub fn messages(
    topology: &Topology,
    key: &StateKey,
    report: &Report,
    original: &Original<'_>,
) -> Vec<Outgoing> {
    let mut out = Vec::with_capacity(3);
    match &report.outcome {
        Outcome::Retry { delay, .. } => {
            out.push(job_copy(
                key,
                original,
                &report.state,
                String::new(),
                topology.retry_queue(*delay),
                FieldTable::default(),
            ));
        }
        Outcome::Failed { kind, error } => {
            let mut extra = FieldTable::default();
            extra.insert(headers::ERROR_KIND.into(), text(kind.as_str()));
            extra.insert(headers::ERROR.into(), text(error));
            extra.insert(
                headers::DLQ_ATTEMPTS.into(),
                AMQPValue::LongLongInt(i64::from(report.state.attempts)),
            );
            extra.insert(
                headers::FAILED_AT.into(),
                text(&rfc3339(crate::text::now())),
            );
            // The DLQ copy's state restarts the counts for a replay and keeps the
            // progress: a replay never runs the action again.
            out.push(job_copy(
                key,
                original,
                &report.state.for_dead_letter(),
                topology.dlx(),
                routing::dead_letter(*kind).to_owned(),
                extra,
            ));
        }
        Outcome::Succeeded | Outcome::HandBack { .. } => {}
    }
    if let Some(body) = report.result_json() {
        let routing_key = match report.outcome {
            Outcome::Succeeded => routing::SUCCEEDED,
            _ => routing::FAILED,
        };
        out.push(Outgoing {
            exchange: topology.results(),
            routing_key: routing_key.to_owned(),
            body,
            properties: json_properties().with_correlation_id(short(&report.job_id)),
        });
    }
    if let Some(event) = report.terminal_event() {
        out.push(audit(topology, &event));
    }
    out
}

/// The job back on the jobs queue as a fresh message carrying `state`: a hand-back
/// that must keep progress the original delivery does not know of, or spare the
/// delivery limit. The broker's delivery count of the original is added to the
/// returns the state counts, since the copy starts from zero.
pub fn fresh_copy(
    topology: &Topology,
    key: &StateKey,
    original: &Original<'_>,
    state: &JobState,
) -> Outgoing {
    let delivered = original
        .properties
        .headers()
        .as_ref()
        .and_then(|h| header_int(h, headers::DELIVERY_COUNT))
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let state = JobState {
        returns: state.returns.saturating_add(delivered),
        ..state.clone()
    };
    job_copy(
        key,
        original,
        &state,
        String::new(),
        topology.jobs(),
        FieldTable::default(),
    )
}

/// A copy of the job: the same body and properties, the broker's and the worker's
/// own headers replaced by `extra` and the signed `state`.
fn job_copy(
    key: &StateKey,
    original: &Original<'_>,
    state: &JobState,
    exchange: String,
    routing_key: String,
    extra: FieldTable,
) -> Outgoing {
    let old = original.properties.headers().clone().unwrap_or_default();
    let mut h = headers_without(&old, |k| {
        k == headers::DELIVERY_COUNT || headers::OWNED.contains(&k)
    });
    for (k, v) in extra.inner() {
        h.insert(k.clone(), v.clone());
    }
    if !state.is_fresh() {
        let message_id = original
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str());
        let (json, signature) = key.sign(state, original.body, message_id);
        h.insert(headers::STATE.into(), text(&json));
        h.insert(headers::STATE_SIGNATURE.into(), text(&signature));
    }
    Outgoing {
        exchange,
        routing_key,
        body: original.body.to_vec(),
        properties: original.properties.clone().with_headers(h),
    }
}

/// One audit event as a message.
pub fn audit(topology: &Topology, event: &AuditEvent<'_>) -> Outgoing {
    Outgoing {
        exchange: topology.audit(),
        routing_key: routing::audit(event.event),
        body: serde_json::to_vec(event).expect("audit json"),
        properties: json_properties().with_correlation_id(short(event.job_id)),
    }
}

fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_app_id("cxone-worker".into())
        .with_timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::incoming::read_state;
    use crate::config::Secret;
    use crate::job::{ErrorKind, Systemic};
    use std::time::Duration;

    fn topo() -> Topology {
        Topology::new(
            "p",
            &[Duration::from_millis(200), Duration::from_millis(400)],
        )
    }

    fn key() -> StateKey {
        StateKey::derive(&Secret::new("secret".into()), "p")
    }

    fn two_attempts() -> JobState {
        JobState {
            attempts: 2,
            step_attempts: 2,
            ..JobState::default()
        }
    }

    fn report(outcome: Outcome) -> Report {
        let mut r = Report::new("job-1".into(), "job-1".into(), two_attempts());
        r.outcome = outcome;
        r
    }

    fn properties() -> BasicProperties {
        let mut h = FieldTable::default();
        h.insert("custom".into(), text("kept"));
        h.insert(headers::ATTEMPTS.into(), AMQPValue::LongInt(1));
        h.insert(headers::DELIVERY_COUNT.into(), AMQPValue::LongInt(3));
        BasicProperties::default()
            .with_message_id("m-1".into())
            .with_content_type("application/json".into())
            .with_headers(h)
    }

    fn messages_of(r: &Report) -> Vec<Outgoing> {
        let props = properties();
        let original = Original {
            body: b"{job}",
            properties: &props,
        };
        messages(&topo(), &key(), r, &original)
    }

    /// The state the next delivery of a copy believes.
    fn carried(copy: &Outgoing) -> JobState {
        let id = copy.properties.message_id().as_ref().map(|m| m.as_str());
        read_state(&key(), &copy.properties, &copy.body, id)
    }

    #[test]
    fn retry_copies_the_job_to_its_delay_queue_with_its_state_signed() {
        let r = report(Outcome::Retry {
            delay: Duration::from_millis(400),
            error: "503".into(),
        });
        let out = messages_of(&r);
        assert_eq!(
            out.len(),
            2,
            "retry copy and retry_scheduled event; no result"
        );
        assert_eq!(
            (out[0].exchange.as_str(), out[0].routing_key.as_str()),
            ("", "p.retry.400ms")
        );
        assert_eq!(out[0].body, b"{job}");
        assert_eq!(
            out[0].properties.message_id().as_ref().unwrap().as_str(),
            "m-1"
        );
        assert_eq!(carried(&out[0]), two_attempts());
        let h = out[0].properties.headers().clone().unwrap();
        assert!(h.contains_key("custom") && !h.contains_key(headers::DELIVERY_COUNT));
        assert!(
            !h.contains_key(headers::ATTEMPTS),
            "a producer's legacy header does not travel on"
        );
        assert_eq!(out[1].routing_key, "audit.retry_scheduled");
    }

    #[test]
    fn failures_go_to_the_dlq_with_the_contract_headers() {
        let r = report(Outcome::Failed {
            kind: ErrorKind::Rejected,
            error: "API answered 400".into(),
        });
        let out = messages_of(&r);
        assert_eq!(out.len(), 3);
        let dlq = &out[0];
        assert_eq!(
            (dlq.exchange.as_str(), dlq.body.as_slice()),
            ("p.dlx", &b"{job}"[..])
        );
        let h = dlq.properties.headers().clone().unwrap();
        assert_eq!(
            super::super::topology::header_text(&h, headers::ERROR_KIND).unwrap(),
            "rejected"
        );
        assert_eq!(header_int(&h, headers::DLQ_ATTEMPTS), Some(2));
        assert!(h.contains_key(headers::ERROR) && h.contains_key(headers::FAILED_AT));
        let back = carried(dlq);
        assert_eq!(
            (back.step_attempts, back.replays, back.attempts),
            (0, 1, 2),
            "a replay starts its attempts over and counts itself"
        );
        assert_eq!(
            (out[1].exchange.as_str(), out[1].routing_key.as_str()),
            ("p.results", "job.failed")
        );
        assert_eq!(
            out[1]
                .properties
                .correlation_id()
                .as_ref()
                .unwrap()
                .as_str(),
            "job-1"
        );
        assert_eq!(out[2].routing_key, "audit.failed");
    }

    #[test]
    fn success_publishes_a_result_and_an_event() {
        let out = messages_of(&report(Outcome::Succeeded));
        let keys: Vec<&str> = out.iter().map(|o| o.routing_key.as_str()).collect();
        assert_eq!(keys, ["job.succeeded", "audit.succeeded"]);
    }

    #[test]
    fn an_execution_without_an_id_is_carried_as_executed() {
        // Storage failed after an execution the API answered without an id: the
        // retry must write the record again, not execute again.
        let mut r = report(Outcome::Retry {
            delay: Duration::from_millis(200),
            error: "storage down".into(),
        });
        r.state.executed = true;
        r.state.sync_failures = 1;
        let state = carried(&messages_of(&r)[0]);
        assert!(state.executed && state.execution_id.is_none() && state.sync_failures == 1);
    }

    #[test]
    fn a_dead_letter_says_when_the_action_already_ran() {
        let mut r = report(Outcome::Failed {
            kind: ErrorKind::Exhausted,
            error: "storage down (after 4 storage writes)".into(),
        });
        r.state.executed = true;
        r.state.sync_failures = 4;
        let back = carried(&messages_of(&r)[0]);
        assert!(back.executed, "a replay must not execute again");
        assert_eq!(back.sync_failures, 0, "but it may write the record again");
    }

    #[test]
    fn a_fresh_copy_keeps_the_progress_and_counts_the_returns() {
        let props = properties();
        let original = Original {
            body: b"{job}",
            properties: &props,
        };
        let state = JobState {
            executed: true,
            execution_id: Some("e-1".into()),
            returns: 10,
            ..JobState::default()
        };
        let copy = fresh_copy(&topo(), &key(), &original, &state);
        assert_eq!(
            (copy.exchange.as_str(), copy.routing_key.as_str()),
            ("", "p.jobs")
        );
        let back = carried(&copy);
        assert_eq!(back.returns, 13, "the original's 3 deliveries are kept");
        assert_eq!(back.execution_id.as_deref(), Some("e-1"));
    }

    #[test]
    fn hand_backs_publish_nothing() {
        let r = report(Outcome::HandBack {
            cause: Systemic::ApiUnreachable,
            error: "down".into(),
        });
        assert!(messages_of(&r).is_empty());
    }
}
