//! Reading the DLQ without losing or reordering it, and what is done with what was
//! read: list or show it, replay it (back to the jobs queue), purge it.
//!
//! AMQP 0-9-1 has no way to look at a queue without taking its messages, so the
//! reader takes them: a passive declare counts the messages at the start (N), a
//! consumer with manual acknowledgements and a prefetch of N receives them in queue
//! order, and the reader stops after N deliveries (a writer adding messages meanwhile
//! cannot keep it going) or when none arrives for a while (another consumer holds the
//! rest). Every message stays unacknowledged while it is held. At the end the consumer
//! is cancelled and the channel closed: RabbitMQ puts every message that was not
//! acknowledged back at the head of the queue, in its original order. A message read
//! and put back comes out `redelivered` and its `x-delivery-count` header goes up by
//! one; nothing else about it changes. If the process dies, the broker does the same
//! when the connection drops. Only replay (after the copy is confirmed in the jobs
//! queue) and purge (after confirmation) acknowledge, that is remove, a message.
//! While it holds messages the reader holds its marker too (see [`super::readers`]),
//! so that `status` and other readers can tell that the DLQ is not empty, only held.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::dead::{DeadLetter, Filter, replay_copy};
use super::progress::Progress;
use super::readers::{self, Marker, Reader};
use super::window::Window;
use super::{OpsError, Pace};
use crate::broker::publisher::{PublishError, Publisher};
use crate::broker::topology::Topology;

/// How long the reader waits for the next delivery before deciding that the
/// messages it has not seen are held by another consumer.
const IDLE: Duration = Duration::from_secs(2);

/// The selected dead letters, held unacknowledged until the selection is settled.
pub struct Selection {
    channel: Channel,
    consumer: Option<lapin::Consumer>,
    /// The DLQ's name.
    pub queue: String,
    /// Messages in the DLQ when reading started.
    pub total: u64,
    /// Messages read (and held).
    pub scanned: u64,
    /// Other readers that held some of the DLQ's messages when reading started:
    /// those messages were not seen.
    pub held_elsewhere: Vec<Reader>,
    picked: Vec<(DeadLetter, Delivery)>,
    marker: Option<Marker>,
}

/// Reads the DLQ as `reader` and holds the messages that `filter` selects, up to
/// its limit.
pub async fn select(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    reader: Reader,
) -> Result<Selection, OpsError> {
    let queue = topology.dlq();
    let depth = super::require_queue(connection, &queue).await?;
    let total = u64::from(depth.message_count());
    // Only a consumer holds messages unacknowledged: no consumer, no other reader.
    let held_elsewhere = if depth.consumer_count() > 0 {
        readers::holding(connection, topology).await?
    } else {
        Vec::new()
    };
    let channel = connection.create_channel().await?;
    let mut selection = Selection {
        channel,
        consumer: None,
        queue,
        total,
        scanned: 0,
        held_elsewhere,
        picked: Vec::new(),
        marker: None,
    };
    if total == 0 || filter.limit == Some(0) {
        return Ok(selection);
    }
    // Taken before the first message is, so that no moment of holding goes unmarked.
    selection.marker = Some(readers::hold(connection, topology, reader).await);
    // Prefetch = the count at the start (0, unlimited, past what AMQP can express):
    // the broker never sends more than the reader will look at.
    let prefetch = u16::try_from(total).unwrap_or(0);
    selection
        .channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let mut consumer = selection
        .channel
        .basic_consume(
            selection.queue.as_str().into(),
            "cxone-worker dlq".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while selection.scanned < total {
        let delivery = match tokio::time::timeout(IDLE, consumer.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(delivery)) => delivery?,
        };
        let letter = DeadLetter::read(selection.scanned, &delivery.properties, &delivery.data);
        selection.scanned += 1;
        if filter.matches(&letter) {
            selection.picked.push((letter, delivery));
        }
        if filter.done(selection.scanned, selection.picked.len()) {
            break;
        }
    }
    selection.consumer = Some(consumer);
    Ok(selection)
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Confirmed in the jobs queue and removed from the DLQ.
    pub moved: u64,
    /// Refused by the broker or not confirmed: left in the DLQ.
    pub failed: Vec<(String, String)>,
    /// Not attempted because of a signal or a broker failure: left in the DLQ.
    pub skipped: u64,
    pub interrupted: bool,
    /// Why the replay stopped early, when the broker failed it (the tally above
    /// still holds: every message counted as moved is in the jobs queue only).
    pub broker_error: Option<String>,
}

impl Selection {
    pub fn letters(&self) -> impl Iterator<Item = &DeadLetter> {
        self.picked.iter().map(|(letter, _)| letter)
    }

    /// Each selected message whole: what it says, its properties and its body.
    pub fn messages(&self) -> impl Iterator<Item = (&DeadLetter, &BasicProperties, &[u8])> {
        self.picked
            .iter()
            .map(|(letter, d)| (letter, &d.properties, d.data.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.picked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.picked.is_empty()
    }

    /// Puts every held message back, in order (see the module documentation).
    pub async fn release(mut self) -> Result<(), OpsError> {
        let consumer = self.consumer.take();
        let marker = self.marker.take();
        let channel = self.channel.clone();
        let settle = async move {
            if let Some(consumer) = consumer {
                channel
                    .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                    .await?;
            }
            channel.close(200, "done".into()).await?;
            // The messages are back: the marker may go.
            if let Some(marker) = marker {
                marker.release().await;
            }
            Ok::<_, lapin::Error>(())
        };
        let outcome = tokio::time::timeout(crate::broker::CLOSE_DEADLINE, settle).await;
        self.picked.clear();
        match outcome {
            Ok(done) => Ok(done?),
            Err(_) => {
                // Nothing is lost: what the channel holds goes back when the
                // connection closes, at the latest when the process exits.
                eprintln!(
                    "cxone-worker: the broker did not confirm the end of the read within {:?}; \
                     the messages not removed go back when the connection closes",
                    crate::broker::CLOSE_DEADLINE
                );
                Ok(())
            }
        }
    }

    /// Removes the selected messages from the DLQ; the others go back.
    pub async fn delete(mut self) -> Result<u64, OpsError> {
        let mut deleted = 0;
        for (_, delivery) in self.picked.drain(..) {
            if !delivery.acker.ack(BasicAckOptions::default()).await? {
                // The channel closed first: the rest is back in the DLQ, untouched.
                return Err(OpsError::Closed(format!(
                    "the DLQ channel closed after {deleted} deletion(s); the rest stay in the DLQ"
                )));
            }
            deleted += 1;
        }
        self.release().await?;
        Ok(deleted)
    }

    /// Publishes a copy of each selected message to the jobs queue (paced, confirms
    /// pipelined in a window) and removes the original from the DLQ once its copy is
    /// confirmed. A signal stops the sends; outstanding confirms are still awaited.
    /// Killed at any moment, every message is in the DLQ, in the jobs queue, or (at
    /// most `window` of them) in both with the same body and properties, hence the
    /// same idempotency key: the API executes it once.
    pub async fn replay(
        self,
        connection: &Connection,
        topology: &Topology,
        rate: Option<f64>,
        window: usize,
        confirm_timeout: Duration,
        stop: &CancellationToken,
    ) -> Result<Replayed, OpsError> {
        super::require_queue(connection, &topology.jobs()).await?;
        let publisher = Publisher::open(connection, confirm_timeout).await?;
        let mut inflight: Window<usize> = Window::new(publisher, window);
        let mut pace = Pace::new(rate);
        let mut progress = Progress::new("replay", self.picked.len() as u64);
        let mut settled = Vec::new();
        let mut report = Replayed::default();
        for (i, (_, delivery)) in self.picked.iter().enumerate() {
            if !pace.wait(stop).await {
                report.interrupted = true;
                report.skipped = (self.picked.len() - i) as u64;
                break;
            }
            inflight.room(&mut settled).await;
            let acked = self.settle(&mut settled, &mut report, &mut progress).await;
            // The DLQ channel can close under us (the broker's consumer_timeout on a
            // slow `--rate`): its messages are back in the DLQ, and a copy sent now
            // could never be acked there. Stop before sending more.
            let stopped = match acked {
                Err(e) => Some(e),
                Ok(()) if !self.channel.status().connected() => {
                    Some("the DLQ channel closed (the broker's consumer_timeout?)".into())
                }
                Ok(()) => None,
            };
            if let Some(why) = stopped {
                report.skipped = (self.picked.len() - i) as u64;
                report.broker_error = Some(why);
                break;
            }
            let copy = replay_copy(topology, &delivery.properties, &delivery.data);
            if let Err(e) = inflight.send(copy, i).await {
                report.skipped = (self.picked.len() - i) as u64;
                report.broker_error = Some(e.to_string());
                break;
            }
            inflight.ready(&mut settled);
        }
        inflight.drain(&mut settled).await;
        if let Err(e) = self.settle(&mut settled, &mut report, &mut progress).await {
            report.broker_error.get_or_insert(e);
        }
        progress.finish();
        if let Err(e) = self.release().await {
            report.broker_error.get_or_insert(e.to_string());
        }
        Ok(report)
    }

    /// Acknowledges (removes from the DLQ) each message whose copy was confirmed.
    async fn settle(
        &self,
        settled: &mut Vec<(usize, Result<(), PublishError>)>,
        report: &mut Replayed,
        progress: &mut Progress,
    ) -> Result<(), String> {
        let n = settled.len() as u64;
        let mut broken: Option<String> = None;
        for (i, outcome) in settled.drain(..) {
            let (letter, delivery) = &self.picked[i];
            if let Err(e) = outcome {
                report.failed.push((letter.job_id.clone(), e.to_string()));
                continue;
            }
            // Once an ack failed, the channel is gone: the others are not tried.
            let acked = match &broken {
                Some(_) => Ok(false),
                None => delivery.acker.ack(BasicAckOptions::default()).await,
            };
            let why = match acked {
                Ok(true) => {
                    report.moved += 1;
                    continue;
                }
                // lapin's `Ok(false)`: the channel closed first. The original is
                // back in the DLQ beside its confirmed copy (same key).
                Ok(false) => "the DLQ channel closed before an ack".to_owned(),
                Err(e) => format!("acknowledging in the DLQ failed: {e}"),
            };
            broken.get_or_insert(why);
            report.failed.push((
                letter.job_id.clone(),
                "copied to the jobs queue, but still in the DLQ".into(),
            ));
        }
        progress.inc(n);
        broken.map_or(Ok(()), Err)
    }
}

/// The selection as JSON: the queue, the counts and one object per message.
pub fn to_json(selection: &Selection, now: OffsetDateTime) -> serde_json::Value {
    serde_json::json!({
        "queue": selection.queue,
        "total": selection.total,
        "scanned": selection.scanned,
        "selected": selection.len(),
        "held_by_other_readers": selection.held_elsewhere.iter().map(|r| r.command()).collect::<Vec<_>>(),
        "messages": selection.letters().map(|d| d.to_json(now)).collect::<Vec<_>>(),
    })
}

/// `exhausted 1840, delivery_limit 160`: the selection counted by error kind, most first.
pub fn count_by_kind(selection: &Selection) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for d in selection.letters() {
        match counts.iter_mut().find(|(k, _)| *k == d.kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((&d.kind, 1)),
        }
    }
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The selection as an aligned table. Files and errors are cut to keep lines
/// readable (`--json` and `dlq show` have them whole), and every cell is flattened:
/// a producer's text never reaches the terminal as control characters.
pub fn to_table(selection: &Selection, now: OffsetDateTime) -> String {
    use super::table::{Align, Table, clip, clip_middle, short_duration};
    let mut table = Table::new(&[
        ("#", Align::Right),
        ("JOB ID", Align::Left),
        ("KIND", Align::Left),
        ("ATTEMPTS", Align::Right),
        ("FAILED AT", Align::Left),
        ("AGE", Align::Right),
        ("REPLAYS", Align::Right),
        ("FILE", Align::Left),
        ("ERROR", Align::Left),
    ]);
    for d in selection.letters() {
        table.row(vec![
            d.position.to_string(),
            // Whole: `dlq show ID` takes it as shown here.
            clip(&d.job_id, usize::MAX),
            clip(&d.kind, 24),
            d.attempts.map_or_else(|| "-".into(), |n| n.to_string()),
            // Whole seconds are enough to read; the JSON keeps the header's precision.
            d.failed_at
                .and_then(|t| t.replace_nanosecond(0).ok())
                .map_or_else(|| "-".into(), crate::text::rfc3339),
            d.age(now).map_or_else(|| "-".into(), short_duration),
            d.replays.to_string(),
            d.file
                .as_deref()
                .map_or_else(|| "-".into(), |f| clip_middle(f, FILE_WIDTH)),
            clip(&d.error, ERROR_WIDTH),
        ]);
    }
    table.render()
}

/// Widest FILE cell: the scheme and root, then the tail that names the file.
const FILE_WIDTH: usize = 48;
/// Widest ERROR cell.
const ERROR_WIDTH: usize = 60;
