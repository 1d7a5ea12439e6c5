//! Even pacing and the pause a rate limit asks for: the fixed per-process rate of v1
//! (governor, one call per `60 s / limit`) and the fleet share, whose rate changes
//! while callers wait.

use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Until when the API asked every caller to wait: the latest end of any pause asked.
#[derive(Default)]
pub(crate) struct Pause {
    until: Mutex<Option<Instant>>,
}

impl Pause {
    /// Waits `wait` from now, unless a pause already runs longer.
    pub(crate) fn extend(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = lock(&self.until);
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// The end of the pause under way, if one is.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let mut paused = lock(&self.until);
        match *paused {
            Some(until) if until > Instant::now() => Some(until),
            Some(_) => {
                *paused = None;
                None
            }
            None => None,
        }
    }
}

/// The rule of even pacing on grant times (GCRA with a burst of one, as governor's
/// quota of v1): a call may go once `period` has passed since the previous grant.
///
/// The period may change at any time and the rule then holds with the new period from
/// the last grant: a shrink applies to the very next call, and no change ever lets two
/// calls closer together than the period in force when the second one goes.
#[derive(Debug)]
pub(crate) struct Schedule {
    period: Option<Duration>,
    last: Option<Instant>,
}

impl Schedule {
    /// `None`: no calls until a period is set.
    pub(crate) fn new(period: Option<Duration>) -> Self {
        Self { period, last: None }
    }

    pub(crate) fn set_period(&mut self, period: Option<Duration>) {
        self.period = period;
    }

    /// `Ok`: the call may go now (and counts as made). `Err(Some(t))`: not before `t`.
    /// `Err(None)`: no calls at all until the period changes.
    pub(crate) fn try_grant(&mut self, now: Instant) -> Result<(), Option<Instant>> {
        let period = self.period.ok_or(None)?;
        match self.last {
            Some(last) if now < last + period => Err(Some(last + period)),
            _ => {
                self.last = Some(now);
                Ok(())
            }
        }
    }
}

/// How the calls of this process are paced.
pub(crate) enum Rate {
    /// `LIMIT_SCOPE=process`: v1's limiter, unchanged.
    Fixed(DefaultDirectRateLimiter),
    /// `LIMIT_SCOPE=fleet`: this member's share, set by the fleet as members come and go.
    Shared(SharedRate),
}

impl Rate {
    /// One call every `60 s / limit`, with a burst of one: calls are spread evenly.
    pub(crate) fn fixed(per_minute: u32) -> Self {
        let limit = per_minute.max(1);
        let period = (Duration::from_secs(60) / limit).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("period is positive")
            .allow_burst(NonZeroU32::MIN);
        Rate::Fixed(RateLimiter::direct(quota))
    }

    /// Waits until this caller may make one call, honouring `pause`.
    pub(crate) async fn ready(&self, pause: &Pause) {
        match self {
            Rate::Fixed(limiter) => loop {
                if let Some(until) = pause.deadline() {
                    tokio::time::sleep_until(until).await;
                    continue;
                }
                limiter.until_ready().await;
                // A 429 may have arrived while we waited for our slot; then wait again.
                if pause.deadline().is_none() {
                    return;
                }
            },
            Rate::Shared(shared) => shared.ready(pause).await,
        }
    }
}

/// A rate that changes while callers wait: callers queue first come, first served,
/// and only the first of them sleeps on the [`Schedule`], waking early when the
/// period changes.
pub(crate) struct SharedRate {
    schedule: Mutex<Schedule>,
    /// Held by the caller at the head of the queue (tokio's mutex is fair).
    head: tokio::sync::Mutex<()>,
    changed: Notify,
}

impl SharedRate {
    /// Starts with no calls at all: a member calls only once the fleet gave it a share.
    pub(crate) fn new() -> Self {
        Self {
            schedule: Mutex::new(Schedule::new(None)),
            head: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
        }
    }

    pub(crate) fn set_period(&self, period: Option<Duration>) {
        lock(&self.schedule).set_period(period);
        self.changed.notify_waiters();
    }

    async fn ready(&self, pause: &Pause) {
        let _head = self.head.lock().await;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the schedule is read, so a change in between wakes us.
            changed.as_mut().enable();
            if let Some(until) = pause.deadline() {
                tokio::time::sleep_until(until).await;
                continue;
            }
            let next = lock(&self.schedule).try_grant(Instant::now());
            match next {
                Ok(()) => return,
                Err(Some(at)) => tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = &mut changed => {}
                },
                Err(None) => changed.await,
            }
        }
    }
}

/// A panic elsewhere must not turn every later call into a panic too.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn grant_times(rate: Arc<Rate>, pause: Arc<Pause>, n: usize) -> Vec<Instant> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (rate, pause) = (rate.clone(), pause.clone());
                tokio::spawn(async move {
                    rate.ready(&pause).await;
                    Instant::now()
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
        times
    }

    #[tokio::test]
    async fn the_fixed_rate_spreads_calls_evenly() {
        let start = Instant::now();
        let times = grant_times(Arc::new(Rate::fixed(600)), Arc::default(), 6).await;
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(90),
                "calls {gap:?} apart at 600/min"
            );
        }
        assert!(start.elapsed() >= Duration::from_millis(450));
    }

    #[tokio::test]
    async fn a_pause_holds_every_caller_of_either_rate() {
        let shared = SharedRate::new();
        shared.set_period(Some(Duration::from_micros(1)));
        for rate in [Rate::fixed(1_000_000), Rate::Shared(shared)] {
            let pause = Arc::new(Pause::default());
            pause.extend(Duration::from_millis(300));
            // A shorter pause asked later does not cut the longer one.
            pause.extend(Duration::from_millis(10));
            let start = Instant::now();
            let times = grant_times(Arc::new(rate), pause, 2).await;
            assert!(times[0] - start >= Duration::from_millis(290), "{times:?}");
        }
    }

    #[tokio::test]
    async fn a_shared_rate_applies_a_new_period_to_the_very_next_call() {
        let ms = Duration::from_millis;
        let shared = SharedRate::new();
        shared.set_period(Some(ms(50)));
        let rate = Arc::new(Rate::Shared(shared));
        let Rate::Shared(shared) = &*rate else {
            unreachable!()
        };
        let pause = Arc::new(Pause::default());
        let first = grant_times(rate.clone(), pause.clone(), 2).await;
        let gap = first[1] - first[0];
        assert!(gap >= ms(50) && gap < ms(150), "{gap:?}");
        // Slower: the next call waits the new period from the last grant.
        shared.set_period(Some(ms(300)));
        let next = grant_times(rate.clone(), pause.clone(), 1).await;
        let gap = next[0] - first[1];
        assert!(gap >= ms(300) && gap < ms(400), "{gap:?}");
        // No share: callers wait, and go as soon as a share comes back.
        shared.set_period(None);
        let waiting = tokio::spawn({
            let (rate, pause) = (rate.clone(), pause.clone());
            async move { grant_times(rate, pause, 1).await }
        });
        tokio::time::sleep(ms(400)).await;
        assert!(!waiting.is_finished());
        let given = Instant::now();
        shared.set_period(Some(ms(50)));
        let resumed = waiting.await.unwrap();
        assert!(
            resumed[0] - given < ms(100),
            "woken by the change, not by a timer"
        );
    }

    #[test]
    fn a_schedule_never_grants_two_calls_closer_than_its_period() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Schedule::new(Some(ms(100)));
        assert_eq!(s.try_grant(t0), Ok(()));
        assert_eq!(s.try_grant(t0 + ms(50)), Err(Some(t0 + ms(100))));
        // Faster from the last grant, not from the change.
        s.set_period(Some(ms(20)));
        assert_eq!(s.try_grant(t0 + ms(10)), Err(Some(t0 + ms(20))));
        assert_eq!(s.try_grant(t0 + ms(20)), Ok(()));
        s.set_period(None);
        assert_eq!(s.try_grant(t0 + ms(500)), Err(None));
    }
}
