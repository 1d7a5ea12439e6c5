//! Valid and invalid execute bodies: what is answered and what `/__stats` records.

use super::*;

#[tokio::test]
async fn accepted_execute_is_recorded_under_its_key() {
    let sim = start(SimConfig::default()).await;
    let data: Vec<u8> = (0..10_240u32).map(|i| (i * 31 % 251) as u8).collect();
    let body = body_for(
        &data,
        "application/pdf",
        json!({"source": "billing", "n": 3}),
    );
    let (status, answer) = sim.exec("abc%20def", "job-1", body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let execution_id = answer["executionId"].as_str().expect("executionId");
    assert!(
        execution_id.starts_with("exec-") && execution_id.len() == 41,
        "{execution_id}"
    );
    assert_eq!(answer["status"], "queued");
    assert_eq!(answer["message"], "Data action execution accepted");

    let stats = sim.stats().await;
    let expected = json!({
        "count": 1, "executionId": execution_id, "dataActionId": "abc def",
        "contentType": "application/pdf", "size": 10_240,
        "sha256": hex::encode(Sha256::digest(&data)), "metadata": {"source": "billing", "n": 3},
    });
    assert_eq!(stats["keys"], json!({ "job-1": expected }));
    assert_eq!(stats["attempts"], json!({"job-1": 1}));
    assert_eq!([&stats["accepted"], &stats["unique_keys"]], [1, 1]);
}

#[tokio::test]
async fn a_repeated_key_answers_the_first_execution_id() {
    let sim = start(SimConfig::default()).await;
    let (_, first) = sim.exec("da", "dup", sample()).await;
    let (status, second) = sim.exec("da", "dup", sample()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(second["executionId"], first["executionId"]);
    assert_eq!(second["message"], "duplicate");
    let stats = sim.stats().await;
    assert_eq!(
        [
            &stats["duplicate_keys"],
            &stats["accepted"],
            &stats["keys"]["dup"]["count"]
        ],
        [1, 1, 2]
    );
}

#[tokio::test]
async fn executes_without_a_key_are_counted_and_kept_apart() {
    let sim = start(SimConfig::default()).await;
    let (_, a) = send(sim.post("da", None).body(sample())).await;
    let (_, b) = send(sim.post("da", None).body(sample())).await;
    assert_ne!(a["executionId"], b["executionId"]);
    let stats = sim.stats().await;
    assert_eq!([&stats["missing_key"], &stats["unique_keys"]], [2, 2]);
    assert_eq!(stats["attempts"], json!({"": 2}));
    let keys = stats["keys"].as_object().expect("keys");
    assert!(keys.keys().all(|k| k.starts_with("nokey-")), "{keys:?}");
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let sim = start(SimConfig::default()).await;
    let answer = sim.exec("da", "j", "{not json".into()).await;
    assert_eq!(
        answer,
        (StatusCode::BAD_REQUEST, json!({"error": "invalid json"}))
    );
    let binary = |b: Value| json!({"inputs": {"binaryPayload": b}});
    let payloads = [
        binary(json!({"value": "QU-_", "contentType": "a/b"})),
        binary(json!({"value": "QUJ", "contentType": "a/b"})),
        binary(json!({"value": "QU=D", "contentType": "a/b"})),
        binary(json!({"contentType": "a/b"})),
        binary(json!({"value": "QUJD"})),
        binary(json!({"value": 12, "contentType": "a/b"})),
        json!({"inputs": {}}),
        json!([1, 2]),
    ];
    for (i, payload) in payloads.iter().enumerate() {
        let answer = sim.exec("da", &format!("b{i}"), payload.to_string()).await;
        let refused = (
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid base64 payload"}),
        );
        assert_eq!(answer, refused, "{payload}");
    }
    let stats = sim.stats().await;
    assert_eq!(stats["bad_requests"], 1 + payloads.len());
    assert_eq!(stats["unique_keys"], 0);
}

#[tokio::test]
async fn hash_off_records_size_without_sha256() {
    let sim = start(SimConfig {
        hash: false,
        ..SimConfig::default()
    })
    .await;
    let body = body_for(&[7u8; 1001], "application/octet-stream", Value::Null);
    assert_eq!(sim.exec("da", "h", body).await.0, StatusCode::ACCEPTED);
    let record = &sim.stats().await["keys"]["h"];
    assert_eq!(
        [&record["size"], &record["sha256"], &record["metadata"]],
        [&json!(1001), &Value::Null, &Value::Null]
    );
}

#[tokio::test]
async fn the_trace_context_of_each_execute_is_recorded_under_its_key() {
    for name in [ProfileName::Seed, ProfileName::Genesys] {
        let sim = start(profile(name)).await;
        let body = match name {
            ProfileName::Genesys => {
                json!({"binaryPayload": "aGk=", "contentType": "text/plain"}).to_string()
            }
            _ => sample(),
        };
        let first = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let retry = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01";
        let traced = |parent: &str| {
            sim.post("da", Some("traced"))
                .header("traceparent", parent)
                .header("tracestate", "vendor=abc")
                .body(body.clone())
        };
        assert!(traced(first).send().await.unwrap().status().is_success());
        assert!(traced(retry).send().await.unwrap().status().is_success());
        let only_parent = sim
            .post("da", Some("parent-only"))
            .header("traceparent", first);
        assert!(
            only_parent
                .body(body.clone())
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
        assert!(
            sim.post("da", Some("untraced"))
                .body(body.clone())
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
        let keys = &sim.stats().await["keys"];
        assert_eq!(
            keys["traced"]["trace"],
            json!([{"traceparent": first, "tracestate": "vendor=abc"},
                   {"traceparent": retry, "tracestate": "vendor=abc"}]),
            "{name:?}"
        );
        assert_eq!(
            keys["parent-only"]["trace"],
            json!([{"traceparent": first}])
        );
        assert!(
            keys["untraced"].get("trace").is_none(),
            "{name:?}: {}",
            keys["untraced"]
        );
    }
}

#[tokio::test]
async fn the_nested_body_takes_the_configured_field_names() {
    let sim = start(SimConfig {
        payload_field: "document".into(),
        content_type_field: "mime".into(),
        ..SimConfig::default()
    })
    .await;
    let renamed = json!({"inputs": {"document": {"value": "aGk=", "mime": "text/plain"},
        "metadata": {"k": "v"}}});
    let (status, _) = sim.exec("da", "renamed", renamed.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let answer = sim.exec("da", "v1-names", sample()).await;
    let refused = json!({"error": "invalid base64 payload"});
    assert_eq!(answer, (StatusCode::BAD_REQUEST, refused));
    let stats = sim.stats().await;
    let record = &stats["keys"]["renamed"];
    assert_eq!(
        [&record["contentType"], &record["size"]],
        [&json!("text/plain"), &json!(2)]
    );
    assert!(stats["keys"].get("v1-names").is_none());
}
