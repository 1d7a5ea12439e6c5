//! An API profile as data: everything the client does differently for the seed's
//! API, Genesys Cloud Data Actions and NICE CXone, in one value it reads. Nothing
//! else in the crate asks which profile it runs.
//!
//! | | seed | genesys | cxone |
//! |---|---|---|---|
//! | token | `{api}/api/v2/oauth/token`, client credentials + scope | `login.{region}/oauth/token` (or `{api}/oauth/token`), client credentials | `token_endpoint` of the issuer's OIDC discovery, password grant on an access key |
//! | API base | `CXONE_API_URL` | `CXONE_API_URL` | `CXONE_API_URL`, else the tenant's `api_endpoint` |
//! | execute | `/api/v2/data-actions/{id}/execute` | `/api/v2/integrations/actions/{id}/execute` | as seed |
//! | body | nested | flat | nested |
//! | execution id | body `executionId` | header `ININ-Correlation-Id` | as seed |
//! | errors | an excerpt | Genesys's `{message, code, contextId}` | an excerpt |
//! | waits | `Retry-After` | `Retry-After`, `inin-ratelimit-*` | `Retry-After` |

use url::Url;

use crate::config::{ApiSettings, BodyFields, ProfileName};
use crate::encode::{BodyFormat, Shape};

/// The seed's token scope.
const SEED_SCOPE: &str = "data-actions:execute oauth:client-credentials";

/// The grant a token request makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// `grant_type=client_credentials`, with `scope` when the API wants one.
    ClientCredentials { scope: Option<&'static str> },
    /// `grant_type=password` on the CXone access key.
    AccessKey,
}

/// Where the token endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenEndpoint {
    Fixed(Url),
    /// The `token_endpoint` of `{issuer}/.well-known/openid-configuration`.
    Discovered {
        issuer: Url,
    },
}

/// Where execute calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiBase {
    Fixed(Url),
    /// The `api_endpoint` of `{issuer}/.well-known/cxone-configuration?tenantId=…`,
    /// the tenant read from the token answer's `id_token`.
    Discovered {
        issuer: Url,
    },
}

/// Where an execution's id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionId {
    /// The answer body's `executionId`.
    BodyField,
    /// The `ININ-Correlation-Id` answer header.
    CorrelationHeader,
}

/// How error answers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorBodies {
    /// Quoted as an excerpt.
    Excerpt,
    /// Genesys's JSON: status, `code`, `message` and `contextId` are quoted.
    Genesys,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: ProfileName,
    pub grant: Grant,
    pub token_endpoint: TokenEndpoint,
    pub api_base: ApiBase,
    /// Path segments of the execute call, before and after the data action's id.
    pub execute_path: (&'static [&'static str], &'static [&'static str]),
    pub body: BodyFormat,
    pub execution_id: ExecutionId,
    pub errors: ErrorBodies,
    /// Genesys's `inin-ratelimit-count/allowed/reset` headers are obeyed.
    pub rate_headers: bool,
}

const DATA_ACTIONS: (&[&str], &[&str]) = (&["api", "v2", "data-actions"], &["execute"]);
const INTEGRATION_ACTIONS: (&[&str], &[&str]) =
    (&["api", "v2", "integrations", "actions"], &["execute"]);

impl Profile {
    /// The profile the settings name, with their URLs and field names.
    pub fn from_settings(s: &ApiSettings) -> Self {
        let fixed_base = || {
            s.base_url
                .clone()
                .expect("checked in config: required but with cxone")
        };
        let override_or =
            |endpoint: TokenEndpoint| s.token_url.clone().map_or(endpoint, TokenEndpoint::Fixed);
        let (name, body) = (s.profile, body_format(s.profile, &s.body));
        match name {
            ProfileName::Seed => Self {
                name,
                grant: Grant::ClientCredentials {
                    scope: Some(SEED_SCOPE),
                },
                token_endpoint: override_or(TokenEndpoint::Fixed(super::endpoint(
                    &fixed_base(),
                    &["api", "v2", "oauth", "token"],
                ))),
                api_base: ApiBase::Fixed(fixed_base()),
                execute_path: DATA_ACTIONS,
                body,
                execution_id: ExecutionId::BodyField,
                errors: ErrorBodies::Excerpt,
                rate_headers: false,
            },
            ProfileName::Genesys => Self {
                name,
                grant: Grant::ClientCredentials { scope: None },
                token_endpoint: override_or(TokenEndpoint::Fixed(genesys_login(&fixed_base()))),
                api_base: ApiBase::Fixed(fixed_base()),
                execute_path: INTEGRATION_ACTIONS,
                body,
                execution_id: ExecutionId::CorrelationHeader,
                errors: ErrorBodies::Genesys,
                rate_headers: true,
            },
            ProfileName::Cxone => Self {
                name,
                grant: Grant::AccessKey,
                token_endpoint: override_or(TokenEndpoint::Discovered {
                    issuer: s.issuer.clone(),
                }),
                api_base: match &s.base_url {
                    Some(base) => ApiBase::Fixed(base.clone()),
                    None => ApiBase::Discovered {
                        issuer: s.issuer.clone(),
                    },
                },
                execute_path: DATA_ACTIONS,
                body,
                execution_id: ExecutionId::BodyField,
                errors: ErrorBodies::Excerpt,
                rate_headers: false,
            },
        }
    }

    /// The execute URL of `action` under `base`.
    pub fn execute_url(&self, base: &Url, action: &str) -> Url {
        let (before, after) = self.execute_path;
        let segments: Vec<&str> = before
            .iter()
            .copied()
            .chain([action])
            .chain(after.iter().copied())
            .collect();
        super::endpoint(base, &segments)
    }
}

/// The body `profile` sends, with `fields` as its payload fields: flat for Genesys,
/// nested otherwise. Shared by the client and `cxone-worker encode`.
pub fn body_format(profile: ProfileName, fields: &BodyFields) -> BodyFormat {
    let shape = match profile {
        ProfileName::Genesys => Shape::Flat,
        ProfileName::Seed | ProfileName::Cxone => Shape::Nested,
    };
    BodyFormat {
        shape,
        payload_field: fields.payload.clone(),
        content_type_field: fields.content_type.clone(),
    }
}

/// Genesys's login host for an API host `api.{region}` (`api.mypurecloud.com` ->
/// `https://login.mypurecloud.com/oauth/token`); any other host (a simulator, a
/// proxy) serves `/oauth/token` itself.
fn genesys_login(base: &Url) -> Url {
    let region = base.host_str().and_then(|h| h.strip_prefix("api."));
    match region {
        Some(region) if base.scheme() == "https" => {
            Url::parse(&format!("https://login.{region}/oauth/token"))
                .unwrap_or_else(|_| super::endpoint(base, &["oauth", "token"]))
        }
        _ => super::endpoint(base, &["oauth", "token"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(profile: ProfileName, base: Option<&str>) -> ApiSettings {
        ApiSettings::new(
            profile,
            base.map(|b| Url::parse(b).unwrap()),
            "id",
            "secret",
        )
    }

    #[test]
    fn each_profile_says_where_its_token_and_calls_go() {
        let seed =
            Profile::from_settings(&settings(ProfileName::Seed, Some("https://api.example")));
        assert_eq!(
            seed.token_endpoint,
            TokenEndpoint::Fixed(Url::parse("https://api.example/api/v2/oauth/token").unwrap())
        );
        let base = Url::parse("https://api.example").unwrap();
        assert_eq!(
            seed.execute_url(&base, "a/b").as_str(),
            "https://api.example/api/v2/data-actions/a%2Fb/execute"
        );
        let genesys = Profile::from_settings(&settings(
            ProfileName::Genesys,
            Some("https://api.usw2.pure.cloud"),
        ));
        assert_eq!(
            genesys.token_endpoint,
            TokenEndpoint::Fixed(Url::parse("https://login.usw2.pure.cloud/oauth/token").unwrap())
        );
        assert_eq!(
            genesys.execute_url(&base, "act-1").as_str(),
            "https://api.example/api/v2/integrations/actions/act-1/execute"
        );
        assert_eq!(genesys.body.shape, Shape::Flat);
        let local =
            Profile::from_settings(&settings(ProfileName::Genesys, Some("http://127.0.0.1:9/")));
        assert_eq!(
            local.token_endpoint,
            TokenEndpoint::Fixed(Url::parse("http://127.0.0.1:9/oauth/token").unwrap())
        );
        let cxone = Profile::from_settings(&settings(ProfileName::Cxone, None));
        assert!(matches!(
            cxone.token_endpoint,
            TokenEndpoint::Discovered { .. }
        ));
        assert!(matches!(cxone.api_base, ApiBase::Discovered { .. }));
        let mut pinned = settings(
            ProfileName::Cxone,
            Some("https://api-na1.niceincontact.com"),
        );
        pinned.token_url = Some(Url::parse("https://auth.example/token").unwrap());
        let pinned = Profile::from_settings(&pinned);
        assert!(matches!(pinned.api_base, ApiBase::Fixed(_)));
        assert_eq!(
            pinned.token_endpoint,
            TokenEndpoint::Fixed(Url::parse("https://auth.example/token").unwrap()),
            "CXONE_TOKEN_URL overrides any profile's"
        );
    }
}
