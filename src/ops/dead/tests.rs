//! Reading dead letters of every shape, filtering them, and building replay copies.

use lapin::types::{AMQPValue, FieldArray, FieldTable};
use sha2::{Digest, Sha256};

use super::*;
use crate::broker::topology::text;

fn at(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

fn worker_letter() -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert(headers::ERROR_KIND.into(), text("rejected"));
    h.insert(headers::ERROR.into(), text("the API answered 400"));
    h.insert(headers::DLQ_ATTEMPTS.into(), AMQPValue::LongLongInt(3));
    h.insert(headers::FAILED_AT.into(), text("2026-01-02T03:04:05Z"));
    h.insert(
        headers::STATE.into(),
        text(r#"{"attempts":3,"executed":true,"execution_id":"exec-9","replays":1,"dead":true}"#),
    );
    h.insert(headers::STATE_SIGNATURE.into(), text(&"ab".repeat(32)));
    h.insert(headers::REPLAYS.into(), AMQPValue::LongInt(7));
    h.insert(headers::DELIVERY_COUNT.into(), AMQPValue::LongLongInt(4));
    h.insert("custom".into(), text("kept"));
    BasicProperties::default()
        .with_message_id("m-1".into())
        .with_correlation_id("c-1".into())
        .with_headers(h)
}

fn broker_letter() -> BasicProperties {
    let mut death = FieldTable::default();
    death.insert("reason".into(), text("delivery_limit"));
    death.insert("queue".into(), text("p.jobs"));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    death.insert("time".into(), AMQPValue::Timestamp(1_767_225_600)); // 2026-01-01T00:00:00Z
    let mut h = FieldTable::default();
    h.insert(
        headers::DEATH.into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    h.insert("x-first-death-reason".into(), text("delivery_limit"));
    h.insert("x-first-death-queue".into(), text("p.jobs"));
    h.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(2));
    BasicProperties::default().with_headers(h)
}

#[test]
fn reads_the_contract_headers() {
    let d = DeadLetter::read(
        4,
        &worker_letter(),
        br#"{"job_id":"inv-1","file":"file:///x"}"#,
    );
    assert_eq!(d.position, 4);
    assert_eq!(d.job_id, "inv-1");
    assert_eq!(
        (d.kind.as_str(), d.error.as_str()),
        ("rejected", "the API answered 400")
    );
    assert_eq!((d.attempts, d.replays, d.by_broker), (Some(3), 1, false));
    assert_eq!(d.failed_at, Some(at("2026-01-02T03:04:05Z")));
    assert_eq!(
        d.age(at("2026-01-02T03:05:05Z")),
        Some(Duration::from_secs(60))
    );
    let j = d.to_json(at("2026-01-02T03:05:05Z"));
    assert_eq!(j["failed_at"], "2026-01-02T03:04:05Z");
    assert_eq!(j["age_seconds"], 60);
    assert_eq!(j["dead_lettered_by"], "worker");
}

#[test]
fn reads_what_rabbitmq_dead_lettered() {
    let d = DeadLetter::read(
        0,
        &broker_letter(),
        br#"{"job_id":"j-2","file":"file:///x"}"#,
    );
    assert_eq!(d.kind, "delivery_limit");
    assert!(d.by_broker && d.error.contains("p.jobs"), "{}", d.error);
    assert_eq!(d.failed_at, Some(at("2026-01-01T00:00:00Z")));
    assert_eq!(
        d.attempts,
        Some(2),
        "the worker's attempt count, when it made some"
    );
}

#[test]
fn bodies_that_are_not_jobs_still_have_ids() {
    let with_id = BasicProperties::default().with_message_id("msg-7".into());
    assert_eq!(DeadLetter::read(0, &with_id, b"{not json").job_id, "msg-7");
    let bare = DeadLetter::read(0, &BasicProperties::default(), b"{not json");
    assert_eq!(
        bare.job_id,
        format!("sha256:{}", hex::encode(Sha256::digest(b"{not json")))
    );
    assert_eq!(
        (bare.kind.as_str(), bare.attempts, bare.failed_at),
        ("unknown", None, None)
    );
    // A broken x-death (not an array) is ignored, not a crash.
    let mut h = FieldTable::default();
    h.insert(headers::DEATH.into(), text("garbage"));
    h.insert(headers::FAILED_AT.into(), text("yesterday"));
    let odd = DeadLetter::read(0, &BasicProperties::default().with_headers(h), b"");
    assert_eq!((odd.kind.as_str(), odd.failed_at), ("unknown", None));
}

#[test]
fn filters_combine() {
    let d = DeadLetter::read(
        0,
        &worker_letter(),
        br#"{"job_id":"inv-1","file":"file:///x"}"#,
    );
    let f = |kinds: &[&str], ids: &[&str], since: Option<&str>| Filter {
        kinds: kinds.iter().map(|s| s.to_string()).collect(),
        job_ids: ids.iter().map(|s| s.to_string()).collect(),
        since: since.map(at),
        limit: None,
        position: None,
    };
    assert!(f(&[], &[], None).matches(&d));
    assert!(f(&["rejected", "exhausted"], &[], None).matches(&d));
    assert!(!f(&["exhausted"], &[], None).matches(&d));
    assert!(f(&[], &["inv-1"], Some("2026-01-02T00:00:00Z")).matches(&d));
    assert!(!f(&[], &["inv-2"], None).matches(&d));
    assert!(!f(&[], &[], Some("2026-01-03T00:00:00Z")).matches(&d));
    let undated = DeadLetter::read(0, &BasicProperties::default(), b"x");
    assert!(!f(&[], &[], Some("2000-01-01T00:00:00Z")).matches(&undated));
}

#[test]
fn kinds_and_since_are_checked() {
    assert_eq!(parse_kind(" exhausted ").unwrap(), "exhausted");
    assert_eq!(parse_kind("delivery_limit").unwrap(), "delivery_limit");
    assert!(parse_kind("exausted").unwrap_err().contains("invalid_job"));
    let now = at("2026-01-10T00:00:00Z");
    assert_eq!(parse_since("2h", now).unwrap(), at("2026-01-09T22:00:00Z"));
    assert_eq!(parse_since("7d", now).unwrap(), at("2026-01-03T00:00:00Z"));
    assert_eq!(
        parse_since("2026-01-01T00:00:00+01:00", now).unwrap(),
        at("2025-12-31T23:00:00Z")
    );
    assert!(parse_since("soon", now).is_err());
    assert!(parse_since("99999999999999d", now).is_err());
}

#[test]
fn replay_copies_restart_attempts_and_count_replays() {
    let topology = Topology::names_only("p");
    let original = worker_letter();
    let copy = replay_copy(&topology, &original, b"{job}");
    assert_eq!(
        (copy.exchange.as_str(), copy.routing_key.as_str()),
        ("", "p.jobs")
    );
    assert_eq!(copy.body, b"{job}");
    assert_eq!(copy.properties.message_id(), original.message_id());
    assert_eq!(copy.properties.correlation_id(), original.correlation_id());
    let h = copy.properties.headers().clone().unwrap();
    let keys: Vec<&str> = h.inner().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        ["custom", headers::STATE, headers::STATE_SIGNATURE],
        "the worker's signed state travels untouched; its legacy headers do not"
    );

    let copy = replay_copy(&topology, &broker_letter(), b"{job}");
    let h = copy.properties.headers().clone().unwrap();
    assert!(h.inner().is_empty(), "{h:?}");
}
