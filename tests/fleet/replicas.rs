//! Several `cxone-worker run` processes on one prefix, one simulator and one broker:
//! the harness's [`Worker`] holds what they share (prefix, simulator, files, the
//! test's broker connection, clean-up); each [`Replica`] is one process of the fleet.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::Worker;

pub struct Replica {
    pub name: String,
    child: Option<Child>,
    /// Where `/readyz` and `/metrics` answer, read from the start-up log line (the
    /// replica binds port 0: a port picked by the test could be taken meanwhile).
    admin: Option<String>,
    log: std::path::PathBuf,
}

impl Replica {
    /// Starts one more process with `w`'s environment and `extra` on top.
    pub fn spawn(w: &Worker, name: &str, extra: &[(&str, &str)]) -> Replica {
        let log = w.dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cxone-worker"))
            .arg("run")
            .env_clear()
            .envs(&w.env)
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("the worker binary starts");
        Replica {
            name: name.into(),
            child: Some(child),
            admin: None,
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("{} exited with {status}:\n{}", self.name, self.logs());
        }
    }

    /// The admin address, once the replica has logged it.
    fn admin(&mut self) -> Option<String> {
        if self.admin.is_none() {
            self.admin = self.logs().lines().find_map(|line| {
                let entry: Value = serde_json::from_str(line).ok()?;
                let fields = &entry["fields"];
                (fields["message"] == "cxone-worker starting")
                    .then(|| fields["admin"].as_str().map(str::to_owned))?
            });
        }
        self.admin.clone()
    }

    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.assert_alive();
            let ok = match self.admin() {
                Some(admin) => reqwest::get(format!("http://{admin}/readyz"))
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200),
                None => false,
            };
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {within:?}:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A series of `/metrics` (`name` with its labels, e.g.
    /// `cxone_rate_limited_total{source="fleet"}`); 0 when absent.
    pub async fn metric(&mut self, series: &str) -> f64 {
        let admin = self.admin().expect("a replica waited for");
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .and_then(|r| r.error_for_status())
            .expect("/metrics answers")
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until `series` satisfies `ok`; the time it took.
    pub async fn wait_metric(
        &mut self,
        series: &str,
        ok: impl Fn(f64) -> bool,
        within: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            self.assert_alive();
            let value = self.metric(series).await;
            if ok(value) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{}: {series} still {value} after {within:?}:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM and the exit code; panics after `within`.
    pub fn stop(&mut self, within: Duration) -> i32 {
        let mut child = self.child.take().expect("a running replica");
        super::harness::signal(&child, "TERM");
        super::harness::exit_code_within(&mut child, within).unwrap_or_else(|| {
            panic!(
                "{} ignored SIGTERM for {within:?}:\n{}",
                self.name,
                self.logs()
            )
        })
    }

    /// SIGKILL: no goodbye, no clean-up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The simulator's counters.
pub async fn sim_stats(w: &Worker) -> Value {
    reqwest::get(format!("{}/__stats", w.sim.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `n` small PDF jobs published to the fleet's queue (declared first, as the workers
/// declare it, so that a backlog waits for them), ids `{tag}-{i}`.
pub async fn publish_jobs(w: &Worker, tag: &str, n: usize) {
    w.topology()
        .declare(&w.channel)
        .await
        .expect("the topology declares");
    let file = w.file(&format!("{tag}.pdf"), &super::harness::pdf(200));
    for i in 0..n {
        w.publish(&super::harness::job(&format!("{tag}-{i}"), &file))
            .await;
    }
}

/// Samples the simulator's `accepted` counter every 100 ms until `n` executions were
/// accepted: (seconds since the first sample, accepted).
pub async fn watch_accepted(w: &Worker, n: u64, within: Duration) -> Vec<(f64, u64)> {
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        let accepted = sim_stats(w).await["accepted"].as_u64().unwrap();
        samples.push((start.elapsed().as_secs_f64(), accepted));
        if accepted >= n {
            return samples;
        }
        assert!(
            start.elapsed() < within,
            "{accepted} of {n} executions within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Executions per second between the samples where `from` and `to` were accepted.
pub fn rate_between(samples: &[(f64, u64)], from: u64, to: u64) -> f64 {
    let first = samples.iter().find(|(_, a)| *a >= from).expect("reached");
    let last = samples.iter().find(|(_, a)| *a >= to).expect("reached");
    (last.1 - first.1) as f64 / (last.0 - first.0)
}
