//! Chunked uploads through the real binary and broker: a worker killed in the middle
//! of an upload, restarted, finishes it under the same keys.

use std::time::{Duration, Instant};

use cxone_worker::sim::SimConfig;
use serde_json::Value;

use super::harness::{Worker, job, pdf};

async fn uploads(w: &Worker) -> Value {
    reqwest::get(format!("{}/__stats?keys=1&uploads=1", w.sim.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_upload_resumes_under_the_same_keys() {
    let mut w = Worker::new(
        SimConfig {
            max_body: 512_000,
            latency_ms: 150,
            ..SimConfig::default()
        },
        &[
            ("MAX_REQUEST_BYTES", "512000"),
            ("MAX_PAYLOAD_BYTES", "20000000"),
        ],
    )
    .await;
    w.start().await;
    let data = pdf(5_000_000);
    w.publish(&job("killed-1", &w.file("k.pdf", &data))).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let sent_before = loop {
        let received = uploads(&w).await["uploads"]["killed-1"]["received"]
            .as_u64()
            .unwrap_or(0);
        if received >= 3 {
            break received;
        }
        assert!(Instant::now() < deadline, "no chunks:\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    w.kill();
    w.start().await;
    let got = w.results(1, Duration::from_secs(60)).await;
    assert_eq!(got[0].routing_key, "job.succeeded", "{}", got[0].body);
    let stats = uploads(&w).await;
    let upload = &stats["uploads"]["killed-1"];
    assert_eq!(upload["complete"], true, "{upload}");
    assert_eq!(upload["sha256_matches"], true);
    let count = got[0].body["chunk_count"].as_u64().unwrap();
    let keys: Vec<&String> = stats["attempts"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len() as u64, count, "one key per chunk: {keys:?}");
    for i in 0..count {
        assert!(
            stats["attempts"][format!("killed-1#{i}")].as_u64() >= Some(1),
            "chunk {i} under its own key"
        );
    }
    // Whatever went out before the kill may go out again, under the same keys.
    assert!(
        upload["repeats"].as_u64().unwrap() <= sent_before + 1,
        "{upload}"
    );
}
