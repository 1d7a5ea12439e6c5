//! One typed settings tree from flags and environment variables.
//!
//! Every variable of the contract is a `clap` flag with the variable as its `env`.
//! Flags arrive as text and are validated here, so that a bad value stops the program
//! with one line naming the variable (`RETRY_DELAYS: "5x" is not a duration`) rather
//! than clap's message about the flag.

mod api;
mod files;
mod limits;
mod storage;
mod value;

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

pub use api::{AccessKey, ApiArgs, ApiSettings, BodyArgs, BodyFields, ProfileName};
pub use files::{AllowedHost, AllowedPort, FileArgs, FileSettings, LimitArgs, Limits};
pub use limits::{CallLimitArgs, CallLimitSettings, LimitScope};
pub use storage::{StorageArgs, StoragePayload, StorageSettings};
pub use value::{AmqpUrl, Secret, split_list};

use crate::text::parse_duration;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_MIME_TYPES: &str =
    "application/pdf,image/png,image/jpeg,application/octet-stream";
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 10 * 1024 * 1024;
/// `MAX_JOB_BYTES`: a job is a few hundred bytes; 1 MiB leaves room for metadata.
const DEFAULT_MAX_JOB_BYTES: &str = "1048576";
/// RabbitMQ's own `max_message_size` ceiling (512 MiB) is far beyond any sane job.
const MAX_JOB_BYTES_CEILING: usize = 128 << 20;
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
    /// Broker URL, or the nodes of a cluster as a comma list (tried in turn); amqps:// for
    /// TLS. Passwords never appear in logs.
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

/// Which audit events are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLevel {
    /// `retry_scheduled`, `succeeded`, `failed` only.
    Terminal,
    /// Every stage as well: `received`, `encoded`, `executed`, `synced`.
    All,
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
    #[command(flatten)]
    pub call_limits: CallLimitArgs,
    /// Jobs in flight at once; also the consumer prefetch.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value = "16")]
    pub concurrency: String,
    /// Bytes of files held in memory at once; larger files wait (default 4 x MAX_PAYLOAD_BYTES).
    #[arg(long, env = "MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<String>,
    /// Largest job message body accepted, in bytes; a larger one is `invalid_job`
    /// before it is parsed.
    #[arg(long, env = "MAX_JOB_BYTES", default_value = DEFAULT_MAX_JOB_BYTES)]
    pub max_job_bytes: String,
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
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub api: ApiSettings,
    pub files: FileSettings,
    pub call_limits: CallLimitSettings,
    pub concurrency: u16,
    pub max_inflight_bytes: u64,
    pub max_job_bytes: usize,
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
        let call_limits = self.call_limits.settings()?;
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
        let storage = self.storage.settings()?;
        Ok(Settings {
            broker,
            api,
            files,
            call_limits,
            concurrency,
            max_inflight_bytes,
            max_job_bytes: number_in(
                "MAX_JOB_BYTES",
                &self.max_job_bytes,
                DEFAULT_MAX_JOB_BYTES,
                64,
                MAX_JOB_BYTES_CEILING,
            )?,
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
