//! Calls in flight at once: a fair semaphore whose size the fleet may change while
//! calls hold it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// `MAX_CONCURRENT_CALLS` (or this member's share of it). Waiters are served first
/// come, first served (tokio's semaphore is fair).
pub(crate) struct Slots {
    semaphore: Arc<Semaphore>,
    sizes: Mutex<Sizes>,
    /// Slots taken and not yet given back: what this member has in flight.
    held: AtomicU32,
    /// Woken when a slot comes back while more were held than the size allows: the
    /// fleet then has a smaller claim to announce.
    pub(crate) released: Notify,
}

struct Sizes {
    limit: u32,
    /// Slots to take out of circulation as they come back: a shrink below what is
    /// held now cannot take them from the calls holding them.
    debt: u32,
}

/// One slot, given back when dropped.
pub(crate) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
}

impl Slots {
    pub(crate) fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            semaphore: Arc::new(Semaphore::new(limit as usize)),
            sizes: Mutex::new(Sizes { limit, debt: 0 }),
            held: AtomicU32::new(0),
            released: Notify::new(),
        })
    }

    pub(crate) async fn acquire(self: &Arc<Self>) -> Slot {
        let permit = Arc::clone(&self.semaphore)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.held.fetch_add(1, Ordering::Relaxed);
        Slot {
            permit: Some(permit),
            slots: Arc::clone(self),
        }
    }

    pub(crate) fn held(&self) -> u32 {
        self.held.load(Ordering::Relaxed)
    }

    pub(crate) fn limit(&self) -> u32 {
        self.lock().limit
    }

    /// Grows at once; shrinks by the free slots now and by the held ones as they
    /// come back.
    pub(crate) fn set_limit(&self, limit: u32) {
        let mut sizes = self.lock();
        if limit > sizes.limit {
            let grow = limit - sizes.limit;
            let repaid = grow.min(sizes.debt);
            sizes.debt -= repaid;
            self.semaphore.add_permits((grow - repaid) as usize);
        } else {
            let shrink = sizes.limit - limit;
            let taken = self.semaphore.forget_permits(shrink as usize) as u32;
            sizes.debt += shrink - taken;
        }
        sizes.limit = limit;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sizes> {
        self.sizes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let was = self.slots.held.fetch_sub(1, Ordering::Relaxed);
        let mut sizes = self.slots.lock();
        if sizes.debt > 0 {
            sizes.debt -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
        if was > sizes.limit {
            self.slots.released.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn try_acquire(slots: &Arc<Slots>) -> Option<Slot> {
        futures_util::FutureExt::now_or_never(slots.acquire())
    }

    #[tokio::test]
    async fn a_shrink_waits_for_held_slots_to_come_back() {
        let slots = Slots::new(3);
        let held: Vec<Slot> = (0..3).map(|_| try_acquire(&slots).unwrap()).collect();
        assert!(try_acquire(&slots).is_none());
        slots.set_limit(1);
        let mut held = held.into_iter();
        drop(held.next());
        drop(held.next());
        assert_eq!(slots.held(), 1);
        assert!(
            try_acquire(&slots).is_none(),
            "two back, still one held of one"
        );
        drop(held.next());
        let again = try_acquire(&slots).expect("the one slot is free");
        assert!(try_acquire(&slots).is_none());
        // Growing pays back no debt here (there is none) and frees slots at once.
        slots.set_limit(2);
        let second = try_acquire(&slots).expect("grown");
        assert_eq!(slots.held(), 2);
        drop((again, second));
    }

    #[tokio::test]
    async fn growing_first_repays_what_a_shrink_still_owes() {
        let slots = Slots::new(2);
        let (a, b) = (try_acquire(&slots).unwrap(), try_acquire(&slots).unwrap());
        slots.set_limit(0);
        slots.set_limit(1);
        // One of the two held slots must be taken out as it comes back, not both.
        drop(a);
        assert!(try_acquire(&slots).is_none(), "b still holds the one slot");
        drop(b);
        assert!(try_acquire(&slots).is_some());
    }

    #[tokio::test]
    async fn a_size_of_zero_holds_callers_until_a_slot_is_given() {
        let slots = Slots::new(0);
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { drop(slots.acquire().await) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        slots.set_limit(1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released by the new slot")
            .unwrap();
    }
}
