//! `dlq show`: one dead letter printed whole (its fields, properties, every header of
//! any AMQP type, its body as JSON, text or hex), every letter that shares an id, and
//! the DLQ left exactly as it was; and a reader that meets another one says what it
//! could not see.

use std::time::Duration;

use cxone_worker::broker::topology::text;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable};
use serde_json::{Value, json};

use super::broker::{Broker, ago};
use super::held::hold_dlq;

const SECRET_FILE: &str = "https://ops:pw@files.example/a/b/inv-7.pdf?sig=secret";
const BINARY: &[u8] = b"\x89PNG\r\n\x1a\n\x00\xff";

fn custom_headers() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("a".into(), AMQPValue::LongInt(5));
    nested.insert(
        "list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![text("x"), AMQPValue::Boolean(true)])),
    );
    let mut h = FieldTable::default();
    h.insert("x-cxone-state".into(), text("v1.abc.sig"));
    h.insert("nested".into(), AMQPValue::FieldTable(nested));
    h.insert("stamp".into(), AMQPValue::Timestamp(1_767_225_600));
    h.insert("ratio".into(), AMQPValue::Double(0.25));
    h.insert(
        "raw".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![1u8, 2, 3])),
    );
    h.insert("flag".into(), AMQPValue::Boolean(false));
    h.insert("nothing".into(), AMQPValue::Void);
    h.insert(
        "price".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 1234,
        }),
    );
    h
}

/// In this order: inv-7 (rejected, every header type, a file with a password and a
/// signed query), dup-1 (exhausted), bin-1 (a body that is not UTF-8), dup-1 again
/// (failed again after a replay), poison-1 (dead-lettered by RabbitMQ).
async fn fill(b: &Broker) -> Vec<String> {
    let body = json!({"job_id": "inv-7", "file": SECRET_FILE, "content_type": "application/pdf"});
    let props = BasicProperties::default()
        .with_message_id("inv-7".into())
        .with_correlation_id("c-7".into())
        .with_app_id("billing".into())
        .with_headers(custom_headers());
    let failed_at = ago(Duration::from_secs(120));
    let error = "the API answered 400: {\"error\":\"x\"}\nsecond line";
    b.dead_letter(
        body.to_string().as_bytes(),
        props,
        "rejected",
        error,
        1,
        &failed_at,
    )
    .await;
    let dup = br#"{"job_id":"dup-1","file":"file:///in/dup.pdf"}"#;
    b.dead_letter(
        dup,
        BasicProperties::default(),
        "exhausted",
        "503",
        5,
        &failed_at,
    )
    .await;
    let props = BasicProperties::default().with_message_id("bin-1".into());
    b.dead_letter(BINARY, props, "invalid_job", "not JSON", 0, &failed_at)
        .await;
    let mut h = FieldTable::default();
    // The worker's state on its DLQ copy counts the replays.
    h.insert(
        "x-cxone-state".into(),
        AMQPValue::LongString(r#"{"attempts":5,"replays":1,"dead":true}"#.into()),
    );
    let props = BasicProperties::default().with_headers(h);
    b.dead_letter(dup, props, "exhausted", "503 again", 5, &failed_at)
        .await;
    b.poison(br#"{"job_id":"poison-1","file":"file:///in/p.pdf"}"#)
        .await;
    ["inv-7", "dup-1", "bin-1", "dup-1", "poison-1"]
        .map(String::from)
        .to_vec()
}

fn has_line(out: &str, line: &str) {
    assert!(
        out.lines().any(|l| l == line),
        "{line:?} missing from:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_a_dead_letter_whole_as_text_or_json() {
    let b = Broker::new().await;
    let ids = fill(&b).await;
    let dlq = b.topology.dlq();

    let ran = b.run(&["dlq", "show", "inv-7"]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let out = &ran.stdout;
    has_line(
        out,
        &format!("== dead letter 1 of 1 with job id \"inv-7\" in {dlq} =="),
    );
    for line in [
        "job id           \"inv-7\"",
        "position         0",
        "error kind       \"rejected\"",
        r#"error            "the API answered 400: {\"error\":\"x\"}\nsecond line""#,
        "attempts         1",
        "replays          0",
        "file             \"https://files.example/a/b/inv-7.pdf\"",
        "message id       \"inv-7\"",
        "dead-lettered by worker",
        "  correlation_id: \"c-7\"",
        "  app_id: \"billing\"",
        "  delivery_mode: 2",
        "  x-cxone-state: \"v1.abc.sig\"",
        "  nested:",
        "    a: 5",
        "    list:",
        "      [0]: \"x\"",
        "      [1]: true",
        "  stamp: 1767225600 (2026-01-01T00:00:00Z)",
        "  ratio: 0.25",
        "  raw: 3 bytes (byte array): 010203",
        "  flag: false",
        "  nothing: void",
        "  price: 12.34",
        "  x-error-kind: \"rejected\"",
        "  x-attempts: 1",
        // The body as the producer sent it (key order and all), but its credentials.
        "  \"file\": \"https://files.example/a/b/inv-7.pdf\",",
        "  \"job_id\": \"inv-7\"",
    ] {
        has_line(out, line);
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("failed at        ") && l.contains(" (2m0")),
        "{out}"
    );
    assert!(
        out.contains(" bytes, JSON (its file without credentials, as outputs show it; --raw shows it as stored)\n{\n"),
        "{out}"
    );

    let ran = b.run(&["dlq", "show", "inv-7", "--json"]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let v: Value = serde_json::from_str(&ran.stdout).expect("one JSON document");
    assert_eq!(
        (v["count"].clone(), v["total"].clone()),
        (1.into(), 5.into())
    );
    let m = &v["messages"][0];
    assert_eq!(m["file"], "https://files.example/a/b/inv-7.pdf");
    assert_eq!(m["error_kind"], "rejected");
    assert_eq!(m["dead_lettered_by"], "worker");
    assert_eq!(m["properties"]["correlation_id"], "c-7");
    assert_eq!(m["headers"]["nested"]["list"], json!(["x", true]));
    assert_eq!(m["headers"]["raw"], json!({"base64": "AQID"}));
    assert_eq!(m["headers"]["price"], "12.34");
    assert!(m["headers"]["nothing"].is_null());
    assert_eq!(m["headers"]["stamp"]["utc"], "2026-01-01T00:00:00Z");
    assert_eq!(m["body"]["json"]["job_id"], "inv-7");
    assert_eq!(
        m["body"]["json"]["file"],
        "https://files.example/a/b/inv-7.pdf"
    );
    assert!(!ran.stdout.contains("ops:pw") && !ran.stdout.contains("sig=secret"));
    // Asked for, the body as stored.
    let ran = b.run(&["dlq", "show", "inv-7", "--raw"]).await;
    has_line(&ran.stdout, &format!("  \"file\": \"{SECRET_FILE}\","));
    b.wait_ready(&dlq, 5, Duration::from_secs(5)).await;
    assert_eq!(b.drain_ids(&dlq).await, ids, "nothing lost or reordered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_finds_each_letter_of_an_id_or_a_position_and_leaves_the_queue_as_it_was() {
    let b = Broker::new().await;
    let ids = fill(&b).await;
    let dlq = b.topology.dlq();

    // Two dead letters share an id: both are shown, and said so.
    let ran = b.run(&["dlq", "show", "dup-1"]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    for i in 1..=2 {
        has_line(
            &ran.stdout,
            &format!("== dead letter {i} of 2 with job id \"dup-1\" in {dlq} =="),
        );
    }
    has_line(&ran.stdout, "position         1");
    has_line(&ran.stdout, "position         3");
    has_line(&ran.stdout, "replays          1");

    let ran = b.run(&["dlq", "show", "--position", "2"]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    has_line(&ran.stdout, "body: 10 bytes, binary (not UTF-8)");
    has_line(
        &ran.stdout,
        "00000000  89 50 4e 47 0d 0a 1a 0a  00 ff                    |.PNG......|",
    );
    let ran = b.run(&["dlq", "show", "--position", "4"]).await;
    has_line(&ran.stdout, "dead-lettered by RabbitMQ");
    has_line(&ran.stdout, "error kind       \"delivery_limit\"");
    has_line(&ran.stdout, "      reason: \"delivery_limit\"");

    let ran = b.run(&["dlq", "show", "nope"]).await;
    assert_eq!(ran.code, 1);
    assert_eq!(
        ran.stderr,
        format!("cxone-worker: no dead letter with job id \"nope\" in {dlq} (5 read)\n")
    );
    let ran = b.run(&["dlq", "show", "--position", "99"]).await;
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr.contains("no dead letter at position 99"),
        "{}",
        ran.stderr
    );
    assert_eq!(b.run(&["dlq", "show"]).await.code, 2, "an id or a position");
    assert_eq!(
        b.run(&["dlq", "show", "a", "--position", "1"]).await.code,
        2
    );

    // Shown six times: all there, in order, every header as it was published.
    b.wait_ready(&dlq, 5, Duration::from_secs(5)).await;
    let got = b.drain(&dlq).await;
    assert_eq!(got.iter().map(|m| m.job_id()).collect::<Vec<_>>(), ids);
    let mut keys = got[0].header_keys();
    keys.retain(|k| k != "x-delivery-count");
    let mut want: Vec<String> = custom_headers()
        .inner()
        .keys()
        .map(|k| k.as_str().to_owned())
        .chain(["x-attempts", "x-error", "x-error-kind", "x-failed-at"].map(String::from))
        .collect();
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(
        got[0].header("nested"),
        custom_headers().inner().get("nested"),
        "nested tables untouched"
    );
    assert_eq!(got[2].body, BINARY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_meets_another_says_what_it_could_not_see() {
    let b = Broker::new().await;
    fill(&b).await;
    let dlq = b.topology.dlq();
    let holder = hold_dlq(&b).await;

    let ran = b.run(&["dlq", "list"]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout.lines().last().unwrap(),
        format!(
            "0 of 0 dead-lettered message(s) in {dlq} match; messages held by another reader \
             (dlq purge) were not seen"
        )
    );
    let ran = b.run(&["dlq", "list", "--json"]).await;
    let v: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(v["held_by_other_readers"], json!(["dlq purge"]));
    let ran = b.run(&["dlq", "show", "inv-7"]).await;
    assert_eq!(ran.code, 1);
    assert_eq!(
        ran.stderr,
        format!(
            "cxone-worker: no dead letter with job id \"inv-7\" in {dlq} (0 read); messages held \
             by another reader (dlq purge) were not seen\n"
        )
    );

    let purge = holder.decline().await;
    assert!(purge.contains("nothing purged"), "{purge}");
    b.wait_ready(&dlq, 5, Duration::from_secs(5)).await;
    let ran = b.run(&["dlq", "list", "--json"]).await;
    let v: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(v["selected"], 5);
    assert_eq!(v["held_by_other_readers"], json!([]));
}
