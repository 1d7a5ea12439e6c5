//! `https://` (and, when allowed, `http://`) references: only to the hosts and ports
//! of `FILE_HTTP_ALLOWED_HOSTS`, every redirect hop checked, the body read under a hard
//! cap and the minimum rate, paid for in the byte budget as it arrives.
//!
//! `open` sends the GET and reads the answer's head: its `Content-Length` refuses an
//! oversize file before the body is read. A HEAD first would cost a round trip and
//! fail on presigned URLs, which are signed for GET only.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use url::Url;

use super::transfer::{MinRate, Transfer};
use super::{check_size, denied};
use crate::budget::Reservation;
use crate::config::{AllowedHost, AllowedPort, ConfigError, FileSettings};
use crate::job::{ErrorKind, Failure};

/// Redirects followed before the reference counts as unreachable.
const MAX_REDIRECTS: usize = 5;

/// The client and the rules it fetches by.
#[derive(Debug)]
pub(crate) struct Http {
    client: reqwest::Client,
    /// Empty = no http(s) source.
    hosts: Vec<AllowedHost>,
    allow_plain: bool,
    pub(super) rate: MinRate,
    /// The longest a body waits for room in the byte budget at each step of its
    /// growth (`FILE_HTTP_TIMEOUT`).
    pub(super) room_wait: Duration,
}

/// An answer whose head was read and checked; its body not yet.
#[derive(Debug)]
pub(crate) struct OpenedHttp {
    response: reqwest::Response,
    /// `Content-Length` when the server sent one, else the limit (the worst case).
    size: u64,
    rate: MinRate,
    room_wait: Duration,
    /// The final URL without userinfo or query, for messages.
    shown: String,
}

impl Http {
    pub(crate) fn new(files: &FileSettings) -> Result<Self, ConfigError> {
        let bad = |var: &'static str, message: String| ConfigError { var, message };
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("cxone-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(files.http_timeout)
            .read_timeout(files.http_timeout)
            // Redirects are followed by hand, so that each hop meets the allowlist.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &files.http_ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| bad("FILE_HTTP_CA_FILE", e.to_string()))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| {
            bad(
                "FILE_HTTP_CA_FILE",
                format!("cannot build the https client: {e}"),
            )
        })?;
        Ok(Self {
            client,
            hosts: files.http_allowed_hosts.clone(),
            allow_plain: files.http_allow_plain,
            rate: MinRate::from_settings(files),
            room_wait: files.http_timeout,
        })
    }

    /// GETs the reference, following allowed redirects, and refuses the answer
    /// unless it is a success of at most `max` bytes (by its `Content-Length`).
    pub(crate) async fn open(&self, reference: &str, max: u64) -> Result<OpenedHttp, Failure> {
        let (response, shown) = self.get(reference, HeaderMap::new()).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(refusal(&shown, status));
        }
        let size = match response.content_length() {
            Some(length) => {
                check_size(length, max)?;
                length
            }
            None => max,
        };
        Ok(OpenedHttp {
            response,
            size,
            rate: self.rate,
            room_wait: self.room_wait,
            shown,
        })
    }

    /// GETs the reference with `headers` (sent to every hop), following the
    /// redirects the allowlist allows, and returns the first answer that is not a
    /// redirect, whatever its status, with its URL as messages show it.
    pub(super) async fn get(
        &self,
        reference: &str,
        headers: HeaderMap,
    ) -> Result<(reqwest::Response, String), Failure> {
        let mut url = Url::parse(reference).map_err(|e| {
            Failure::permanent(
                ErrorKind::FileNotFound,
                format!("{} is not a URL: {e}", shown_raw(reference)),
            )
        })?;
        self.check(&url, "")?;
        for _ in 0..=MAX_REDIRECTS {
            let shown = shown(&url);
            let response = self
                .client
                .get(url.clone())
                .headers(headers.clone())
                .send()
                .await
                .map_err(|e| transport(&shown, e))?;
            if response.status().is_redirection()
                && let Some(next) = location(&response, &url)
            {
                self.check(&next, "redirected: ")?;
                url = next;
                continue;
            }
            return Ok((response, shown));
        }
        Err(denied(format!(
            "{} redirects more than {MAX_REDIRECTS} times",
            shown_raw(reference)
        )))
    }

    /// Refuses a URL whose scheme, host or port the settings do not allow. `context`
    /// says whether the URL came from the job or from a redirect.
    fn check(&self, url: &Url, context: &str) -> Result<(), Failure> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_plain => {}
            "http" => {
                return Err(denied(format!(
                    "{context}plain http:// is refused (FILE_HTTP_ALLOW_PLAIN is false)"
                )));
            }
            other => return Err(denied(format!("{context}{other}:// is not an http(s) URL"))),
        }
        if self.hosts.is_empty() {
            return Err(denied(
                "http(s):// references are disabled (FILE_HTTP_ALLOWED_HOSTS is empty)",
            ));
        }
        let host = url.host_str().unwrap_or("");
        // `Url` drops a port equal to the scheme's default: `port()` is `None` then.
        let allowed = |h: &AllowedHost| {
            h.host == host
                && match h.port {
                    AllowedPort::Default => url.port().is_none(),
                    AllowedPort::Only(port) => url.port_or_known_default() == Some(port),
                    AllowedPort::Any => true,
                }
        };
        if self.hosts.iter().any(allowed) {
            return Ok(());
        }
        let shown_host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Err(denied(format!(
            "{context}{shown_host:?} is not in FILE_HTTP_ALLOWED_HOSTS \
             (an entry without a port allows the default port only; host:* allows any)"
        )))
    }
}

impl OpenedHttp {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Reads the body, stopping as soon as it passes `max` bytes, whatever the
    /// `Content-Length` said (a server may lie, or send chunks without one). With
    /// `room`, the reservation grows as bytes arrive instead of trusting that length.
    pub(crate) async fn read(
        self,
        max: u64,
        room: Option<&mut Reservation>,
    ) -> Result<Bytes, Failure> {
        let (size, wait) = (self.size, self.room_wait);
        let transfer = body(self.response, self.rate, self.shown);
        // Without a budget (`cxone-worker encode`, tests) the announced size is the
        // buffer; with one, nothing is taken on trust.
        let trusted = if room.is_some() { 0 } else { size };
        transfer
            .collect(size, trusted, max, room.map(|r| (r, wait)))
            .await
    }
}

/// An answer's body as a [`Transfer`].
pub(super) fn body(response: reqwest::Response, rate: MinRate, shown: String) -> Transfer {
    let named = shown.clone();
    let chunks = response
        .bytes_stream()
        .map(move |chunk| chunk.map_err(|e| transport(&named, e)));
    Transfer::new(Box::pin(chunks), rate, shown)
}

/// The next URL of a redirect, or `None` when the answer names none usable.
fn location(response: &reqwest::Response, current: &Url) -> Option<Url> {
    let raw = response
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    current.join(raw).ok()
}

/// What a final answer other than a success means for the job.
pub(super) fn refusal(shown: &str, status: StatusCode) -> Failure {
    let what = format!("{shown} answered {status}");
    match status.as_u16() {
        404 | 410 => Failure::permanent(ErrorKind::FileNotFound, what),
        401 | 403 | 407 => denied(what),
        408 | 429 | 500..=599 => Failure::retryable(what),
        // Anything else (400, 405, a redirect without a Location…) will not change
        // by asking again: the reference leads to no file.
        _ => Failure::permanent(ErrorKind::FileNotFound, what),
    }
}

/// Connections refused, timeouts and broken bodies are worth another attempt.
pub(super) fn transport(shown: &str, e: reqwest::Error) -> Failure {
    let what = if e.is_timeout() {
        "timed out"
    } else {
        "failed"
    };
    // The error's own text would repeat the URL, query string (a presigned
    // signature) included: `shown` says it without.
    let cause = crate::telemetry::chain(&e.without_url());
    Failure::retryable(format!("fetching {shown} {what}: {cause}"))
}

/// A URL as messages show it: no userinfo, and `?…` in place of a query, which may
/// hold a presigned signature.
pub(crate) fn shown(url: &Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path());
    if url.query().is_some() {
        out.push_str("?…");
    }
    out
}

/// [`shown`] for text that may not parse as a URL: no password, no query.
pub(crate) fn shown_raw(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(url) => shown(&url),
        Err(_) => {
            // Redact first: a password may itself hold `?` or `#`.
            let redacted = crate::text::redact_url(raw);
            let cut = redacted.find(['?', '#']).unwrap_or(redacted.len());
            redacted[..cut].to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(hosts: &[&str], allow_plain: bool) -> Http {
        Http {
            client: reqwest::Client::new(),
            hosts: hosts
                .iter()
                .map(|h| AllowedHost::parse(h).unwrap())
                .collect(),
            allow_plain,
            rate: MinRate::OFF,
            room_wait: Duration::from_secs(1),
        }
    }

    fn denied_kind(r: Result<(), Failure>) -> bool {
        matches!(
            r,
            Err(Failure::Permanent {
                kind: ErrorKind::FileAccessDenied,
                ..
            })
        )
    }

    #[test]
    fn hosts_and_schemes_are_checked() {
        let h = http(&["files.example.com", "cdn.example.com:8443"], false);
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(h.check(&url("https://files.example.com/a.pdf"), "").is_ok());
        assert!(h.check(&url("https://FILES.example.com/a.pdf"), "").is_ok());
        assert!(
            h.check(&url("https://cdn.example.com:8443/a.pdf"), "")
                .is_ok()
        );
        assert!(denied_kind(
            h.check(&url("https://cdn.example.com/a.pdf"), "")
        ));
        assert!(denied_kind(
            h.check(&url("https://evil.example.com/a.pdf"), "")
        ));
        assert!(denied_kind(
            h.check(&url("https://files.example.com.evil.io/a.pdf"), "")
        ));
        assert!(denied_kind(
            h.check(&url("http://files.example.com/a.pdf"), "")
        ));
        assert!(denied_kind(
            h.check(&url("ftp://files.example.com/a.pdf"), "")
        ));
        assert!(
            http(&["files.example.com"], true)
                .check(&url("http://files.example.com/a"), "")
                .is_ok()
        );
        assert!(denied_kind(
            http(&[], true).check(&url("https://files.example.com/a"), "")
        ));
    }

    #[test]
    fn a_host_without_a_port_allows_the_default_port_only() {
        let url = |s: &str| Url::parse(s).unwrap();
        let h = http(&["files.example.com", "127.0.0.1"], true);
        for allowed in [
            "https://files.example.com/a",
            "https://files.example.com:443/a",
            "http://files.example.com/a",
            "http://files.example.com:80/a",
            "https://127.0.0.1/a",
        ] {
            assert!(h.check(&url(allowed), "").is_ok(), "{allowed}");
        }
        for refused in [
            "https://files.example.com:9999/a",
            "https://files.example.com:80/a",
            "http://files.example.com:443/a",
            // The worker's own admin port and the simulator's, on the same host.
            "http://127.0.0.1:9090/metrics",
            "http://127.0.0.1:8080/__stats",
        ] {
            assert!(denied_kind(h.check(&url(refused), "")), "{refused}");
        }
        let ported = http(&["127.0.0.1:8443", "[::1]:*", "any.example.com:*"], false);
        assert!(ported.check(&url("https://127.0.0.1:8443/a"), "").is_ok());
        assert!(denied_kind(ported.check(&url("https://127.0.0.1/a"), "")));
        assert!(denied_kind(
            ported.check(&url("https://127.0.0.1:8444/a"), "")
        ));
        assert!(ported.check(&url("https://[::1]:1234/a"), "").is_ok());
        assert!(ported.check(&url("https://[::1]/a"), "").is_ok());
        assert!(
            ported
                .check(&url("https://any.example.com:1/a"), "")
                .is_ok()
        );
        // A port given that happens to be the default is that port.
        let default = http(&["files.example.com:443"], false);
        assert!(
            default
                .check(&url("https://files.example.com/a"), "")
                .is_ok()
        );
    }

    #[test]
    fn shown_urls_hold_no_secrets() {
        let url =
            Url::parse("https://user:pw@files.example.com:8443/a%20b.pdf?X-Amz-Signature=abc#frag")
                .unwrap();
        assert_eq!(shown(&url), "https://files.example.com:8443/a%20b.pdf?…");
        assert_eq!(
            shown_raw("https://user:pw@[bad/x?sig=1"),
            "https://user:***@[bad/x"
        );
        let shown = shown_raw("https://user:pa?SeCrEt@files.example.com/f.pdf");
        assert_eq!(shown, "https://user:***@files.example.com/f.pdf");
    }

    #[test]
    fn answers_map_to_decisions() {
        let kind = |s: u16| match refusal("u", StatusCode::from_u16(s).unwrap()) {
            Failure::Permanent { kind, .. } => Some(kind),
            _ => None,
        };
        assert_eq!(kind(404), Some(ErrorKind::FileNotFound));
        assert_eq!(kind(410), Some(ErrorKind::FileNotFound));
        assert_eq!(kind(401), Some(ErrorKind::FileAccessDenied));
        assert_eq!(kind(403), Some(ErrorKind::FileAccessDenied));
        assert_eq!(kind(400), Some(ErrorKind::FileNotFound));
        for retryable in [408, 429, 500, 502, 503, 504] {
            assert_eq!(kind(retryable), None, "{retryable}");
        }
    }
}
