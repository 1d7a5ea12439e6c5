//! Slow and hostile sources beside good ones: as many downloads that drip a byte a
//! second, with no length, as jobs may run at once. The good files, of every kind,
//! must not wait for them; the drippers are cut off as too slow.

use super::*;

/// What the brief measured: 1 MiB files, FILE_HTTP_TIMEOUT=2s, four drippers.
const DRIPPERS: usize = 4;
const MAX: u64 = MIB;

struct Good {
    references: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

/// A file of 1 MiB in each kind of place, and the cloud variables to reach them.
async fn good_files(server: &FileServer, bucket: &str) -> (Good, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let mut body = vec![b'x'; MAX as usize];
    body[..PDF.len()].copy_from_slice(PDF);
    let body = Bytes::from(body);
    std::fs::write(root.join("good.pdf"), &body).unwrap();
    server.put_file("good.pdf", body.clone());
    objects::s3_put(servers::moto(), bucket, "good.pdf", body.clone()).await;
    objects::azure_put(servers::azurite(), bucket, "good.pdf", body).await;
    let references = vec![
        ("file", format!("file://{}/good.pdf", root.display())),
        ("https", server.https_url("/files/good.pdf")),
        (
            "https-chunked",
            server.https_url("/files/good.pdf?length=false"),
        ),
        ("s3", format!("s3://{bucket}/good.pdf")),
        ("az", format!("az://{bucket}/good.pdf")),
    ];
    let mut env = servers::s3_env(servers::moto());
    env.extend(servers::azure_env(servers::azurite()));
    let good = Good {
        references,
        _dir: dir,
    };
    (good, env)
}

fn dripping(server: &FileServer) -> String {
    server.https_url(&format!("/drip/{MAX}?length=false&every_ms=1000"))
}

#[tokio::test]
async fn dripping_sources_leave_the_budget_to_the_others() {
    let server = FileServer::start().await;
    let (good, env) = good_files(&server, "slow-direct").await;
    let ca_dir = tempfile::tempdir().unwrap();
    let root = format!(
        "--file-roots={}",
        good._dir.path().canonicalize().unwrap().display()
    );
    let ca = format!(
        "--file-http-ca-file={}",
        server.write_ca(ca_dir.path()).display()
    );
    let s = sources(
        &[
            "--max-payload-bytes=1048576",
            "--file-http-timeout=2s",
            "--file-http-allowed-hosts=127.0.0.1:*",
            &root,
            &ca,
        ],
        env,
    );
    // MAX_INFLIGHT_BYTES at its default, four files of the largest size.
    let budget = ByteBudget::for_files(4 * MAX, MAX);
    let started = Instant::now();
    let drippers: Vec<_> = (0..DRIPPERS)
        .map(|_| {
            let (s, budget, url) = (s.clone(), budget.clone(), dripping(&server));
            tokio::spawn(async move { s.fetch(&url, &budget).await.map(|f| f.bytes.len()) })
        })
        .collect();
    // Every dripper has its first byte, and holds what it got (a first step).
    let share = budget.streamed_available();
    while budget.streamed_available() > share - DRIPPERS as u64 * 64 * 1024 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the drippers never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        budget.available() >= 3 * MAX,
        "four drippers hold {} bytes",
        4 * MAX - budget.available()
    );
    let fetches = good.references.iter().map(|(kind, reference)| {
        let (s, budget) = (&s, &budget);
        async move {
            let at = Instant::now();
            let fetched = s.fetch(reference, budget).await.expect(kind);
            (kind, fetched.bytes.len() as u64, at.elapsed())
        }
    });
    for (kind, len, took) in futures_util::future::join_all(fetches).await {
        assert_eq!(len, MAX, "{kind}");
        eprintln!("{kind}: fetched beside {DRIPPERS} drippers in {took:?}");
        assert!(took < Duration::from_secs(2), "{kind} waited {took:?}");
    }
    assert!(
        drippers.iter().all(|d| !d.is_finished()),
        "the good files did not wait for the drippers to end"
    );
    for dripper in drippers {
        let r = dripper.await.unwrap();
        let Err(Failure::Retryable { message }) = r else {
            panic!("a dripper must be cut off: {r:?}");
        };
        assert!(message.contains("too slow"), "{message}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "drippers cut after {took:?}");
    assert_eq!(budget.available(), 4 * MAX, "everything was given back");
}

/// The same through RabbitMQ and the real binary, WORKER_CONCURRENCY=4: the four
/// drippers take every slot first, so the good jobs wait for them to be cut off.
#[tokio::test]
async fn dripping_jobs_hold_other_jobs_back_only_a_few_seconds() {
    let server = FileServer::start().await;
    let (good, mut env) = good_files(&server, "slow-e2e").await;
    let ca_dir = tempfile::tempdir().unwrap();
    env.extend(
        [
            ("WORKER_CONCURRENCY", DRIPPERS.to_string()),
            ("MAX_ATTEMPTS", "2".into()),
            ("MAX_PAYLOAD_BYTES", MAX.to_string()),
            ("FILE_HTTP_TIMEOUT", "2s".into()),
            ("FILE_HTTP_ALLOWED_HOSTS", "127.0.0.1:*".into()),
            (
                "FILE_HTTP_CA_FILE",
                server.write_ca(ca_dir.path()).display().to_string(),
            ),
            (
                "FILE_ROOTS",
                good._dir
                    .path()
                    .canonicalize()
                    .unwrap()
                    .display()
                    .to_string(),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let mut run = harness::Worker::started(&env).await;
    let published = time::OffsetDateTime::now_utc();
    for i in 0..DRIPPERS {
        let job = json!({"job_id": format!("drip-{i}"), "file": dripping(&server)});
        run.publish(&job).await;
    }
    for (kind, reference) in &good.references {
        let job = json!({"job_id": kind, "file": reference, "content_type": "application/pdf"});
        run.publish(&job).await;
    }
    let n = DRIPPERS + good.references.len();
    let results = run.results(n, Duration::from_secs(60)).await;
    for (kind, _) in &good.references {
        let r = harness::result_of(&results, kind);
        assert_eq!(r.routing_key, "job.succeeded", "{kind}: {:?}", r.body);
        let done = r.body["completed_at"].as_str().expect("completed_at");
        let done =
            time::OffsetDateTime::parse(done, &time::format_description::well_known::Rfc3339)
                .expect("RFC 3339");
        let waited = done - published;
        eprintln!("{kind}: done {waited} after the drippers were published");
        assert!(
            waited < time::Duration::seconds(6),
            "{kind} waited {waited}"
        );
    }
    for i in 0..DRIPPERS {
        let r = harness::result_of(&results, &format!("drip-{i}"));
        assert_eq!(r.body["error_kind"], "exhausted", "{:?}", r.body);
        let error = r.body["error"].as_str().unwrap_or("");
        assert!(error.contains("too slow"), "{error}");
    }
}
