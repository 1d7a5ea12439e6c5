//! Operator tooling behind `enqueue`, `dlq` and `status`: backfills published with
//! confirms, dead letters read and moved without loss, queue depths, all over AMQP.
//!
//! | module | responsibility |
//! |---|---|
//! | [`plan`] | files, directories or an NDJSON manifest -> validated jobs with stable ids |
//! | [`mime`] | the `content_type` a file's name declares |
//! | [`glob`] | the `--glob` pattern match on file names |
//! | [`checkpoint`] | the ids a backfill had confirmed, appended as the confirms arrive |
//! | [`enqueue`] | publish a plan: paced, a window of confirms, stops cleanly on a signal |
//! | [`window`] | publishes in flight: a bounded window of confirms awaited in order |
//! | [`dead`] | one dead-lettered message: what it says, the filters, its replay copy |
//! | [`dlq`] | read the DLQ without losing or reordering it; list, show, replay, purge |
//! | [`readers`] | the marker a DLQ reader holds, and who holds the DLQ's messages now |
//! | [`letter`] | one dead letter printed whole (`dlq show`): body, properties, headers |
//! | [`status`] | depth and consumers of every queue of the topology |
//! | [`progress`] | a progress bar on a terminal, plain periodic lines elsewhere |
//! | [`table`] | aligned text tables and short durations |

pub mod checkpoint;
pub mod dead;
pub mod dlq;
pub mod enqueue;
pub mod glob;
pub mod letter;
pub mod mime;
pub mod plan;
pub mod progress;
pub mod readers;
pub mod status;
pub mod table;
pub mod window;

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::publisher::PublishError;
use crate::config::BrokerSettings;

/// Why an operator command could not do its work; each one stops the command.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot connect to the broker at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    /// Never created on the fly: a mistyped prefix would otherwise build a topology
    /// that no worker consumes, and a backfill would vanish into it.
    #[error(
        "{what} {name:?} does not exist: check CXONE_QUEUE_PREFIX (the worker declares its topology \
         when it starts; `cxone-worker definitions` exports it for rabbitmqctl import_definitions)"
    )]
    Missing { what: &'static str, name: String },
    #[error("the broker failed: {0}")]
    Broker(#[from] lapin::Error),
    #[error("publishing failed: {0}")]
    Publish(#[from] PublishError),
    #[error("{0}")]
    Closed(String),
}

/// What a publishing command says on the first signal.
pub const STOPPING: &str =
    "stopping: waiting for the outstanding confirms (signal again to quit at once)";

const CONNECT_DEADLINE: Duration = Duration::from_secs(30);
/// Opens a connection named after the command and the prefix, as operators see it in
/// the management UI (`cxone-worker dlq (cxone)`), like the worker's own.
pub async fn connect(broker: &BrokerSettings, command: &str) -> Result<Connection, OpsError> {
    let name = format!("cxone-worker {command} ({})", broker.prefix);
    // A command in a terminal or a cron job must not wait for ever on a broker that
    // accepts the connection and never answers.
    match tokio::time::timeout(CONNECT_DEADLINE, crate::broker::connect(&broker.url, &name)).await {
        Ok(connected) => connected.map_err(|source| OpsError::Connect {
            url: broker.url.redacted().to_owned(),
            source,
        }),
        Err(_) => Err(OpsError::Closed(format!(
            "the broker at {} did not complete the connection within {CONNECT_DEADLINE:?}",
            broker.url.redacted()
        ))),
    }
}

/// The depth of a queue from a passive `queue.declare`: ready messages and consumers,
/// or `None` when the queue does not exist. A failed passive declare closes its
/// channel, so each check has a channel of its own.
pub async fn peek_queue(
    connection: &Connection,
    name: &str,
) -> Result<Option<lapin::Queue>, OpsError> {
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
    {
        Ok(queue) => {
            let _ = channel.close(200, "done".into()).await;
            Ok(Some(queue))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Fails unless the queue exists; returns its passive-declare answer.
pub async fn require_queue(connection: &Connection, name: &str) -> Result<lapin::Queue, OpsError> {
    peek_queue(connection, name)
        .await?
        .ok_or_else(|| OpsError::Missing {
            what: "queue",
            name: name.to_owned(),
        })
}

/// Fails unless the exchange exists.
pub async fn require_exchange(connection: &Connection, name: &str) -> Result<(), OpsError> {
    let channel = connection.create_channel().await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    match channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => {
            let _ = channel.close(200, "done".into()).await;
            Ok(())
        }
        Err(e) if is_not_found(&e) => Err(OpsError::Missing {
            what: "exchange",
            name: name.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    amqp_code(e) == Some(404)
}

/// The AMQP reply code of a channel or connection error (404 not found, 405 locked…).
fn amqp_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// Spaces sends evenly at `rate` per second, on a fixed schedule (slot n at start +
/// n/rate) so that timer granularity does not slow fast rates down. A send that falls
/// behind its slot goes at once; one more than [`MAX_LAG`] behind restarts the
/// schedule, so a stall is never followed by a burst.
#[derive(Debug)]
pub struct Pace {
    interval: Option<Duration>,
    next: Option<Instant>,
}

/// How far behind schedule sends may catch up.
const MAX_LAG: Duration = Duration::from_millis(50);

impl Pace {
    /// `None` = as fast as the broker confirms.
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            interval: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            next: None,
        }
    }

    /// Waits for the next slot; returns false at once if `stop` is cancelled first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let Some(interval) = self.interval else {
            return !stop.is_cancelled();
        };
        let now = Instant::now();
        let at = match self.next {
            Some(next) if next + MAX_LAG >= now => next,
            _ => now,
        };
        self.next = Some(at + interval);
        if at <= now {
            return !stop.is_cancelled();
        }
        tokio::select! {
            () = tokio::time::sleep_until(at) => !stop.is_cancelled(),
            () = stop.cancelled() => false,
        }
    }
}

/// SIGINT or SIGTERM asks the command to stop cleanly (the token is cancelled; a
/// publishing command sends no more and awaits its outstanding confirms), printing
/// `notice` if given; a second one ends the process at once with status 130, which
/// loses nothing either (see each command).
pub fn interrupt(notice: Option<&'static str>) -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if n > 0 {
                std::process::exit(130);
            }
            if let Some(notice) = notice {
                eprintln!("cxone-worker: {notice}");
            }
            trigger.cancel();
        }
    });
    token
}

/// Flag values shared by the commands that publish, checked like every setting:
/// a bad one names its flag and stops the program (exit 2).
pub mod flags {
    use std::time::Duration;

    use crate::config::ConfigError;
    use crate::text::parse_duration;

    fn bad(var: &'static str, message: String) -> ConfigError {
        ConfigError { var, message }
    }

    /// `--rate`: messages per second, more than zero; absent = unpaced.
    pub fn rate(raw: Option<&str>) -> Result<Option<f64>, ConfigError> {
        let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        match raw.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 && r <= 1e6 => Ok(Some(r)),
            _ => Err(bad(
                "--rate",
                format!("{raw:?} is not a number of messages per second (0 < N <= 1000000)"),
            )),
        }
    }

    /// `--confirm-window`: publishes awaiting their confirm at most.
    pub fn window(raw: &str) -> Result<usize, ConfigError> {
        match raw.trim().parse::<usize>() {
            Ok(n) if (1..=100_000).contains(&n) => Ok(n),
            _ => Err(bad(
                "--confirm-window",
                format!("{raw:?} is not a whole number from 1 to 100000"),
            )),
        }
    }

    /// `--confirm-timeout`: how long one publish may wait for its confirm.
    pub fn timeout(raw: &str) -> Result<Duration, ConfigError> {
        parse_duration(raw).filter(|d| !d.is_zero()).ok_or_else(|| {
            bad(
                "--confirm-timeout",
                format!("{raw:?} is not a duration like 30s"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pace_keeps_fast_rates_and_never_bursts() {
        let stop = CancellationToken::new();
        // 2000/s is finer than the timer's millisecond: the schedule still holds.
        let mut pace = Pace::new(Some(2000.0));
        let start = Instant::now();
        for _ in 0..401 {
            assert!(pace.wait(&stop).await);
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(199) && took < Duration::from_millis(400),
            "{took:?}"
        );
        // A stall restarts the schedule: the sends after it are spaced again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        for _ in 0..41 {
            pace.wait(&stop).await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(19),
            "{:?}",
            start.elapsed()
        );
        stop.cancel();
        assert!(!pace.wait(&stop).await);
        assert!(!Pace::new(None).wait(&stop).await);
    }
}
