//! Replays cut short: killed, stopped by SIGINT, or their connection closed by the
//! broker. Every message ends in the DLQ or in the jobs queue, none lost, and at
//! most a confirm window of them in both (same body, same idempotency key).

use std::collections::HashSet;
use std::time::Duration;

use cxone_worker::broker::topology::text;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::broker::{Broker, ago, signal};

/// `n` dead letters d-0000… through the dead-letter exchange.
async fn fill_many(b: &Broker, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("d-{i:04}")).collect();
    let failed_at = ago(Duration::from_secs(60));
    let mut confirms = Vec::with_capacity(n);
    for id in &ids {
        let body = format!(r#"{{"job_id":"{id}","file":"file:///in/{id}.pdf"}}"#);
        let mut h = FieldTable::default();
        h.insert("x-error-kind".into(), text("exhausted"));
        h.insert("x-attempts".into(), AMQPValue::LongLongInt(5));
        h.insert("x-failed-at".into(), text(&failed_at));
        let props = BasicProperties::default()
            .with_headers(h)
            .with_delivery_mode(2);
        // Sent back to back; the confirms are awaited together below.
        let confirm = b
            .channel
            .basic_publish(
                b.topology.dlx().into(),
                "exhausted".into(),
                Default::default(),
                body.as_bytes(),
                props,
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    b.wait_ready(&b.topology.dlq(), n as u32, Duration::from_secs(10))
        .await;
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_mid_way_loses_nothing() {
    const WINDOW: usize = 50;
    let b = Broker::new().await;
    let ids = fill_many(&b, 2000).await;
    let window = WINDOW.to_string();
    let mut child = b
        .cli(&[
            "dlq",
            "replay",
            "--rate",
            "1000",
            "--confirm-window",
            &window,
        ])
        .spawn()
        .unwrap();
    b.wait_at_least(&b.topology.jobs(), 300).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let in_jobs = b.drain_ids(&b.topology.jobs()).await;
    let in_dlq = b.drain_ids(&b.topology.dlq()).await;
    assert!(
        !in_jobs.is_empty() && !in_dlq.is_empty(),
        "killed mid-way: {} moved",
        in_jobs.len()
    );
    let moved: HashSet<&String> = in_jobs.iter().collect();
    let left: HashSet<&String> = in_dlq.iter().collect();
    assert_eq!(moved.len(), in_jobs.len(), "no job replayed twice");
    let all: HashSet<&String> = moved.union(&left).copied().collect();
    assert_eq!(
        all,
        ids.iter().collect(),
        "every message is in the DLQ or back in the jobs queue"
    );
    let both = moved.intersection(&left).count();
    assert!(
        both <= WINDOW,
        "{both} in both queues, more than the window"
    );
    let mut sorted = in_dlq.clone();
    sorted.sort();
    assert_eq!(in_dlq, sorted, "what is left keeps its order");
    eprintln!(
        "{} moved, {} left, {both} in both (same job id, same idempotency key)",
        in_jobs.len(),
        in_dlq.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_stopped_by_sigint_moves_each_message_once() {
    let b = Broker::new().await;
    let ids = fill_many(&b, 1000).await;
    let child = b.cli(&["dlq", "replay", "--rate", "500"]).spawn().unwrap();
    b.wait_at_least(&b.topology.jobs(), 100).await;
    signal(&child, "INT");
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("exhausted 1000\n"),
        "many messages are counted, not listed: {stdout}"
    );
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    let in_jobs = b.drain_ids(&b.topology.jobs()).await;
    let in_dlq = b.drain_ids(&b.topology.dlq()).await;
    assert!(
        stdout.contains(&format!("replayed {} of 1000", in_jobs.len())),
        "{stdout}"
    );
    assert!(!in_jobs.is_empty() && !in_dlq.is_empty());
    assert_eq!(
        in_jobs.len() + in_dlq.len(),
        1000,
        "each message in exactly one queue"
    );
    let mut all: Vec<String> = in_jobs.into_iter().chain(in_dlq).collect();
    all.sort();
    assert_eq!(all, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_whose_connection_the_broker_closes_stops_and_says_so() {
    const WINDOW: usize = 20;
    let b = Broker::new().await;
    let ids = fill_many(&b, 1000).await;
    let window = WINDOW.to_string();
    // Slow enough that the replay is still going when `rabbitmqctl` (seconds to start
    // on a loaded machine) closes its connection.
    let child = b
        .cli(&[
            "dlq",
            "replay",
            "--rate",
            "100",
            "--confirm-window",
            &window,
        ])
        .spawn()
        .unwrap();
    b.wait_at_least(&b.topology.jobs(), 100).await;
    let name = format!("cxone-worker dlq ({})", b.prefix);
    assert!(
        crate::cleanup::close_connection(&name),
        "no connection {name}"
    );
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the replay ends once its connection is gone")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("replay stopped early") || stderr.contains("the broker failed"),
        "{stderr}"
    );

    let in_jobs = b.drain_ids(&b.topology.jobs()).await;
    let in_dlq = b.drain_ids(&b.topology.dlq()).await;
    let moved: HashSet<&String> = in_jobs.iter().collect();
    let left: HashSet<&String> = in_dlq.iter().collect();
    assert_eq!(moved.len(), in_jobs.len(), "no job replayed twice");
    let all: HashSet<&String> = moved.union(&left).copied().collect();
    assert_eq!(all, ids.iter().collect(), "none lost");
    let both = moved.intersection(&left).count();
    assert!(
        both <= WINDOW,
        "{both} in both queues, more than the window"
    );
    assert!(in_jobs.len() < 1000, "stopped, not finished");
}
