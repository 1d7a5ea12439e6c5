//! A real RabbitMQ for the operator tooling tests: a random queue prefix per test with
//! the worker's topology declared, helpers to fill and read queues, the binary with
//! the matching environment, and the prefix's queues and exchanges deleted at the end,
//! even when the test fails. No broker at AMQP_URL is a loud failure, never a skip.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use cxone_worker::broker::topology::{Topology, text};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Retry delays of the test topology: the queues `status` must find.
pub const RETRY_DELAYS: &str = "5s,10m";

pub use crate::cleanup::amqp_url;

pub fn retry_delays() -> Vec<Duration> {
    vec![Duration::from_secs(5), Duration::from_secs(600)]
}

/// A message read back from a queue.
#[derive(Debug, Clone)]
pub struct Msg {
    pub body: Vec<u8>,
    pub props: BasicProperties,
}

impl Msg {
    pub fn header(&self, key: &str) -> Option<&AMQPValue> {
        self.props.headers().as_ref()?.inner().get(key)
    }

    pub fn header_keys(&self) -> Vec<String> {
        self.props
            .headers()
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.as_str().to_owned()).collect())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The job id as `dlq` shows it.
    pub fn job_id(&self) -> String {
        cxone_worker::job::idempotency_key(
            cxone_worker::job::loose_job_id(&self.body).as_deref(),
            self.props.message_id().as_ref().map(|m| m.as_str()),
            &self.body,
        )
    }
}

/// What a run of the binary printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Prints the run as a terminal would show it (kept by the test harness for a
    /// failing test), and passes it on.
    pub fn echoed(self, args: &[&str]) -> Ran {
        eprintln!(
            "$ cxone-worker {}\n{}{}-> {}",
            args.join(" "),
            self.stdout,
            self.stderr,
            self.code
        );
        self
    }
}

pub struct Broker {
    pub prefix: String,
    pub topology: Topology,
    pub conn: Connection,
    /// In confirm mode.
    pub channel: Channel,
}

impl Broker {
    /// A fresh prefix with the worker's whole topology declared.
    pub async fn new() -> Self {
        let broker = Self::bare().await;
        broker
            .topology
            .declare(&broker.channel)
            .await
            .expect("declare the topology");
        broker
    }

    /// A fresh prefix with nothing declared.
    pub async fn bare() -> Self {
        let prefix = format!("ops{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ must run at {} for these tests: {e}", amqp_url()));
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            topology: Topology::new(&prefix, &retry_delays()),
            prefix,
            conn,
            channel,
        }
    }

    /// The binary, with this broker and prefix in its environment.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cxone-worker"));
        cmd.args(args)
            .env("AMQP_URL", amqp_url())
            .env("CXONE_QUEUE_PREFIX", &self.prefix)
            .env("RETRY_DELAYS", RETRY_DELAYS)
            .env_remove("PUBLISH_CONFIRM_TIMEOUT")
            .env_remove("ENQUEUE_CONFIRM_WINDOW")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// A `cxone-worker run` against the simulator at `api` (whose default client is
    /// `test-client`), with `secret` as its client secret, reading files under `root`;
    /// its output is discarded.
    pub fn worker(&self, api: &str, secret: &str, root: &std::path::Path) -> tokio::process::Child {
        let mut cmd = self.cli(&["run"]);
        cmd.env("CXONE_API_URL", api)
            .env("CXONE_CLIENT_ID", "test-client")
            .env("CXONE_CLIENT_SECRET", secret)
            .env("CXONE_DATA_ACTION_ID", "default-action")
            .env("FILE_ROOTS", root.to_str().unwrap())
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().expect("the worker starts")
    }

    /// Runs the binary to its end (a minute at most).
    pub async fn run(&self, args: &[&str]) -> Ran {
        self.run_with_input(args, None).await
    }

    pub async fn run_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Ran {
        let mut cmd = self.cli(args);
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("the binary starts");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input).await.unwrap();
            drop(stdin);
        }
        // The pipes are read beside the wait, so that a run that hangs still shows
        // what it printed.
        let stdout = tokio::spawn(read_all(child.stdout.take()));
        let stderr = tokio::spawn(read_all(child.stderr.take()));
        let status = match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "cxone-worker {args:?} did not finish within a minute; it printed:\n{}{}",
                    stdout.await.unwrap_or_default(),
                    stderr.await.unwrap_or_default()
                );
            }
        };
        Ran {
            code: status.code().unwrap_or(-1),
            stdout: stdout.await.unwrap(),
            stderr: stderr.await.unwrap(),
        }
        .echoed(args)
    }

    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        crate::cleanup::publish_confirmed(&self.channel, exchange, routing_key, body, props).await;
    }

    /// A dead letter as the worker writes it: the job's own properties plus the
    /// contract's headers, through the dead-letter exchange.
    pub async fn dead_letter(
        &self,
        body: &[u8],
        props: BasicProperties,
        kind: &str,
        error: &str,
        attempts: i64,
        failed_at: &str,
    ) {
        let mut h = props.headers().clone().unwrap_or_default();
        h.insert("x-error-kind".into(), text(kind));
        h.insert("x-error".into(), text(error));
        h.insert("x-attempts".into(), AMQPValue::LongLongInt(attempts));
        h.insert("x-failed-at".into(), text(failed_at));
        self.publish(&self.topology.dlx(), kind, body, props.with_headers(h))
            .await;
    }

    /// A dead letter as RabbitMQ makes it: the job is handed back on `P.jobs` until
    /// its delivery limit runs out and the broker moves it, with `x-death` only.
    pub async fn poison(&self, body: &[u8]) {
        let before = self.ready(&self.topology.dlq()).await;
        self.publish("", &self.topology.jobs(), body, BasicProperties::default())
            .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ready(&self.topology.dlq()).await == before {
            assert!(
                Instant::now() < deadline,
                "the broker never dead-lettered the poison message"
            );
            if let Some(m) = self
                .channel
                .basic_get(self.topology.jobs().into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                m.delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        }
    }

    /// Ready messages of a queue (passive declare).
    pub async fn ready(&self, queue: &str) -> u32 {
        crate::cleanup::inspect_queue(&self.conn, queue)
            .await
            .unwrap_or_else(|e| panic!("queue {queue}: {e}"))
            .message_count()
    }

    /// Waits until a queue holds `n` ready messages.
    pub async fn wait_ready(&self, queue: &str, n: u32, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.ready(queue).await;
            if got == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queue} holds {got} messages, not {n}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a queue holds at least `n` ready messages: a process publishing to
    /// it is then known to be mid-way, whatever the machine's load.
    pub async fn wait_at_least(&self, queue: &str, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ready(queue).await < n {
            assert!(
                Instant::now() < deadline,
                "{queue} never reached {n} messages"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes every message of a queue, in order.
    pub async fn drain(&self, queue: &str) -> Vec<Msg> {
        let ch = self.conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            m.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            out.push(Msg {
                body: m.delivery.data.clone(),
                props: m.delivery.properties.clone(),
            });
        }
        let _ = ch.close(200, "ok".into()).await;
        out
    }

    /// Job ids of every message of a queue, in order (the queue is emptied).
    pub async fn drain_ids(&self, queue: &str) -> Vec<String> {
        self.drain(queue).await.iter().map(Msg::job_id).collect()
    }
}

/// Deletes the prefix's queues and exchanges, even when the test fails.
impl Drop for Broker {
    fn drop(&mut self) {
        crate::cleanup::delete_topology(Topology::new(&self.prefix, &retry_delays()));
    }
}

/// Everything a pipe gives until it closes, as text.
async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let mut text = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut text).await;
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// An RFC 3339 time `ago` before now.
pub fn ago(ago: Duration) -> String {
    let t = time::OffsetDateTime::now_utc() - ago;
    cxone_worker::text::rfc3339(t.replace_nanosecond(0).unwrap())
}

/// Sends a signal to a running child (`TERM`, `INT`).
pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("the child runs").to_string();
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{name} {pid}");
}
