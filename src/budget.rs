//! The byte budget: file bytes held in memory by all jobs at once stay under
//! `MAX_INFLIGHT_BYTES`, so that a burst of large files waits instead of
//! exhausting memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::names;

/// Permits are KiB: a semaphore counts in `u32`, and a KiB grain costs nothing.
const UNIT: u64 = 1024;

#[derive(Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    /// Jobs waiting in [`ByteBudget::reserve`].
    waiting: Arc<AtomicUsize>,
    capacity: u32,
}

/// Bytes reserved by one job; released when dropped.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        metrics::gauge!(names::IN_FLIGHT_BYTES).decrement(self.bytes as f64);
    }
}

impl ByteBudget {
    pub fn new(max_bytes: u64) -> Self {
        let capacity = u32::try_from(max_bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            permits: Arc::new(Semaphore::new(capacity as usize)),
            waiting: Arc::new(AtomicUsize::new(0)),
            capacity,
        }
    }

    /// Waits until `bytes` fit beside what other jobs hold. A file larger than the
    /// whole budget takes all of it (config ensures MAX_PAYLOAD_BYTES fits).
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        // A guard, not a decrement after the await: a job cancelled while it waits
        // (shutdown, a lost channel) must not leave `try_reserve` refusing forever.
        let waiting = Waiting::enter(&self.waiting);
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(self.units(bytes))
            .await
            .expect("the budget's semaphore is never closed");
        drop(waiting);
        metrics::gauge!(names::IN_FLIGHT_BYTES).increment(bytes as f64);
        Reservation {
            _permit: permit,
            bytes,
        }
    }

    /// Reserves `bytes` only if they fit right now and nobody waits before us (the
    /// semaphore is fair to waiters; jumping the queue would starve large files).
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(self.units(bytes))
            .ok()?;
        metrics::gauge!(names::IN_FLIGHT_BYTES).increment(bytes as f64);
        Some(Reservation {
            _permit: permit,
            bytes,
        })
    }

    fn units(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity)
    }

    /// Bytes free right now (tests and metrics).
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }
}

/// Counts one waiter for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn large_files_wait_for_room() {
        let budget = ByteBudget::new(10 * UNIT);
        let a = budget.reserve(6 * UNIT).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(6 * UNIT).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "12 KiB must not fit in a 10 KiB budget"
        );
        drop(a);
        let b = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(budget.available(), 4 * UNIT);
        drop(b);
        assert_eq!(budget.available(), 10 * UNIT);
    }

    #[tokio::test]
    async fn try_reserve_never_jumps_the_queue() {
        let budget = ByteBudget::new(10 * UNIT);
        let held = budget.reserve(8 * UNIT).await;
        let large = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(5 * UNIT).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            budget.try_reserve(UNIT).is_none(),
            "a small file must not pass a waiting large one"
        );
        drop(held);
        let large = tokio::time::timeout(Duration::from_secs(1), large)
            .await
            .unwrap()
            .unwrap();
        assert!(
            budget.try_reserve(UNIT).is_some(),
            "room and nobody waiting"
        );
        drop(large);
    }

    #[tokio::test]
    async fn a_cancelled_wait_does_not_block_later_jobs() {
        let budget = ByteBudget::new(10 * UNIT);
        let held = budget.reserve(8 * UNIT).await;
        let cancelled =
            tokio::time::timeout(Duration::from_millis(20), budget.reserve(5 * UNIT)).await;
        assert!(cancelled.is_err(), "5 KiB cannot fit beside 8 of 10");
        drop(held);
        assert!(
            budget.try_reserve(UNIT).is_some(),
            "the waiter that gave up no longer counts"
        );
    }

    #[tokio::test]
    async fn a_file_over_the_budget_takes_all_of_it() {
        let budget = ByteBudget::new(4 * UNIT);
        let r = budget.reserve(100 * UNIT).await;
        assert_eq!(budget.available(), 0);
        drop(r);
        let _small = budget.reserve(1).await;
        assert_eq!(budget.available(), 3 * UNIT);
    }
}
