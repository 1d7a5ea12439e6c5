//! The deliveries the consumer holds, by the task processing each, and settling
//! them: one place acks and nacks, so a delivery is never settled twice.
//!
//! (Coalescing acks of jobs that finish together into one `multiple` ack was
//! measured: jobs finish spread out, batches stayed at one, no CPU was saved.)
//!
//! Handing a delivery back is a requeue, and every requeue counts toward the jobs
//! queue's `x-delivery-limit` (RabbitMQ 3.x counts returns, not only crashes). The
//! limit is there for messages that crash the worker; pauses and shutdowns are
//! not the job's fault and must never dead-letter it. So a delivery that has
//! already spent half its budget is handed back as a fresh copy (published with a
//! confirm, then the original acked), which the broker counts from zero.

use std::collections::HashMap;
use std::pin::Pin;

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, DeliveryTag};
use lapin::{Acker, BasicProperties, Channel};
use tokio::task::Id;

use super::publisher::{Outgoing, Publisher};
use super::topology::{JOBS_DELIVERY_LIMIT, header_int, headers, headers_without};
use crate::telemetry::{chain, names};

/// Deliveries counted this many times by the broker are handed back as fresh copies.
/// Below it a plain requeue keeps the job at the head of the queue, for free.
pub(crate) const REFRESH_AT: i64 = JOBS_DELIVERY_LIMIT / 2;

/// What it takes to hand a delivery back as a fresh message.
pub(crate) struct Copy {
    body: Vec<u8>,
    properties: BasicProperties,
}

impl Copy {
    /// A copy of the delivery when its budget runs low; `None` (no clone) otherwise.
    pub(crate) fn when_due(body: &[u8], properties: &BasicProperties) -> Option<Copy> {
        let count = properties
            .headers()
            .as_ref()
            .and_then(|h| header_int(h, headers::DELIVERY_COUNT))
            .unwrap_or(0);
        (count >= REFRESH_AT).then(|| Copy {
            body: body.to_vec(),
            properties: properties.clone(),
        })
    }

    /// The fresh message: same body and properties, the broker's count dropped and
    /// added to the returns it carries, so operators still see them.
    fn fresh(self, jobs: &str) -> Outgoing {
        let old = self.properties.headers().clone().unwrap_or_default();
        let count = |key| header_int(&old, key).unwrap_or(0);
        let returns = count(headers::RETURNS).saturating_add(count(headers::DELIVERY_COUNT));
        let mut h = headers_without(&old, |k| k == headers::DELIVERY_COUNT);
        h.insert(headers::RETURNS.into(), AMQPValue::LongLongInt(returns));
        Outgoing {
            exchange: String::new(),
            routing_key: jobs.to_owned(),
            body: self.body,
            properties: self.properties.with_headers(h),
        }
    }
}

/// An acknowledgement on its way; an error means the session is lost.
pub(crate) type Settling = Pin<Box<dyn Future<Output = Result<(), String>> + Send + Sync>>;

struct Held {
    acker: Acker,
    tag: DeliveryTag,
    copy: Option<Copy>,
}

pub(crate) struct Ledger {
    held: HashMap<Id, Held>,
    /// The channel the deliveries came on.
    channel: Channel,
    /// The jobs queue, where fresh copies go.
    jobs: String,
}

impl Ledger {
    pub(crate) fn new(channel: Channel, jobs: String) -> Self {
        Self {
            held: HashMap::new(),
            channel,
            jobs,
        }
    }

    pub(crate) fn hold(&mut self, task: Id, acker: Acker, tag: DeliveryTag, copy: Option<Copy>) {
        self.held.insert(task, Held { acker, tag, copy });
    }

    /// Deliveries held and not yet settled.
    pub(crate) fn unacked(&self) -> usize {
        self.held.len()
    }

    /// The task finished and all its outputs are confirmed: acknowledge. The ack is
    /// returned to be awaited beside other work: waiting for each in turn would
    /// stall the consumer's loop for a trip to lapin's I/O thread per job.
    ///
    /// Sent on the channel itself: `Acker::ack` goes through lapin's internal task
    /// first, two more thread wake-ups per job on the hottest path. The channel
    /// refuses it just the same once closed.
    pub(crate) fn ack(&mut self, task: Id) -> Option<Settling> {
        let held = self.held.remove(&task)?;
        let channel = self.channel.clone();
        Some(Box::pin(async move {
            channel
                .basic_ack(held.tag, BasicAckOptions::default())
                .await
                .map_err(|e| chain(&e))
        }))
    }

    /// Hands the task's delivery back, not the job's fault: with a publisher (a
    /// pause), as a fresh copy when its budget runs low; without (a shutdown, which
    /// must end within its grace period), as a plain requeue.
    pub(crate) async fn hand_back(
        &mut self,
        task: Id,
        fresh: Option<&Publisher>,
    ) -> Result<(), String> {
        match (self.held.remove(&task), fresh) {
            (Some(held), Some(publisher)) => {
                give_back(&held.acker, held.copy, publisher, &self.jobs).await
            }
            (Some(held), None) => nack(&held.acker).await,
            (None, _) => Ok(()),
        }
    }

    /// Requeues the task's delivery and lets the broker count it: the job itself
    /// may be the cause (its task panicked). A reject, because RabbitMQ 4.3 and later
    /// count only rejects toward the delivery limit.
    pub(crate) async fn requeue(&mut self, task: Id) -> Result<(), String> {
        match self.held.remove(&task) {
            Some(held) => settled(
                held.acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await,
            ),
            None => Ok(()),
        }
    }

    /// Requeues every delivery still held (shutdown after the grace period).
    pub(crate) async fn hand_back_all(&mut self) {
        for (_, held) in self.held.drain() {
            let _ = nack(&held.acker).await;
        }
    }
}

/// Hands a delivery back for a reason that is not the job's: a plain requeue, or,
/// with a `copy` (the budget runs low), a confirmed fresh copy and then an ack.
/// Should the copy fail, the requeue still happens: nothing is lost either way.
pub(crate) async fn give_back(
    acker: &Acker,
    copy: Option<Copy>,
    publisher: &Publisher,
    jobs: &str,
) -> Result<(), String> {
    let Some(copy) = copy else {
        return nack(acker).await;
    };
    if !acker.usable() {
        // The channel is gone: the broker requeues the original itself, and a copy
        // beside it would be a second job.
        return Err("the delivery's channel closed before it was handed back".into());
    }
    match publisher.publish_all(vec![copy.fresh(jobs)]).await {
        Ok(()) => {
            metrics::counter!(names::REFRESHED).increment(1);
            // Should this ack not land (the channel dies right now), the original
            // comes back beside the copy: the same job under the same key, whose
            // action the API runs once, but which may report twice.
            settled(acker.ack(BasicAckOptions::default()).await)
        }
        Err(e) => {
            tracing::warn!(error = %chain(&e), "a fresh copy of a handed-back job was not confirmed; requeueing it");
            nack(acker).await
        }
    }
}

pub(crate) async fn nack(acker: &Acker) -> Result<(), String> {
    settled(
        acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await,
    )
}

/// lapin answers `Ok(false)` when the channel closed first: nothing was settled
/// (the broker requeues the delivery), and the session is as good as lost.
fn settled(result: lapin::Result<bool>) -> Result<(), String> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err("the channel closed before the delivery was settled".into()),
        Err(e) => Err(chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    fn delivered(count: i64, returns: Option<i64>) -> BasicProperties {
        let mut h = FieldTable::default();
        h.insert(
            headers::DELIVERY_COUNT.into(),
            AMQPValue::LongLongInt(count),
        );
        h.insert("custom".into(), AMQPValue::Boolean(true));
        if let Some(r) = returns {
            h.insert(headers::RETURNS.into(), AMQPValue::LongLongInt(r));
        }
        BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(h)
    }

    #[test]
    fn only_deliveries_low_on_budget_are_copied() {
        assert!(Copy::when_due(b"{}", &BasicProperties::default()).is_none());
        assert!(Copy::when_due(b"{}", &delivered(REFRESH_AT - 1, None)).is_none());
        assert!(Copy::when_due(b"{}", &delivered(REFRESH_AT, None)).is_some());
    }

    #[test]
    fn a_fresh_copy_keeps_the_job_and_carries_its_returns() {
        let out = Copy::when_due(b"{job}", &delivered(12, Some(30)))
            .unwrap()
            .fresh("p.jobs");
        assert_eq!(
            (out.exchange.as_str(), out.routing_key.as_str()),
            ("", "p.jobs")
        );
        assert_eq!(out.body, b"{job}");
        assert_eq!(
            out.properties.message_id().as_ref().unwrap().as_str(),
            "m-1",
            "the idempotency key stays"
        );
        let h = out.properties.headers().clone().unwrap();
        assert!(!h.contains_key(headers::DELIVERY_COUNT));
        assert!(h.contains_key("custom"));
        assert_eq!(header_int(&h, headers::RETURNS), Some(42));
    }
}
