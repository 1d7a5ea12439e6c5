//! The fault knobs: forced statuses, fail-first, random 5xx, rate limit, body limit, latency.

use super::*;

#[tokio::test]
async fn status_ids_force_their_answer() {
    let sim = start(SimConfig::default()).await;
    for code in [400u16, 403, 503] {
        let (status, body) = sim.exec(&format!("status-{code}"), "f", sample()).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(body, json!({"error": format!("forced {code}")}));
    }
    let stats = sim.stats().await;
    assert_eq!(
        [
            &stats["server_errors"],
            &stats["attempts"]["f"],
            &stats["accepted"]
        ],
        [1, 3, 0]
    );
}

#[tokio::test]
async fn fail_first_answers_503_to_the_first_attempts_of_each_key() {
    let sim = start(SimConfig {
        fail_first: 2,
        ..SimConfig::default()
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(sim.exec("da", "ff", sample()).await.0.as_u16());
    }
    assert_eq!(seen, [503, 503, 202]);
    let answer = sim.exec("da", "other", sample()).await;
    assert_eq!(
        answer,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "unavailable"})
        )
    );
    let stats = sim.stats().await;
    assert_eq!(stats["server_errors"], 3);
    assert_eq!(stats["attempts"], json!({"ff": 3, "other": 1}));
}

#[tokio::test]
async fn fail_5xx_of_one_always_fails() {
    let sim = start(SimConfig {
        fail_5xx: 1.0,
        ..SimConfig::default()
    })
    .await;
    let answer = sim.exec("da", "r", sample()).await;
    assert_eq!(
        answer,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "unavailable"})
        )
    );
}

#[tokio::test]
async fn rate_limit_answers_429_until_the_window_turns() {
    let cfg = SimConfig {
        rate_limit: 2,
        rate_window_ms: 400,
        retry_after: "7".into(),
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    for key in ["a", "b"] {
        assert_eq!(sim.exec("da", key, sample()).await.0, StatusCode::ACCEPTED);
    }
    let limited = sim
        .post("da", Some("c"))
        .body(sample())
        .send()
        .await
        .expect("request");
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );
    assert_eq!(
        limited.json::<Value>().await.expect("json"),
        json!({"error": "rate limited"})
    );
    let stats = sim.stats().await;
    assert_eq!([&stats["rate_limited"], &stats["max_window_count"]], [1, 2]);
    // A refused call is not an attempt.
    assert!(stats["attempts"].get("c").is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.exec("da", "c", sample()).await.0, StatusCode::ACCEPTED);
    assert_eq!(sim.stats().await["window_count"], 1);
}

#[tokio::test]
async fn bodies_over_max_body_are_413_and_the_limit_itself_is_allowed() {
    let sim = start(SimConfig {
        max_body: 1000,
        ..SimConfig::default()
    })
    .await;
    let answer = sim.exec("da", "big", "x".repeat(5000)).await;
    assert_eq!(
        answer,
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "payload too large"})
        )
    );
    let exact = format!("{:<1000}", sample());
    assert_eq!(exact.len(), 1000);
    assert_eq!(sim.exec("da", "exact", exact).await.0, StatusCode::ACCEPTED);
    let stats = sim.stats().await;
    assert_eq!([&stats["too_large"], &stats["execute_requests"]], [1, 2]);
}

#[tokio::test]
async fn latency_delays_each_execute() {
    let sim = start(SimConfig {
        latency_ms: 300,
        ..SimConfig::default()
    })
    .await;
    let started = Instant::now();
    assert_eq!(
        sim.exec("da", "slow", sample()).await.0,
        StatusCode::ACCEPTED
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn in_flight_counts_concurrent_executes_through_their_latency() {
    let sim = start(SimConfig {
        latency_ms: 400,
        ..SimConfig::default()
    })
    .await;
    let keys: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    let all = futures_util::future::join_all(keys.iter().map(|key| sim.exec("da", key, sample())));
    let probe = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sim.stats().await
    };
    let (answers, during) = tokio::join!(all, probe);
    assert!(
        answers
            .iter()
            .all(|(status, _)| *status == StatusCode::ACCEPTED)
    );
    assert_eq!(during["in_flight"], 5);
    let after = sim.stats().await;
    assert_eq!([&after["in_flight"], &after["max_in_flight"]], [0, 5]);
}

#[tokio::test]
async fn a_client_that_hangs_up_during_latency_is_still_recorded() {
    let sim = start(SimConfig {
        latency_ms: 300,
        ..SimConfig::default()
    })
    .await;
    let req = sim
        .post("da", Some("impatient"))
        .timeout(Duration::from_millis(50));
    assert!(req.body(sample()).send().await.is_err());
    tokio::time::sleep(Duration::from_millis(450)).await;
    let stats = sim.stats().await;
    assert_eq!(
        [
            &stats["attempts"]["impatient"],
            &stats["accepted"],
            &stats["in_flight"]
        ],
        [1, 1, 0]
    );
}

#[tokio::test]
async fn the_v1_knobs_work_in_every_profile() {
    for name in [ProfileName::Seed, ProfileName::Genesys, ProfileName::Cxone] {
        let sim = start(SimConfig {
            latency_ms: 300,
            fail_first: 1,
            ..profile(name)
        })
        .await;
        let keys: Vec<String> = (0..3).map(|i| format!("k{i}")).collect();
        let run = |key: &str| sim.post("da", Some(key)).body(sim.sample_body()).send();
        let firsts = futures_util::future::join_all(keys.iter().map(|key| run(key))).await;
        for answer in firsts {
            assert_eq!(
                answer.unwrap().status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{name:?}"
            );
        }
        let seconds = futures_util::future::join_all(keys.iter().map(|key| run(key))).await;
        for answer in seconds {
            assert!(answer.unwrap().status().is_success(), "{name:?}");
        }
        let stats = sim.stats().await;
        assert_eq!(
            [
                &stats["max_in_flight"],
                &stats["server_errors"],
                &stats["accepted"]
            ],
            [3, 3, 3]
        );
        assert_eq!(
            stats["attempts"],
            json!({"k0": 2, "k1": 2, "k2": 2}),
            "{name:?}"
        );

        let always = start(SimConfig {
            fail_5xx: 1.0,
            ..profile(name)
        })
        .await;
        let (status, _) = always.exec("da", "x", always.sample_body()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name:?}");
    }
}
