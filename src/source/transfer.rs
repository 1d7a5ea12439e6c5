//! A source's body as it comes over the network: cut off when it falls under the
//! minimum rate (`FILE_MIN_RATE` over `FILE_MIN_RATE_WINDOW`), capped at the size
//! limit, and paid for in the byte budget as it arrives.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use super::{check_size, too_large};
use crate::budget::Reservation;
use crate::config::FileSettings;
use crate::job::Failure;

/// A body's chunks, their errors already the job's failures.
pub(super) type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, Failure>> + Send>>;

/// The first step of a buffer (and reservation) for a body of untrusted size; each
/// later step doubles it, so a large honest file costs a few copies, and a server
/// that announces much and sends little holds at most twice what it sent.
const FIRST_STEP: u64 = 64 * 1024;

/// The slowest transfer accepted: `bytes_per_sec` averaged over the last `window`,
/// checked once a transfer has lasted a whole window (the grace period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MinRate {
    pub(crate) bytes_per_sec: u64,
    pub(crate) window: Duration,
}

impl MinRate {
    #[cfg(test)]
    pub(crate) const OFF: MinRate = MinRate {
        bytes_per_sec: 0,
        window: Duration::from_secs(1),
    };

    pub(crate) fn from_settings(files: &FileSettings) -> Self {
        Self {
            bytes_per_sec: files.min_rate,
            window: files.min_rate_window,
        }
    }

    /// Bytes a window must hold: at least one, or a silent source would pass.
    fn per_window(self) -> u64 {
        ((self.bytes_per_sec as f64 * self.window.as_secs_f64()).ceil() as u64).max(1)
    }
}

/// How far a transfer got, sampled over time. Time the caller spends elsewhere
/// (waiting for budget, sending the previous piece) is taken out of the clock: only
/// the source is measured.
#[derive(Debug)]
struct Pace {
    rate: MinRate,
    started: Instant,
    /// `(when, total bytes by then)`, oldest first, one at least a window old kept.
    samples: VecDeque<(Instant, u64)>,
    total: u64,
    idle_since: Option<Instant>,
}

impl Pace {
    fn new(rate: MinRate, now: Instant) -> Self {
        Self {
            rate,
            started: now,
            samples: VecDeque::from([(now, 0)]),
            total: 0,
            idle_since: None,
        }
    }

    fn record(&mut self, bytes: u64, now: Instant) {
        self.total += bytes;
        // A sample per eighth of a window: a fast transfer's thousand chunks cost
        // eight entries, and the window is measured within an eighth.
        let last = self.samples.back().map_or(self.started, |(at, _)| *at);
        if now.duration_since(last) >= self.rate.window / 8 {
            self.samples.push_back((now, self.total));
        }
    }

    /// `Err(bytes of the last window)` when the transfer has lasted a window and the
    /// last one held fewer bytes than the minimum rate asks.
    fn check(&mut self, now: Instant) -> Result<(), u64> {
        if self.rate.bytes_per_sec == 0 || now.duration_since(self.started) < self.rate.window {
            return Ok(());
        }
        let Some(since) = now.checked_sub(self.rate.window) else {
            return Ok(());
        };
        while self.samples.len() > 1 && self.samples[1].0 <= since {
            self.samples.pop_front();
        }
        let base = self.samples.front().map_or(0, |(_, total)| *total);
        let got = self.total - base;
        if got < self.rate.per_window() {
            Err(got)
        } else {
            Ok(())
        }
    }

    fn idle(&mut self, now: Instant) {
        self.idle_since.get_or_insert(now);
    }

    fn resume(&mut self, now: Instant) {
        if let Some(since) = self.idle_since.take() {
            let idle = now.duration_since(since);
            self.started += idle;
            for (at, _) in &mut self.samples {
                *at += idle;
            }
        }
    }
}

/// A body being read: chunks, their pace, and what a piece left of the last chunk.
pub(super) struct Transfer {
    chunks: Chunks,
    pace: Pace,
    next_check: Instant,
    /// Bytes received but not handed out yet: a piece ended inside a chunk.
    leftover: Bytes,
    /// The source, for messages.
    shown: String,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("shown", &self.shown)
            .field("pace", &self.pace)
            .finish_non_exhaustive()
    }
}

impl Transfer {
    pub(super) fn new(chunks: Chunks, rate: MinRate, shown: String) -> Self {
        let now = Instant::now();
        Self {
            chunks,
            pace: Pace::new(rate, now),
            next_check: now + tick(rate),
            leftover: Bytes::new(),
            shown,
        }
    }

    /// The next chunk of the body, `None` at its end. A source under the minimum
    /// rate fails (retryable), checked as chunks arrive and when none does.
    async fn next(&mut self) -> Option<Result<Bytes, Failure>> {
        if !self.leftover.is_empty() {
            return Some(Ok(std::mem::take(&mut self.leftover)));
        }
        if self.pace.rate.bytes_per_sec == 0 {
            return self.chunks.next().await;
        }
        loop {
            let checked = tokio::select! {
                biased;
                chunk = self.chunks.next() => {
                    let now = Instant::now();
                    if let Some(Ok(bytes)) = &chunk {
                        self.pace.record(bytes.len() as u64, now);
                    }
                    if now < self.next_check || !matches!(chunk, Some(Ok(_))) {
                        return chunk;
                    }
                    self.checked(now).map(|()| chunk)
                }
                () = tokio::time::sleep_until(self.next_check) => {
                    self.checked(Instant::now()).map(|()| None)
                }
            };
            match checked {
                Ok(Some(chunk)) => return Some(chunk),
                Ok(None) => continue,
                Err(failure) => return Some(Err(failure)),
            }
        }
    }

    fn checked(&mut self, now: Instant) -> Result<(), Failure> {
        self.next_check = now + tick(self.pace.rate);
        self.pace.check(now).map_err(|got| {
            let rate = self.pace.rate;
            Failure::retryable(format!(
                "{} is too slow: {got} bytes in the last {:?}, under the {} bytes/s of FILE_MIN_RATE",
                self.shown, rate.window, rate.bytes_per_sec
            ))
        })
    }

    /// Collects the whole body: refused as soon as it passes `max` bytes, whatever
    /// the source announced (`claimed`). A buffer of `trusted` size is taken at once;
    /// past it, buffer and `room` grow in doubling steps as bytes arrive, `room`
    /// waiting at most `wait` for each step.
    pub(super) async fn collect(
        mut self,
        claimed: u64,
        trusted: u64,
        max: u64,
        mut room: Option<(&mut Reservation, Duration)>,
    ) -> Result<Bytes, Failure> {
        let mut buf = BytesMut::with_capacity(trusted.min(max) as usize);
        while let Some(chunk) = self.next().await {
            let chunk = chunk?;
            let len = (buf.len() + chunk.len()) as u64;
            if len > max {
                return Err(too_large(max));
            }
            if len > buf.capacity() as u64 {
                let doubled = (buf.capacity() as u64 * 2).max(FIRST_STEP);
                let step = doubled.min(claimed.max(len)).min(max).max(len);
                if let Some((reservation, wait)) = room.as_mut() {
                    self.grow(reservation, step, *wait).await?;
                }
                buf.reserve(step as usize - buf.len());
            }
            buf.extend_from_slice(&chunk);
        }
        check_size(buf.len() as u64, max)?;
        Ok(buf.freeze())
    }

    /// Grows `reservation` to `bytes`, the clock stopped meanwhile: the source is
    /// not to blame for a full budget.
    pub(super) async fn grow(
        &mut self,
        reservation: &mut Reservation,
        bytes: u64,
        wait: Duration,
    ) -> Result<(), Failure> {
        self.pace.idle(Instant::now());
        let grown = reservation.grow(bytes, wait).await;
        self.pace.resume(Instant::now());
        grown.map_err(|e| Failure::retryable(format!("reading {}: {e}", self.shown)))
    }

    /// Exactly the next `len` bytes, the rest kept for the next call; the clock runs
    /// only meanwhile. A body that ends first: the file is shorter than it was.
    pub(super) async fn take(&mut self, len: u64) -> Result<Bytes, Failure> {
        self.pace.resume(Instant::now());
        let mut buf = BytesMut::with_capacity(len as usize);
        while (buf.len() as u64) < len {
            let Some(chunk) = self.next().await else {
                return Err(self.ended(buf.len() as u64, len));
            };
            let mut chunk = chunk?;
            let want = (len - buf.len() as u64) as usize;
            if chunk.len() > want {
                self.leftover = chunk.split_off(want);
            }
            buf.extend_from_slice(&chunk);
        }
        self.pace.idle(Instant::now());
        Ok(buf.freeze())
    }

    /// Reads and drops the next `n` bytes, holding one chunk at a time.
    pub(super) async fn skip(&mut self, mut n: u64) -> Result<(), Failure> {
        self.pace.resume(Instant::now());
        let wanted = n;
        while n > 0 {
            let Some(chunk) = self.next().await else {
                return Err(self.ended(wanted - n, wanted));
            };
            let mut chunk = chunk?;
            if chunk.len() as u64 > n {
                self.leftover = chunk.split_off(n as usize);
            }
            n -= chunk.len() as u64;
        }
        self.pace.idle(Instant::now());
        Ok(())
    }

    /// Reads the whole body to learn its size, holding one chunk at a time; more
    /// than `max` bytes is refused as soon as it is seen.
    pub(super) async fn count(mut self, max: u64) -> Result<u64, Failure> {
        let mut total = 0u64;
        while let Some(chunk) = self.next().await {
            total += chunk?.len() as u64;
            if total > max {
                return Err(too_large(max));
            }
        }
        check_size(total, max)?;
        Ok(total)
    }

    fn ended(&self, got: u64, wanted: u64) -> Failure {
        Failure::retryable(format!(
            "{} ended after {got} of {wanted} bytes: the file changed while it was read",
            self.shown
        ))
    }
}

/// How often a transfer that receives nothing is checked.
fn tick(rate: MinRate) -> Duration {
    (rate.window / 4).max(Duration::from_millis(20))
}

#[cfg(test)]
#[path = "transfer_tests.rs"]
mod tests;
