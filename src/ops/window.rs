//! Publishes in flight: messages go out back to back and their confirms are awaited in
//! publishing order, with at most `capacity` unconfirmed at once. Throughput is then
//! bound by the broker, not by one round trip per message, and a crash can leave at
//! most `capacity` messages whose fate the caller does not know.

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};

use crate::broker::publisher::{Outgoing, PublishError, Publisher};

/// What became of one message: the caller's tag and the broker's answer.
pub type Settled<T> = (T, Result<(), PublishError>);

pub struct Window<T> {
    publisher: Publisher,
    capacity: usize,
    inflight: FuturesOrdered<BoxFuture<'static, Settled<T>>>,
}

impl<T: Send + 'static> Window<T> {
    pub fn new(publisher: Publisher, capacity: usize) -> Self {
        Self {
            publisher,
            capacity: capacity.max(1),
            inflight: FuturesOrdered::new(),
        }
    }

    /// Waits until the window has room for one more message; whatever settled on the
    /// way is pushed to `settled`. Callers settle those before they send, so that
    /// settled-but-unrecorded and unconfirmed messages never add up to more than
    /// `capacity`.
    pub async fn room(&mut self, settled: &mut Vec<Settled<T>>) {
        while self.inflight.len() >= self.capacity {
            if let Some(done) = self.inflight.next().await {
                settled.push(done);
            }
        }
    }

    /// Sends one message (call [`Window::room`] first). An error means the channel
    /// failed: the message and every unsettled one may or may not be in the queue.
    pub async fn send(&mut self, message: Outgoing, tag: T) -> Result<(), PublishError> {
        let pending = self.publisher.send(message).await?;
        self.inflight
            .push_back(async move { (tag, pending.confirmed().await) }.boxed());
        Ok(())
    }

    /// Confirms that already arrived, without waiting.
    pub fn ready(&mut self, settled: &mut Vec<Settled<T>>) {
        while let Some(Some(done)) = self.inflight.next().now_or_never() {
            settled.push(done);
        }
    }

    /// Waits for every outstanding confirm (each bounded by the publish timeout).
    pub async fn drain(&mut self, settled: &mut Vec<Settled<T>>) {
        while let Some(done) = self.inflight.next().await {
            settled.push(done);
        }
    }
}
