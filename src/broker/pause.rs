//! A pause: the worker stops taking jobs because something that is not the jobs'
//! fault is wrong (the API, its credentials, the storage), or because it has no API
//! token yet (start-up). It outlives broker sessions, so a reconnection does not
//! resume consuming; a probe with backoff tells when the cause cleared.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin::Paused;
use crate::job::Failure;
use crate::worker::Worker;

/// A paused worker probes at least this often, jitter included.
const MAX_PROBE_DELAY: Duration = Duration::from_secs(30);
/// A pause that begins this soon after the last one cleared goes on with its
/// backoff: a cause that clears for the probe and strikes again at the first job
/// (an API that redirects every call, say) must not make the worker take and hand
/// back a job every second.
const FLAP_WINDOW: Duration = Duration::from_secs(120);

/// The current pause, if any, and what the last one left for the next.
pub(super) struct Pauses {
    current: Option<Pause>,
    /// When the last pause cleared, and its backoff.
    recent: Option<(Instant, backon::ExponentialBackoff)>,
}

impl Pauses {
    /// At start: no job is taken before a first token is had; probe at once.
    pub(super) fn starting() -> Self {
        Self {
            current: Some(Pause::new(Paused::Starting, Duration::ZERO, fresh_delays())),
            recent: None,
        }
    }

    pub(super) fn cause(&self) -> Option<Paused> {
        self.current.as_ref().map(|p| p.cause)
    }

    /// Not paused: for a drain, where hand-backs pause nothing.
    pub(super) fn none() -> Self {
        Self {
            current: None,
            recent: None,
        }
    }

    /// Pauses for `cause`, unless already paused.
    pub(super) fn begin(&mut self, cause: Paused) {
        if self.current.is_some() {
            return;
        }
        let mut delays = match self.recent.take() {
            Some((cleared, delays)) if cleared.elapsed() < FLAP_WINDOW => delays,
            _ => fresh_delays(),
        };
        let first = delays
            .next()
            .unwrap_or(MAX_PROBE_DELAY)
            .min(MAX_PROBE_DELAY);
        self.current = Some(Pause::new(cause, first, delays));
    }

    /// The cause cleared; returns what it was.
    pub(super) fn clear(&mut self) -> Option<Paused> {
        let mut pause = self.current.take()?;
        let delays = std::mem::replace(&mut pause.delays, fresh_delays());
        self.recent = Some((Instant::now(), delays));
        Some(pause.cause)
    }

    /// [`Pause::probed`] of the current pause: never ends without one.
    pub(super) async fn probed(&mut self, worker: &Arc<Worker>) -> Probed {
        match &mut self.current {
            Some(pause) => pause.probed(worker).await,
            None => std::future::pending().await,
        }
    }
}

fn fresh_delays() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(MAX_PROBE_DELAY / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

struct Pause {
    /// Why; `/readyz` and `status` say it, and it follows the latest probe.
    cause: Paused,
    next_probe: Instant,
    delays: backon::ExponentialBackoff,
    /// The probe in flight, if any; it survives a lost session.
    probe: Option<JoinHandle<Result<(), Failure>>>,
}

/// What a finished probe says.
pub(super) enum Probed {
    /// The cause cleared: resume consuming.
    Clear,
    /// Still wrong; the next probe is scheduled.
    Still,
}

impl Pause {
    fn new(cause: Paused, first: Duration, delays: backon::ExponentialBackoff) -> Self {
        Self {
            cause,
            next_probe: Instant::now() + first,
            delays,
            probe: None,
        }
    }

    /// Waits for the next probe to end, starting it when due. Cancel-safe: the probe
    /// runs in a task of its own, kept across calls.
    async fn probed(&mut self, worker: &Arc<Worker>) -> Probed {
        let handle = match &mut self.probe {
            Some(handle) => handle,
            None => {
                tokio::time::sleep_until(self.next_probe).await;
                let (worker, cause) = (worker.clone(), self.cause);
                self.probe
                    .insert(tokio::spawn(async move { worker.probe(cause).await }))
            }
        };
        let result = handle.await;
        self.probe = None;
        let failure = match result {
            Ok(Ok(())) => return Probed::Clear,
            Ok(Err(failure)) => failure,
            Err(e) => Failure::retryable(format!("the probe task failed: {e}")),
        };
        // The reason follows what the latest probe found: a pause that began as
        // "unreachable" and now meets a 401 says "credentials refused".
        if let Failure::Systemic { cause, .. } = &failure {
            self.cause = Paused::Because(*cause);
        }
        let wait = self
            .delays
            .next()
            .unwrap_or(MAX_PROBE_DELAY)
            .min(MAX_PROBE_DELAY);
        self.next_probe = Instant::now() + wait;
        tracing::warn!(error = %failure, retry_in = ?wait, cause = self.cause.as_str(), "still paused");
        Probed::Still
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
    }
}
