//! The byte budget: file bytes held in memory by all jobs at once stay under
//! `MAX_INFLIGHT_BYTES`, so that a burst of large files waits instead of
//! exhausting memory.
//!
//! Two kinds of reservation draw on it. A source whose size is known and trusted
//! (`file://`, an object's metadata) reserves that size before reading, and waits
//! for room as long as it takes: every holder is bounded in time. A source whose
//! size is unknown or only claimed (`https://`) starts with nothing and grows its
//! reservation as bytes arrive, from a share of the budget of its own, waiting a
//! bounded time for each step: a server that announces much and sends little never
//! holds more than it sent, and all such servers together never hold more than the
//! share, so they cannot take what local files and objects need.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::telemetry::names;

/// Permits are KiB: a semaphore counts in `u32`, and a KiB grain costs nothing.
const UNIT: u64 = 1024;

#[derive(Clone)]
pub struct ByteBudget {
    /// The whole budget: every reservation holds its bytes here.
    permits: Arc<Semaphore>,
    /// The share that reservations of untrusted size may hold among them, on top of
    /// (not instead of) their permits in `permits`.
    streamed: Arc<Semaphore>,
    /// Jobs waiting in [`ByteBudget::reserve`].
    waiting: Arc<AtomicUsize>,
    capacity: u32,
    share: u32,
}

/// Bytes reserved by one job; released when dropped.
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    /// Set for reservations of untrusted size: what they hold of the share.
    streamed: Option<Streamed>,
    bytes: u64,
}

struct Streamed {
    budget: ByteBudget,
    permit: Option<OwnedSemaphorePermit>,
}

/// A reservation could not grow within its wait: the budget (or the share of
/// untrusted sources) stayed full. The reservation keeps what it held; dropping it
/// gives that back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no room for {wanted} bytes in MAX_INFLIGHT_BYTES within {waited:?} ({held} held)")]
pub struct NoRoom {
    pub wanted: u64,
    pub held: u64,
    pub waited: Duration,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        crate::hot!(gauge, names::IN_FLIGHT_BYTES).decrement(self.bytes as f64);
    }
}

impl ByteBudget {
    /// A budget of `max_bytes`, half of which reservations of untrusted size may hold.
    pub fn new(max_bytes: u64) -> Self {
        Self::with_share(max_bytes, max_bytes / 2)
    }

    /// The worker's budget: `max_inflight` bytes, of which downloads of untrusted size
    /// may hold half, or one whole file of `max_payload` bytes if that is more (so
    /// that the largest file allowed can always arrive).
    pub fn for_files(max_inflight: u64, max_payload: u64) -> Self {
        Self::with_share(max_inflight, (max_inflight / 2).max(max_payload))
    }

    /// A budget of `max_bytes`, `share` of which reservations of untrusted size may hold.
    pub fn with_share(max_bytes: u64, share: u64) -> Self {
        let capacity = u32::try_from(max_bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .max(1);
        let share = u32::try_from(share.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, capacity);
        Self {
            permits: Arc::new(Semaphore::new(capacity as usize)),
            streamed: Arc::new(Semaphore::new(share as usize)),
            waiting: Arc::new(AtomicUsize::new(0)),
            capacity,
            share,
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
            .acquire_many_owned(units(bytes, self.capacity))
            .await
            .expect("the budget's semaphore is never closed");
        drop(waiting);
        Reservation::sized(permit, bytes)
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
            .try_acquire_many_owned(units(bytes, self.capacity))
            .ok()?;
        Some(Reservation::sized(permit, bytes))
    }

    /// An empty reservation for a source of untrusted size, to [`Reservation::grow`]
    /// as its bytes arrive.
    pub fn streamed(&self) -> Reservation {
        Reservation {
            permit: None,
            streamed: Some(Streamed {
                budget: self.clone(),
                permit: None,
            }),
            bytes: 0,
        }
    }

    /// Bytes free right now (tests and metrics).
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }

    /// Bytes of the untrusted sources' share free right now.
    pub fn streamed_available(&self) -> u64 {
        self.streamed.available_permits() as u64 * UNIT
    }
}

/// Whole KiB for `bytes`, at least one, at most the whole semaphore.
fn units(bytes: u64, capacity: u32) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT))
        .unwrap_or(u32::MAX)
        .clamp(1, capacity)
}

impl Reservation {
    fn sized(permit: OwnedSemaphorePermit, bytes: u64) -> Self {
        crate::hot!(gauge, names::IN_FLIGHT_BYTES).increment(bytes as f64);
        Reservation {
            permit: Some(permit),
            streamed: None,
            bytes,
        }
    }

    /// Bytes this reservation accounts for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Grows a reservation of untrusted size to hold at least `bytes`, waiting at
    /// most `wait` in all for room (first in the share, then in the budget). A
    /// reservation of known size never grows: it returns at once.
    pub async fn grow(&mut self, bytes: u64, wait: Duration) -> Result<(), NoRoom> {
        let Some(streamed) = &mut self.streamed else {
            return Ok(());
        };
        let budget = &streamed.budget;
        let held = self.permit.as_ref().map_or(0, |p| p.num_permits()) as u32;
        let wanted = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        if wanted <= held {
            return Ok(());
        }
        let no_room = NoRoom {
            wanted: bytes,
            held: self.bytes,
            waited: wait,
        };
        if wanted > budget.share {
            // More than the share can ever hold: waiting would not help.
            return Err(NoRoom {
                waited: Duration::ZERO,
                ..no_room
            });
        }
        let more = wanted - held;
        // The share first: while untrusted sources fill it, they wait there and
        // leave the rest of the budget to others.
        let acquire = async {
            let share = budget.streamed.clone().acquire_many_owned(more).await?;
            let all = budget.permits.clone().acquire_many_owned(more).await?;
            Ok::<_, AcquireError>((share, all))
        };
        let (share, all) = match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permits)) => permits,
            Ok(Err(_)) | Err(_) => return Err(no_room),
        };
        merge(&mut streamed.permit, share);
        merge(&mut self.permit, all);
        let grown = u64::from(wanted) * UNIT;
        crate::hot!(gauge, names::IN_FLIGHT_BYTES).increment((grown - self.bytes) as f64);
        self.bytes = grown;
        Ok(())
    }
}

fn merge(held: &mut Option<OwnedSemaphorePermit>, more: OwnedSemaphorePermit) {
    match held {
        Some(permit) => permit.merge(more),
        None => *held = Some(more),
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

    #[tokio::test]
    async fn streamed_reservations_hold_what_arrived_and_no_more_than_their_share() {
        let budget = ByteBudget::with_share(16 * UNIT, 8 * UNIT);
        let wait = Duration::from_millis(10);
        let mut a = budget.streamed();
        assert_eq!((a.bytes(), budget.available()), (0, 16 * UNIT));
        a.grow(3 * UNIT, wait).await.unwrap();
        a.grow(UNIT, wait).await.unwrap();
        assert_eq!((a.bytes(), budget.available()), (3 * UNIT, 13 * UNIT));
        let mut b = budget.streamed();
        b.grow(5 * UNIT, wait).await.unwrap();
        assert_eq!(budget.streamed_available(), 0);
        // The share is spent: a third untrusted source waits, then gives up...
        let mut c = budget.streamed();
        assert_eq!(
            c.grow(UNIT, wait).await,
            Err(NoRoom {
                wanted: UNIT,
                held: 0,
                waited: wait
            })
        );
        // ...while sized files still find the rest of the budget.
        let sized = budget
            .try_reserve(8 * UNIT)
            .expect("the other half is free");
        drop((a, b, c, sized));
        assert_eq!(budget.available(), 16 * UNIT);
        assert_eq!(budget.streamed_available(), 8 * UNIT);
    }

    #[tokio::test]
    async fn a_streamed_reservation_waits_for_the_budget_a_bounded_time() {
        let budget = ByteBudget::with_share(8 * UNIT, 8 * UNIT);
        let held = budget.reserve(6 * UNIT).await;
        let mut r = budget.streamed();
        r.grow(2 * UNIT, Duration::from_millis(10)).await.unwrap();
        let failed = r.grow(4 * UNIT, Duration::from_millis(20)).await;
        assert!(failed.is_err(), "6 + 4 KiB cannot fit in 8");
        assert_eq!(r.bytes(), 2 * UNIT, "it keeps what it held");
        assert_eq!(
            budget.streamed_available(),
            6 * UNIT,
            "the share taken for the failed step was given back"
        );
        let grows =
            tokio::spawn(async move { r.grow(4 * UNIT, Duration::from_secs(5)).await.map(|()| r) });
        drop(held);
        let r = grows.await.unwrap().expect("room came within the wait");
        assert_eq!(budget.available(), 4 * UNIT);
        drop(r);
        assert_eq!(budget.available(), 8 * UNIT);
    }

    #[tokio::test]
    async fn more_than_the_share_fails_at_once() {
        let budget = ByteBudget::for_files(64 * UNIT, 8 * UNIT);
        let mut r = budget.streamed();
        r.grow(32 * UNIT, Duration::from_secs(60)).await.unwrap();
        let started = std::time::Instant::now();
        assert!(r.grow(33 * UNIT, Duration::from_secs(60)).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
        // The share is at least one whole file, whatever the budget.
        let tight = ByteBudget::for_files(8 * UNIT, 8 * UNIT);
        let mut whole = tight.streamed();
        whole
            .grow(8 * UNIT, Duration::from_millis(10))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn sized_reservations_do_not_grow() {
        let budget = ByteBudget::new(8 * UNIT);
        let mut r = budget.reserve(2 * UNIT).await;
        r.grow(6 * UNIT, Duration::ZERO).await.unwrap();
        assert_eq!((r.bytes(), budget.available()), (2 * UNIT, 6 * UNIT));
    }
}
