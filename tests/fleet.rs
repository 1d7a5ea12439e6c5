//! The tenant's limits shared by a fleet: real `cxone-worker run` processes on one
//! prefix, a real RabbitMQ and the simulator's rate window and in-flight counter.
//! Windows and rates are scaled up (a window of seconds, not a minute) so that each
//! test covers several windows in seconds. The tests take turns: several fleets at
//! once on two cores would measure the machine, not the fleet.

#[path = "support/cleanup.rs"]
mod cleanup;
#[path = "support/worker.rs"]
mod harness;
#[path = "fleet/replicas.rs"]
mod replicas;

use std::time::{Duration, Instant};

use cxone_worker::sim::SimConfig;
use harness::Worker;
use replicas::{Replica, publish_jobs, rate_between, sim_stats, watch_accepted};

/// One fleet at a time (see the module's comment).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MEMBERS: &str = "cxone_fleet_members";
const RATE_SHARE: &str = "cxone_fleet_rate_share_per_minute";

/// Three replicas, all ready and each knowing the other two.
async fn three(w: &Worker, extra: &[(&str, &str)]) -> Vec<Replica> {
    let mut fleet: Vec<Replica> = (0..3)
        .map(|i| Replica::spawn(w, &format!("replica-{i}"), extra))
        .collect();
    for r in &mut fleet {
        r.wait_ready(Duration::from_secs(30)).await;
    }
    for r in &mut fleet {
        r.wait_metric(MEMBERS, |m| m == 3.0, Duration::from_secs(10))
            .await;
    }
    fleet
}

/// The API allows 40 executions per 2-second window (1200 a minute) and each
/// replica is told 1200 a minute: together they keep to it (at most 1% answered 429)
/// and use it (at least 90% of the window's 40).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_keep_to_the_tenants_rate_and_use_it() {
    let _turn = TURN.lock().await;
    const N: u32 = 40;
    const WINDOW_MS: u64 = 2000;
    const JOBS: u64 = 360;
    let sim = SimConfig {
        rate_limit: N,
        rate_window_ms: WINDOW_MS,
        ..SimConfig::default()
    };
    let mut w = Worker::new(sim, &[("RATE_LIMIT_PER_MINUTE", "1200")]).await;
    publish_jobs(&w, "rate", JOBS as usize).await;
    let fleet = three(&w, &[]).await;
    let samples = watch_accepted(&w, JOBS, Duration::from_secs(90)).await;
    let stats = sim_stats(&w).await;
    let (calls, limited) = (
        stats["execute_requests"].as_u64().unwrap(),
        stats["rate_limited"].as_u64().unwrap(),
    );
    let per_window = rate_between(&samples, JOBS / 6, JOBS * 5 / 6) * WINDOW_MS as f64 / 1000.0;
    eprintln!(
        "3 replicas: {calls} calls, {limited} answered 429, {per_window:.1} of {N} per window"
    );
    assert!(
        limited * 100 <= calls,
        "{limited} of {calls} calls answered 429:\n{}",
        fleet[0].logs()
    );
    assert!(
        per_window >= 0.9 * f64::from(N),
        "{per_window:.1} executions per window of {N}"
    );
    let results = w.results(JOBS as usize, Duration::from_secs(30)).await;
    assert!(results.iter().all(|r| r.routing_key == "job.succeeded"));
}

/// One replica stopped (SIGTERM), then one killed (SIGKILL), against an API that
/// counts every one-second window: the survivors take up the share within seconds
/// and no second ever holds more than 20 calls (1200 a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_take_up_the_share_of_a_stopped_and_a_killed_replica_without_a_burst() {
    let _turn = TURN.lock().await;
    let sim = SimConfig {
        rate_window_ms: 1000,
        ..SimConfig::default()
    };
    let w = Worker::new(sim, &[("RATE_LIMIT_PER_MINUTE", "1200")]).await;
    publish_jobs(&w, "churn", 1200).await;
    let mut fleet = three(&w, &[]).await;
    watch_accepted(&w, 100, Duration::from_secs(30)).await;
    // 20 calls a second as 7, 7 and 6.
    let mut shares = 0.0;
    for r in &mut fleet {
        r.wait_metric(RATE_SHARE, |s| s > 300.0, Duration::from_secs(10))
            .await;
        shares += r.metric(RATE_SHARE).await;
    }
    assert!(
        shares > 0.95 * 1200.0 && shares <= 1200.0,
        "{shares} a minute in all"
    );

    assert_eq!(fleet[0].stop(Duration::from_secs(25)), 0, "a clean exit");
    let stopped = Instant::now();
    for r in &mut fleet[1..] {
        r.wait_metric(RATE_SHARE, |s| s > 0.9 * 600.0, Duration::from_secs(6))
            .await;
    }
    let after_stop = stopped.elapsed();

    fleet[1].kill();
    let killed = Instant::now();
    let survivor = &mut fleet[2];
    survivor
        .wait_metric(RATE_SHARE, |s| s > 0.9 * 1200.0, Duration::from_secs(8))
        .await;
    let after_kill = killed.elapsed();
    assert_eq!(survivor.metric(MEMBERS).await, 1.0);
    let before = sim_stats(&w).await["accepted"].as_u64().unwrap();
    let measured = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alone = (sim_stats(&w).await["accepted"].as_u64().unwrap() - before) as f64
        / measured.elapsed().as_secs_f64();

    let most = sim_stats(&w).await["max_window_count"].as_u64().unwrap();
    eprintln!(
        "stop: share back in {after_stop:?}; kill: in {after_kill:?}; the survivor alone: \
         {alone:.1}/s; most calls in one second: {most} (bound 20)"
    );
    assert!(
        most <= 20,
        "{most} calls in one second:\n{}",
        survivor.logs()
    );
    assert!(
        alone >= 0.9 * 20.0,
        "the survivor made {alone:.1} calls a second"
    );
}

/// `MAX_CONCURRENT_CALLS=4` across three replicas, calls that take 300 ms: the API
/// never sees more than 4 at once, and does see 4 (the limit is used).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_stay_within_the_fleets_limit() {
    let _turn = TURN.lock().await;
    let sim = SimConfig {
        latency_ms: 300,
        ..SimConfig::default()
    };
    let env = [
        ("RATE_LIMIT_PER_MINUTE", "6000"),
        ("MAX_CONCURRENT_CALLS", "4"),
    ];
    let mut w = Worker::new(sim, &env).await;
    publish_jobs(&w, "calls", 60).await;
    let fleet = three(&w, &[]).await;
    let results = w.results(60, Duration::from_secs(60)).await;
    assert!(results.iter().all(|r| r.routing_key == "job.succeeded"));
    let most = sim_stats(&w).await["max_in_flight"].as_i64().unwrap();
    eprintln!("MAX_CONCURRENT_CALLS=4 over 3 replicas: at most {most} in flight");
    assert!(most <= 4, "{most} calls in flight:\n{}", fleet[0].logs());
    assert!(most >= 3, "the limit went unused: at most {most} in flight");
}

/// A 429 at one replica pauses the others too: they count a wait from the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_at_one_replica_pauses_them_all() {
    let _turn = TURN.lock().await;
    let sim = SimConfig {
        rate_limit: 5,
        rate_window_ms: 1000,
        retry_after: "1".into(),
        ..SimConfig::default()
    };
    let mut w = Worker::new(sim, &[("RATE_LIMIT_PER_MINUTE", "6000")]).await;
    publish_jobs(&w, "pause", 40).await;
    let mut fleet = three(&w, &[]).await;
    let results = w.results(40, Duration::from_secs(60)).await;
    assert!(results.iter().all(|r| r.routing_key == "job.succeeded"));
    let mut from_fleet = 0.0;
    let mut own = 0.0;
    for r in &mut fleet {
        own += r.metric("cxone_rate_limited_total{source=\"429\"}").await;
        from_fleet += r.metric("cxone_rate_limited_total{source=\"fleet\"}").await;
    }
    eprintln!("429s seen: {own}; pauses heard from another replica: {from_fleet}");
    assert!(own >= 1.0, "the API's limit was never met");
    assert!(from_fleet >= 1.0, "no replica paused for another's 429");
}

/// `AMQP_URL` naming a dead node first and the real broker second: `run` consumes
/// (its fleet link too) and an operator command works, and the dead node's password
/// never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_node_is_passed_over_by_run_and_by_status() {
    let _turn = TURN.lock().await;
    let nodes = format!("amqp://u:deadpass@127.0.0.1:1/%2f,{}", harness::amqp_url());
    let mut w = Worker::new(SimConfig::default(), &[("AMQP_URL", &nodes)]).await;
    w.start().await;
    w.publish(&harness::job(
        "two-nodes",
        &w.file("a.pdf", &harness::pdf(100)),
    ))
    .await;
    let got = w.results(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].routing_key, "job.succeeded");
    assert_eq!(
        w.metrics().await.lines().find(|l| l.starts_with(MEMBERS)),
        Some("cxone_fleet_members 1")
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cxone-worker"))
        .args(["status", "--json"])
        .env_clear()
        .env("AMQP_URL", &nodes)
        .env("CXONE_QUEUE_PREFIX", &w.prefix)
        .env("RETRY_DELAYS", &w.env["RETRY_DELAYS"])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr),
    );
    assert!(status.status.success(), "status failed: {err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert!(
        json["queues"].as_array().is_some_and(|q| !q.is_empty()),
        "{json}"
    );
    let logs = w.logs();
    assert!(
        logs.contains("127.0.0.1:1"),
        "the dead node is named in the logs"
    );
    for text in [&logs, &err.to_string(), &out.to_string()] {
        assert!(
            !text.contains("deadpass"),
            "a password in the output:\n{text}"
        );
    }
}

/// The fleet's own connection closed by the broker: the replica goes on working at
/// a fallback share (never the whole limit), reconnects, and takes its share again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_fleet_link_falls_back_and_comes_back_without_stopping_the_worker() {
    let _turn = TURN.lock().await;
    let mut w = Worker::new(SimConfig::default(), &[("RATE_LIMIT_PER_MINUTE", "1200")]).await;
    let mut replica = Replica::spawn(&w, "alone", &[]);
    replica.wait_ready(Duration::from_secs(30)).await;
    let whole = 1200.0 / (1.0 + 1.0 / 32.0);
    let full = |s: f64| (s - whole).abs() < 1.0;
    replica
        .wait_metric(RATE_SHARE, full, Duration::from_secs(10))
        .await;
    let name = format!("cxone-worker fleet ({})", w.prefix);
    assert!(
        cleanup::close_connection(&name),
        "no connection named {name}"
    );
    // Cut off: less than the whole limit while it reconnects and listens again.
    replica
        .wait_metric(RATE_SHARE, |s| s < 0.6 * whole, Duration::from_secs(5))
        .await;
    publish_jobs(&w, "during", 5).await;
    let back = replica
        .wait_metric(RATE_SHARE, full, Duration::from_secs(15))
        .await;
    let done = w.results(5, Duration::from_secs(20)).await;
    assert!(done.iter().all(|r| r.routing_key == "job.succeeded"));
    eprintln!("fleet link closed: the whole share back {back:?} after the fallback");
    assert_eq!(replica.logs().matches("fleet link up").count(), 2);
}
