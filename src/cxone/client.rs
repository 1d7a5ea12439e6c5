//! The execute call: its slot under the limits, token, `Idempotency-Key`, and what
//! each answer means, in the shapes of the API profile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tracing::Instrument;

use super::auth::{Token, TokenCache};
use super::grant::TokenRequest;
use super::profile::{ApiBase, Profile};
use super::{
    Answer, MAX_OUTPUT_BYTES, Output, Read, classify, spent_rate_limit, transport_message,
};
use crate::config::ApiSettings;
use crate::job::{ErrorKind, Failure, Systemic};
use crate::limits::{Limits, WaitSource};
use crate::telemetry::names;

/// The response header that names a Genesys execution.
const CORRELATION_ID: &str = "inin-correlation-id";

/// A successful execution.
#[derive(Debug, Clone)]
pub struct Executed {
    pub execution_id: Option<String>,
    /// The answer body, as the result carries it.
    pub output: Output,
    /// From sending the request to its answer, 429 waits included.
    pub latency: Duration,
}

/// The API as the worker calls it: one per process, shared by every job.
pub struct Client {
    http: reqwest::Client,
    /// What this API's calls and answers look like.
    profile: Profile,
    /// The one token of the process.
    auth: TokenCache,
    /// Rate, calls in flight and pauses: this process's own, or the fleet's.
    limits: Arc<Limits>,
    /// Transport failures since the last HTTP answer of any status.
    transport_failures: AtomicU32,
    /// Execute requests sent: the shutdown summary's "total executions".
    calls_sent: AtomicU64,
    unreachable_after: u32,
}

/// How one request went: an answer, or a failure that ends the attempt.
type Sent = Result<(Answer, Option<Duration>), Failure>;

impl Client {
    pub fn new(settings: &ApiSettings, pool_size: usize) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_max_idle_per_host(pool_size)
            // An API that redirects a POST is misconfigured; following it would
            // resend the payload somewhere nobody checked.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cxone-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let profile = Profile::from_settings(settings);
        let auth = TokenCache::new(http.clone(), TokenRequest::new(&profile, settings));
        Ok(Self {
            http,
            profile,
            auth,
            limits: Arc::new(Limits::process(settings.rate_limit_per_minute, 0)),
            transport_failures: AtomicU32::new(0),
            calls_sent: AtomicU64::new(0),
            unreachable_after: settings.unreachable_after,
        })
    }

    /// Replaces the limits built from `settings` (those of this process alone) by
    /// `limits`: the fleet's, or a process's with a limit on calls in flight.
    pub fn with_limits(mut self, limits: Arc<Limits>) -> Self {
        self.limits = limits;
        self
    }

    /// Replaces the token cache's retry timing (tests).
    pub fn with_token_backoff(mut self, backoff: backon::ExponentialBuilder) -> Self {
        self.auth = self.auth.with_backoff(backoff);
        self
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Executes `action` with `body` under `key`. A 429 waits (every caller does)
    /// and is not an attempt; a 401 refreshes the token once; everything else ends
    /// the attempt.
    pub async fn execute(&self, action: &str, key: &str, body: Bytes) -> Result<Executed, Failure> {
        let key = key_header(key)?;
        let started = tokio::time::Instant::now();
        let mut refreshed = false;
        let mut rate_limited = 0u32;
        loop {
            // The slot first, then the token: a token taken before a long wait (the
            // pace, a 429's pause) may expire during it. The slot is held until the
            // answer is read.
            let _permit = self.limits.acquire().await;
            let token = self.auth.token().await?;
            let (answer, spent) = self.send(&token, action, &key, body.clone()).await?;
            if let Some(wait) = spent {
                // The API's own count says the window is spent: nobody calls before
                // it resets, this answer whatever it was.
                self.limits.pause_for(wait, WaitSource::IninRateLimit);
            }
            match answer {
                Answer::Success {
                    execution_id,
                    output,
                } => {
                    let latency = started.elapsed();
                    crate::hot!(histogram, names::EXECUTE_DURATION).record(latency.as_secs_f64());
                    return Ok(Executed {
                        execution_id,
                        output,
                        latency,
                    });
                }
                Answer::RateLimited(asked) => {
                    rate_limited += 1;
                    let wait = asked.max(rate_limit_floor(rate_limited));
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        "API rate limit: every call waits"
                    );
                    self.limits.pause_for(wait, WaitSource::RateLimited429);
                }
                Answer::Unauthorized if !refreshed => {
                    refreshed = true;
                    self.auth.invalidate(token.generation());
                }
                Answer::Unauthorized => {
                    return Err(Failure::systemic(
                        Systemic::CredentialsRefused,
                        "API answered 401 to a freshly issued token",
                    ));
                }
                Answer::Retryable(message) => return Err(Failure::retryable(message)),
                Answer::Forbidden { error } => {
                    return Err(Failure::permanent(ErrorKind::Forbidden, error));
                }
                Answer::Rejected { error } => {
                    return Err(Failure::permanent(ErrorKind::Rejected, error));
                }
                Answer::Misdirected(message) => {
                    return Err(Failure::systemic(Systemic::ApiUnreachable, message));
                }
            }
        }
    }

    /// One request: its answer and, where the profile reads `inin-ratelimit`, the
    /// wait it asks of every caller. Transport failures in a row make the API
    /// unreachable.
    async fn send(&self, token: &Token, action: &str, key: &HeaderValue, body: Bytes) -> Sent {
        let base = match (&self.profile.api_base, token.api_base()) {
            (ApiBase::Fixed(base), _) | (ApiBase::Discovered { .. }, Some(base)) => base,
            (ApiBase::Discovered { .. }, None) => {
                return Err(Failure::systemic(
                    Systemic::TokenEndpointInvalid,
                    "the token came without the tenant's API host",
                ));
            }
        };
        let url = self.profile.execute_url(base, action);
        self.calls_sent.fetch_add(1, Ordering::Relaxed);
        let span = http_span(&url);
        let sent = self
            .http
            .post(url)
            .headers(trace_headers(&span))
            .header(AUTHORIZATION, token.header())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key.clone())
            .body(body)
            .send()
            .instrument(span.clone())
            .await;
        if let Ok(response) = &sent {
            span.record("http.response.status_code", response.status().as_u16());
        }
        match sent {
            Ok(response) => {
                self.transport_failures.store(0, Ordering::Relaxed);
                let spent = self
                    .profile
                    .rate_headers
                    .then(|| spent_rate_limit(response.headers()))
                    .flatten();
                Ok((read_answer(response, &self.profile).await, spent))
            }
            // Never sent: not a sign of the API being away.
            Err(e) if e.is_builder() => Err(Failure::retryable(transport_message(&e))),
            Err(e) => {
                let message = transport_message(&e);
                let in_a_row = self.transport_failures.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::counter!(names::EXECUTE_CALLS, "answer" => "transport_error").increment(1);
                if in_a_row >= self.unreachable_after {
                    return Err(Failure::systemic(
                        Systemic::ApiUnreachable,
                        format!("{in_a_row} calls in a row failed: {message}"),
                    ));
                }
                Err(Failure::retryable(message))
            }
        }
    }

    /// Execute requests sent so far, repeats after a 429 or a 401 included.
    pub fn calls_sent(&self) -> u64 {
        self.calls_sent.load(Ordering::Relaxed)
    }

    /// Asks the token endpoint for a new token: the probe of a paused worker, which
    /// tells both whether the API answers and whether it takes our credentials.
    pub async fn probe(&self) -> Result<(), Failure> {
        self.auth.refresh().await.map(|_| ())
    }
}

/// The API call as an OpenTelemetry HTTP client span, a child of the job's; only
/// when spans are exported (`crate::trace`).
fn http_span(url: &url::Url) -> tracing::Span {
    if !crate::trace::exporting() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "POST",
        otel.kind = "client",
        http.request.method = "POST",
        server.address = url.host_str().unwrap_or_default(),
        server.port = url.port_or_known_default(),
        url.path = url.path(),
        http.response.status_code = tracing::field::Empty,
    )
}

/// `traceparent` (and `tracestate`) of the call, for the request: the API sees the
/// call in the job's trace.
fn trace_headers(span: &tracing::Span) -> reqwest::header::HeaderMap {
    use crate::trace::Context;
    let context =
        Context::of_span(span).unwrap_or_else(|| Context::child_of(Context::of_job().as_ref()));
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&context.traceparent()) {
        headers.insert("traceparent", value);
    }
    if let Some(value) = context
        .tracestate()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        headers.insert("tracestate", value);
    }
    headers
}

/// The `Idempotency-Key` header: the key's bytes as they are (a `job_id` may be any
/// printable Unicode, sent as UTF-8), refused only when it holds control characters,
/// which only an AMQP `message_id` can bring.
pub fn key_header(key: &str) -> Result<HeaderValue, Failure> {
    HeaderValue::from_bytes(key.as_bytes()).map_err(|_| {
        Failure::permanent(
            ErrorKind::InvalidJob,
            "the idempotency key (the message_id) holds control characters, which no HTTP header can carry",
        )
    })
}

/// The least a call waits after its `n`th 429 in a row, whatever `Retry-After`
/// says: a `Retry-After` of 0 or in the past must not turn into a busy loop.
fn rate_limit_floor(n: u32) -> Duration {
    let floor = Duration::from_millis(250).saturating_mul(1 << n.saturating_sub(1).min(7));
    floor.min(Duration::from_secs(30))
}

async fn read_answer(mut response: reqwest::Response, profile: &Profile) -> Answer {
    let status = response.status().as_u16();
    answered(status).increment(1);
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (retry_after, correlation_id) = (header(RETRY_AFTER.as_str()), header(CORRELATION_ID));
    // One byte more than an output may have says "longer"; the rest is not read.
    let limit = MAX_OUTPUT_BYTES + 1;
    let mut body = Vec::new();
    // A body cut short still classifies by its status; only the excerpt suffers.
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    let read = Read {
        status,
        retry_after: retry_after.as_deref(),
        correlation_id: correlation_id.as_deref(),
        body: &body,
    };
    classify(&read, profile, SystemTime::now())
}

/// The `cxone_execute_calls_total` series of an answer's status.
fn answered(status: u16) -> &'static metrics::Counter {
    use crate::hot;
    match status {
        200..=299 => hot!(counter, names::EXECUTE_CALLS, "answer" => "2xx"),
        401 => hot!(counter, names::EXECUTE_CALLS, "answer" => "401"),
        403 => hot!(counter, names::EXECUTE_CALLS, "answer" => "403"),
        429 => hot!(counter, names::EXECUTE_CALLS, "answer" => "429"),
        400..=499 => hot!(counter, names::EXECUTE_CALLS, "answer" => "4xx"),
        _ => hot!(counter, names::EXECUTE_CALLS, "answer" => "5xx"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_doubles_up_to_thirty_seconds() {
        let ms: Vec<u128> = (1..=9).map(|n| rate_limit_floor(n).as_millis()).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }
}
