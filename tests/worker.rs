//! `cxone-worker run` end to end: the real binary against a real RabbitMQ and the
//! simulator, one random queue prefix per test.

#[path = "worker/chunks.rs"]
mod chunks;
#[path = "support/cleanup.rs"]
mod cleanup;
#[path = "support/worker.rs"]
mod harness;
#[path = "worker/resilience.rs"]
mod resilience;
#[path = "worker/trust.rs"]
mod trust;

use std::time::Duration;

use base64::Engine;
use harness::{Worker, job, pdf};
use lapin::BasicProperties;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use cxone_worker::broker::topology::{header_int, header_text};
use cxone_worker::sim::SimConfig;

const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00";

#[tokio::test(flavor = "multi_thread")]
async fn a_job_succeeds_with_result_record_and_audit_trail() {
    let mut w = Worker::new(SimConfig::default(), &[("AUDIT_EVENTS", "all")]).await;
    w.start().await;
    let data = pdf(50_000);
    let file = w.file("a.pdf", &data);
    w.publish(
        &json!({"job_id": "ok-1", "file": file, "content_type": "application/pdf",
                      "metadata": {"source": "billing", "n": 1}}),
    )
    .await;
    let got = w.results(1, Duration::from_secs(20)).await;
    let r = &got[0].body;
    assert_eq!(got[0].routing_key, "job.succeeded");
    assert_eq!(
        got[0]
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "ok-1"
    );
    let sha = hex::encode(Sha256::digest(&data));
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["sha256"], sha);
    assert_eq!(r["original_size"], data.len());
    assert_eq!(r["encoded_size"], 4 * data.len().div_ceil(3));
    assert_eq!(r["attempts"], 1);
    assert_eq!(r["data_action_id"], "harness-action");
    assert_eq!(r["content_type"], "application/pdf");

    let stats = w.stats().await;
    let key = &stats["keys"]["ok-1"];
    assert_eq!(key["executionId"], r["execution_id"]);
    assert_eq!(key["sha256"], sha);
    assert_eq!(key["metadata"], json!({"source": "billing", "n": 1}));

    let record_path = w.dir.path().join("sync/ok-1.json");
    assert_eq!(
        r["storage_uri"],
        format!("file://{}", record_path.display())
    );
    let record: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(record["execution_id"], r["execution_id"]);
    assert_eq!(record["request_id"], "ok-1");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(record["encoded_data"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, data);

    let audit = w.drain("audit", 10, Duration::from_secs(3)).await;
    let events: Vec<String> = audit
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(&m.delivery.data).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        events,
        ["received", "encoded", "executed", "synced", "succeeded"]
    );
    for m in &audit {
        let text = String::from_utf8_lossy(&m.delivery.data);
        assert!(
            !text.contains(harness::SECRET)
                && !text.contains(&base64::engine::general_purpose::STANDARD.encode(&data[..300]))
        );
    }
    let last: Value = serde_json::from_slice(&audit[4].delivery.data).unwrap();
    assert_eq!(last["stages"].as_object().unwrap().len(), 4, "{last}");
    assert!(
        !w.logs().contains(harness::SECRET),
        "the secret reached the logs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_failure_kind_is_dead_lettered_with_its_reason() {
    let mut w = Worker::new(SimConfig::default(), &[("MAX_PAYLOAD_BYTES", "100000")]).await;
    w.start().await;
    let outside = w.dir.path().join("outside.pdf");
    std::fs::write(&outside, pdf(10)).unwrap();
    std::os::unix::fs::symlink(&outside, w.root().join("link.pdf")).unwrap();
    let root = w.root().display().to_string();
    let cases: Vec<(&str, Value)> = vec![
        (
            "invalid_job",
            json!({"job_id": "k-unknown-field", "file": w.file("u.pdf", &pdf(5)), "fle": 1}),
        ),
        ("invalid_job", json!({"job_id": "k-no-file"})),
        (
            "file_not_found",
            job("k-missing", &format!("file://{root}/missing.pdf")),
        ),
        (
            "file_access_denied",
            job("k-outside", &format!("file://{}", outside.display())),
        ),
        (
            "file_access_denied",
            job("k-dotdot", &format!("file://{root}/../outside.pdf")),
        ),
        (
            "file_access_denied",
            job("k-symlink", &format!("file://{root}/link.pdf")),
        ),
        ("empty_file", job("k-empty", &w.file("empty.pdf", b""))),
        ("too_large", job("k-big", &w.file("big.pdf", &pdf(100_001)))),
        (
            "unsupported_type",
            json!({"job_id": "k-text", "file": w.file("t.txt", b"text"), "content_type": "text/plain"}),
        ),
        (
            "unsupported_type",
            job(
                "k-gif",
                &w.file("a.gif", b"GIF89a\x01\x00\x01\x00\x80\x00\x00"),
            ),
        ),
        (
            "type_mismatch",
            json!({"job_id": "k-mismatch", "file": w.file("p.png", PNG), "content_type": "application/pdf"}),
        ),
        (
            "rejected",
            json!({"job_id": "k-400", "file": w.file("r.pdf", &pdf(5)), "data_action_id": "status-400"}),
        ),
        (
            "forbidden",
            json!({"job_id": "k-403", "file": w.file("f.pdf", &pdf(5)), "data_action_id": "status-403"}),
        ),
    ];
    for (_, j) in &cases {
        w.publish(j).await;
    }
    w.publish_raw(
        b"{not json".to_vec(),
        BasicProperties::default().with_message_id("k-garbage".into()),
    )
    .await;
    let got = w.results(cases.len() + 1, Duration::from_secs(30)).await;
    for g in &got {
        assert_eq!(g.routing_key, "job.failed", "{}", g.body);
        assert_eq!(g.body["status"], "failed");
        assert!(g.body["failed_at"].is_string() && g.body["error"].is_string());
    }
    let kind_of = |id: &str| -> String {
        got.iter()
            .find(|g| g.body["job_id"] == id)
            .map(|g| g.body["error_kind"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no result for {id}"))
    };
    for (kind, j) in &cases {
        assert_eq!(kind_of(j["job_id"].as_str().unwrap()), *kind, "{j}");
    }
    assert_eq!(
        kind_of("k-garbage"),
        "invalid_job",
        "the message_id names a job without job_id"
    );

    let dlq = w
        .drain("jobs.dlq", cases.len() + 1, Duration::from_secs(10))
        .await;
    assert_eq!(dlq.len(), cases.len() + 1);
    for m in &dlq {
        let h = m
            .delivery
            .properties
            .headers()
            .clone()
            .expect("DLQ headers");
        for key in ["x-error-kind", "x-error", "x-attempts", "x-failed-at"] {
            assert!(h.contains_key(key), "{key} missing");
        }
        let body: Value = match serde_json::from_slice(&m.delivery.data) {
            Ok(v) => v,
            Err(_) => {
                assert_eq!(m.delivery.data, b"{not json", "the original body is kept");
                continue;
            }
        };
        let original = cases
            .iter()
            .find(|(_, j)| j["job_id"] == body["job_id"])
            .unwrap();
        assert_eq!(header_text(&h, "x-error-kind").unwrap(), original.0);
        assert_eq!(&body, &original.1, "the DLQ holds the job unchanged");
    }
    assert_eq!(
        w.stats().await["execute_requests"],
        2,
        "only the 400 and 403 jobs reach the API"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_count_attempts_and_keep_the_key() {
    let mut w = Worker::new(
        SimConfig {
            fail_first: 2,
            ..SimConfig::default()
        },
        &[],
    )
    .await;
    w.start().await;
    for i in 0..5 {
        w.publish(&job(
            &format!("retry-{i}"),
            &w.file(&format!("{i}.pdf"), &pdf(100)),
        ))
        .await;
    }
    let got = w.results(5, Duration::from_secs(30)).await;
    let stats = w.stats().await;
    for g in &got {
        assert_eq!(g.routing_key, "job.succeeded");
        assert_eq!(g.body["attempts"], 3, "two 503s then success: {}", g.body);
        assert_eq!(stats["attempts"][g.body["job_id"].as_str().unwrap()], 3);
    }
    assert_eq!(
        stats["unique_keys"], 5,
        "every attempt used the job's own key"
    );
    let audit = w.drain("audit", 100, Duration::from_secs(2)).await;
    let scheduled = audit
        .iter()
        .filter(|m| m.delivery.routing_key.as_str() == "audit.retry_scheduled")
        .count();
    assert_eq!(scheduled, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_that_refuses_pauses_and_the_action_runs_once() {
    let mut w = Worker::new(SimConfig::default(), &[]).await;
    w.start().await;
    // A plain file where the storage directory was: every write is refused
    // (ENOTDIR, even for root) until the test takes it away.
    let sync = w.dir.path().join("sync");
    std::fs::remove_dir(&sync).unwrap();
    std::fs::write(&sync, b"not a directory").unwrap();
    for i in 0..3 {
        w.publish(&job(
            &format!("sync-{i}"),
            &w.file(&format!("s{i}.pdf"), &pdf(2_000)),
        ))
        .await;
    }
    w.wait_not_ready_because("storage endpoint refuses", Duration::from_secs(20))
        .await;
    assert!(
        w.metrics()
            .await
            .contains(r#"cxone_paused{reason="storage_refused"} 1"#)
    );
    assert_eq!(
        w.depth("jobs.dlq").await,
        0,
        "the backlog is not dead-lettered"
    );
    std::fs::remove_file(&sync).unwrap();

    let got = w.results(3, Duration::from_secs(60)).await;
    let stats = w.stats().await;
    for g in &got {
        let r = &g.body;
        let id = r["job_id"].as_str().unwrap();
        assert_eq!(g.routing_key, "job.succeeded", "{r}");
        assert_eq!(r["attempts"], 1, "a storage pause is no attempt: {r}");
        assert_eq!(stats["attempts"][id], 1, "executed once: {stats}");
        let record: Value =
            serde_json::from_slice(&std::fs::read(sync.join(format!("{id}.json"))).unwrap())
                .unwrap();
        assert_eq!(record["execution_id"], r["execution_id"]);
    }
    assert_eq!(w.ready_status().await, Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_jobs_are_dead_lettered_after_max_attempts() {
    let mut w = Worker::new(SimConfig::default(), &[("MAX_ATTEMPTS", "3")]).await;
    w.start().await;
    w.publish(&json!({"job_id": "always-503", "file": w.file("x.pdf", &pdf(10)), "data_action_id": "status-503"})).await;
    let got = w.results(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].body["error_kind"], "exhausted");
    assert_eq!(got[0].body["attempts"], 3);
    assert_eq!(w.stats().await["attempts"]["always-503"], 3);
    let dlq = w.drain("jobs.dlq", 1, Duration::from_secs(5)).await;
    let h = dlq[0].delivery.properties.headers().clone().unwrap();
    assert_eq!(header_int(&h, "x-attempts"), Some(3));
    assert!(
        !h.contains_key("x-cxone-attempts"),
        "the DLQ copy does not carry the internal counter"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_byte_budget_bounds_large_files_in_flight() {
    // Files of 600 KB with a budget of 1.5 MB: at most two are held at once, even
    // with 16 jobs allowed in flight.
    let mut w = Worker::new(
        SimConfig {
            latency_ms: 300,
            ..SimConfig::default()
        },
        &[
            ("WORKER_CONCURRENCY", "16"),
            ("MAX_PAYLOAD_BYTES", "1000000"),
            ("MAX_INFLIGHT_BYTES", "1500000"),
        ],
    )
    .await;
    w.start().await;
    for i in 0..8 {
        w.publish(&job(
            &format!("big-{i}"),
            &w.file(&format!("{i}.pdf"), &pdf(600_000)),
        ))
        .await;
    }
    let got = w.results(8, Duration::from_secs(30)).await;
    assert!(got.iter().all(|g| g.routing_key == "job.succeeded"));
    let stats = w.stats().await;
    let max = stats["max_in_flight"].as_u64().unwrap();
    assert!(
        (1..=2).contains(&max),
        "{max} large files in flight with room for two: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_is_bounded_and_used() {
    let mut w = Worker::new(
        SimConfig {
            latency_ms: 300,
            ..SimConfig::default()
        },
        &[("WORKER_CONCURRENCY", "4")],
    )
    .await;
    w.start().await;
    for i in 0..16 {
        w.publish(&job(
            &format!("c-{i}"),
            &w.file(&format!("{i}.pdf"), &pdf(100)),
        ))
        .await;
    }
    w.results(16, Duration::from_secs(30)).await;
    let max = w.stats().await["max_in_flight"].as_u64().unwrap();
    assert!(
        (3..=4).contains(&max),
        "max in flight {max} with WORKER_CONCURRENCY=4"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_jobs_by_outcome() {
    let mut w = Worker::new(SimConfig::default(), &[]).await;
    w.start().await;
    // Before any job: every metric described, every series there at 0.
    let fresh = w.metrics().await;
    for (name, _, _) in cxone_worker::telemetry::names::ALL {
        assert!(
            fresh.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{fresh}"
        );
    }
    for needle in [
        r#"cxone_jobs_total{outcome="succeeded"} 0"#,
        r#"cxone_jobs_failed_total{error_kind="exhausted"} 0"#,
        r#"cxone_paused{reason="credentials_refused"} 0"#,
        r#"cxone_execute_calls_total{answer="429"} 0"#,
        r#"cxone_job_duration_seconds_count{outcome="retried"} 0"#,
        "cxone_job_retries_total 0",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(
            fresh.contains(needle),
            "{needle} missing at start:\n{fresh}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(fresh.contains(&format!(r#"cxone_build_info{{version="{version}"}} 1"#)));
    assert!(
        !fresh.contains(r#"error_kind="""#),
        "no empty error_kind label"
    );
    w.publish(&job("m-ok", &w.file("ok.pdf", &pdf(10)))).await;
    w.publish(&job("m-missing", "file:///nowhere/at/all.pdf"))
        .await;
    w.results(2, Duration::from_secs(20)).await;
    let text = w.metrics().await;
    for needle in [
        r#"cxone_jobs_total{outcome="succeeded"} 1"#,
        r#"cxone_jobs_total{outcome="failed"} 1"#,
        r#"cxone_jobs_failed_total{error_kind="file_access_denied"} 1"#,
        "cxone_execute_duration_seconds_bucket",
        r#"cxone_token_requests_total{result="ok"} 1"#,
        "cxone_bytes_encoded_total",
        r#"cxone_job_duration_seconds_count{outcome="succeeded"} 1"#,
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from /metrics:\n{text}"
        );
    }
    // The worker reads its queues' depths; the jobs queue has its one consumer.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !w
        .metrics()
        .await
        .contains(r#"cxone_queue_consumers{queue="jobs"} 1"#)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no queue gauges:\n{}",
            w.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_counts_what_the_workers_hold() {
    let mut w = Worker::new(
        SimConfig {
            latency_ms: 3000,
            ..SimConfig::default()
        },
        &[("WORKER_CONCURRENCY", "4")],
    )
    .await;
    w.start().await;
    for i in 0..10 {
        w.publish(&job(
            &format!("s-{i}"),
            &w.file(&format!("{i}.pdf"), &pdf(10)),
        ))
        .await;
    }
    while w.stats().await["in_flight"].as_u64() < Some(4) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cxone-worker"))
        .args(["status", "--json", "--retry-delays", "200ms,400ms"])
        .env("AMQP_URL", harness::amqp_url())
        .env("CXONE_QUEUE_PREFIX", &w.prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["role"] == "jobs")
        .unwrap();
    assert_eq!(
        (
            jobs["ready"].as_u64(),
            jobs["unacked"].as_u64(),
            jobs["consumers"].as_u64()
        ),
        (Some(6), Some(4), Some(1)),
        "{v}"
    );
    let worker = &v["workers"][0];
    assert_eq!(
        (worker["unacked"].as_u64(), worker["prefetch"].as_u64()),
        (Some(4), Some(4)),
        "{v}"
    );
    assert_eq!(worker["consuming"], true);
    assert!(worker["paused"].is_null());
}

/// The `summary` log line of the worker's last run, as JSON fields.
fn summary(logs: &str) -> Value {
    let line = logs
        .lines()
        .rev()
        .find(|l| l.contains(r#""message":"summary""#))
        .expect("a summary at shutdown");
    serde_json::from_str::<Value>(line).unwrap()["fields"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shutdown_summary_counts_what_it_says() {
    let mut w = Worker::new(SimConfig::default(), &[]).await;
    w.start().await;
    let (code, _) = w.stop(Duration::from_secs(10));
    assert_eq!(code, 0);
    let idle = summary(&w.logs());
    assert_eq!(idle["total_executions"], 0, "{idle}");
    assert_eq!(idle["successful_encodings"], 0);
    assert!(
        idle.get("conversion_accuracy_rate").is_none() && idle.get("average_latency_ms").is_none(),
        "a run that completed nothing prints no rate: {idle}"
    );

    // Two files encode and run (one after a 503: two calls), one is refused by
    // type, one names a file that is not there (never encoded).
    w.restart_sim(SimConfig {
        fail_first: 1,
        ..w.sim_config.clone()
    })
    .await;
    w.start().await;
    w.publish(&job("s-1", &w.file("1.pdf", &pdf(10)))).await;
    w.publish(
        &json!({"job_id": "s-2", "file": w.file("2.png", PNG), "content_type": "application/pdf"}),
    )
    .await;
    w.publish(&job(
        "s-3",
        &format!("file://{}/none.pdf", w.root().display()),
    ))
    .await;
    let got = w.results(3, Duration::from_secs(30)).await;
    assert_eq!(
        got.iter()
            .filter(|g| g.routing_key == "job.succeeded")
            .count(),
        1
    );
    w.stop(Duration::from_secs(10));
    let stats = w.stats().await;
    let s = summary(&w.logs());
    assert_eq!(
        s["total_executions"], stats["execute_requests"],
        "API calls: {s}"
    );
    assert_eq!(s["total_executions"], 2);
    assert_eq!(
        s["successful_encodings"], 2,
        "each delivery of s-1 encoded it: {s}"
    );
    assert_eq!(s["failed_encodings"], 1, "{s}");
    assert_eq!(s["conversion_accuracy_rate"], "0.6667");
}
