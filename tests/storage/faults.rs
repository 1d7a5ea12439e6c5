//! What a failed storage write means, against the real servers: storage refusing us
//! or out of reach pauses the worker (`Refused`, `Unavailable`), a failure of one
//! record retries the job (`Failed`). `Storage::probe` says the same.

use cxone_worker::storage::{PROBE_NAME, StorageErrorKind};

use super::*;

/// What a write and a probe of `storage` say.
async fn kinds(storage: &Storage) -> (Option<StorageErrorKind>, Option<StorageErrorKind>) {
    let write = storage.write(&record()).await.err().map(|e| e.kind());
    let probe = storage.probe().await.err().map(|e| e.kind());
    (write, probe)
}

#[track_caller]
fn both(got: (Option<StorageErrorKind>, Option<StorageErrorKind>), want: StorageErrorKind) {
    assert_eq!(got, (Some(want), Some(want)), "write, probe");
}

#[tokio::test]
async fn missing_buckets_and_containers_are_refused() {
    let s3 = storage(
        "s3://no-such-bucket-here/records".into(),
        StoragePayload::Base64,
        None,
        servers::s3_env(servers::moto()),
    );
    both(kinds(&s3).await, StorageErrorKind::Refused);
    let az = storage(
        "az://no-such-container-here/records".into(),
        StoragePayload::Base64,
        None,
        servers::azure_env(servers::azurite()),
    );
    both(kinds(&az).await, StorageErrorKind::Refused);
    // Credentials the store refuses (moto checking signatures, no such user).
    let locked = storage(
        "s3://records/x".into(),
        StoragePayload::Base64,
        None,
        servers::s3_env(servers::moto_locked()),
    );
    both(kinds(&locked).await, StorageErrorKind::Refused);
}

#[tokio::test]
async fn stores_that_are_down_are_unavailable() {
    let down = format!("http://127.0.0.1:{}", servers::free_port());
    let mut s3_env = servers::s3_env_at(&down);
    s3_env.push(("AWS_TIMEOUT".into(), "1s".into()));
    let s3 = storage(
        "s3://records/x".into(),
        StoragePayload::Base64,
        None,
        s3_env,
    );
    both(kinds(&s3).await, StorageErrorKind::Unavailable);
    let az_env = servers::azure_env_at(&format!("{down}/{}", servers::AZURE_ACCOUNT));
    let az = storage(
        "az://records/x".into(),
        StoragePayload::Base64,
        None,
        az_env,
    );
    both(kinds(&az).await, StorageErrorKind::Unavailable);
    let http = storage(
        format!("{down}/records"),
        StoragePayload::Base64,
        None,
        vec![],
    );
    both(kinds(&http).await, StorageErrorKind::Unavailable);
    // An S3 endpoint that answers 503 to everything, after object_store's retries.
    let server = FileServer::start().await;
    let failing = format!("http://127.0.0.1:{}/fail/503", server.http.port());
    let s3 = storage(
        "s3://records/x".into(),
        StoragePayload::Base64,
        None,
        servers::s3_env_at(&failing),
    );
    both(kinds(&s3).await, StorageErrorKind::Unavailable);
}

#[tokio::test]
async fn http_answers_say_whose_fault_it_is() {
    let server = FileServer::start().await;
    let at = |code: u16| {
        let base = format!(
            "http://127.0.0.1:{}/fail/{code}/records",
            server.http.port()
        );
        storage(base, StoragePayload::Base64, Some("t0ken"), vec![])
    };
    both(kinds(&at(403)).await, StorageErrorKind::Refused);
    both(kinds(&at(401)).await, StorageErrorKind::Refused);
    both(kinds(&at(503)).await, StorageErrorKind::Unavailable);
    both(kinds(&at(400)).await, StorageErrorKind::Failed);
    let e = at(503).write(&record()).await.unwrap_err();
    assert!(
        e.to_string().contains("503") && !e.to_string().contains("t0ken"),
        "{e}"
    );
    assert!(e.kind().pauses() && !StorageErrorKind::Failed.pauses());
}

#[tokio::test]
async fn local_directories_that_take_no_write_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be: ENOTDIR, root or not.
    std::fs::write(dir.path().join("plain"), b"not a directory").unwrap();
    let under_file = storage(
        format!("file://{}/plain/records", dir.path().display()),
        StoragePayload::Base64,
        None,
        vec![],
    );
    both(kinds(&under_file).await, StorageErrorKind::Refused);
    let is_file = storage(
        format!("file://{}/plain", dir.path().display()),
        StoragePayload::Base64,
        None,
        vec![],
    );
    both(kinds(&is_file).await, StorageErrorKind::Refused);

    let read_only = ReadOnlyDir::new(dir.path());
    match &read_only {
        Some(ro) => {
            let s = storage(
                format!("file://{}/records", ro.path.display()),
                StoragePayload::Base64,
                None,
                vec![],
            );
            both(kinds(&s).await, StorageErrorKind::Refused);
        }
        // Root ignores permissions, and this machine lets nobody mount a read-only
        // file system: the mapping is still checked by storage's unit tests.
        None => eprintln!("no read-only directory could be made here: skipped"),
    }
}

/// A directory no write can enter: mode 0555 for an ordinary user; for root, whom
/// modes do not bind, a read-only tmpfs mounted over it (`None` if mounting is not
/// allowed either).
struct ReadOnlyDir {
    path: std::path::PathBuf,
    mounted: bool,
}

impl ReadOnlyDir {
    fn new(parent: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = parent.join("ro");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::write(path.join("try"), b"").is_err() {
            return Some(Self {
                path,
                mounted: false,
            });
        }
        std::fs::remove_file(path.join("try")).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self { path, mounted })
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg(&self.path)
                .status();
        }
    }
}

#[tokio::test]
async fn the_probe_writes_one_small_object_beside_the_records() {
    let moto = servers::moto();
    servers::create_bucket(moto, "probed").await;
    let s3 = storage(
        "s3://probed/records".into(),
        StoragePayload::Base64,
        None,
        servers::s3_env(moto),
    );
    s3.probe().await.expect("a working store");
    s3.probe().await.expect("and again");
    let landed = names(&s3_store(moto, "probed"), "records").await;
    assert_eq!(landed, [format!("records/{PROBE_NAME}")]);

    let dir = tempfile::tempdir().unwrap();
    let file = storage(
        format!("file://{}/made/by/storage", dir.path().display()),
        StoragePayload::Base64,
        None,
        vec![],
    );
    file.probe().await.expect("a working directory");
    assert!(
        dir.path()
            .join("made/by/storage")
            .join(PROBE_NAME)
            .is_file()
    );

    let server = FileServer::start().await;
    let base = format!("http://127.0.0.1:{}/put/records", server.http.port());
    let http = storage(base, StoragePayload::Base64, Some("t0ken"), vec![]);
    http.probe().await.expect("a working endpoint");
    let puts = server.puts();
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].path, format!("records/{PROBE_NAME}"));
    assert_eq!(puts[0].authorization.as_deref(), Some("Bearer t0ken"));
}

/// `EXTERNAL_STORAGE_ENDPOINT` with `user:pw@` and `EXTERNAL_STORAGE_TOKEN` would send
/// two Authorization headers: `run` refuses the pair at start, exit code 2.
#[tokio::test]
async fn userinfo_and_a_token_together_stop_the_worker_at_start() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cxone-worker"))
        .arg("run")
        .env_clear()
        .envs([
            ("CXONE_API_URL", "http://127.0.0.1:1"),
            ("CXONE_CLIENT_ID", "id"),
            ("CXONE_CLIENT_SECRET", "secret"),
            (
                "EXTERNAL_STORAGE_ENDPOINT",
                "https://user:pa55@127.0.0.1:1/records",
            ),
            ("EXTERNAL_STORAGE_TOKEN", "t0ken"),
        ])
        .output()
        .await
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("EXTERNAL_STORAGE_TOKEN") && stderr.contains("EXTERNAL_STORAGE_ENDPOINT"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("pa55") && !stderr.contains("t0ken"),
        "{stderr}"
    );
}
