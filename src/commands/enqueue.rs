//! `cxone-worker enqueue`: publish jobs (files, directories or an NDJSON manifest) to
//! `P.jobs` with publisher confirms; see [`crate::ops::enqueue`].

use std::io::Write;
use std::path::PathBuf;

use clap::{ArgGroup, Args};
use serde_json::Value;

use crate::config::{BrokerArgs, BrokerSettings, ConfigError};
use crate::ops::checkpoint::CheckpointError;
use crate::ops::enqueue::{EnqueueError, Request, Tally};
use crate::ops::flags;
use crate::ops::plan::{Defaults, Source};
use crate::ops::table::short_duration;

#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("input").required(true).args(["paths", "manifest"])))]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Files or directories; a directory gives its files (its whole tree with --recursive).
    #[arg(value_name = "FILE")]
    pub paths: Vec<PathBuf>,
    /// Descend into subdirectories.
    #[arg(short, long)]
    pub recursive: bool,
    /// Take only the files of directories whose name matches, e.g. '*.pdf' (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub glob: Vec<String>,
    /// Declare no content_type. By default a job from a path declares the type its file
    /// name says (.pdf: application/pdf), which the worker checks against the bytes.
    #[arg(long)]
    pub no_declare_type: bool,
    /// NDJSON file of contract jobs, one per line; `-` reads stdin.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["paths", "recursive", "glob", "no_declare_type"])]
    pub manifest: Option<String>,
    /// File of confirmed job ids: an interrupted backfill run again with it publishes only what is missing.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Jobs per second at most (default: as fast as the broker confirms).
    #[arg(long, value_name = "N")]
    pub rate: Option<String>,
    /// Print the jobs as NDJSON on stdout instead of publishing them (no broker needed).
    #[arg(long)]
    pub dry_run: bool,
    /// Publish nothing when any manifest line or file is bad.
    #[arg(long)]
    pub strict: bool,
    /// Data action of the jobs that name none.
    #[arg(long, value_name = "ID")]
    pub data_action_id: Option<String>,
    /// Metadata added to every job (repeatable); keys a manifest job has keep their value.
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Publishes awaiting their confirm at most; also the most a SIGKILL can leave unrecorded.
    #[arg(
        long,
        env = "ENQUEUE_CONFIRM_WINDOW",
        default_value = "1000",
        value_name = "N"
    )]
    pub confirm_window: String,
    /// How long one publish may wait for the broker's confirm.
    #[arg(long, env = "PUBLISH_CONFIRM_TIMEOUT", default_value = "30s")]
    pub confirm_timeout: String,
}

impl EnqueueArgs {
    pub fn request(&self) -> Result<(Request, BrokerSettings), ConfigError> {
        let source = match &self.manifest {
            Some(m) if m == "-" => Source::Manifest(None),
            Some(m) => Source::Manifest(Some(PathBuf::from(m))),
            None => Source::Paths {
                paths: self.paths.clone(),
                recursive: self.recursive,
                globs: self.glob.clone(),
                declare_type: !self.no_declare_type,
            },
        };
        let mut defaults = Defaults::default();
        if let Some(id) = &self.data_action_id {
            if id.trim().is_empty() {
                return Err(ConfigError {
                    var: "--data-action-id",
                    message: "is empty".into(),
                });
            }
            defaults.data_action_id = Some(id.clone());
        }
        for pair in &self.metadata {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| ConfigError {
                    var: "--metadata",
                    message: format!("{pair:?} is not KEY=VALUE"),
                })?;
            defaults
                .metadata
                .insert(k.trim().to_owned(), Value::String(v.to_owned()));
        }
        let request = Request {
            source,
            defaults,
            checkpoint: self.checkpoint.clone(),
            strict: self.strict,
            dry_run: self.dry_run,
            rate: flags::rate(self.rate.as_deref())?,
            window: flags::window(&self.confirm_window)?,
            confirm_timeout: flags::timeout(&self.confirm_timeout)?,
        };
        Ok((request, self.broker.settings()?))
    }
}

/// Runs the backfill and prints its summary; returns the exit status: 0 all published
/// (or already), 1 something refused or the broker failed, 2 the checkpoint is in use
/// by another run, 130 interrupted.
pub async fn run(request: Request, broker: BrokerSettings) -> anyhow::Result<i32> {
    let stop = crate::ops::interrupt(Some(crate::ops::STOPPING));
    let mut stdout = std::io::stdout().lock();
    let tally = match crate::ops::enqueue::run(&request, &broker, &stop, &mut stdout).await {
        Ok(tally) => tally,
        // Like a bad flag: nothing was done, and running again now would not help.
        Err(e @ EnqueueError::Checkpoint(CheckpointError::Locked { .. })) => {
            eprintln!("cxone-worker: {e}");
            return Ok(2);
        }
        Err(e) => return Err(e.into()),
    };
    // "holds no files, only 3 subdirectories: add --recursive" rather than "published 0".
    if tally.only_directories_without_files() {
        return Ok(1);
    }
    let summary = summary(&tally, &request);
    // With --dry-run, stdout holds the jobs; the summary goes beside them.
    if request.dry_run {
        if let Some(line) = declared(&tally) {
            eprintln!("{line}");
        }
        eprintln!("{summary}");
    } else {
        writeln!(stdout, "{summary}")?;
    }
    stdout.flush()?;
    Ok(if tally.interrupted {
        130
    } else if tally.failure.is_some() || tally.refused() > 0 || tally.unsent > 0 {
        1
    } else {
        0
    })
}

/// What a dry run's jobs from paths declare: `enqueue: content_type from file names:
/// application/pdf 5, image/png 1; none 2 (no known extension)`.
fn declared(t: &Tally) -> Option<String> {
    if t.declared.is_empty() {
        return None;
    }
    let types: Vec<String> = t
        .declared
        .iter()
        .filter_map(|(ty, n)| ty.map(|ty| format!("{ty} {n}")))
        .collect();
    let mut line = format!(
        "enqueue: content_type from file names: {}",
        if types.is_empty() {
            "none known".to_owned()
        } else {
            types.join(", ")
        }
    );
    if let Some(n) = t.declared.get(&None) {
        line.push_str(&format!("; none declared for {n} (no known extension)"));
    }
    Some(line)
}

/// `4.48s` under a minute (a benchmark wants the decimals), `3m12s` beyond.
fn took(d: std::time::Duration) -> String {
    if d.as_secs() < 60 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        short_duration(d)
    }
}

fn summary(t: &Tally, request: &Request) -> String {
    let secs = t.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        t.published as f64 / secs
    } else {
        0.0
    };
    let verb = if request.dry_run {
        "dry run: would publish"
    } else {
        "published"
    };
    let detail = |parts: &[(u64, &str)]| {
        let parts: Vec<String> = parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    };
    let directories = if t.no_files == 1 {
        "directory without files"
    } else {
        "directories without files"
    };
    let mut s = format!(
        "enqueue: {verb} {}, skipped {}{}, refused {}{} in {} ({rate:.0} jobs/s)",
        t.published,
        t.skipped + t.duplicates + t.not_followed,
        detail(&[
            (t.skipped, "already in the checkpoint"),
            (t.duplicates, "repeated in the input"),
            (t.not_followed, "links to directories not followed"),
        ]),
        t.refused(),
        detail(&[
            (t.invalid, "invalid"),
            (t.unreadable, "unreadable"),
            (t.no_files, directories),
            (t.rejected, "by the broker"),
        ]),
        took(t.elapsed),
    );
    let resume = match &request.checkpoint {
        Some(cp) => format!(
            "run again with --checkpoint {} to publish only those",
            cp.display()
        ),
        None => "without --checkpoint a re-run publishes every job again (same job ids)".into(),
    };
    if t.interrupted {
        s.push_str(&format!(
            "\nenqueue: interrupted, {} not sent; {resume}",
            t.unsent
        ));
    }
    if let Some(why) = &t.failure {
        s.push_str(&format!(
            "\nenqueue: stopped: {why}; {} not confirmed; {resume}",
            t.unsent
        ));
    }
    s
}
