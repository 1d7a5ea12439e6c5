//! `cxone-worker dlq list | show | replay | purge`: inspect dead-lettered jobs (a table,
//! or one whole), move them back to `P.jobs`, or delete them; see [`crate::ops::dlq`]
//! for how the queue is read.

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;

use crate::broker::topology::Topology;
use crate::config::{BrokerArgs, BrokerSettings, ConfigError};
use crate::ops::dead::{Filter, parse_kind, parse_since};
use crate::ops::dlq::{self, Selection};
use crate::ops::flags;
use crate::ops::letter;
use crate::ops::readers::{self, Reader};
use crate::text::now;

#[derive(Args, Debug, Clone)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum DlqCommand {
    /// Show dead-lettered jobs (a table, or --json); every message stays, in order.
    List(ListArgs),
    /// Print dead letters whole (body, properties, every header) by job id or position; every message stays, in order.
    Show(ShowArgs),
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
#[command(group(ArgGroup::new("which").required(true).args(["id", "position"])))]
pub struct ShowArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Job id as `dlq list` shows it; every dead letter with that id is shown.
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// The dead letter at this place in the queue (the `#` of `dlq list`, 0 = head).
    #[arg(long, value_name = "N", conflicts_with = "id")]
    pub position: Option<u64>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print the body's file reference as stored, password and signed query included
    /// (by default hidden, as in every output).
    #[arg(long)]
    pub raw: bool,
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
    Show {
        raw: bool,
    },
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
            DlqCommand::Show(a) => return a.settings(),
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
            position: None,
        };
        Ok(Dlq {
            broker: select.broker.settings()?,
            filter,
            json: select.json,
            action,
        })
    }
}

impl ShowArgs {
    fn settings(&self) -> Result<Dlq, ConfigError> {
        // Exactly as `dlq list` shows it: every dead letter of that id, however many.
        let filter = Filter {
            job_ids: self.id.iter().cloned().collect(),
            position: self.position,
            ..Filter::default()
        };
        Ok(Dlq {
            broker: self.broker.settings()?,
            filter,
            json: self.json,
            action: Action::Show { raw: self.raw },
        })
    }
}

/// Runs the command; returns the exit status: 0 done, 1 a replay failed in part, a
/// purge was not confirmed or `show` found nothing, 130 a replay was interrupted.
pub async fn run(cmd: Dlq) -> anyhow::Result<i32> {
    let topology = Topology::names_only(&cmd.broker.prefix);
    // A replay stops cleanly on a signal, even one that comes while the DLQ is read;
    // the other actions keep the default (the process ends, the broker puts every
    // held message back).
    let stop = match cmd.action {
        Action::Replay { dry_run: false, .. } => crate::ops::interrupt(Some(crate::ops::STOPPING)),
        _ => tokio_util::sync::CancellationToken::new(),
    };
    let reader = match cmd.action {
        Action::List => Reader::List,
        Action::Show { .. } => Reader::Show,
        Action::Replay { .. } => Reader::Replay,
        Action::Purge { .. } => Reader::Purge,
    };
    let connection = crate::ops::connect(&cmd.broker, "dlq").await?;
    let selection = dlq::select(&connection, &topology, &cmd.filter, reader).await?;
    let status = match cmd.action {
        Action::Show { raw } => show_whole(selection, &cmd, raw).await?,
        Action::List => {
            show(&selection, cmd.json, "match", true)?;
            selection.release().await?;
            0
        }
        Action::Replay { dry_run: true, .. } => {
            show(&selection, cmd.json, "would be replayed", true)?;
            selection.release().await?;
            0
        }
        Action::Replay {
            rate,
            window,
            confirm_timeout,
            ..
        } => {
            // Many are counted by kind rather than listed.
            show(&selection, cmd.json, "to replay", false)?;
            let how = Pacing {
                rate,
                window,
                confirm_timeout,
            };
            replay(selection, &connection, &topology, how, cmd.json, &stop).await?
        }
        Action::Purge { yes } => {
            show(&selection, cmd.json, "to purge", false)?;
            purge(selection, &topology, yes, cmd.json).await?
        }
    };
    crate::broker::close(&connection, "done").await;
    Ok(status)
}

/// How a replay publishes.
struct Pacing {
    rate: Option<f64>,
    window: usize,
    confirm_timeout: Duration,
}

async fn replay(
    selection: Selection,
    connection: &lapin::Connection,
    topology: &Topology,
    how: Pacing,
    json: bool,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<i32> {
    if selection.is_empty() {
        selection.release().await?;
        return Ok(0);
    }
    let wanted = selection.len();
    let r = selection
        .replay(
            connection,
            topology,
            how.rate,
            how.window,
            how.confirm_timeout,
            stop,
        )
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
        json,
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
    Ok(if r.interrupted {
        130
    } else {
        i32::from(!r.failed.is_empty() || r.broker_error.is_some())
    })
}

async fn purge(
    selection: Selection,
    topology: &Topology,
    yes: bool,
    json: bool,
) -> anyhow::Result<i32> {
    if selection.is_empty() {
        selection.release().await?;
        return Ok(0);
    }
    let n = selection.len();
    let question = format!(
        "Delete these {n} message(s) from {} for good? [y/N] ",
        topology.dlq()
    );
    if yes || confirmed(&question).await? {
        let deleted = selection.delete().await?;
        let line = format!("purged {deleted} message(s) from {}", topology.dlq());
        result(json, json!({"purged": deleted}), line);
        Ok(0)
    } else {
        selection.release().await?;
        result(json, json!({"purged": 0}), "nothing purged".into());
        Ok(1)
    }
}

/// `dlq show`: every selected dead letter whole, then the DLQ as it was.
async fn show_whole(selection: Selection, cmd: &Dlq, raw: bool) -> anyhow::Result<i32> {
    let now = now();
    let wanted = match (cmd.filter.job_ids.first(), cmd.filter.position) {
        (Some(id), _) => format!("with job id {id:?}"),
        (None, Some(p)) => format!("at position {p}"),
        (None, None) => String::new(),
    };
    let n = selection.len();
    let mut out = std::io::stdout().lock();
    if cmd.json {
        let messages: Vec<_> = selection
            .messages()
            .map(|(d, props, body)| letter::to_json(d, props, body, now, raw))
            .collect();
        let doc = json!({
            "queue": selection.queue,
            "total": selection.total,
            "scanned": selection.scanned,
            "count": n,
            "held_by_other_readers": selection.held_elsewhere.iter().map(|r| r.command()).collect::<Vec<_>>(),
            "messages": messages,
        });
        writeln!(out, "{doc}")?;
    } else {
        for (i, (d, props, body)) in selection.messages().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(
                out,
                "== dead letter {} of {n} {wanted} in {} ==",
                i + 1,
                selection.queue
            )?;
            write!(out, "{}", letter::to_text(d, props, body, now, raw))?;
        }
    }
    out.flush()?;
    drop(out);
    let held = held_note(&selection);
    let read = selection.scanned;
    let queue = selection.queue.clone();
    selection.release().await?;
    if n == 0 {
        eprintln!("cxone-worker: no dead letter {wanted} in {queue} ({read} read){held}");
        return Ok(1);
    }
    Ok(0)
}

/// `; messages held by another reader (dlq replay) were not seen` when another
/// reader held messages while this one read (how many, AMQP does not say).
fn held_note(selection: &Selection) -> String {
    if selection.held_elsewhere.is_empty() {
        return String::new();
    }
    format!(
        "; messages held by another reader ({}) were not seen",
        readers::describe(&selection.held_elsewhere)
    )
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
            "{} of {} dead-lettered message(s) in {} {verb}{note}{}",
            selection.len(),
            selection.total,
            selection.queue,
            held_note(selection)
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
