//! The API profiles end to end against the simulator speaking each one, in-process:
//! token requests (the simulator refuses any other shape), CXone discovery, body
//! shapes, output, execution ids, waits, error texts, refusals; and chunking in
//! every profile. No broker: each delivery carries the state the one before left.

#[path = "support/inproc.rs"]
mod inproc;

use std::time::{Duration, Instant};

use cxone_worker::job::{ErrorKind, Systemic};
use cxone_worker::outcome::{Outcome, Report};
use cxone_worker::sim::{FailChunk, ProfileName, SimConfig};
use cxone_worker::state::JobState;
use inproc::{Setup, pdf, setup_with};
use serde_json::{Value, json};

const ACCESS_KEY: (&str, &str) = ("AK-1", "ak-secret");
const TENANT: &str = "11e7-tenant";

fn sim(profile: ProfileName) -> SimConfig {
    SimConfig {
        profile,
        client_id: "test-client".into(),
        client_secret: "test-secret".into(),
        access_key_id: ACCESS_KEY.0.into(),
        access_key_secret: ACCESS_KEY.1.into(),
        tenant_id: TENANT.into(),
        ..SimConfig::default()
    }
}

/// The worker's API flags for `profile` against the simulator at `url`: cxone finds
/// its token endpoint and API host from the issuer alone.
fn api(profile: ProfileName) -> impl FnOnce(&str) -> Vec<String> {
    move |url| match profile {
        ProfileName::Seed => vec![format!("--api-url={url}")],
        ProfileName::Genesys => vec!["--api-profile=genesys".into(), format!("--api-url={url}")],
        ProfileName::Cxone => vec![
            "--api-profile=cxone".into(),
            format!("--issuer={url}"),
            format!("--access-key-id={}", ACCESS_KEY.0),
            format!("--access-key-secret={}", ACCESS_KEY.1),
        ],
    }
}

async fn profile(p: ProfileName, knobs: SimConfig, extra: &[&str]) -> Setup {
    setup_with(knobs, api(p), extra).await
}

const PROFILES: [ProfileName; 3] = [ProfileName::Seed, ProfileName::Genesys, ProfileName::Cxone];

fn failed_kind(r: &Report) -> Option<ErrorKind> {
    match &r.outcome {
        Outcome::Failed { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[tokio::test]
async fn every_profile_runs_a_job_in_its_own_shapes() {
    for p in PROFILES {
        let s = profile(p, sim(p), &[]).await;
        let job = json!({"job_id": format!("{p:?}-1"), "file": s.file("a.pdf", &pdf(3000)),
                         "metadata": {"source": "billing", "n": 2}});
        let r = s.process(&job, JobState::default()).await;
        assert_eq!(r.outcome, Outcome::Succeeded, "{p:?}: {:?}", r.outcome);
        let stats = s.stats().await;
        let key = &stats["keys"][format!("{p:?}-1")];
        assert_eq!(key["metadata"]["source"], "billing", "{p:?}: {stats}");
        assert_eq!(
            stats["token_rejected"], 0,
            "{p:?}: the token request's shape"
        );
        let id = r.state.execution_id.clone().expect("an execution id");
        match p {
            // The id Genesys names in ININ-Correlation-Id, the output its body.
            ProfileName::Genesys => {
                assert_eq!(key["executionIds"][0], id.as_str(), "{stats}");
                let output = r.output.clone().expect("the action's output");
                assert_eq!(output["receivedBytes"], 3000, "{output}");
                assert_eq!(output["metadata"]["n"], 2);
            }
            _ => assert_eq!(key["executionId"], id.as_str(), "{p:?}"),
        }
        let result = {
            let mut r = r.clone();
            r.outcome = Outcome::Succeeded;
            r.result().unwrap()
        };
        assert!(
            result.get("output").is_some(),
            "{p:?}: output in the result: {result}"
        );
    }
}

#[tokio::test]
async fn cxone_finds_its_token_endpoint_and_api_host_from_the_issuer() {
    let s = profile(ProfileName::Cxone, sim(ProfileName::Cxone), &[]).await;
    let job = json!({"job_id": "cx-1", "file": s.file("c.pdf", &pdf(100))});
    assert_eq!(
        s.process(&job, JobState::default()).await.outcome,
        Outcome::Succeeded
    );
    // A wrong access key is refused credentials: the worker's problem, a pause.
    let wrong = SimConfig {
        access_key_secret: "other".into(),
        ..sim(ProfileName::Cxone)
    };
    let s = profile(ProfileName::Cxone, wrong, &[]).await;
    let job = json!({"job_id": "cx-2", "file": s.file("c.pdf", &pdf(100))});
    let r = s.process(&job, JobState::default()).await;
    assert!(
        matches!(
            r.outcome,
            Outcome::HandBack {
                cause: Systemic::CredentialsRefused,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
}

#[tokio::test]
async fn genesys_errors_say_code_message_and_context() {
    let s = profile(ProfileName::Genesys, sim(ProfileName::Genesys), &[]).await;
    let job = json!({"job_id": "g-400", "file": s.file("g.pdf", &pdf(10)), "data_action_id": "status-400"});
    let r = s.process(&job, JobState::default()).await;
    let Outcome::Failed { kind, error } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(*kind, ErrorKind::Rejected);
    assert!(
        error.starts_with("API answered 400 ") && error.contains("(contextId "),
        "{error}"
    );
}

#[tokio::test]
async fn a_flat_body_refuses_what_it_cannot_carry_before_any_call() {
    let s = profile(ProfileName::Genesys, sim(ProfileName::Genesys), &[]).await;
    for (id, metadata) in [
        ("nested", json!({"list": [1, 2]})),
        ("reserved", json!({"orgId": "x"})),
        ("payload", json!({"binaryPayload": "x"})),
        ("chunk", json!({"chunkIndex": 0})),
    ] {
        let job = json!({"job_id": id, "file": s.file("f.pdf", &pdf(10)), "metadata": metadata});
        let r = s.process(&job, JobState::default()).await;
        assert_eq!(
            failed_kind(&r),
            Some(ErrorKind::InvalidJob),
            "{id}: {:?}",
            r.outcome
        );
    }
    assert_eq!(s.stats().await["execute_requests"], 0);
}

#[tokio::test]
async fn a_large_output_is_left_out_and_said_so() {
    let knobs = SimConfig {
        output_bytes: 70 * 1024,
        ..sim(ProfileName::Genesys)
    };
    let s = profile(ProfileName::Genesys, knobs, &[]).await;
    let job = json!({"job_id": "big-out", "file": s.file("o.pdf", &pdf(10))});
    let r = s.process(&job, JobState::default()).await;
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert!(r.output.is_none() && r.output_truncated);
    let result = r.result().unwrap();
    assert_eq!(result["output_truncated"], true);
    assert!(result.get("output").is_none());
}

#[tokio::test]
async fn a_spent_inin_ratelimit_makes_every_call_wait_instead_of_a_429() {
    let knobs = SimConfig {
        inin_ratelimit: 2,
        rate_window_ms: 2000,
        ..sim(ProfileName::Genesys)
    };
    let s = profile(ProfileName::Genesys, knobs, &["--limit-scope=process"]).await;
    let started = Instant::now();
    for i in 0..4 {
        let job = json!({"job_id": format!("rl-{i}"), "file": s.file("r.pdf", &pdf(10))});
        let r = s.process(&job, JobState::default()).await;
        assert_eq!(r.outcome, Outcome::Succeeded, "{:?}", r.outcome);
    }
    let stats = s.stats().await;
    assert_eq!(
        stats["rate_limited"], 0,
        "the worker waited instead: {stats}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the second call spent the window: the third waited for it"
    );
}

#[tokio::test]
async fn a_429_waits_and_is_no_attempt() {
    let knobs = SimConfig {
        rate_limit: 1,
        rate_window_ms: 1000,
        retry_after: "1".into(),
        ..sim(ProfileName::Genesys)
    };
    let s = profile(ProfileName::Genesys, knobs, &["--limit-scope=process"]).await;
    for i in 0..2 {
        let job = json!({"job_id": format!("w-{i}"), "file": s.file("w.pdf", &pdf(10))});
        let r = s.process(&job, JobState::default()).await;
        assert_eq!(r.outcome, Outcome::Succeeded, "{:?}", r.outcome);
        assert_eq!(r.state.attempts, 1);
    }
    assert!(s.stats().await["rate_limited"].as_u64() >= Some(1));
}

/// Genesys caps requests at 512000 bytes by default; the simulator is told to
/// refuse anything larger in every profile.
const CAP: &str = "--max-request-bytes=512000";

fn capped(p: ProfileName) -> SimConfig {
    SimConfig {
        max_body: 512_000,
        ..sim(p)
    }
}

/// The simulator's record of the upload of `key`.
fn upload<'a>(stats: &'a Value, key: &str) -> &'a Value {
    &stats["uploads"][key]
}

#[tokio::test]
async fn five_megabytes_arrive_whole_in_chunks_in_every_profile() {
    for p in PROFILES {
        let s = profile(p, capped(p), &[CAP, "--max-payload-bytes=20000000"]).await;
        let data = pdf(5_000_000);
        let id = format!("big-{p:?}");
        let job = json!({"job_id": id, "file": s.file("big.pdf", &data), "metadata": {"m": "v"}});
        let r = s.process(&job, JobState::default()).await;
        assert_eq!(r.outcome, Outcome::Succeeded, "{p:?}: {:?}", r.outcome);
        let stats = s.stats().await;
        let u = upload(&stats, &id);
        assert_eq!(u["complete"], true, "{p:?}: {u}");
        assert_eq!(
            u["sha256_matches"], true,
            "{p:?}: the reassembly is the file"
        );
        assert_eq!(u["repeats"], 0);
        assert_eq!(stats["too_large"], 0, "every body within the cap");
        let count = r.state.chunks.len();
        assert_eq!(u["count"], count);
        assert!(
            count >= 10,
            "{count} chunks of at most 512000 bytes of body"
        );
        let result = r.result().unwrap();
        assert_eq!(result["chunk_count"], count);
        assert_eq!(result["chunks"].as_array().unwrap().len(), count);
        assert_eq!(
            result["execution_id"],
            result["chunks"][count - 1]["execution_id"]
        );
        // One record for the whole file.
        let record = s.record(&id);
        let decoded = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            record["encoded_data"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(decoded, data, "{p:?}: the record holds the whole file");
    }
}

#[tokio::test]
async fn a_chunk_that_fails_twice_resumes_there_and_sends_no_earlier_one_again() {
    let knobs = SimConfig {
        fail_chunk: Some(FailChunk {
            index: 3,
            attempts: 2,
        }),
        ..capped(ProfileName::Seed)
    };
    // MAX_ATTEMPTS=3 bounds each chunk's attempts.
    let s = profile(ProfileName::Seed, knobs, &[CAP]).await;
    let job = json!({"job_id": "resume-1", "file": s.file("r.pdf", &pdf(3_000_000))});
    let first = s.process(&job, JobState::default()).await;
    assert!(
        matches!(first.outcome, Outcome::Retry { .. }),
        "{:?}",
        first.outcome
    );
    assert_eq!(first.state.chunks.len(), 3, "chunks 0, 1, 2 executed");
    let second = s.process(&job, first.state.clone()).await;
    assert!(matches!(second.outcome, Outcome::Retry { .. }));
    assert_eq!(second.state.step_attempts, 2, "chunk 3's second failure");
    let third = s.process(&job, second.state.clone()).await;
    assert_eq!(third.outcome, Outcome::Succeeded, "{:?}", third.outcome);
    let stats = s.stats().await;
    for i in 0..3 {
        assert_eq!(
            stats["attempts"][format!("resume-1#{i}")],
            1,
            "chunk {i} sent once"
        );
    }
    assert_eq!(
        stats["attempts"]["resume-1#3"], 3,
        "chunk 3: two 503s, then done"
    );
    assert_eq!(upload(&stats, "resume-1")["sha256_matches"], true);
}

#[tokio::test]
async fn chunking_off_makes_a_file_over_the_cap_too_large() {
    let s = profile(
        ProfileName::Seed,
        capped(ProfileName::Seed),
        &[CAP, "--chunking=off"],
    )
    .await;
    let job = json!({"job_id": "off-1", "file": s.file("o.pdf", &pdf(600_000))});
    let r = s.process(&job, JobState::default()).await;
    assert_eq!(
        failed_kind(&r),
        Some(ErrorKind::TooLarge),
        "{:?}",
        r.outcome
    );
    assert_eq!(s.stats().await["execute_requests"], 0);
}

#[tokio::test]
async fn a_body_exactly_at_the_cap_goes_whole_and_one_byte_over_in_chunks() {
    // The body of a file of n bytes is the overhead (every field but the payload,
    // measured on a tiny file) plus its base64.
    let probe = profile(ProfileName::Seed, sim(ProfileName::Seed), &[]).await;
    let small = pdf(300);
    let job = |id: &str, file: &str| json!({"job_id": id, "file": file});
    let r = probe
        .process(&job("x", &probe.file("p.pdf", &small)), JobState::default())
        .await;
    let overhead = u64::try_from(
        serde_json::to_vec(&json!({"inputs": {"binaryPayload": {"value": "", "contentType": "application/pdf"}, "metadata": {}}}))
            .unwrap()
            .len(),
    )
    .unwrap();
    assert_eq!(r.encoded_size, Some(400));
    let size = 3000;
    let cap = overhead + 4000;
    let flag = format!("--max-request-bytes={cap}");
    let knobs = SimConfig {
        max_body: cap as usize,
        ..sim(ProfileName::Seed)
    };
    let s = profile(ProfileName::Seed, knobs, &[&flag]).await;
    let at = s
        .process(
            &job("at-cap", &s.file("a.pdf", &pdf(size))),
            JobState::default(),
        )
        .await;
    assert_eq!(at.outcome, Outcome::Succeeded, "{:?}", at.outcome);
    assert!(
        at.state.chunks.is_empty(),
        "a body exactly at the cap is one request"
    );
    let over = s
        .process(
            &job("over", &s.file("b.pdf", &pdf(size + 1))),
            JobState::default(),
        )
        .await;
    assert_eq!(over.outcome, Outcome::Succeeded, "{:?}", over.outcome);
    assert!(over.state.chunks.len() >= 2, "one byte over goes in chunks");
    let stats = s.stats().await;
    assert_eq!(stats["too_large"], 0);
    assert_eq!(upload(&stats, "over")["sha256_matches"], true);
}
