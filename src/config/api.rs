//! The API: which vendor's shapes it speaks (`API_PROFILE`), where it is, who we
//! are, how big a request may be, how long we may wait for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::{ConfigError, Secret, bad, choice, duration, given, number_in, or_default};
use crate::text::redact_url;

/// The API profiles of the contract: which shapes the API speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileName {
    /// The contract's v1 API (the tutorial's invented one; the simulator speaks it).
    Seed,
    /// Genesys Cloud Data Actions.
    Genesys,
    /// NICE CXone authentication and discovery; the seed's execute call.
    Cxone,
}

impl ProfileName {
    pub const ALL: [(&'static str, ProfileName); 3] = [
        ("seed", ProfileName::Seed),
        ("genesys", ProfileName::Genesys),
        ("cxone", ProfileName::Cxone),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProfileName::Seed => "seed",
            ProfileName::Genesys => "genesys",
            ProfileName::Cxone => "cxone",
        }
    }

    /// `MAX_REQUEST_BYTES` when unset: Genesys caps a request at a few hundred KB.
    pub fn default_max_request_bytes(self) -> u64 {
        match self {
            ProfileName::Genesys => 512_000,
            ProfileName::Seed | ProfileName::Cxone => 0,
        }
    }

    /// `MAX_CONCURRENT_CALLS` when unset: Genesys runs 15 executions of an org at once.
    pub fn default_max_concurrent_calls(self) -> u32 {
        match self {
            ProfileName::Genesys => 15,
            ProfileName::Seed | ProfileName::Cxone => 0,
        }
    }
}

const DEFAULT_ISSUER: &str = "https://cxone.niceincontact.com";

/// Where the API is, who we are, and what its requests look like.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// `seed` (the contract's v1 API), `genesys` (Genesys Cloud Data Actions) or
    /// `cxone` (NICE CXone access keys and discovery).
    #[arg(long, env = "API_PROFILE", default_value = "seed")]
    pub api_profile: String,
    /// API base URL, e.g. https://api.mypurecloud.com (required but with cxone, which
    /// finds it through CXONE_ISSUER).
    #[arg(long, env = "CXONE_API_URL")]
    pub api_url: Option<String>,
    /// Token URL, overriding the profile's.
    #[arg(long, env = "CXONE_TOKEN_URL")]
    pub token_url: Option<String>,
    /// The CXone issuer, whose discovery documents name the token endpoint and the
    /// tenant's API host (cxone).
    #[arg(long, env = "CXONE_ISSUER", default_value = DEFAULT_ISSUER)]
    pub issuer: String,
    /// OAuth client id.
    #[arg(long, env = "CXONE_CLIENT_ID")]
    pub client_id: Option<String>,
    /// OAuth client secret (prefer CXONE_CLIENT_SECRET_FILE).
    #[arg(long, env = "CXONE_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// File holding the OAuth client secret.
    #[arg(long, env = "CXONE_CLIENT_SECRET_FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// CXone access key id (cxone).
    #[arg(long, env = "CXONE_ACCESS_KEY_ID")]
    pub access_key_id: Option<String>,
    /// CXone access key secret (cxone; prefer CXONE_ACCESS_KEY_SECRET_FILE).
    #[arg(long, env = "CXONE_ACCESS_KEY_SECRET", hide_env_values = true)]
    pub access_key_secret: Option<String>,
    /// File holding the CXone access key secret.
    #[arg(long, env = "CXONE_ACCESS_KEY_SECRET_FILE")]
    pub access_key_secret_file: Option<PathBuf>,
    /// Data action used when a job names none.
    #[arg(long, env = "CXONE_DATA_ACTION_ID")]
    pub data_action_id: Option<String>,
    #[command(flatten)]
    pub body: BodyArgs,
    /// Largest execute request body, in bytes; larger files go in chunks (0 = no
    /// limit; the profile's default when unset: genesys 512000, else 0).
    #[arg(long, env = "MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<String>,
    /// `on`: files whose request would pass MAX_REQUEST_BYTES go in chunks; `off`:
    /// they are too_large.
    #[arg(long, env = "CHUNKING", default_value = "on")]
    pub chunking: String,
    /// API calls per minute, paced evenly: for every `run` process on this broker and prefix
    /// together (LIMIT_SCOPE=fleet), or for this process alone (LIMIT_SCOPE=process).
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value = "1000")]
    pub rate_limit_per_minute: String,
    /// Time allowed to open a connection to the API.
    #[arg(long, env = "CXONE_CONNECT_TIMEOUT", default_value = "10s")]
    pub connect_timeout: String,
    /// Time allowed for one API request, upload included.
    #[arg(long, env = "CXONE_REQUEST_TIMEOUT", default_value = "60s")]
    pub request_timeout: String,
    /// Transport failures in a row after which the API counts as unreachable and the
    /// worker pauses instead of spending the jobs' attempts.
    #[arg(long, env = "CXONE_UNREACHABLE_AFTER", default_value = "5")]
    pub unreachable_after: String,
}

/// The shape of execute bodies; shared by `run` and `encode`.
#[derive(Args, Debug, Clone)]
pub struct BodyArgs {
    /// Name of the body field that carries the base64 file.
    #[arg(long, env = "PAYLOAD_FIELD", default_value = "binaryPayload")]
    pub payload_field: String,
    /// Name of the body field that carries the file's content type.
    #[arg(long, env = "CONTENT_TYPE_FIELD", default_value = "contentType")]
    pub content_type_field: String,
}

/// The two payload fields, checked to be plain names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFields {
    pub payload: String,
    pub content_type: String,
}

impl BodyArgs {
    pub fn settings(&self) -> Result<BodyFields, ConfigError> {
        let payload = plain_name(
            "PAYLOAD_FIELD",
            or_default(&self.payload_field, "binaryPayload"),
        )?;
        let content_type = plain_name(
            "CONTENT_TYPE_FIELD",
            or_default(&self.content_type_field, "contentType"),
        )?;
        if payload == content_type {
            return Err(bad(
                "CONTENT_TYPE_FIELD",
                format!("{content_type:?} is also PAYLOAD_FIELD"),
            ));
        }
        Ok(BodyFields {
            payload,
            content_type,
        })
    }
}

/// A JSON field name an action's input contract can have: a letter or `_`, then
/// letters, digits or `_`, at most 64 of them.
fn plain_name(var: &'static str, raw: &str) -> Result<String, ConfigError> {
    let mut chars = raw.chars();
    let ok = raw.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(bad(
            var,
            format!("{raw:?} is not a plain field name (a letter or _, then letters, digits, _)"),
        ));
    }
    if raw.starts_with("chunk") {
        return Err(bad(
            var,
            format!("{raw:?} would clash with the chunk fields"),
        ));
    }
    Ok(raw.to_owned())
}

/// An access key: the CXone back-end credential exchanged for a token.
#[derive(Debug, Clone)]
pub struct AccessKey {
    pub id: String,
    pub secret: Secret<String>,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub profile: ProfileName,
    /// `CXONE_API_URL`; `None` only with cxone, which discovers it.
    pub base_url: Option<url::Url>,
    /// `CXONE_TOKEN_URL`: overrides the profile's token URL.
    pub token_url: Option<url::Url>,
    pub issuer: url::Url,
    pub client_id: String,
    pub client_secret: Secret<String>,
    /// cxone only.
    pub access_key: Option<AccessKey>,
    pub default_action: Option<String>,
    pub body: BodyFields,
    /// 0 = no limit; the profile's default when unset.
    pub max_request_bytes: u64,
    pub chunking: bool,
    pub rate_limit_per_minute: u32,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub unreachable_after: u32,
}

impl ApiSettings {
    /// Settings for `profile` at `base_url` with the client's credentials and every
    /// other value at its default (tests and tools).
    pub fn new(
        profile: ProfileName,
        base_url: Option<url::Url>,
        client_id: &str,
        client_secret: &str,
    ) -> Self {
        Self {
            profile,
            base_url,
            token_url: None,
            issuer: url::Url::parse(DEFAULT_ISSUER).expect("a valid URL"),
            client_id: client_id.to_owned(),
            client_secret: Secret::new(client_secret.to_owned()),
            access_key: None,
            default_action: None,
            body: BodyFields {
                payload: "binaryPayload".into(),
                content_type: "contentType".into(),
            },
            max_request_bytes: profile.default_max_request_bytes(),
            chunking: true,
            rate_limit_per_minute: 1000,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            unreachable_after: 5,
        }
    }
}

fn http_url(var: &'static str, raw: &str) -> Result<url::Url, ConfigError> {
    url::Url::parse(raw.trim_end_matches('/'))
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| bad(var, format!("{:?} is not an http(s) URL", redact_url(raw))))
}

/// A secret given inline or in a file, never both.
fn secret(
    var: &'static str,
    file_var: &'static str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Secret<String>>, ConfigError> {
    let value = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(bad(
                file_var,
                format!("is set together with {var}; set only one"),
            ));
        }
        (Some(s), None) => s.to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| bad(file_var, format!("cannot read {path:?}: {e}")))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if value.is_empty() {
        return Err(bad(var, "is empty"));
    }
    Ok(Some(Secret::new(value)))
}

impl ApiArgs {
    pub fn settings(&self) -> Result<ApiSettings, ConfigError> {
        let profile = choice("API_PROFILE", &self.api_profile, "seed", &ProfileName::ALL)?;
        let base_url = given(&self.api_url)
            .map(|raw| http_url("CXONE_API_URL", raw))
            .transpose()?;
        if base_url.is_none() && profile != ProfileName::Cxone {
            return Err(bad("CXONE_API_URL", "is required"));
        }
        let client_id = given(&self.client_id)
            .ok_or_else(|| bad("CXONE_CLIENT_ID", "is required"))?
            .to_owned();
        let client_secret = secret(
            "CXONE_CLIENT_SECRET",
            "CXONE_CLIENT_SECRET_FILE",
            given(&self.client_secret),
            self.client_secret_file.as_deref(),
        )?
        .ok_or_else(|| {
            bad(
                "CXONE_CLIENT_SECRET",
                "is required (or CXONE_CLIENT_SECRET_FILE)",
            )
        })?;
        let access_key = self.access_key(profile)?;
        let max_request_bytes = match given(&self.max_request_bytes) {
            None => profile.default_max_request_bytes(),
            Some(raw) => number_in("MAX_REQUEST_BYTES", raw, "0", 0, 1 << 31)?,
        };
        Ok(ApiSettings {
            profile,
            base_url,
            token_url: given(&self.token_url)
                .map(|raw| http_url("CXONE_TOKEN_URL", raw))
                .transpose()?,
            issuer: http_url("CXONE_ISSUER", or_default(&self.issuer, DEFAULT_ISSUER))?,
            client_id,
            client_secret,
            access_key,
            default_action: given(&self.data_action_id).map(str::to_owned),
            body: self.body.settings()?,
            max_request_bytes,
            chunking: choice(
                "CHUNKING",
                &self.chunking,
                "on",
                &[
                    ("on", true),
                    ("off", false),
                    ("true", true),
                    ("false", false),
                ],
            )?,
            rate_limit_per_minute: number_in(
                "RATE_LIMIT_PER_MINUTE",
                &self.rate_limit_per_minute,
                "1000",
                1,
                u32::MAX,
            )?,
            connect_timeout: duration("CXONE_CONNECT_TIMEOUT", &self.connect_timeout, "10s")?,
            request_timeout: duration("CXONE_REQUEST_TIMEOUT", &self.request_timeout, "60s")?,
            unreachable_after: number_in(
                "CXONE_UNREACHABLE_AFTER",
                &self.unreachable_after,
                "5",
                1,
                1_000_000,
            )?,
        })
    }

    /// The access key cxone needs, and no other profile takes.
    fn access_key(&self, profile: ProfileName) -> Result<Option<AccessKey>, ConfigError> {
        let id = given(&self.access_key_id);
        let secret = secret(
            "CXONE_ACCESS_KEY_SECRET",
            "CXONE_ACCESS_KEY_SECRET_FILE",
            given(&self.access_key_secret),
            self.access_key_secret_file.as_deref(),
        )?;
        match (profile, id, secret) {
            (ProfileName::Cxone, Some(id), Some(secret)) => Ok(Some(AccessKey {
                id: id.to_owned(),
                secret,
            })),
            (ProfileName::Cxone, None, _) => Err(bad(
                "CXONE_ACCESS_KEY_ID",
                "is required with API_PROFILE=cxone (an access key of the tenant's back-end user)",
            )),
            (ProfileName::Cxone, Some(_), None) => Err(bad(
                "CXONE_ACCESS_KEY_SECRET",
                "is required with API_PROFILE=cxone (or CXONE_ACCESS_KEY_SECRET_FILE)",
            )),
            (_, None, None) => Ok(None),
            (other, _, _) => Err(bad(
                "CXONE_ACCESS_KEY_ID",
                format!(
                    "is only used with API_PROFILE=cxone, not {}",
                    other.as_str()
                ),
            )),
        }
    }
}
