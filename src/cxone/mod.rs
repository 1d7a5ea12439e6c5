//! The CXone API: the shared token ([`auth`]) and the execute call with one
//! classification of every answer ([`client`]); its limits are [`crate::limits`].

pub mod auth;
pub mod client;
mod grant;
pub mod profile;

use std::time::{Duration, SystemTime};

pub use client::{Client, Executed};
use profile::{ErrorBodies, ExecutionId, Profile};

/// A `Retry-After` is obeyed up to this long; longer asks are treated as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// What a 429 without a usable `Retry-After` waits.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Error answers are quoted in results up to this many bytes.
pub const EXCERPT_BYTES: usize = 512;

/// What an execute answer means for the worker: the only thing it acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Any 2xx; its execution id (where the profile says) and its body.
    Success {
        execution_id: Option<String>,
        output: Output,
    },
    /// 429: every call waits this long, then this call is made again.
    RateLimited(Duration),
    /// 401: the token is refreshed once and the call repeated.
    Unauthorized,
    /// 5xx, 408: a failed attempt, worth another later.
    Retryable(String),
    /// 403: dead-lettered as `forbidden`.
    Forbidden { error: String },
    /// Any other 4xx: `rejected`.
    Rejected { error: String },
    /// 1xx, 3xx or a status outside HTTP's: not an answer of the API we mean to
    /// call (CXONE_API_URL is wrong, a proxy redirects). The worker's problem, not
    /// the job's: never a dead letter.
    Misdirected(String),
}

/// The API's answer body, as the result carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Empty, or not JSON.
    None,
    /// JSON of at most [`MAX_OUTPUT_BYTES`].
    Json(serde_json::Value),
    /// JSON, or something, longer than that: left out, and said so.
    Truncated,
}

/// The largest answer body a result carries as `output`.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// An answer as read: status, the headers that matter, and at most
/// [`MAX_OUTPUT_BYTES`] + 1 bytes of body (the one more says "longer").
pub struct Read<'a> {
    pub status: u16,
    pub retry_after: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub body: &'a [u8],
}

/// Classifies an execute answer, the profile saying where the execution id is and
/// how errors read.
pub fn classify(read: &Read<'_>, profile: &Profile, now: SystemTime) -> Answer {
    let (status, body) = (read.status, read.body);
    match status {
        200..=299 => Answer::Success {
            execution_id: match profile.execution_id {
                ExecutionId::BodyField => execution_id(body),
                ExecutionId::CorrelationHeader => read
                    .correlation_id
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned),
            },
            output: output(body),
        },
        429 => Answer::RateLimited(
            read.retry_after
                .and_then(|v| parse_retry_after(v, now))
                .unwrap_or(DEFAULT_RETRY_AFTER),
        ),
        401 => Answer::Unauthorized,
        408 => Answer::Retryable("API answered 408 Request Timeout".into()),
        500..=599 => Answer::Retryable(error_text(status, body, profile)),
        403 => Answer::Forbidden {
            error: error_text(status, body, profile),
        },
        400..=499 => Answer::Rejected {
            error: error_text(status, body, profile),
        },
        _ => Answer::Misdirected(format!(
            "API answered {status}, which no call of it answers: check CXONE_API_URL"
        )),
    }
}

fn execution_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Accepted {
        #[serde(rename = "executionId")]
        execution_id: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Accepted>(body)
        .ok()?
        .execution_id?
    {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn output(body: &[u8]) -> Output {
    if body.len() > MAX_OUTPUT_BYTES {
        return Output::Truncated;
    }
    match serde_json::from_slice(body) {
        Ok(value) => Output::Json(value),
        Err(_) => Output::None,
    }
}

/// `API answered 400: …`, with Genesys's `code`, `message` and `contextId` where
/// the profile's errors have them, else an excerpt of the answer.
fn error_text(status: u16, body: &[u8], profile: &Profile) -> String {
    #[derive(serde::Deserialize)]
    struct GenesysError {
        message: Option<String>,
        code: Option<String>,
        #[serde(rename = "contextId")]
        context_id: Option<String>,
    }
    if profile.errors == ErrorBodies::Genesys
        && let Ok(e) = serde_json::from_slice::<GenesysError>(body)
        && (e.message.is_some() || e.code.is_some())
    {
        let short = |s: Option<String>| s.map(|s| excerpt(s.as_bytes()));
        let mut text = format!("API answered {status}");
        if let Some(code) = short(e.code) {
            text.push_str(&format!(" {code}"));
        }
        if let Some(message) = short(e.message) {
            text.push_str(&format!(": {message}"));
        }
        if let Some(context) = short(e.context_id) {
            text.push_str(&format!(" (contextId {context})"));
        }
        return text;
    }
    format!("API answered {status}: {}", excerpt(body))
}

/// A Genesys answer whose `inin-ratelimit-count` reached `inin-ratelimit-allowed`:
/// the wait of `inin-ratelimit-reset` before the next call, capped like a
/// `Retry-After`.
pub fn spent_rate_limit(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    let count = number("inin-ratelimit-count")?;
    let allowed = number("inin-ratelimit-allowed")?;
    let reset = number("inin-ratelimit-reset")?;
    (allowed > 0 && count >= allowed).then(|| Duration::from_secs(reset).min(MAX_RETRY_AFTER))
}

/// `Retry-After` as seconds or as an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// At most [`EXCERPT_BYTES`] of an answer, on a character boundary, on one line, and
/// with long base64 runs cut: an API that echoes the request must not carry payload
/// bytes into results.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES * 4)]);
    let mut out = String::with_capacity(EXCERPT_BYTES);
    let mut run = 0usize;
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=') {
            run += 1;
        } else {
            run = 0;
        }
        if run > 64 {
            if run == 65 {
                out.truncate(out.len() - 64);
                out.push('…');
            }
            continue;
        }
        if out.len() + c.len_utf8() > EXCERPT_BYTES {
            break;
        }
        out.push(c);
    }
    out.trim().to_owned()
}

/// A transport error with its causes, without the URL (which is ours to know).
pub(crate) fn transport_message(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut message = what.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `{base}/{segments…}`, each segment percent-encoded (a data action id is a path
/// segment, never a path).
pub(crate) fn endpoint(base: &url::Url, segments: &[&str]) -> url::Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("CXONE_API_URL was checked to be http(s)")
        .pop_if_empty()
        .extend(segments);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn profile(name: crate::config::ProfileName, api: &str) -> Profile {
        let api = Some(url::Url::parse(api).unwrap());
        Profile::from_settings(&crate::config::ApiSettings::new(name, api, "id", "s"))
    }

    fn seed() -> Profile {
        profile(crate::config::ProfileName::Seed, "http://api.example")
    }

    fn genesys() -> Profile {
        profile(
            crate::config::ProfileName::Genesys,
            "https://api.mypurecloud.com",
        )
    }

    fn classify_as(
        profile: &Profile,
        status: u16,
        retry_after: Option<&str>,
        correlation_id: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let read = Read {
            status,
            retry_after,
            correlation_id,
            body,
        };
        classify(&read, profile, now())
    }

    #[test]
    fn every_answer_has_one_meaning() {
        let c = |status, body: &[u8]| classify_as(&seed(), status, None, None, body);
        assert_eq!(
            c(202, br#"{"executionId":"exec-1","status":"queued"}"#),
            Answer::Success {
                execution_id: Some("exec-1".into()),
                output: Output::Json(serde_json::json!({"executionId":"exec-1","status":"queued"})),
            }
        );
        assert_eq!(
            c(200, b"not json"),
            Answer::Success {
                execution_id: None,
                output: Output::None
            }
        );
        assert_eq!(
            c(204, b""),
            Answer::Success {
                execution_id: None,
                output: Output::None
            }
        );
        assert_eq!(c(401, b""), Answer::Unauthorized);
        assert_eq!(c(429, b""), Answer::RateLimited(Duration::from_secs(1)));
        assert!(matches!(c(408, b""), Answer::Retryable(_)));
        for s in [500, 502, 503, 504, 599] {
            assert!(
                matches!(c(s, b"down"), Answer::Retryable(m) if m.contains(&s.to_string())),
                "{s}"
            );
        }
        assert_eq!(
            c(403, b"{\"error\":\"no\"}"),
            Answer::Forbidden {
                error: "API answered 403: {\"error\":\"no\"}".into()
            }
        );
        for s in [400, 404, 409, 413, 422, 451] {
            assert!(
                matches!(c(s, b"bad"), Answer::Rejected { error } if error == format!("API answered {s}: bad")),
                "{s}"
            );
        }
        for s in [101, 301, 302, 308, 600] {
            assert!(
                matches!(c(s, b""), Answer::Misdirected(m) if m.contains("CXONE_API_URL")),
                "{s}: a redirect is a wrong address, not a bad job"
            );
        }
    }

    #[test]
    fn retry_after_in_seconds_and_dates() {
        let r = |v| classify_as(&seed(), 429, Some(v), None, b"");
        assert_eq!(r("7"), Answer::RateLimited(Duration::from_secs(7)));
        assert_eq!(r("0"), Answer::RateLimited(Duration::ZERO));
        assert_eq!(r("86400"), Answer::RateLimited(MAX_RETRY_AFTER));
        let in_20s = httpdate::fmt_http_date(now() + Duration::from_secs(20));
        assert_eq!(r(&in_20s), Answer::RateLimited(Duration::from_secs(20)));
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(20));
        assert_eq!(r(&past), Answer::RateLimited(Duration::ZERO));
        let far = httpdate::fmt_http_date(now() + Duration::from_secs(3600));
        assert_eq!(r(&far), Answer::RateLimited(MAX_RETRY_AFTER));
        assert_eq!(r("soon"), Answer::RateLimited(Duration::from_secs(1)));
    }

    #[test]
    fn genesys_answers_have_their_own_ids_and_errors() {
        let g = genesys();
        let ok = classify_as(&g, 200, None, Some("corr-1"), br#"{"out":1}"#);
        assert_eq!(
            ok,
            Answer::Success {
                execution_id: Some("corr-1".into()),
                output: Output::Json(serde_json::json!({"out": 1})),
            }
        );
        let body = br#"{"message":"Missing input: doc","code":"bad.request","status":400,"contextId":"ctx-9","details":[],"errors":[]}"#;
        assert_eq!(
            classify_as(&g, 400, None, Some("corr-2"), body),
            Answer::Rejected {
                error: "API answered 400 bad.request: Missing input: doc (contextId ctx-9)".into()
            }
        );
        let big = vec![b' '; MAX_OUTPUT_BYTES + 1];
        assert!(matches!(
            classify_as(&g, 200, None, None, &big),
            Answer::Success {
                output: Output::Truncated,
                ..
            }
        ));
    }

    #[test]
    fn a_spent_inin_ratelimit_is_a_wait() {
        let headers = |count: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("inin-ratelimit-count", count.parse().unwrap());
            h.insert("inin-ratelimit-allowed", "300".parse().unwrap());
            h.insert("inin-ratelimit-reset", "12".parse().unwrap());
            h
        };
        assert_eq!(spent_rate_limit(&headers("299")), None);
        assert_eq!(
            spent_rate_limit(&headers("300")),
            Some(Duration::from_secs(12))
        );
        assert_eq!(spent_rate_limit(&reqwest::header::HeaderMap::new()), None);
    }

    #[test]
    fn excerpts_are_short_single_line_and_payload_free() {
        let long = "é".repeat(1000);
        let e = excerpt(long.as_bytes());
        assert!(e.len() <= EXCERPT_BYTES && e.is_char_boundary(e.len()));
        assert_eq!(excerpt(b"line one\nline two"), "line one line two");
        let echoed = format!("{{\"error\":\"bad\",\"value\":\"{}\"}}", "QUJD".repeat(100));
        let e = excerpt(echoed.as_bytes());
        assert!(!e.contains(&"QUJD".repeat(17)), "{e}");
        assert!(e.starts_with("{\"error\":\"bad\""));
    }

    #[test]
    fn endpoints_encode_their_segments() {
        let base = url::Url::parse("https://api.example/prefix").unwrap();
        assert_eq!(
            endpoint(&base, &["api", "v2", "data-actions", "a/b c", "execute"]).as_str(),
            "https://api.example/prefix/api/v2/data-actions/a%2Fb%20c/execute"
        );
        let root = url::Url::parse("http://127.0.0.1:1/").unwrap();
        assert_eq!(endpoint(&root, &["api"]).as_str(), "http://127.0.0.1:1/api");
    }
}
