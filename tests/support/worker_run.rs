//! One run of the real `cxone-worker run` binary against RabbitMQ (127.0.0.1:5672, or
//! `AMQP_URL`) and the in-process API simulator, on a random queue prefix: publish jobs,
//! collect their results, then delete every queue and exchange of the prefix.
//! RabbitMQ missing is a test failure, never a skip.

#![allow(dead_code)] // each test binary uses its own part of the support

use std::process::Stdio;
use std::time::Duration;

use cxone_worker::broker::topology::Topology;
use cxone_worker::sim::{SimConfig, SimHandle};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::Instant;

const CLIENT_ID: &str = "e2e-client";
const CLIENT_SECRET: &str = "e2e-secret";
const RETRY_DELAYS: &str = "200ms";

use crate::cleanup::amqp_url;

/// A worker process, its simulator and a broker connection.
pub struct WorkerRun {
    pub prefix: String,
    worker: Child,
    log: std::path::PathBuf,
    _sim: SimHandle,
    connection: Connection,
    channel: Channel,
    finished: bool,
}

/// One result message: its routing key and its JSON body.
#[derive(Debug)]
pub struct Result {
    pub key: String,
    pub body: Value,
}

impl WorkerRun {
    /// Starts the simulator and the worker with `env` on top of the essentials, and
    /// waits until the worker has declared its topology.
    pub async fn start(env: &[(String, String)]) -> WorkerRun {
        let prefix = format!("e2e{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let sim = cxone_worker::sim::spawn(SimConfig {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            ..SimConfig::default()
        })
        .await
        .expect("simulator starts");
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ must run at {} for these tests: {e}", amqp_url()));
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("worker-{prefix}.log"));
        let out = std::fs::File::create(&log).expect("worker log");
        let worker = Command::new(env!("CARGO_BIN_EXE_cxone-worker"))
            .arg("run")
            // Only what the test says: no stray cloud settings from the machine.
            .env_clear()
            .envs([
                ("AMQP_URL", amqp_url()),
                ("CXONE_QUEUE_PREFIX", prefix.clone()),
                ("CXONE_API_URL", sim.url()),
                ("CXONE_CLIENT_ID", CLIENT_ID.into()),
                ("CXONE_CLIENT_SECRET", CLIENT_SECRET.into()),
                ("CXONE_DATA_ACTION_ID", "e2e-action".into()),
                ("ADMIN_ADDR", "127.0.0.1:0".into()),
                ("MAX_ATTEMPTS", "2".into()),
                ("RETRY_DELAYS", RETRY_DELAYS.into()),
                ("SHUTDOWN_GRACE", "2s".into()),
                ("LOG_FORMAT", "text".into()),
                ("NO_COLOR", "1".into()),
                ("RUST_LOG", "info".into()),
            ])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("worker log"))
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("the worker binary starts");
        let mut run = WorkerRun {
            prefix,
            worker,
            log,
            _sim: sim,
            connection,
            channel,
            finished: false,
        };
        run.wait_for_topology().await;
        run
    }

    fn topology(&self) -> Topology {
        Topology::new(&self.prefix, &[Duration::from_millis(200)])
    }

    /// Waits until the worker consumes `P.jobs`, which it does once its whole
    /// topology is declared.
    async fn wait_for_topology(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let jobs = self.topology().jobs();
        loop {
            if let Ok(Some(status)) = self.worker.try_wait() {
                panic!("the worker exited with {status}:\n{}", self.log_text());
            }
            // A passive declare of a missing queue closes the channel: one per try.
            let channel = self.connection.create_channel().await.expect("channel");
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let declared = channel
                .queue_declare(jobs.as_str().into(), passive, FieldTable::default())
                .await;
            if declared.is_ok_and(|q| q.consumer_count() > 0) {
                let _ = channel.close(200, "ok".into()).await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no consumer within 20 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publishes a job to `P.jobs` and waits for the broker's confirm.
    pub async fn publish(&self, job: &Value) {
        let body = serde_json::to_vec(job).expect("job JSON");
        let confirm = self
            .channel
            .basic_publish(
                self.topology().jobs().as_str().into(),
                "job".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await
            .expect("publish");
        let confirmation = confirm.await.expect("confirm");
        assert!(
            confirmation.is_ack() && confirmation.take_message().is_none(),
            "job not routed"
        );
    }

    /// Waits for `n` results on `P.results`.
    pub async fn results(&self, n: usize, within: Duration) -> Vec<Result> {
        let deadline = Instant::now() + within;
        let queue = self.topology().results();
        let mut out = Vec::new();
        while out.len() < n {
            let got = self
                .channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            match got {
                Some(message) => out.push(Result {
                    key: message.delivery.routing_key.to_string(),
                    body: serde_json::from_slice(&message.delivery.data).expect("result JSON"),
                }),
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "{} of {n} results within {within:?}: {out:?}\n{}",
                        out.len(),
                        self.log_text()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        out
    }

    /// Waits until `n` messages are dead-lettered (published with the results, so
    /// they may land a moment after them).
    pub async fn wait_dead_letters(&self, n: u32) {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let queue = self
                .channel
                .queue_declare(
                    self.topology().dlq().as_str().into(),
                    passive,
                    FieldTable::default(),
                )
                .await
                .expect("the DLQ exists");
            if queue.message_count() == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} dead letters, not {n}",
                queue.message_count()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the worker and deletes the prefix's queues and exchanges.
    pub async fn finish(mut self) {
        let _ = self.worker.start_kill();
        let _ = self.worker.wait().await;
        let topology = self.topology();
        let _ =
            tokio::task::spawn_blocking(move || crate::cleanup::delete_topology(topology)).await;
        let _ = std::fs::remove_file(&self.log);
        self.finished = true;
    }
}

/// A test that failed before [`WorkerRun::finish`] still removes its queues.
impl Drop for WorkerRun {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let _ = self.worker.start_kill();
        crate::cleanup::delete_topology(self.topology());
        eprintln!("worker log of {}:\n{}", self.prefix, self.log_text());
    }
}

/// The result of `job_id` among `results`.
pub fn result_of<'a>(results: &'a [Result], job_id: &str) -> &'a Result {
    results
        .iter()
        .find(|r| r.body["job_id"] == job_id)
        .unwrap_or_else(|| panic!("no result for {job_id}: {results:?}"))
}
