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
use lapin::types::DeliveryTag;
use lapin::{Acker, BasicProperties, Channel};
use tokio::task::Id;

use super::incoming::read_state;
use super::outputs::{Original, fresh_copy};
use super::publisher::{Outgoing, Publisher};
use super::topology::{JOBS_DELIVERY_LIMIT, Topology, header_int, headers};
use crate::state::StateKey;
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

    /// The fresh message: same body and properties, the state it carried (when it
    /// was ours) re-signed with the broker's count added to its returns.
    fn fresh(self, topology: &Topology, key: &StateKey) -> Outgoing {
        let message_id = self.properties.message_id().as_ref().map(|m| m.as_str());
        let state = read_state(key, &self.properties, &self.body, message_id);
        let original = Original {
            body: &self.body,
            properties: &self.properties,
        };
        fresh_copy(topology, key, &original, &state)
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
    /// The deliveries held, by the task processing each.
    held: HashMap<Id, Held>,
    /// The channel the deliveries came on.
    channel: Channel,
    /// Where fresh copies go, and the key that signs their state.
    topology: Topology,
    key: StateKey,
}

impl Ledger {
    pub(crate) fn new(channel: Channel, topology: Topology, key: StateKey) -> Self {
        Self {
            held: HashMap::new(),
            channel,
            topology,
            key,
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

    /// Hands the task's delivery back, not the job's fault.
    /// - `replacement`: the job made progress this delivery does not know of (the
    ///   action ran, chunks went out): the copy carrying it is published with a
    ///   confirm, then the original acked, even while draining, or the next delivery
    ///   would run them again.
    /// - otherwise, during a pause (`draining` false), a fresh copy when the delivery
    ///   budget runs low; at shutdown, which must end within its grace period, a
    ///   plain requeue.
    pub(crate) async fn hand_back(
        &mut self,
        task: Id,
        publisher: &Publisher,
        draining: bool,
        replacement: Option<Box<Outgoing>>,
    ) -> Result<(), String> {
        let Some(held) = self.held.remove(&task) else {
            return Ok(());
        };
        match replacement {
            Some(copy) => replace(&held.acker, *copy, publisher).await,
            None if draining => nack(&held.acker).await,
            None => self.give_back(&held.acker, held.copy, publisher).await,
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

    /// Hands a delivery back for a reason that is not the job's: a plain requeue, or,
    /// with a `copy` (the budget runs low), a confirmed fresh copy and then an ack.
    /// Should the copy fail, the requeue still happens: nothing is lost either way.
    pub(crate) async fn give_back(
        &self,
        acker: &Acker,
        copy: Option<Copy>,
        publisher: &Publisher,
    ) -> Result<(), String> {
        match copy {
            None => nack(acker).await,
            Some(copy) => replace(acker, copy.fresh(&self.topology, &self.key), publisher).await,
        }
    }
}

/// Publishes `copy` in place of the delivery, then acks the delivery; a copy that
/// is not confirmed leaves the delivery requeued instead, so nothing is lost.
async fn replace(acker: &Acker, copy: Outgoing, publisher: &Publisher) -> Result<(), String> {
    if !acker.usable() {
        // The channel is gone: the broker requeues the original itself, and a copy
        // beside it would be a second job.
        return Err("the delivery's channel closed before it was handed back".into());
    }
    match publisher.publish_all(vec![copy]).await {
        Ok(()) => {
            metrics::counter!(names::REFRESHED).increment(1);
            // Should this ack not land (the channel dies right now), the original
            // comes back beside the copy: the same job under the same key, whose
            // action the API runs once, but which may report twice.
            settled(acker.ack(BasicAckOptions::default()).await)
        }
        Err(e) => {
            tracing::warn!(error = %chain(&e), "a fresh copy of a handed-back job was not confirmed; requeueing the original");
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
    use crate::broker::topology::text;
    use crate::config::Secret;
    use crate::state::JobState;
    use lapin::types::{AMQPValue, FieldTable};

    fn key() -> StateKey {
        StateKey::derive(&Secret::new("secret".into()), "p")
    }

    fn delivered(count: i64, state: Option<&JobState>) -> BasicProperties {
        let mut h = FieldTable::default();
        h.insert(
            headers::DELIVERY_COUNT.into(),
            AMQPValue::LongLongInt(count),
        );
        h.insert("custom".into(), AMQPValue::Boolean(true));
        if let Some(state) = state {
            let (json, sig) = key().sign(state, b"{job}", Some("m-1"));
            h.insert(headers::STATE.into(), text(&json));
            h.insert(headers::STATE_SIGNATURE.into(), text(&sig));
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
        let state = JobState {
            returns: 30,
            attempts: 1,
            step_attempts: 1,
            ..JobState::default()
        };
        let out = Copy::when_due(b"{job}", &delivered(12, Some(&state)))
            .unwrap()
            .fresh(&Topology::names_only("p"), &key());
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
        let back = read_state(&key(), &out.properties, &out.body, Some("m-1"));
        assert_eq!((back.returns, back.attempts), (42, 1));
    }
}
