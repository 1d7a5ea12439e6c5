//! The genesys profile: its token grant, the flat execute body, the synchronous output and
//! `ININ-Correlation-Id`, Genesys error bodies, `inin-ratelimit-*`, and no deduplication.

use super::*;

fn genesys() -> SimConfig {
    profile(ProfileName::Genesys)
}

/// A flat execute body: payload, content type and every metadata key side by side.
fn flat(data: &[u8], content_type: &str, metadata: Value) -> String {
    let mut body =
        json!({"binaryPayload": BASE64_STANDARD.encode(data), "contentType": content_type});
    for (key, value) in metadata.as_object().into_iter().flatten() {
        body[key] = value.clone();
    }
    body.to_string()
}

fn header<'a>(answer: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    answer.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The answer's correlation id, checked to be a UUID.
fn correlation_id(answer: &reqwest::Response) -> String {
    let id = header(answer, "inin-correlation-id").expect("ININ-Correlation-Id");
    uuid::Uuid::parse_str(id).expect("a UUID");
    id.to_owned()
}

/// Checks a Genesys error answer: status, code, the body's fields, and `contextId` equal to
/// the correlation header. Returns the message.
async fn genesys_error(answer: reqwest::Response, status: StatusCode, code: &str) -> String {
    assert_eq!(answer.status(), status);
    let context = correlation_id(&answer);
    let body: Value = answer.json().await.expect("json error");
    let mut fields: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    let expected = [
        "code",
        "contextId",
        "details",
        "errors",
        "message",
        "messageParams",
        "messageWithParams",
        "status",
    ];
    assert_eq!(fields, expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["contextId"], context.as_str());
    assert_eq!(body["messageWithParams"], body["message"]);
    assert_eq!(
        [&body["details"], &body["errors"]],
        [&json!([]), &json!([])]
    );
    body["message"].as_str().expect("message").to_owned()
}

#[tokio::test]
async fn the_token_is_a_client_credentials_grant_answered_and_refused_as_genesys_does() {
    let sim = start(genesys()).await;
    let answer = sim
        .http
        .post(sim.url("/oauth/token"))
        .basic_auth("test-client", Some("test-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("token");
    assert_eq!(answer.status(), StatusCode::OK);
    correlation_id(&answer);
    let token: Value = answer.json().await.expect("json");
    assert_eq!(token["token_type"], "bearer");
    assert_eq!(token["expires_in"], 3600);
    assert_eq!(token.as_object().map(|t| t.len()), Some(3), "{token}");
    let refusals = [
        (
            "test-client",
            "wrong",
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "other",
            "test-secret",
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
        (
            "test-client",
            "test-secret",
            "grant_type=password",
            400,
            "unsupported_grant_type",
        ),
        (
            "test-client",
            "test-secret",
            "scope=x",
            400,
            "invalid_request",
        ),
    ];
    for (user, secret, form, status, error) in refusals {
        let (got, body) = sim.token_at("/oauth/token", user, secret, form).await;
        assert_eq!(got.as_u16(), status, "{user}:{secret} {form}");
        assert_eq!(body["error"], error, "{body}");
        assert!(body["description"].is_string(), "{body}");
        assert_eq!(body["description"], body["error_description"]);
    }
    let as_json = sim
        .http
        .post(sim.url("/oauth/token"))
        .basic_auth("test-client", Some("test-secret"))
        .json(&json!({"grant_type": "client_credentials"}));
    let (status, body) = send(as_json).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_request"))
    );
    let seed_path = sim
        .http
        .post(sim.url("/api/v2/oauth/token"))
        .send()
        .await
        .expect("post");
    genesys_error(seed_path, StatusCode::NOT_FOUND, "not.found").await;
    let stats = sim.stats().await;
    assert_eq!([&stats["token_requests"], &stats["token_rejected"]], [7, 5]);
}

#[tokio::test]
async fn a_flat_execute_answers_the_actions_output_and_its_correlation_id() {
    let sim = start(genesys()).await;
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
    let metadata = json!({"source": "billing", "n": 3, "urgent": true, "note": null});
    let body = flat(&data, "application/pdf", metadata.clone());
    let answer = sim
        .post("abc%20def", Some("g-1"))
        .body(body.clone())
        .send()
        .await
        .expect("execute");
    assert_eq!(answer.status(), StatusCode::OK);
    let id = correlation_id(&answer);
    let output: Value = answer.json().await.expect("output");
    let expected = json!({"actionId": "abc def", "receivedBytes": 5000,
        "sha256": hex::encode(Sha256::digest(&data)), "contentType": "application/pdf",
        "metadata": metadata});
    assert_eq!(output, expected);
    let stats = sim.stats().await;
    let record = &stats["keys"]["g-1"];
    assert_eq!(record["executionId"], id.as_str());
    assert_eq!(record["executionIds"], json!([id]));
    assert_eq!(
        [&record["size"], &record["metadata"]["source"]],
        [&json!(5000), &json!("billing")]
    );
    assert_eq!([&stats["accepted"], &stats["unique_keys"]], [1, 1]);
}

#[tokio::test]
async fn a_repeated_key_executes_again_under_a_new_id_and_is_counted() {
    let sim = start(genesys()).await;
    let body = flat(b"once", "text/plain", json!({}));
    let mut ids = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let answer = sim
            .post("da", Some("twice"))
            .body(body.clone())
            .send()
            .await
            .expect("run");
        assert_eq!(answer.status(), StatusCode::OK);
        ids.push(correlation_id(&answer));
        outputs.push(answer.json::<Value>().await.expect("output"));
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(
        outputs[0], outputs[1],
        "the output depends on the request only"
    );
    let stats = sim.stats().await;
    let record = &stats["keys"]["twice"];
    assert_eq!(record["count"], 2);
    assert_eq!(record["executionIds"], json!(ids));
    assert_eq!(
        [
            &stats["accepted"],
            &stats["duplicate_keys"],
            &stats["unique_keys"]
        ],
        [2, 1, 1]
    );
}

#[tokio::test]
async fn output_bytes_pads_the_output_past_the_workers_cut() {
    let sim = start(SimConfig {
        output_bytes: 70_000,
        ..genesys()
    })
    .await;
    let answer = sim
        .post("da", Some("big"))
        .body(flat(b"x", "text/plain", json!({})))
        .send()
        .await;
    let text = answer.expect("execute").text().await.expect("text");
    assert_eq!(text.len(), 70_000);
    let output: Value = serde_json::from_str(&text).expect("json");
    assert!(
        output["padding"]
            .as_str()
            .is_some_and(|p| p.bytes().all(|b| b == b'x'))
    );
    assert_eq!(output["receivedBytes"], 1);

    let small = start(SimConfig {
        output_bytes: 10,
        ..genesys()
    })
    .await;
    let (_, output) = small
        .exec("da", "small", flat(b"x", "text/plain", json!({})))
        .await;
    assert!(output.get("padding").is_none(), "{output}");
}

#[tokio::test]
async fn every_error_is_a_genesys_error_body_with_its_context_id() {
    let sim = start(SimConfig {
        max_body: 2000,
        ..genesys()
    })
    .await;
    let body = flat(b"hello", "text/plain", json!({}));
    let path = sim.url(&sim.execute_path("da"));
    // Each request, its status and code, and for forced statuses the message too.
    let mut requests = vec![
        (
            sim.http.post(&path).body(body.clone()),
            401,
            "authentication.required",
            None,
        ),
        (
            sim.http.post(&path).bearer_auth("nope").body(body.clone()),
            401,
            "bad.credentials",
            None,
        ),
        (
            sim.post("da", Some("bj")).body("{not json"),
            400,
            "bad.request",
            None,
        ),
        (
            sim.post("da", Some("big")).body("x".repeat(5000)),
            413,
            "request.entity.too.large",
            None,
        ),
        (
            sim.http.get(sim.url("/api/v2/nowhere")),
            404,
            "not.found",
            None,
        ),
    ];
    let forced = [
        (403, "missing.permissions"),
        (400, "bad.request"),
        (500, "internal.server.error"),
        (503, "service.unavailable"),
    ];
    for (code, expected) in forced {
        let req = sim
            .post(&format!("status-{code}"), Some("f"))
            .body(body.clone());
        requests.push((req, code, expected, Some(format!("forced {code}"))));
    }
    for (req, code, expected, forced_message) in requests {
        let status = StatusCode::from_u16(code).unwrap();
        let message = genesys_error(req.send().await.unwrap(), status, expected).await;
        if let Some(forced_message) = forced_message {
            assert_eq!(message, forced_message);
        }
    }
    let stats = sim.stats().await;
    let counters = ["unauthorized", "too_large", "server_errors", "bad_requests"];
    assert_eq!(counters.map(|c| stats[c].as_u64()), [2, 1, 2, 1].map(Some));
}

#[tokio::test]
async fn flat_bodies_are_refused_when_they_break_the_contracts_shape() {
    let sim = start(genesys()).await;
    let nested = body_for(b"hello", "text/plain", json!({"source": "test"}));
    let cases = [
        (nested, "missing field binaryPayload"),
        (
            flat(b"hi", "text/plain", json!({"orgId": "o"})),
            "orgId is reserved",
        ),
        (
            flat(b"hi", "text/plain", json!({"m": {"k": 1}})),
            "no objects or arrays",
        ),
        (
            flat(b"hi", "text/plain", json!({"chunkIndex": 0})),
            "missing chunkUploadId",
        ),
        (
            r#"{"binaryPayload":"QUJ","contentType":"a"}"#.to_owned(),
            "not standard base64",
        ),
        (
            r#"{"binaryPayload":"QUJD","contentType":"a","k":1,"k":2}"#.to_owned(),
            "k appears more than once",
        ),
    ];
    for (i, (body, expected)) in cases.iter().enumerate() {
        let answer = sim
            .post("da", Some(&format!("r{i}")))
            .body(body.clone())
            .send()
            .await;
        let message = genesys_error(answer.unwrap(), StatusCode::BAD_REQUEST, "bad.request").await;
        assert!(message.contains(expected), "{body}: {message}");
    }
    let stats = sim.stats().await;
    assert_eq!(
        [&stats["bad_requests"], &stats["unique_keys"]],
        [cases.len(), 0]
    );
}

#[tokio::test]
async fn the_payload_field_names_are_the_configured_ones() {
    let sim = start(SimConfig {
        payload_field: "file".into(),
        content_type_field: "mime".into(),
        ..genesys()
    })
    .await;
    let renamed = json!({"file": BASE64_STANDARD.encode(b"hi"), "mime": "text/plain", "k": "v"});
    let (status, output) = sim.exec("da", "renamed", renamed.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{output}");
    assert_eq!(
        [&output["contentType"], &output["metadata"]],
        [&json!("text/plain"), &json!({"k": "v"})]
    );
    let answer = sim
        .post("da", Some("v1"))
        .body(flat(b"hi", "text/plain", json!({})))
        .send()
        .await;
    let message = genesys_error(answer.unwrap(), StatusCode::BAD_REQUEST, "bad.request").await;
    assert!(message.contains("missing field file"), "{message}");
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_a_genesys_body() {
    let sim = start(SimConfig {
        rate_limit: 1,
        retry_after: "7".into(),
        ..genesys()
    })
    .await;
    let body = flat(b"hi", "text/plain", json!({}));
    assert_eq!(sim.exec("da", "a", body.clone()).await.0, StatusCode::OK);
    let limited = sim.post("da", Some("b")).body(body).send().await.unwrap();
    assert_eq!(header(&limited, "retry-after"), Some("7"));
    assert!(
        header(&limited, "inin-ratelimit-count").is_none(),
        "the knob is off"
    );
    genesys_error(limited, StatusCode::TOO_MANY_REQUESTS, "too.many.requests").await;
}

/// The status and `inin-ratelimit-count` of one execute under `key`.
async fn inin_count(sim: &Sim, key: &str, body: &str) -> (StatusCode, Option<String>) {
    let answer = sim
        .post("da", Some(key))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let count = header(&answer, "inin-ratelimit-count").map(str::to_owned);
    (answer.status(), count)
}

#[tokio::test]
async fn inin_ratelimit_headers_count_the_window_and_a_call_past_the_allowance_is_429() {
    // A window long enough that it cannot turn during the test, however loaded the machine.
    let sim = start(SimConfig {
        inin_ratelimit: 2,
        ..genesys()
    })
    .await;
    let body = flat(b"hi", "text/plain", json!({}));
    for (key, count) in [("a", "1"), ("b", "2")] {
        let answer = sim
            .post("da", Some(key))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(header(&answer, "inin-ratelimit-count"), Some(count));
        assert_eq!(header(&answer, "inin-ratelimit-allowed"), Some("2"));
        let reset: u64 = header(&answer, "inin-ratelimit-reset")
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&reset), "{reset}");
    }
    let past = sim
        .post("da", Some("c"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(header(&past, "inin-ratelimit-count"), Some("3"));
    let reset = header(&past, "inin-ratelimit-reset").unwrap().to_owned();
    assert_eq!(header(&past, "retry-after"), Some(reset.as_str()));
    genesys_error(past, StatusCode::TOO_MANY_REQUESTS, "too.many.requests").await;
    // A refused call carries the headers too, and counts.
    let unauthorized = sim
        .http
        .post(sim.url(&sim.execute_path("da")))
        .body(body.clone());
    let unauthorized = unauthorized.send().await.unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&unauthorized, "inin-ratelimit-count"), Some("4"));
    let stats = sim.stats().await;
    assert_eq!([&stats["rate_limited"], &stats["accepted"]], [1, 2]);
}

#[tokio::test]
async fn the_inin_count_starts_again_when_the_window_turns() {
    let sim = start(SimConfig {
        inin_ratelimit: 1,
        rate_window_ms: 1000,
        ..genesys()
    })
    .await;
    let body = flat(b"hi", "text/plain", json!({}));
    assert_eq!(inin_count(&sim, "a", &body).await.0, StatusCode::OK);
    // A whole window later the next call opens a new one, which then lasts a second: long
    // enough for the two calls after the sleep however loaded the machine is.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(
        inin_count(&sim, "b", &body).await,
        (StatusCode::OK, Some("1".into()))
    );
    let past = inin_count(&sim, "c", &body).await;
    assert_eq!(past, (StatusCode::TOO_MANY_REQUESTS, Some("2".into())));
}

#[tokio::test]
async fn the_seed_profile_sends_no_genesys_headers() {
    let sim = start(SimConfig {
        inin_ratelimit: 1,
        ..SimConfig::default()
    })
    .await;
    for key in ["a", "b"] {
        let answer = sim
            .post("da", Some(key))
            .body(sample())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
        assert!(header(&answer, "inin-ratelimit-count").is_none());
        assert!(header(&answer, "inin-correlation-id").is_none());
    }
}
