//! The HTTP surface: which handler answers which request, the token and `/__*` endpoints, and
//! the helpers every handler shares (bounded body reading, JSON answers).

use std::borrow::Cow;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Serialize;

use super::execute::execute;
use super::state::{Counter, Sim};

pub(crate) fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        // axum answers HEAD with the GET handler; the reference only knows GET here.
        .route("/__stats", get(stats).head(not_found))
        .route("/__reset", post(reset))
        .route("/api/v2/oauth/token", post(token))
        .route("/api/v2/data-actions/{id}/execute", post(execute))
        // The reference has no 405: every other method or path is a JSON 404.
        .method_not_allowed_fallback(not_found)
        .fallback(not_found)
        .with_state(sim)
}

/// A request body read up to the limit.
pub(crate) struct ReadBody {
    /// The body; when too big, only the chunks that came before the limit was crossed.
    pub(crate) bytes: Bytes,
    /// More than `limit` bytes came; the rest was read and dropped.
    pub(crate) too_big: bool,
}

/// Reads the whole body, as the reference does before it answers anything, but keeps at most
/// `limit` bytes. The excess is still read and dropped rather than left unread: a client that is
/// still sending would otherwise see a reset connection instead of the 413.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<ReadBody, axum::Error> {
    let hint = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    let mut kept = Vec::with_capacity(hint.min(limit));
    let mut seen = 0usize;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len());
        if seen <= limit {
            kept.extend_from_slice(&chunk);
        }
    }
    Ok(ReadBody {
        bytes: Bytes::from(kept),
        too_big: seen > limit,
    })
}

/// Reads and drops a body that the answer does not depend on.
async fn drain(body: Body) {
    // A broken body changes nothing in an answer that ignores it.
    let _ = read_body(body, 0).await;
}

/// A JSON answer with the reference's headers.
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    let content_type = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    (status, content_type, bytes).into_response()
}

#[derive(Serialize)]
struct Error<'a> {
    error: &'a str,
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    json(status, &Error { error: message })
}

/// What a handler answers when the client broke off its body: nobody reads it, and the
/// reference would not have counted the request either.
pub(crate) fn broken_body() -> Response {
    error(StatusCode::BAD_REQUEST, "unreadable body")
}

/// `URLSearchParams.get`: the decoded value of the first field called `name`.
fn form_get<'a>(form: &'a [u8], name: &str) -> Option<Cow<'a, str>> {
    url::form_urlencoded::parse(form)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

pub(crate) async fn not_found(body: Body) -> Response {
    drain(body).await;
    error(StatusCode::NOT_FOUND, "not found")
}

async fn stats(State(sim): State<Arc<Sim>>, uri: Uri, body: Body) -> Response {
    drain(body).await;
    let with_keys = uri
        .query()
        .and_then(|q| form_get(q.as_bytes(), "keys"))
        .is_some_and(|v| v == "1");
    json_bytes(StatusCode::OK, sim.stats_json(with_keys))
}

async fn reset(State(sim): State<Arc<Sim>>, body: Body) -> Response {
    drain(body).await;
    sim.reset();
    #[derive(Serialize)]
    struct Done {
        ok: bool,
    }
    json(StatusCode::OK, &Done { ok: true })
}

#[derive(Serialize)]
struct Token<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    scope: &'a str,
}

/// Client-credentials grant: exact Basic credentials and `grant_type=client_credentials`.
async fn token(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = read_body(body, sim.cfg.max_body).await else {
        return broken_body();
    };
    sim.bump(Counter::TokenRequests);
    let basic_ok = parts
        .headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == sim.expected_basic.as_bytes());
    let field = |name| form_get(&body.bytes, name);
    if !basic_ok || field("grant_type").as_deref() != Some("client_credentials") {
        sim.bump(Counter::TokenRejected);
        return error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let access_token = sim.issue_token();
    let scope = field("scope").unwrap_or_default();
    json(
        StatusCode::OK,
        &Token {
            access_token: &access_token,
            token_type: "Bearer",
            expires_in: sim.cfg.token_ttl,
            scope: &scope,
        },
    )
}
