//! The consumer: sessions with the broker, one after the other, for as long as the
//! worker runs. Any loss of the connection or a channel rebuilds the session with
//! backoff; an error no reconnection can cure (a queue declared with other
//! arguments, access refused) ends `run` with that reason.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use tokio_util::sync::CancellationToken;

use super::pause::Pauses;
use super::session::{Session, SessionEnd};
use super::topology::{DeclareError, Topology};
use crate::admin::Health;
use crate::config::AmqpUrl;
use crate::state::StateKey;
use crate::telemetry::{chain, names};
use crate::worker::Worker;

/// Everything the consumer needs, shared by its sessions and job tasks.
pub struct Consumer {
    /// Processes one job; knows nothing of AMQP.
    pub worker: Arc<Worker>,
    /// Every name and argument of the queues and exchanges.
    pub topology: Topology,
    pub url: AmqpUrl,
    /// `WORKER_CONCURRENCY`: unacknowledged deliveries the broker gives at once.
    pub prefetch: u16,
    /// How long a publish waits for its confirm before the job is handed back.
    pub publish_timeout: Duration,
    /// `SHUTDOWN_GRACE`: how long jobs in flight may finish after SIGTERM.
    pub grace: Duration,
    /// `AUDIT_EVENTS=all`: an event at every stage, not only the terminal one.
    pub audit_all: bool,
    /// What `/readyz` reports; sessions and pauses keep it current.
    pub health: Arc<Health>,
    /// Signs the state carried on the worker's copies of a job, and checks it.
    pub state_key: StateKey,
    /// `host:pid`, as `status` shows this worker.
    pub name: String,
}

/// Why `run` gave up: the broker refuses something only an operator can fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// Opening a session (connect, declare, QoS, channels) that takes longer than this
/// is abandoned and retried: a peer that accepts TCP but never speaks AMQP, or a
/// blackholed address, must not hold the worker forever.
const OPEN_DEADLINE: Duration = Duration::from_secs(30);

impl Consumer {
    /// Runs until `shutdown` is cancelled; reconnects by itself after any loss that
    /// a reconnection may cure.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), Fatal> {
        let reconnect = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times();
        let mut delays = reconnect.build();
        // No job before a first token: a rollout with a wrong secret fails
        // readiness before it takes a job.
        let mut pause = Pauses::starting();
        self.health.set_paused(pause.cause());
        let mut last_error: Option<String> = None;
        while !shutdown.is_cancelled() {
            // A signal while the session opens ends the wait: nothing is held yet.
            let opened = tokio::select! {
                opened = tokio::time::timeout(OPEN_DEADLINE, Session::open(&self)) => opened,
                () = shutdown.cancelled() => return Ok(()),
            };
            let why = match opened {
                Ok(Ok(mut session)) => {
                    delays = reconnect.build();
                    last_error = None;
                    metrics::counter!(names::BROKER_SESSIONS).increment(1);
                    self.health.set_connected(true);
                    tracing::info!(broker = %self.url, queue = %self.topology.jobs(), "connected to the broker");
                    let end = session.run(&self, &mut pause, &shutdown).await;
                    session.close().await;
                    self.health.set_connected(false);
                    match end {
                        SessionEnd::Shutdown => return Ok(()),
                        SessionEnd::Lost(why) => format!("lost the broker session: {why}"),
                    }
                }
                Ok(Err(e)) => {
                    self.health.set_connected(false);
                    if let Some(fatal) = fatal(&e) {
                        return Err(fatal);
                    }
                    format!("cannot open a broker session: {}", chain(&e))
                }
                Err(_) => {
                    self.health.set_connected(false);
                    format!("opening a broker session took longer than {OPEN_DEADLINE:?}")
                }
            };
            let wait = delays.next().unwrap_or(Duration::from_secs(30));
            // The cause once, then only that it persists: a broker down for an hour
            // must not fill the log with the same chain.
            if last_error.as_deref() == Some(why.as_str()) {
                tracing::warn!(broker = %self.url, retry_in = ?wait, "the broker is still unavailable");
            } else {
                tracing::warn!(broker = %self.url, error = %why, retry_in = ?wait, "reconnecting to the broker");
                last_error = Some(why);
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
        Ok(())
    }
}

/// Why a session could not open.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Declare(#[from] DeclareError),
}

/// The errors no reconnection cures, as the one line `run` ends with.
fn fatal(e: &OpenError) -> Option<Fatal> {
    let (error, what) = match e {
        OpenError::Broker(e) => (e, None),
        OpenError::Declare(d) => (&d.source, Some(d.what.as_str())),
    };
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    let reply = amqp.get_message().as_str();
    let line = match (amqp.kind(), what) {
        (AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED), Some(what)) => format!(
            "{what} already exists with other arguments than this worker declares ({reply}); \
             delete it (once empty) or use another CXONE_QUEUE_PREFIX"
        ),
        (AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED), Some(what)) => {
            format!("the broker refuses this user access to {what} ({reply})")
        }
        (AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED), None) => {
            format!("the broker refuses the login of AMQP_URL ({reply})")
        }
        (AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED), _) => {
            format!("the broker refuses access to the virtual host of AMQP_URL ({reply})")
        }
        _ => return None,
    };
    Some(Fatal(line))
}
