//! The simulator over real HTTP: each test starts its own server on a free port and checks the
//! answers and `/__stats`: the seed profile against what the reference `sim.mjs` does, the
//! genesys and cxone profiles against what the vendors document and the contract's v2 says.

use std::time::{Duration, Instant};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use cxone_worker::sim::{ProfileName, SimConfig, SimHandle, spawn};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

// The tests of each concern live beside this file and share its harness.
#[path = "sim/chunks.rs"]
mod chunks;
#[path = "sim/cxone.rs"]
mod cxone;
#[path = "sim/execute.rs"]
mod execute;
#[path = "sim/faults.rs"]
mod faults;
#[path = "sim/genesys.rs"]
mod genesys;

/// A running simulator, a client, and a token the simulator issued.
struct Sim {
    handle: SimHandle,
    http: Client,
    token: String,
    profile: ProfileName,
}

/// Starts a simulator and takes a token by the profile's own grant, with the default
/// credentials.
async fn start(cfg: SimConfig) -> Sim {
    let profile = cfg.profile;
    let handle = spawn(cfg).await.expect("simulator starts");
    let mut sim = Sim {
        handle,
        http: Client::new(),
        token: String::new(),
        profile,
    };
    let (status, body) = match profile {
        ProfileName::Seed => {
            sim.grant(
                "test-client",
                "test-secret",
                "grant_type=client_credentials",
            )
            .await
        }
        ProfileName::Genesys => sim.form_token("grant_type=client_credentials").await,
        ProfileName::Cxone => {
            let form = "grant_type=password&username=test-access-key&password=test-access-secret";
            sim.form_token(form).await
        }
    };
    assert_eq!(status, StatusCode::OK, "{body}");
    sim.token = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    sim
}

fn profile(profile: ProfileName) -> SimConfig {
    SimConfig {
        profile,
        ..SimConfig::default()
    }
}

/// Sends and reads the JSON answer.
async fn send(req: RequestBuilder) -> (StatusCode, Value) {
    let answer = req.send().await.expect("request");
    let status = answer.status();
    (status, answer.json().await.expect("json answer"))
}

/// An execute body for `data`, as the worker sends it.
fn body_for(data: &[u8], content_type: &str, metadata: Value) -> String {
    let binary = json!({"value": BASE64_STANDARD.encode(data), "contentType": content_type});
    json!({"inputs": {"binaryPayload": binary, "metadata": metadata}}).to_string()
}

fn sample() -> String {
    body_for(b"hello", "text/plain", json!({"source": "test"}))
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.url())
    }

    /// The seed's token request.
    async fn grant(&self, user: &str, secret: &str, form: &str) -> (StatusCode, Value) {
        self.token_at("/api/v2/oauth/token", user, secret, form)
            .await
    }

    /// A form token request with Basic credentials at `path`.
    async fn token_at(
        &self,
        path: &str,
        user: &str,
        secret: &str,
        form: &str,
    ) -> (StatusCode, Value) {
        let req = self
            .http
            .post(self.url(path))
            .basic_auth(user, Some(secret));
        send(
            req.header("content-type", "application/x-www-form-urlencoded")
                .body(form.to_owned()),
        )
        .await
    }

    /// A token request to the profile's token endpoint with the default client credentials.
    async fn form_token(&self, form: &str) -> (StatusCode, Value) {
        let path = match self.profile {
            ProfileName::Seed => "/api/v2/oauth/token",
            ProfileName::Genesys => "/oauth/token",
            ProfileName::Cxone => "/auth/token",
        };
        self.token_at(path, "test-client", "test-secret", form)
            .await
    }

    /// A small valid execute body in the profile's shape.
    fn sample_body(&self) -> String {
        match self.profile {
            ProfileName::Genesys => {
                json!({"binaryPayload": "aGVsbG8=", "contentType": "text/plain", "source": "test"})
                    .to_string()
            }
            ProfileName::Seed | ProfileName::Cxone => sample(),
        }
    }

    /// The profile's execute path of data action `id`.
    fn execute_path(&self, id: &str) -> String {
        match self.profile {
            ProfileName::Genesys => format!("/api/v2/integrations/actions/{id}/execute"),
            ProfileName::Seed | ProfileName::Cxone => format!("/api/v2/data-actions/{id}/execute"),
        }
    }

    /// An execute of data action `id` with this sim's token and, when given, an idempotency key.
    fn post(&self, id: &str, key: Option<&str>) -> RequestBuilder {
        let req = self.http.post(self.url(&self.execute_path(id)));
        let req = req.bearer_auth(&self.token);
        match key {
            Some(key) => req.header("idempotency-key", key),
            None => req,
        }
    }

    async fn exec(&self, id: &str, key: &str, body: String) -> (StatusCode, Value) {
        send(self.post(id, Some(key)).body(body)).await
    }

    async fn stats(&self) -> Value {
        let (status, stats) = send(self.http.get(self.url("/__stats?keys=1"))).await;
        assert_eq!(status, StatusCode::OK);
        stats
    }

    async fn uploads(&self) -> Value {
        let (status, stats) = send(self.http.get(self.url("/__stats?uploads=1"))).await;
        assert_eq!(status, StatusCode::OK);
        stats["uploads"].clone()
    }
}

#[tokio::test]
async fn token_is_granted_only_for_exact_credentials_and_grant() {
    let sim = start(SimConfig::default()).await;
    let form = "grant_type=client_credentials&scope=data-actions%3Aexecute+x";
    let (status, body) = sim.grant("test-client", "test-secret", form).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "data-actions:execute x");
    let token = body["access_token"].as_str().expect("token");
    assert!(
        token.len() == 48 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );
    assert_ne!(token, sim.token);

    for (user, secret, form) in [
        ("test-client", "wrong", "grant_type=client_credentials"),
        ("other", "test-secret", "grant_type=client_credentials"),
        ("test-client", "test-secret", "grant_type=password"),
        ("test-client", "test-secret", ""),
    ] {
        let (status, body) = sim.grant(user, secret, form).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{user}:{secret} {form}");
        assert_eq!(body, json!({"error": "invalid_client"}));
    }
    let stats = sim.stats().await;
    assert_eq!([&stats["token_requests"], &stats["token_rejected"]], [6, 4]);
}

#[tokio::test]
async fn tokens_expire_after_their_ttl() {
    let sim = start(SimConfig {
        token_ttl: 1,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(sim.exec("da", "k1", sample()).await.0, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = sim.exec("da", "k2", sample()).await;
    assert_eq!(
        answer,
        (StatusCode::UNAUTHORIZED, json!({"error": "invalid_token"}))
    );
    assert_eq!(sim.stats().await["unauthorized"], 1);
}

#[tokio::test]
async fn execute_without_a_valid_bearer_token_is_401() {
    let sim = start(SimConfig::default()).await;
    let url = sim.url("/api/v2/data-actions/da/execute");
    let refused = [
        sim.http.post(&url),
        sim.http.post(&url).bearer_auth("not-a-token"),
        sim.http
            .post(&url)
            .basic_auth("test-client", Some("test-secret")),
        sim.http
            .post(&url)
            .header("authorization", format!("bearer {}", sim.token)),
    ];
    for req in refused {
        let answer = send(req.header("idempotency-key", "k").body(sample())).await;
        assert_eq!(
            answer,
            (StatusCode::UNAUTHORIZED, json!({"error": "invalid_token"}))
        );
    }
    let stats = sim.stats().await;
    assert_eq!(
        [
            &stats["unauthorized"],
            &stats["execute_requests"],
            &stats["accepted"]
        ],
        [4, 4, 0]
    );
}

#[tokio::test]
async fn stats_have_the_reference_fields_and_keys_only_on_request() {
    let sim = start(SimConfig::default()).await;
    let (_, plain) = send(sim.http.get(sim.url("/__stats"))).await;
    let mut names: Vec<&str> = plain
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    let mut expected = vec![
        "token_requests",
        "token_rejected",
        "execute_requests",
        "accepted",
        "unauthorized",
        "rate_limited",
        "server_errors",
        "bad_requests",
        "too_large",
        "duplicate_keys",
        "missing_key",
        "in_flight",
        "max_in_flight",
        "window_start",
        "window_count",
        "max_window_count",
        "unique_keys",
    ];
    expected.sort_unstable();
    assert_eq!(names, expected);
    let with_keys = sim.stats().await;
    assert_eq!(
        [&with_keys["keys"], &with_keys["attempts"]],
        [&json!({}), &json!({})]
    );
}

#[tokio::test]
async fn reset_clears_stats_and_tokens() {
    let sim = start(SimConfig::default()).await;
    assert_eq!(sim.exec("da", "r", sample()).await.0, StatusCode::ACCEPTED);
    let answer = send(sim.http.post(sim.url("/__reset"))).await;
    assert_eq!(answer, (StatusCode::OK, json!({"ok": true})));
    let stats = sim.stats().await;
    let fields = [
        "token_requests",
        "execute_requests",
        "accepted",
        "unique_keys",
        "max_in_flight",
        "max_window_count",
    ];
    for field in fields {
        assert_eq!(stats[field], 0, "{field}");
    }
    assert_eq!(
        [&stats["keys"], &stats["attempts"]],
        [&json!({}), &json!({})]
    );
    assert_eq!(
        sim.exec("da", "r", sample()).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn everything_else_is_a_json_404() {
    let sim = start(SimConfig::default()).await;
    let requests = [
        sim.http.get(sim.url("/api/v2/oauth/token")),
        sim.http.get(sim.url("/nowhere")),
        sim.http.post(sim.url("/__stats")),
        sim.http.get(sim.url("/__reset")),
        sim.post("", Some("k")),
        sim.post("a/b", Some("k")),
    ];
    for req in requests {
        assert_eq!(
            send(req).await,
            (StatusCode::NOT_FOUND, json!({"error": "not found"}))
        );
    }
    let head = sim
        .http
        .head(sim.url("/__stats"))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    assert_eq!(sim.stats().await["execute_requests"], 0);
}

#[tokio::test]
async fn a_retry_after_that_is_no_header_value_is_refused_at_start() {
    let cfg = SimConfig {
        retry_after: "1\n2".into(),
        ..SimConfig::default()
    };
    let err = spawn(cfg).await.expect_err("invalid Retry-After");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let sim = start(SimConfig::default()).await;
    let addr = sim.handle.addr();
    drop(sim);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening on {addr}"
    );
}
