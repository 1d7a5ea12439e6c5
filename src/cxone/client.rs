//! The execute call: its slot under the limits, token, `Idempotency-Key`, and what
//! each answer means.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::auth::TokenCache;
use super::{Answer, classify, endpoint, transport_message};
use crate::config::ApiSettings;
use crate::job::{ErrorKind, Failure, Systemic};
use crate::limits::{Limits, WaitSource};
use crate::telemetry::names;

/// The most of an answer body read: enough for an `executionId` or an excerpt.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A successful execution.
#[derive(Debug, Clone)]
pub struct Executed {
    pub execution_id: Option<String>,
    /// From sending the request to its answer, 429 waits included.
    pub latency: Duration,
}

pub struct Client {
    http: reqwest::Client,
    base_url: url::Url,
    auth: TokenCache,
    /// Rate, calls in flight and pauses: this process's own, or the fleet's.
    limits: Arc<Limits>,
    /// Transport failures since the last HTTP answer of any status.
    transport_failures: AtomicU32,
    unreachable_after: u32,
}

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
        let auth = TokenCache::new(
            http.clone(),
            &settings.base_url,
            &settings.client_id,
            &settings.client_secret,
        );
        Ok(Self {
            http,
            base_url: settings.base_url.clone(),
            auth,
            limits: Arc::new(Limits::process(settings.rate_limit_per_minute, 0)),
            transport_failures: AtomicU32::new(0),
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

    /// Executes `action` with `body`. A 429 waits (every caller does) and is not an
    /// attempt; a 401 refreshes the token once; everything else ends the attempt.
    pub async fn execute(&self, action: &str, key: &str, body: Bytes) -> Result<Executed, Failure> {
        let url = endpoint(
            &self.base_url,
            &["api", "v2", "data-actions", action, "execute"],
        );
        let started = tokio::time::Instant::now();
        let mut refreshed = false;
        let mut rate_limited = 0u32;
        loop {
            // The slot first: a token fetched before a long wait could expire in it.
            let _permit = self.limits.acquire().await;
            let token = self.auth.token().await?;
            let sent = self
                .http
                .post(url.clone())
                .header(AUTHORIZATION, token.header())
                .header(CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", key_header(key)?)
                .body(body.clone())
                .send()
                .await;
            let answer = match sent {
                Ok(response) => {
                    self.transport_failures.store(0, Ordering::Relaxed);
                    read_answer(response).await
                }
                Err(e) if e.is_builder() => {
                    // Never sent: not a sign of the API being away.
                    return Err(Failure::retryable(transport_message(&e)));
                }
                Err(e) => {
                    let message = transport_message(&e);
                    let in_a_row = self.transport_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    metrics::counter!(names::EXECUTE_CALLS, "answer" => "transport_error")
                        .increment(1);
                    if in_a_row >= self.unreachable_after {
                        return Err(Failure::systemic(
                            Systemic::ApiUnreachable,
                            format!("{in_a_row} calls in a row failed: {message}"),
                        ));
                    }
                    return Err(Failure::retryable(message));
                }
            };
            match answer {
                Answer::Success { execution_id } => {
                    let latency = started.elapsed();
                    metrics::histogram!(names::EXECUTE_DURATION).record(latency.as_secs_f64());
                    return Ok(Executed {
                        execution_id,
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
                Answer::Forbidden { excerpt } => {
                    return Err(Failure::permanent(
                        ErrorKind::Forbidden,
                        format!("API answered 403: {excerpt}"),
                    ));
                }
                Answer::Rejected { status, excerpt } => {
                    return Err(Failure::permanent(
                        ErrorKind::Rejected,
                        format!("API answered {status}: {excerpt}"),
                    ));
                }
                Answer::Misdirected(message) => {
                    return Err(Failure::systemic(Systemic::ApiUnreachable, message));
                }
            }
        }
    }

    /// Asks the token endpoint for a new token: the probe of a paused worker, which
    /// tells both whether the API answers and whether it takes our credentials.
    pub async fn probe(&self) -> Result<(), Failure> {
        self.auth.refresh().await.map(|_| ())
    }
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

async fn read_answer(mut response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    metrics::counter!(names::EXECUTE_CALLS, "answer" => status_class(status)).increment(1);
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    // A body cut short still classifies by its status; only the excerpt suffers.
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ANSWER_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    classify(status, retry_after.as_deref(), &body, SystemTime::now())
}

fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        401 => "401",
        403 => "403",
        429 => "429",
        400..=499 => "4xx",
        _ => "5xx",
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
