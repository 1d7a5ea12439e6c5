//! The cxone profile's discovery documents: `/.well-known/openid-configuration` (OpenID
//! Connect discovery) and `/.well-known/cxone-configuration?tenantId=T`, both pointing back at
//! this simulator through the request's `Host`, so that they hold on any port.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use super::reply::json;
use super::routes::{drain, form_get};
use super::state::Sim;

/// `http://{host}` of the request: the simulator as the client reached it. `None` when the
/// request names no host, or one with characters no host name or address has.
pub(crate) fn base_url(parts: &Parts) -> Option<String> {
    let host = match parts.uri.authority() {
        Some(authority) => authority.as_str(),
        None => parts.headers.get(header::HOST)?.to_str().ok()?,
    };
    let plausible = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    plausible.then(|| format!("http://{host}"))
}

/// The OAuth error answer of the cxone profile: RFC 6749's `{"error","error_description"}`.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    #[derive(Serialize)]
    struct OAuthError<'a> {
        error: &'a str,
        error_description: &'a str,
    }
    json(
        status,
        &OAuthError {
            error,
            error_description: description,
        },
    )
}

fn no_host() -> Response {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the request names no usable Host",
    )
}

/// The OpenID Connect discovery document, in the shape CXone publishes (its values for the
/// methods and algorithms); only `token_endpoint` is served by the simulator.
#[derive(Serialize)]
struct OpenIdConfiguration<'a> {
    issuer: &'a str,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    end_session_endpoint: String,
    token_endpoint_auth_methods_supported: [&'static str; 1],
    grant_types_supported: [&'static str; 1],
    scopes_supported: [&'static str; 1],
    response_types_supported: [&'static str; 1],
    subject_types_supported: [&'static str; 1],
    id_token_signing_alg_values_supported: [&'static str; 1],
    claim_types_supported: [&'static str; 1],
}

pub(crate) async fn openid_configuration(
    State(sim): State<Arc<Sim>>,
    parts: Parts,
    body: Body,
) -> Response {
    drain(body).await;
    let Some(base) = base_url(&parts) else {
        return no_host();
    };
    let doc = OpenIdConfiguration {
        issuer: &base,
        authorization_endpoint: format!("{base}/auth/authorize"),
        token_endpoint: format!("{base}{}", sim.profile.token_path),
        jwks_uri: format!("{base}/auth/jwks"),
        end_session_endpoint: format!("{base}/auth/authorize/logout"),
        token_endpoint_auth_methods_supported: ["client_secret_basic"],
        grant_types_supported: ["password"],
        scopes_supported: ["openid"],
        response_types_supported: ["code"],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: ["RS256"],
        claim_types_supported: ["normal"],
    };
    json(StatusCode::OK, &doc)
}

/// The tenant's discovery document, with the fields CXone's carries; every endpoint is this
/// simulator.
#[derive(Serialize)]
struct CxoneConfiguration<'a> {
    private: bool,
    area: &'static str,
    cluster: &'static str,
    domain: &'a str,
    #[serde(rename = "acdDomain")]
    acd_domain: &'a str,
    #[serde(rename = "uhDomain")]
    uh_domain: &'a str,
    ui_endpoint: &'a str,
    auth_endpoint: &'a str,
    api_endpoint: &'a str,
    #[serde(rename = "tenantId")]
    tenant_id: &'a str,
}

pub(crate) async fn cxone_configuration(
    State(sim): State<Arc<Sim>>,
    parts: Parts,
    body: Body,
) -> Response {
    drain(body).await;
    let Some(base) = base_url(&parts) else {
        return no_host();
    };
    let tenant = parts
        .uri
        .query()
        .and_then(|q| form_get(q.as_bytes(), "tenantId"));
    let Some(tenant) = tenant else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "tenantId is required",
        );
    };
    if *tenant != sim.cfg.tenant_id {
        return oauth_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no tenant {tenant:?}"),
        );
    }
    let host = base.trim_start_matches("http://");
    let doc = CxoneConfiguration {
        private: false,
        area: "sim1",
        cluster: "SIM1",
        domain: host,
        acd_domain: host,
        uh_domain: host,
        ui_endpoint: &base,
        auth_endpoint: &base,
        api_endpoint: &base,
        tenant_id: &tenant,
    };
    json(StatusCode::OK, &doc)
}
