//! The simulator's shared state: counters, the rate window, issued tokens and per-key records.
//!
//! Many requests touch this at once, so counters are atomics and each map sits behind its own
//! lock that is held only for a lookup or an insert, never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;
use base64::Engine as _;
use serde::Serialize;
use serde::ser::SerializeMap;

use super::SimConfig;
use super::payload::FieldNames;
use super::profile::Profile;
use super::uploads::Uploads;

/// The plain counters of `/__stats`, in the order the reference prints them.
#[derive(Clone, Copy)]
pub(crate) enum Counter {
    TokenRequests,
    TokenRejected,
    ExecuteRequests,
    Accepted,
    Unauthorized,
    RateLimited,
    ServerErrors,
    BadRequests,
    TooLarge,
    DuplicateKeys,
    MissingKey,
}

const COUNTER_NAMES: [&str; 11] = [
    "token_requests",
    "token_rejected",
    "execute_requests",
    "accepted",
    "unauthorized",
    "rate_limited",
    "server_errors",
    "bad_requests",
    "too_large",
    "duplicate_keys",
    "missing_key",
];

/// What the reference remembers of the first accepted execute of an idempotency key, plus
/// what v2 adds (each left out of the JSON while empty, so seed records read as before).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyRecord {
    pub(crate) count: u64,
    pub(crate) execution_id: String,
    pub(crate) data_action_id: String,
    pub(crate) content_type: String,
    pub(crate) size: u64,
    pub(crate) sha256: Option<String>,
    pub(crate) metadata: serde_json::Value,
    /// Without deduplication (genesys): the execution id of every execution, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) execution_ids: Vec<String>,
    /// The trace context of every execute recorded under the key that carried one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) trace: Vec<Trace>,
}

/// The W3C trace context headers of one execute, as sent.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trace {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) traceparent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tracestate: Option<String>,
}

impl Trace {
    /// `None` when the request carried neither header.
    pub(crate) fn of(headers: &axum::http::HeaderMap) -> Option<Self> {
        let text = |name| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let trace = Self {
            traceparent: text("traceparent"),
            tracestate: text("tracestate"),
        };
        (trace.traceparent.is_some() || trace.tracestate.is_some()).then_some(trace)
    }
}

#[derive(Default)]
struct KeyBook {
    /// Every execute that got past the rate limit, by `Idempotency-Key` ("" when absent).
    attempts: HashMap<String, u64>,
    records: HashMap<String, KeyRecord>,
}

/// A fixed window: `count` executes admitted since `start_ms` (wall clock, as the reference).
struct Window {
    start_ms: u64,
    count: u64,
    max_count: u64,
    /// Every execute that reached the simulator in this window, for `inin-ratelimit-count`.
    calls: u64,
}

impl Window {
    fn new() -> Self {
        Self {
            start_ms: now_ms(),
            count: 0,
            max_count: 0,
            calls: 0,
        }
    }

    /// Opens a new window when the current one is over.
    fn roll(&mut self, now: u64, length_ms: u64) {
        if now.saturating_sub(self.start_ms) >= length_ms {
            self.start_ms = now;
            self.count = 0;
            self.calls = 0;
        }
    }
}

/// Where one execute stands against `SIM_ININ_RATELIMIT`: the values of its
/// `inin-ratelimit-*` headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IninTick {
    /// Calls in the current window, this one included.
    pub(crate) count: u64,
    pub(crate) allowed: u64,
    /// Whole seconds until the window ends.
    pub(crate) reset_secs: u64,
}

impl IninTick {
    pub(crate) fn spent(&self) -> bool {
        self.count > self.allowed
    }
}

/// Everything the handlers share; built once per server from its `SimConfig`.
pub(crate) struct Sim {
    pub(crate) cfg: SimConfig,
    /// The API spoken, from `cfg.profile`.
    pub(crate) profile: &'static Profile,
    /// `cfg`'s payload and content-type field names, as the body parsers take them.
    pub(crate) fields: FieldNames,
    /// `Basic base64(id:secret)`, the only `Authorization` the token endpoint accepts.
    pub(crate) expected_basic: String,
    pub(crate) retry_after: HeaderValue,
    counters: [AtomicU64; COUNTER_NAMES.len()],
    /// Signed because `/__reset` zeroes it while requests are still running, which then
    /// drive it below zero, exactly as the reference does.
    in_flight: AtomicI64,
    max_in_flight: AtomicI64,
    window: Mutex<Window>,
    /// Token -> expiry. Read on every execute, written only by the token endpoint.
    tokens: RwLock<HashMap<String, Instant>>,
    book: Mutex<KeyBook>,
    /// Chunked uploads by `uploadId`; cleared by `/__reset`.
    pub(crate) uploads: Uploads,
}

/// Holds one unit of `in_flight` for as long as an execute is being handled, including when the
/// connection goes away mid-way and the handler future is dropped. It owns an `Arc` so that it
/// can move into the task that outlives a cancelled request.
pub(crate) struct InFlight(Arc<Sim>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Sim {
    /// Fails only on a `retry_after` that could never be sent as a header: better at start-up
    /// than at the first 429.
    pub(crate) fn new(cfg: SimConfig) -> std::io::Result<Self> {
        let retry_after = HeaderValue::from_str(&cfg.retry_after).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "retry_after {:?} is not a valid header value",
                    cfg.retry_after
                ),
            )
        })?;
        let credentials = format!("{}:{}", cfg.client_id, cfg.client_secret);
        let expected_basic = format!(
            "Basic {}",
            base64::prelude::BASE64_STANDARD.encode(credentials)
        );
        Ok(Self {
            profile: Profile::of(cfg.profile),
            fields: FieldNames {
                payload: cfg.payload_field.clone(),
                content_type: cfg.content_type_field.clone(),
            },
            cfg,
            expected_basic,
            retry_after,
            counters: Default::default(),
            in_flight: AtomicI64::new(0),
            max_in_flight: AtomicI64::new(0),
            window: Mutex::new(Window::new()),
            tokens: RwLock::default(),
            book: Mutex::default(),
            uploads: Uploads::default(),
        })
    }

    pub(crate) fn bump(&self, counter: Counter) {
        self.counters[counter as usize].fetch_add(1, Relaxed);
    }

    /// Counts an execute as started; `in_flight` drops again with the guard.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlight {
        self.bump(Counter::ExecuteRequests);
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Issues a fresh random token valid for `token_ttl` seconds.
    pub(crate) fn issue_token(&self) -> String {
        let token = hex::encode(rand::random::<[u8; 24]>());
        // Any SIM_TOKEN_TTL is taken; beyond ten years it is "never" (and no overflow).
        let ttl = self.cfg.token_ttl.min(10 * 365 * 86_400);
        let expiry = Instant::now() + Duration::from_secs(ttl);
        write(&self.tokens).insert(token.clone(), expiry);
        token
    }

    pub(crate) fn token_valid(&self, token: &str) -> bool {
        let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner);
        tokens
            .get(token)
            .is_some_and(|expiry| *expiry >= Instant::now())
    }

    /// Opens a new window when the current one is over, then admits the call unless the
    /// limit is reached. The window is counted even with no limit, for `max_window_count`.
    pub(crate) fn admit(&self) -> bool {
        let mut w = lock(&self.window);
        w.roll(now_ms(), self.cfg.rate_window_ms);
        if self.cfg.rate_limit > 0 && w.count >= u64::from(self.cfg.rate_limit) {
            return false;
        }
        w.count += 1;
        w.max_count = w.max_count.max(w.count);
        true
    }

    /// Counts an execute against `SIM_ININ_RATELIMIT` when the profile sends those headers
    /// and the knob is on.
    pub(crate) fn inin_tick(&self) -> Option<IninTick> {
        if !self.profile.inin_headers || self.cfg.inin_ratelimit == 0 {
            return None;
        }
        let now = now_ms();
        let mut w = lock(&self.window);
        w.roll(now, self.cfg.rate_window_ms);
        w.calls += 1;
        let left_ms = (w.start_ms + self.cfg.rate_window_ms).saturating_sub(now);
        Some(IninTick {
            count: w.calls,
            allowed: u64::from(self.cfg.inin_ratelimit),
            reset_secs: left_ms.div_ceil(1000),
        })
    }

    /// Counts one attempt of `key` and says which attempt it is (1 for the first).
    pub(crate) fn attempt(&self, key: &str) -> u64 {
        let mut book = lock(&self.book);
        if let Some(n) = book.attempts.get_mut(key) {
            *n += 1;
            return *n;
        }
        book.attempts.insert(key.to_owned(), 1);
        1
    }

    /// For a key already recorded: counts the repeat and returns its first execution id.
    pub(crate) fn repeat(&self, key: &str, trace: Option<&Trace>) -> Option<String> {
        let mut book = lock(&self.book);
        let record = book.records.get_mut(key)?;
        record.count += 1;
        record.trace.extend(trace.cloned());
        self.bump(Counter::DuplicateKeys);
        Some(record.execution_id.clone())
    }

    /// Records the first execute of `key`, or, when a concurrent request with the same key
    /// won the race since `repeat` looked, counts this one as its repeat instead.
    /// Returns the execution id to answer with and whether it is a repeat.
    pub(crate) fn record(&self, key: String, record: KeyRecord) -> (String, bool) {
        let mut book = lock(&self.book);
        match book.records.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut first) => {
                let first = first.get_mut();
                first.count += 1;
                first.trace.extend(record.trace);
                self.bump(Counter::DuplicateKeys);
                (first.execution_id.clone(), true)
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                let id = record.execution_id.clone();
                slot.insert(record);
                self.bump(Counter::Accepted);
                (id, false)
            }
        }
    }

    /// Without deduplication every execute is an execution: a key seen before is counted as
    /// a duplicate, its record gains this execution's id, and nothing else of it changes.
    pub(crate) fn record_execution(&self, key: String, record: KeyRecord) {
        self.bump(Counter::Accepted);
        let mut book = lock(&self.book);
        match book.records.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut first) => {
                let first = first.get_mut();
                first.count += 1;
                first.execution_ids.push(record.execution_id);
                first.trace.extend(record.trace);
                self.bump(Counter::DuplicateKeys);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                let mut record = record;
                record.execution_ids = vec![record.execution_id.clone()];
                slot.insert(record);
            }
        }
    }

    /// `POST /__reset`: counters, window, records and tokens back to a fresh start.
    pub(crate) fn reset(&self) {
        for c in &self.counters {
            c.store(0, Relaxed);
        }
        self.in_flight.store(0, Relaxed);
        self.max_in_flight.store(0, Relaxed);
        *lock(&self.window) = Window::new();
        // Drop the old maps after releasing the locks: freeing a large map takes a while.
        let old_book = std::mem::take(&mut *lock(&self.book));
        let old_tokens = std::mem::take(&mut *write(&self.tokens));
        drop((old_book, old_tokens));
        self.uploads.clear();
    }

    /// The JSON of `GET /__stats`; with `with_keys`, also the per-key records and attempts;
    /// with `with_uploads`, the chunked uploads.
    pub(crate) fn stats_json(&self, with_keys: bool, with_uploads: bool) -> Vec<u8> {
        let (window_start, window_count, max_window_count) = {
            let w = lock(&self.window);
            (w.start_ms, w.count, w.max_count)
        };
        // Serialised under the lock so that the records, attempts and `unique_keys` agree.
        let book = lock(&self.book);
        let stats = Stats {
            sim: self,
            window_start,
            window_count,
            max_window_count,
            book: &book,
            with_keys,
            with_uploads,
        };
        serde_json::to_vec(&stats).unwrap_or_else(|_| b"{}".to_vec())
    }
}

struct Stats<'a> {
    sim: &'a Sim,
    window_start: u64,
    window_count: u64,
    max_window_count: u64,
    book: &'a KeyBook,
    with_keys: bool,
    with_uploads: bool,
}

impl Serialize for Stats<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, value) in COUNTER_NAMES.iter().zip(&self.sim.counters) {
            map.serialize_entry(name, &value.load(Relaxed))?;
        }
        map.serialize_entry("in_flight", &self.sim.in_flight.load(Relaxed))?;
        map.serialize_entry("max_in_flight", &self.sim.max_in_flight.load(Relaxed))?;
        map.serialize_entry("window_start", &self.window_start)?;
        map.serialize_entry("window_count", &self.window_count)?;
        map.serialize_entry("max_window_count", &self.max_window_count)?;
        map.serialize_entry("unique_keys", &self.book.records.len())?;
        if self.with_keys {
            map.serialize_entry("keys", &self.book.records)?;
            map.serialize_entry("attempts", &self.book.attempts)?;
        }
        if self.with_uploads {
            map.serialize_entry("uploads", &self.sim.uploads)?;
        }
        map.end()
    }
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// A panic elsewhere must not turn every later request into a panic too: the maps stay usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
