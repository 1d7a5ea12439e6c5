//! Failures that are not the jobs' fault: refused credentials, an unreachable API, a
//! lost broker connection, shutdown and crashes. Nothing is dead-lettered, nothing lost.

use std::time::Duration;

use cxone_worker::sim::SimConfig;
use serde_json::json;

use super::harness::{SECRET, Worker, close_worker_connection, job, pdf};
use cxone_worker::broker::topology::{JOBS_DELIVERY_LIMIT, header_int, header_text, headers};
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_fails_readiness_before_any_job_is_taken() {
    let wrong = SimConfig {
        client_secret: "another-secret".into(),
        ..SimConfig::default()
    };
    let mut w = Worker::new(SimConfig::default(), &[]).await;
    w.restart_sim(SimConfig {
        client_id: "harness".into(),
        ..wrong
    })
    .await;
    w.spawn();
    w.wait_topology().await;
    for i in 0..6 {
        w.publish(&job(
            &format!("cred-{i}"),
            &w.file(&format!("{i}.pdf"), &pdf(10)),
        ))
        .await;
    }
    // A rollout with a wrong secret: not ready from its first second, with the
    // reason, and no job taken.
    w.wait_not_ready_because("refuses the client credentials", Duration::from_secs(15))
        .await;
    let stats = w.stats().await;
    assert!(stats["token_rejected"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["execute_requests"], 0, "no job was taken: {stats}");
    assert_eq!(w.depth("jobs").await, 6);
    assert_eq!(
        w.consumers("jobs").await,
        0,
        "a paused worker does not consume"
    );
    assert_eq!(w.depth("jobs.dlq").await, 0);
    assert!(
        w.metrics()
            .await
            .contains(r#"cxone_paused{reason="credentials_refused"} 1"#)
    );

    // The credentials are accepted again: the worker starts by itself.
    w.restart_sim(SimConfig {
        client_id: "harness".into(),
        client_secret: SECRET.into(),
        ..SimConfig::default()
    })
    .await;
    let got = w.results(6, Duration::from_secs(60)).await;
    assert!(got.iter().all(|g| g.routing_key == "job.succeeded"));
    assert_eq!(w.ready_status().await, Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_met_while_running_pause_and_resume() {
    let mut w = Worker::new(SimConfig::default(), &[]).await;
    w.start().await;
    let good = w.sim_config.clone();
    // The secret is revoked: the cached token stops working, the refresh is refused.
    w.restart_sim(SimConfig {
        client_secret: "revoked".into(),
        ..good.clone()
    })
    .await;
    w.publish(&job("revoked-1", &w.file("r.pdf", &pdf(10))))
        .await;
    w.wait_not_ready_because("refuses the client credentials", Duration::from_secs(15))
        .await;
    assert_eq!(w.depth("jobs.dlq").await, 0);
    w.restart_sim(good).await;
    let got = w.results(1, Duration::from_secs(60)).await;
    assert_eq!(got[0].routing_key, "job.succeeded");
    assert_eq!(got[0].body["attempts"], 1, "a hand-back is no attempt");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pause_reason_follows_the_latest_probe() {
    let mut w = Worker::new(SimConfig::default(), &[("CXONE_UNREACHABLE_AFTER", "1")]).await;
    w.start().await;
    let good = w.sim_config.clone();
    w.stop_sim().await;
    w.publish(&job("probe-1", &w.file("p.pdf", &pdf(10)))).await;
    w.wait_not_ready_because("unreachable", Duration::from_secs(30))
        .await;
    // The API answers again, but refuses the credentials: so says /readyz now.
    w.restart_sim(SimConfig {
        client_secret: "another-secret".into(),
        ..good.clone()
    })
    .await;
    w.wait_not_ready_because("refuses the client credentials", Duration::from_secs(40))
        .await;
    w.restart_sim(good).await;
    let got = w.results(1, Duration::from_secs(60)).await;
    assert_eq!(got[0].routing_key, "job.succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_url_that_gives_no_token_is_called_a_wrong_url() {
    let mut w = Worker::new(SimConfig::default(), &[]).await;
    let wrong = format!("{}/not-the-api", w.sim.url());
    w.env.insert("CXONE_API_URL".into(), wrong);
    w.spawn();
    w.wait_not_ready_because("not as a token endpoint", Duration::from_secs(15))
        .await;
    assert!(
        w.logs().contains("404"),
        "the answer is in the log:\n{}",
        w.logs()
    );
    assert!(
        w.metrics()
            .await
            .contains(r#"cxone_paused{reason="token_endpoint_invalid"} 1"#)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_declared_with_other_arguments_ends_run_with_one_line() {
    let mut w = Worker::new(SimConfig::default(), &[]).await;
    // An operator declared the jobs queue as a classic queue beforehand.
    let ch = w.conn.create_channel().await.unwrap();
    ch.queue_declare(
        w.q("jobs").into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    w.spawn();
    let code = w.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 2, "{}", w.logs());
    let logs = w.logs();
    let last = logs
        .lines()
        .find(|l| l.starts_with("cxone-worker: "))
        .unwrap_or_default();
    assert!(
        last.starts_with("cxone-worker: queue ") && last.contains(&w.q("jobs")),
        "one line naming the queue: {logs}"
    );
    assert!(
        last.contains("x-queue-type") || last.contains("inequivalent arg"),
        "{last}"
    );
    assert_eq!(w.logs().matches("cxone-worker: ").count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_virtual_host_the_broker_refuses_ends_run_with_one_line() {
    let mut w = Worker::new(SimConfig::default(), &[]).await;
    let url = crate::cleanup::amqp_url();
    let (base, _) = url.rsplit_once('/').unwrap();
    w.env
        .insert("AMQP_URL".into(), format!("{base}/no-such-vhost"));
    w.spawn();
    let code = w.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 2, "{}", w.logs());
    let logs = w.logs();
    let ours: Vec<_> = logs
        .lines()
        .filter(|l| l.starts_with("cxone-worker: "))
        .collect();
    assert_eq!(ours.len(), 1, "one line: {logs}");
    assert!(
        ours[0].starts_with("cxone-worker: the broker refuses access to the virtual host"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_api_pauses_instead_of_spending_attempts() {
    let mut w = Worker::new(
        SimConfig::default(),
        &[("CXONE_UNREACHABLE_AFTER", "2"), ("MAX_ATTEMPTS", "2")],
    )
    .await;
    w.start().await;
    w.publish(&job("warm", &w.file("w.pdf", &pdf(10)))).await;
    w.results(1, Duration::from_secs(10)).await;
    let config = w.sim_config.clone();
    w.stop_sim().await;
    for i in 0..6 {
        w.publish(&job(
            &format!("down-{i}"),
            &w.file(&format!("{i}.pdf"), &pdf(10)),
        ))
        .await;
    }
    w.wait_readyz(503, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w.depth("jobs.dlq").await,
        0,
        "an outage must not exhaust the backlog"
    );
    w.restart_sim(config).await;
    let got = w.results(6, Duration::from_secs(90)).await;
    assert!(
        got.iter().all(|g| g.routing_key == "job.succeeded"),
        "every job succeeds once the API is back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_connection_is_rebuilt_without_a_restart() {
    let mut w = Worker::new(SimConfig::default(), &[]).await;
    w.start().await;
    w.publish(&job("before", &w.file("b.pdf", &pdf(10)))).await;
    w.results(1, Duration::from_secs(10)).await;
    assert!(
        close_worker_connection(&w.prefix),
        "the worker's connection was not found"
    );
    // Jobs published while the worker reconnects are consumed once it is back.
    for i in 0..5 {
        w.publish(&job(
            &format!("after-{i}"),
            &w.file(&format!("{i}.pdf"), &pdf(10)),
        ))
        .await;
    }
    let got = w.results(5, Duration::from_secs(60)).await;
    assert!(got.iter().all(|g| g.routing_key == "job.succeeded"));
    w.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(
        w.consumers("jobs").await,
        1,
        "exactly one consumer after the reconnection"
    );
    assert!(w.logs().contains("reconnecting"), "the loss is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_jobs_in_flight_finish() {
    let mut w = Worker::new(
        SimConfig {
            latency_ms: 1500,
            ..SimConfig::default()
        },
        &[],
    )
    .await;
    w.start().await;
    for i in 0..6 {
        w.publish(&job(
            &format!("g-{i}"),
            &w.file(&format!("{i}.pdf"), &pdf(10)),
        ))
        .await;
    }
    while w.stats().await["in_flight"].as_u64() == Some(0) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, took) = w.stop(Duration::from_secs(25));
    assert_eq!(code, 0, "{}", w.logs());
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    let got = w.results(6, Duration::from_secs(5)).await;
    assert!(got.iter().all(|g| g.routing_key == "job.succeeded"));
    assert!(
        w.logs().contains("successful_encodings"),
        "the summary is logged at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_still_running_after_the_grace_period_are_handed_back() {
    let mut w = Worker::new(
        SimConfig {
            latency_ms: 10_000,
            ..SimConfig::default()
        },
        &[("SHUTDOWN_GRACE", "1s")],
    )
    .await;
    w.start().await;
    for i in 0..4 {
        w.publish(&job(
            &format!("h-{i}"),
            &w.file(&format!("{i}.pdf"), &pdf(10)),
        ))
        .await;
    }
    while w.stats().await["in_flight"].as_u64() < Some(4) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, took) = w.stop(Duration::from_secs(15));
    assert_eq!(code, 0);
    assert!(
        took < Duration::from_secs(5),
        "the grace period is 1 s, shutdown took {took:?}"
    );
    assert_eq!(
        w.depth("jobs").await,
        4,
        "every unfinished job is back in the queue"
    );
    assert!(
        w.drain("results", 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loses_nothing_and_executes_under_one_key() {
    let mut w = Worker::new(
        SimConfig {
            latency_ms: 20,
            ..SimConfig::default()
        },
        &[],
    )
    .await;
    w.start().await;
    let n = 60;
    for i in 0..n {
        w.publish(&job(
            &format!("crash-{i}"),
            &w.file(&format!("{i}.pdf"), &pdf(100)),
        ))
        .await;
    }
    let mut ids: std::collections::HashSet<String> = w
        .results(10, Duration::from_secs(20))
        .await
        .into_iter()
        .map(|g| g.body["job_id"].as_str().unwrap().to_owned())
        .collect();
    w.kill();
    w.start().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ids.len() < n && std::time::Instant::now() < deadline {
        for m in w.drain("results", 1000, Duration::from_secs(1)).await {
            let v: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
            ids.insert(v["job_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), n, "{} jobs never got a result", n - ids.len());
    let stats = w.stats().await;
    let keys = stats["keys"].as_object().unwrap();
    assert_eq!(keys.len(), n, "one key per job at the API");
    assert!(
        keys.keys().all(|k| k.starts_with("crash-")),
        "{}",
        json!(keys.keys().collect::<Vec<_>>())
    );
    assert_eq!(w.depth("jobs.dlq").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_never_answers_does_not_hold_up_shutdown() {
    // Accepts TCP and says nothing: the AMQP handshake never completes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", silent.local_addr().unwrap());
    let mut w = Worker::new(SimConfig::default(), &[("AMQP_URL", &url)]).await;
    w.spawn();
    // Wait until the worker's connection arrives: from then on it is stuck in the
    // handshake.
    silent.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let _held = loop {
        match silent.accept() {
            Ok((socket, _)) => break socket,
            Err(_) => {
                w.assert_alive();
                assert!(
                    std::time::Instant::now() < deadline,
                    "the worker never connected"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(
        w.ready_status().await,
        Some(503),
        "not connected, not ready"
    );
    let (code, took) = w.stop(Duration::from_secs(10));
    assert_eq!(code, 0, "{}", w.logs());
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    drop(silent);
}

/// Takes the one job off `P.jobs` and requeues it `n` times, as `n` pauses or
/// restarts would; returns the broker's delivery count and the carried returns
/// seen on the last delivery.
async fn requeue_times(w: &Worker, n: usize) -> (i64, i64) {
    let mut seen = (0, 0);
    for _ in 0..n {
        let got = w
            .channel
            .basic_get(w.q("jobs").into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("the job is in P.jobs");
        let h = got
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let returns = header_text(&h, headers::STATE)
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|state| state["returns"].as_i64())
            .unwrap_or(0);
        seen = (
            header_int(&h, headers::DELIVERY_COUNT).unwrap_or(0),
            returns,
        );
        got.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
    }
    seen
}

/// Waits until the worker has paused `n` times in all its runs, holding nothing.
async fn wait_paused(w: &mut Worker, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while w.logs().matches("pausing: not the jobs' fault").count() < n
        || w.consumers("jobs").await > 0
        || w.depth("jobs").await < 1
    {
        w.assert_alive();
        assert!(
            std::time::Instant::now() < deadline,
            "no pause #{n}:\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_pauses_never_spend_the_delivery_limit() {
    // Every requeue counts toward the jobs queue's x-delivery-limit; a job handed
    // back more often than that for reasons not its own must still not die. A
    // redirect from the API (the simulator's `status-302`) is not the job's fault:
    // it pauses the worker and hands the job back.
    let mut w = Worker::new(
        SimConfig::default(),
        &[("CXONE_DATA_ACTION_ID", "status-302")],
    )
    .await;
    w.start().await;
    w.publish(&job("returns-1", &w.file("r.pdf", &pdf(10))))
        .await;
    wait_paused(&mut w, 1).await;
    w.stop(Duration::from_secs(10));
    let limit = usize::try_from(JOBS_DELIVERY_LIMIT).unwrap();
    let (count, _) = requeue_times(&w, limit - 3).await;
    assert_eq!(
        count,
        JOBS_DELIVERY_LIMIT - 3,
        "the worker's hand-back and ours count"
    );

    // A restarted worker meets the redirect again and hands the job back: as a
    // fresh copy now, its budget being low.
    w.spawn();
    wait_paused(&mut w, 2).await;
    w.stop(Duration::from_secs(10));
    let (count, returns) = requeue_times(&w, 5).await;
    assert_eq!(count, 4, "the fresh copy is counted from zero again");
    assert_eq!(
        returns,
        JOBS_DELIVERY_LIMIT - 2,
        "the returns it was spared travel with it"
    );
    assert_eq!(
        w.depth("jobs.dlq").await,
        0,
        "past the limit, nothing dead-lettered"
    );

    w.env
        .insert("CXONE_DATA_ACTION_ID".into(), "harness-action".into());
    w.start().await;
    let got = w.results(1, Duration::from_secs(60)).await;
    assert_eq!(got[0].routing_key, "job.succeeded", "{}", got[0].body);
    assert_eq!(w.depth("jobs.dlq").await, 0);
}
