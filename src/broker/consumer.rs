//! The consumer: connect, declare the topology, consume with prefetch =
//! `WORKER_CONCURRENCY`, run each delivery through the worker, publish its outcome
//! and only then acknowledge it. Any loss of the connection or a channel rebuilds
//! all of it with backoff; a systemic failure pauses consumption until a probe
//! succeeds; shutdown drains within the grace period.
//!
//! One loop owns every acknowledgement: a job's task reports how it ended and the
//! loop acks or nacks, so a delivery is never settled twice.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::control::WorkerReport;
use super::ledger::{Copy, Ledger, Settling, give_back, nack};
use super::outputs::{self, read_job_headers};
use super::publisher::Publisher;
use super::topology::Topology;
use crate::admin::Health;
use crate::config::AmqpUrl;
use crate::job::Systemic;
use crate::outcome::{Outcome, Report, Stage};
use crate::telemetry::{chain, names};
use crate::worker::{Incoming, StageSink, Worker};

/// Everything the consumer needs, shared by its sessions and job tasks.
pub struct Consumer {
    pub worker: Arc<Worker>,
    pub topology: Topology,
    pub url: AmqpUrl,
    pub prefetch: u16,
    pub publish_timeout: Duration,
    pub grace: Duration,
    pub audit_all: bool,
    pub health: Arc<Health>,
    /// `host:pid`, as `status` shows this worker.
    pub name: String,
}

/// How a job's task ended; the loop settles the delivery accordingly.
enum TaskEnd {
    /// Every output confirmed: acknowledge.
    Ack,
    /// Not the job's fault: hand it back and pause.
    HandBack(Systemic, String),
    /// An output was not confirmed: hand the job back and rebuild the session.
    PublishFailed(String),
}

/// Why a session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// A pause that outlives sessions: a reconnection does not resume consuming.
struct Pause {
    cause: Systemic,
    next_probe: Instant,
    delays: backon::ExponentialBackoff,
}

/// Opening a session (connect, declare, QoS, channels) that takes longer than this
/// is abandoned and retried: a peer that accepts TCP but never speaks AMQP, or a
/// blackholed address, must not hold the worker forever.
const OPEN_DEADLINE: Duration = Duration::from_secs(30);

/// A paused worker probes at least this often, jitter included.
const MAX_PROBE_DELAY: Duration = Duration::from_secs(30);

fn probe_delays() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(MAX_PROBE_DELAY / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

impl Consumer {
    /// Runs until `shutdown` is cancelled; reconnects by itself after any loss.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let reconnect = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times();
        let mut delays = reconnect.build();
        let mut pause: Option<Pause> = None;
        while !shutdown.is_cancelled() {
            // A signal while the session opens ends the wait: nothing is held yet.
            let opened = tokio::select! {
                opened = tokio::time::timeout(OPEN_DEADLINE, Session::open(&self)) => opened,
                () = shutdown.cancelled() => return,
            };
            match opened {
                Ok(Ok(mut session)) => {
                    delays = reconnect.build();
                    metrics::counter!(names::BROKER_SESSIONS).increment(1);
                    self.health.set_connected(true);
                    tracing::info!(broker = %self.url, queue = %self.topology.jobs(), "connected to the broker");
                    let end = session.run(&self, &mut pause, &shutdown).await;
                    session.close().await;
                    self.health.set_connected(false);
                    match end {
                        SessionEnd::Shutdown => return,
                        SessionEnd::Lost(why) => {
                            tracing::warn!(error = %why, "lost the broker session; reconnecting")
                        }
                    }
                }
                Ok(Err(e)) => {
                    self.health.set_connected(false);
                    tracing::warn!(broker = %self.url, error = %chain(&e), "cannot open a broker session");
                }
                Err(_) => {
                    self.health.set_connected(false);
                    tracing::warn!(broker = %self.url, deadline = ?OPEN_DEADLINE, "opening a broker session took too long; retrying");
                }
            }
            let wait = delays.next().unwrap_or(Duration::from_secs(30));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

struct Session {
    connection: Connection,
    channel: Channel,
    publisher: Publisher,
    consumer: Option<lapin::Consumer>,
    /// Set once we asked the broker to stop this consumer: its end is expected.
    cancelling: bool,
    tasks: JoinSet<TaskEnd>,
    ledger: Ledger,
    /// Acks sent and not yet written out.
    acks: FuturesUnordered<Settling>,
    probe: Option<tokio::task::JoinHandle<Result<(), crate::job::Failure>>>,
    /// Pings from `cxone-worker status`.
    control: lapin::Consumer,
    /// Shutting down: hand-backs are plain requeues, which cannot outlast the
    /// grace period waiting for a confirm.
    draining: bool,
}

impl Session {
    async fn open(c: &Consumer) -> lapin::Result<Self> {
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
        Ok(Self {
            connection,
            publisher,
            consumer: None,
            cancelling: false,
            tasks: JoinSet::new(),
            ledger: Ledger::new(channel.clone(), c.topology.jobs()),
            channel,
            acks: FuturesUnordered::new(),
            probe: None,
            control,
            draining: false,
        })
    }

    async fn consume(&mut self, c: &Consumer) -> lapin::Result<()> {
        if let Some(mut old) = self.consumer.take() {
            // Deliveries the old consumer still holds must go back, not be dropped
            // unsettled (they would sit unacknowledged until the connection closes).
            while let Some(Some(Ok(d))) = futures_util::FutureExt::now_or_never(old.next()) {
                let _ = self.give_back(c, &d).await;
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

    async fn run(
        &mut self,
        c: &Arc<Consumer>,
        pause: &mut Option<Pause>,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        if pause.is_none()
            && let Err(e) = self.consume(c).await
        {
            return SessionEnd::Lost(chain(&e));
        }
        let mut events = self.connection.events_listener();
        let mut liveness = tokio::time::interval(Duration::from_secs(2));
        loop {
            let probe_at = pause.as_ref().map(|p| p.next_probe);
            tokio::select! {
                () = shutdown.cancelled() => return self.drain(c).await,
                event = events.next() => match event {
                    Some(lapin::Event::Error(e)) => return SessionEnd::Lost(chain(&e)),
                    None => return SessionEnd::Lost("the connection's events ended".into()),
                    Some(_) => {}
                },
                Some(Ok(ping)) = self.control.next() => {
                    let report = WorkerReport {
                        worker: c.name.clone(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        unacked: self.ledger.unacked() as u64,
                        prefetch: c.prefetch,
                        consuming: self.consumer.is_some() && !self.cancelling,
                        paused: pause.as_ref().map(|p| p.cause.as_str().to_owned()),
                    };
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
                    Some(Ok(delivery)) if pause.is_some() || self.cancelling => {
                        // Sent before our cancel took effect: not ours to start now.
                        if let Err(e) = self.give_back(c, &delivery).await {
                            return SessionEnd::Lost(e);
                        }
                    }
                    Some(Ok(delivery)) => self.start(c, delivery),
                    Some(Err(e)) => return SessionEnd::Lost(chain(&e)),
                    None if self.cancelling => self.consumer = None,
                    None => return SessionEnd::Lost("the broker cancelled the consumer".into()),
                },
                () = sleep_until_opt(probe_at), if self.probe.is_none() => {
                    let worker = c.worker.clone();
                    self.probe = Some(tokio::spawn(async move { worker.client.probe().await }));
                }
                result = async { self.probe.as_mut().expect("guarded").await }, if self.probe.is_some() => {
                    self.probe = None;
                    let Some(p) = pause.as_mut() else { continue };
                    match result {
                        Ok(Ok(())) => {
                            tracing::info!(cause = p.cause.as_str(), "the API answers again; resuming");
                            *pause = None;
                            c.health.set_paused(None);
                            if let Err(e) = self.consume(c).await {
                                return SessionEnd::Lost(chain(&e));
                            }
                        }
                        Ok(Err(f)) => {
                            let wait = p.delays.next().unwrap_or(MAX_PROBE_DELAY).min(MAX_PROBE_DELAY);
                            p.next_probe = Instant::now() + wait;
                            tracing::warn!(error = %f, retry_in = ?wait, "still paused");
                        }
                        Err(e) => tracing::error!(error = %e, "the probe task failed"),
                    }
                }
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
        let task = process_delivery(c.clone(), self.publisher.clone(), data, properties);
        let id = self.tasks.spawn(task).id();
        self.ledger.hold(id, acker, delivery_tag, copy);
    }

    /// Hands back a delivery that was not started (see [`give_back`]).
    async fn give_back(
        &self,
        c: &Consumer,
        delivery: &lapin::message::Delivery,
    ) -> Result<(), String> {
        let copy = Copy::when_due(&delivery.data, &delivery.properties);
        give_back(&delivery.acker, copy, &self.publisher, &c.topology.jobs()).await
    }

    /// Acks or nacks a finished job; an error means the session is lost.
    async fn settle(
        &mut self,
        c: &Consumer,
        joined: Result<(Id, TaskEnd), tokio::task::JoinError>,
        pause: &mut Option<Pause>,
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
            TaskEnd::HandBack(cause, error) => {
                if pause.is_none() {
                    tracing::warn!(cause = cause.as_str(), error = %error, "pausing: not the jobs' fault");
                    c.health.set_paused(Some(cause));
                    let mut delays = probe_delays();
                    let first = delays.next().unwrap_or(Duration::from_secs(1));
                    *pause = Some(Pause {
                        cause,
                        next_probe: Instant::now() + first,
                        delays,
                    });
                }
                // Stop the consumer first, so the job handed back is not delivered
                // straight back to us.
                self.stop_consuming(c).await;
                let fresh = (!self.draining).then_some(&self.publisher);
                self.ledger.hand_back(id, fresh).await
            }
            TaskEnd::PublishFailed(error) => {
                // The broker's trouble, not the job's: a nack, which RabbitMQ 4.3+
                // does not count toward the delivery limit (a reject would).
                self.ledger.hand_back(id, None).await?;
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
        let mut no_pause = None;
        tracing::info!(in_flight = self.tasks.len(), grace = ?c.grace, "shutting down: draining jobs in flight");
        while !self.tasks.is_empty() {
            tokio::select! {
                Some(joined) = self.tasks.join_next_with_id() => {
                    // While draining, a hand-back is only a nack: no pause to enter.
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

    async fn close(&mut self) {
        if let Some(p) = self.probe.take() {
            p.abort();
        }
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

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One delivery: the worker decides, the outputs are published and confirmed.
async fn process_delivery(
    c: Arc<Consumer>,
    publisher: Publisher,
    body: Vec<u8>,
    properties: BasicProperties,
) -> TaskEnd {
    let _in_flight = InFlight::new();
    let incoming = Incoming {
        body,
        message_id: properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned()),
        carried: read_job_headers(&properties),
    };
    let stages = Stages {
        topology: &c.topology,
        enabled: c.audit_all,
        events: std::sync::Mutex::new(Vec::new()),
    };
    let report = c.worker.process(&incoming, &stages).await;
    if let Outcome::HandBack { cause, error } = report.outcome {
        return TaskEnd::HandBack(cause, error);
    }
    let mut messages = stages
        .events
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    messages.extend(outputs::messages(
        &c.topology,
        &report,
        &incoming.body,
        &properties,
    ));
    match publisher.publish_all(messages).await {
        Ok(()) => TaskEnd::Ack,
        Err(e) => {
            tracing::error!(job_id = %report.job_id, error = %chain(&e), "publishing the outcome failed; handing the job back");
            TaskEnd::PublishFailed(e.to_string())
        }
    }
}

/// Collects the stage events of `AUDIT_EVENTS=all`; they are published, in order,
/// with the job's other outputs.
struct Stages<'a> {
    topology: &'a Topology,
    enabled: bool,
    events: std::sync::Mutex<Vec<super::publisher::Outgoing>>,
}

impl StageSink for Stages<'_> {
    fn reached(&self, report: &Report, stage: Stage) {
        if self.enabled {
            let event = outputs::audit(self.topology, &report.event(stage.as_str()));
            self.events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(event);
        }
    }
}

/// Counts a job in the in-flight gauge for as long as it lives.
struct InFlight;

impl InFlight {
    fn new() -> Self {
        metrics::gauge!(names::IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(names::IN_FLIGHT).decrement(1.0);
    }
}
