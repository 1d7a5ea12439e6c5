//! The fleet's protocol: how the `run` processes on one prefix find each other over
//! `P.control` and split `RATE_LIMIT_PER_MINUTE` and `MAX_CONCURRENT_CALLS` so that,
//! together, they stay within them as replicas start, stop or die.
//!
//! This file is the protocol's state, driven by the messages heard and by the clock
//! and free of AMQP (the link in `link.rs` carries the messages), so that tests can
//! run a whole fleet on a simulated clock.
//!
//! # Finding each other
//! Each member binds an exclusive queue of its own to the `P.control` fanout exchange
//! and publishes a `fleet.heartbeat` there every second, and at once when it sees a
//! new member (so the newcomer hears everyone quickly) or when its claim changes.
//! The heartbeat carries no `reply_to` (`status` pings do, and every worker answers
//! those); members ignore every other message type. A member is identified
//! by a random id drawn at start; the fleet is the set of ids heard in the last
//! [`SILENT_AFTER`] (3 s, three heartbeats), sorted: the first is the *leader*.
//!
//! # What a heartbeat says
//! `{member, name, seq, turn, rate_limit_per_minute, max_concurrent_calls, claim:
//! {rate, calls}, members, joining}`. The fleet's limits are the smallest that any
//! member was configured with (0 calls = no limit, so the smallest non-zero).
//!
//! # Shares
//! The rate is split in whole calls per second ("units": `L / 60`, rounded down;
//! below 60 a minute, one call per `60 s / L`): a member pacing `u` calls a second
//! evenly makes at most `u` in any second whatever its phase, so shares summing to
//! `L / 60` keep every second of the fleet within it (`share.rs` proves it), each unit
//! paced 1/32 slower for the few milliseconds between a call's decision and its
//! arrival. Rate units and concurrent calls are dealt the same way: `total / members`
//! each, and the remainder to some members, the same ones while membership stays.
//! With fewer units than members (`MAX_CONCURRENT_CALLS=2` over 3 replicas) some
//! would get nothing for good: then the leader moves the row of those served on by
//! one every [`TURN`] (5 s), so each member gets its call in turn and no work waits
//! for ever.
//!
//! # Claims: shrink at once, grow only when the others have made room
//! A member's *claim* is what it may use until its next heartbeat: its share, or
//! more while it still uses more (calls in flight beyond its share, or a rate it just
//! gave up, claimed one more window). A member uses at most
//! `min(share, total - Σ the others' claims as last heard, its own settled claim)`,
//! where its claim *settles* [`GROW_DELAY`] (1 s) after the heartbeat announcing it.
//! A shrink applies at once. A growth therefore waits until every member that must
//! shrink for it has shrunk and said so, and two members growing at once each hear
//! the other's claim before using theirs. Since no member ever uses more than it
//! claims, and each uses at most what the others' claims leave, the fleet never uses
//! more than the total, as long as messages take less than the grow delay.
//!
//! # Joins, departures, deaths
//! A new member takes nothing while it listens for [`JOIN_WAIT`] (1.5 s: every
//! member's heartbeat comes within it); the others shrink as soon as they hear it.
//! At shutdown a member sends `fleet.leave` once its calls are over; its rate claim
//! then lasts one more window. A member that stops sending (SIGKILL, a lost host)
//! leaves the fleet after [`SILENT_AFTER`]: the others' shares grow a grow delay
//! later, about 4 s after the death (2 to 3 s of silence after its last heartbeat,
//! then the grow delay).
//!
//! # Pauses
//! A 429 (or a spent `inin-ratelimit`) seen by one member pauses its own calls and
//! goes out as `fleet.pause {member, wait_ms, source}`: every member pauses for that
//! duration from when it hears it (a duration, not an instant: clocks differ), at
//! most [`crate::cxone::MAX_RETRY_AFTER`].
//!
//! # When control messages are lost or late
//! A lost heartbeat costs throughput only: a claim unheard is a claim still counted,
//! and a growth unheard is a growth not taken. Notes expire after three seconds
//! (message and queue TTL), so a backlog never delivers stale claims. A member
//! watches the echo of its own heartbeats (the fanout delivers them to it too):
//! when one has not come back in
//! [`ECHO_LATE`], or its control connection is lost, it is *cut off* and falls back
//! to `total / (members + 1)` (at least one call in flight), never the whole limit,
//! until it has heard the fleet again for a join wait. The others count it, with its
//! last claims, for three seconds. A member cut off for longer while its calls still
//! reach the API is the one case where the fleet may exceed its limits (by that
//! fallback): the API's 429s then still pause that member.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::share::RateBudget;
use super::wire::{Claim, Heartbeat, Leave, Note};

/// How often a member says it is here.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A member unheard this long has left the fleet (three heartbeats missed).
pub(crate) const SILENT_AFTER: Duration = Duration::from_secs(3);
/// How long a new member listens before it takes a share.
pub(crate) const JOIN_WAIT: Duration = Duration::from_millis(1500);
/// A raised claim may be used this long after the heartbeat that announced it.
pub(crate) const GROW_DELAY: Duration = Duration::from_secs(1);
/// A heartbeat of our own not back within this is a sign that the broker delivers
/// late: well within the grow delay, which the claims need messages to beat.
pub(crate) const ECHO_LATE: Duration = Duration::from_millis(500);
/// How often the leader moves the remainder of the shares on (at least five windows
/// of a slow rate: each move costs the fleet that unit for a window).
pub(crate) const TURN: Duration = Duration::from_secs(5);
/// Calls reach the API a little after they are decided: a rate given up is claimed
/// this much longer than its window.
const TRAIL_SLACK: Duration = Duration::from_millis(50);
/// More members than any fleet has: ids beyond it are ignored (a flood of forged
/// heartbeats must not grow memory).
const MAX_MEMBERS: usize = 256;

/// Who this member is and the limits it was configured with.
#[derive(Debug, Clone)]
pub(crate) struct Own {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) rate_limit_per_minute: u32,
    /// 0 = no limit.
    pub(crate) max_concurrent_calls: u32,
}

/// What this member may use now: the gates apply it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shares {
    pub(crate) budget: RateBudget,
    /// Units of `budget` (whole, but for the fallback of a member cut off).
    pub(crate) rate_units: f64,
    /// Calls in flight at once; `None` = no limit.
    pub(crate) calls: Option<u32>,
    pub(crate) members: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Never connected yet: nothing.
    Starting,
    /// Listening before taking a share: nothing on the first join, the fallback when
    /// coming back from a cut.
    Joining {
        until: Instant,
        fallback: bool,
    },
    Member,
    /// No control connection (`link_up: false`), or our echo is late: the fallback.
    CutOff {
        link_up: bool,
    },
}

#[derive(Debug)]
struct Peer {
    name: String,
    heard: Instant,
    rate_limit_per_minute: u32,
    max_concurrent_calls: u32,
    claim: Claim,
}

/// The claim of a member gone, counted until its last calls are out of the window.
#[derive(Debug)]
struct Ghost {
    claim: Claim,
    until: Instant,
}

/// One resource's bookkeeping (rate units, or calls in flight).
#[derive(Debug, Default)]
struct Grant {
    /// The most this member may use: its claim as announced a grow delay ago, or
    /// lower since.
    settled: u32,
    /// A raised claim announced at that instant.
    pending: Option<(u32, Instant)>,
}

impl Grant {
    fn settle(&mut self, now: Instant) {
        if let Some((value, at)) = self.pending
            && now >= at + GROW_DELAY
        {
            self.settled = value;
            self.pending = None;
        }
    }

    /// A claim went down: it bounds use at once.
    fn lower_to(&mut self, claim: u32) {
        self.settled = self.settled.min(claim);
        if self.pending.is_some_and(|(value, _)| value > claim) {
            self.pending = self
                .pending
                .map(|(_, at)| (claim, at))
                .filter(|_| claim > self.settled);
        }
    }

    /// A claim was announced at `now`; above the settled one it waits a grow delay.
    fn announced(&mut self, claim: u32, now: Instant) {
        if claim <= self.settled {
            self.settled = claim;
            self.pending = None;
        } else if self.pending.is_none_or(|(value, _)| claim > value) {
            self.pending = Some((claim, now));
        }
    }
}

/// One member's view of the fleet.
pub(crate) struct Core {
    own: Own,
    phase: Phase,
    peers: BTreeMap<String, Peer>,
    ghosts: Vec<Ghost>,
    turn: u64,
    turn_since: Instant,
    seq: u64,
    /// Our heartbeats not echoed yet, oldest first.
    unechoed: VecDeque<(u64, Instant)>,
    last_sent: Option<Instant>,
    /// Our claim as of the last tick, and as last announced.
    claim: Claim,
    announced: Option<Claim>,
    rate: Grant,
    calls: Grant,
    /// Rate units used before slowing down, claimed until then.
    trail: Option<(u32, Instant)>,
    rate_used: f64,
    /// Members known when we were cut off: the fallback divides by one more.
    known: usize,
    /// Publish a heartbeat at the next chance.
    announce: bool,
    warned: bool,
}

mod view;

impl Core {
    pub(crate) fn new(own: Own, now: Instant) -> Self {
        Self {
            own,
            phase: Phase::Starting,
            peers: BTreeMap::new(),
            ghosts: Vec::new(),
            turn: 0,
            turn_since: now,
            seq: 0,
            unechoed: VecDeque::new(),
            last_sent: None,
            claim: Claim::default(),
            announced: None,
            rate: Grant::default(),
            calls: Grant::default(),
            trail: None,
            rate_used: 0.0,
            known: 1,
            announce: false,
            warned: false,
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.own.id
    }

    /// The control connection is up: listen before taking (or growing back) a share.
    pub(crate) fn connected(&mut self, now: Instant) {
        let fallback = !matches!(self.phase, Phase::Starting);
        self.phase = Phase::Joining {
            until: now + JOIN_WAIT,
            fallback,
        };
        self.unechoed.clear();
        self.announce = true;
    }

    /// The control connection is gone (or could not be opened).
    pub(crate) fn lost(&mut self) {
        self.cut_off(false);
    }

    fn cut_off(&mut self, link_up: bool) {
        if !matches!(self.phase, Phase::CutOff { .. }) {
            self.known = self.known.max(self.peers.len() + 1);
            tracing::warn!(
                members = self.known,
                "cut off from the fleet: falling back to a conservative share"
            );
        }
        self.phase = Phase::CutOff { link_up };
        self.unechoed.clear();
    }

    /// A message from `P.control`; a pause another member asked for comes back.
    pub(crate) fn heard(&mut self, note: Note, now: Instant) -> Option<Duration> {
        if note.member() == self.own.id {
            if let Note::Heartbeat(h) = note {
                self.echoed(h.seq, now);
            }
            return None;
        }
        match note {
            Note::Heartbeat(h) => self.heard_heartbeat(h, now),
            Note::Pause(p) => {
                let wait = Duration::from_millis(p.wait_ms).min(crate::cxone::MAX_RETRY_AFTER);
                return Some(wait);
            }
            Note::Leave(l) => self.heard_leave(l, now),
        }
        None
    }

    fn echoed(&mut self, seq: u64, now: Instant) {
        let mut sent = None;
        while let Some(&(s, at)) = self.unechoed.front()
            && s <= seq
        {
            sent = (s == seq).then_some(at);
            self.unechoed.pop_front();
        }
        // Only an echo in time says that the broker delivers in time again.
        let timely = sent.is_some_and(|at| now < at + ECHO_LATE);
        if timely && self.phase == (Phase::CutOff { link_up: true }) {
            tracing::info!("our heartbeats come back in time again: rejoining the fleet");
            self.phase = Phase::Joining {
                until: now + JOIN_WAIT,
                fallback: true,
            };
        }
    }

    fn heard_heartbeat(&mut self, h: Heartbeat, now: Instant) {
        let known = self.peers.contains_key(&h.member);
        if !known && self.peers.len() >= MAX_MEMBERS {
            return;
        }
        let leads = h.member < self.own.id
            && self
                .peers
                .keys()
                .next()
                .is_none_or(|first| h.member <= *first);
        if leads {
            if h.turn != self.turn {
                self.turn = h.turn;
                self.turn_since = now;
            }
        } else if matches!(self.phase, Phase::Starting | Phase::Joining { .. }) {
            self.turn = self.turn.max(h.turn);
        }
        if !known {
            tracing::info!(member = %h.name, id = %h.member, "a member joined the fleet");
            // Let the newcomer hear us now rather than in up to a second.
            self.announce = true;
        }
        self.peers.insert(
            h.member,
            Peer {
                name: h.name,
                heard: now,
                rate_limit_per_minute: h.rate_limit_per_minute,
                max_concurrent_calls: h.max_concurrent_calls,
                claim: h.claim,
            },
        );
    }

    fn heard_leave(&mut self, l: Leave, now: Instant) {
        if let Some(peer) = self.peers.remove(&l.member) {
            tracing::info!(member = %peer.name, "a member left the fleet");
            let budget = RateBudget::per_minute(peer.rate_limit_per_minute);
            self.ghosts.push(Ghost {
                claim: l.claim,
                until: now + budget.trail() + TRAIL_SLACK,
            });
        }
    }

    /// Whether a heartbeat should go out now.
    pub(crate) fn due(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Starting | Phase::CutOff { link_up: false } => false,
            _ => self.announce || self.last_sent.is_none_or(|at| now >= at + HEARTBEAT_EVERY),
        }
    }

    /// The heartbeat to publish now, with the claim of the last tick.
    pub(crate) fn heartbeat(&mut self, now: Instant) -> Heartbeat {
        self.seq += 1;
        self.unechoed.push_back((self.seq, now));
        self.last_sent = Some(now);
        self.announce = false;
        self.rate.announced(self.claim.rate, now);
        self.calls.announced(self.claim.calls, now);
        self.announced = Some(self.claim);
        Heartbeat {
            member: self.own.id.clone(),
            name: self.own.name.clone(),
            seq: self.seq,
            turn: self.turn,
            rate_limit_per_minute: self.own.rate_limit_per_minute,
            max_concurrent_calls: self.own.max_concurrent_calls,
            claim: self.claim,
            members: u32::try_from(self.peers.len() + 1).unwrap_or(u32::MAX),
            joining: matches!(self.phase, Phase::Joining { .. } | Phase::Starting),
        }
    }

    /// The goodbye: no calls in flight any more, and the rate of the last window.
    pub(crate) fn leave(&self) -> Leave {
        Leave {
            member: self.own.id.clone(),
            claim: Claim {
                rate: self.claim.rate.max(self.rate_used.ceil() as u32),
                calls: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests;
