//! The one OAuth token of the process: fetched once however many calls wait for it,
//! refreshed before it expires, and a refused credential reported as the worker's
//! problem rather than a job's.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::HeaderValue;
use tokio::time::Instant;

use super::grant::TokenRequest;
use crate::config::Secret;
use crate::job::{Failure, Systemic};
use crate::telemetry::names;

/// Refresh this long before `expires_in` runs out...
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// ...unless the token lives less than this; then at half its lifetime.
const SHORT_LIFETIME: Duration = Duration::from_secs(120);
/// A refusal is given to every caller this long without asking again: the jobs in
/// flight when credentials are revoked must not each hit the token endpoint.
const FAILURE_HOLD: Duration = Duration::from_secs(2);

/// A bearer token and when to stop using it.
pub struct Token {
    value: Secret<HeaderValue>,
    refresh_at: Instant,
    /// When `expires_in` runs out: until then a failed refresh keeps serving it.
    expires_at: Instant,
    /// Which fetch produced it, so a 401 invalidates only the token it was sent with.
    generation: u64,
    /// The tenant's API host, when the profile discovers it with the token.
    api_base: Option<url::Url>,
}

impl Token {
    pub(crate) fn api_base(&self) -> Option<&url::Url> {
        self.api_base.as_ref()
    }

    pub(crate) fn header(&self) -> HeaderValue {
        self.value.expose().clone()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    fn is_fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }

    /// Due for a refresh but not expired: still good for a call.
    fn is_usable(&self) -> bool {
        Instant::now() < self.expires_at
    }
}

#[derive(Default)]
struct State {
    token: Option<Arc<Token>>,
    /// Refresh attempts completed, and how the last one ended: a caller that waited
    /// behind a refresh takes its outcome instead of asking the endpoint again.
    attempts: u64,
    last_failure: Option<(Failure, Instant)>,
}

pub struct TokenCache {
    http: reqwest::Client,
    /// How the profile asks for a token.
    request: TokenRequest,
    state: RwLock<State>,
    /// Held by the one caller that talks to the token endpoint.
    refresh: tokio::sync::Mutex<()>,
    backoff: ExponentialBuilder,
}

/// When to refresh a token that lives `lifetime`.
pub fn refresh_after(lifetime: Duration) -> Duration {
    if lifetime < SHORT_LIFETIME {
        lifetime / 2
    } else {
        lifetime - REFRESH_MARGIN
    }
}

impl TokenCache {
    pub(crate) fn new(http: reqwest::Client, request: TokenRequest) -> Self {
        Self {
            http,
            request,
            state: RwLock::new(State::default()),
            refresh: tokio::sync::Mutex::new(()),
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(4)
                .with_jitter(),
        }
    }

    /// Shortens the token endpoint's retries (tests of refusal and outages).
    pub fn with_backoff(mut self, backoff: ExponentialBuilder) -> Self {
        self.backoff = backoff;
        self
    }

    /// A fresh token; at most one request to the token endpoint is in flight, and a
    /// refusal is shared with every caller for [`FAILURE_HOLD`].
    pub async fn token(&self) -> Result<Arc<Token>, Failure> {
        self.get(false).await
    }

    /// A new token whatever is cached: the probe of a paused worker.
    pub async fn refresh(&self) -> Result<Arc<Token>, Failure> {
        self.get(true).await
    }

    async fn get(&self, force: bool) -> Result<Arc<Token>, Failure> {
        let (seen, usable) = {
            let state = self.read();
            let usable = state.token.clone().filter(|t| t.is_usable());
            if !force {
                if let Some(token) = state.token.as_ref().filter(|t| t.is_fresh()) {
                    return Ok(token.clone());
                }
                if let Some((failure, at)) = &state.last_failure
                    && at.elapsed() < FAILURE_HOLD
                {
                    // The endpoint is down, the token still works: keep using it.
                    return Self::despite(failure, usable.as_ref(), false);
                }
            }
            (state.attempts, usable)
        };
        let _refreshing = match (&usable, force) {
            // Refresh ahead: one caller asks the endpoint, the others go on with the
            // token that still works instead of queueing behind a slow endpoint.
            (Some(token), false) => match self.refresh.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(token.clone()),
            },
            _ => self.refresh.lock().await,
        };
        {
            // Someone else asked the endpoint while we waited: take their answer,
            // even a token already due (an `expires_in` of 0 must not make every
            // waiter ask again).
            let state = self.read();
            if state.attempts != seen {
                match (&state.last_failure, &state.token) {
                    (None, Some(token)) => return Ok(token.clone()),
                    (Some((failure, _)), token) => {
                        return Self::despite(failure, token.as_ref(), force);
                    }
                    (None, None) => {}
                }
            }
            if !force && let Some(token) = state.token.as_ref().filter(|t| t.is_fresh()) {
                return Ok(token.clone());
            }
        }
        let outcome = self.fetch().await;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.attempts += 1;
        match outcome {
            Ok(token) => {
                state.last_failure = None;
                state.token = Some(token.clone());
                Ok(token)
            }
            Err(failure) => {
                state.last_failure = Some((failure.clone(), Instant::now()));
                let outcome = Self::despite(&failure, state.token.as_ref(), force);
                if outcome.is_ok() {
                    tracing::warn!(error = %failure, "token refresh failed; the current token is used until it expires");
                }
                outcome
            }
        }
    }

    /// After a failed refresh: the current token while it has not expired, unless
    /// the credentials were refused or the caller is the probe (which must learn
    /// whether the endpoint answers); else the failure.
    fn despite(
        failure: &Failure,
        token: Option<&Arc<Token>>,
        force: bool,
    ) -> Result<Arc<Token>, Failure> {
        match (token.filter(|t| t.is_usable()), failure) {
            (Some(token), Failure::Systemic { cause, .. })
                if !force && *cause != Systemic::CredentialsRefused =>
            {
                Ok(token.clone())
            }
            _ => Err(failure.clone()),
        }
    }

    /// Forgets the token a 401 answered, unless a newer one already replaced it.
    pub fn invalidate(&self, generation: u64) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state
            .token
            .as_ref()
            .is_some_and(|t| t.generation == generation)
        {
            state.token = None;
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    async fn fetch(&self) -> Result<Arc<Token>, Failure> {
        let generation = self.read().attempts + 1;
        let once = || self.fetch_once(generation);
        once.retry(self.backoff)
            .sleep(tokio::time::sleep)
            .when(|f| matches!(f, Failure::Retryable { .. }))
            .notify(|f, wait| tracing::warn!(error = %f, retry_in = ?wait, "token request failed"))
            .await
            .map_err(|f| match f {
                Failure::Retryable { message } => Failure::systemic(
                    Systemic::ApiUnreachable,
                    format!("no token from the token endpoint: {message}"),
                ),
                other => other,
            })
    }

    async fn fetch_once(&self, generation: u64) -> Result<Arc<Token>, Failure> {
        let outcome = self.request_token(generation).await;
        let result = match &outcome {
            Ok(_) => "ok",
            Err(Failure::Systemic {
                cause: Systemic::CredentialsRefused,
                ..
            }) => "refused",
            Err(_) => "failed",
        };
        metrics::counter!(names::TOKEN_REQUESTS, "result" => result).increment(1);
        outcome
    }

    async fn request_token(&self, generation: u64) -> Result<Arc<Token>, Failure> {
        let obtained = self.request.obtain(&self.http).await?;
        tracing::info!(
            expires_in = obtained.lifetime.as_secs(),
            "obtained an API token"
        );
        let now = Instant::now();
        // A lifetime too far out for the clock is, in practice, for ever.
        let far = |d: Duration| now.checked_add(d).unwrap_or(now + FOR_EVER);
        Ok(Arc::new(Token {
            value: Secret::new(obtained.header),
            refresh_at: far(refresh_after(obtained.lifetime)),
            expires_at: far(obtained.lifetime),
            generation,
            api_base: obtained.api_base,
        }))
    }
}

/// Later than any token lives.
const FOR_EVER: Duration = Duration::from_secs(100 * 365 * 86_400);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_margins() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3540)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(120)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(119)),
            Duration::from_millis(59_500)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }
}
