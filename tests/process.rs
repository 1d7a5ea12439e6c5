//! `Worker::process` in-process: the job logic against the simulator and a temporary
//! directory, no broker at all (the job logic knows nothing of AMQP). What a delivery
//! becomes, and the state its copies would carry.

#[path = "support/inproc.rs"]
mod inproc;

use std::time::Duration;

use cxone_worker::job::{ErrorKind, Systemic};
use cxone_worker::outcome::Outcome;
use cxone_worker::sim::SimConfig;
use cxone_worker::state::JobState;
use cxone_worker::worker::NoStages;
use inproc::setup;
use serde_json::{Value, json};

const PDF: &[u8] = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\nsome bytes";

#[tokio::test]
async fn a_job_runs_and_records_without_a_broker() {
    let s = setup(SimConfig::default(), &[]).await;
    let job = json!({"job_id": "p-1", "file": s.file("a.pdf", PDF)});
    let report = s
        .worker
        .process(&s.delivery(&job, JobState::default()), &NoStages)
        .await;
    assert_eq!(report.outcome, Outcome::Succeeded);
    assert_eq!(report.state.attempts, 1);
    assert!(report.state.executed && report.state.execution_id.is_some());
    assert_eq!(report.file.as_deref(), Some(job["file"].as_str().unwrap()));
    assert!(s.dir.path().join("sync/p-1.json").exists());
}

#[tokio::test]
async fn a_failed_call_is_charged_once_and_retried() {
    let s = setup(
        SimConfig {
            fail_first: 1,
            ..SimConfig::default()
        },
        &["--retry-delays=1s,2s"],
    )
    .await;
    let job = json!({"job_id": "p-2", "file": s.file("b.pdf", PDF)});
    let first = s
        .worker
        .process(&s.delivery(&job, JobState::default()), &NoStages)
        .await;
    assert!(
        matches!(first.outcome, Outcome::Retry { delay, .. } if delay == Duration::from_secs(1))
    );
    assert_eq!((first.state.attempts, first.state.step_attempts), (1, 1));
    // The next delivery carries that state and succeeds: two attempts in all.
    let second = s
        .worker
        .process(&s.delivery(&job, first.state.clone()), &NoStages)
        .await;
    assert_eq!(second.outcome, Outcome::Succeeded);
    assert_eq!(second.state.attempts, 2);
}

#[tokio::test]
async fn an_executed_job_only_writes_its_record() {
    let s = setup(SimConfig::default(), &[]).await;
    let job = json!({"job_id": "p-3", "file": s.file("c.pdf", PDF)});
    let ran = JobState {
        attempts: 1,
        executed: true,
        execution_id: Some("exec-earlier".into()),
        ..JobState::default()
    };
    let report = s.worker.process(&s.delivery(&job, ran), &NoStages).await;
    assert_eq!(report.outcome, Outcome::Succeeded);
    assert_eq!(report.state.attempts, 1, "no new call");
    assert_eq!(s.worker.client.calls_sent(), 0);
    let record: Value =
        serde_json::from_slice(&std::fs::read(s.dir.path().join("sync/p-3.json")).unwrap())
            .unwrap();
    assert_eq!(record["execution_id"], "exec-earlier");
}

#[tokio::test]
async fn refusals_end_the_job_and_outages_hand_it_back() {
    let s = setup(SimConfig::default(), &["--max-job-bytes=1000"]).await;
    let cases = [
        (
            json!({"file": "file:///etc/passwd"}),
            ErrorKind::FileAccessDenied,
        ),
        (json!({"file": s.file("e.pdf", b"")}), ErrorKind::EmptyFile),
        (
            json!({"file": s.file("x.pdf", PDF), "fle": 1}),
            ErrorKind::InvalidJob,
        ),
        (
            json!({"file": s.file("m.pdf", PDF), "metadata": {"pad": "x".repeat(2000)}}),
            ErrorKind::InvalidJob,
        ),
    ];
    for (job, kind) in cases {
        let report = s
            .worker
            .process(&s.delivery(&job, JobState::default()), &NoStages)
            .await;
        assert!(
            matches!(&report.outcome, Outcome::Failed { kind: k, .. } if *k == kind),
            "{job}: {:?}",
            report.outcome
        );
        assert_eq!(report.state.attempts, 0, "nothing was attempted");
    }
    // An API that redirects is the deployment's problem: handed back, no charge.
    let job = json!({"file": s.file("r.pdf", PDF), "data_action_id": "status-302"});
    let report = s
        .worker
        .process(&s.delivery(&job, JobState::default()), &NoStages)
        .await;
    assert!(matches!(
        report.outcome,
        Outcome::HandBack {
            cause: Systemic::ApiUnreachable,
            ..
        }
    ));
    assert_eq!(report.state.step_attempts, 0);
}
