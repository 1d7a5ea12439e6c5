//! File references beyond local disk, against real servers: S3 (moto), Azure Blob
//! (Azurite) and a local HTTP/HTTPS server. Every refusal the contract names is checked
//! on `Sources` directly, then the same refusals end to end through RabbitMQ.

#[path = "support/cleanup.rs"]
mod cleanup;
#[path = "support/file_server.rs"]
mod file_server;
#[path = "support/worker.rs"]
mod harness;
#[path = "support/servers.rs"]
mod servers;

// The tests of each kind of source live beside this file and share its harness.
#[path = "sources/http.rs"]
mod http;
#[path = "sources/objects.rs"]
mod objects;
#[path = "sources/pieces.rs"]
mod pieces;
#[path = "sources/slow.rs"]
mod slow;

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use cxone_worker::budget::ByteBudget;
use cxone_worker::config::{FileArgs, FileSettings};
use cxone_worker::job::{ErrorKind, Failure};
use cxone_worker::source::{CloudEnv, Sources};
use object_store::ObjectStoreExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as ObjectPath;
use serde_json::json;

use file_server::FileServer;
use servers::{CountingProxy, External};

const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n";
const MIB: u64 = 1024 * 1024;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    files: FileArgs,
}

/// Settings as the flags give them; `extra` on top of a 100 000-byte limit and a
/// FILE_HTTP_TIMEOUT of 1 s, unless `extra` says otherwise.
fn settings(extra: &[&str]) -> FileSettings {
    let mut args = vec!["test"];
    for (flag, default) in [
        ("--max-payload-bytes", "--max-payload-bytes=100000"),
        ("--file-http-timeout", "--file-http-timeout=1s"),
    ] {
        if !extra.iter().any(|a| a.starts_with(flag)) {
            args.push(default);
        }
    }
    let cli = Cli::try_parse_from(args.iter().chain(extra)).expect("flags parse");
    cli.files.settings().expect("valid settings")
}

fn sources(extra: &[&str], env: Vec<(String, String)>) -> Sources {
    Sources::with_cloud_env(&settings(extra), CloudEnv::from_pairs(env)).expect("sources")
}

async fn read(sources: &Sources, reference: &str) -> Result<Bytes, Failure> {
    let opened = sources.open(reference).await?;
    opened.read(sources.max_bytes()).await
}

#[track_caller]
fn assert_kind(result: Result<Bytes, Failure>, kind: ErrorKind) {
    match result {
        Err(Failure::Permanent { kind: got, message }) => assert_eq!(got, kind, "{message}"),
        other => panic!("expected {kind}, got {other:?}"),
    }
}

#[track_caller]
fn assert_retryable(result: Result<Bytes, Failure>) -> String {
    match result {
        Err(Failure::Retryable { message }) => message,
        other => panic!("expected a retryable failure, got {other:?}"),
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---------------------------------------------------------------- local files

/// Drops a file's pages from the page cache, as if it had never been read.
fn evict(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: a valid descriptor; advice only.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}

/// `fetch` reads cached files on the runtime thread and the others on the blocking
/// pool: the bytes, the refusals and the byte budget must not tell the two apart.
#[tokio::test]
async fn local_files_fetch_alike_cached_or_not_and_wait_for_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let body = PDF.repeat(100);
    let (cached, on_disk) = (root.join("cached.pdf"), root.join("disk.pdf"));
    std::fs::write(&cached, &body).unwrap();
    std::fs::write(&on_disk, &body).unwrap();
    evict(&on_disk);
    let s = sources(&[&format!("--file-roots={}", root.display())], vec![]);
    let budget = ByteBudget::new(10_000);
    let reference = |p: &std::path::Path| format!("file://{}", p.display());
    for p in [&cached, &on_disk] {
        let fetched = s.fetch(&reference(p), &budget).await.unwrap();
        assert_eq!(fetched.bytes, body, "{}", p.display());
    }
    assert_eq!(
        budget.available(),
        10_240,
        "every reservation was given back"
    );

    let outside = dir.path().join("outside.pdf");
    std::fs::write(&outside, &body).unwrap();
    let escape = format!("file://{}/../outside.pdf", root.display());
    assert!(matches!(
        s.fetch(&escape, &budget).await.map(|f| f.bytes),
        Err(Failure::Permanent {
            kind: ErrorKind::FileAccessDenied,
            ..
        })
    ));

    let held = budget.reserve(8_000).await;
    let cached_ref = reference(&cached);
    let waiting = s.fetch(&cached_ref, &budget);
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut waiting)
            .await
            .is_err(),
        "a file that does not fit must wait for room"
    );
    drop(held);
    assert_eq!(waiting.await.unwrap().bytes, body);
}

/// A socket, a FIFO, a device, a directory, a loop of links, a name too long: none
/// can ever be read as a file, and each is `file_not_found` at once, cached path or
/// not, instead of a retryable failure that ends `exhausted` a quarter of an hour on.
#[tokio::test]
async fn what_can_never_be_read_is_not_found_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("sock.pdf")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(root.join("pipe.pdf"))
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::create_dir(root.join("dir.pdf")).unwrap();
    std::os::unix::fs::symlink("loop-b.pdf", root.join("loop-a.pdf")).unwrap();
    std::os::unix::fs::symlink("loop-a.pdf", root.join("loop-b.pdf")).unwrap();
    let s = sources(&[&format!("--file-roots={}", root.display())], vec![]);
    let budget = ByteBudget::new(1 << 20);
    let long = "n".repeat(300);
    for name in [
        "sock.pdf",
        "pipe.pdf",
        "dir.pdf",
        "loop-a.pdf",
        long.as_str(),
        "a\0b.pdf",
    ] {
        let reference = format!("file://{}/{name}", root.display());
        let started = Instant::now();
        let fetched = s.fetch(&reference, &budget).await.map(|f| f.bytes);
        assert_kind(fetched, ErrorKind::FileNotFound);
        assert!(started.elapsed() < Duration::from_secs(2), "{name}");
    }
    // A device, where any path is allowed (`cxone-worker encode`).
    let local = Sources::local(100);
    assert_kind(
        local.fetch("/dev/null", &budget).await.map(|f| f.bytes),
        ErrorKind::FileNotFound,
    );
    assert_eq!(budget.available(), 1 << 20);
}

/// `FILE_HTTP_ALLOWED_HOSTS`: a host alone is its default port only, so a job cannot
/// make the worker fetch another service of an allowed host (its own `/metrics`).
#[tokio::test]
async fn an_allowed_host_without_a_port_is_its_default_port_only() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    server.put_file("a.pdf", PDF);
    let ca = format!(
        "--file-http-ca-file={}",
        server.write_ca(dir.path()).display()
    );
    let with = |hosts: &str| {
        sources(
            &[
                &ca,
                &format!("--file-http-allowed-hosts={hosts}"),
                "--file-http-allow-plain=true",
            ],
            vec![],
        )
    };
    let url = server.https_url("/files/a.pdf");
    let (https_port, http_port) = (server.https.port(), server.http.port());
    assert_kind(
        read(&with("127.0.0.1"), &url).await,
        ErrorKind::FileAccessDenied,
    );
    assert_eq!(server.sent(), 0, "refused before any request");
    assert_eq!(
        read(&with(&format!("127.0.0.1:{https_port}")), &url)
            .await
            .unwrap(),
        PDF
    );
    assert_eq!(read(&with("127.0.0.1:*"), &url).await.unwrap(), PDF);
    // Each redirect hop is checked the same way: to another port of the same host.
    let to_other_port = server.https_url(&format!(
        "/redirect?to={}",
        urlencode(&server.http_url("/files/a.pdf"))
    ));
    let one_port = with(&format!("127.0.0.1:{https_port}"));
    assert_kind(
        read(&one_port, &to_other_port).await,
        ErrorKind::FileAccessDenied,
    );
    let both = with(&format!("127.0.0.1:{https_port},127.0.0.1:{http_port}"));
    assert_eq!(read(&both, &to_other_port).await.unwrap(), PDF);
}

// ---------------------------------------------------------------- through RabbitMQ

#[tokio::test]
async fn refusals_end_as_the_contract_says_through_rabbitmq() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    let moto = servers::moto();
    objects::s3_put(moto, "e2e-refusals", "present.pdf", PDF).await;
    let mut env = servers::s3_env(moto);
    env.extend([
        ("FILE_HTTP_ALLOWED_HOSTS".into(), "127.0.0.1:*".into()),
        (
            "FILE_HTTP_CA_FILE".into(),
            server.write_ca(dir.path()).display().to_string(),
        ),
        ("FILE_BUCKETS".into(), "e2e-refusals".into()),
        ("MAX_PAYLOAD_BYTES".into(), "100000".into()),
    ]);
    let mut run = harness::Worker::started(&env).await;
    let redirect_away = server.https_url(&format!(
        "/redirect?to={}",
        urlencode(&server.https_url_by_name("/files/a.pdf"))
    ));
    let cases = [
        (
            "missing-object",
            "s3://e2e-refusals/missing.pdf".to_owned(),
            ErrorKind::FileNotFound,
        ),
        (
            "other-bucket",
            "s3://elsewhere/present.pdf".to_owned(),
            ErrorKind::FileAccessDenied,
        ),
        (
            "oversize",
            server.https_url(&format!("/chunked/{}", 64 * MIB)),
            ErrorKind::TooLarge,
        ),
        (
            "other-host",
            server.https_url_by_name("/files/a.pdf"),
            ErrorKind::FileAccessDenied,
        ),
        ("redirect-away", redirect_away, ErrorKind::FileAccessDenied),
        (
            "missing-url",
            server.https_url("/files/none.pdf"),
            ErrorKind::FileNotFound,
        ),
    ];
    for (id, file, _) in &cases {
        run.publish(&json!({"job_id": id, "file": file, "content_type": "application/pdf"}))
            .await;
    }
    let results = run.results(cases.len(), Duration::from_secs(20)).await;
    for (id, _, kind) in &cases {
        let r = harness::result_of(&results, id);
        assert_eq!(r.routing_key, "job.failed", "{id}: {:?}", r.body);
        assert_eq!(r.body["error_kind"], kind.as_str(), "{id}: {:?}", r.body);
    }
    assert!(
        server.sent() < 16 * MIB,
        "the oversize file was not downloaded whole"
    );
    run.wait_depth("jobs.dlq", cases.len() as u32, Duration::from_secs(5))
        .await;
}
