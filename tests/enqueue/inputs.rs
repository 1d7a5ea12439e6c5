//! What `enqueue` makes of awkward inputs, against a real RabbitMQ: a directory of
//! subdirectories given without `--recursive`, entries that cannot be read (refused
//! and counted, never dropped), a second run on a checkpoint that a first one holds,
//! and the `content_type` file names declare, checked end to end by the real worker.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cxone_worker::job::Job;
use serde_json::Value;

use super::broker::{Broker, Ran, amqp_url, signal};
use super::{path, write_files};

const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0\x90wS\xde";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_subdirectories_asks_for_recursive() {
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    write_files(&root.join("2026-01"), 2);
    write_files(&root.join("2026-02"), 1);

    for dry in [true, false] {
        let mut args = vec!["enqueue", path(&root)];
        if dry {
            args.push("--dry-run");
        }
        let ran = b.run(&args).await;
        assert_eq!(ran.code, 1, "{}", ran.stderr);
        assert!(
            ran.stderr.contains(&format!(
                "cxone-worker: refused {}: holds no files, only 2 subdirectories: add --recursive",
                root.display()
            )),
            "{}",
            ran.stderr
        );
        // That line instead of a summary saying "published 0".
        assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
        assert!(ran.stdout.is_empty(), "{}", ran.stdout);
    }
    // Beside another input, it is one refusal among the rest of the summary.
    let ran = b
        .run(&[
            "enqueue",
            path(&root),
            path(&root.join("2026-02/f00000.pdf")),
        ])
        .await;
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(
        ran.stdout
            .contains("published 1, skipped 0, refused 1 (1 directory without files)"),
        "{}",
        ran.stdout
    );
    assert_eq!(b.drain(&b.topology.jobs()).await.len(), 1);
    assert_eq!(b.ready(&b.topology.jobs()).await, 0);
    let ran = b.run(&["enqueue", path(&root), "--recursive"]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(ran.stdout.contains("published 3,"), "{}", ran.stdout);
}

/// Runs the binary as an unprivileged user when the tests run as root: root reads
/// past permissions, so a denied entry could not be made otherwise.
async fn run_unprivileged(b: &Broker, args: &[&str]) -> Ran {
    let bin = env!("CARGO_BIN_EXE_cxone-worker");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = tokio::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            bin,
        ]);
        c
    } else {
        tokio::process::Command::new(bin)
    };
    let out = cmd
        .args(args)
        .env("AMQP_URL", amqp_url())
        .env("CXONE_QUEUE_PREFIX", &b.prefix)
        .output()
        .await
        .expect("setpriv (util-linux) runs the binary as nobody");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
    .echoed(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_cannot_be_read_are_refused_and_counted() {
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(&root, 0o755).unwrap();
    std::fs::write(root.join("a.pdf"), PDF).unwrap();
    mode(&root.join("a.pdf"), 0o644).unwrap();
    // Cannot be listed at all.
    write_files(&root.join("closed"), 1);
    // Listed, but no entry's metadata can be read (no search permission).
    write_files(&root.join("noexec"), 1);
    std::os::unix::fs::symlink(root.join("gone.pdf"), root.join("broken.pdf")).unwrap();
    mode(&root.join("closed"), 0o000).unwrap();
    mode(&root.join("noexec"), 0o644).unwrap();

    let ran = run_unprivileged(&b, &["enqueue", path(&root), "--recursive"]).await;
    // Let the tempdir be removed whatever happened.
    mode(&root.join("closed"), 0o755).unwrap();
    mode(&root.join("noexec"), 0o755).unwrap();
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    let refused: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|l| l.starts_with("cxone-worker: refused "))
        .collect();
    assert_eq!(refused.len(), 3, "{}", ran.stderr);
    let at = |name: &str| format!("cxone-worker: refused {}", root.join(name).display());
    assert_eq!(
        refused[0],
        format!(
            "{}: a broken symbolic link: its target does not exist",
            at("broken.pdf")
        )
    );
    assert!(
        refused[1].starts_with(&format!("{}: ", at("closed")))
            && refused[1].contains("Permission denied"),
        "{}",
        refused[1]
    );
    assert!(
        refused[2].starts_with(&format!("{}: ", at("noexec/f00000.pdf")))
            && refused[2].contains("Permission denied"),
        "{}",
        refused[2]
    );
    assert!(
        ran.stdout
            .contains("published 1, skipped 0, refused 3 (3 unreadable)"),
        "{}",
        ran.stdout
    );
    let got = b.drain(&b.topology.jobs()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].json()["file"],
        format!("file://{}", root.join("a.pdf").display())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_a_checkpoint_in_use_stops_at_once() {
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("in");
    write_files(&files, 300);
    let cp = dir.path().join("cp");
    let args = ["enqueue", path(&files), "--checkpoint", path(&cp)];
    let first = b
        .cli(&[&args[..], &["--rate", "50"]].concat())
        .spawn()
        .unwrap();
    b.wait_at_least(&b.topology.jobs(), 5).await;

    let started = Instant::now();
    let second = b.run(&args).await;
    assert_eq!(second.code, 2, "{}", second.stderr);
    assert_eq!(
        second.stderr,
        format!(
            "cxone-worker: checkpoint {} is in use by another enqueue run (it holds the file's \
             lock); let that run finish, or stop it, before running again\n",
            cp.display()
        )
    );
    assert!(second.stdout.is_empty(), "{}", second.stdout);
    assert!(started.elapsed() < Duration::from_secs(10));

    signal(&first, "TERM");
    let out = first.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(130));
    let recorded = std::fs::read_to_string(&cp).unwrap().lines().count() - 1;
    let queued = b.drain_ids(&b.topology.jobs()).await;
    assert_eq!(queued.len(), recorded, "only the first run published");

    // A run killed outright leaves no lock behind: the kernel drops it.
    let mut killed = b
        .cli(&[&args[..], &["--rate", "50"]].concat())
        .spawn()
        .unwrap();
    b.wait_at_least(&b.topology.jobs(), 5).await;
    killed.start_kill().unwrap();
    killed.wait().await.unwrap();
    let ran = b.run(&args).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let mut all = queued;
    all.extend(b.drain_ids(&b.topology.jobs()).await);
    let distinct: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(
        distinct.len(),
        300,
        "every file, after the kill and the resume"
    );
}

/// Results by job id, as many as `n`, within 30 s.
async fn results(b: &Broker, n: usize) -> HashMap<String, Value> {
    let mut got = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        for m in b.drain(&b.topology.results()).await {
            let v = m.json();
            got.insert(v["job_id"].as_str().unwrap().to_owned(), v);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} results: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_names_declare_a_content_type_and_dry_runs_show_it() {
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    typed_files(&root);

    let ran = b.run(&["enqueue", path(&root), "--dry-run"]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let planned: Vec<Job> = ran
        .stdout
        .lines()
        .map(|l| Job::parse(l.as_bytes()).unwrap())
        .collect();
    let declared: Vec<(String, Option<String>)> = planned
        .iter()
        .map(|j| {
            (
                j.file.rsplit('/').next().unwrap().to_owned(),
                j.content_type.clone(),
            )
        })
        .collect();
    let some = |t: &str| Some(t.to_owned());
    assert_eq!(
        declared,
        [
            ("good.pdf".into(), some("application/pdf")),
            ("notes.txt".into(), None),
            ("photo.png".into(), some("image/png")),
            ("scan.pdf".into(), some("application/pdf")),
        ]
    );
    assert!(
        ran.stderr.contains(
            "enqueue: content_type from file names: application/pdf 2, image/png 1; none \
             declared for 1 (no known extension)"
        ),
        "{}",
        ran.stderr
    );
    let ran = b
        .run(&["enqueue", path(&root), "--dry-run", "--no-declare-type"])
        .await;
    assert!(
        ran.stdout.lines().all(|l| !l.contains("content_type")),
        "{}",
        ran.stdout
    );
    assert!(
        !ran.stderr.contains("content_type from file names"),
        "{}",
        ran.stderr
    );
    // A manifest's own type is kept as written, and a line without one gets none.
    let manifest = format!(
        "{{\"job_id\":\"m-1\",\"file\":\"file://{0}/good.pdf\",\"content_type\":\"image/gif\"}}\n\
         {{\"job_id\":\"m-2\",\"file\":\"file://{0}/good.pdf\"}}\n",
        root.display()
    );
    let ran = b
        .run_with_input(
            &["enqueue", "--manifest", "-", "--dry-run"],
            Some(manifest.as_bytes()),
        )
        .await;
    let types: Vec<Option<String>> = ran
        .stdout
        .lines()
        .map(|l| Job::parse(l.as_bytes()).unwrap().content_type)
        .collect();
    assert_eq!(types, [some("image/gif"), None]);
    let ran = b
        .run(&["enqueue", "--manifest", "-", "--no-declare-type"])
        .await;
    assert_eq!(ran.code, 2, "the flag is for paths only");
}

/// The four files of the declared-type tests, in `root`.
fn typed_files(root: &Path) {
    for (name, bytes) in [
        ("good.pdf", PDF),
        ("scan.pdf", PNG),
        ("photo.png", PNG),
        ("notes.txt", b"plain text\n".as_slice()),
    ] {
        std::fs::write(root.join(name), bytes).unwrap();
    }
}

/// End to end: the worker fails the PNG named .pdf, and passes it without the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_fails_a_file_whose_bytes_contradict_its_name() {
    let b = Broker::new().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    typed_files(&root);
    let dry = b.run(&["enqueue", "--dry-run", path(&root)]).await;
    let planned: Vec<Job> = dry
        .stdout
        .lines()
        .map(|l| Job::parse(l.as_bytes()).unwrap())
        .collect();
    let sim = cxone_worker::sim::spawn(cxone_worker::sim::SimConfig::default())
        .await
        .unwrap();
    let worker = b.worker(&sim.url(), "test-secret", &root);
    assert_eq!(b.run(&["enqueue", path(&root)]).await.code, 0);
    let got = results(&b, 4).await;
    let id = |name: &str| {
        planned
            .iter()
            .find(|j| j.file.ends_with(&format!("/{name}")))
            .and_then(|j| j.job_id.clone())
            .unwrap()
    };
    assert_eq!(got[&id("good.pdf")]["status"], "succeeded");
    assert_eq!(got[&id("photo.png")]["status"], "succeeded");
    assert_eq!(
        got[&id("notes.txt")]["content_type"],
        "application/octet-stream"
    );
    let scan = &got[&id("scan.pdf")];
    assert_eq!(
        (scan["status"].as_str(), scan["error_kind"].as_str()),
        (Some("failed"), Some("type_mismatch")),
        "{scan}"
    );
    let ran = b
        .run(&["enqueue", path(&root.join("scan.pdf")), "--no-declare-type"])
        .await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let again = results(&b, 1).await;
    assert_eq!(
        again[&id("scan.pdf")]["content_type"],
        "image/png",
        "the silent success"
    );
    signal(&worker, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(status.status.success());
}
