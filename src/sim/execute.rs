//! `POST /api/v2/data-actions/{id}/execute`: the reference simulator's checks, in its order.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::payload::{self, Invalid};
use super::routes::{broken_body, error, json, not_found, read_body};
use super::state::{Counter, KeyRecord, Sim};

/// Order of the reference: 413, 401, 429, latency, attempt count, forced status, fail-first,
/// random 5xx, 400s, then record or repeat.
pub(crate) async fn execute(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let raw_id = data_action_segment(parts.uri.path()).to_owned();
    // The router also matches an empty `{id}`; the reference's `[^/]+` does not.
    if raw_id.is_empty() {
        return not_found(body).await;
    }
    let Ok(body) = read_body(body, sim.cfg.max_body).await else {
        return broken_body();
    };
    let in_flight = sim.enter();
    if body.too_big {
        sim.bump(Counter::TooLarge);
        return error(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
    }
    if !bearer_valid(&sim, &parts.headers) {
        sim.bump(Counter::Unauthorized);
        return error(StatusCode::UNAUTHORIZED, "invalid_token");
    }
    if !sim.admit() {
        sim.bump(Counter::RateLimited);
        let mut answer = error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
        answer
            .headers_mut()
            .insert(header::RETRY_AFTER, sim.retry_after.clone());
        return answer;
    }
    let call = Call {
        raw_id,
        key: idempotency_key(&parts.headers),
        body: body.bytes,
    };
    if sim.cfg.latency_ms == 0 {
        return call.finish(&sim);
    }
    // The reference goes on after its sleep even when the client has hung up meanwhile (the
    // attempt and the key are still recorded, so a retry is a duplicate). Here a hang-up drops
    // the handler future, so the sleep and the rest run in a task of their own.
    let latency = Duration::from_millis(sim.cfg.latency_ms);
    let rest = tokio::spawn(async move {
        tokio::time::sleep(latency).await;
        let answer = call.finish(&sim);
        drop(in_flight);
        answer
    });
    rest.await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// What is left of an execute once it is admitted, owned so it can move into a task.
struct Call {
    /// The id as it stands in the path, still percent-encoded.
    raw_id: String,
    /// `Idempotency-Key`, "" when absent.
    key: String,
    body: axum::body::Bytes,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted<'a> {
    execution_id: &'a str,
    status: &'static str,
    message: &'static str,
}

impl Call {
    fn finish(self, sim: &Sim) -> Response {
        let attempt = sim.attempt(&self.key);
        if let Some(status) = forced_status(&self.raw_id) {
            if status.is_server_error() {
                sim.bump(Counter::ServerErrors);
            }
            return error(status, &format!("forced {}", status.as_u16()));
        }
        let fail_first = sim.cfg.fail_first > 0 && attempt <= u64::from(sim.cfg.fail_first);
        if fail_first || (sim.cfg.fail_5xx > 0.0 && rand::random::<f64>() < sim.cfg.fail_5xx) {
            sim.bump(Counter::ServerErrors);
            return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
        let payload = match payload::parse(&self.body) {
            Ok(payload) => payload,
            Err(Invalid::Json) => return bad_request(sim, "invalid json"),
            Err(Invalid::Payload) => return bad_request(sim, "invalid base64 payload"),
        };
        let key = if self.key.is_empty() {
            sim.bump(Counter::MissingKey);
            format!("nokey-{}", random_uuid())
        } else {
            self.key
        };
        if let Some(first) = sim.repeat(&key) {
            return accepted(&first, true);
        }
        // The reference would crash on an id that is not valid percent-encoded UTF-8.
        let Some(data_action_id) = decode_uri_component(&self.raw_id) else {
            return bad_request(sim, "invalid data action id");
        };
        let Ok(digest) = payload::digest(&payload.value, sim.cfg.hash) else {
            return bad_request(sim, "invalid base64 payload");
        };
        let record = KeyRecord {
            count: 1,
            execution_id: format!("exec-{}", random_uuid()),
            data_action_id,
            content_type: payload.content_type.into_owned(),
            size: digest.size,
            sha256: digest.sha256,
            metadata: payload.metadata,
        };
        let (execution_id, repeat) = sim.record(key, record);
        accepted(&execution_id, repeat)
    }
}

fn accepted(execution_id: &str, repeat: bool) -> Response {
    let message = if repeat {
        "duplicate"
    } else {
        "Data action execution accepted"
    };
    json(
        StatusCode::ACCEPTED,
        &Accepted {
            execution_id,
            status: "queued",
            message,
        },
    )
}

fn bad_request(sim: &Sim, message: &str) -> Response {
    sim.bump(Counter::BadRequests);
    error(StatusCode::BAD_REQUEST, message)
}

/// `Authorization: Bearer <token>` naming a token that has not expired. Only the first
/// `Authorization` field counts, as in Node.
fn bearer_valid(sim: &Sim, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .and_then(|token| std::str::from_utf8(token).ok())
        .is_some_and(|token| sim.token_valid(token))
}

/// The header as Node sees it: Latin-1 text, repeated fields joined with ", ".
fn idempotency_key(headers: &HeaderMap) -> String {
    let mut key = String::new();
    for (i, value) in headers.get_all("idempotency-key").iter().enumerate() {
        if i > 0 {
            key.push_str(", ");
        }
        match value.to_str() {
            Ok(ascii) => key.push_str(ascii),
            Err(_) => key.extend(value.as_bytes().iter().map(|&b| char::from(b))),
        }
    }
    key
}

/// The `{id}` segment; the route guarantees the prefix and suffix are there.
fn data_action_segment(path: &str) -> &str {
    path.strip_prefix("/api/v2/data-actions/")
        .and_then(|rest| rest.strip_suffix("/execute"))
        .unwrap_or_default()
}

/// `status-NNN` answers NNN. Codes hyper cannot send as a final answer (below 200) are left
/// as ordinary ids; the reference would crash or send an informational answer on them.
fn forced_status(raw_id: &str) -> Option<StatusCode> {
    let digits = raw_id.strip_prefix("status-")?;
    if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let status = StatusCode::from_u16(digits.parse().ok()?).ok()?;
    (status.as_u16() >= 200).then_some(status)
}

/// JavaScript's `decodeURIComponent`: every `%XX` decoded, the result must be UTF-8.
fn decode_uri_component(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A v4 UUID from the thread-local generator; `Uuid::new_v4` would make a system call each time.
fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_status_takes_three_digit_final_codes_only() {
        assert_eq!(
            forced_status("status-503"),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(forced_status("status-200"), Some(StatusCode::OK));
        for plain in [
            "status-50",
            "status-5030",
            "status-+50",
            "status-099",
            "status-100",
            "xstatus-503",
        ] {
            assert_eq!(forced_status(plain), None, "{plain}");
        }
    }

    #[test]
    fn decode_uri_component_is_strict() {
        assert_eq!(decode_uri_component("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(decode_uri_component("%C3%A9").as_deref(), Some("é"));
        for bad in ["%", "%2", "%zz", "%+1", "%C3", "%ff"] {
            assert_eq!(decode_uri_component(bad), None, "{bad}");
        }
    }
}
