//! The job logic in-process, as `run` builds it, against the simulator and a
//! temporary directory: no broker. Deliveries are handed to `Worker::process`
//! directly, each one carrying the state the one before left.

#![allow(dead_code)] // each test binary uses its own part of the support

use clap::Parser;
use cxone_worker::commands::run::worker;
use cxone_worker::config::{RunArgs, Settings};
use cxone_worker::outcome::Report;
use cxone_worker::sim::{SimConfig, SimHandle, spawn};
use cxone_worker::state::JobState;
use cxone_worker::worker::{Incoming, NoStages, Worker};
use serde_json::Value;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

pub struct Setup {
    pub sim: SimHandle,
    pub dir: tempfile::TempDir,
    pub worker: Worker,
}

/// The worker's settings: `base` flags for the API (`--api-url`, profile…), then
/// files under `dir/in`, records under `dir/sync`, and `extra`.
fn settings(dir: &std::path::Path, api: &[String], extra: &[&str]) -> Settings {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let roots = format!("--file-roots={}", dir.join("in").display());
    let storage = format!("--storage-endpoint=file://{}/sync", dir.display());
    let mut args: Vec<String> = vec![
        "test".into(),
        "--client-id=test-client".into(),
        "--client-secret=test-secret".into(),
        "--data-action-id=act".into(),
        roots,
        storage,
        "--max-attempts=3".into(),
    ];
    args.extend(api.iter().cloned());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Cli::try_parse_from(args).unwrap().run.settings().unwrap()
}

/// A simulator with `sim` knobs, and a seed-profile worker on it.
pub async fn setup(sim: SimConfig, extra: &[&str]) -> Setup {
    let sim = spawn(sim).await.unwrap();
    let api = vec![format!("--api-url={}", sim.url())];
    with_api(sim, api, extra)
}

/// A simulator, and a worker with the API flags `api(sim's url)`.
pub async fn setup_with(
    sim: SimConfig,
    api: impl FnOnce(&str) -> Vec<String>,
    extra: &[&str],
) -> Setup {
    let sim = spawn(sim).await.unwrap();
    let flags = api(&sim.url());
    with_api(sim, flags, extra)
}

fn with_api(sim: SimHandle, api: Vec<String>, extra: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let worker = worker(&settings(dir.path(), &api, extra), None).unwrap();
    Setup { sim, dir, worker }
}

impl Setup {
    pub fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.dir.path().join("in").join(name);
        std::fs::write(&path, bytes).unwrap();
        format!("file://{}", path.display())
    }

    pub fn delivery(&self, job: &Value, state: JobState) -> Incoming {
        Incoming {
            body: serde_json::to_vec(job).unwrap(),
            message_id: None,
            state,
        }
    }

    /// One delivery of `job` carrying `state`.
    pub async fn process(&self, job: &Value, state: JobState) -> Report {
        self.worker
            .process(&self.delivery(job, state), &NoStages)
            .await
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/__stats?keys=1&uploads=1", self.sim.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn record(&self, job_id: &str) -> Value {
        let path = self.dir.path().join(format!("sync/{job_id}.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }
}

/// A PDF of `n` bytes whose content varies, so that chunks differ.
pub fn pdf(n: usize) -> Vec<u8> {
    let mut v = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    v.extend((0..n.saturating_sub(v.len())).map(|i| (i * 31 % 251) as u8));
    v
}
