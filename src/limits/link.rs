//! The fleet's own AMQP connection: an exclusive queue on `P.control` for the notes
//! of the others, heartbeats and pauses out, the shares applied to the gates, and a
//! reconnection with backoff (the fallback share meanwhile) that yields to shutdown.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fleet::{Core, Own, SILENT_AFTER, Shares};
use super::pace::Rate;
use super::wire::{Note, PauseNote};
use super::{FleetConfig, Gates, WaitSource};
use crate::broker::topology::Topology;
use crate::telemetry::{chain, names};

/// How often the view is brought up to date (expiries, turns, settled claims).
const TICK: Duration = Duration::from_millis(100);
/// Opening the link (connect, declare, bind, consume) that takes longer is retried.
const OPEN_DEADLINE: Duration = Duration::from_secs(15);
/// At shutdown: the goodbye and the close may take this long each, no more.
const STOP_STEP: Duration = Duration::from_millis(500);
/// Shutdown waits this long for the link at most.
const STOP_DEADLINE: Duration = Duration::from_secs(2);
/// A pause asked again within this of the one already sent is not sent again.
const PAUSE_COALESCE: Duration = Duration::from_millis(100);

/// The running link, as [`super::Limits`] holds it.
pub(crate) struct Handle {
    pauses: mpsc::UnboundedSender<(Duration, WaitSource)>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    /// Tells the fleet (best effort: while the link is down, the pause stays local).
    pub(crate) fn pause(&self, wait: Duration, source: WaitSource) {
        let _ = self.pauses.send((wait, source));
    }

    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(STOP_DEADLINE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

pub(crate) fn spawn(config: FleetConfig, gates: Arc<Gates>) -> Handle {
    let (pauses, received) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let own = Own {
        id: uuid::Uuid::new_v4().simple().to_string(),
        name: config.name.clone(),
        rate_limit_per_minute: config.rate_limit_per_minute,
        max_concurrent_calls: config.max_concurrent_calls,
    };
    let link = Link {
        core: Core::new(own, Instant::now()),
        applied: None,
        gates,
        pauses: received,
        paused_until: None,
        control: Topology::new(&config.prefix, &[]).control(),
        config,
    };
    let task = tokio::spawn(link.run(stop.clone()));
    Handle {
        pauses,
        stop,
        task: Mutex::new(Some(task)),
    }
}

/// Everything the link task owns.
struct Link {
    core: Core,
    /// The shares last applied to the gates, so that waiters wake only on a change.
    applied: Option<Shares>,
    gates: Arc<Gates>,
    pauses: mpsc::UnboundedReceiver<(Duration, WaitSource)>,
    /// The end of the last pause we told the fleet about.
    paused_until: Option<Instant>,
    control: String,
    config: FleetConfig,
}

/// Why a connected stretch ended.
enum End {
    Stop,
    Lost(String),
}

struct Session {
    connection: Connection,
    channel: Channel,
    notes: lapin::Consumer,
}

impl Link {
    async fn run(mut self, stop: CancellationToken) {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let mut delays = backoff.build();
        self.apply_tick();
        loop {
            let opened = tokio::select! {
                opened = tokio::time::timeout(OPEN_DEADLINE, self.open()) => opened,
                () = stop.cancelled() => return,
            };
            match opened {
                Ok(Ok(mut session)) => {
                    delays = backoff.build();
                    self.core.connected(Instant::now());
                    tracing::info!(exchange = %self.control, "fleet link up: listening for the other replicas");
                    match self.connected(&mut session, &stop).await {
                        End::Stop => return self.leave(session).await,
                        End::Lost(why) => {
                            tracing::warn!(error = %why, "fleet link lost; reconnecting")
                        }
                    }
                    // The fallback applies before anything else may take time.
                    self.core.lost();
                    self.apply_tick();
                    tokio::select! {
                        () = crate::broker::close(&session.connection, "fleet link lost") => {}
                        () = stop.cancelled() => return,
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %chain(&e), "cannot open the fleet link"),
                Err(_) => {
                    tracing::warn!(deadline = ?OPEN_DEADLINE, "opening the fleet link took too long")
                }
            }
            self.core.lost();
            let retry_at = Instant::now() + delays.next().unwrap_or(Duration::from_secs(5));
            // The fallback share must follow the clock (trails end) while we wait.
            while Instant::now() < retry_at {
                self.apply_tick();
                tokio::select! {
                    () = tokio::time::sleep(TICK.min(retry_at - Instant::now())) => {}
                    () = stop.cancelled() => return,
                }
                while self.pauses.try_recv().is_ok() {}
            }
        }
    }

    async fn open(&self) -> lapin::Result<Session> {
        let name = format!("cxone-worker fleet ({})", self.config.prefix);
        let connection = crate::broker::connect(&self.config.url, &name).await?;
        let channel = connection.create_channel().await?;
        // Whichever of this link and the consumer connects first declares P.control.
        let topology = Topology::new(&self.config.prefix, &[]);
        topology.declare_control_exchange(&channel).await?;
        let mut arguments = FieldTable::default();
        // A note older than the silence that ends a member is worth nothing.
        arguments.insert("x-message-ttl".into(), AMQPValue::LongUInt(ttl_ms()));
        let notes = topology.consume_control_queue(&channel, arguments).await?;
        Ok(Session {
            connection,
            channel,
            notes,
        })
    }

    async fn connected(&mut self, session: &mut Session, stop: &CancellationToken) -> End {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let released = self.gates.slots.clone();
        loop {
            let step = tokio::select! {
                () = stop.cancelled() => return End::Stop,
                _ = ticks.tick() => self.step(&session.channel).await,
                () = returned(released.as_deref()) => self.step(&session.channel).await,
                delivery = session.notes.next() => match delivery {
                    Some(Ok(d)) => {
                        self.hear(d.properties.kind().as_ref().map(|k| k.as_str()), &d.data);
                        self.step(&session.channel).await
                    }
                    Some(Err(e)) => Err(chain(&e)),
                    None => Err("the broker cancelled the fleet's consumer".into()),
                },
                Some((wait, source)) = self.pauses.recv() => self.tell_pause(&session.channel, wait, source).await,
            };
            if let Err(why) = step {
                return End::Lost(why);
            }
        }
    }

    fn hear(&mut self, kind: Option<&str>, body: &[u8]) {
        let Some(note) = Note::read(kind, body) else {
            return;
        };
        if let Some(wait) = self.core.heard(note, Instant::now()) {
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                "another replica hit the API's rate limit: every call waits"
            );
            self.gates.pause_from_fleet(wait);
        }
    }

    /// Brings the view up to date, applies it, and sends a heartbeat when one is due.
    async fn step(&mut self, channel: &Channel) -> Result<(), String> {
        self.apply_tick();
        let now = Instant::now();
        if self.core.due(now) {
            let note = Note::Heartbeat(self.core.heartbeat(now));
            self.publish(channel, &note).await?;
        }
        Ok(())
    }

    async fn tell_pause(
        &mut self,
        channel: &Channel,
        wait: Duration,
        source: WaitSource,
    ) -> Result<(), String> {
        let until = Instant::now() + wait;
        if self
            .paused_until
            .is_some_and(|told| until < told + PAUSE_COALESCE)
        {
            return Ok(());
        }
        self.paused_until = Some(until);
        let note = Note::Pause(PauseNote {
            member: self.core.id().to_owned(),
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            source: source.label().to_owned(),
        });
        self.publish(channel, &note).await
    }

    async fn publish(&self, channel: &Channel, note: &Note) -> Result<(), String> {
        let (kind, body) = note.encode();
        // No reply_to: every worker answers a message that has one (`status` pings).
        let properties = BasicProperties::default()
            .with_type(kind.into())
            .with_content_type("application/json".into())
            .with_expiration(ttl_ms().to_string().into());
        channel
            .basic_publish(
                self.control.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .map(drop)
            .map_err(|e| chain(&e))
    }

    fn apply_tick(&mut self) {
        let held = self.gates.slots.as_ref().map_or(0, |s| s.held());
        let shares = self.core.tick(Instant::now(), held);
        if self.applied == Some(shares) {
            return;
        }
        if self
            .applied
            .is_none_or(|a| a.rate_units != shares.rate_units || a.budget != shares.budget)
            && let Rate::Shared(rate) = &self.gates.rate
        {
            rate.set_period(shares.budget.period(shares.rate_units));
        }
        if let (Some(slots), Some(calls)) = (&self.gates.slots, shares.calls)
            && slots.limit() != calls
        {
            slots.set_limit(calls);
        }
        let per_minute = shares.budget.per_minute_of(shares.rate_units);
        tracing::debug!(members = shares.members, rate_per_minute = per_minute, calls = ?shares.calls, "fleet share");
        metrics::gauge!(names::FLEET_MEMBERS).set(shares.members as f64);
        metrics::gauge!(names::FLEET_RATE_SHARE).set(per_minute);
        metrics::gauge!(names::FLEET_CONCURRENCY_SHARE).set(f64::from(shares.calls.unwrap_or(0)));
        self.applied = Some(shares);
    }

    /// Shutdown: the goodbye and the close, each given a moment at most.
    async fn leave(mut self, session: Session) {
        let _ = self.core.tick(Instant::now(), 0);
        let note = Note::Leave(self.core.leave());
        let _ = tokio::time::timeout(STOP_STEP, self.publish(&session.channel, &note)).await;
        let _ = tokio::time::timeout(
            STOP_STEP,
            session
                .connection
                .close(200, "cxone-worker stopping".into()),
        )
        .await;
        tracing::info!("left the fleet");
    }
}

/// A slot given back while more were held than the share: our claim may go down.
async fn returned(slots: Option<&super::slots::Slots>) {
    match slots {
        Some(slots) => slots.released.notified().await,
        None => std::future::pending().await,
    }
}

fn ttl_ms() -> u32 {
    u32::try_from(SILENT_AFTER.as_millis()).unwrap_or(u32::MAX)
}
