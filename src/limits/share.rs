//! The share arithmetic: `RATE_LIMIT_PER_MINUTE` as whole units of one-second pacing,
//! and each member's part of a fleet-wide total.
//!
//! Why whole units: a member pacing evenly at `r` calls a second makes at most
//! `ceil(r)` calls in any one second, whatever its phase. Members cannot agree on a
//! phase (their clocks differ), so the only sum that holds for every alignment is a
//! sum of whole numbers: with shares of `u_i` calls per second and `Σ u_i <= L / 60`,
//! no second ever sees more than a sixtieth of the minute's limit.

use std::time::Duration;

/// Each unit is paced this much slower than its nominal rate. A call's decision and
/// its arrival at the API are a few milliseconds apart, and not always the same few:
/// with the margin, `u` calls spaced by at least `window * (1 + MARGIN) / u` fit in a
/// window only if their arrivals shift by more than `MARGIN * window` (31 ms a second)
/// against each other.
pub(crate) const MARGIN: f64 = 1.0 / 32.0;

/// `RATE_LIMIT_PER_MINUTE` as `units` calls in any `window`: one-second windows when
/// the limit allows at least one call a second, else one call per `60 s / limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateBudget {
    pub(crate) units: u32,
    pub(crate) window: Duration,
}

impl RateBudget {
    pub(crate) fn per_minute(limit: u32) -> Self {
        let limit = limit.max(1);
        if limit >= 60 {
            Self {
                units: limit / 60,
                window: Duration::from_secs(1),
            }
        } else {
            Self {
                units: 1,
                window: Duration::from_secs(60) / limit,
            }
        }
    }

    /// Time between two calls of a member holding `units` (fractions only for the
    /// fallback of a member cut off from the fleet); `None` for no calls at all.
    pub(crate) fn period(&self, units: f64) -> Option<Duration> {
        (units > 0.0).then(|| self.window.mul_f64((1.0 + MARGIN) / units))
    }

    /// What `units` come to in calls per minute, as the pacer spaces them.
    pub(crate) fn per_minute_of(&self, units: f64) -> f64 {
        units * 60.0 / self.window.as_secs_f64() / (1.0 + MARGIN)
    }

    /// How long calls made at a rate stay inside a window that a peer may count:
    /// a member that slows down keeps claiming its old rate this long.
    pub(crate) fn trail(&self) -> Duration {
        self.window.mul_f64(1.0 + MARGIN)
    }
}

/// The share of `total` units of the member at `rank` among `members` in `turn`:
/// everyone gets `total / members`, and the remainder goes to `total % members`
/// members in a row that moves on by one each turn (see [`rotates`]). The shares
/// always sum to `total`; with fewer units than members (`MAX_CONCURRENT_CALLS=2`
/// over 3 replicas), a member's share is 0 for some turns, never for `members` turns
/// running.
pub(crate) fn share(total: u32, members: usize, rank: usize, turn: u64) -> u32 {
    let k = members.max(1) as u64;
    let base = u64::from(total) / k;
    let extra = u64::from(total) % k;
    let seat = (rank as u64 % k + k - turn % k) % k;
    u32::try_from(base + u64::from(seat < extra)).unwrap_or(u32::MAX)
}

/// Whether turns must move the remainder on: only when some member's share would be
/// 0 for good. An uneven remainder otherwise stays with the first members, since
/// every move of a unit costs the fleet that unit for a window.
pub(crate) fn rotates(total: u32, members: usize) -> bool {
    total > 0 && (total as usize) < members
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::pace::Schedule;
    use rand::{Rng, SeedableRng};
    use tokio::time::Instant;

    #[test]
    fn budgets_are_whole_calls_per_second_or_one_call_per_window() {
        let b = RateBudget::per_minute(600);
        assert_eq!((b.units, b.window), (10, Duration::from_secs(1)));
        // 1000 a minute is 16.67 a second: 16 whole calls in any second.
        assert_eq!(RateBudget::per_minute(1000).units, 16);
        let slow = RateBudget::per_minute(30);
        assert_eq!((slow.units, slow.window), (1, Duration::from_secs(2)));
        assert_eq!(RateBudget::per_minute(0), RateBudget::per_minute(1));
        let p = b.period(3.0).unwrap();
        assert!(
            (p.as_secs_f64() - (1.0 + MARGIN) / 3.0).abs() < 1e-9,
            "{p:?}"
        );
        assert_eq!(b.period(0.0), None);
        assert!((b.per_minute_of(10.0) - 600.0 / (1.0 + MARGIN)).abs() < 1e-6);
    }

    #[test]
    fn shares_sum_to_the_total_in_every_turn() {
        for total in [0, 1, 2, 4, 10, 16, 17, 1000] {
            for members in 1..=12 {
                for turn in 0..30 {
                    let sum: u32 = (0..members).map(|r| share(total, members, r, turn)).sum();
                    assert_eq!(sum, total, "{total} over {members} in turn {turn}");
                    let (min, max) = (0..members)
                        .map(|r| share(total, members, r, turn))
                        .fold((u32::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
                    assert!(max - min <= 1, "fair: {min}..{max}");
                }
                assert_eq!(
                    rotates(total, members),
                    0 < total && (total as usize) < members
                );
            }
        }
    }

    #[test]
    fn fewer_units_than_members_still_reach_everyone_in_turn() {
        for (total, members) in [(1, 3), (2, 3), (4, 6), (1, 10)] {
            for rank in 0..members {
                let idle_turns = (0..members as u64)
                    .filter(|&t| share(total, members, rank, t) == 0)
                    .count();
                assert!(idle_turns < members, "rank {rank} of {members} starves");
            }
        }
    }

    /// Grants of a member paced at `units` of `budget`, its first call `phase` into the
    /// run, each reaching the API up to `jitter` late.
    fn arrivals(
        budget: RateBudget,
        units: u32,
        phase: Duration,
        jitter: Duration,
        rng: &mut impl Rng,
    ) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(budget.period(f64::from(units)));
        let mut now = t0 + phase;
        let mut out = Vec::new();
        while now < t0 + Duration::from_secs(12) {
            match schedule.try_grant(now) {
                Ok(()) => {
                    let late = jitter.mul_f64(rng.random::<f64>());
                    out.push(now - t0 + late);
                }
                Err(Some(at)) => now = at,
                Err(None) => break,
            }
        }
        out
    }

    /// The most calls that any window of `len` holds (a window that starts at a call).
    fn densest(calls: &mut [Duration], len: Duration) -> usize {
        calls.sort();
        (0..calls.len())
            .map(|i| {
                calls[i..]
                    .iter()
                    .take_while(|&&c| c < calls[i] + len)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// The bound of the contract, for any alignment of the members: shares paced each
    /// at its own phase never put more than `L / 60` calls in one second, even when
    /// every call reaches the API up to 30 ms late. Without the whole-unit shares (each
    /// member at a third of 600 a minute, phases lined up) a second holds 12.
    #[test]
    fn no_second_ever_holds_more_than_a_sixtieth_of_the_minute() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for limit in [60, 90, 600, 1000, 1200, 3600] {
            let budget = RateBudget::per_minute(limit);
            for members in 1..=5usize {
                for turn in 0..3 {
                    for _ in 0..20 {
                        let mut calls = Vec::new();
                        for rank in 0..members {
                            let units = share(budget.units, members, rank, turn);
                            let phase = Duration::from_millis(rng.random_range(0..1000));
                            let jitter = Duration::from_millis(30);
                            calls.extend(arrivals(budget, units, phase, jitter, &mut rng));
                        }
                        let most = densest(&mut calls, Duration::from_secs(1));
                        assert!(
                            most as u32 <= budget.units && most as f64 <= f64::from(limit) / 60.0,
                            "{limit}/min over {members}: {most} calls in one second"
                        );
                    }
                }
            }
        }
        // The flaw whole units avoid: three thirds of 600 a minute, lined up.
        let third = RateBudget {
            units: 10,
            window: Duration::from_secs(3),
        };
        let mut calls: Vec<Duration> = (0..3)
            .flat_map(|i| {
                let phase = Duration::from_millis(i * 10);
                arrivals(third, 10, phase, Duration::ZERO, &mut rng)
            })
            .collect();
        assert!(densest(&mut calls, Duration::from_secs(1)) > 10);
    }
}
