use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

const BASE: [&str; 8] = [
    "test",
    "--api-url",
    "http://127.0.0.1:1/",
    "--client-id",
    "id",
    "--client-secret",
    "s3cret",
    "--data-action-id=act",
];

fn parse(extra: &[&str]) -> Result<Settings, ConfigError> {
    let args: Vec<&str> = BASE.iter().chain(extra).copied().collect();
    Cli::try_parse_from(args)
        .expect("clap accepts text")
        .run
        .settings()
}

fn error(extra: &[&str]) -> String {
    parse(extra).expect_err("should be refused").to_string()
}

#[test]
fn defaults_follow_the_contract() {
    let s = parse(&[
        "--amqp-url",
        DEFAULT_AMQP_URL,
        "--queue-prefix=cxone",
        "--concurrency=16",
        "--max-payload-bytes=10485760",
        "--allowed-mime-types",
        DEFAULT_MIME_TYPES,
        "--rate-limit-per-minute=1000",
        "--max-attempts=5",
        "--retry-delays=5s,30s,2m,10m",
        "--shutdown-grace=30s",
        "--admin-addr=127.0.0.1:9090",
        "--audit-events=terminal",
        "--file-roots=",
    ])
    .unwrap();
    assert_eq!(s.broker.prefix, "cxone");
    assert_eq!(s.concurrency, 16);
    assert_eq!(s.files.max_payload_bytes, 10_485_760);
    assert_eq!(s.max_inflight_bytes, 4 * 10_485_760);
    assert_eq!(
        s.files.allowed_types,
        [
            "application/pdf",
            "image/png",
            "image/jpeg",
            "application/octet-stream"
        ]
    );
    assert!(s.files.roots.is_empty());
    assert_eq!(s.api.rate_limit_per_minute, 1000);
    assert_eq!(s.max_attempts, 5);
    let secs: Vec<u64> = s.retry_delays.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [5, 30, 120, 600]);
    assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    assert_eq!(s.admin_addr.to_string(), "127.0.0.1:9090");
    assert_eq!(s.audit, AuditLevel::Terminal);
    assert!(s.storage.is_none());
    assert_eq!(
        s.api.base_url.as_ref().map(url::Url::as_str),
        Some("http://127.0.0.1:1/")
    );
    assert_eq!(s.api.default_action.as_deref(), Some("act"));
}

#[test]
fn profiles_bring_their_defaults() {
    let genesys = parse(&["--api-profile=genesys"]).unwrap();
    assert_eq!(genesys.api.profile, ProfileName::Genesys);
    assert_eq!(genesys.api.max_request_bytes, 512_000);
    assert_eq!(
        genesys.call_limits.concurrent_calls(genesys.api.profile),
        15
    );
    let seed = parse(&[]).unwrap();
    assert_eq!(
        (
            seed.api.max_request_bytes,
            seed.call_limits.concurrent_calls(seed.api.profile)
        ),
        (0, 0)
    );
    let set = parse(&["--api-profile=genesys", "--max-request-bytes=0"]).unwrap();
    assert_eq!(set.api.max_request_bytes, 0, "an explicit 0 wins: no cap");
    // cxone finds the API from the issuer: no CXONE_API_URL needed.
    let args = [
        "test",
        "--client-id=id",
        "--client-secret=s",
        "--api-profile=cxone",
        "--access-key-id=AK",
        "--access-key-secret=ak",
    ];
    let cxone = Cli::try_parse_from(args).unwrap().run.settings().unwrap();
    assert!(cxone.api.base_url.is_none());
    assert_eq!(
        cxone.api.issuer.as_str(),
        "https://cxone.niceincontact.com/"
    );
    assert!(
        !format!("{:?}", cxone.api).contains("ak\""),
        "the access key secret is hidden"
    );
}

#[test]
fn each_bad_value_names_its_variable() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--retry-delays=5s,5x"],
            r#"RETRY_DELAYS: "5x" is not a duration"#,
        ),
        (&["--retry-delays=0s"], "RETRY_DELAYS: "),
        (
            &["--shutdown-grace=soon"],
            r#"SHUTDOWN_GRACE: "soon" is not a duration"#,
        ),
        (
            &["--concurrency=0"],
            "WORKER_CONCURRENCY: 0 is out of range",
        ),
        (
            &["--concurrency=lots"],
            r#"WORKER_CONCURRENCY: "lots" is not a whole number"#,
        ),
        (&["--max-payload-bytes=-1"], "MAX_PAYLOAD_BYTES: "),
        (&["--max-attempts=0"], "MAX_ATTEMPTS: 0 is out of range"),
        (&["--rate-limit-per-minute=0"], "RATE_LIMIT_PER_MINUTE: "),
        (&["--admin-addr=localhost"], "ADMIN_ADDR: "),
        (
            &["--audit-events=some"],
            r#"AUDIT_EVENTS: "some" is not one of terminal, all"#,
        ),
        (&["--amqp-url=http://x:pw@h/"], "AMQP_URL: "),
        (&["--queue-prefix=a b"], "CXONE_QUEUE_PREFIX: "),
        (&["--allowed-mime-types=pdf"], "ALLOWED_MIME_TYPES: "),
        (&["--file-roots=relative/dir"], "FILE_ROOTS: "),
        (&["--file-roots=/no/such/dir/anywhere"], "FILE_ROOTS: "),
        (&["--max-inflight-bytes=10"], "MAX_INFLIGHT_BYTES: "),
        (
            &["--storage-endpoint=ftp://x/y"],
            "EXTERNAL_STORAGE_ENDPOINT: ",
        ),
        (
            &["--storage-endpoint=s3://bucket", "--storage-payload=zip"],
            "STORAGE_PAYLOAD: ",
        ),
        (&["--request-timeout=1"], "CXONE_REQUEST_TIMEOUT: "),
        (&["--api-profile=avaya"], "API_PROFILE: "),
        (
            &["--api-profile=cxone"],
            "CXONE_ACCESS_KEY_ID: is required with API_PROFILE=cxone",
        ),
        (
            &["--api-profile=cxone", "--access-key-id=AK"],
            "CXONE_ACCESS_KEY_SECRET: is required",
        ),
        (
            &["--access-key-id=AK", "--access-key-secret=s"],
            "CXONE_ACCESS_KEY_ID: is only used with API_PROFILE=cxone",
        ),
        (
            &["--payload-field=a.b"],
            "PAYLOAD_FIELD: \"a.b\" is not a plain field name",
        ),
        (&["--payload-field=1x"], "PAYLOAD_FIELD: "),
        (&["--content-type-field=chunkSize"], "CONTENT_TYPE_FIELD: "),
        (
            &["--content-type-field=binaryPayload"],
            "CONTENT_TYPE_FIELD: \"binaryPayload\" is also PAYLOAD_FIELD",
        ),
        (&["--max-request-bytes=lots"], "MAX_REQUEST_BYTES: "),
        (&["--chunking=maybe"], "CHUNKING: "),
        (&["--token-url=ftp://x"], "CXONE_TOKEN_URL: "),
        (&["--max-job-bytes=10"], "MAX_JOB_BYTES: "),
        (
            &[
                "--storage-endpoint=s3://bucket",
                "--storage-ca-file=/etc/hostname",
            ],
            "EXTERNAL_STORAGE_CA_FILE: is only used with an https://",
        ),
        (
            &[
                "--storage-endpoint=https://x/r",
                "--storage-ca-file=/no/such.pem",
            ],
            "EXTERNAL_STORAGE_CA_FILE: cannot read",
        ),
    ];
    for (args, want) in cases {
        let got = error(args);
        assert!(
            got.starts_with(want),
            "{args:?}: got {got:?}, want {want:?}"
        );
        assert!(!got.contains('\n'), "one line: {got:?}");
    }
}

#[test]
fn required_api_settings() {
    let bare = |args: &[&str]| {
        let all: Vec<&str> = ["test"].iter().chain(args).copied().collect();
        Cli::try_parse_from(all)
            .unwrap()
            .run
            .settings()
            .unwrap_err()
            .to_string()
    };
    // The process environment may hold these variables; flags set to "" override them.
    let empty = ["--api-url=", "--client-id=", "--client-secret="];
    assert!(bare(&empty).starts_with("CXONE_API_URL: is required"));
    assert!(
        bare(&["--api-url=ftp://x", "--client-id=", "--client-secret="])
            .starts_with("CXONE_API_URL: ")
    );
    assert!(
        bare(&["--api-url=http://x", "--client-id=", "--client-secret="])
            .starts_with("CXONE_CLIENT_ID: is required")
    );
    assert!(
        bare(&["--api-url=http://x", "--client-id=a", "--client-secret="])
            .starts_with("CXONE_CLIENT_SECRET: is required")
    );
}

#[test]
fn secret_from_file_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "from-file\n").unwrap();
    let p = path.to_str().unwrap();
    let all = [
        "test",
        "--api-url=http://x",
        "--client-id=a",
        "--client-secret=",
        "--client-secret-file",
        p,
    ];
    let s = Cli::try_parse_from(all).unwrap().run.settings().unwrap();
    assert_eq!(s.api.client_secret.expose(), "from-file");
    assert!(
        !format!("{s:?}").contains("from-file"),
        "Debug of the settings leaks the secret"
    );

    let both = [
        "test",
        "--api-url=http://x",
        "--client-id=a",
        "--client-secret=b",
        "--client-secret-file",
        p,
    ];
    let err = Cli::try_parse_from(both)
        .unwrap()
        .run
        .settings()
        .unwrap_err();
    assert_eq!(err.var, "CXONE_CLIENT_SECRET_FILE");

    let missing = [
        "test",
        "--api-url=http://x",
        "--client-id=a",
        "--client-secret=",
        "--client-secret-file=/nonexistent/s",
    ];
    let err = Cli::try_parse_from(missing)
        .unwrap()
        .run
        .settings()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CXONE_CLIENT_SECRET_FILE: cannot read"),
        "{err}"
    );
}

#[test]
fn debug_of_settings_hides_every_secret() {
    let s = parse(&[
        "--amqp-url=amqps://user:amqp-pw@rabbit:5671/vh",
        "--storage-endpoint=https://store.example/records",
        "--storage-token=storage-tok",
    ])
    .unwrap();
    let shown = format!("{s:?}");
    for secret in ["amqp-pw", "s3cret", "storage-tok"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("amqps://user:***@rabbit:5671/vh"));
}

#[test]
fn roots_are_canonical() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let roots = format!("{}:{}", link.display(), real.display());
    let s = parse(&["--file-roots", &roots]).unwrap();
    let canonical = real.canonicalize().unwrap();
    assert_eq!(s.files.roots, [canonical.clone(), canonical]);
}

#[test]
fn empty_values_mean_defaults() {
    let s = parse(&[
        "--concurrency=",
        "--retry-delays=",
        "--audit-events=",
        "--max-attempts=",
    ])
    .unwrap();
    assert_eq!(s.concurrency, 16);
    assert_eq!(s.retry_delays.len(), 4);
    assert_eq!(s.audit, AuditLevel::Terminal);
    assert_eq!(s.max_attempts, 5);
}

#[test]
fn log_formats() {
    assert_eq!(log_format("").unwrap(), LogFormat::Json);
    assert_eq!(log_format("TEXT").unwrap(), LogFormat::Text);
    assert!(
        log_format("xml")
            .unwrap_err()
            .to_string()
            .starts_with("LOG_FORMAT: ")
    );
}
