//! One tick of a member's view: who is still there, whose turn it is, and what that
//! leaves this member to use.

use tokio::time::Instant;

use super::{
    Core, ECHO_LATE, Ghost, HEARTBEAT_EVERY, Phase, SILENT_AFTER, Shares, TRAIL_SLACK, TURN,
};
use crate::limits::share::{RateBudget, rotates, share};
use crate::limits::wire::Claim;

/// The fleet as this member sees it in one tick.
struct Fleet {
    members: usize,
    rank: usize,
    leader: bool,
    budget: RateBudget,
    /// `None`: no limit on calls in flight.
    calls: Option<u32>,
    /// What the others claim, the departed included.
    others: Claim,
}

impl Core {
    /// Brings the view up to `now` and says what this member may use; `held` is the
    /// calls it has in flight.
    pub(crate) fn tick(&mut self, now: Instant, held: u32) -> Shares {
        self.forget_the_silent(now);
        self.check_echo(now);
        if let Phase::Joining { until, .. } = self.phase
            && now >= until
        {
            tracing::info!(members = self.peers.len() + 1, "joined the fleet");
            self.phase = Phase::Member;
        }
        let fleet = self.fleet();
        let turn = TURN.max(fleet.budget.window * 5);
        if fleet.leader && self.rotating(&fleet) && now >= self.turn_since + turn {
            self.turn += 1;
            self.turn_since = now;
            self.announce = true;
        }
        let share_of = |total| share(total, fleet.members, fleet.rank, self.turn);
        let rate_share = share_of(fleet.budget.units);
        let calls_share = fleet.calls.map(share_of);
        let (rate_used, calls_used) = match self.phase {
            Phase::Starting
            | Phase::Joining {
                fallback: false, ..
            } => (0.0, Some(0)),
            Phase::Joining { fallback: true, .. } | Phase::CutOff { .. } => self.fallback(&fleet),
            Phase::Member => {
                self.rate.settle(now);
                self.calls.settle(now);
                let rate = rate_share
                    .min(self.rate.settled)
                    .min(fleet.budget.units.saturating_sub(fleet.others.rate));
                let calls = fleet.calls.zip(calls_share).map(|(total, mine)| {
                    mine.min(self.calls.settled)
                        .min(total.saturating_sub(fleet.others.calls))
                });
                (f64::from(rate), calls)
            }
        };
        self.track_trail(rate_used, fleet.budget, now);
        let claiming = matches!(self.phase, Phase::Member);
        let trail = self.trail.map_or(0, |(units, _)| units);
        self.claim = Claim {
            rate: trail
                .max(rate_used.ceil() as u32)
                .max(if claiming { rate_share } else { 0 }),
            // Without a limit there is nothing to claim (and calls in flight, which
            // change with every call, would make every tick announce).
            calls: match calls_share {
                Some(mine) => {
                    held.max(calls_used.unwrap_or(0))
                        .max(if claiming { mine } else { 0 })
                }
                None => 0,
            },
        };
        self.rate.lower_to(self.claim.rate);
        self.calls.lower_to(self.claim.calls);
        if self.announced.is_some_and(|a| a != self.claim) {
            self.announce = true;
        }
        self.rate_used = rate_used;
        Shares {
            budget: fleet.budget,
            rate_units: rate_used,
            calls: fleet.calls.map(|_| calls_used.unwrap_or(0)),
            members: fleet.members,
        }
    }

    /// Members silent for three heartbeats are gone; their calls died with them, and
    /// their rate is out of every window by the time silence says so, unless the
    /// window is longer than the silence after their last heartbeat.
    fn forget_the_silent(&mut self, now: Instant) {
        let silent: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now >= p.heard + SILENT_AFTER)
            .map(|(id, _)| id.clone())
            .collect();
        for id in silent {
            let Some(peer) = self.peers.remove(&id) else {
                continue;
            };
            tracing::info!(member = %peer.name, silent = ?SILENT_AFTER, "a member went silent: its share returns to the fleet");
            let window = RateBudget::per_minute(peer.rate_limit_per_minute).trail();
            let after_death = SILENT_AFTER - HEARTBEAT_EVERY;
            if window > after_death {
                self.ghosts.push(Ghost {
                    claim: Claim {
                        rate: peer.claim.rate,
                        calls: 0,
                    },
                    until: now + (window - after_death) + TRAIL_SLACK,
                });
            }
        }
        self.ghosts.retain(|g| g.until > now);
    }

    /// A heartbeat of ours that has not come back in time means the broker delivers
    /// late: the others may not hear our claims in time either.
    fn check_echo(&mut self, now: Instant) {
        let late = self
            .unechoed
            .front()
            .is_some_and(|(_, sent)| now >= *sent + ECHO_LATE);
        if late && matches!(self.phase, Phase::Joining { .. } | Phase::Member) {
            tracing::warn!(late = ?ECHO_LATE, "our heartbeat did not come back in time");
            self.cut_off(true);
        }
    }

    fn fleet(&mut self) -> Fleet {
        let members = self.peers.len() + 1;
        let rank = self.peers.keys().filter(|id| **id < self.own.id).count();
        let limits = self
            .peers
            .values()
            .map(|p| (p.rate_limit_per_minute, p.max_concurrent_calls));
        let mixed = limits.clone().any(|l| {
            l != (
                self.own.rate_limit_per_minute,
                self.own.max_concurrent_calls,
            )
        });
        if mixed && !self.warned {
            self.warned = true;
            tracing::warn!(
                "members of the fleet have different RATE_LIMIT_PER_MINUTE or MAX_CONCURRENT_CALLS: the fleet keeps to the smallest"
            );
        }
        let rate = limits
            .clone()
            .map(|(rate, _)| rate)
            .fold(self.own.rate_limit_per_minute, u32::min);
        let calls = limits
            .map(|(_, calls)| calls)
            .chain([self.own.max_concurrent_calls])
            .filter(|c| *c > 0)
            .min();
        let mut others = Claim::default();
        let claims = self.peers.values().map(|p| p.claim);
        for claim in claims.chain(self.ghosts.iter().map(|g| g.claim)) {
            others.rate = others.rate.saturating_add(claim.rate);
            others.calls = others.calls.saturating_add(claim.calls);
        }
        Fleet {
            members,
            rank,
            leader: rank == 0,
            budget: RateBudget::per_minute(rate),
            calls,
            others,
        }
    }

    fn rotating(&self, fleet: &Fleet) -> bool {
        rotates(fleet.budget.units, fleet.members)
            || fleet.calls.is_some_and(|c| rotates(c, fleet.members))
    }

    /// A member cut off from the fleet: what one more member than it knew would
    /// get, and never less than one call in flight (its work must go on).
    fn fallback(&self, fleet: &Fleet) -> (f64, Option<u32>) {
        let share = (self.known.max(fleet.members) + 1) as u32;
        let rate = f64::from(fleet.budget.units) / f64::from(share);
        (rate, fleet.calls.map(|c| (c / share).max(1)))
    }

    /// A member that slows down keeps claiming its old rate for one more window:
    /// its calls at that rate are still in the window the others count.
    fn track_trail(&mut self, rate_used: f64, budget: RateBudget, now: Instant) {
        if self.trail.is_some_and(|(_, until)| now >= until) {
            self.trail = None;
        }
        if rate_used < self.rate_used {
            let before = self.rate_used.ceil() as u32;
            let units = self.trail.map_or(before, |(u, _)| u.max(before));
            self.trail = Some((units, now + budget.trail() + TRAIL_SLACK));
        }
    }
}
