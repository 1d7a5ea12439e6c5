//! The binary's own surface: bad settings stop it with one line and exit code 2,
//! `encode` prints the body `run` would send, `definitions` prints the topology.

use std::process::{Command, Output};

use base64::Engine;
use serde_json::Value;

fn worker(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cxone-worker"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

const RUN_ENV: [(&str, &str); 3] = [
    ("CXONE_API_URL", "http://127.0.0.1:1"),
    ("CXONE_CLIENT_ID", "id"),
    ("CXONE_CLIENT_SECRET", "do-not-print-me"),
];

#[test]
fn a_bad_setting_stops_run_with_one_line_and_code_2() {
    let cases = [
        (
            "RETRY_DELAYS",
            "5s,5x",
            r#"RETRY_DELAYS: "5x" is not a duration"#,
        ),
        ("WORKER_CONCURRENCY", "many", "WORKER_CONCURRENCY: "),
        ("AMQP_URL", "amqp://u:pw-secret@", "AMQP_URL: "),
        ("LOG_FORMAT", "xml", "LOG_FORMAT: "),
        ("FILE_ROOTS", "/no/such/root", "FILE_ROOTS: "),
    ];
    for (var, value, want) in cases {
        let mut env = RUN_ENV.to_vec();
        env.push((var, value));
        let out = worker(&["run"], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(want), "{var}={value}: {stderr}");
        assert!(
            !stderr.contains("do-not-print-me") && !stderr.contains("pw-secret"),
            "{stderr}"
        );
    }
    let out = worker(&["run"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CXONE_API_URL: is required"));
}

#[test]
fn help_shows_flags_with_their_variables_but_no_secret_values() {
    let out = worker(
        &["run", "--help"],
        &[
            ("CXONE_CLIENT_SECRET", "hidden-value"),
            ("AMQP_URL", "amqp://u:hidden-pw@h/"),
        ],
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "AMQP_URL",
        "CXONE_QUEUE_PREFIX",
        "CXONE_API_URL",
        "CXONE_CLIENT_SECRET_FILE",
        "WORKER_CONCURRENCY",
        "MAX_PAYLOAD_BYTES",
        "ALLOWED_MIME_TYPES",
        "FILE_ROOTS",
        "RATE_LIMIT_PER_MINUTE",
        "MAX_ATTEMPTS",
        "RETRY_DELAYS",
        "SHUTDOWN_GRACE",
        "ADMIN_ADDR",
        "AUDIT_EVENTS",
        "EXTERNAL_STORAGE_ENDPOINT",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
    assert!(
        !help.contains("hidden-value") && !help.contains("hidden-pw"),
        "{help}"
    );
}

#[test]
fn encode_prints_the_request_body() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc.pdf");
    let data = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\nhello";
    std::fs::write(&path, data).unwrap();
    let out = worker(
        &[
            "encode",
            path.to_str().unwrap(),
            "--metadata",
            r#"{"k":"v"}"#,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bp = &body["inputs"]["binaryPayload"];
    assert_eq!(bp["contentType"], "application/pdf");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(bp["value"].as_str().unwrap())
            .unwrap(),
        data
    );
    assert_eq!(body["inputs"]["metadata"]["k"], "v");
}

#[test]
fn encode_refusals_print_kind_and_message_with_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("doc.pdf");
    std::fs::write(&pdf, b"%PDF-1.4 body").unwrap();
    let empty = dir.path().join("empty.pdf");
    std::fs::write(&empty, b"").unwrap();
    let cases: [(Vec<&str>, &str); 4] = [
        (vec!["encode", "/no/such/file.pdf"], "file_not_found: "),
        (vec!["encode", empty.to_str().unwrap()], "empty_file: "),
        (
            vec![
                "encode",
                pdf.to_str().unwrap(),
                "--content-type",
                "image/png",
            ],
            "type_mismatch: ",
        ),
        (
            vec!["encode", pdf.to_str().unwrap(), "--max-payload-bytes", "5"],
            "too_large: ",
        ),
    ];
    for (args, want) in cases {
        let out = worker(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with(want), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn definitions_match_the_shipped_file() {
    let out = worker(&["definitions"], &[]);
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shipped: Value =
        serde_json::from_str(include_str!("../deploy/rabbitmq/rabbitmq-definitions.json")).unwrap();
    assert_eq!(printed, shipped);
    let custom: Value = serde_json::from_slice(
        &worker(
            &[
                "definitions",
                "--queue-prefix",
                "acme",
                "--retry-delays",
                "1s",
            ],
            &[],
        )
        .stdout,
    )
    .unwrap();
    let names: Vec<&str> = custom["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "acme.jobs",
            "acme.results",
            "acme.audit",
            "acme.jobs.dlq",
            "acme.retry.1s"
        ]
    );
}
