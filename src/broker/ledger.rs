//! The deliveries the consumer holds, by the task processing each, and settling
//! them: one place acks and nacks, so a delivery is never settled twice.
//!
//! (Coalescing acks of jobs that finish together into one `multiple` ack was
//! measured: jobs finish spread out, batches stayed at one, no CPU was saved.)

use std::collections::HashMap;

use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::task::Id;

use crate::telemetry::chain;

#[derive(Default)]
pub(crate) struct Ledger {
    held: HashMap<Id, Acker>,
}

impl Ledger {
    pub(crate) fn hold(&mut self, task: Id, acker: Acker) {
        self.held.insert(task, acker);
    }

    /// Deliveries held and not yet settled.
    pub(crate) fn unacked(&self) -> usize {
        self.held.len()
    }

    /// The task finished and all its outputs are confirmed: acknowledge.
    pub(crate) async fn ack(&mut self, task: Id) -> Result<(), String> {
        match self.held.remove(&task) {
            Some(acker) => acker
                .ack(BasicAckOptions::default())
                .await
                .map(|_| ())
                .map_err(|e| chain(&e)),
            None => Ok(()),
        }
    }

    /// Hands the task's delivery back to the queue.
    pub(crate) async fn hand_back(&mut self, task: Id) -> Result<(), String> {
        match self.held.remove(&task) {
            Some(acker) => nack(&acker).await,
            None => Ok(()),
        }
    }

    /// Hands back every delivery still held (shutdown after the grace period).
    pub(crate) async fn hand_back_all(&mut self) {
        for (_, acker) in self.held.drain() {
            let _ = nack(&acker).await;
        }
    }
}

pub(crate) async fn nack(acker: &Acker) -> Result<(), String> {
    acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .map(|_| ())
        .map_err(|e| chain(&e))
}
