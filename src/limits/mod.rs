//! The tenant's API limits as the client meets them: one [`Limits::acquire`] before
//! each call (rate, calls in flight, any pause), one [`Limits::pause_for`] when the
//! API asks everyone to wait; held by this process alone (`LIMIT_SCOPE=process`, v1)
//! or shared by every replica on the prefix (`LIMIT_SCOPE=fleet`, see [`fleet`]).
//!
//! | file | job |
//! |---|---|
//! | `share.rs` | the arithmetic: whole units of pacing, each member's share |
//! | `pace.rs` | even pacing (fixed, or a share that changes) and the pause |
//! | `slots.rs` | calls in flight, with a size that may change under them |
//! | `fleet.rs` | the fleet's protocol and one member's view of it (no AMQP) |
//! | `wire.rs` | the protocol's messages on `P.control` |
//! | `link.rs` | the fleet's own AMQP connection: heartbeats out, notes in |

mod fleet;
mod link;
mod pace;
mod share;
mod slots;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use pace::{Pause, Rate, SharedRate};
use slots::{Slot, Slots};

use crate::config::AmqpUrl;
use crate::telemetry::names;

/// Who asked every caller to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitSource {
    /// A 429 answer's `Retry-After`.
    RateLimited429,
    /// A Genesys answer whose `inin-ratelimit-count` reached `inin-ratelimit-allowed`.
    IninRateLimit,
}

impl WaitSource {
    /// The `source` label of `cxone_rate_limited_total`.
    pub fn label(self) -> &'static str {
        match self {
            WaitSource::RateLimited429 => "429",
            WaitSource::IninRateLimit => "inin_ratelimit",
        }
    }
}

/// The `source` label of a pause another replica asked for.
const FLEET_SOURCE: &str = "fleet";

/// What every call passes: shared by the client's callers and, in fleet scope, set by
/// the fleet's link as shares change.
pub(crate) struct Gates {
    rate: Rate,
    pause: Pause,
    /// `None`: no limit on calls in flight.
    slots: Option<Arc<Slots>>,
}

impl Gates {
    /// A pause heard from another replica.
    fn pause_from_fleet(&self, wait: Duration) {
        self.pause.extend(wait);
        metrics::counter!(names::RATE_LIMITED, "source" => FLEET_SOURCE).increment(1);
    }
}

/// The limits of this process's API calls. Build one per process and share it
/// (`Arc`): every caller must go through the same one for the limits to hold.
pub struct Limits {
    gates: Arc<Gates>,
    /// The fleet's coordinator, in fleet scope.
    link: Option<link::Handle>,
}

/// Where the fleet meets and what this replica was configured with.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub url: AmqpUrl,
    /// `CXONE_QUEUE_PREFIX`: the fleet is every replica on it.
    pub prefix: String,
    pub rate_limit_per_minute: u32,
    /// 0 = no limit.
    pub max_concurrent_calls: u32,
    /// `host:pid`, as logs and `status` show this replica.
    pub name: String,
}

/// One slot for one API call. Its place among the calls in flight is given back
/// when it is dropped: after the call's answer.
pub struct CallPermit {
    _slot: Option<Slot>,
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        crate::hot!(gauge, names::CALLS_IN_FLIGHT).decrement(1.0);
    }
}

impl Limits {
    /// `LIMIT_SCOPE=process` (v1): `rate_limit_per_minute` paced evenly (one call every
    /// `60 s / limit`) and `max_concurrent_calls` in flight (0 = no limit), for this
    /// process alone.
    pub fn process(rate_limit_per_minute: u32, max_concurrent_calls: u32) -> Self {
        metrics::gauge!(names::FLEET_MEMBERS).set(1.0);
        metrics::gauge!(names::FLEET_RATE_SHARE).set(f64::from(rate_limit_per_minute));
        metrics::gauge!(names::FLEET_CONCURRENCY_SHARE).set(f64::from(max_concurrent_calls));
        Self {
            gates: Arc::new(Gates {
                rate: Rate::fixed(rate_limit_per_minute),
                pause: Pause::default(),
                slots: (max_concurrent_calls > 0).then(|| Slots::new(max_concurrent_calls)),
            }),
            link: None,
        }
    }

    /// `LIMIT_SCOPE=fleet`: the limits are the fleet's, and this replica uses its share
    /// (nothing until it has heard the others). Starts the fleet's link on the current
    /// tokio runtime; call [`Limits::stop`] at shutdown.
    pub fn fleet(config: FleetConfig) -> Self {
        let gates = Arc::new(Gates {
            rate: Rate::Shared(SharedRate::new()),
            pause: Pause::default(),
            slots: (config.max_concurrent_calls > 0).then(|| Slots::new(0)),
        });
        let link = link::spawn(config, Arc::clone(&gates));
        Self {
            gates,
            link: Some(link),
        }
    }

    /// One slot to make one API call: rate, concurrency, and any pause honoured; the
    /// concurrency slot is released when the permit drops (after the call's answer).
    ///
    /// The slot in flight is taken before the rate's turn, so that a call goes the
    /// moment its turn comes: pacing holds for the calls as they leave, not for turns
    /// handed out long before.
    pub async fn acquire(&self) -> CallPermit {
        let slot = match &self.gates.slots {
            Some(slots) => Some(slots.acquire().await),
            None => None,
        };
        self.gates.rate.ready(&self.gates.pause).await;
        crate::hot!(gauge, names::CALLS_IN_FLIGHT).increment(1.0);
        CallPermit { _slot: slot }
    }

    /// The API asked every caller to wait (429 Retry-After, spent inin-ratelimit):
    /// pauses this process's calls, and the fleet's with LIMIT_SCOPE=fleet.
    pub fn pause_for(&self, wait: Duration, source: WaitSource) {
        self.gates.pause.extend(wait);
        metrics::counter!(names::RATE_LIMITED, "source" => source.label()).increment(1);
        if let Some(link) = &self.link {
            link.pause(wait, source);
        }
    }

    /// Leaves the fleet (after the last call): tells the others, closes the link.
    /// Takes a moment at most; a no-op in process scope.
    pub async fn stop(&self) {
        if let Some(link) = &self.link {
            link.stop().await;
        }
    }
}
