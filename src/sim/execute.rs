//! The execute endpoint: the reference simulator's checks in its order, what v2 adds between
//! them (the `inin-ratelimit` window, chunks, trace context), and the profile's answer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::chunk::ChunkFields;
use super::payload::{self, Digest, Invalid};
use super::profile::{AnswerShape, ErrorShape};
use super::reply::{Refusal, json, json_bytes, random_uuid, with_correlation_id};
use super::routes::{not_found, read_body};
use super::state::{Counter, InFlight, IninTick, KeyRecord, Sim, Trace};

/// Order of the reference: 413, 401, 429, latency, attempt count, forced status, fail-first,
/// random 5xx, 400s, then record or repeat. v2 counts the call against `inin-ratelimit` as it
/// comes (so that every answer carries the headers) and refuses past the limit with the 429s;
/// a chunk is checked, and may fail by `SIM_FAIL_CHUNK`, after the body's 400s.
pub(crate) async fn execute(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let raw_id = sim.profile.action_segment(parts.uri.path()).to_owned();
    // The router also matches an empty `{id}`; the reference's `[^/]+` does not.
    if raw_id.is_empty() {
        return not_found(State(sim), body).await;
    }
    let Ok(body) = read_body(body, sim.cfg.max_body).await else {
        return sim.profile.errors.refuse(Refusal::UnreadableBody);
    };
    let in_flight = sim.enter();
    let tick = sim.inin_tick();
    let mut answer = match gate(&sim, &parts.headers, body.too_big, tick) {
        Some(refused) => refused,
        None => {
            let call = Call {
                raw_id,
                key: idempotency_key(&parts.headers),
                trace: Trace::of(&parts.headers),
                body: body.bytes,
            };
            call.run(sim, in_flight).await
        }
    };
    if let Some(tick) = tick {
        stamp_inin(answer.headers_mut(), tick);
    }
    answer
}

/// The checks before latency: body size, bearer token, rate limits. `Some` is the refusal.
fn gate(sim: &Sim, headers: &HeaderMap, too_big: bool, tick: Option<IninTick>) -> Option<Response> {
    let errors = sim.profile.errors;
    if too_big {
        sim.bump(Counter::TooLarge);
        return Some(errors.refuse(Refusal::TooLarge));
    }
    if let Err(refusal) = bearer(sim, headers) {
        sim.bump(Counter::Unauthorized);
        return Some(errors.refuse(refusal));
    }
    if let Some(tick) = tick.filter(IninTick::spent) {
        sim.bump(Counter::RateLimited);
        return Some(rate_limited(errors, HeaderValue::from(tick.reset_secs)));
    }
    if !sim.admit() {
        sim.bump(Counter::RateLimited);
        return Some(rate_limited(errors, sim.retry_after.clone()));
    }
    None
}

fn rate_limited(errors: ErrorShape, retry_after: HeaderValue) -> Response {
    let mut answer = errors.refuse(Refusal::RateLimited);
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, retry_after);
    answer
}

/// `inin-ratelimit-*`: Genesys's (deprecated, still honoured by the worker) view of the window.
fn stamp_inin(headers: &mut HeaderMap, tick: IninTick) {
    headers.insert("inin-ratelimit-count", HeaderValue::from(tick.count));
    headers.insert("inin-ratelimit-allowed", HeaderValue::from(tick.allowed));
    headers.insert("inin-ratelimit-reset", HeaderValue::from(tick.reset_secs));
}

/// What is left of an execute once it is admitted, owned so it can move into a task.
struct Call {
    /// The id as it stands in the path, still percent-encoded.
    raw_id: String,
    /// `Idempotency-Key`, "" when absent.
    key: String,
    trace: Option<Trace>,
    body: Bytes,
}

impl Call {
    async fn run(self, sim: Arc<Sim>, in_flight: InFlight) -> Response {
        if sim.cfg.latency_ms == 0 {
            return self.finish(&sim);
        }
        // The reference goes on after its sleep even when the client has hung up meanwhile (the
        // attempt and the key are still recorded, so a retry is a duplicate). Here a hang-up
        // drops the handler future, so the sleep and the rest run in a task of their own.
        let latency = Duration::from_millis(sim.cfg.latency_ms);
        let rest = tokio::spawn(async move {
            tokio::time::sleep(latency).await;
            let answer = self.finish(&sim);
            drop(in_flight);
            answer
        });
        rest.await
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }

    fn finish(self, sim: &Sim) -> Response {
        let Self {
            raw_id,
            key,
            trace,
            body,
        } = self;
        let errors = sim.profile.errors;
        let attempt = sim.attempt(&key);
        if let Some(status) = forced_status(&raw_id) {
            if status.is_server_error() {
                sim.bump(Counter::ServerErrors);
            }
            return errors.refuse(Refusal::Forced(status));
        }
        let fail_first = sim.cfg.fail_first > 0 && attempt <= u64::from(sim.cfg.fail_first);
        if fail_first || (sim.cfg.fail_5xx > 0.0 && rand::random::<f64>() < sim.cfg.fail_5xx) {
            sim.bump(Counter::ServerErrors);
            return errors.refuse(Refusal::Unavailable);
        }
        let payload = match sim.profile.body.parse(&body, &sim.fields) {
            Ok(payload) => payload,
            Err(invalid) => return bad_request(sim, invalid),
        };
        let key = if key.is_empty() {
            sim.bump(Counter::MissingKey);
            format!("nokey-{}", random_uuid())
        } else {
            key
        };
        let chunk_digest = match &payload.chunk {
            Some(chunk) => match receive_chunk(sim, chunk, &key, &payload.value, attempt) {
                Ok(digest) => Some(digest),
                Err(answer) => return *answer,
            },
            None => None,
        };
        if sim.profile.dedupe
            && let Some(first) = sim.repeat(&key, trace.as_ref())
        {
            return accepted(&first, true);
        }
        // The reference would crash on an id that is not valid percent-encoded UTF-8.
        let Some(data_action_id) = decode_uri_component(&raw_id) else {
            sim.bump(Counter::BadRequests);
            return errors.refuse(Refusal::InvalidActionId);
        };
        let digest = match chunk_digest {
            Some(digest) => digest,
            None => match payload::digest(&payload.value, sim.cfg.hash) {
                Ok(digest) => digest,
                Err(invalid) => return bad_request(sim, invalid),
            },
        };
        let record = KeyRecord {
            count: 1,
            execution_id: sim.profile.answer.new_execution_id(),
            data_action_id,
            content_type: payload.content_type.into_owned(),
            size: digest.size,
            sha256: digest.sha256,
            metadata: payload.metadata,
            execution_ids: Vec::new(),
            trace: trace.into_iter().collect(),
        };
        settle(sim, key, record, payload.chunk.as_ref())
    }
}

/// The checks and the bookkeeping of one chunk. Its bytes are decoded once, hashed for the
/// check, and handed to the upload; the key's record reuses the check's size and hash. The
/// refusal is boxed so that the common `Ok` stays small.
fn receive_chunk(
    sim: &Sim,
    chunk: &ChunkFields,
    key: &str,
    encoded: &str,
    attempt: u64,
) -> Result<Digest, Box<Response>> {
    if let Some(fail) = sim.cfg.fail_chunk
        && chunk.index == fail.index
        && attempt <= fail.attempts
    {
        sim.bump(Counter::ServerErrors);
        return Err(Box::new(sim.profile.errors.refuse(Refusal::Unavailable)));
    }
    let bad = |invalid| Box::new(bad_request(sim, invalid));
    let bytes = payload::decode(encoded).map_err(bad)?;
    chunk
        .check(key, encoded, &bytes)
        .map_err(|message| bad(Invalid::Body(message)))?;
    let size = bytes.len() as u64;
    sim.uploads
        .accept(chunk, bytes)
        .map_err(|message| bad(Invalid::Body(message)))?;
    Ok(Digest {
        size,
        sha256: sim.cfg.hash.then(|| chunk.sha256.clone()),
    })
}

/// Records the execution and answers in the profile's shape.
fn settle(sim: &Sim, key: String, record: KeyRecord, chunk: Option<&ChunkFields>) -> Response {
    match sim.profile.answer {
        AnswerShape::Accepted => {
            let (execution_id, repeat) = sim.record(key, record);
            accepted(&execution_id, repeat)
        }
        AnswerShape::Output => {
            let body = output(sim, &record, chunk);
            let execution_id = record.execution_id.clone();
            sim.record_execution(key, record);
            with_correlation_id(json_bytes(StatusCode::OK, body), &execution_id)
        }
    }
}

impl AnswerShape {
    /// A fresh execution id: the seed's `exec-<uuid>`, or a bare UUID where the id is the
    /// answer's `ININ-Correlation-Id`.
    fn new_execution_id(self) -> String {
        match self {
            Self::Accepted => format!("exec-{}", random_uuid()),
            Self::Output => random_uuid().to_string(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted<'a> {
    execution_id: &'a str,
    status: &'static str,
    message: &'static str,
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

/// The action's output in the genesys profile: what the simulator received, deterministic
/// for the same request, padded to `SIM_OUTPUT_BYTES`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output<'a> {
    action_id: &'a str,
    received_bytes: u64,
    sha256: Option<&'a str>,
    content_type: &'a str,
    metadata: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk: Option<OutputChunk<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    padding: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutputChunk<'a> {
    upload_id: &'a str,
    index: u64,
    count: u64,
}

fn output(sim: &Sim, record: &KeyRecord, chunk: Option<&ChunkFields>) -> Vec<u8> {
    let mut out = Output {
        action_id: &record.data_action_id,
        received_bytes: record.size,
        sha256: record.sha256.as_deref(),
        content_type: &record.content_type,
        metadata: &record.metadata,
        chunk: chunk.map(|c| OutputChunk {
            upload_id: &c.upload_id,
            index: c.index,
            count: c.count,
        }),
        padding: None,
    };
    let bytes = serde_json::to_vec(&out).unwrap_or_default();
    if bytes.len() >= sim.cfg.output_bytes {
        return bytes;
    }
    // `,"padding":"…"` adds its own 13 bytes to the value; plain ASCII needs no escaping.
    const FRAME: usize = r#","padding":"""#.len();
    let fill = sim.cfg.output_bytes.saturating_sub(bytes.len() + FRAME);
    out.padding = Some("x".repeat(fill));
    serde_json::to_vec(&out).unwrap_or_default()
}

fn bad_request(sim: &Sim, invalid: Invalid) -> Response {
    sim.bump(Counter::BadRequests);
    let errors = sim.profile.errors;
    match invalid {
        Invalid::Json => errors.refuse(Refusal::InvalidJson),
        Invalid::Payload => errors.refuse(Refusal::InvalidPayload),
        Invalid::Body(message) => errors.refuse(Refusal::BadBody(&message)),
    }
}

/// `Authorization: Bearer <token>` naming a token that has not expired. Only the first
/// `Authorization` field counts, as in Node.
fn bearer(sim: &Sim, headers: &HeaderMap) -> Result<(), Refusal<'static>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .ok_or(Refusal::NoToken)?;
    let valid = std::str::from_utf8(token).is_ok_and(|token| sim.token_valid(token));
    if valid {
        Ok(())
    } else {
        Err(Refusal::BadToken)
    }
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
