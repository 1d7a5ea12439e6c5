//! Where each succeeded job's record goes (`EXTERNAL_STORAGE_*`, `STORAGE_PAYLOAD`).

use std::path::PathBuf;

use clap::Args;

use super::files::read_ca_file;
use super::{ConfigError, Secret, bad, choice, given};
use crate::text::redact_url;

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

/// The external storage settings of `run`.
#[derive(Args, Debug, Clone)]
pub struct StorageArgs {
    /// Where each succeeded job's record goes: file:///dir, s3://bucket/prefix,
    /// az://container/prefix, gs://bucket/prefix or an http(s):// base URL (PUT).
    #[arg(long = "storage-endpoint", env = "EXTERNAL_STORAGE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Bearer token for an http(s) storage endpoint.
    #[arg(
        long = "storage-token",
        env = "EXTERNAL_STORAGE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// PEM file of extra root certificates that an https:// storage endpoint is
    /// trusted with (a private CA), on top of the system's.
    #[arg(long = "storage-ca-file", env = "EXTERNAL_STORAGE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// `base64` (encoded_data in the record), `raw` (a sibling {job_id}.bin) or `none`.
    #[arg(
        long = "storage-payload",
        env = "STORAGE_PAYLOAD",
        default_value = "base64"
    )]
    pub payload: String,
}

impl StorageArgs {
    pub fn settings(&self) -> Result<Option<StorageSettings>, ConfigError> {
        let endpoint = given(&self.endpoint);
        if self.ca_file.is_some()
            && !endpoint.is_some_and(|e| e.to_ascii_lowercase().starts_with("https://"))
        {
            // A CA file that nothing uses is a mistake worth hearing about at start.
            return Err(bad(
                "EXTERNAL_STORAGE_CA_FILE",
                "is only used with an https:// EXTERNAL_STORAGE_ENDPOINT",
            ));
        }
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        let endpoint = check_storage_endpoint(endpoint)?;
        let token = given(&self.token);
        if token.is_some() && has_userinfo(&endpoint) {
            // reqwest sends the userinfo as Basic and the token as Bearer: two
            // Authorization headers, which servers answer as they please.
            return Err(bad(
                "EXTERNAL_STORAGE_TOKEN",
                "cannot be used with an EXTERNAL_STORAGE_ENDPOINT that holds user:password@ \
                 (both would be sent as Authorization); keep one of the two",
            ));
        }
        Ok(Some(StorageSettings {
            endpoint,
            token: token.map(|t| Secret::new(t.to_owned())),
            ca_pem: self
                .ca_file
                .as_deref()
                .map(|p| read_ca_file("EXTERNAL_STORAGE_CA_FILE", p))
                .transpose()?,
            payload: choice(
                "STORAGE_PAYLOAD",
                &self.payload,
                "base64",
                &[
                    ("base64", StoragePayload::Base64),
                    ("raw", StoragePayload::Raw),
                    ("none", StoragePayload::None),
                ],
            )?,
        }))
    }
}

/// Whether an endpoint carries a user name or password before its host.
fn has_userinfo(endpoint: &str) -> bool {
    url::Url::parse(endpoint).is_ok_and(|u| !u.username().is_empty() || u.password().is_some())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(endpoint: &str, token: Option<&str>) -> StorageArgs {
        StorageArgs {
            endpoint: Some(endpoint.to_owned()),
            token: token.map(str::to_owned),
            ca_file: None,
            payload: "base64".into(),
        }
    }

    #[test]
    fn userinfo_and_a_token_are_refused_together() {
        let e = args("https://user:pw@store.example/records", Some("t0ken"))
            .settings()
            .expect_err("two Authorization headers");
        assert_eq!(e.var, "EXTERNAL_STORAGE_TOKEN");
        assert!(e.message.contains("EXTERNAL_STORAGE_ENDPOINT"), "{e}");
        assert!(
            !e.to_string().contains("pw") && !e.to_string().contains("t0ken"),
            "{e}"
        );
        assert!(
            args("https://user@store.example/r", Some("t"))
                .settings()
                .is_err()
        );
        // Either one alone is fine.
        assert!(
            args("https://user:pw@store.example/r", None)
                .settings()
                .is_ok()
        );
        assert!(
            args("https://store.example/r", Some("t"))
                .settings()
                .is_ok()
        );
        assert!(
            args("https://store.example/r", Some("  "))
                .settings()
                .is_ok()
        );
    }
}
