//! `cxone-worker dlq list | replay | purge`: inspect dead-lettered jobs, move them back
//! to `P.jobs`, or delete them; see [`crate::ops::dlq`] for how the queue is read.

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::broker::topology::Topology;
use crate::config::{BrokerArgs, BrokerSettings, ConfigError};
use crate::ops::dead::{Filter, parse_kind, parse_since};
use crate::ops::dlq::{self, Selection};
use crate::ops::flags;
use crate::outcome::now;

#[derive(Args, Debug, Clone)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum DlqCommand {
    /// Show dead-lettered jobs (a table, or --json); every message stays, in order.
    List(ListArgs),
    /// Move selected jobs back to P.jobs: republished with confirms, then removed from the DLQ.
    Replay(ReplayArgs),
    /// Delete selected jobs from the DLQ for good (asks first unless --yes).
    Purge(PurgeArgs),
}

/// Which dead letters a command acts on; filters combine (all must match).
#[derive(Args, Debug, Clone)]
pub struct SelectArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Error kind (repeatable or comma list): a contract kind, or delivery_limit, expired, maxlen, unknown.
    #[arg(long, value_delimiter = ',')]
    pub kind: Vec<String>,
    /// Job id (repeatable or comma list): the job_id, else the message id, else sha256:… of the body.
    #[arg(long, value_delimiter = ',')]
    pub job_id: Vec<String>,
    /// Failed at or after: an RFC 3339 time, or a duration ago (90m, 2h, 7d).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Act on the first N matching messages only.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print JSON instead of a table (replay and purge add a second line: what they did).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Show what would be replayed and move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Messages per second at most.
    #[arg(long, value_name = "N")]
    pub rate: Option<String>,
    /// Copies awaiting their confirm at most; also the most that a SIGKILL can leave in both queues.
    #[arg(long, default_value = "100", value_name = "N")]
    pub confirm_window: String,
    /// How long one publish may wait for the broker's confirm.
    #[arg(long, env = "PUBLISH_CONFIRM_TIMEOUT", default_value = "30s")]
    pub confirm_timeout: String,
}

#[derive(Args, Debug, Clone)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Delete without asking.
    #[arg(long, short)]
    pub yes: bool,
}

/// A checked `dlq` command line.
pub struct Dlq {
    pub broker: BrokerSettings,
    pub filter: Filter,
    pub json: bool,
    pub action: Action,
}

pub enum Action {
    List,
    Replay {
        dry_run: bool,
        rate: Option<f64>,
        window: usize,
        confirm_timeout: Duration,
    },
    Purge {
        yes: bool,
    },
}

impl DlqArgs {
    pub fn settings(&self) -> Result<Dlq, ConfigError> {
        let (select, action) = match &self.command {
            DlqCommand::List(a) => (&a.select, Action::List),
            DlqCommand::Replay(a) => (
                &a.select,
                Action::Replay {
                    dry_run: a.dry_run,
                    rate: flags::rate(a.rate.as_deref())?,
                    window: flags::window(&a.confirm_window)?,
                    confirm_timeout: flags::timeout(&a.confirm_timeout)?,
                },
            ),
            DlqCommand::Purge(a) => (&a.select, Action::Purge { yes: a.yes }),
        };
        let bad = |var, message| ConfigError { var, message };
        let filter = Filter {
            kinds: select
                .kind
                .iter()
                .map(|k| parse_kind(k).map_err(|m| bad("--kind", m)))
                .collect::<Result<_, _>>()?,
            job_ids: select.job_id.iter().map(|j| j.trim().to_owned()).collect(),
            since: select
                .since
                .as_deref()
                .map(|s| parse_since(s, now()).map_err(|m| bad("--since", m)))
                .transpose()?,
            limit: select.limit,
        };
        Ok(Dlq {
            broker: select.broker.settings()?,
            filter,
            json: select.json,
            action,
        })
    }
}

/// Runs the command; returns the exit status: 0 done, 1 a replay failed in part or a
/// purge was not confirmed, 130 a replay was interrupted.
pub async fn run(cmd: Dlq) -> anyhow::Result<i32> {
    let topology = Topology::names_only(&cmd.broker.prefix);
    // A replay stops cleanly on a signal, even one that comes while the DLQ is read;
    // the other actions keep the default (the process ends, the broker puts every
    // held message back).
    let stop = match cmd.action {
        Action::Replay { dry_run: false, .. } => crate::ops::interrupt(Some(crate::ops::STOPPING)),
        _ => tokio_util::sync::CancellationToken::new(),
    };
    let connection = crate::ops::connect(&cmd.broker, "dlq").await?;
    let selection = dlq::select(&connection, &topology, &cmd.filter).await?;
    // Listings show every message; a replay or a purge of many counts them by kind.
    let (verb, full) = match cmd.action {
        Action::List => ("match", true),
        Action::Replay { dry_run: true, .. } => ("would be replayed", true),
        Action::Replay { .. } => ("to replay", false),
        Action::Purge { .. } => ("to purge", false),
    };
    show(&selection, cmd.json, verb, full)?;
    let status = match cmd.action {
        Action::List | Action::Replay { dry_run: true, .. } => {
            selection.release().await?;
            0
        }
        _ if selection.is_empty() => {
            selection.release().await?;
            0
        }
        Action::Replay {
            rate,
            window,
            confirm_timeout,
            ..
        } => {
            let wanted = selection.len();
            let r = selection
                .replay(&connection, &topology, rate, window, confirm_timeout, &stop)
                .await?;
            for (job, why) in &r.failed {
                eprintln!("cxone-worker: not replayed {job}: {why}");
            }
            if let Some(why) = &r.broker_error {
                eprintln!("cxone-worker: replay stopped early: {why}");
            }
            let failed: Vec<_> = r
                .failed
                .iter()
                .map(|(job, why)| json!({"job_id": job, "error": why}))
                .collect();
            result(
                cmd.json,
                json!({"replayed": r.moved, "failed": failed, "not_attempted": r.skipped, "interrupted": r.interrupted, "broker_error": r.broker_error}),
                format!(
                    "replayed {} of {wanted} to {}; {} failed, {} not attempted (left in {})",
                    r.moved,
                    topology.jobs(),
                    r.failed.len(),
                    r.skipped,
                    topology.dlq()
                ),
            );
            if r.interrupted {
                130
            } else {
                i32::from(!r.failed.is_empty() || r.broker_error.is_some())
            }
        }
        Action::Purge { yes } => {
            let n = selection.len();
            if yes
                || confirmed(&format!(
                    "Delete these {n} message(s) from {} for good? [y/N] ",
                    topology.dlq()
                ))
                .await?
            {
                let deleted = selection.delete().await?;
                let line = format!("purged {deleted} message(s) from {}", topology.dlq());
                result(cmd.json, json!({"purged": deleted}), line);
                0
            } else {
                selection.release().await?;
                result(cmd.json, json!({"purged": 0}), "nothing purged".into());
                1
            }
        }
    };
    crate::broker::close(&connection, "done").await;
    Ok(status)
}

/// What a replay or purge did: one line, or (with --json) one more JSON document.
fn result(json: bool, value: serde_json::Value, line: String) {
    if json {
        println!("{value}");
    } else {
        println!("{line}");
    }
}

/// How many messages a replay or purge lists one by one before it only counts them.
const SHOW_AT_MOST: usize = 20;

fn show(selection: &Selection, json: bool, verb: &str, full: bool) -> anyhow::Result<()> {
    let now = now();
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", dlq::to_json(selection, now))?;
    } else {
        if full || selection.len() <= SHOW_AT_MOST {
            write!(out, "{}", dlq::to_table(selection, now))?;
        } else {
            writeln!(out, "{}", dlq::count_by_kind(selection))?;
        }
        let unread = selection.total.saturating_sub(selection.scanned);
        let note = if unread > 0 {
            format!(" ({unread} not read)")
        } else {
            String::new()
        };
        writeln!(
            out,
            "{} of {} dead-lettered message(s) in {} {verb}{note}",
            selection.len(),
            selection.total,
            selection.queue
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Asks on stderr and reads the answer from stdin (a terminal or a pipe); only `y` or
/// `yes` agrees, and no answer at all (end of input) declines.
async fn confirmed(question: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await
    .context("reading the answer")??;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
