//! One member's view driven by hand, then whole fleets on a simulated clock: members
//! that start, stop, die and lose their messages, a broker that delivers each note to
//! every member after a delay, and the calls that the gates would let through.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::limits::pace::Schedule;
use crate::limits::wire::PauseNote;

const MS: Duration = Duration::from_millis(1);

fn own(id: &str, rate: u32, calls: u32) -> Own {
    Own {
        id: id.into(),
        name: format!("host:{id}"),
        rate_limit_per_minute: rate,
        max_concurrent_calls: calls,
    }
}

fn beat(from: &Core, claim: Claim) -> Note {
    Note::Heartbeat(Heartbeat {
        member: from.own.id.clone(),
        name: from.own.name.clone(),
        seq: 1,
        turn: 0,
        rate_limit_per_minute: from.own.rate_limit_per_minute,
        max_concurrent_calls: from.own.max_concurrent_calls,
        claim,
        members: 1,
        joining: false,
    })
}

/// Ticks `core` every 100 ms until `until`, echoing its heartbeats at once.
fn run_alone(core: &mut Core, from: Instant, until: Instant) -> Shares {
    let mut now = from;
    let mut shares = core.tick(now, 0);
    while now < until {
        now += TICK;
        shares = core.tick(now, 0);
        if core.due(now) {
            let h = core.heartbeat(now);
            core.heard(Note::Heartbeat(h), now);
        }
    }
    shares
}

const TICK: Duration = Duration::from_millis(100);

#[test]
fn a_new_member_takes_nothing_until_it_has_heard_the_fleet() {
    let t0 = Instant::now();
    let mut core = Core::new(own("b", 600, 4), t0);
    let starting = core.tick(t0, 0);
    assert_eq!((starting.rate_units, starting.calls), (0.0, Some(0)));
    assert!(!core.due(t0), "nothing to say before the link is up");
    core.connected(t0);
    let joining = run_alone(&mut core, t0, t0 + JOIN_WAIT - TICK);
    assert_eq!((joining.rate_units, joining.calls), (0.0, Some(0)));
    // Joined: the claim goes out, and is usable a grow delay later.
    let joined = run_alone(&mut core, t0 + JOIN_WAIT - TICK, t0 + JOIN_WAIT + TICK);
    assert_eq!(joined.rate_units, 0.0);
    let settled = run_alone(
        &mut core,
        t0 + JOIN_WAIT + TICK,
        t0 + JOIN_WAIT + GROW_DELAY + 2 * TICK,
    );
    assert_eq!(
        (settled.rate_units, settled.calls, settled.members),
        (10.0, Some(4), 1)
    );
}

#[test]
fn a_member_shrinks_at_once_for_a_newcomer_and_grows_back_when_it_goes_silent() {
    let t0 = Instant::now();
    let mut core = Core::new(own("b", 600, 4), t0);
    core.connected(t0);
    let mut now = t0 + Duration::from_secs(3);
    assert_eq!(run_alone(&mut core, t0, now).rate_units, 10.0);
    // "a" joins (it sorts first): the share is 5 at once, the old 10 claimed a window.
    let newcomer = Core::new(own("a", 600, 4), t0);
    core.heard(beat(&newcomer, Claim::default()), now);
    let shrunk = core.tick(now, 3);
    assert_eq!(
        (shrunk.rate_units, shrunk.calls, shrunk.members),
        (5.0, Some(2), 2)
    );
    assert!(core.due(now), "the newcomer must hear us now");
    let h = core.heartbeat(now);
    assert_eq!(
        h.claim,
        Claim { rate: 10, calls: 3 },
        "the trail and the calls in flight"
    );
    core.heard(Note::Heartbeat(h), now);
    now += RateBudget::per_minute(600).trail() + TRAIL_SLACK + TICK;
    core.tick(now, 1);
    assert_eq!(core.claim, Claim { rate: 5, calls: 2 });
    // "a" falls silent: after three heartbeats its share comes back, a grow delay later.
    let silent_from = now;
    while now < silent_from + SILENT_AFTER - TICK {
        now += TICK;
        core.heard(beat(&newcomer, Claim { rate: 5, calls: 2 }), now - TICK);
        assert_eq!(core.tick(now, 0).members, 2);
        if core.due(now) {
            let h = core.heartbeat(now);
            core.heard(Note::Heartbeat(h), now);
        }
    }
    let back = run_alone(&mut core, now, now + SILENT_AFTER + GROW_DELAY + TICK);
    assert_eq!(
        (back.rate_units, back.calls, back.members),
        (10.0, Some(4), 1)
    );
}

#[test]
fn pauses_of_others_come_back_as_durations_and_our_own_echo_is_ignored() {
    let t0 = Instant::now();
    let mut core = Core::new(own("a", 600, 0), t0);
    let pause = |member: &str, wait_ms| {
        Note::Pause(PauseNote {
            member: member.into(),
            wait_ms,
            source: "429".into(),
        })
    };
    assert_eq!(
        core.heard(pause("b", 2500), t0),
        Some(Duration::from_millis(2500))
    );
    assert_eq!(core.heard(pause("a", 2500), t0), None, "we paused already");
    assert_eq!(
        core.heard(pause("b", u64::MAX), t0),
        Some(crate::cxone::MAX_RETRY_AFTER),
        "nobody pauses the fleet for ever"
    );
}

#[test]
fn a_member_cut_off_falls_back_to_less_than_its_share_and_rejoins() {
    let t0 = Instant::now();
    let mut core = Core::new(own("a", 600, 6), t0);
    core.connected(t0);
    let peer = Core::new(own("b", 600, 6), t0);
    let mut now = t0;
    while now < t0 + Duration::from_secs(4) {
        now += TICK;
        core.heard(beat(&peer, Claim { rate: 5, calls: 3 }), now);
        core.tick(now, 0);
        if core.due(now) {
            let h = core.heartbeat(now);
            core.heard(Note::Heartbeat(h), now);
        }
    }
    assert_eq!(core.tick(now, 0).rate_units, 5.0);
    // Our heartbeat does not come back: the broker is late, so are our claims.
    let _ = core.heartbeat(now);
    let late = core.tick(now + ECHO_LATE, 0);
    assert!((late.rate_units - 10.0 / 3.0).abs() < 1e-9, "{late:?}");
    assert_eq!(late.calls, Some(2));
    // The link goes down altogether: still the fallback, never the whole limit.
    core.lost();
    let lost = run_alone(&mut core, now + ECHO_LATE, now + Duration::from_secs(10));
    assert!(lost.rate_units < 5.0 && lost.calls == Some(2), "{lost:?}");
    // Back: the fallback while listening, then the share again.
    now += Duration::from_secs(10);
    core.connected(now);
    assert!(core.tick(now, 0).rate_units < 5.0);
    let back = run_alone(&mut core, now, now + JOIN_WAIT + GROW_DELAY + 2 * TICK);
    assert_eq!(back.rate_units, 10.0, "b went silent meanwhile");
}

/// What happens to a member in a [`Fleet`] run, and when.
#[derive(Clone, Copy)]
enum Event {
    Start(usize),
    /// SIGTERM: no new calls, the goodbye once the calls in flight are over.
    Stop(usize),
    /// SIGKILL: gone at once, calls and all.
    Kill(usize),
    /// Every note takes this long from now on.
    Delay(Duration),
}

struct SimMember {
    core: Core,
    alive: bool,
    stopping: bool,
    schedule: Schedule,
    limit: Option<u32>,
    /// When each call in flight ends.
    calls: Vec<Instant>,
    /// Ticks at their own phase, as the link's interval does.
    next_tick: Instant,
    made: usize,
}

/// A fleet on a simulated clock, with millisecond steps.
struct Fleet {
    rng: StdRng,
    t0: Instant,
    members: Vec<SimMember>,
    /// Notes in transit: (delivery, to, note).
    wire: BTreeMap<(Instant, u64), (usize, Note)>,
    sent: u64,
    delay: Duration,
    /// Every call: when it reached the API.
    arrivals: Vec<Duration>,
    most_in_flight: usize,
    latency: (u64, u64),
}

impl Fleet {
    fn new(seed: u64, limits: (u32, u32), ids: &[&str], latency: (u64, u64)) -> Self {
        let t0 = Instant::now();
        let members = ids
            .iter()
            .map(|id| SimMember {
                core: Core::new(own(id, limits.0, limits.1), t0),
                alive: false,
                stopping: false,
                schedule: Schedule::new(None),
                limit: Some(0),
                calls: Vec::new(),
                next_tick: t0,
                made: 0,
            })
            .collect();
        Self {
            rng: StdRng::seed_from_u64(seed),
            t0,
            members,
            wire: BTreeMap::new(),
            sent: 0,
            delay: Duration::from_millis(10),
            arrivals: Vec::new(),
            most_in_flight: 0,
            latency,
        }
    }

    fn run(&mut self, until_s: u64, events: &[(u64, Event)]) {
        let mut events: Vec<(u64, Event)> = events.to_vec();
        events.sort_by_key(|(at, _)| *at);
        let mut events = events.into_iter().peekable();
        let end = self.t0 + Duration::from_secs(until_s);
        let mut now = self.t0;
        while now < end {
            while let Some((_, event)) = events.next_if(|(at, _)| self.t0 + MS * *at as u32 <= now)
            {
                self.happen(event, now);
            }
            self.deliver(now);
            for i in 0..self.members.len() {
                self.step_member(i, now);
            }
            let in_flight: usize = self.members.iter().map(|m| m.calls.len()).sum();
            self.most_in_flight = self.most_in_flight.max(in_flight);
            now += MS;
        }
    }

    fn happen(&mut self, event: Event, now: Instant) {
        match event {
            Event::Start(i) => {
                let phase = Duration::from_millis(self.rng.random_range(0..100));
                let m = &mut self.members[i];
                m.alive = true;
                m.core.connected(now);
                m.next_tick = now + phase;
            }
            Event::Stop(i) => self.members[i].stopping = true,
            Event::Kill(i) => {
                let m = &mut self.members[i];
                m.alive = false;
                m.calls.clear();
            }
            Event::Delay(d) => self.delay = d,
        }
    }

    fn broadcast(&mut self, note: Note, now: Instant) {
        for to in 0..self.members.len() {
            let jitter = Duration::from_millis(self.rng.random_range(0..10));
            self.sent += 1;
            self.wire
                .insert((now + self.delay + jitter, self.sent), (to, note.clone()));
        }
    }

    fn deliver(&mut self, now: Instant) {
        while let Some(entry) = self.wire.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (to, note) = entry.remove();
            let m = &mut self.members[to];
            if m.alive {
                m.core.heard(note, now);
            }
        }
    }

    fn step_member(&mut self, i: usize, now: Instant) {
        if !self.members[i].alive {
            return;
        }
        self.members[i].calls.retain(|end| *end > now);
        if self.members[i].stopping && self.members[i].calls.is_empty() {
            let m = &mut self.members[i];
            m.core.tick(now, 0);
            let leave = Note::Leave(m.core.leave());
            m.alive = false;
            self.broadcast(leave, now);
            return;
        }
        if now >= self.members[i].next_tick {
            let m = &mut self.members[i];
            m.next_tick += TICK;
            let shares = m.core.tick(now, m.calls.len() as u32);
            m.schedule
                .set_period(shares.budget.period(shares.rate_units));
            m.limit = shares.calls;
            if m.core.due(now) {
                let note = Note::Heartbeat(m.core.heartbeat(now));
                self.broadcast(note, now);
            }
        }
        let m = &mut self.members[i];
        let room = m.limit.is_none_or(|l| (m.calls.len() as u32) < l);
        if !m.stopping && room && m.schedule.try_grant(now).is_ok() {
            let late = Duration::from_millis(self.rng.random_range(0..20));
            self.arrivals.push(now - self.t0 + late);
            let latency = self.rng.random_range(self.latency.0..=self.latency.1);
            m.calls.push(now + MS * latency as u32);
            m.made += 1;
        }
    }

    /// The most calls that reached the API within any `window`.
    fn densest(&mut self, window: Duration) -> usize {
        self.arrivals.sort();
        let a = &self.arrivals;
        (0..a.len())
            .map(|i| a[i..].iter().take_while(|&&t| t < a[i] + window).count())
            .max()
            .unwrap_or(0)
    }

    /// Calls that reached the API between `from_s` and `to_s`.
    fn calls_between(&self, from_s: u64, to_s: u64) -> usize {
        let (from, to) = (Duration::from_secs(from_s), Duration::from_secs(to_s));
        self.arrivals
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count()
    }
}

/// Three members, a fourth joining, one stopped, one killed, for several seeds: never
/// more than 10 calls (600 a minute) in any second nor more than 4 in flight, and
/// the limit used to at least 90% once the fleet has settled after each change.
#[test]
fn a_fleet_that_changes_keeps_every_second_within_the_limit() {
    for seed in 0..6 {
        let mut fleet = Fleet::new(seed, (600, 4), &["c", "a", "d", "b"], (20, 200));
        let events = [
            (0, Event::Start(0)),
            (5, Event::Start(1)),
            (12, Event::Start(2)),
            (10_000, Event::Start(3)),
            (20_000, Event::Kill(1)),
            (30_000, Event::Stop(0)),
        ];
        fleet.run(40, &events);
        assert!(
            fleet.densest(Duration::from_secs(1)) <= 10,
            "seed {seed}: {} in a second",
            fleet.densest(Duration::from_secs(1))
        );
        assert!(
            fleet.most_in_flight <= 4,
            "seed {seed}: {} in flight",
            fleet.most_in_flight
        );
        for (from, to, what) in [
            (4, 10, "started"),
            (14, 20, "joined"),
            (26, 30, "killed"),
            (34, 40, "stopped"),
        ] {
            let calls = fleet.calls_between(from, to);
            let floor = 0.9 * 10.0 * (to - from) as f64;
            assert!(
                calls as f64 >= floor,
                "seed {seed}, {what}: {calls} calls in {from}..{to} s"
            );
        }
    }
}

/// The rate alone (no limit on calls in flight, short calls): the fleet uses at least
/// 90% of it once settled, and a killed member's share is back within 5 s.
#[test]
fn survivors_take_up_a_dead_members_share_within_seconds() {
    for seed in 0..4 {
        let mut fleet = Fleet::new(seed, (600, 0), &["a", "b", "c"], (5, 20));
        let events = [
            (0, Event::Start(0)),
            (3, Event::Start(1)),
            (7, Event::Start(2)),
            (10_000, Event::Kill(1)),
        ];
        fleet.run(20, &events);
        assert!(fleet.densest(Duration::from_secs(1)) <= 10, "seed {seed}");
        let settled = fleet.calls_between(4, 10);
        assert!(
            settled >= 54,
            "seed {seed}: {settled} of 60 with three members"
        );
        let after = fleet.calls_between(15, 20);
        assert!(
            after >= 45,
            "seed {seed}: {after} of 50 once the dead one's share is back"
        );
    }
}

/// `MAX_CONCURRENT_CALLS=2` over three members: never more than 2 in flight, and no
/// member goes without calls for long (the row of those served moves on).
#[test]
fn fewer_calls_than_members_still_serve_every_member() {
    for seed in 0..4 {
        let mut fleet = Fleet::new(seed, (6000, 2), &["a", "b", "c"], (100, 400));
        let events = [
            (0, Event::Start(0)),
            (1, Event::Start(1)),
            (2, Event::Start(2)),
        ];
        fleet.run(40, &events);
        assert!(
            fleet.most_in_flight <= 2,
            "seed {seed}: {}",
            fleet.most_in_flight
        );
        for (i, m) in fleet.members.iter().enumerate() {
            assert!(
                m.made >= 20,
                "seed {seed}: member {i} made {} calls",
                m.made
            );
        }
    }
}

/// Below 60 a minute, one call per `60 s / L`: 30 a minute over three members never
/// puts two calls within two seconds, and every member calls in turn.
#[test]
fn a_slow_limit_is_one_call_per_window_for_the_whole_fleet() {
    let mut fleet = Fleet::new(1, (30, 0), &["a", "b", "c"], (5, 20));
    let events = [
        (0, Event::Start(0)),
        (1, Event::Start(1)),
        (2, Event::Start(2)),
    ];
    fleet.run(60, &events);
    assert!(fleet.densest(Duration::from_secs(2)) <= 1);
    assert!(
        fleet.members.iter().all(|m| m.made >= 3),
        "every member calls"
    );
    assert!(
        fleet.arrivals.len() >= 20,
        "{} calls in a minute at 30/min",
        fleet.arrivals.len()
    );
}

/// Notes suddenly take two seconds: members see their own echo late, fall back, and
/// the fleet stays within the limit, at the cost of throughput only.
#[test]
fn late_control_messages_cost_throughput_never_a_burst() {
    for seed in 0..4 {
        let mut fleet = Fleet::new(seed, (600, 4), &["a", "b", "c"], (5, 20));
        let events = [
            (0, Event::Start(0)),
            (1, Event::Start(1)),
            (2, Event::Start(2)),
            (8_000, Event::Delay(Duration::from_secs(2))),
            (16_000, Event::Delay(Duration::from_millis(10))),
        ];
        fleet.run(30, &events);
        assert!(fleet.densest(Duration::from_secs(1)) <= 10, "seed {seed}");
        assert!(fleet.most_in_flight <= 4, "seed {seed}");
        let during = fleet.calls_between(9, 16);
        assert!(during > 0, "seed {seed}: the fallback still calls");
        let after = fleet.calls_between(24, 30);
        assert!(
            after >= 50,
            "seed {seed}: {after} after the delays went away"
        );
    }
}
