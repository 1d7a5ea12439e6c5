//! One broker session: a connection, its channels and consumer, the deliveries it
//! holds. It consumes with prefetch = `WORKER_CONCURRENCY`, runs each delivery in a
//! task of its own, settles each when its task ends, pauses and resumes, answers
//! status pings, and drains within the grace period at shutdown.
//!
//! One loop owns every acknowledgement: a job's task reports how it ended and the
//! loop acks or nacks, so a delivery is never settled twice.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::consumer::{Consumer, OpenError};
use super::delivery::{self, TaskEnd};
use super::ledger::{Copy, Ledger, Settling, nack};
use super::pause::{Pauses, Probed};
use super::publisher::Publisher;
use crate::admin::Paused;
use crate::telemetry::chain;

/// Why a session ended.
pub(super) enum SessionEnd {
    Shutdown,
    Lost(String),
}

pub(super) struct Session {
    connection: Connection,
    /// The channel jobs are consumed and settled on.
    channel: Channel,
    /// A confirm-mode channel for every output of every job.
    publisher: Publisher,
    /// `None` while paused (or cancelled and drained).
    consumer: Option<lapin::Consumer>,
    /// Set once we asked the broker to stop this consumer: its end is expected.
    cancelling: bool,
    /// One task per delivery being processed.
    tasks: JoinSet<TaskEnd>,
    /// The deliveries those tasks hold, to settle when each task ends.
    ledger: Ledger,
    /// Acks sent and not yet written out.
    acks: FuturesUnordered<Settling>,
    /// Pings from `cxone-worker status`.
    control: lapin::Consumer,
    /// Reads the queues' depths for the gauges; aborted when the session closes.
    depths: tokio::task::JoinHandle<()>,
    /// Shutting down: hand-backs are plain requeues, which cannot outlast the
    /// grace period waiting for a confirm.
    draining: bool,
}

impl Session {
    pub(super) async fn open(c: &Consumer) -> Result<Self, OpenError> {
        let name = format!("cxone-worker run ({})", c.topology.prefix());
        let connection = super::connect(&c.url, &name).await?;
        let channel = connection.create_channel().await?;
        c.topology.declare(&channel).await?;
        // Per-consumer prefetch: at most WORKER_CONCURRENCY unacknowledged deliveries.
        channel
            .basic_qos(c.prefetch, BasicQosOptions { global: false })
            .await?;
        let publisher = Publisher::open(&connection, c.publish_timeout).await?;
        let control = super::control::listen(&connection, &c.topology).await?;
        let depths = super::depths::watch(connection.create_channel().await?, c.topology.clone());
        Ok(Self {
            depths,
            connection,
            publisher,
            consumer: None,
            cancelling: false,
            tasks: JoinSet::new(),
            ledger: Ledger::new(channel.clone(), c.topology.clone(), c.state_key.clone()),
            channel,
            acks: FuturesUnordered::new(),
            control,
            draining: false,
        })
    }

    async fn consume(&mut self, c: &Consumer) -> lapin::Result<()> {
        if let Some(mut old) = self.consumer.take() {
            // Deliveries the old consumer still holds must go back, not be dropped
            // unsettled (they would sit unacknowledged until the connection closes).
            while let Some(Some(Ok(d))) = futures_util::FutureExt::now_or_never(old.next()) {
                let _ = self.give_back(&d).await;
            }
        }
        let consumer = self
            .channel
            .basic_consume(
                c.topology.jobs().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.consumer = Some(consumer);
        self.cancelling = false;
        c.health.set_consuming(true);
        Ok(())
    }

    /// Asks the broker to stop delivering. Deliveries already on their way still
    /// arrive and are handed back as they come.
    async fn stop_consuming(&mut self, c: &Consumer) {
        c.health.set_consuming(false);
        if let Some(consumer) = &self.consumer
            && !self.cancelling
        {
            self.cancelling = true;
            if let Err(e) = self
                .channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await
            {
                tracing::warn!(error = %chain(&e), "cancelling the consumer failed");
            }
        }
    }

    async fn next_delivery(
        consumer: &mut Option<lapin::Consumer>,
    ) -> Option<lapin::Result<lapin::message::Delivery>> {
        match consumer {
            Some(c) => c.next().await,
            None => std::future::pending().await,
        }
    }

    pub(super) async fn run(
        &mut self,
        c: &Arc<Consumer>,
        pause: &mut Pauses,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        if pause.cause().is_none()
            && let Err(e) = self.consume(c).await
        {
            return SessionEnd::Lost(chain(&e));
        }
        let mut events = self.connection.events_listener();
        let mut liveness = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return self.drain(c).await,
                event = events.next() => match event {
                    Some(lapin::Event::Error(e)) => return SessionEnd::Lost(chain(&e)),
                    None => return SessionEnd::Lost("the connection's events ended".into()),
                    Some(_) => {}
                },
                Some(Ok(ping)) = self.control.next() => {
                    let consuming = self.consumer.is_some() && !self.cancelling;
                    let report = super::control::report(c, self.ledger.unacked(), consuming, pause.cause());
                    super::control::answer(self.publisher.channel(), &ping, &report).await;
                }
                _ = liveness.tick() => {
                    if !self.connection.status().connected() {
                        return SessionEnd::Lost("the connection closed".into());
                    }
                }
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    if let Err(why) = self.settle(c, joined, pause).await {
                        return SessionEnd::Lost(why);
                    }
                }
                Some(acked) = self.acks.next(), if !self.acks.is_empty() => {
                    if let Err(why) = acked {
                        return SessionEnd::Lost(why);
                    }
                }
                delivery = Self::next_delivery(&mut self.consumer) => match delivery {
                    Some(Ok(delivery)) if pause.cause().is_some() || self.cancelling => {
                        // Sent before our cancel took effect: not ours to start now.
                        if let Err(e) = self.give_back(&delivery).await {
                            return SessionEnd::Lost(e);
                        }
                    }
                    Some(Ok(delivery)) => self.start(c, delivery),
                    Some(Err(e)) => return SessionEnd::Lost(chain(&e)),
                    None if self.cancelling => self.consumer = None,
                    None => return SessionEnd::Lost("the broker cancelled the consumer".into()),
                },
                probed = pause.probed(&c.worker) => match probed {
                    Probed::Clear => {
                        if let Some(cause) = pause.clear() {
                            tracing::info!(cause = cause.as_str(), "the cause of the pause cleared; consuming");
                        }
                        c.health.set_paused(None);
                        if let Err(e) = self.consume(c).await {
                            return SessionEnd::Lost(chain(&e));
                        }
                    }
                    Probed::Still => c.health.set_paused(pause.cause()),
                },
            }
        }
    }

    fn start(&mut self, c: &Arc<Consumer>, delivery: lapin::message::Delivery) {
        let lapin::message::Delivery {
            delivery_tag,
            data,
            properties,
            acker,
            ..
        } = delivery;
        let copy = Copy::when_due(&data, &properties);
        // Boxed: a job's future is several kilobytes, and the task would otherwise
        // copy it whole as it is spawned and as each stage of the task is set.
        let task = Box::pin(delivery::process(
            c.clone(),
            self.publisher.clone(),
            data,
            properties,
        ));
        let id = self.tasks.spawn(task).id();
        self.ledger.hold(id, acker, delivery_tag, copy);
    }

    /// Hands back a delivery that was not started (see `Ledger::give_back`).
    async fn give_back(&self, delivery: &lapin::message::Delivery) -> Result<(), String> {
        let copy = Copy::when_due(&delivery.data, &delivery.properties);
        self.ledger
            .give_back(&delivery.acker, copy, &self.publisher)
            .await
    }

    /// Acks or nacks a finished job; an error means the session is lost.
    async fn settle(
        &mut self,
        c: &Consumer,
        joined: Result<(Id, TaskEnd), tokio::task::JoinError>,
        pause: &mut Pauses,
    ) -> Result<(), String> {
        let (id, end) = match joined {
            Ok((id, end)) => (id, end),
            Err(e) => {
                // A panic is a bug, not the job's fault; the delivery limit of the
                // jobs queue dead-letters a message that keeps causing one.
                tracing::error!(error = %e, "a job task failed; handing the job back");
                return self.ledger.requeue(e.id()).await;
            }
        };
        match end {
            TaskEnd::Ack => match self.ledger.ack(id) {
                // Polled once now, which hands the frame to lapin: should the
                // session end before the loop polls the acks again, the ack still
                // goes out ahead of the connection's close.
                Some(mut ack) => match futures_util::FutureExt::now_or_never(ack.as_mut()) {
                    Some(result) => result,
                    None => {
                        self.acks.push(ack);
                        Ok(())
                    }
                },
                None => Ok(()),
            },
            TaskEnd::HandBack {
                cause,
                error,
                replacement,
            } => {
                if pause.cause().is_none() && !self.draining {
                    tracing::warn!(cause = cause.as_str(), error = %error, "pausing: not the jobs' fault");
                    pause.begin(Paused::Because(cause));
                    c.health.set_paused(pause.cause());
                }
                // Stop the consumer first, so the job handed back is not delivered
                // straight back to us.
                self.stop_consuming(c).await;
                self.ledger
                    .hand_back(id, &self.publisher, self.draining, replacement)
                    .await
            }
            TaskEnd::PublishFailed(error) => {
                // The broker's trouble, not the job's: a nack, which RabbitMQ 4.3+
                // does not count toward the delivery limit (a reject would).
                self.ledger
                    .hand_back(id, &self.publisher, true, None)
                    .await?;
                Err(format!("an outcome was not confirmed: {error}"))
            }
        }
    }

    /// Shutdown: stop consuming, let jobs finish within the grace period, hand the
    /// rest back.
    async fn drain(&mut self, c: &Consumer) -> SessionEnd {
        self.draining = true;
        self.stop_consuming(c).await;
        let deadline = Instant::now() + c.grace;
        let mut no_pause = Pauses::none();
        tracing::info!(in_flight = self.tasks.len(), grace = ?c.grace, "shutting down: draining jobs in flight");
        while !self.tasks.is_empty() {
            tokio::select! {
                Some(joined) = self.tasks.join_next_with_id() => {
                    if let Err(e) = self.settle(c, joined, &mut no_pause).await {
                        tracing::warn!(error = %e, "settling a job during shutdown failed");
                    }
                }
                Some(acked) = self.acks.next(), if !self.acks.is_empty() => {
                    if let Err(e) = acked {
                        tracing::warn!(error = %e, "acknowledging a job during shutdown failed");
                    }
                }
                delivery = Self::next_delivery(&mut self.consumer) => match delivery {
                    Some(Ok(d)) => { let _ = nack(&d.acker).await; }
                    _ => self.consumer = None,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if !self.tasks.is_empty() {
            tracing::warn!(
                jobs = self.tasks.len(),
                "grace period over: handing the rest back"
            );
            self.tasks.abort_all();
            while let Some(joined) = self.tasks.join_next_with_id().await {
                // A job that finished just before the abort has its outputs
                // confirmed (a retry copy, say): settle it, or it would run twice.
                if !matches!(&joined, Err(e) if e.is_cancelled())
                    && let Err(e) = self.settle(c, joined, &mut no_pause).await
                {
                    tracing::warn!(error = %e, "settling a job during shutdown failed");
                }
            }
        }
        self.ledger.hand_back_all().await;
        SessionEnd::Shutdown
    }

    pub(super) async fn close(&mut self) {
        self.depths.abort();
        self.tasks.abort_all();
        // Acks still unwritten when the connection closes would bring their jobs
        // back: a second report of work already done. On a dead connection they
        // fail at once.
        let flushed = tokio::time::timeout(super::CLOSE_DEADLINE, async {
            while let Some(acked) = self.acks.next().await {
                if let Err(e) = acked {
                    tracing::warn!(error = %e, "acknowledging a finished job failed");
                }
            }
        });
        if flushed.await.is_err() {
            tracing::warn!(
                acks = self.acks.len(),
                "acknowledgements not written before the deadline; those jobs come back"
            );
        }
        // Closing the connection hands every unsettled delivery back to the queue.
        if self.connection.status().connected() {
            super::close(&self.connection, "cxone-worker closing").await;
        }
    }
}
