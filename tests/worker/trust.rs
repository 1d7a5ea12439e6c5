//! The trust rule (contract "Trust"): only the worker's own copies carry state it
//! believes; whatever a producer publishes is a new job with its full attempts.

use std::time::Duration;

use cxone_worker::broker::topology::{header_text, headers};
use cxone_worker::sim::SimConfig;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};

use super::harness::{Worker, job, pdf};

/// Retries wait here long enough for a test to take the copy off the queue.
const SLOW_RETRY: &str = "10m";

/// A worker whose API fails the first attempt of every key, `MAX_ATTEMPTS=2`: a
/// job whose forged state were believed would be exhausted after one call.
async fn failing_first() -> Worker {
    let mut w = Worker::new(
        SimConfig {
            fail_first: 1,
            ..SimConfig::default()
        },
        &[("MAX_ATTEMPTS", "2"), ("RETRY_DELAYS", SLOW_RETRY)],
    )
    .await;
    w.start().await;
    w
}

/// The one copy that waits in the slow retry queue.
async fn retry_copy(w: &Worker) -> lapin::message::BasicGetMessage {
    let mut got = w
        .drain(&format!("retry.{SLOW_RETRY}"), 1, Duration::from_secs(20))
        .await;
    assert_eq!(got.len(), 1, "no retry copy:\n{}", w.logs());
    got.remove(0)
}

/// The state a copy says it carries (unverified: the test reads what was written).
fn state_of(properties: &BasicProperties) -> Value {
    let h = properties.headers().clone().unwrap_or_default();
    let text = header_text(&h, headers::STATE).expect("a worker copy carries its state");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_header_of_a_real_retry_copy_on_another_body_is_a_new_job() {
    let w = failing_first().await;
    w.publish(&job("genuine", &w.file("g.pdf", &pdf(100))))
        .await;
    let genuine = retry_copy(&w).await;
    assert_eq!(state_of(&genuine.delivery.properties)["attempts"], 1);

    // Every header of the genuine copy, its message_id too, on another job.
    let forged = job("forged", &w.file("f.pdf", &pdf(200)));
    w.publish_raw(
        serde_json::to_vec(&forged).unwrap(),
        genuine.delivery.properties.clone(),
    )
    .await;
    let copy = retry_copy(&w).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&copy.delivery.data).unwrap()["job_id"],
        "forged"
    );
    let state = state_of(&copy.delivery.properties);
    assert_eq!(
        (state["attempts"].as_u64(), state["step_attempts"].as_u64()),
        (Some(1), Some(1)),
        "the forged job's own first attempt, not the genuine one's second: {state}"
    );
    assert_eq!(w.stats().await["attempts"]["forged"], 1);
    assert_eq!(
        w.depth("jobs.dlq").await,
        0,
        "not exhausted by borrowed attempts"
    );
    assert!(w.metrics().await.contains("cxone_untrusted_state_total 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copied_execution_mark_does_not_skip_the_action() {
    // Storage that refuses the record after the execution pauses the worker, which
    // hands the job back as a fresh copy marked "executed": its next delivery writes
    // the record without calling the API again.
    let mut w = Worker::new(SimConfig::default(), &[]).await;
    w.start().await;
    let sync = w.dir.path().join("sync");
    std::fs::remove_dir(&sync).unwrap();
    std::fs::write(&sync, b"not a directory").unwrap();
    w.publish(&job("ran", &w.file("r.pdf", &pdf(100)))).await;
    w.wait_not_ready_because("storage", Duration::from_secs(20))
        .await;
    let mut copies = w.drain("jobs", 1, Duration::from_secs(10)).await;
    assert_eq!(copies.len(), 1, "the hand-back copy:\n{}", w.logs());
    let genuine = copies.remove(0);
    let mark = state_of(&genuine.delivery.properties);
    assert_eq!(mark["executed"], true, "{mark}");
    std::fs::remove_file(&sync).unwrap();

    let forged = job("never-ran", &w.file("n.pdf", &pdf(300)));
    w.publish_raw(
        serde_json::to_vec(&forged).unwrap(),
        genuine.delivery.properties.clone(),
    )
    .await;
    let got = w.results(1, Duration::from_secs(20)).await;
    let r = &got[0].body;
    assert_eq!(r["job_id"], "never-ran");
    assert_eq!(got[0].routing_key, "job.succeeded", "{r}");
    assert_eq!(r["attempts"], 1);
    let stats = w.stats().await;
    assert_eq!(stats["attempts"]["never-ran"], 1, "the action ran: {stats}");
    assert_eq!(r["execution_id"], stats["keys"]["never-ran"]["executionId"]);
    assert_ne!(r["execution_id"], mark["execution_id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_genuine_retry_copy_published_again_goes_on_where_it_was() {
    let mut w = failing_first().await;
    w.publish(&job("resumed", &w.file("r.pdf", &pdf(100))))
        .await;
    let genuine = retry_copy(&w).await;
    // An operator (or a shovel) puts the very copy back on the jobs queue.
    w.publish_raw(
        genuine.delivery.data.clone(),
        genuine.delivery.properties.clone(),
    )
    .await;
    let got = w.results(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].routing_key, "job.succeeded", "{}", got[0].body);
    assert_eq!(
        got[0].body["attempts"], 2,
        "the second attempt of the same job, not a fresh first"
    );
    assert_eq!(w.stats().await["attempts"]["resumed"], 2);
}

/// Values of every AMQP type a producer may put in a header; the deepest nesting
/// one AMQP frame (128 KiB) holds.
fn hostile_values() -> Vec<(&'static str, AMQPValue)> {
    let deep = (0..18_000).fold(AMQPValue::Boolean(true), |inner, _| {
        let mut t = FieldTable::default();
        t.insert("n".into(), inner);
        AMQPValue::FieldTable(t)
    });
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
    vec![
        ("string", text("99")),
        ("empty", text("")),
        (
            "json",
            text(r#"{"attempts":0,"executed":true,"execution_id":"x"}"#),
        ),
        ("negative", AMQPValue::LongLongInt(-1)),
        ("huge", AMQPValue::LongLongInt(i64::MAX)),
        ("u32max", AMQPValue::LongUInt(u32::MAX)),
        ("float", AMQPValue::Double(1e300)),
        // (A NaN float is refused by RabbitMQ itself at publish: no producer can
        // deliver one.)
        ("float32", AMQPValue::Float(-0.5)),
        ("bool", AMQPValue::Boolean(true)),
        ("void", AMQPValue::Void),
        ("bytes", AMQPValue::ByteArray(vec![0xff; 64].into())),
        (
            "array",
            AMQPValue::FieldArray(vec![text("1"), AMQPValue::LongInt(2)].into()),
        ),
        ("deep", deep),
        ("long", text(&"7".repeat(60_000))),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_header_values_of_every_type_run_each_job_once() {
    let mut w = Worker::new(SimConfig::default(), &[]).await;
    w.start().await;
    let file = w.file("h.pdf", &pdf(50));
    let mut names: Vec<&str> = headers::OWNED.to_vec();
    names.extend([
        headers::DELIVERY_COUNT,
        headers::DLQ_ATTEMPTS,
        headers::ERROR_KIND,
    ]);
    let mut ids = Vec::new();
    for name in &names {
        for (label, value) in hostile_values() {
            let id = format!("{name}-{label}");
            let mut h = FieldTable::default();
            h.insert((*name).into(), value);
            let props = BasicProperties::default().with_headers(h);
            let body = serde_json::to_vec(&json!({"job_id": id, "file": file})).unwrap();
            w.publish_raw(body, props).await;
            ids.push(id);
        }
    }
    let got = w.results(ids.len(), Duration::from_secs(60)).await;
    let stats = w.stats().await;
    for g in &got {
        let id = g.body["job_id"].as_str().unwrap();
        assert_eq!(g.routing_key, "job.succeeded", "{}", g.body);
        assert_eq!(g.body["attempts"], 1, "{id}: {}", g.body);
        assert_eq!(stats["attempts"][id], 1, "{id} executed once");
    }
    assert_eq!(stats["unique_keys"], ids.len());
    w.assert_alive();
}
