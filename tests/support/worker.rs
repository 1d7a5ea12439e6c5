//! A worker under test: the real binary, the in-process simulator, a real RabbitMQ,
//! a random queue prefix and a temporary directory, all torn down at the end. The one
//! harness of every test that runs `cxone-worker run`. RabbitMQ missing is a test
//! failure, never a skip.

#![allow(dead_code)] // each test binary uses its own part of it

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cxone_worker::broker::topology::Topology;
use cxone_worker::sim::{SimConfig, SimHandle, spawn};
use lapin::options::{BasicGetOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

pub const SECRET: &str = "harness-secret";

pub use crate::cleanup::amqp_url;

/// A result read from `P.results`.
#[derive(Debug)]
pub struct Got {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Value,
}

pub struct Worker {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub sim: SimHandle,
    pub sim_config: SimConfig,
    /// The port the worker calls: the simulator comes back on it after a restart.
    api_port: u16,
    pub env: HashMap<String, String>,
    pub admin: String,
    pub conn: Connection,
    pub channel: Channel,
    child: Option<Child>,
    log: PathBuf,
    runs: usize,
}

impl Worker {
    /// A simulator with `sim` knobs and a worker environment with `env` overrides;
    /// the worker is not started yet.
    pub async fn new(sim: SimConfig, env: &[(&str, &str)]) -> Self {
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        let sim_config = SimConfig {
            client_id: "harness".into(),
            client_secret: SECRET.into(),
            ..sim
        };
        let sim = spawn(sim_config.clone()).await.expect("simulator starts");
        let admin = format!("127.0.0.1:{}", free_port());
        let mut vars: HashMap<String, String> = [
            ("AMQP_URL", amqp_url()),
            ("CXONE_QUEUE_PREFIX", prefix.clone()),
            ("CXONE_API_URL", sim.url()),
            ("CXONE_CLIENT_ID", "harness".into()),
            ("CXONE_CLIENT_SECRET", SECRET.into()),
            ("CXONE_DATA_ACTION_ID", "harness-action".into()),
            ("FILE_ROOTS", dir.path().join("in").display().to_string()),
            (
                "EXTERNAL_STORAGE_ENDPOINT",
                format!("file://{}/sync", dir.path().display()),
            ),
            ("WORKER_CONCURRENCY", "8".into()),
            ("MAX_ATTEMPTS", "4".into()),
            ("RETRY_DELAYS", "200ms,400ms".into()),
            ("SHUTDOWN_GRACE", "20s".into()),
            ("ADMIN_ADDR", admin.clone()),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in env {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ must run at {} for these tests: {e}", amqp_url()));
        let channel = confirm_channel(&conn).await;
        let log = dir.path().join("worker.log");
        let api_port = sim.addr().port();
        Self {
            prefix,
            dir,
            sim,
            sim_config,
            api_port,
            env: vars,
            admin,
            conn,
            channel,
            child: None,
            log,
            runs: 0,
        }
    }

    /// A worker with `env` over the defaults, against a default simulator, started
    /// and ready: for tests whose settings are all environment (object stores, HTTP).
    pub async fn started(env: &[(String, String)]) -> Self {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut worker = Worker::new(SimConfig::default(), &env).await;
        worker.start().await;
        worker
    }

    /// Starts the worker and waits until it consumes (`/readyz` answers 200).
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_ready(Duration::from_secs(30)).await;
    }

    /// Starts the worker without waiting for it to be ready.
    pub fn spawn(&mut self) {
        self.runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cxone-worker"))
            .arg("run")
            .env_clear()
            .envs(&self.env)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("worker binary starts");
        self.child = Some(child);
    }

    /// `/readyz`'s status and body, `None` while the admin server does not answer.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        let url = format!("http://{}/readyz", self.admin);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let answer = client.get(url).send().await.ok()?;
        let status = answer.status().as_u16();
        Some((status, answer.text().await.unwrap_or_default()))
    }

    /// Waits until `/readyz` says not ready for a reason that holds `why`.
    pub async fn wait_not_ready_because(&mut self, why: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.assert_alive();
            let answer = self.readyz().await;
            if let Some((503, body)) = &answer
                && body.contains(why)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never said {why:?} (last: {answer:?}):\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the worker to exit on its own; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let mut child = self.child.take().expect("a running worker");
        exit_code_within(&mut child, within)
            .unwrap_or_else(|| panic!("worker still running after {within:?}:\n{}", self.logs()))
    }

    pub async fn ready_status(&self) -> Option<u16> {
        self.readyz().await.map(|(status, _)| status)
    }

    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.assert_alive();
            if self.ready_status().await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker not ready within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/readyz` answers `status` (None = unreachable).
    pub async fn wait_readyz(&mut self, status: u16, within: Duration) {
        let deadline = Instant::now() + within;
        while self.ready_status().await != Some(status) {
            self.assert_alive();
            assert!(
                Instant::now() < deadline,
                "/readyz never answered {status}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn assert_alive(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("worker exited with {status}:\n{}", self.logs());
        }
    }

    /// SIGTERM, then the exit code (panics if it takes longer than `within`).
    pub fn stop(&mut self, within: Duration) -> (i32, Duration) {
        let mut child = self.child.take().expect("a running worker");
        let start = Instant::now();
        signal(&child, "TERM");
        let code = exit_code_within(&mut child, within).unwrap_or_else(|| {
            panic!(
                "worker did not exit within {within:?} of SIGTERM:\n{}",
                self.logs()
            )
        });
        (code, start.elapsed())
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("in")
    }

    pub fn file(&self, name: &str, content: &[u8]) -> String {
        let path = self.root().join(name);
        std::fs::write(&path, content).unwrap();
        format!("file://{}", path.display())
    }

    /// The topology the worker declares, with the retry queues of its `RETRY_DELAYS`.
    pub fn topology(&self) -> Topology {
        let delays: Vec<Duration> = self.env["RETRY_DELAYS"]
            .split(',')
            .filter_map(cxone_worker::text::parse_duration)
            .collect();
        Topology::new(&self.prefix, &delays)
    }

    pub fn q(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    pub async fn publish(&self, job: &Value) {
        self.publish_raw(serde_json::to_vec(job).unwrap(), BasicProperties::default())
            .await;
    }

    pub async fn publish_raw(&self, body: Vec<u8>, properties: BasicProperties) {
        crate::cleanup::publish_confirmed(&self.channel, "", &self.q("jobs"), &body, properties)
            .await;
    }

    /// Reads up to `n` messages from `P.{queue}` within `within`.
    pub async fn drain(
        &self,
        queue: &str,
        n: usize,
        within: Duration,
    ) -> Vec<lapin::message::BasicGetMessage> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            let got = self
                .channel
                .basic_get(self.q(queue).into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            match got {
                Some(m) => out.push(m),
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        out
    }

    /// Waits for `n` results; panics with the worker's logs when they do not come.
    pub async fn results(&mut self, n: usize, within: Duration) -> Vec<Got> {
        let got = self.drain("results", n, within).await;
        assert!(
            got.len() >= n,
            "{} of {n} results within {within:?}:\n{}",
            got.len(),
            self.logs()
        );
        got.into_iter()
            .map(|m| Got {
                routing_key: m.delivery.routing_key.to_string(),
                properties: m.delivery.properties.clone(),
                body: serde_json::from_slice(&m.delivery.data).unwrap(),
            })
            .collect()
    }

    pub async fn depth(&self, queue: &str) -> u32 {
        crate::cleanup::inspect_queue(&self.conn, &self.q(queue))
            .await
            .unwrap()
            .message_count()
    }

    /// Waits until `P.{queue}` holds `n` messages (dead letters are published with
    /// the results, so they may land a moment after them).
    pub async fn wait_depth(&self, queue: &str, n: u32, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let depth = self.depth(queue).await;
            if depth == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{depth} messages in {queue}, not {n}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn consumers(&self, queue: &str) -> u32 {
        crate::cleanup::inspect_queue(&self.conn, &self.q(queue))
            .await
            .unwrap()
            .consumer_count()
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/__stats?keys=1", self.sim.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Replaces the simulator with one on the same port (another secret, say).
    pub async fn restart_sim(&mut self, config: SimConfig) {
        let config = SimConfig {
            port: self.api_port,
            ..config
        };
        // Dropping the handle stops the old server; the new one binds once the port is free.
        let placeholder = spawn(SimConfig::default()).await.unwrap();
        drop(std::mem::replace(&mut self.sim, placeholder));
        self.sim = spawn_retrying(config.clone()).await;
        self.sim_config = config;
    }

    /// Stops the simulator; the API becomes unreachable.
    pub async fn stop_sim(&mut self) {
        let placeholder = spawn(SimConfig::default()).await.unwrap();
        drop(std::mem::replace(&mut self.sim, placeholder));
    }

    /// Waits until the worker declared its topology (the jobs queue exists).
    pub async fn wait_topology(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.assert_alive();
            if crate::cleanup::inspect_queue(&self.conn, &self.q("jobs"))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no topology within 30 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

async fn spawn_retrying(config: SimConfig) -> SimHandle {
    for _ in 0..50 {
        if let Ok(h) = spawn(config.clone()).await {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the simulator could not bind port {}", config.port);
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        crate::cleanup::delete_topology(self.topology());
    }
}

pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The exit code of `child` once it exits; `None` (and the child killed) when it
/// still runs after `within`.
pub fn exit_code_within(child: &mut Child, within: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        if start.elapsed() > within {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends the signal `name` (`TERM`, `INT`, …) to `child`.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// The result of `job_id` among `results`.
pub fn result_of<'a>(results: &'a [Got], job_id: &str) -> &'a Got {
    results
        .iter()
        .find(|r| r.body["job_id"] == job_id)
        .unwrap_or_else(|| panic!("no result for {job_id}: {results:?}"))
}

/// A job for `file` with an explicit id.
pub fn job(id: &str, file: &str) -> Value {
    serde_json::json!({"job_id": id, "file": file})
}

pub fn pdf(n: usize) -> Vec<u8> {
    let mut v = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    v.extend((0..n).map(|i| (i * 31 % 251) as u8));
    v
}

/// Closes the broker connection of the worker with this prefix, as an operator would.
pub fn close_worker_connection(prefix: &str) -> bool {
    crate::cleanup::close_connection(&format!("cxone-worker run ({prefix})"))
}
