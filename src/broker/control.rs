//! Asking the running workers how they are, over AMQP alone: `status` publishes a
//! ping to the `P.control` fanout exchange with a direct reply-to address; each
//! worker answers with the deliveries it holds (unacknowledged), its prefetch and
//! whether it is paused. AMQP itself reports only ready messages and consumers.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use serde::{Deserialize, Serialize};

use super::topology::{Topology, short};

/// RabbitMQ's direct reply-to pseudo-queue: replies come straight to the asking channel.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// One worker's answer to a ping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerReport {
    /// `host:pid`.
    pub worker: String,
    pub version: String,
    /// Deliveries taken from the jobs queue and not yet settled.
    pub unacked: u64,
    pub prefetch: u16,
    pub consuming: bool,
    /// Why the worker is paused, if it is.
    pub paused: Option<String>,
}

/// The worker side: its own queue on `P.control`, consumed without acks.
pub async fn listen(
    connection: &Connection,
    topology: &Topology,
) -> lapin::Result<lapin::Consumer> {
    let channel = connection.create_channel().await?;
    topology
        .consume_control_queue(&channel, FieldTable::default())
        .await
}

/// What this worker says of itself to a ping: answered whether it consumes or is
/// paused, so that `status` shows paused workers with their reason.
pub(super) fn report(
    c: &super::consumer::Consumer,
    unacked: usize,
    consuming: bool,
    paused: Option<crate::admin::Paused>,
) -> WorkerReport {
    WorkerReport {
        worker: c.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        unacked: unacked as u64,
        prefetch: c.prefetch,
        consuming,
        paused: paused.map(|p| p.as_str().to_owned()),
    }
}

/// Answers a ping on `channel` (any open channel of the worker's connection).
pub async fn answer(channel: &Channel, ping: &lapin::message::Delivery, report: &WorkerReport) {
    let Some(reply_to) = ping.properties.reply_to().clone() else {
        return;
    };
    let mut properties = BasicProperties::default().with_content_type("application/json".into());
    if let Some(id) = ping.properties.correlation_id() {
        properties = properties.with_correlation_id(id.clone());
    }
    // A report always serializes; a lost answer only makes `status` say "n/a".
    let body = serde_json::to_vec(report).unwrap_or_default();
    let sent = channel
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "answering a status ping failed");
    }
}

/// This process's name in reports: `host:pid`.
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{host}:{}", std::process::id())
}

/// How long [`ping`] gathers answers. How many workers will answer cannot be known
/// beforehand (a paused worker has no consumer on the jobs queue, and the broker does
/// not count the queues bound to `P.control`), so it waits until no answer came for
/// `quiet` after the last one, and never past `bound` after the ping.
#[derive(Debug, Clone, Copy)]
pub struct Gather {
    pub quiet: Duration,
    pub bound: Duration,
}

/// The asking side: pings every running worker, consuming or paused, and gathers
/// the answers (see [`Gather`]). The ping is mandatory: when no worker listens the
/// broker returns it and this answers at once, with no wait. No answers (and no
/// error) when no worker ever declared `P.control`.
pub async fn ping(
    connection: &Connection,
    topology: &Topology,
    gather: Gather,
) -> lapin::Result<Vec<WorkerReport>> {
    let channel = connection.create_channel().await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let exists = channel
        .exchange_declare(
            topology.control().into(),
            lapin::ExchangeKind::Fanout,
            passive,
            FieldTable::default(),
        )
        .await;
    if exists.is_err() {
        return Ok(Vec::new());
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut replies = channel
        .basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let id = uuid::Uuid::new_v4().to_string();
    let started = tokio::time::Instant::now();
    let confirm = channel
        .basic_publish(
            topology.control().into(),
            "".into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"status",
            BasicProperties::default()
                .with_reply_to(REPLY_TO.into())
                .with_correlation_id(short(&id)),
        )
        .await?
        .await?;
    let mut reports = Vec::new();
    // Returned: no queue is bound to `P.control`, so no worker runs.
    if confirm.take_message().is_none() {
        let bound = started + gather.bound;
        let mut last_answer: Option<tokio::time::Instant> = None;
        loop {
            let until = last_answer.map_or(bound, |at| (at + gather.quiet).min(bound));
            let next = tokio::time::timeout_at(until, replies.next()).await;
            let Ok(Some(Ok(reply))) = next else { break };
            let ours = reply
                .properties
                .correlation_id()
                .as_ref()
                .is_some_and(|c| c.as_str() == id);
            if let (true, Ok(report)) = (ours, serde_json::from_slice::<WorkerReport>(&reply.data))
            {
                reports.push(report);
                last_answer = Some(tokio::time::Instant::now());
            }
        }
    }
    let _ = channel.close(200, "status done".into()).await;
    Ok(reports)
}
