//! The topology's queue depths and consumers as gauges (`cxone_queue_messages_ready`,
//! `cxone_queue_consumers`), read with passive declares every few seconds: what the
//! alerts need (a DLQ growing, a jobs queue nobody consumes, results nobody reads)
//! without the broker's own metrics plugin.

use std::time::Duration;

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use super::topology::Topology;
use crate::telemetry::names;

/// How often depths are read: a passive declare per queue, nothing a broker feels.
const EVERY: Duration = Duration::from_secs(10);

/// Reads depths on `channel` (the session's own) until the task is aborted at the
/// session's end. A queue deleted under it closes the channel: the task ends, and
/// the next session starts another.
pub(super) fn watch(channel: Channel, topology: Topology) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            if let Err(e) = read_all(&channel, &topology).await {
                tracing::debug!(error = %e, "reading queue depths stopped");
                return;
            }
        }
    })
}

async fn read_all(channel: &Channel, topology: &Topology) -> lapin::Result<()> {
    let (mut retry_ready, mut retry_consumers) = (0u64, 0u64);
    for queue in topology.queues() {
        let declared = channel
            .queue_declare(
                queue.name.clone().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let (ready, consumers) = (
            u64::from(declared.message_count()),
            u64::from(declared.consumer_count()),
        );
        let label = match queue.role {
            "jobs" => "jobs",
            "dead letters" => "dlq",
            "results" => "results",
            "audit" => "audit",
            _ => {
                retry_ready += ready;
                retry_consumers += consumers;
                continue;
            }
        };
        set(label, ready, consumers);
    }
    set("retry", retry_ready, retry_consumers);
    Ok(())
}

fn set(queue: &'static str, ready: u64, consumers: u64) {
    metrics::gauge!(names::QUEUE_MESSAGES, "queue" => queue).set(ready as f64);
    metrics::gauge!(names::QUEUE_CONSUMERS, "queue" => queue).set(consumers as f64);
}
