//! The CXone client against the simulator over real HTTP: one token for many callers,
//! refresh, 401, 429 (seconds and HTTP dates), pacing, and the meaning of each answer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cxone_worker::config::{ApiSettings, ProfileName};
use cxone_worker::cxone::Client;
use cxone_worker::job::{ErrorKind, Failure, Systemic};
use cxone_worker::sim::{SimConfig, SimHandle, spawn};
use serde_json::Value;

const BODY: &[u8] = br#"{"inputs":{"binaryPayload":{"value":"JVBERi0=","contentType":"application/pdf"},"metadata":{}}}"#;

fn settings(url: &str, secret: &str) -> ApiSettings {
    ApiSettings {
        rate_limit_per_minute: 1_000_000,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ..ApiSettings::new(
            ProfileName::Seed,
            Some(url::Url::parse(url).unwrap()),
            "test-client",
            secret,
        )
    }
}

fn fast_token_retries(client: Client) -> Client {
    client.with_token_backoff(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(20))
            .with_max_times(2),
    )
}

async fn sim(cfg: SimConfig) -> (SimHandle, Arc<Client>) {
    let handle = spawn(cfg).await.expect("simulator starts");
    let client = Client::new(&settings(&handle.url(), "test-secret"), 128).unwrap();
    (handle, Arc::new(client))
}

async fn stats(handle: &SimHandle) -> Value {
    reqwest::get(format!("{}/__stats?keys=1", handle.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn execute(
    client: &Client,
    action: &str,
    key: &str,
) -> Result<cxone_worker::cxone::Executed, Failure> {
    client.execute(action, key, Bytes::from_static(BODY)).await
}

/// `n` executes started together, each on its own task so that they race for the
/// token, with the keys `{prefix}0`, `{prefix}1`, ...; their results in that order.
async fn execute_at_once(
    client: &Arc<Client>,
    prefix: &str,
    n: usize,
) -> Vec<Result<cxone_worker::cxone::Executed, Failure>> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let (client, key) = (client.clone(), format!("{prefix}{i}"));
            tokio::spawn(async move { execute(&client, "act", &key).await })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for call in calls {
        results.push(call.await.unwrap());
    }
    results
}

/// The systemic cause of a failure, if it is one.
fn cause<T>(r: &Result<T, Failure>) -> Option<Systemic> {
    match r {
        Err(Failure::Systemic { cause, .. }) => Some(*cause),
        _ => None,
    }
}

fn kind(r: Result<cxone_worker::cxone::Executed, Failure>) -> ErrorKind {
    match r {
        Err(Failure::Permanent { kind, .. }) => kind,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_cold_callers_share_one_token_request() {
    let (handle, client) = sim(SimConfig::default()).await;
    for executed in execute_at_once(&client, "k-", 100).await {
        let executed = executed.expect("execute succeeds");
        assert!(executed.execution_id.unwrap().starts_with("exec-"));
    }
    let s = stats(&handle).await;
    assert_eq!(s["token_requests"], 1, "{s}");
    assert_eq!(s["accepted"], 100);
    assert_eq!(s["keys"]["k-7"]["dataActionId"], "act");
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_before_they_expire() {
    let (handle, client) = sim(SimConfig {
        token_ttl: 2,
        ..SimConfig::default()
    })
    .await;
    execute(&client, "act", "a").await.unwrap();
    execute(&client, "act", "b").await.unwrap();
    assert_eq!(
        stats(&handle).await["token_requests"],
        1,
        "a fresh token is reused"
    );
    // A 2 s token is refreshed at half its life: after 1.2 s a new one is fetched
    // before any call is refused.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    execute(&client, "act", "c").await.unwrap();
    let s = stats(&handle).await;
    assert_eq!(s["token_requests"], 2, "{s}");
    assert_eq!(s["unauthorized"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_call_goes_out_with_a_token_that_expired_while_it_waited() {
    // Tokens live 3 s; at 20 calls a minute the third of three callers waits 6 s for
    // its slot. A token taken before that wait would be dead when the call goes out.
    let handle = spawn(SimConfig {
        token_ttl: 3,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let slow = ApiSettings {
        rate_limit_per_minute: 20,
        ..settings(&handle.url(), "test-secret")
    };
    let client = Arc::new(Client::new(&slow, 8).unwrap());
    let started = Instant::now();
    let calls: Vec<_> = ["t-1", "t-2", "t-3"]
        .into_iter()
        .map(|key| {
            let client = client.clone();
            tokio::spawn(async move { execute(&client, "act", key).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("every call succeeds");
    }
    assert!(started.elapsed() >= Duration::from_secs(5), "the pace held");
    let s = stats(&handle).await;
    assert_eq!(
        s["unauthorized"], 0,
        "a call went out with an expired token: {s}"
    );
    assert_eq!(s["accepted"], 3);
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_repeats_the_call() {
    let (handle, client) = sim(SimConfig::default()).await;
    execute(&client, "act", "before").await.unwrap();
    // The simulator forgets every token it issued: our cached one now answers 401.
    reqwest::Client::new()
        .post(format!("{}/__reset", handle.url()))
        .send()
        .await
        .unwrap();
    execute(&client, "act", "after")
        .await
        .expect("the call is repeated with a new token");
    let s = stats(&handle).await;
    assert_eq!(
        (s["unauthorized"].as_u64(), s["token_requests"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["attempts"]["after"], 1);
}

/// The simulator answers 429 to every call past the first of each 2 s window; a 429
/// must hold back every caller of the process, not only the one that got it.
async fn rate_limited_pause(retry_after: String, at_least: Duration) {
    let (handle, client) = sim(SimConfig {
        rate_limit: 1,
        rate_window_ms: 2000,
        retry_after,
        ..SimConfig::default()
    })
    .await;
    let start = Instant::now();
    execute(&client, "act", "first").await.unwrap();
    let second = tokio::spawn({
        let client = client.clone();
        async move { execute(&client, "act", "second").await }
    });
    // Let the second call meet its 429, then start a third that never saw one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stats(&handle).await["rate_limited"], 1);
    let third = tokio::spawn({
        let client = client.clone();
        async move { execute(&client, "act", "third").await }
    });
    tokio::time::sleep_until((start + Duration::from_millis(1500)).into()).await;
    let during = stats(&handle).await;
    assert_eq!(
        during["execute_requests"], 2,
        "nothing may reach the API during the pause: {during}"
    );
    third
        .await
        .unwrap()
        .expect("the third call succeeds after the pause");
    second
        .await
        .unwrap()
        .expect("the second call is made again after Retry-After");
    assert!(
        start.elapsed() >= at_least,
        "finished after {:?}",
        start.elapsed()
    );
    let s = stats(&handle).await;
    // After the pause the two calls contend for one call per window: a few more 429s,
    // each waited out, never a busy loop.
    assert!(s["rate_limited"].as_u64().unwrap() <= 6, "{s}");
    assert_eq!(s["accepted"], 3, "{s}");
}

#[tokio::test]
async fn a_429_with_seconds_pauses_every_caller() {
    rate_limited_pause("2".into(), Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_429_with_an_http_date_pauses_every_caller() {
    let at = SystemTime::now() + Duration::from_secs(3);
    rate_limited_pause(httpdate::fmt_http_date(at), Duration::from_secs(2)).await;
}

#[tokio::test]
async fn six_hundred_a_minute_are_a_tenth_of_a_second_apart() {
    let handle = spawn(SimConfig::default()).await.unwrap();
    let mut s = settings(&handle.url(), "test-secret");
    s.rate_limit_per_minute = 600;
    let client = Arc::new(Client::new(&s, 16).unwrap());
    execute(&client, "act", "warm-up").await.unwrap();
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                execute(&client, "act", &format!("p-{i}")).await.unwrap();
                Instant::now()
            })
        })
        .collect();
    let mut done = Vec::new();
    for c in calls {
        done.push(c.await.unwrap());
    }
    done.sort();
    for pair in done.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(85),
            "calls {gap:?} apart at 600/min"
        );
    }
}

#[tokio::test]
async fn server_errors_and_timeouts_are_retryable() {
    let (_handle, client) = sim(SimConfig::default()).await;
    let r = execute(&client, "status-503", "k").await;
    assert!(
        matches!(&r, Err(Failure::Retryable { message }) if message.contains("503")),
        "{r:?}"
    );
    let r = execute(&client, "status-408", "k").await;
    assert!(matches!(r, Err(Failure::Retryable { .. })), "{r:?}");

    let slow = spawn(SimConfig {
        latency_ms: 2000,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut s = settings(&slow.url(), "test-secret");
    s.request_timeout = Duration::from_millis(300);
    let client = Client::new(&s, 4).unwrap();
    let r = execute(&client, "act", "slow").await;
    assert!(
        matches!(&r, Err(Failure::Retryable { message }) if message.contains("timed out")),
        "{r:?}"
    );
}

#[tokio::test]
async fn client_errors_are_final_with_an_excerpt() {
    let (_handle, client) = sim(SimConfig {
        max_body: 500,
        ..SimConfig::default()
    })
    .await;
    let r = execute(&client, "status-400", "k").await;
    assert!(
        matches!(&r, Err(Failure::Permanent { kind: ErrorKind::Rejected, message }) if message.contains("400") && message.contains("forced 400")),
        "{r:?}"
    );
    assert_eq!(
        kind(execute(&client, "status-403", "k").await),
        ErrorKind::Forbidden
    );
    assert_eq!(
        kind(execute(&client, "status-404", "k").await),
        ErrorKind::Rejected
    );
    // A body larger than the simulator's 500 bytes.
    let big = format!(
        r#"{{"inputs":{{"binaryPayload":{{"value":"{}","contentType":"application/pdf"}}}}}}"#,
        "A".repeat(600)
    );
    let r = client.execute("act", "big", Bytes::from(big)).await;
    assert!(
        matches!(&r, Err(Failure::Permanent { kind: ErrorKind::Rejected, message }) if message.contains("413")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_credentials_are_systemic_and_asked_once() {
    let handle = spawn(SimConfig::default()).await.unwrap();
    let client = Arc::new(fast_token_retries(
        Client::new(&settings(&handle.url(), "wrong"), 16).unwrap(),
    ));
    for r in execute_at_once(&client, "c-", 10).await {
        assert_eq!(cause(&r), Some(Systemic::CredentialsRefused), "{r:?}");
    }
    let s = stats(&handle).await;
    assert_eq!(s["execute_requests"], 0, "no execute without a token: {s}");
    assert_eq!(
        s["token_requests"], 1,
        "callers waiting behind a refusal share it: {s}"
    );
    // The probe of a paused worker asks again, and fails the same way.
    assert_eq!(
        cause(&client.probe().await),
        Some(Systemic::CredentialsRefused)
    );
}

#[tokio::test]
async fn an_unreachable_api_is_systemic() {
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = fast_token_retries(
        Client::new(&settings(&format!("http://127.0.0.1:{port}"), "s"), 4).unwrap(),
    );
    let r = execute(&client, "act", "k").await;
    assert!(
        matches!(&r, Err(Failure::Systemic { cause: Systemic::ApiUnreachable, message }) if message.contains("connection")),
        "{r:?}"
    );
}

#[tokio::test]
async fn transport_failures_in_a_row_make_the_api_unreachable() {
    // The token endpoint works, the execute calls time out: after CXONE_UNREACHABLE_AFTER
    // of them in a row the failure is the worker's, not the job's.
    let slow = spawn(SimConfig {
        latency_ms: 1000,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut s = settings(&slow.url(), "test-secret");
    s.request_timeout = Duration::from_millis(200);
    s.unreachable_after = 3;
    let client = Client::new(&s, 4).unwrap();
    for i in 0..2 {
        let r = execute(&client, "act", &format!("t-{i}")).await;
        assert!(matches!(r, Err(Failure::Retryable { .. })), "{r:?}");
    }
    let r = execute(&client, "act", "t-2").await;
    assert_eq!(cause(&r), Some(Systemic::ApiUnreachable), "{r:?}");
}

#[tokio::test]
async fn a_redirect_is_the_workers_problem_not_the_jobs() {
    let (_handle, client) = sim(SimConfig::default()).await;
    let r = execute(&client, "status-301", "k").await;
    assert_eq!(cause(&r), Some(Systemic::ApiUnreachable), "{r:?}");
}

#[tokio::test]
async fn keys_in_any_script_are_sent_and_control_characters_refused() {
    let (handle, client) = sim(SimConfig::default()).await;
    execute(&client, "act", "facture-é-2026").await.unwrap();
    let before = stats(&handle).await;
    // The simulator reads header bytes as Latin-1, as Node does: the UTF-8 is there.
    assert!(
        before["keys"].get("facture-Ã©-2026").is_some(),
        "{}",
        before["keys"]
    );
    let r = execute(&client, "act", "bad\nkey").await;
    assert_eq!(kind(r), ErrorKind::InvalidJob);
    assert_eq!(
        stats(&handle).await["execute_requests"].as_u64(),
        before["execute_requests"].as_u64(),
        "nothing sent"
    );
}

/// A token endpoint that answers once (a token living `ttl` seconds), then 503s;
/// executes succeed with that token. Returns the base URL and the token requests.
async fn flaky_token_endpoint(ttl: u64) -> (String, Arc<std::sync::atomic::AtomicU32>) {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use std::sync::atomic::{AtomicU32, Ordering};
    let asked = Arc::new(AtomicU32::new(0));
    let counter = asked.clone();
    let app = axum::Router::new()
        .route(
            "/api/v2/oauth/token",
            post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        axum::Json(serde_json::json!({"access_token": "tok-1", "expires_in": ttl}))
                            .into_response()
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE.into_response()
                    }
                }
            }),
        )
        .route(
            "/api/v2/data-actions/{id}/execute",
            post(|headers: HeaderMap| async move {
                if headers
                    .get("authorization")
                    .is_some_and(|v| v == "Bearer tok-1")
                {
                    axum::Json(serde_json::json!({"executionId": "e-1"})).into_response()
                } else {
                    StatusCode::UNAUTHORIZED.into_response()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, asked)
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_token_that_still_works() {
    let (url, asked) = flaky_token_endpoint(4).await;
    let client = fast_token_retries(Client::new(&settings(&url, "s"), 16).unwrap());
    execute(&client, "act", "k-1").await.unwrap();
    // Due for a refresh at 2 s, expired at 4 s.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    execute(&client, "act", "k-2")
        .await
        .expect("the refresh fails, the token still works");
    assert!(
        asked.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "a refresh was tried"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // Expired and no new one: every caller, those that queued behind the failed
    // refresh included, learns it; none is handed the expired token.
    let client = Arc::new(client);
    for r in execute_at_once(&client, "k-3-", 8).await {
        assert_eq!(cause(&r), Some(Systemic::ApiUnreachable), "{r:?}");
    }
}

#[tokio::test]
async fn an_absurd_lifetime_is_capped_not_a_panic() {
    let (handle, client) = sim(SimConfig {
        token_ttl: u64::MAX,
        ..SimConfig::default()
    })
    .await;
    execute(&client, "act", "k").await.unwrap();
    execute(&client, "act", "k2").await.unwrap();
    assert_eq!(stats(&handle).await["token_requests"], 1);
}
