//! The cxone profile: the discovery documents, the access-key password grant and its
//! `id_token`, refusals in OAuth's words, and execute as in the seed profile.

use base64::prelude::BASE64_URL_SAFE_NO_PAD;

use super::*;

fn cxone() -> SimConfig {
    profile(ProfileName::Cxone)
}

const GRANT: &str = "grant_type=password&username=test-access-key&password=test-access-secret";

/// The JSON of one base64url part of a JWT.
fn jwt_part(part: &str) -> Value {
    let bytes = BASE64_URL_SAFE_NO_PAD.decode(part).expect("base64url");
    serde_json::from_slice(&bytes).expect("json part")
}

#[tokio::test]
async fn openid_discovery_points_at_this_simulator_whatever_its_host() {
    let sim = start(cxone()).await;
    let (status, doc) = send(sim.http.get(sim.url("/.well-known/openid-configuration"))).await;
    assert_eq!(status, StatusCode::OK);
    let base = sim.handle.url();
    assert_eq!(doc["issuer"], base.as_str());
    assert_eq!(doc["token_endpoint"], format!("{base}/auth/token"));
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic"])
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    for field in [
        "authorization_endpoint",
        "jwks_uri",
        "response_types_supported",
    ] {
        assert!(!doc[field].is_null(), "{field} in {doc}");
    }
    let elsewhere = sim
        .http
        .get(sim.url("/.well-known/openid-configuration"))
        .header("host", "cxone.example.test:8443");
    let (_, doc) = send(elsewhere).await;
    assert_eq!(doc["issuer"], "http://cxone.example.test:8443");
    assert_eq!(
        doc["token_endpoint"],
        "http://cxone.example.test:8443/auth/token"
    );
}

#[tokio::test]
async fn the_tenant_discovery_gives_the_api_endpoint_of_the_known_tenant_only() {
    let sim = start(SimConfig {
        tenant_id: "tenant-42".into(),
        ..cxone()
    })
    .await;
    let url = |q: &str| sim.url(&format!("/.well-known/cxone-configuration{q}"));
    let (status, doc) = send(sim.http.get(url("?tenantId=tenant-42"))).await;
    assert_eq!(status, StatusCode::OK);
    let base = sim.handle.url();
    assert_eq!(doc["api_endpoint"], base.as_str());
    assert_eq!(
        [&doc["tenantId"], &doc["private"]],
        [&json!("tenant-42"), &json!(false)]
    );
    for field in ["area", "cluster", "domain", "ui_endpoint", "auth_endpoint"] {
        assert!(doc[field].is_string(), "{field} in {doc}");
    }
    let (status, body) = send(sim.http.get(url("?tenantId=someone-else"))).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
    let (status, body) = send(sim.http.get(url(""))).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_request"))
    );
}

#[tokio::test]
async fn the_access_key_grant_answers_an_id_token_naming_the_tenant() {
    let sim = start(SimConfig {
        token_ttl: 900,
        ..cxone()
    })
    .await;
    let (status, token) = sim.form_token(GRANT).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    assert_eq!(
        [&token["token_type"], &token["expires_in"]],
        [&json!("Bearer"), &json!(900)]
    );
    assert!(
        token["refresh_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    let id_token = token["id_token"].as_str().expect("id_token");
    let parts: Vec<&str> = id_token.split('.').collect();
    assert_eq!(parts.len(), 3, "{id_token}");
    assert_eq!(jwt_part(parts[0])["alg"], "RS256");
    assert_eq!(jwt_part(parts[0])["typ"], "JWT");
    let claims = jwt_part(parts[1]);
    assert_eq!(claims["tenantId"], "11eb0e5b-8f33-4c51-9b5d-0242ac110002");
    assert_eq!(claims["iss"], sim.handle.url().as_str());
    assert_eq!(claims["aud"], "test-client");
    assert!(claims["sub"].is_string());
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 900);
    assert!(
        !BASE64_URL_SAFE_NO_PAD
            .decode(parts[2])
            .expect("signature")
            .is_empty()
    );
    let (status, _) = sim.exec("da", "with-cxone-token", sample()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn grants_other_than_the_access_key_are_refused_in_oauth_words() {
    let sim = start(cxone()).await;
    let refusals = [
        ("test-client", "wrong", GRANT, 401, "invalid_client"),
        (
            "test-client",
            "test-secret",
            "grant_type=client_credentials",
            400,
            "unsupported_grant_type",
        ),
        (
            "test-client",
            "test-secret",
            "username=test-access-key",
            400,
            "invalid_request",
        ),
        (
            "test-client",
            "test-secret",
            "grant_type=password&username=test-access-key",
            400,
            "invalid_request",
        ),
        (
            "test-client",
            "test-secret",
            "grant_type=password&username=test-access-key&password=wrong",
            400,
            "invalid_grant",
        ),
        (
            "test-client",
            "test-secret",
            "grant_type=password&username=other&password=test-access-secret",
            400,
            "invalid_grant",
        ),
    ];
    for (user, secret, form, status, error) in refusals {
        let (got, body) = sim.token_at("/auth/token", user, secret, form).await;
        assert_eq!(got.as_u16(), status, "{user}:{secret} {form}");
        assert_eq!(body["error"], error, "{form}: {body}");
        assert!(body["error_description"].is_string(), "{body}");
    }
    let (status, body) = sim
        .grant(
            "test-client",
            "test-secret",
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"error": "not found"}))
    );
    let stats = sim.stats().await;
    assert_eq!([&stats["token_requests"], &stats["token_rejected"]], [7, 6]);
}

#[tokio::test]
async fn cxone_executes_as_the_seed_does() {
    let sim = start(cxone()).await;
    let (status, first) = sim.exec("da", "same", sample()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(
        first["executionId"]
            .as_str()
            .is_some_and(|id| id.starts_with("exec-"))
    );
    let (_, second) = sim.exec("da", "same", sample()).await;
    assert_eq!(
        [&second["executionId"], &second["message"]],
        [&first["executionId"], &json!("duplicate")]
    );
    let answer = sim.exec("da", "bad", "{".into()).await;
    assert_eq!(
        answer,
        (StatusCode::BAD_REQUEST, json!({"error": "invalid json"}))
    );
}

#[tokio::test]
async fn discovery_documents_belong_to_the_cxone_profile_only() {
    for name in [ProfileName::Seed, ProfileName::Genesys] {
        let sim = start(profile(name)).await;
        for path in [
            "/.well-known/openid-configuration",
            "/.well-known/cxone-configuration?tenantId=x",
        ] {
            let answer = sim.http.get(sim.url(path)).send().await.expect("get");
            assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{name:?} {path}");
        }
    }
}
