//! One token request as the profile makes it: where the token endpoint is (fixed, or
//! found through the issuer's OIDC discovery), which grant it takes, what its answer
//! means, and, for CXone, which API host the tenant of the token lives on.

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use url::Url;

use super::profile::{ApiBase, Grant, Profile, TokenEndpoint};
use crate::config::{AccessKey, ApiSettings, Secret};
use crate::job::{Failure, Systemic};

/// A token answer without `expires_in` is trusted this long.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Longer lifetimes are taken as this: an `expires_in` of u64::MAX must not overflow
/// the clock. Any lifetime a real token has (Genesys: up to 48 h) is honoured.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Discovery documents and token answers are small; more is not read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What a token request brought.
pub(crate) struct Obtained {
    /// `Bearer …`, marked sensitive.
    pub(crate) header: HeaderValue,
    pub(crate) lifetime: Duration,
    /// The tenant's API host, when the profile finds it through discovery.
    pub(crate) api_base: Option<Url>,
}

/// How this profile asks for tokens.
pub(crate) struct TokenRequest {
    grant: Grant,
    endpoint: TokenEndpoint,
    api: ApiBase,
    /// `Basic base64(client_id:client_secret)`, marked sensitive.
    basic: Secret<HeaderValue>,
    access_key: Option<AccessKey>,
    /// Discovered once, then kept: a lookup per refresh would double the requests.
    token_url: OnceLock<Url>,
    tenant_api: OnceLock<Url>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
    id_token: Option<String>,
}

impl TokenRequest {
    pub(crate) fn new(profile: &Profile, settings: &ApiSettings) -> Self {
        let credentials = STANDARD.encode(format!(
            "{}:{}",
            settings.client_id,
            settings.client_secret.expose()
        ));
        let mut basic = HeaderValue::from_str(&format!("Basic {credentials}"))
            .expect("base64 is a valid header");
        basic.set_sensitive(true);
        Self {
            grant: profile.grant.clone(),
            endpoint: profile.token_endpoint.clone(),
            api: profile.api_base.clone(),
            basic: Secret::new(basic),
            access_key: settings.access_key.clone(),
            token_url: OnceLock::new(),
            tenant_api: OnceLock::new(),
        }
    }

    /// Asks for a token. Transient failures are `Retryable`; a refusal of the
    /// credentials or a URL that is no token endpoint is `Systemic`.
    pub(crate) async fn obtain(&self, http: &reqwest::Client) -> Result<Obtained, Failure> {
        let url = self.token_url(http).await?;
        let response = http
            .post(url.clone())
            .header(AUTHORIZATION, self.basic.expose().clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(self.form())
            .send()
            .await
            .map_err(|e| Failure::retryable(super::transport_message(&e)))?;
        let status = response.status();
        let code = status.as_u16();
        if status.is_server_error() || code == 408 || code == 429 {
            return Err(Failure::retryable(format!(
                "token endpoint answered {status}"
            )));
        }
        if matches!(code, 400 | 401 | 403) {
            // OAuth's answers to a bad client or grant (RFC 6749 5.2): our
            // credentials are refused. Not a job's fault.
            return Err(Failure::systemic(
                Systemic::CredentialsRefused,
                format!("token endpoint refused the client credentials ({status})"),
            ));
        }
        if !status.is_success() {
            // 404, 405, a redirect…: whatever answers there is no token endpoint.
            return Err(wrong_url(&url, &format!("answered {status}, not a token")));
        }
        let body = read_capped(response).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            // JSON is not quoted: a token answer of another shape may hold secrets.
            let what = match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(_) => format!("answered {status} with JSON that is no token answer ({e})"),
                Err(_) => format!("answered {status} with no JSON: {}", super::excerpt(&body)),
            };
            wrong_url(&url, &what)
        })?;
        let mut header = HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .map_err(|_| Failure::retryable("token answer holds an unusable access_token"))?;
        header.set_sensitive(true);
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs)
            .min(MAX_LIFETIME);
        let api_base = self.api_base(http, answer.id_token.as_deref()).await?;
        Ok(Obtained {
            header,
            lifetime,
            api_base,
        })
    }

    fn form(&self) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        match (&self.grant, &self.access_key) {
            (Grant::ClientCredentials { scope }, _) => {
                form.append_pair("grant_type", "client_credentials");
                if let Some(scope) = scope {
                    form.append_pair("scope", scope);
                }
            }
            (Grant::AccessKey, Some(key)) => {
                form.append_pair("grant_type", "password");
                form.append_pair("username", &key.id);
                form.append_pair("password", key.secret.expose());
            }
            // Config refuses cxone without an access key; an empty grant would be
            // refused by the endpoint, visibly.
            (Grant::AccessKey, None) => {
                form.append_pair("grant_type", "password");
            }
        }
        form.finish()
    }

    async fn token_url(&self, http: &reqwest::Client) -> Result<Url, Failure> {
        let issuer = match &self.endpoint {
            TokenEndpoint::Fixed(url) => return Ok(url.clone()),
            TokenEndpoint::Discovered { issuer } => issuer,
        };
        if let Some(url) = self.token_url.get() {
            return Ok(url.clone());
        }
        let doc = super::endpoint(issuer, &[".well-known", "openid-configuration"]);
        let url = discovered_url(http, &doc, "token_endpoint").await?;
        Ok(self.token_url.get_or_init(|| url).clone())
    }

    /// The API host of the token's tenant (cxone without CXONE_API_URL): the
    /// `tenantId` claim of the `id_token` picks it, read and not verified, since it
    /// only chooses among hosts the issuer itself names.
    async fn api_base(
        &self,
        http: &reqwest::Client,
        id_token: Option<&str>,
    ) -> Result<Option<Url>, Failure> {
        let issuer = match &self.api {
            ApiBase::Fixed(_) => return Ok(None),
            ApiBase::Discovered { issuer } => issuer,
        };
        if let Some(base) = self.tenant_api.get() {
            return Ok(Some(base.clone()));
        }
        let tenant = id_token.and_then(tenant_claim).ok_or_else(|| {
            Failure::systemic(
                Systemic::TokenEndpointInvalid,
                "the token answer has no id_token with a tenantId claim, so the tenant's API \
                 host cannot be found: set CXONE_API_URL",
            )
        })?;
        let mut doc = super::endpoint(issuer, &[".well-known", "cxone-configuration"]);
        doc.query_pairs_mut().append_pair("tenantId", &tenant);
        let base = discovered_url(http, &doc, "api_endpoint").await?;
        Ok(Some(self.tenant_api.get_or_init(|| base).clone()))
    }
}

/// The `tenantId` claim of a JWT's payload, unverified.
fn tenant_claim(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match &claims["tenantId"] {
        serde_json::Value::String(t) if !t.is_empty() && t.len() <= 256 => Some(t.clone()),
        _ => None,
    }
}

/// The http(s) URL that a discovery document at `doc` names in `field`.
async fn discovered_url(http: &reqwest::Client, doc: &Url, field: &str) -> Result<Url, Failure> {
    let response = http
        .get(doc.clone())
        .header(ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| Failure::retryable(format!("{doc}: {}", super::transport_message(&e))))?;
    let status = response.status();
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(Failure::retryable(format!("{doc} answered {status}")));
    }
    if !status.is_success() {
        return Err(wrong_url(doc, &format!("answered {status}")));
    }
    let body = read_capped(response).await?;
    let named = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get(field)?.as_str().map(str::to_owned))
        .and_then(|raw| Url::parse(raw.trim_end_matches('/')).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
    named.ok_or_else(|| wrong_url(doc, &format!("names no {field} URL")))
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        Failure::retryable(format!(
            "answer cut short: {}",
            super::transport_message(&e)
        ))
    })? {
        body.extend_from_slice(&chunk[..chunk.len().min(MAX_ANSWER_BYTES - body.len())]);
        if body.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(body)
}

fn wrong_url(url: &Url, what: &str) -> Failure {
    Failure::systemic(
        Systemic::TokenEndpointInvalid,
        format!("{url} {what}: check CXONE_API_URL, CXONE_TOKEN_URL or CXONE_ISSUER"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_claim_is_read_without_a_key() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"u","tenantId":"11e7-abc"}"#);
        let jwt = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        assert_eq!(tenant_claim(&jwt).as_deref(), Some("11e7-abc"));
        assert_eq!(tenant_claim("not-a-jwt"), None);
        let none = URL_SAFE_NO_PAD.encode(br#"{"sub":"u"}"#);
        assert_eq!(tenant_claim(&format!("a.{none}.b")), None);
        let wrong = URL_SAFE_NO_PAD.encode(br#"{"tenantId":7}"#);
        assert_eq!(tenant_claim(&format!("a.{wrong}.b")), None);
    }
}
