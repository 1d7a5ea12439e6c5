//! `cxone-worker enqueue` against a real RabbitMQ: files, directories, globs and
//! manifests, validation by line number, deterministic ids, checkpoints, pacing, and
//! backfills interrupted by SIGTERM (resumed exactly once) or SIGKILL (at least once,
//! duplicates only within the confirm window and under the same job id); awkward
//! inputs, checkpoint locks and declared types in enqueue/inputs.rs.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/cleanup.rs"]
mod cleanup;
#[path = "enqueue/inputs.rs"]
mod inputs;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use broker::{Broker, signal};
use cxone_worker::job::Job;
use lapin::types::FieldTable;
use sha2::{Digest, Sha256};

fn write_files(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::write(
            dir.join(format!("f{i:05}.pdf")),
            format!("%PDF-1.4 file {i}\n"),
        )
        .unwrap();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The ids `enqueue` would give these arguments (from its own dry run).
async fn planned_ids(b: &Broker, args: &[&str]) -> Vec<String> {
    let mut all = vec!["enqueue", "--dry-run"];
    all.extend(args);
    let ran = b.run(&all).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    ran.stdout
        .lines()
        .map(|l| Job::parse(l.as_bytes()).unwrap().job_id.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_directories_and_globs_become_contract_jobs() {
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    for f in ["a.pdf", "b.png", "c.txt", "sub/d.pdf", "sub/deeper/e.pdf"] {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"%PDF-1.4\n").unwrap();
    }
    let jobs = b.topology.jobs();

    // A directory gives its own files; --glob filters them.
    let ran = b.run(&["enqueue", path(&root), "--glob", "*.pdf"]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stdout.contains("published 1,"), "{}", ran.stdout);
    let got = b.drain(&jobs).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].json()["file"],
        format!("file://{}", root.join("a.pdf").display())
    );

    // --recursive walks the tree; globs add up; flags fill data action and metadata.
    let args = [
        "enqueue",
        path(&root),
        "-r",
        "--glob",
        "*.pdf",
        "--glob",
        "*.png",
    ];
    let more = [
        "--data-action-id",
        "act-7",
        "--metadata",
        "source=backfill",
        "--metadata",
        "batch=1",
    ];
    let ran = b.run(&[&args[..], &more[..]].concat()).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let got = b.drain(&jobs).await;
    let files: Vec<String> = got
        .iter()
        .map(|m| m.json()["file"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = ["a.pdf", "b.png", "sub/d.pdf", "sub/deeper/e.pdf"]
        .iter()
        .map(|f| format!("file://{}", root.join(f).display()))
        .collect();
    assert_eq!(files, want, "name order, depth first");
    for m in &got {
        let job = Job::parse(&m.body).expect("a contract job");
        assert_eq!(job.data_action_id.as_deref(), Some("act-7"));
        assert_eq!(job.metadata.as_ref().unwrap()["source"], "backfill");
        assert_eq!(job.metadata.as_ref().unwrap()["batch"], "1");
        assert_eq!(
            m.props.message_id().as_ref().unwrap().as_str(),
            job.job_id.as_deref().unwrap()
        );
        assert_eq!(m.props.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            m.props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
    }

    // A file named on the command line is taken whatever the glob says.
    let ran = b
        .run(&["enqueue", path(&root.join("c.txt")), "--glob", "*.pdf"])
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(b.drain(&jobs).await.len(), 1);

    // A path that does not exist is refused, the rest published, exit 1.
    let ran = b
        .run(&[
            "enqueue",
            path(&root.join("a.pdf")),
            path(&root.join("nope.pdf")),
        ])
        .await;
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("nope.pdf"), "{}", ran.stderr);
    assert!(
        ran.stdout.contains("published 1,") && ran.stdout.contains("refused 1"),
        "{}",
        ran.stdout
    );
    assert_eq!(b.drain(&jobs).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_deterministic_and_a_checkpoint_makes_reruns_publish_nothing_twice() {
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("in");
    write_files(&files, 3);
    let jobs = b.topology.jobs();

    // Without a checkpoint a re-run publishes again, under the very same ids.
    assert_eq!(b.run(&["enqueue", path(&files)]).await.code, 0);
    let first = b.drain_ids(&jobs).await;
    assert_eq!(b.run(&["enqueue", path(&files)]).await.code, 0);
    let second = b.drain_ids(&jobs).await;
    assert_eq!(first.len(), 3);
    assert_eq!(first, second, "the same files give the same job ids");
    assert!(first.iter().all(|id| id.starts_with("file-")));

    // With a checkpoint the re-run publishes nothing.
    let cp = dir.path().join("backfill.checkpoint");
    let ran = b
        .run(&["enqueue", path(&files), "--checkpoint", path(&cp)])
        .await;
    assert!(ran.stdout.contains("published 3,"), "{}", ran.stdout);
    let ran = b
        .run(&["enqueue", path(&files), "--checkpoint", path(&cp)])
        .await;
    assert_eq!(ran.code, 0);
    assert!(
        ran.stdout.contains("published 0, skipped 3"),
        "{}",
        ran.stdout
    );
    assert_eq!(b.drain_ids(&jobs).await, first);

    // A file that changed is a new job.
    std::fs::write(files.join("f00001.pdf"), "%PDF-1.4 changed, and longer\n").unwrap();
    let ran = b
        .run(&["enqueue", path(&files), "--checkpoint", path(&cp)])
        .await;
    assert!(
        ran.stdout.contains("published 1, skipped 2"),
        "{}",
        ran.stdout
    );
    let changed = b.drain_ids(&jobs).await;
    assert_eq!(changed.len(), 1);
    assert!(!first.contains(&changed[0]));

    // The checkpoint belongs to its prefix.
    let other = b
        .cli(&["enqueue", path(&files), "--checkpoint", path(&cp)])
        .env("CXONE_QUEUE_PREFIX", "other")
        .output();
    let other = other.await.unwrap();
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).contains("belongs to CXONE_QUEUE_PREFIX"));
}

const MANIFEST: &str = r#"{"job_id":"m-1","file":"s3://bucket/a.pdf"}
{not json
{"job_id":"m-3","file":"s3://bucket/c.pdf","colour":"red"}

{"file":"https://files.example/e.pdf","metadata":{"k":"v"}}
{"job_id":"m-6","file":"/etc/passwd"}
{"job_id":"m-1","file":"s3://bucket/a.pdf"}
{"job_id":"m-1","file":"s3://bucket/other.pdf"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_lines_are_validated_and_bad_ones_reported_by_number() {
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("jobs.ndjson");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let jobs = b.topology.jobs();

    // --strict: the bad lines are named and nothing is sent.
    let ran = b
        .run(&["enqueue", "--manifest", path(&manifest), "--strict"])
        .await;
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr
            .contains("--strict: 4 bad input(s), nothing published"),
        "{}",
        ran.stderr
    );
    assert_eq!(b.ready(&jobs).await, 0);

    let ran = b
        .run(&[
            "enqueue",
            "--manifest",
            path(&manifest),
            "--metadata",
            "k=flag",
            "--metadata",
            "x=1",
        ])
        .await;
    assert_eq!(ran.code, 1, "bad lines make the exit status 1");
    let refused: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|l| l.contains("refused"))
        .collect();
    let name = path(&manifest);
    assert_eq!(refused.len(), 4, "{}", ran.stderr);
    assert!(
        refused[0].contains(&format!("{name}:2: not a contract job")),
        "{}",
        refused[0]
    );
    assert!(
        refused[1].contains(&format!("{name}:3: "))
            && refused[1].contains("unknown field `colour`"),
        "{}",
        refused[1]
    );
    assert!(
        refused[2].contains(&format!("{name}:6: ")) && refused[2].contains("is not a file://"),
        "{}",
        refused[2]
    );
    assert!(
        refused[3].contains(&format!("{name}:8: ")) && refused[3].contains(&format!("{name}:1")),
        "{}",
        refused[3]
    );
    assert!(
        ran.stdout.contains("published 2, skipped 1"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("refused 4 (4 invalid)"),
        "{}",
        ran.stdout
    );

    let got = b.drain(&jobs).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].json()["job_id"], "m-1");
    assert_eq!(
        got[0].json()["metadata"],
        serde_json::json!({"k": "flag", "x": "1"})
    );
    // Line 5 has no job_id: its message id is the key the worker would derive anyway.
    let five = &got[1];
    assert!(five.json().get("job_id").is_none());
    assert_eq!(
        five.json()["metadata"],
        serde_json::json!({"k": "v", "x": "1"}),
        "the job's own key wins"
    );
    let key = format!("sha256:{}", hex::encode(Sha256::digest(&five.body)));
    assert_eq!(five.props.message_id().as_ref().unwrap().as_str(), key);

    // `-` reads stdin.
    let good =
        "{\"job_id\":\"s-1\",\"file\":\"s3://b/1\"}\n{\"job_id\":\"s-2\",\"file\":\"s3://b/2\"}\n";
    let ran = b
        .run_with_input(&["enqueue", "--manifest", "-"], Some(good.as_bytes()))
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(b.drain_ids(&jobs).await, ["s-1", "s-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_jobs_and_needs_no_broker() {
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    write_files(&dir.path().join("in"), 2);
    let cp = dir.path().join("cp");
    let mut cmd = b.cli(&[
        "enqueue",
        "--dry-run",
        path(&dir.path().join("in")),
        "--checkpoint",
        path(&cp),
    ]);
    let out = cmd
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 2);
    assert!(stdout.lines().all(|l| Job::parse(l.as_bytes()).is_ok()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dry run: would publish 2"));
    assert!(!cp.exists(), "a dry run writes no checkpoint");
    assert_eq!(b.ready(&b.topology.jobs()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_paces_the_publishes() {
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), 31);
    let started = Instant::now();
    let ran = b.run(&["enqueue", path(dir.path()), "--rate", "60"]).await;
    let took = started.elapsed();
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        took >= Duration::from_millis(480),
        "31 jobs at 60/s took {took:?}"
    );
    assert_eq!(b.ready(&b.topology.jobs()).await, 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_stop_with_status_2_and_a_missing_topology_with_1() {
    let b = Broker::bare().await;
    for (args, flag) in [
        (&["enqueue", "/tmp", "--rate", "0"][..], "--rate"),
        (
            &["enqueue", "/tmp", "--metadata", "novalue"][..],
            "--metadata",
        ),
        (
            &["enqueue", "/tmp", "--confirm-window", "0"][..],
            "--confirm-window",
        ),
    ] {
        let ran = b.run(args).await;
        assert_eq!(ran.code, 2, "{args:?}");
        assert!(
            ran.stderr.starts_with(&format!("cxone-worker: {flag}: ")),
            "{}",
            ran.stderr
        );
    }
    assert_eq!(
        b.run(&["enqueue", "/tmp", "--manifest", "x"]).await.code,
        2,
        "paths and a manifest exclude each other"
    );
    assert_eq!(b.run(&["enqueue"]).await.code, 2, "some input is required");

    // Never declared: refused before anything is sent, naming the prefix.
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), 1);
    let ran = b.run(&["enqueue", path(dir.path())]).await;
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr
            .contains(&format!("{}.jobs\" does not exist", b.prefix)),
        "{}",
        ran.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_the_broker_cannot_route_are_refused_and_not_checkpointed() {
    let b = Broker::new().await;
    let jobs = b.topology.jobs();
    b.channel
        .queue_unbind(
            jobs.as_str().into(),
            jobs.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_files(&dir.path().join("in"), 2);
    let cp = dir.path().join("cp");
    let ran = b
        .run(&[
            "enqueue",
            path(&dir.path().join("in")),
            "--checkpoint",
            path(&cp),
        ])
        .await;
    assert_eq!(ran.code, 1);
    assert!(
        ran.stdout.contains("refused 2 (2 by the broker)"),
        "{}",
        ran.stdout
    );
    assert!(ran.stderr.contains("could not be routed"), "{}", ran.stderr);
    assert_eq!(
        std::fs::read_to_string(&cp).unwrap().lines().count(),
        1,
        "the header only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_stopped_by_sigterm_resumes_exactly_once() {
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("in");
    write_files(&files, 1500);
    let cp = dir.path().join("cp");
    let want: HashSet<String> = planned_ids(&b, &[path(&files)]).await.into_iter().collect();
    assert_eq!(want.len(), 1500);

    let child = b
        .cli(&[
            "enqueue",
            path(&files),
            "--checkpoint",
            path(&cp),
            "--rate",
            "600",
        ])
        .spawn()
        .unwrap();
    b.wait_at_least(&b.topology.jobs(), 200).await;
    signal(&child, "TERM");
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("interrupted"), "{stdout}");
    let recorded = std::fs::read_to_string(&cp).unwrap().lines().count() - 1;
    let queued = b.ready(&b.topology.jobs()).await as usize;
    assert!(queued > 0 && queued < 1500, "stopped mid-way ({queued})");
    assert_eq!(
        recorded, queued,
        "every confirmed job, and only those, is in the checkpoint"
    );

    let ran = b
        .run(&["enqueue", path(&files), "--checkpoint", path(&cp)])
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stdout
            .contains(&format!("published {}, skipped {queued}", 1500 - queued)),
        "{}",
        ran.stdout
    );
    let ids = b.drain_ids(&b.topology.jobs()).await;
    assert_eq!(ids.len(), 1500, "each file exactly once");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_by_sigkill_resumes_at_least_once_within_the_window() {
    const WINDOW: usize = 50;
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("in");
    write_files(&files, 3000);
    let cp = dir.path().join("cp");
    let want: HashSet<String> = planned_ids(&b, &[path(&files)]).await.into_iter().collect();

    let window = WINDOW.to_string();
    let args = [
        "enqueue",
        path(&files),
        "--checkpoint",
        path(&cp),
        "--rate",
        "2000",
        "--confirm-window",
        &window,
    ];
    let mut child = b.cli(&args).spawn().unwrap();
    b.wait_at_least(&b.topology.jobs(), 500).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let killed_at = b.ready(&b.topology.jobs()).await as usize;
    assert!(
        killed_at > 0 && killed_at < 3000,
        "killed mid-way ({killed_at})"
    );

    let ran = b
        .run(&["enqueue", path(&files), "--checkpoint", path(&cp)])
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let got = b.drain(&b.topology.jobs()).await;
    let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
    let mut duplicates = 0;
    for m in &got {
        if let Some(body) = seen.insert(m.job_id(), m.body.clone()) {
            duplicates += 1;
            assert_eq!(body, m.body, "a duplicate is the same job, body and id");
        }
    }
    assert_eq!(
        seen.keys().cloned().collect::<HashSet<_>>(),
        want,
        "every file at least once"
    );
    assert!(
        duplicates <= WINDOW,
        "{duplicates} duplicates, more than the window of {WINDOW}"
    );
    eprintln!("killed after {killed_at} confirmed, {duplicates} published twice");
}
