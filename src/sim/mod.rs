//! The local API simulator (`cxone-worker sim`): the stand-in for the vendor APIs, which cannot
//! be reached from development machines. Its `seed` profile is a drop-in for the conformance
//! suite's reference `sim.mjs`, fast enough never to be the bottleneck of a benchmark; the
//! `genesys` and `cxone` profiles speak what the vendors document, checked strictly, so that a
//! worker that passes against them follows the contract's v2 "API profiles" and "Chunking".
//!
//! # Profiles (`--profile`, `SIM_PROFILE`; one `profile::Profile` value each)
//!
//! | | `seed` (default) | `genesys` | `cxone` |
//! |---|---|---|---|
//! | token | `POST /api/v2/oauth/token` | `POST /oauth/token` | `POST /auth/token` (the discovery's `token_endpoint`) |
//! | grant | Basic + `grant_type=client_credentials` | Basic + form `grant_type=client_credentials` | Basic client + form `grant_type=password&username=<key id>&password=<key secret>` |
//! | token answer | `access_token, token_type "Bearer", expires_in, scope` | `access_token, token_type "bearer", expires_in` | `access_token, token_type "Bearer", expires_in, refresh_token, id_token` |
//! | token refusal | 401 `{"error":"invalid_client"}` | RFC 6749: 401 `invalid_client`, 400 `invalid_request` / `unsupported_grant_type`; body `{"error","description","error_description"}` | RFC 6749: the same statuses, `invalid_grant` for a wrong access key; body `{"error","error_description"}` |
//! | discovery | none | none | `GET /.well-known/openid-configuration`, `GET /.well-known/cxone-configuration?tenantId=T` |
//! | execute | `POST /api/v2/data-actions/{id}/execute`, nested body | `POST /api/v2/integrations/actions/{id}/execute`, flat body | as `seed` |
//! | success | 202 `{"executionId","status","message"}` | 200, the action's output; id in `ININ-Correlation-Id` | as `seed` |
//! | errors | `{"error":"…"}` | Genesys `ErrorBody`, `contextId` = `ININ-Correlation-Id` | as `seed` |
//! | repeated `Idempotency-Key` | answers the first execution | executes again (new id), counted | as `seed` |
//!
//! What each follows:
//!
//! - **seed**: the reference `sim.mjs` and the contract's v1 "API calls", byte for byte
//!   (messages, counters, `/__stats` fields, order of checks). Its figures are invented.
//! - **genesys**, after Genesys Cloud's public documentation and platform SDKs:
//!   - the client-credentials grant at `login.{region}/oauth/token` (the worker posts to
//!     `{CXONE_API_URL}/oauth/token` for a local API): Basic `base64(id:secret)`, a form body;
//!     the answer `{"access_token","token_type":"bearer","expires_in"}`. Genesys's own token
//!     lifetime is configurable per OAuth client (default 86400 s, at most 172800 s); the
//!     simulator keeps `SIM_TOKEN_TTL`'s default (3600) in every profile, so set it to test a
//!     long-lived token.
//!   - `POST /api/v2/integrations/actions/{actionId}/execute` runs the action synchronously and
//!     answers 200 with the action's output as JSON; every answer of the Platform API carries
//!     `ININ-Correlation-Id`, and error bodies are the SDKs' `ErrorBody` model
//!     (`message, code, status, messageWithParams, messageParams, contextId, details, errors`)
//!     with Genesys's dotted codes (`bad.request`, `authentication.required`,
//!     `bad.credentials`, `missing.permissions`, `not.found`, `too.many.requests`,
//!     `request.entity.too.large`, `service.unavailable`, …).
//!   - 429 with `Retry-After` (seconds). The `inin-ratelimit-count`, `-allowed` and `-reset`
//!     headers are documented as deprecated (2019) and since removed from Genesys's answers;
//!     the contract still has the worker honour them, so `SIM_ININ_RATELIMIT=N` sends them on
//!     every execute answer: `count` = executes in the current `SIM_RATE_WINDOW_MS` window,
//!     this one included (refused ones too), `allowed` = N, `reset` = whole seconds until the
//!     window ends; an execute past N answers 429 with `Retry-After` = that `reset`.
//!   - Genesys documents no idempotency for executions: a repeated key runs again, under a new
//!     correlation id. The key's record counts it (`count`, `executionIds`), `duplicate_keys`
//!     counts it, and `accepted` counts every execution.
//!   - Request size: the stored Genesys documentation gives no figure for the largest execute
//!     body, so `SIM_MAX_BODY` keeps its default in this profile too; the contract's 512000
//!     is the worker's default `MAX_REQUEST_BYTES` there, and tests that want the cap say
//!     `SIM_MAX_BODY=512000`.
//! - **cxone**, after NICE CXone's developer documentation: back-end applications use the
//!   OAuth password grant with an access key id and secret as username and password and the
//!   application's client id and secret as Basic credentials; the token endpoint comes from
//!   the issuer's OpenID Connect discovery document; the answer carries an OpenID `id_token`
//!   whose `tenantId` claim names the tenant; `/.well-known/cxone-configuration?tenantId=T`
//!   gives the tenant's `api_endpoint` (with `area`, `cluster`, `domain`, `ui_endpoint`,
//!   `auth_endpoint`). Issuer and endpoints are built from the request's `Host`. The
//!   `id_token` is `{"alg":"RS256","typ":"JWT","kid":"sim"}` `.` claims `iss, sub, aud, iat,
//!   exp, tenantId` `.` random signature bytes: a client reads it without verifying it.
//!   Only the token endpoint of the discovery document is served (no `authorize`, `jwks`).
//!
//! # Bodies and knobs every profile shares
//!
//! `SIM_PAYLOAD_FIELD` / `SIM_CONTENT_TYPE_FIELD` name the payload fields of both body shapes
//! (defaults `binaryPayload`, `contentType`: v1's body). A flat (genesys) body must be one JSON
//! object without repeated keys, whose payload is a strict base64 string and content type a
//! string, and whose other keys (the metadata) hold only strings, numbers, booleans or null and
//! are none of `orgId`, `integrationId`, `rawRequest`; each refusal is a 400 that says which
//! rule broke. The v1 fault knobs (`SIM_LATENCY_MS`, `SIM_FAIL_5XX`, `SIM_FAIL_FIRST`,
//! `SIM_RATE_LIMIT`, `status-NNN` ids, `SIM_MAX_BODY`) and `max_in_flight` work in every
//! profile, with the profile's error body. `SIM_FAIL_CHUNK=I:N` answers 503 to the first N
//! attempts of chunk index I of any upload (attempts counted per `Idempotency-Key`). The
//! `traceparent` and `tracestate` headers of every execute recorded under a key are kept in
//! its record (`/__stats?keys=1`: `"trace":[{"traceparent","tracestate"}]`, left out when none
//! came).
//!
//! # Chunks (every profile)
//!
//! An execute body with chunk fields (seed/cxone `inputs.chunk`, genesys `chunk*`) is checked
//! strictly: every field present and typed, `index < count`, `Idempotency-Key` = `{uploadId}#{index}`,
//! `size` = decoded length, `sha256` = the bytes' SHA-256 (64 lowercase hex), chunk 0 at offset
//! 0, a non-final chunk a multiple of 3 bytes (its base64 unpadded), inside `totalSize` and the
//! last one ending there, consistent with the chunks of the upload received before (same
//! `count`, `totalSize`, `fileSha256`; offsets that meet; a repeat identical to its first copy).
//! Refusals are 400 with the reason. `GET /__stats?uploads=1` reports each upload:
//! `received, count, repeats, order, total_size, bytes_hashed, held_chunks, complete,
//! sha256_matches, size_matches` (the last two `null` until every index arrived). Chunks are
//! always hashed, whatever `SIM_HASH` says.
//!
//! | file | job |
//! |---|---|
//! | `config.rs` | the knobs, as flags and `SIM_*` variables |
//! | `profile.rs` | what differs between the APIs, one value per profile |
//! | `routes.rs` | the router (the profile's routes), `/__stats` `/__reset`, shared HTTP helpers |
//! | `auth.rs` | the token endpoint: each profile's grant, refusals and answer, the `id_token` |
//! | `discovery.rs` | the cxone discovery documents |
//! | `execute.rs` | the execute endpoint, its order of checks and its answers |
//! | `payload.rs` | the nested execute body: JSON, strict base64, size and SHA-256 |
//! | `flat.rs` | the genesys flat execute body |
//! | `chunk.rs` | chunk fields and the checks one chunk allows alone |
//! | `uploads.rs` | per-upload checks and reassembly (incremental hash) |
//! | `reply.rs` | JSON answers, refusals in each error shape, `ININ-Correlation-Id` |
//! | `state.rs` | counters, rate window, tokens, per-key records |

mod auth;
mod chunk;
mod config;
mod discovery;
mod execute;
mod flat;
mod payload;
mod profile;
mod reply;
mod routes;
mod state;
mod uploads;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use config::{FailChunk, ProfileName, SimConfig};
use state::Sim;

/// Serves the simulator on `listener` until `shutdown` resolves, then lets requests in
/// progress finish. Prints nothing.
pub async fn serve(
    listener: TcpListener,
    cfg: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_sim(listener, Arc::new(Sim::new(cfg)?), shutdown).await
}

async fn serve_sim(
    listener: TcpListener,
    sim: Arc<Sim>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Small answers on keep-alive connections must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, routes::router(sim))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A simulator running on the current tokio runtime; dropping it stops the server.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    /// Never sent on: dropping it wakes the server's shutdown future.
    _shutdown: oneshot::Sender<()>,
}

impl SimHandle {
    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the API, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds `cfg.host:cfg.port` (port 0 = any free port) and serves in a spawned task.
pub async fn spawn(cfg: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind((cfg.host, cfg.port)).await?;
    let addr = listener.local_addr()?;
    // Built here so that a bad config is the caller's error, not a silently dead task.
    let sim = Arc::new(Sim::new(cfg)?);
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = serve_sim(listener, sim, async move { _ = rx.await }).await {
            tracing::error!(error = %e, "simulator stopped");
        }
    });
    Ok(SimHandle {
        addr,
        _shutdown: tx,
    })
}

/// `cxone-worker sim`: binds, prints `sim listening on http://HOST:PORT` on stdout (the one
/// line scripts wait for), and serves until SIGINT or SIGTERM.
pub async fn run(cfg: SimConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind((cfg.host, cfg.port))
        .await
        .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    let sim = Arc::new(Sim::new(cfg)?);
    let shutdown = termination()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "sim listening on http://{addr}")?;
    out.flush()?;
    drop(out);
    serve_sim(listener, sim, shutdown).await?;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed before it returns,
/// so a signal that comes right after start-up is not missed.
fn termination() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
