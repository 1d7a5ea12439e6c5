//! One typed settings tree from flags and environment variables.
//!
//! Every variable of the contract is a `clap` flag with the variable as its `env`.
//! Flags arrive as text and are validated here, so that a bad value stops the program
//! with one line naming the variable (`RETRY_DELAYS: "5x" is not a duration`) rather
//! than clap's message about the flag.

mod value;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

pub use value::{AmqpUrl, Secret, format_duration, parse_duration, redact_url, split_list};

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_MIME_TYPES: &str =
    "application/pdf,image/png,image/jpeg,application/octet-stream";
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 10 * 1024 * 1024;
/// Larger files would make bodies of several GiB: far beyond what the API accepts.
const MAX_PAYLOAD_CEILING: u64 = 1 << 30;
/// RabbitMQ's `x-message-ttl` is a 32-bit count of milliseconds; a day is plenty.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);

/// A bad setting: the variable and what is wrong with its value.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// An empty variable (`VAR=` in a compose file) means "not set".
fn given(raw: &Option<String>) -> Option<&str> {
    raw.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn or_default<'a>(raw: &'a str, default: &'a str) -> &'a str {
    let raw = raw.trim();
    if raw.is_empty() { default } else { raw }
}

fn number<T: FromStr>(var: &'static str, raw: &str, default: &str) -> Result<T, ConfigError> {
    let raw = or_default(raw, default);
    raw.parse()
        .map_err(|_| bad(var, format!("{raw:?} is not a whole number")))
}

fn number_in<T>(
    var: &'static str,
    raw: &str,
    default: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let n: T = number(var, raw, default)?;
    if n < min || n > max {
        return Err(bad(var, format!("{n} is out of range ({min} to {max})")));
    }
    Ok(n)
}

fn duration(var: &'static str, raw: &str, default: &str) -> Result<Duration, ConfigError> {
    let raw = or_default(raw, default);
    parse_duration(raw).ok_or_else(|| bad(var, format!("{raw:?} is not a duration")))
}

fn choice<T: Copy>(
    var: &'static str,
    raw: &str,
    default: &str,
    options: &[(&str, T)],
) -> Result<T, ConfigError> {
    let raw = or_default(raw, default);
    options
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(raw))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            bad(var, format!("{raw:?} is not one of {}", names.join(", ")))
        })
}

/// Where the broker is and which names this worker's topology uses.
#[derive(Args, Debug, Clone)]
pub struct BrokerArgs {
    /// Broker URL; amqps:// for TLS. The password never appears in logs.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_default_value = true, hide_env_values = true)]
    pub amqp_url: String,
    /// Prefix of every exchange and queue name.
    #[arg(long, env = "CXONE_QUEUE_PREFIX", default_value = "cxone")]
    pub queue_prefix: String,
}

#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub url: AmqpUrl,
    pub prefix: String,
}

impl BrokerArgs {
    pub fn settings(&self) -> Result<BrokerSettings, ConfigError> {
        let url = AmqpUrl::parse(or_default(&self.amqp_url, DEFAULT_AMQP_URL))
            .map_err(|m| bad("AMQP_URL", m))?;
        let prefix = or_default(&self.queue_prefix, "cxone").to_owned();
        let valid = prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid || prefix.ends_with('.') || prefix.len() > 200 {
            return Err(bad(
                "CXONE_QUEUE_PREFIX",
                format!(
                    "{prefix:?} may hold only letters, digits, '-', '_' and '.', and may not end with '.'"
                ),
            ));
        }
        Ok(BrokerSettings { url, prefix })
    }
}

/// How big a file may be and which types it may have.
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest file accepted, in bytes, before encoding.
    #[arg(long, env = "MAX_PAYLOAD_BYTES", default_value = "10485760")]
    pub max_payload_bytes: String,
    /// Comma list of accepted content types.
    #[arg(long, env = "ALLOWED_MIME_TYPES", default_value = DEFAULT_MIME_TYPES)]
    pub allowed_mime_types: String,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_payload_bytes: u64,
    pub allowed_types: Vec<String>,
}

impl LimitArgs {
    pub fn settings(&self) -> Result<Limits, ConfigError> {
        let max_payload_bytes = number_in(
            "MAX_PAYLOAD_BYTES",
            &self.max_payload_bytes,
            "10485760",
            1,
            MAX_PAYLOAD_CEILING,
        )?;
        let allowed_types: Vec<String> = split_list(
            or_default(&self.allowed_mime_types, DEFAULT_MIME_TYPES),
            ',',
        )
        .into_iter()
        .map(|t| t.to_ascii_lowercase())
        .collect();
        if let Some(t) = allowed_types.iter().find(|t| !is_mime_type(t)) {
            return Err(bad(
                "ALLOWED_MIME_TYPES",
                format!("{t:?} is not a content type"),
            ));
        }
        Ok(Limits {
            max_payload_bytes,
            allowed_types,
        })
    }
}

/// What a file reference may point at, and how big and of which type it may be.
#[derive(Args, Debug, Clone)]
pub struct FileArgs {
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Colon list of directories that file:// references may read; none = file:// refused.
    #[arg(long, env = "FILE_ROOTS", default_value = "")]
    pub file_roots: String,
    /// Comma list of hosts that http(s):// references may name; none = refused.
    #[arg(long, env = "FILE_HTTP_ALLOWED_HOSTS", default_value = "")]
    pub file_http_allowed_hosts: String,
    /// Also accept plain http:// references (to the allowed hosts).
    #[arg(long, env = "FILE_HTTP_ALLOW_PLAIN", default_value = "false")]
    pub file_http_allow_plain: String,
    /// Comma list of buckets/containers that s3://, az:// and gs:// references may name; none = any.
    #[arg(long, env = "FILE_BUCKETS", default_value = "")]
    pub file_buckets: String,
    /// PEM file of extra root certificates that https:// sources are trusted with
    /// (a private CA), on top of the system's.
    #[arg(long, env = "FILE_HTTP_CA_FILE")]
    pub file_http_ca_file: Option<PathBuf>,
    /// Longest wait for an http(s) source to connect, to answer, and between two
    /// pieces of its body; the whole body may take ten times this (or its size at
    /// 32 KiB/s, if longer).
    #[arg(long, env = "FILE_HTTP_TIMEOUT", default_value = "30s")]
    pub file_http_timeout: String,
}

#[derive(Debug, Clone)]
pub struct FileSettings {
    pub max_payload_bytes: u64,
    pub allowed_types: Vec<String>,
    /// Canonical paths (symbolic links resolved), so that containment checks compare
    /// like with like.
    pub roots: Vec<PathBuf>,
    pub http_allowed_hosts: Vec<String>,
    pub http_allow_plain: bool,
    pub buckets: Vec<String>,
    /// The PEM text of `FILE_HTTP_CA_FILE`, checked to hold at least one certificate.
    pub http_ca_pem: Option<Vec<u8>>,
    pub http_timeout: Duration,
}

impl FileArgs {
    pub fn settings(&self) -> Result<FileSettings, ConfigError> {
        let Limits {
            max_payload_bytes,
            allowed_types,
        } = self.limits.settings()?;
        let roots = split_list(&self.file_roots, ':')
            .iter()
            .map(|r| canonical_root(Path::new(r)))
            .collect::<Result<_, _>>()?;
        let http_allowed_hosts = split_list(&self.file_http_allowed_hosts, ',')
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let http_allow_plain = choice(
            "FILE_HTTP_ALLOW_PLAIN",
            &self.file_http_allow_plain,
            "false",
            &[("false", false), ("true", true), ("0", false), ("1", true)],
        )?;
        Ok(FileSettings {
            max_payload_bytes,
            allowed_types,
            roots,
            http_allowed_hosts,
            http_allow_plain,
            buckets: split_list(&self.file_buckets, ','),
            http_ca_pem: self
                .file_http_ca_file
                .as_deref()
                .map(|p| read_ca_file("FILE_HTTP_CA_FILE", p))
                .transpose()?,
            http_timeout: duration("FILE_HTTP_TIMEOUT", &self.file_http_timeout, "30s")?,
        })
    }
}

/// Reads a PEM bundle and checks that it holds certificates, so that a wrong file
/// stops the worker at start rather than failing every https:// job.
fn read_ca_file(var: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| bad(var, format!("cannot read {path:?}: {e}")))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        Ok(_) => Err(bad(var, format!("{path:?} holds no PEM certificate"))),
        Err(e) => Err(bad(
            var,
            format!("{path:?} is not a PEM certificate bundle: {e}"),
        )),
    }
}

fn is_mime_type(t: &str) -> bool {
    let mut parts = t.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn canonical_root(root: &Path) -> Result<PathBuf, ConfigError> {
    if !root.is_absolute() {
        return Err(bad(
            "FILE_ROOTS",
            format!("{:?} is not an absolute path", root),
        ));
    }
    let canonical = root
        .canonicalize()
        .map_err(|e| bad("FILE_ROOTS", format!("{:?}: {e}", root)))?;
    if !canonical.is_dir() {
        return Err(bad("FILE_ROOTS", format!("{:?} is not a directory", root)));
    }
    Ok(canonical)
}

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

/// Which audit events are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLevel {
    /// `retry_scheduled`, `succeeded`, `failed` only.
    Terminal,
    /// Every stage as well: `received`, `encoded`, `executed`, `synced`.
    All,
}

/// How much of the payload the external storage record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoragePayload {
    /// `encoded_data` in the record (the seed's record).
    Base64,
    /// The raw bytes as a sibling object `{job_id}.bin`, no `encoded_data`.
    Raw,
    /// No payload at all.
    None,
}

#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub endpoint: String,
    pub token: Option<Secret<String>>,
    /// The PEM text of `EXTERNAL_STORAGE_CA_FILE`, checked to hold a certificate.
    pub ca_pem: Option<Vec<u8>>,
    pub payload: StoragePayload,
}

/// Everything `cxone-worker run` needs.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub files: FileArgs,
    /// Jobs in flight at once; also the consumer prefetch.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value = "16")]
    pub concurrency: String,
    /// Bytes of files held in memory at once; larger files wait (default 4 x MAX_PAYLOAD_BYTES).
    #[arg(long, env = "MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<String>,
    /// Execution attempts before a retryable failure is dead-lettered.
    #[arg(long, env = "MAX_ATTEMPTS", default_value = "5")]
    pub max_attempts: String,
    /// Waits between attempts (the last repeats); ms, s, m, h units.
    #[arg(long, env = "RETRY_DELAYS", default_value = "5s,30s,2m,10m")]
    pub retry_delays: String,
    /// How long SIGTERM waits for jobs in flight before handing them back.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "30s")]
    pub shutdown_grace: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: String,
    /// `terminal` (retry_scheduled, succeeded, failed) or `all` (every stage too).
    #[arg(long, env = "AUDIT_EVENTS", default_value = "terminal")]
    pub audit_events: String,
    /// How long a publish may wait for the broker's confirm before the job is handed back.
    #[arg(long, env = "PUBLISH_CONFIRM_TIMEOUT", default_value = "30s")]
    pub publish_confirm_timeout: String,
    /// Where each succeeded job's record goes: file:///dir, s3://bucket/prefix,
    /// az://container/prefix, gs://bucket/prefix or an http(s):// base URL (PUT).
    #[arg(long, env = "EXTERNAL_STORAGE_ENDPOINT")]
    pub storage_endpoint: Option<String>,
    /// Bearer token for an http(s) storage endpoint.
    #[arg(long, env = "EXTERNAL_STORAGE_TOKEN", hide_env_values = true)]
    pub storage_token: Option<String>,
    /// PEM file of extra root certificates that an https:// storage endpoint is
    /// trusted with (a private CA), on top of the system's.
    #[arg(long, env = "EXTERNAL_STORAGE_CA_FILE")]
    pub storage_ca_file: Option<PathBuf>,
    /// `base64` (encoded_data in the record), `raw` (a sibling {job_id}.bin) or `none`.
    #[arg(long, env = "STORAGE_PAYLOAD", default_value = "base64")]
    pub storage_payload: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub api: ApiSettings,
    pub files: FileSettings,
    pub concurrency: u16,
    pub max_inflight_bytes: u64,
    pub max_attempts: u32,
    pub retry_delays: Vec<Duration>,
    pub shutdown_grace: Duration,
    pub admin_addr: SocketAddr,
    pub audit: AuditLevel,
    pub publish_timeout: Duration,
    pub storage: Option<StorageSettings>,
}

impl RunArgs {
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let broker = self.broker.settings()?;
        let api = self.api.settings()?;
        let files = self.files.settings()?;
        let concurrency = number_in("WORKER_CONCURRENCY", &self.concurrency, "16", 1, 1000)?;
        let max_inflight_bytes = match given(&self.max_inflight_bytes) {
            None => files.max_payload_bytes.saturating_mul(4),
            Some(raw) => number("MAX_INFLIGHT_BYTES", raw, "")?,
        };
        if max_inflight_bytes < files.max_payload_bytes {
            return Err(bad(
                "MAX_INFLIGHT_BYTES",
                format!(
                    "{max_inflight_bytes} is below MAX_PAYLOAD_BYTES ({}): the largest file could never start",
                    files.max_payload_bytes
                ),
            ));
        }
        let retry_delays = parse_retry_delays(&self.retry_delays)?;
        let admin_raw = or_default(&self.admin_addr, "127.0.0.1:9090");
        let admin_addr = admin_raw.parse().map_err(|_| {
            bad(
                "ADMIN_ADDR",
                format!("{admin_raw:?} is not an address like 127.0.0.1:9090"),
            )
        })?;
        let endpoint = given(&self.storage_endpoint);
        if self.storage_ca_file.is_some()
            && !endpoint.is_some_and(|e| e.to_ascii_lowercase().starts_with("https://"))
        {
            // A CA file that nothing uses is a mistake worth hearing about at start.
            return Err(bad(
                "EXTERNAL_STORAGE_CA_FILE",
                "is only used with an https:// EXTERNAL_STORAGE_ENDPOINT",
            ));
        }
        let storage = match endpoint {
            None => None,
            Some(endpoint) => Some(StorageSettings {
                endpoint: check_storage_endpoint(endpoint)?,
                token: given(&self.storage_token).map(|t| Secret::new(t.to_owned())),
                ca_pem: self
                    .storage_ca_file
                    .as_deref()
                    .map(|p| read_ca_file("EXTERNAL_STORAGE_CA_FILE", p))
                    .transpose()?,
                payload: choice(
                    "STORAGE_PAYLOAD",
                    &self.storage_payload,
                    "base64",
                    &[
                        ("base64", StoragePayload::Base64),
                        ("raw", StoragePayload::Raw),
                        ("none", StoragePayload::None),
                    ],
                )?,
            }),
        };
        Ok(Settings {
            broker,
            api,
            files,
            concurrency,
            max_inflight_bytes,
            max_attempts: number_in("MAX_ATTEMPTS", &self.max_attempts, "5", 1, 1000)?,
            retry_delays,
            shutdown_grace: duration("SHUTDOWN_GRACE", &self.shutdown_grace, "30s")?,
            admin_addr,
            audit: choice(
                "AUDIT_EVENTS",
                &self.audit_events,
                "terminal",
                &[("terminal", AuditLevel::Terminal), ("all", AuditLevel::All)],
            )?,
            publish_timeout: duration(
                "PUBLISH_CONFIRM_TIMEOUT",
                &self.publish_confirm_timeout,
                "30s",
            )?,
            storage,
        })
    }
}

/// `RETRY_DELAYS`: a comma list of durations, each from 1 ms to 24 h; shared by
/// `run`, `status` and `definitions`, which name the retry queues after them.
pub fn parse_retry_delays(raw: &str) -> Result<Vec<Duration>, ConfigError> {
    let items = split_list(or_default(raw, "5s,30s,2m,10m"), ',');
    if items.is_empty() {
        return Err(bad("RETRY_DELAYS", "is empty"));
    }
    items
        .iter()
        .map(|raw| {
            let d = parse_duration(raw)
                .ok_or_else(|| bad("RETRY_DELAYS", format!("{raw:?} is not a duration")))?;
            if d.is_zero() || d > MAX_RETRY_DELAY {
                return Err(bad(
                    "RETRY_DELAYS",
                    format!("{raw:?} must be between 1ms and 24h"),
                ));
            }
            Ok(d)
        })
        .collect()
}

fn check_storage_endpoint(raw: &str) -> Result<String, ConfigError> {
    let var = "EXTERNAL_STORAGE_ENDPOINT";
    let url = url::Url::parse(raw)
        .map_err(|e| bad(var, format!("{:?} is not a URL ({e})", redact_url(raw))))?;
    match url.scheme() {
        "file" => {
            if url
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(bad(
                    var,
                    format!("{raw:?}: a file:// endpoint names a local directory (file:///dir)"),
                ));
            }
        }
        "s3" | "az" | "gs" | "http" | "https" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(bad(
                    var,
                    format!("{:?} names no bucket, container or host", redact_url(raw)),
                ));
            }
        }
        other => {
            return Err(bad(
                var,
                format!("scheme {other:?} is not one of file, s3, az, gs, http, https"),
            ));
        }
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// How logs are written; shared by every subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

pub fn log_format(raw: &str) -> Result<LogFormat, ConfigError> {
    choice(
        "LOG_FORMAT",
        raw,
        "json",
        &[("json", LogFormat::Json), ("text", LogFormat::Text)],
    )
}

#[cfg(test)]
mod tests;
