//! `cxone-worker dlq list | show | replay | purge` against a real RabbitMQ: dead
//! letters of every shape (the worker's headers, RabbitMQ's delivery limit, bodies
//! that are not JSON), every filter, the file each names, listing and showing that
//! leave the queue as it was, replays that restart attempts and count replays, purges
//! that ask first, readers that meet, and replays interrupted by SIGINT (each message
//! moved once) or SIGKILL (nothing lost).

#[path = "support/broker.rs"]
mod broker;
#[path = "support/cleanup.rs"]
mod cleanup;
#[path = "dlq/held.rs"]
mod held;
#[path = "dlq/interrupted.rs"]
mod interrupted;
#[path = "dlq/show.rs"]
mod show;

use std::time::Duration;

use broker::{Broker, ago, signal};
use cxone_worker::broker::topology::{header_int, header_text, text};
use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::Value;
use sha2::{Digest, Sha256};

const BAD_BODY: &[u8] = br#"{"fle":1}"#;

fn bad_body_id() -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(BAD_BODY)))
}

/// Five dead letters, in this order: inv-1 (rejected, 10 minutes ago), inv-2
/// (exhausted, 30 hours ago, with an execution id and a custom header), msg-3 (not
/// JSON, invalid_job, 1 hour ago), sha256:… (unknown field, invalid_job, 50 hours
/// ago), poison-1 (dead-lettered by RabbitMQ at its delivery limit, just now).
/// The state the worker wrote on a dead letter whose action ran once and which
/// was replayed once before.
const INV2_STATE: &str =
    r#"{"attempts":5,"executed":true,"execution_id":"exec-2","replays":1,"dead":true}"#;

async fn fill(b: &Broker) -> Vec<String> {
    let job =
        |id: &str| format!(r#"{{"job_id":"{id}","file":"file:///in/{id}.pdf"}}"#).into_bytes();
    b.dead_letter(
        &job("inv-1"),
        BasicProperties::default(),
        "rejected",
        "the API answered 400",
        1,
        &ago(Duration::from_secs(600)),
    )
    .await;
    let mut h = FieldTable::default();
    h.insert("x-cxone-state".into(), text(INV2_STATE));
    h.insert("x-cxone-state-sig".into(), text(&"ab".repeat(32)));
    // A header of versions before the signed state: never trusted, dropped.
    h.insert("x-cxone-execution-id".into(), text("exec-2"));
    h.insert("custom".into(), text("kept"));
    let props = BasicProperties::default()
        .with_message_id("inv-2".into())
        .with_headers(h);
    b.dead_letter(
        &job("inv-2"),
        props,
        "exhausted",
        "503 Service Unavailable",
        5,
        &ago(Duration::from_secs(30 * 3600)),
    )
    .await;
    let props = BasicProperties::default().with_message_id("msg-3".into());
    b.dead_letter(
        b"{not json",
        props,
        "invalid_job",
        "job is not valid",
        1,
        &ago(Duration::from_secs(3600)),
    )
    .await;
    b.dead_letter(
        BAD_BODY,
        BasicProperties::default(),
        "invalid_job",
        "unknown field `fle`",
        1,
        &ago(Duration::from_secs(50 * 3600)),
    )
    .await;
    b.poison(&job("poison-1")).await;
    vec![
        "inv-1".into(),
        "inv-2".into(),
        "msg-3".into(),
        bad_body_id(),
        "poison-1".into(),
    ]
}

async fn list(b: &Broker, args: &[&str]) -> Vec<Value> {
    let ran = b
        .run(&[&["dlq", "list", "--json"][..], args].concat())
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let v: Value = serde_json::from_str(&ran.stdout).expect("one JSON document");
    v["messages"].as_array().unwrap().clone()
}

async fn list_ids(b: &Broker, args: &[&str]) -> Vec<String> {
    list(b, args)
        .await
        .iter()
        .map(|m| m["job_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_every_dead_letter_and_leaves_the_queue_as_it_was() {
    let b = Broker::new().await;
    let ids = fill(&b).await;
    let all = list(&b, &[]).await;
    assert_eq!(
        all.iter()
            .map(|m| m["job_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ids
    );
    let kinds: Vec<&str> = all
        .iter()
        .map(|m| m["error_kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "rejected",
            "exhausted",
            "invalid_job",
            "invalid_job",
            "delivery_limit"
        ]
    );
    assert_eq!(all[0]["attempts"], 1);
    assert_eq!(all[0]["error"], "the API answered 400");
    assert!(
        (600..700).contains(&all[0]["age_seconds"].as_u64().unwrap()),
        "{}",
        all[0]
    );
    assert_eq!(all[1]["attempts"], 5);
    assert_eq!(all[2]["message_id"], "msg-3");
    assert_eq!(all[4]["dead_lettered_by"], "rabbitmq");
    assert!(
        all[4]["error"]
            .as_str()
            .unwrap()
            .contains(&b.topology.jobs())
    );
    assert!(all[4]["failed_at"].is_string(), "x-death time");
    assert!(all[4]["attempts"].is_null());

    let ran = b.run(&["dlq", "list"]).await;
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(
        lines[0].starts_with("#  JOB ID") && lines[0].contains("REPLAYS  FILE "),
        "{}",
        lines[0]
    );
    let kind_col = lines[0].find("KIND").unwrap();
    let file_col = lines[0].find("FILE").unwrap();
    let error_col = lines[0].find("ERROR").unwrap();
    assert!(file_col < error_col, "FILE before ERROR: {}", lines[0]);
    let files = [
        "file:///in/inv-1.pdf",
        "file:///in/inv-2.pdf",
        "-",
        "-",
        "file:///in/poison-1.pdf",
    ];
    for ((line, kind), file) in lines[1..6].iter().zip(&kinds).zip(files) {
        assert_eq!(
            &line[kind_col..kind_col + kind.len()],
            *kind,
            "aligned: {line}"
        );
        assert_eq!(
            &line[file_col..file_col + file.len()],
            file,
            "aligned: {line}"
        );
    }
    let json_files: Vec<Option<&str>> = all.iter().map(|m| m["file"].as_str()).collect();
    assert_eq!(
        json_files,
        [Some(files[0]), Some(files[1]), None, None, Some(files[4])],
        "null when the body names no file"
    );
    assert_eq!(
        lines[6],
        format!(
            "5 of 5 dead-lettered message(s) in {} match",
            b.topology.dlq()
        )
    );

    // Listed three times: still all there, in the same order, headers untouched.
    let got = b.drain(&b.topology.dlq()).await;
    assert_eq!(got.iter().map(|m| m.job_id()).collect::<Vec<_>>(), ids);
    let h = got[1].props.headers().clone().unwrap();
    assert_eq!(
        header_text(&h, "x-error-kind").as_deref(),
        Some("exhausted")
    );
    assert_eq!(header_int(&h, "x-attempts"), Some(5));
    let count = header_int(got[0].props.headers().as_ref().unwrap(), "x-delivery-count");
    assert!(
        count >= Some(1),
        "read and put back counts as a delivery: {count:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_read_loosely_shown_without_credentials_and_cut_in_the_table_only() {
    let b = Broker::new().await;
    let long = format!(
        "https://svc:hunter2@files.example/{}/invoice-000123.pdf?X-Amz-Signature=abc#frag",
        "backfill/2026/".repeat(6)
    );
    let shown = format!(
        "https://files.example/{}/invoice-000123.pdf",
        "backfill/2026/".repeat(6)
    );
    // Not a valid job (an unknown field, a job_id of the wrong type): the file is
    // still read. A digest id, as backfills have.
    let body = serde_json::json!({"job_id": 7, "file": long, "colour": "red"}).to_string();
    b.dead_letter(
        body.as_bytes(),
        BasicProperties::default(),
        "invalid_job",
        "unknown field `colour`",
        0,
        &ago(Duration::from_secs(5)),
    )
    .await;
    let all = list(&b, &[]).await;
    assert_eq!(
        all[0]["file"],
        shown.as_str(),
        "whole in JSON, without credentials"
    );
    let ran = b.run(&["dlq", "list"]).await;
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let file_col = lines[0].find("FILE").unwrap();
    let cell = lines[1][file_col..].split("  ").next().unwrap();
    assert_eq!(cell.chars().count(), 48, "{cell}");
    assert!(
        cell.starts_with("https://files.")
            && cell.contains('…')
            && cell.ends_with("invoice-000123.pdf"),
        "{cell}"
    );
    assert!(!ran.stdout.contains("hunter2") && !ran.stdout.contains("Signature"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_selects_and_none_disturbs_the_order() {
    let b = Broker::new().await;
    let ids = fill(&b).await;
    let pick = |ix: &[usize]| ix.iter().map(|i| ids[*i].clone()).collect::<Vec<_>>();
    assert_eq!(list_ids(&b, &["--kind", "rejected"]).await, pick(&[0]));
    assert_eq!(
        list_ids(&b, &["--kind", "invalid_job,delivery_limit"]).await,
        pick(&[2, 3, 4])
    );
    assert_eq!(
        list_ids(&b, &["--kind", "invalid_job", "--kind", "exhausted"]).await,
        pick(&[1, 2, 3])
    );
    assert_eq!(list_ids(&b, &["--job-id", "inv-2"]).await, pick(&[1]));
    assert_eq!(
        list_ids(&b, &["--job-id", &bad_body_id()]).await,
        pick(&[3])
    );
    assert_eq!(
        list_ids(&b, &["--job-id", "msg-3,poison-1", "--kind", "invalid_job"]).await,
        pick(&[2])
    );
    assert_eq!(list_ids(&b, &["--since", "2h"]).await, pick(&[0, 2, 4]));
    assert_eq!(
        list_ids(&b, &["--since", &ago(Duration::from_secs(40 * 3600))]).await,
        pick(&[0, 1, 2, 4])
    );
    assert_eq!(list_ids(&b, &["--since", "3d"]).await, ids);
    assert_eq!(list_ids(&b, &["--limit", "2"]).await, pick(&[0, 1]));
    assert_eq!(
        list_ids(&b, &["--kind", "invalid_job", "--limit", "1"]).await,
        pick(&[2])
    );
    assert!(list_ids(&b, &["--kind", "forbidden"]).await.is_empty());
    let ran = b.run(&["dlq", "list", "--kind", "exausted"]).await;
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr
            .starts_with("cxone-worker: --kind: \"exausted\" is not one of"),
        "{}",
        ran.stderr
    );
    assert_eq!(b.run(&["dlq", "list", "--since", "soon"]).await.code, 2);
    assert_eq!(
        b.drain_ids(&b.topology.dlq()).await,
        ids,
        "nothing lost or reordered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_moves_the_selection_back_with_a_fresh_attempt_count() {
    let b = Broker::new().await;
    let ids = fill(&b).await;
    let (jobs, dlq) = (b.topology.jobs(), b.topology.dlq());

    let ran = b
        .run(&[
            "dlq",
            "replay",
            "--kind",
            "exhausted,delivery_limit",
            "--dry-run",
        ])
        .await;
    assert_eq!(ran.code, 0);
    assert!(
        ran.stdout.contains("2 of 5 dead-lettered message(s)")
            && ran.stdout.contains("would be replayed")
    );
    // What the command held goes back when its channel closes; a quorum queue
    // applies those returns a moment after the process is gone.
    b.wait_ready(&dlq, 5, Duration::from_secs(5)).await;
    assert_eq!(b.ready(&jobs).await, 0, "a dry run moves nothing");

    let ran = b
        .run(&["dlq", "replay", "--kind", "exhausted,delivery_limit"])
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stdout.contains(&format!("replayed 2 of 2 to {jobs}")),
        "{}",
        ran.stdout
    );
    let back = b.drain(&jobs).await;
    assert_eq!(
        back.iter().map(|m| m.job_id()).collect::<Vec<_>>(),
        [ids[1].clone(), ids[4].clone()]
    );
    let inv2 = &back[0];
    assert_eq!(inv2.props.message_id().as_ref().unwrap().as_str(), "inv-2");
    assert_eq!(inv2.json()["job_id"], "inv-2", "the body is unchanged");
    let mut keys = inv2.header_keys();
    keys.retain(|k| k != "x-delivery-count");
    assert_eq!(
        keys,
        ["custom", "x-cxone-state", "x-cxone-state-sig"],
        "the worker's signed state travels untouched (the worker counts the replay \
         when the dead letter comes back); failure and legacy headers go"
    );
    assert_eq!(inv2.header("x-cxone-state"), Some(&text(INV2_STATE)));
    let poison = &back[1];
    assert!(poison.header("x-death").is_none() && poison.header("x-first-death-reason").is_none());
    assert_eq!(
        b.drain_ids(&dlq).await,
        [ids[0].clone(), ids[2].clone(), ids[3].clone()],
        "the rest in order"
    );

    // Dead-lettered again with the same state, it is replayed the same way.
    b.dead_letter(
        &inv2.body,
        inv2.props.clone(),
        "exhausted",
        "503 again",
        5,
        &ago(Duration::ZERO),
    )
    .await;
    b.dead_letter(
        b"{}",
        BasicProperties::default(),
        "rejected",
        "400",
        1,
        &ago(Duration::ZERO),
    )
    .await;
    assert_eq!(list(&b, &["--job-id", "inv-2"]).await[0]["replays"], 1);
    let ran = b.run(&["dlq", "replay", "--limit", "1", "--json"]).await;
    let docs: Vec<Value> = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        (docs[0]["selected"].clone(), docs[0]["total"].clone()),
        (1.into(), 2.into())
    );
    assert_eq!(
        docs[1],
        serde_json::json!({"replayed": 1, "failed": [], "not_attempted": 0, "interrupted": false, "broker_error": null})
    );
    let again = b.drain(&jobs).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].header("x-cxone-state"), Some(&text(INV2_STATE)));
    b.wait_ready(&dlq, 1, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_asks_first_unless_told_yes() {
    let b = Broker::new().await;
    let ids = fill(&b).await;
    let dlq = b.topology.dlq();
    for answer in [&b"n\n"[..], b"", b"yes please\n"] {
        let ran = b
            .run_with_input(&["dlq", "purge", "--kind", "invalid_job"], Some(answer))
            .await;
        assert_eq!(ran.code, 1, "answer {:?}", String::from_utf8_lossy(answer));
        assert!(
            ran.stderr.contains(&format!(
                "Delete these 2 message(s) from {dlq} for good? [y/N]"
            )),
            "{}",
            ran.stderr
        );
        assert!(ran.stdout.contains("nothing purged"));
        b.wait_ready(&dlq, 5, Duration::from_secs(5)).await;
    }
    let ran = b
        .run_with_input(&["dlq", "purge", "--kind", "invalid_job"], Some(b"y\n"))
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stdout.contains("purged 2 message(s)"));
    let ran = b.run(&["dlq", "purge", "--yes", "--job-id", "inv-1"]).await;
    assert_eq!(ran.code, 0);
    assert!(!ran.stderr.contains("[y/N]"));
    let ran = b
        .run(&["dlq", "purge", "--yes", "--kind", "forbidden"])
        .await;
    assert_eq!(ran.code, 0, "nothing selected, nothing to do");
    assert_eq!(b.drain_ids(&dlq).await, [ids[1].clone(), ids[4].clone()]);
}

const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n";

/// End to end: jobs enqueued by `enqueue`, failed by the real worker against the
/// simulator, listed from the DLQ with the headers the worker wrote, and replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_dead_letters_are_listed_and_replayed() {
    let b = Broker::new().await;
    let sim = cxone_worker::sim::spawn(cxone_worker::sim::SimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let pdf = root.join("a.pdf");
    std::fs::write(&pdf, PDF).unwrap();
    let ran = b
        .run(&[
            "enqueue",
            pdf.to_str().unwrap(),
            "--data-action-id",
            "status-400",
        ])
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let missing = format!(
        "{{\"job_id\":\"gone-1\",\"file\":\"file://{}/missing.pdf\"}}\n",
        root.display()
    );
    let ran = b
        .run_with_input(&["enqueue", "--manifest", "-"], Some(missing.as_bytes()))
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);

    let worker = b.worker(&sim.url(), "test-secret", &root);
    let dlq = b.topology.dlq();
    b.wait_ready(&dlq, 2, Duration::from_secs(30)).await;

    let letters = list(&b, &[]).await;
    let mut kinds: Vec<(String, String)> = letters
        .iter()
        .map(|m| {
            (
                m["job_id"].as_str().unwrap().to_owned(),
                m["error_kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    kinds.sort();
    assert!(
        kinds[0].0.starts_with("file-") && kinds[0].1 == "rejected",
        "{kinds:?}"
    );
    assert_eq!(kinds[1], ("gone-1".to_owned(), "file_not_found".to_owned()));
    for m in &letters {
        // Execution attempts: none for a file that was never read.
        let attempts = if m["error_kind"] == "rejected" { 1 } else { 0 };
        assert_eq!(m["attempts"], attempts, "{m}");
        assert_eq!(m["dead_lettered_by"], "worker");
        assert!(m["failed_at"].is_string() && m["age_seconds"].as_u64().unwrap() < 60);
    }

    // Replayed, the job fails again at the worker, and its DLQ copy counts the replay.
    let ran = b.run(&["dlq", "replay", "--kind", "rejected"]).await;
    assert!(ran.stdout.contains("replayed 1 of 1"), "{}", ran.stdout);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let again = list(&b, &["--kind", "rejected"]).await;
        if again.len() == 1 && again[0]["replays"] == 1 {
            assert_eq!(
                again[0]["job_id"],
                kinds[0].0.as_str(),
                "the same job, the same key"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replayed job never came back: {again:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(&worker, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(status.status.success());
}
