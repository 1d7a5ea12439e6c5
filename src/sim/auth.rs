//! The token endpoint: the profile's grant, checked exactly, refused in the vendor's words, and
//! answered in the vendor's shape (for cxone with an `id_token` that names the tenant).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use serde::Serialize;

use super::discovery::{base_url, oauth_error};
use super::profile::Grant;
use super::reply::{Refusal, json};
use super::routes::{form_get, read_body};
use super::state::{Counter, Sim};

/// A grant refused: the answer to send, counted as `token_rejected`. Boxed: refusals are
/// rare, and a bare `Response` would make every `Result` of a grant large.
struct Refused(Box<Response>);

impl Refused {
    fn new(answer: Response) -> Self {
        Self(Box::new(answer))
    }
}

pub(crate) async fn token(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = read_body(body, sim.cfg.max_body).await else {
        return sim.profile.errors.refuse(Refusal::UnreadableBody);
    };
    sim.bump(Counter::TokenRequests);
    let basic_ok = parts
        .headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == sim.expected_basic.as_bytes());
    let form = &body.bytes[..];
    let granted = match sim.profile.grant {
        Grant::Seed => seed(&sim, basic_ok, form),
        Grant::ClientCredentials => client_credentials(&sim, &parts.headers, basic_ok, form),
        Grant::AccessKeyPassword => access_key(&sim, &parts, basic_ok, form),
    };
    granted.unwrap_or_else(|Refused(answer)| {
        sim.bump(Counter::TokenRejected);
        *answer
    })
}

/// v1, as the reference: exact Basic credentials and `grant_type=client_credentials`.
fn seed(sim: &Sim, basic_ok: bool, form: &[u8]) -> Result<Response, Refused> {
    if !basic_ok || form_get(form, "grant_type").as_deref() != Some("client_credentials") {
        let refused = json(
            StatusCode::UNAUTHORIZED,
            &SeedRefusal {
                error: "invalid_client",
            },
        );
        return Err(Refused::new(refused));
    }
    #[derive(Serialize)]
    struct Token<'a> {
        access_token: &'a str,
        token_type: &'static str,
        expires_in: u64,
        scope: &'a str,
    }
    let scope = form_get(form, "scope").unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &Token {
            access_token: &sim.issue_token(),
            token_type: "Bearer",
            expires_in: sim.cfg.token_ttl,
            scope: &scope,
        },
    ))
}

#[derive(Serialize)]
struct SeedRefusal<'a> {
    error: &'a str,
}

/// Genesys Cloud's client-credentials grant. Refusals follow RFC 6749 §5.2 (a client that
/// fails to authenticate is 401, a bad request 400) in the body Genesys's login service
/// answers with, `description` repeated as `error_description`.
fn client_credentials(
    sim: &Sim,
    headers: &HeaderMap,
    basic_ok: bool,
    form: &[u8],
) -> Result<Response, Refused> {
    let refuse = |status, error: &str, description: &str| {
        #[derive(Serialize)]
        struct GenesysOAuthError<'a> {
            error: &'a str,
            description: &'a str,
            error_description: &'a str,
        }
        let body = GenesysOAuthError {
            error,
            description,
            error_description: description,
        };
        Refused::new(json(status, &body))
    };
    check_form_request(headers, basic_ok, form, "client_credentials")
        .map_err(|(status, error, description)| refuse(status, error, &description))?;
    #[derive(Serialize)]
    struct Token<'a> {
        access_token: &'a str,
        token_type: &'static str,
        expires_in: u64,
    }
    Ok(json(
        StatusCode::OK,
        &Token {
            access_token: &sim.issue_token(),
            token_type: "bearer",
            expires_in: sim.cfg.token_ttl,
        },
    ))
}

/// The checks the client-credentials and password grants share, in RFC 6749's words: a form
/// body, the client's Basic credentials, and the expected `grant_type`.
fn check_form_request(
    headers: &HeaderMap,
    basic_ok: bool,
    form: &[u8],
    grant_type: &str,
) -> Result<(), (StatusCode, &'static str, String)> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let bad = |error, description: String| Err((StatusCode::BAD_REQUEST, error, description));
    if !is_form {
        return bad(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded".into(),
        );
    }
    if !basic_ok {
        return Err((
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed".into(),
        ));
    }
    match form_get(form, "grant_type") {
        None => bad("invalid_request", "grant_type is required".into()),
        Some(given) if given != grant_type => bad(
            "unsupported_grant_type",
            format!("grant_type {given:?} is not supported; use {grant_type}"),
        ),
        Some(_) => Ok(()),
    }
}

/// NICE CXone's back-end grant: the application's Basic credentials and the password grant
/// with an access key as `username` and `password`.
fn access_key(sim: &Sim, parts: &Parts, basic_ok: bool, form: &[u8]) -> Result<Response, Refused> {
    let refuse =
        |status, error, description: &str| Refused::new(oauth_error(status, error, description));
    check_form_request(&parts.headers, basic_ok, form, "password")
        .map_err(|(status, error, description)| refuse(status, error, &description))?;
    let (Some(username), Some(password)) = (form_get(form, "username"), form_get(form, "password"))
    else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "username and password (the access key id and secret) are required",
        ));
    };
    if *username != sim.cfg.access_key_id || *password != sim.cfg.access_key_secret {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the access key is not valid",
        ));
    }
    let Some(issuer) = base_url(parts) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request names no usable Host",
        ));
    };
    #[derive(Serialize)]
    struct Token<'a> {
        access_token: &'a str,
        token_type: &'static str,
        expires_in: u64,
        refresh_token: &'a str,
        id_token: &'a str,
    }
    Ok(json(
        StatusCode::OK,
        &Token {
            access_token: &sim.issue_token(),
            token_type: "Bearer",
            expires_in: sim.cfg.token_ttl,
            refresh_token: &hex::encode(rand::random::<[u8; 24]>()),
            id_token: &id_token(sim, &issuer),
        },
    ))
}

/// An OpenID Connect ID token: a JWT whose claims a client reads without verifying it (the
/// signature is random bytes of an RS256 signature's length).
fn id_token(sim: &Sim, issuer: &str) -> String {
    #[derive(Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        sub: &'a str,
        aud: &'a str,
        iat: u64,
        exp: u64,
        #[serde(rename = "tenantId")]
        tenant_id: &'a str,
    }
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        iss: issuer,
        sub: &format!("user:{}", sim.cfg.access_key_id),
        aud: &sim.cfg.client_id,
        iat,
        exp: iat.saturating_add(sim.cfg.token_ttl),
        tenant_id: &sim.cfg.tenant_id,
    };
    let part = |bytes: &[u8]| BASE64_URL_SAFE_NO_PAD.encode(bytes);
    let header = part(br#"{"alg":"RS256","typ":"JWT","kid":"sim"}"#);
    let payload = part(&serde_json::to_vec(&claims).unwrap_or_default());
    let signature: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
    format!("{header}.{payload}.{}", part(&signature))
}
