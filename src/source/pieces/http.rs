//! Pieces of an `https://` file. `open` asks for its first byte (`Range: bytes=0-0`):
//! a server that answers `206` gives the size in `Content-Range` and each piece is
//! then a request of its own; one that answers `200` sends the whole file, which is
//! then read in order, skipping to the piece asked for and asked again from the
//! start when a read goes backwards. Each redirect hop meets the allowlist every
//! time, and each body the minimum rate.

use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};

use super::changed;
use crate::budget::ByteBudget;
use crate::job::{ErrorKind, Failure};
use crate::source::http::{Http, body, refusal};
use crate::source::transfer::Transfer;
use crate::source::{Fetched, check_size};

#[derive(Debug)]
pub(super) struct HttpPieces {
    http: Arc<Http>,
    /// The job's reference: every request starts there, so that a redirect to a
    /// presigned URL that expires is signed anew.
    reference: String,
    shown: String,
    size: u64,
    /// The server answers `Range` requests with 206: each piece is its own request.
    ranges: bool,
    /// A strong ETag, sent as `If-Match`: a file changed meanwhile answers 412.
    etag: Option<HeaderValue>,
    /// Without ranges: the body being read in order, and its position.
    stream: Option<(Transfer, u64)>,
}

impl HttpPieces {
    pub(super) async fn open(http: Arc<Http>, reference: &str, max: u64) -> Result<Self, Failure> {
        let (response, shown) = http.get(reference, range(0, 1, None)).await?;
        let etag = strong_etag(response.headers());
        let status = response.status();
        let (size, ranges, stream) = match status {
            StatusCode::PARTIAL_CONTENT => (content_range(&response, &shown)?.2, true, None),
            // Nothing to ask for in an empty file.
            StatusCode::RANGE_NOT_SATISFIABLE => (0, false, None),
            s if s.is_success() => match response.content_length() {
                Some(length) => {
                    check_size(length, max)?;
                    let transfer = body(response, http.rate, shown.clone());
                    (length, false, Some((transfer, 0)))
                }
                // No size, no ranges: read it through once, holding nothing, to learn it.
                None => {
                    let counted = body(response, http.rate, shown.clone()).count(max).await?;
                    (counted, false, None)
                }
            },
            _ => return Err(refusal(&shown, status)),
        };
        check_size(size, max)?;
        Ok(Self {
            http,
            reference: reference.to_owned(),
            shown,
            size,
            ranges,
            etag,
            stream,
        })
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    pub(super) async fn read(
        &mut self,
        offset: u64,
        len: u64,
        budget: &ByteBudget,
    ) -> Result<Fetched, Failure> {
        // The server's size was checked at open; what it sends now is untrusted.
        let mut reservation = budget.streamed();
        reservation
            .grow(len, self.http.room_wait)
            .await
            .map_err(|e| Failure::retryable(format!("reading {}: {e}", self.shown)))?;
        let read = if self.ranges {
            self.ranged(offset, len).await
        } else {
            self.in_order(offset, len).await
        };
        match read {
            Ok(bytes) => Ok(Fetched { bytes, reservation }),
            Err(failure) => {
                // Whatever the stream was, it is not where the next read expects.
                self.stream = None;
                Err(failure)
            }
        }
    }

    async fn ranged(&mut self, offset: u64, len: u64) -> Result<bytes::Bytes, Failure> {
        let headers = range(offset, len, self.etag.as_ref());
        let (response, shown) = self.http.get(&self.reference, headers).await?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let (start, end, total) = content_range(&response, &shown)?;
                if total != self.size {
                    return Err(changed(
                        &shown,
                        &format!("{} bytes, now {total}", self.size),
                    ));
                }
                if (start, end) != (offset, offset + len - 1) {
                    return Err(Failure::retryable(format!(
                        "{shown} answered bytes {start}-{end} when asked for {offset}-{}",
                        offset + len - 1
                    )));
                }
                body(response, self.http.rate, shown).take(len).await
            }
            StatusCode::PRECONDITION_FAILED => Err(changed(&shown, "its ETag changed")),
            StatusCode::RANGE_NOT_SATISFIABLE => Err(changed(&shown, "it is shorter")),
            // Ranges no longer honoured: the whole file came, read it in order.
            StatusCode::OK => {
                self.check_length(&response, &shown)?;
                self.ranges = false;
                self.stream = Some((body(response, self.http.rate, shown), 0));
                self.in_order(offset, len).await
            }
            status => Err(refusal(&shown, status)),
        }
    }

    async fn in_order(&mut self, offset: u64, len: u64) -> Result<bytes::Bytes, Failure> {
        let behind = !matches!(&self.stream, Some((_, at)) if *at <= offset);
        if behind {
            let mut headers = HeaderMap::new();
            if let Some(etag) = &self.etag {
                headers.insert(header::IF_MATCH, etag.clone());
            }
            let (response, shown) = self.http.get(&self.reference, headers).await?;
            match response.status() {
                StatusCode::PRECONDITION_FAILED => {
                    return Err(changed(&shown, "its ETag changed"));
                }
                s if s.is_success() => self.check_length(&response, &shown)?,
                status => return Err(refusal(&shown, status)),
            }
            self.stream = Some((body(response, self.http.rate, shown), 0));
        }
        let Some((transfer, at)) = &mut self.stream else {
            unreachable!("a stream was just set");
        };
        transfer.skip(offset - *at).await?;
        let bytes = transfer.take(len).await?;
        *at = offset + len;
        Ok(bytes)
    }

    /// Refuses a whole answer whose length is not the size first seen.
    fn check_length(&self, response: &reqwest::Response, shown: &str) -> Result<(), Failure> {
        match response.content_length() {
            Some(length) if length != self.size => Err(changed(
                shown,
                &format!("{} bytes, now {length}", self.size),
            )),
            _ => Ok(()),
        }
    }
}

/// `Range` for `len` bytes at `offset`, and `If-Match` when an ETag is known.
fn range(offset: u64, len: u64, etag: Option<&HeaderValue>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = format!("bytes={offset}-{}", offset + len - 1);
    headers.insert(
        header::RANGE,
        HeaderValue::from_str(&value).expect("digits and '-' make a header value"),
    );
    if let Some(etag) = etag {
        headers.insert(header::IF_MATCH, etag.clone());
    }
    headers
}

/// The ETag, unless weak: `If-Match` compares strongly, so a weak one never matches.
fn strong_etag(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(header::ETAG)
        .filter(|v| !v.as_bytes().starts_with(b"W/"))
        .cloned()
}

/// `(first, last, total)` of a 206's `Content-Range: bytes first-last/total`.
fn content_range(response: &reqwest::Response, shown: &str) -> Result<(u64, u64, u64), Failure> {
    let raw = response
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    parse_content_range(raw).ok_or_else(|| {
        Failure::permanent(
            ErrorKind::FileNotFound,
            format!("{shown} answered 206 with no usable Content-Range ({raw:?})"),
        )
    })
}

fn parse_content_range(raw: &str) -> Option<(u64, u64, u64)> {
    let rest = raw.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last, total) = (
        first.trim().parse().ok()?,
        last.trim().parse().ok()?,
        total.trim().parse().ok()?,
    );
    (first <= last && last < total).then_some((first, last, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_are_parsed_strictly() {
        assert_eq!(parse_content_range("bytes 0-0/1234"), Some((0, 0, 1234)));
        assert_eq!(parse_content_range("bytes 10-19/20"), Some((10, 19, 20)));
        for bad in [
            "",
            "bytes */20",
            "bytes 0-0/*",
            "bytes 5-4/20",
            "bytes 0-20/20",
            "items 0-1/2",
            "bytes 0-1",
            "bytes -1-2/3",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }
}
