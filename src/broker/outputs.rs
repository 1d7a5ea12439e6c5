//! A job's report -> the messages that carry it: the result, audit events, and the
//! copy of the job that goes to a retry queue or to the DLQ.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::publisher::Outgoing;
use super::topology::{Topology, headers, headers_without, routing, short, text};
use crate::outcome::{AuditEvent, Outcome, Report, rfc3339};
use crate::worker::Carried;

/// The messages for a delivery that ended with `report` (not a hand-back).
/// `original` is the delivery's body and properties: copies keep them unchanged.
pub fn messages(
    topology: &Topology,
    report: &Report,
    body: &[u8],
    original: &BasicProperties,
) -> Vec<Outgoing> {
    let mut out = Vec::with_capacity(3);
    match &report.outcome {
        Outcome::Retry { delay, .. } => {
            let mut h = job_headers(original);
            h.insert(
                headers::ATTEMPTS.into(),
                AMQPValue::LongLongInt(i64::from(report.attempts)),
            );
            if report.executed {
                mark_executed(&mut h, report);
                h.insert(
                    headers::SYNC_FAILURES.into(),
                    AMQPValue::LongLongInt(i64::from(report.sync_failures)),
                );
            }
            out.push(Outgoing {
                exchange: String::new(),
                routing_key: topology.retry_queue(*delay),
                body: body.to_vec(),
                properties: original.clone().with_headers(h),
            });
        }
        Outcome::Failed { kind, error } => {
            let mut h = headers_without(&job_headers(original), |k| {
                k == headers::ATTEMPTS || k == headers::SYNC_FAILURES
            });
            h.insert(headers::ERROR_KIND.into(), text(kind.as_str()));
            h.insert(headers::ERROR.into(), text(error));
            h.insert(
                headers::DLQ_ATTEMPTS.into(),
                AMQPValue::LongLongInt(i64::from(report.attempts)),
            );
            if report.executed {
                // Only the storage write failed for good: a replay must write the
                // record, not execute again.
                mark_executed(&mut h, report);
            }
            h.insert(
                headers::FAILED_AT.into(),
                text(&rfc3339(crate::outcome::now())),
            );
            out.push(Outgoing {
                exchange: topology.dlx(),
                routing_key: kind.as_str().to_owned(),
                body: body.to_vec(),
                properties: original.clone().with_headers(h),
            });
        }
        Outcome::Succeeded | Outcome::HandBack { .. } => {}
    }
    if let Some((key, result)) = report.result() {
        out.push(Outgoing {
            exchange: topology.results(),
            routing_key: key.to_owned(),
            // A JSON value always serializes.
            body: serde_json::to_vec(&result).expect("result json"),
            properties: json_properties().with_correlation_id(short(&report.job_id)),
        });
    }
    if let Some(event) = report.terminal_event() {
        out.push(audit(topology, &event));
    }
    out
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

/// The job's own headers, minus what the broker adds on each delivery.
fn job_headers(original: &BasicProperties) -> FieldTable {
    let h = original.headers().clone().unwrap_or_default();
    headers_without(&h, |k| k == headers::DELIVERY_COUNT)
}

/// Says on a copy of the job that its execution succeeded. An empty id still says
/// "executed": the API may answer success without naming one.
fn mark_executed(h: &mut FieldTable, report: &Report) {
    let id = report.execution_id.as_deref().unwrap_or_default();
    h.insert(headers::EXECUTION_ID.into(), text(id));
}

/// Reads the worker's headers off a delivery.
pub fn read_job_headers(properties: &BasicProperties) -> Carried {
    let Some(h) = properties.headers() else {
        return Carried::default();
    };
    let count = |key| {
        super::topology::header_int(h, key)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    let execution_id = super::topology::header_text(h, headers::EXECUTION_ID);
    Carried {
        attempts: count(headers::ATTEMPTS),
        executed: execution_id.is_some(),
        execution_id: execution_id.filter(|s| !s.is_empty()),
        sync_failures: count(headers::SYNC_FAILURES),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{ErrorKind, Systemic};
    use std::time::Duration;

    fn topo() -> Topology {
        Topology::new(
            "p",
            &[Duration::from_millis(200), Duration::from_millis(400)],
        )
    }

    fn report(outcome: Outcome) -> Report {
        let mut r = Report::new("job-1".into(), "job-1".into(), 2);
        r.outcome = outcome;
        r
    }

    fn original() -> BasicProperties {
        let mut h = FieldTable::default();
        h.insert("custom".into(), text("kept"));
        h.insert(headers::ATTEMPTS.into(), AMQPValue::LongInt(1));
        h.insert(headers::DELIVERY_COUNT.into(), AMQPValue::LongInt(3));
        BasicProperties::default()
            .with_message_id("m-1".into())
            .with_content_type("application/json".into())
            .with_headers(h)
    }

    #[test]
    fn retry_copies_the_job_to_its_delay_queue() {
        let r = report(Outcome::Retry {
            delay: Duration::from_millis(400),
            error: "503".into(),
        });
        let out = messages(&topo(), &r, b"{job}", &original());
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
        assert_eq!(
            read_job_headers(&out[0].properties),
            Carried {
                attempts: 2,
                ..Carried::default()
            }
        );
        let h = out[0].properties.headers().clone().unwrap();
        assert!(h.contains_key("custom") && !h.contains_key(headers::DELIVERY_COUNT));
        assert_eq!(out[1].routing_key, "audit.retry_scheduled");
    }

    #[test]
    fn failures_go_to_the_dlq_with_the_contract_headers() {
        let r = report(Outcome::Failed {
            kind: ErrorKind::Rejected,
            error: "API answered 400".into(),
        });
        let out = messages(&topo(), &r, b"{job}", &original());
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
        assert_eq!(
            super::super::topology::header_int(&h, headers::DLQ_ATTEMPTS),
            Some(2)
        );
        assert!(h.contains_key(headers::ERROR) && h.contains_key(headers::FAILED_AT));
        assert!(
            !h.contains_key(headers::ATTEMPTS),
            "the DLQ copy restarts its attempt count"
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
        let out = messages(&topo(), &report(Outcome::Succeeded), b"{job}", &original());
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
        r.executed = true;
        r.sync_failures = 1;
        let out = messages(&topo(), &r, b"{job}", &original());
        assert_eq!(
            read_job_headers(&out[0].properties),
            Carried {
                attempts: 2,
                executed: true,
                execution_id: None,
                sync_failures: 1,
            }
        );
        r.execution_id = Some("exec-9".into());
        let out = messages(&topo(), &r, b"{job}", &original());
        assert_eq!(
            read_job_headers(&out[0].properties).execution_id.as_deref(),
            Some("exec-9")
        );
    }

    #[test]
    fn a_dead_letter_says_when_the_action_already_ran() {
        let mut r = report(Outcome::Failed {
            kind: ErrorKind::Exhausted,
            error: "storage down (after 4 attempts)".into(),
        });
        r.executed = true;
        let out = messages(&topo(), &r, b"{job}", &original());
        let carried = read_job_headers(&out[0].properties);
        assert!(carried.executed, "a replay must not execute again");
        assert_eq!(carried.execution_id, None);
    }

    #[test]
    fn hand_backs_publish_nothing() {
        let r = report(Outcome::HandBack {
            cause: Systemic::ApiUnreachable,
            error: "down".into(),
        });
        assert!(messages(&topo(), &r, b"{job}", &original()).is_empty());
    }
}
