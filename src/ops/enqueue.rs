//! `enqueue`: plan the jobs, skip those the checkpoint holds, then publish the rest to
//! the jobs exchange, persistent and mandatory, paced, with a window of confirms;
//! each confirmed id goes to the checkpoint. A signal stops the sends, waits for the
//! outstanding confirms and records them, so a resumed run publishes each job once.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use lapin::BasicProperties;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{Checkpoint, CheckpointError};
use super::plan::{self, Cause, Defaults, Plan, PlanError, Planned, Source};
use super::progress::Progress;
use super::window::{Settled, Window};
use super::{OpsError, Pace};
use crate::broker::publisher::{Outgoing, PublishError, Publisher};
use crate::broker::topology::{Topology, routing, short};
use crate::config::BrokerSettings;

/// One `enqueue` run, as the command line asked for it.
#[derive(Debug, Clone)]
pub struct Request {
    pub source: Source,
    pub defaults: Defaults,
    pub checkpoint: Option<PathBuf>,
    /// Refuse the whole input when any line or file is bad.
    pub strict: bool,
    /// Print the jobs as NDJSON instead of publishing them; needs no broker.
    pub dry_run: bool,
    /// Jobs per second; `None` = as fast as the broker confirms.
    pub rate: Option<f64>,
    /// Publishes awaiting their confirm at most; bounds what a SIGKILL can duplicate.
    pub window: usize,
    pub confirm_timeout: Duration,
}

/// Why the run could not start; nothing was published.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(transparent)]
    Input(#[from] PlanError),
    #[error("--strict: {0} bad input(s), nothing published")]
    Strict(usize),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Broker(#[from] OpsError),
}

/// What the run did.
#[derive(Debug, Default)]
pub struct Tally {
    /// Confirmed by the broker (with `dry_run`: would be published).
    pub published: u64,
    /// Already confirmed by an earlier run (in the checkpoint).
    pub skipped: u64,
    /// Inputs that repeat a job of this run.
    pub duplicates: u64,
    /// Bad manifest lines or jobs: never sent.
    pub invalid: u64,
    /// Files and directory entries that could not be read: never sent.
    pub unreadable: u64,
    /// Directories that hold only subdirectories, given without `--recursive`.
    pub no_files: u64,
    /// Links to directories that a `--recursive` walk did not follow.
    pub not_followed: u64,
    /// Planned jobs from paths by the `content_type` their names declared (`None`:
    /// nothing declared); empty when types are not declared.
    pub declared: BTreeMap<Option<&'static str>, u64>,
    /// Sent, and refused by the broker (nack, or returned as unroutable).
    pub rejected: u64,
    /// Planned but not sent: the run was interrupted or failed.
    pub unsent: u64,
    pub interrupted: bool,
    /// The broker failed mid-run; what was confirmed before is in the checkpoint.
    pub failure: Option<String>,
    pub elapsed: Duration,
}

impl Tally {
    pub fn refused(&self) -> u64 {
        self.invalid + self.unreadable + self.no_files + self.rejected
    }

    /// Whether the only thing to say is that directories held no files (the refusal
    /// lines already said it, with what to do): the summary would add nothing.
    pub fn only_directories_without_files(&self) -> bool {
        self.no_files > 0
            && self.refused() == self.no_files
            && self.published + self.skipped + self.duplicates + self.not_followed + self.unsent
                == 0
    }
}

/// Runs one `enqueue`. Refusals and progress go to stderr; with `dry_run`, the jobs
/// go to `out` as NDJSON.
pub async fn run(
    request: &Request,
    broker: &BrokerSettings,
    stop: &CancellationToken,
    out: &mut dyn Write,
) -> Result<Tally, EnqueueError> {
    let started = Instant::now();
    // First: a second run on the same checkpoint stops here, before any work.
    let mut checkpoint = request
        .checkpoint
        .as_deref()
        .map(|path| Checkpoint::open(path, &broker.prefix, !request.dry_run))
        .transpose()?;
    let Plan {
        jobs,
        refused,
        duplicates,
        not_followed,
        declared,
    } = plan::plan(&request.source, &request.defaults)?;
    tell(&refused, &not_followed);
    if request.strict && !refused.is_empty() {
        return Err(EnqueueError::Strict(refused.len()));
    }
    let planned = jobs.len() as u64;
    let jobs: Vec<Planned> = match &checkpoint {
        Some(cp) => jobs.into_iter().filter(|j| !cp.contains(&j.id)).collect(),
        None => jobs,
    };
    let count = |cause| refused.iter().filter(|r| r.cause == cause).count() as u64;
    let mut tally = Tally {
        skipped: planned - jobs.len() as u64,
        duplicates,
        invalid: count(Cause::Invalid),
        unreadable: count(Cause::Unreadable),
        no_files: count(Cause::NoFiles),
        not_followed: not_followed.len() as u64,
        declared,
        ..Tally::default()
    };
    if request.dry_run {
        for job in &jobs {
            // stdout closed early (`| head`) ends the listing, not the program.
            if out
                .write_all(&job.body)
                .and_then(|()| out.write_all(b"\n"))
                .is_err()
            {
                break;
            }
        }
        tally.published = jobs.len() as u64;
    } else if !jobs.is_empty() {
        let topology = Topology::names_only(&broker.prefix);
        let connection = super::connect(broker, "enqueue").await?;
        super::require_exchange(&connection, &topology.jobs()).await?;
        super::require_queue(&connection, &topology.jobs()).await?;
        let publisher = Publisher::open(&connection, request.confirm_timeout)
            .await
            .map_err(OpsError::from)?;
        publish(
            &jobs,
            &topology,
            publisher,
            request,
            checkpoint.as_mut(),
            stop,
            &mut tally,
        )
        .await?;
        crate::broker::close(&connection, "done").await;
    }
    tally.elapsed = started.elapsed();
    Ok(tally)
}

/// One line on stderr for each input that will not be sent, and why.
fn tell(refused: &[plan::Refusal], not_followed: &[String]) {
    for r in refused {
        eprintln!("cxone-worker: refused {}: {}", r.origin, r.reason);
    }
    for link in not_followed {
        eprintln!(
            "cxone-worker: skipped {link}: a link to a directory, not followed \
             (name the directory itself to enqueue what it holds)"
        );
    }
}

/// Publishes `jobs` in order; returns when all are settled, on a signal (after the
/// outstanding confirms), or when the channel fails (the tally says so).
async fn publish(
    jobs: &[Planned],
    topology: &Topology,
    publisher: Publisher,
    request: &Request,
    mut checkpoint: Option<&mut Checkpoint>,
    stop: &CancellationToken,
    tally: &mut Tally,
) -> Result<(), CheckpointError> {
    let mut progress = Progress::new("enqueue", jobs.len() as u64);
    let mut window: Window<usize> = Window::new(publisher, request.window);
    let mut pace = Pace::new(request.rate);
    let mut settled = Vec::new();
    let mut sent = 0;
    for (i, job) in jobs.iter().enumerate() {
        if !pace.wait(stop).await {
            tally.interrupted = true;
            break;
        }
        window.room(&mut settled).await;
        record(jobs, &mut settled, tally, &mut checkpoint, &mut progress)?;
        if let Err(e) = window.send(message(topology, job), i).await {
            tally.failure = Some(e.to_string());
            break;
        }
        sent += 1;
        window.ready(&mut settled);
    }
    window.drain(&mut settled).await;
    record(jobs, &mut settled, tally, &mut checkpoint, &mut progress)?;
    progress.finish();
    tally.unsent += (jobs.len() - sent) as u64;
    Ok(())
}

/// Counts settled publishes and appends the confirmed ids to the checkpoint, in one
/// write per batch.
fn record(
    jobs: &[Planned],
    settled: &mut Vec<Settled<usize>>,
    tally: &mut Tally,
    checkpoint: &mut Option<&mut Checkpoint>,
    progress: &mut Progress,
) -> Result<(), CheckpointError> {
    if settled.is_empty() {
        return Ok(());
    }
    let n = settled.len() as u64;
    for (i, outcome) in settled.drain(..) {
        let id = &jobs[i].id;
        match outcome {
            Ok(()) => {
                tally.published += 1;
                if let Some(cp) = checkpoint.as_deref_mut() {
                    cp.record(id);
                }
            }
            Err(e @ (PublishError::Nacked | PublishError::Returned(_))) => {
                tally.rejected += 1;
                progress.println(&format!("cxone-worker: refused {id}: {e}"));
            }
            // The channel failed or timed out: the job may be in the queue or not. It
            // stays out of the checkpoint, so a re-run publishes it again (same id).
            Err(e) => {
                tally.unsent += 1;
                tally.failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    progress.inc(n);
    match checkpoint {
        Some(cp) => cp.flush(),
        None => Ok(()),
    }
}

/// The message of one job: persistent JSON, `message_id` = the job's id (so even a
/// job without `job_id` keeps one idempotency key however often it is published).
fn message(topology: &Topology, job: &Planned) -> Outgoing {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Outgoing {
        exchange: topology.jobs(),
        routing_key: routing::JOB.to_owned(),
        body: job.body.clone(),
        properties: BasicProperties::default()
            .with_message_id(short(&job.id))
            .with_content_type("application/json".into())
            .with_app_id("cxone-worker enqueue".into())
            .with_timestamp(now),
    }
}
