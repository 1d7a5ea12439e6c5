//! The HTTP surface: which handler answers which request (the routes the profile has), the
//! `/__stats` and `/__reset` endpoints, and the helpers every handler shares (bounded body
//! reading, form fields).

use std::borrow::Cow;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Serialize;

use super::auth::token;
use super::discovery::{cxone_configuration, openid_configuration};
use super::execute::execute;
use super::reply::{Refusal, ensure_correlation_id, json, json_bytes};
use super::state::Sim;

pub(crate) fn router(sim: Arc<Sim>) -> Router {
    let profile = sim.profile;
    let mut router = Router::new()
        // axum answers HEAD with the GET handler; the reference only knows GET here.
        .route("/__stats", get(stats).head(not_found))
        .route("/__reset", post(reset))
        .route(profile.token_path, post(token))
        .route(&profile.execute_route(), post(execute));
    if profile.discovery {
        router = router
            .route(
                "/.well-known/openid-configuration",
                get(openid_configuration),
            )
            .route("/.well-known/cxone-configuration", get(cxone_configuration));
    }
    // The reference has no 405: every other method or path is a JSON 404.
    let router = router
        .method_not_allowed_fallback(not_found)
        .fallback(not_found)
        .with_state(sim);
    if profile.inin_headers {
        router.layer(axum::middleware::map_response(ensure_correlation_id))
    } else {
        router
    }
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
pub(crate) async fn drain(body: Body) {
    // A broken body changes nothing in an answer that ignores it.
    let _ = read_body(body, 0).await;
}

/// `URLSearchParams.get`: the decoded value of the first field called `name`.
pub(crate) fn form_get<'a>(form: &'a [u8], name: &str) -> Option<Cow<'a, str>> {
    url::form_urlencoded::parse(form)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

pub(crate) async fn not_found(State(sim): State<Arc<Sim>>, body: Body) -> Response {
    drain(body).await;
    sim.profile.errors.refuse(Refusal::NotFound)
}

/// `GET /__stats`: counters; `?keys=1` adds the per-key records and attempts, `?uploads=1`
/// the chunked uploads (both may be given).
async fn stats(State(sim): State<Arc<Sim>>, uri: Uri, body: Body) -> Response {
    drain(body).await;
    let flag = |name| {
        uri.query()
            .and_then(|q| form_get(q.as_bytes(), name))
            .is_some_and(|v| v == "1")
    };
    json_bytes(
        StatusCode::OK,
        sim.stats_json(flag("keys"), flag("uploads")),
    )
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
