//! `cxone-worker status` against a real RabbitMQ: the numbers match what the test put
//! in each queue, consumers are counted, a queue that does not exist says so, an
//! unacknowledged count that cannot be known says n/a, paused workers are listed
//! with their reason, a DLQ held by a `dlq` reader says so, and `--watch` refreshes
//! until Ctrl-C. (Counts from running workers: tests/worker.rs.)

#[path = "support/broker.rs"]
mod broker;
#[path = "support/cleanup.rs"]
mod cleanup;
#[path = "dlq/held.rs"]
mod held;

use std::time::{Duration, Instant};

use broker::{Broker, signal};
use lapin::BasicProperties;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn status_json(b: &Broker, args: &[&str]) -> Value {
    let ran = b.run(&[&["status", "--json"][..], args].concat()).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    serde_json::from_str(&ran.stdout).expect("one JSON document")
}

fn by_name<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_what_is_in_each_queue() {
    let b = Broker::new().await;
    let t = &b.topology;
    let put = |queue: String, n: usize| {
        let b = &b;
        async move {
            for i in 0..n {
                b.publish(
                    "",
                    &queue,
                    format!("{i}").as_bytes(),
                    BasicProperties::default(),
                )
                .await;
            }
        }
    };
    put(t.jobs(), 3).await;
    put(format!("{}.retry.10m", b.prefix), 2).await;
    put(t.dlq(), 4).await;
    put(t.results(), 1).await;
    // Two consumers on the audit queue, one on the jobs queue.
    let ch = b.conn.create_channel().await.unwrap();
    let mut consumers = Vec::new();
    for queue in [t.audit(), t.audit(), t.jobs()] {
        let opts = BasicConsumeOptions::default();
        consumers.push(
            ch.basic_consume(
                queue.as_str().into(),
                "".into(),
                opts,
                FieldTable::default(),
            )
            .await
            .unwrap(),
        );
    }
    // The jobs consumer holds the 3 jobs unacknowledged: no longer ready.
    b.wait_ready(&t.jobs(), 0, Duration::from_secs(5)).await;

    let v = status_json(&b, &[]).await;
    let names: Vec<&str> = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    let p = &b.prefix;
    assert_eq!(
        names,
        [
            format!("{p}.jobs"),
            format!("{p}.retry.5s"),
            format!("{p}.retry.10m"),
            format!("{p}.jobs.dlq"),
            format!("{p}.results"),
            format!("{p}.audit")
        ],
        "RETRY_DELAYS names the retry queues"
    );
    let q = |name: &str| by_name(&v, name).clone();
    assert_eq!(
        (
            q(&t.jobs())["ready"].clone(),
            q(&t.jobs())["consumers"].clone()
        ),
        (0.into(), 1.into())
    );
    assert_eq!(q(&format!("{p}.retry.10m"))["ready"], 2);
    assert_eq!(q(&format!("{p}.retry.5s"))["ready"], 0);
    assert_eq!(q(&t.dlq())["ready"], 4);
    assert_eq!(q(&t.results())["ready"], 1);
    assert_eq!(
        (
            q(&t.audit())["ready"].clone(),
            q(&t.audit())["consumers"].clone()
        ),
        (0.into(), 2.into())
    );
    assert!(
        v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["exists"] == true)
    );
    // No consumer: nothing unacknowledged. Consumers that are not workers cannot be
    // asked: n/a, not a guess.
    for name in [t.dlq(), t.results(), format!("{p}.retry.10m")] {
        assert_eq!(q(&name)["unacked"], 0, "{name}");
    }
    assert!(q(&t.jobs())["unacked"].is_null() && q(&t.audit())["unacked"].is_null());
    assert_eq!(v["workers"], serde_json::json!([]));
    assert!(v["unacked_note"].as_str().unwrap().contains("n/a"));

    // The table: aligned, with n/a rather than an invented number.
    let ran = b.run(&["status"]).await;
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(
        lines[0].starts_with("QUEUE") && lines[0].ends_with("READY  UNACKED  CONSUMERS"),
        "{}",
        lines[0]
    );
    let dlq_line = lines
        .iter()
        .find(|l| l.starts_with(&format!("{p}.jobs.dlq ")))
        .unwrap();
    assert_eq!(
        dlq_line.split_whitespace().collect::<Vec<_>>(),
        [t.dlq().as_str(), "dead", "letters", "4", "0", "0"]
    );
    assert_eq!(
        lines.iter().map(|l| l.len()).max(),
        Some(lines.last().unwrap().len()),
        "the note is the widest line"
    );
    assert!(
        lines[1..7].iter().all(|l| l.len() == lines[0].len()),
        "every row as wide as the header"
    );
    drop(consumers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_queues_the_worker_never_declared_show_as_missing() {
    let b = Broker::new().await;
    let v = status_json(&b, &["--retry-delays", "5s,45s"]).await;
    let missing = by_name(&v, &format!("{}.retry.45s", b.prefix));
    assert_eq!(
        (missing["exists"].clone(), missing["ready"].clone()),
        (false.into(), Value::Null)
    );
    assert_eq!(
        by_name(&v, &format!("{}.retry.5s", b.prefix))["exists"],
        true
    );
    let ran = b.run(&["status", "--retry-delays", "5s,45s"]).await;
    assert!(
        ran.stdout
            .lines()
            .any(|l| l.contains(".retry.45s") && l.contains("missing")),
        "{}",
        ran.stdout
    );
    assert_eq!(b.run(&["status", "--retry-delays", "soon"]).await.code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_refreshes_until_interrupted() {
    let b = Broker::new().await;
    let dlq = b.topology.dlq();
    let mut child = b
        .cli(&["status", "--json", "--watch", "200ms"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a refresh within 20 s")
            .unwrap()
            .expect("watch keeps printing");
        serde_json::from_str(&line).unwrap()
    };
    let first = next().await;
    assert_eq!(by_name(&first, &dlq)["ready"], 0);
    b.publish("", &dlq, b"x", BasicProperties::default()).await;
    // Refreshes go on by themselves until one sees the new message.
    let mut refreshes = 1;
    loop {
        let snapshot = next().await;
        refreshes += 1;
        if by_name(&snapshot, &dlq)["ready"] == 1 {
            break;
        }
        assert!(refreshes < 100, "no refresh saw the new message");
    }
    signal(&child, "INT");
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "Ctrl-C is a clean stop");

    let mut child = b.cli(&["status", "--watch"]).spawn().unwrap();
    let mut text = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    while !text.contains("QUEUE") {
        let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
            .await
            .expect("a table within 20 s")
            .unwrap()
            .expect("watch keeps printing");
        text.push_str(&line);
        text.push('\n');
    }
    signal(&child, "TERM");
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text.contains("(Ctrl-C to stop)"), "{text}");
}

/// Runs `status --json` until `done` holds for its workers (30 s at most).
async fn status_until(b: &Broker, what: &str, done: impl Fn(&[Value]) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = status_json(b, &[]).await;
        if done(v["workers"].as_array().unwrap()) {
            return v;
        }
        assert!(Instant::now() < deadline, "never {what}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_workers_are_listed_with_their_reason() {
    let b = Broker::new().await;
    let sim = cxone_worker::sim::spawn(cxone_worker::sim::SimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(root.join("a.pdf"), b"%PDF-1.4\n%%EOF\n").unwrap();

    // Without a worker the ping comes back unroutable: no wait for answers.
    let started = Instant::now();
    assert_eq!(status_json(&b, &[]).await["workers"], serde_json::json!([]));
    let alone = started.elapsed();
    assert!(
        alone < Duration::from_secs(3),
        "status waited {alone:?} with no worker"
    );

    // A worker whose credentials the API refuses pauses at its first job: it hands
    // the job back and cancels its consumer, and must still be listed.
    let refused = b.worker(&sim.url(), "wrong-secret", &root);
    let job = format!(
        r#"{{"job_id":"p-1","file":"file://{}/a.pdf"}}"#,
        root.display()
    );
    b.publish(
        "",
        &b.topology.jobs(),
        job.as_bytes(),
        BasicProperties::default(),
    )
    .await;
    status_until(&b, "paused", |w| w.len() == 1 && w[0]["paused"].is_string()).await;
    let good = b.worker(&sim.url(), "test-secret", &root);
    let started = Instant::now();
    let v = status_until(&b, "two workers", |w| w.len() == 2).await;
    eprintln!(
        "status with two workers took {:?} (both answering)",
        started.elapsed()
    );
    let workers = v["workers"].as_array().unwrap();
    let paused = workers.iter().find(|w| w["paused"].is_string()).unwrap();
    let running = workers.iter().find(|w| w["paused"].is_null()).unwrap();
    assert_eq!(paused["paused"], "credentials_refused", "{v}");
    assert_eq!(paused["consuming"], false, "{v}");
    assert_eq!(running["consuming"], true, "{v}");
    let jobs = by_name(&v, &b.topology.jobs());
    assert_eq!(
        jobs["consumers"], 1,
        "only the running worker consumes: {v}"
    );
    assert_eq!(
        jobs["unacked"], running["unacked"],
        "every consumer answered: {v}"
    );

    let ran = b.run(&["status"]).await;
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let rows: Vec<&str> = ran
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("WORKER"))
        .collect();
    assert_eq!(rows.len(), 3, "{}", ran.stdout);
    assert!(
        rows.iter()
            .any(|l| l.contains("  paused: credentials_refused  ")),
        "{}",
        ran.stdout
    );
    assert!(
        rows.iter().any(|l| l.contains("  consuming  ")),
        "{}",
        ran.stdout
    );

    for mut child in [refused, good] {
        signal(&child, "TERM");
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the worker stops on SIGTERM")
            .unwrap();
        assert!(status.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_held_by_a_reader_says_so_instead_of_looking_empty() {
    let b = Broker::new().await;
    let dlq = b.topology.dlq();
    for i in 0..3 {
        b.publish(
            "",
            &dlq,
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let holder = held::hold_dlq(&b).await;

    let v = status_json(&b, &[]).await;
    let q = by_name(&v, &dlq);
    assert_eq!(
        (q["ready"].clone(), q["consumers"].clone()),
        (0.into(), 1.into())
    );
    assert_eq!(q["held_by"], serde_json::json!(["dlq purge"]));
    assert_eq!(
        q["note"],
        "held by a reader (dlq purge): back in the queue when it ends"
    );
    assert!(by_name(&v, &b.topology.jobs())["note"].is_null());

    let ran = b.run(&["status"]).await;
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(lines[0].ends_with("CONSUMERS  NOTE"), "{}", ran.stdout);
    let row = lines
        .iter()
        .find(|l| l.starts_with(&format!("{dlq} ")))
        .unwrap();
    assert!(
        row.ends_with("  held by a reader (dlq purge): back in the queue when it ends"),
        "{row}"
    );
    assert!(
        !ran.stdout.contains("unacked n/a"),
        "the hold explains the DLQ's count: {}",
        ran.stdout
    );

    holder.decline().await;
    b.wait_ready(&dlq, 3, Duration::from_secs(5)).await;
    let v = status_json(&b, &[]).await;
    let q = by_name(&v, &dlq);
    assert_eq!(
        (q["ready"].clone(), q["held_by"].clone()),
        (3.into(), serde_json::json!([]))
    );
    let ran = b.run(&["status"]).await;
    assert!(!ran.stdout.contains("NOTE"), "{}", ran.stdout);
}
