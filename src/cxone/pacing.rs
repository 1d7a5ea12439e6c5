//! Pacing shared by every call of the process: `RATE_LIMIT_PER_MINUTE` spread evenly,
//! and a global pause that a 429 sets for everyone.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

pub struct Pacer {
    /// One call per `60 s / limit`, with a burst of one: calls are spread evenly, so
    /// no second ever sees more than a sixtieth of the per-minute limit.
    limiter: DefaultDirectRateLimiter,
    /// Until when the API asked everyone to wait (the latest `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn per_minute(limit: u32) -> Self {
        let limit = limit.max(1);
        let period = (Duration::from_secs(60) / limit).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("period is positive")
            .allow_burst(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::direct(quota),
            paused_until: Mutex::new(None),
        }
    }

    /// Waits until this caller may make one call.
    pub async fn ready(&self) {
        loop {
            if let Some(until) = self.pause_deadline() {
                tokio::time::sleep_until(until).await;
                continue;
            }
            self.limiter.until_ready().await;
            // A 429 may have arrived while we waited for our slot; then wait again.
            if self.pause_deadline().is_none() {
                return;
            }
        }
    }

    /// Stops every call of the process for `wait` (a 429's `Retry-After`).
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    fn pause_deadline(&self) -> Option<Instant> {
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn spreads_calls_evenly() {
        let pacer = Arc::new(Pacer::per_minute(600));
        let start = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let p = pacer.clone();
            tasks.push(tokio::spawn(async move {
                p.ready().await;
                std::time::Instant::now()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
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
    async fn a_pause_holds_every_caller() {
        let pacer = Arc::new(Pacer::per_minute(1_000_000));
        pacer.pause_for(Duration::from_millis(300));
        let start = std::time::Instant::now();
        let a = tokio::spawn({
            let p = pacer.clone();
            async move { p.ready().await }
        });
        pacer.ready().await;
        a.await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(290),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_shorter_pause_does_not_cut_a_longer_one() {
        let pacer = Pacer::per_minute(1_000_000);
        pacer.pause_for(Duration::from_millis(200));
        pacer.pause_for(Duration::from_millis(10));
        let start = std::time::Instant::now();
        pacer.ready().await;
        assert!(start.elapsed() >= Duration::from_millis(190));
    }
}
