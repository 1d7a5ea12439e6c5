//! What a file reference may point at: the size and type limits, `FILE_ROOTS`, the
//! http(s) and object-store allowlists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::{
    ConfigError, DEFAULT_MIME_TYPES, MAX_PAYLOAD_CEILING, bad, choice, duration, number, number_in,
    or_default, split_list,
};

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
    /// Comma list of hosts that http(s):// references and redirects may name: `host`
    /// (the scheme's default port only), `host:port`, or `host:*` (any port); none = refused.
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
    /// pieces of its body; also the longest a download waits for room in
    /// MAX_INFLIGHT_BYTES before it gives up (retryable).
    #[arg(long, env = "FILE_HTTP_TIMEOUT", default_value = DEFAULT_HTTP_TIMEOUT)]
    pub file_http_timeout: String,
    /// Slowest transfer accepted from an http(s) or object-store source, in bytes per
    /// second over FILE_MIN_RATE_WINDOW; a slower one is cut off (retryable). 0 = off.
    #[arg(long, env = "FILE_MIN_RATE", default_value = DEFAULT_MIN_RATE)]
    pub file_min_rate: String,
    /// The sliding window FILE_MIN_RATE is averaged over; the first window is the grace
    /// period of every transfer.
    #[arg(long, env = "FILE_MIN_RATE_WINDOW", default_value = DEFAULT_MIN_RATE_WINDOW)]
    pub file_min_rate_window: String,
}

/// Ten seconds to connect and to answer: a server that stalls its answer holds a job
/// (no memory) that long per attempt; a slow body is the minimum rate's to cut.
const DEFAULT_HTTP_TIMEOUT: &str = "10s";
const DEFAULT_MIN_RATE: &str = "65536";
const DEFAULT_MIN_RATE_WINDOW: &str = "3s";

/// One `FILE_HTTP_ALLOWED_HOSTS` entry: a host (as `url` normalises it: lowercase,
/// IDNA, IPv6 in brackets) and the ports it may be reached on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    pub host: String,
    pub port: AllowedPort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowedPort {
    /// `host`: the scheme's default port only (443, or 80 for plain http). A port-less
    /// entry that allowed every port let jobs fetch the worker's own `/metrics`.
    Default,
    /// `host:port`.
    Only(u16),
    /// `host:*`.
    Any,
}

impl AllowedHost {
    /// Parses `host`, `host:port`, `host:*`, `[v6]`, `[v6]:port`, `[v6]:*`.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        let (host, port) = match entry.rsplit_once(':') {
            // An unbracketed IPv6 address has colons but names no port.
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                let port = match port {
                    "*" => AllowedPort::Any,
                    digits => match digits.parse::<u16>() {
                        Ok(p) if p > 0 => AllowedPort::Only(p),
                        _ => {
                            return Err(format!(
                                "{entry:?}: {port:?} is not a port (1-65535 or *)"
                            ));
                        }
                    },
                };
                (host, port)
            }
            _ => (entry, AllowedPort::Default),
        };
        let host = normalize_host(host)
            .ok_or_else(|| format!("{entry:?} is not a host name or address"))?;
        Ok(Self { host, port })
    }
}

/// The host as `Url::host_str` gives it for a URL naming it, so that entries and
/// requests compare alike (`LOCALHOST` = `localhost`, `[::1]`, punycode).
fn normalize_host(host: &str) -> Option<String> {
    if host.is_empty() || host.contains(['/', '@', '?', '#', '*']) {
        return None;
    }
    let bracketed = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let url = url::Url::parse(&format!("https://{bracketed}/")).ok()?;
    url.host_str().map(str::to_owned)
}

#[derive(Debug, Clone)]
pub struct FileSettings {
    pub max_payload_bytes: u64,
    pub allowed_types: Vec<String>,
    /// Canonical paths (symbolic links resolved), so that containment checks compare
    /// like with like.
    pub roots: Vec<PathBuf>,
    pub http_allowed_hosts: Vec<AllowedHost>,
    pub http_allow_plain: bool,
    pub buckets: Vec<String>,
    /// The PEM text of `FILE_HTTP_CA_FILE`, checked to hold at least one certificate.
    pub http_ca_pem: Option<Vec<u8>>,
    pub http_timeout: Duration,
    /// `FILE_MIN_RATE`, bytes per second; 0 = no minimum.
    pub min_rate: u64,
    pub min_rate_window: Duration,
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
            .iter()
            .map(|h| AllowedHost::parse(h).map_err(|m| bad("FILE_HTTP_ALLOWED_HOSTS", m)))
            .collect::<Result<_, _>>()?;
        let min_rate_window = duration(
            "FILE_MIN_RATE_WINDOW",
            &self.file_min_rate_window,
            DEFAULT_MIN_RATE_WINDOW,
        )?;
        if min_rate_window < Duration::from_millis(100)
            || min_rate_window > Duration::from_secs(600)
        {
            return Err(bad("FILE_MIN_RATE_WINDOW", "must be between 100ms and 10m"));
        }
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
            http_timeout: duration(
                "FILE_HTTP_TIMEOUT",
                &self.file_http_timeout,
                DEFAULT_HTTP_TIMEOUT,
            )?,
            min_rate: number("FILE_MIN_RATE", &self.file_min_rate, DEFAULT_MIN_RATE)?,
            min_rate_window,
        })
    }
}

/// Reads a PEM bundle and checks that it holds certificates, so that a wrong file
/// stops the worker at start rather than failing every https:// job.
pub(super) fn read_ca_file(var: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_name_their_ports() {
        let parse = |e: &str| AllowedHost::parse(e).unwrap();
        let host = |h: &str, port| AllowedHost {
            host: h.to_owned(),
            port,
        };
        assert_eq!(
            parse("Files.Example.com"),
            host("files.example.com", AllowedPort::Default)
        );
        assert_eq!(
            parse("cdn.example.com:8443"),
            host("cdn.example.com", AllowedPort::Only(8443))
        );
        assert_eq!(parse("127.0.0.1:*"), host("127.0.0.1", AllowedPort::Any));
        assert_eq!(parse("[::1]:9000"), host("[::1]", AllowedPort::Only(9000)));
        assert_eq!(parse("::1"), host("[::1]", AllowedPort::Default));
        assert_eq!(parse("[::1]:*"), host("[::1]", AllowedPort::Any));
        for bad in [
            "host:0",
            "host:65536",
            "host:http",
            ":443",
            "",
            "a/b",
            "user@host",
            "*",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad:?}");
        }
    }
}
