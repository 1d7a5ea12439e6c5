//! The API: where it is, who we are, how fast and how long we may call it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{ConfigError, Secret, bad, duration, given, number_in, redact_url};

/// The CXone API: where it is, who we are, how fast and how long we may call it.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// API base URL, e.g. https://api-na1.niceincontact.com (required by `run`).
    #[arg(long, env = "CXONE_API_URL")]
    pub api_url: Option<String>,
    /// OAuth client id.
    #[arg(long, env = "CXONE_CLIENT_ID")]
    pub client_id: Option<String>,
    /// OAuth client secret (prefer CXONE_CLIENT_SECRET_FILE).
    #[arg(long, env = "CXONE_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// File holding the OAuth client secret.
    #[arg(long, env = "CXONE_CLIENT_SECRET_FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// Data action used when a job names none.
    #[arg(long, env = "CXONE_DATA_ACTION_ID")]
    pub data_action_id: Option<String>,
    /// Executions per minute for the whole process, paced evenly.
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

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub base_url: url::Url,
    pub client_id: String,
    pub client_secret: Secret<String>,
    pub default_action: Option<String>,
    pub rate_limit_per_minute: u32,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub unreachable_after: u32,
}

impl ApiArgs {
    pub fn settings(&self) -> Result<ApiSettings, ConfigError> {
        let raw = given(&self.api_url).ok_or_else(|| bad("CXONE_API_URL", "is required"))?;
        let base_url = url::Url::parse(raw.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                bad(
                    "CXONE_API_URL",
                    format!("{:?} is not an http(s) URL", redact_url(raw)),
                )
            })?;
        let client_id = given(&self.client_id)
            .ok_or_else(|| bad("CXONE_CLIENT_ID", "is required"))?
            .to_owned();
        let client_secret = match (given(&self.client_secret), &self.client_secret_file) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "CXONE_CLIENT_SECRET_FILE",
                    "is set together with CXONE_CLIENT_SECRET; set only one",
                ));
            }
            (Some(s), None) => s.to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    bad(
                        "CXONE_CLIENT_SECRET_FILE",
                        format!("cannot read {path:?}: {e}"),
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            (None, None) => {
                return Err(bad(
                    "CXONE_CLIENT_SECRET",
                    "is required (or CXONE_CLIENT_SECRET_FILE)",
                ));
            }
        };
        if client_secret.is_empty() {
            return Err(bad("CXONE_CLIENT_SECRET", "is empty"));
        }
        Ok(ApiSettings {
            base_url,
            client_id,
            client_secret: Secret::new(client_secret),
            default_action: given(&self.data_action_id).map(str::to_owned),
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
}
