//! The job message, its idempotency key, and the ways a job can fail.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest `job_id` accepted: it travels as the AMQP `correlation_id`, a short string.
const MAX_JOB_ID_LEN: usize = 255;

/// The body of a message on `P.jobs`, exactly as the contract names its fields.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Job {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_action_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Job {
    /// Parses and checks a job body; every refusal is an `invalid_job` failure.
    pub fn parse(body: &[u8]) -> Result<Job, Failure> {
        let job: Job = serde_json::from_slice(body).map_err(|e| {
            Failure::permanent(ErrorKind::InvalidJob, format!("job is not valid: {e}"))
        })?;
        job.validate()?;
        Ok(job)
    }

    /// The checks serde cannot express; shared by the worker and `enqueue`.
    pub fn validate(&self) -> Result<(), Failure> {
        let invalid = |m: String| Err(Failure::permanent(ErrorKind::InvalidJob, m));
        if let Some(id) = &self.job_id
            && (id.trim().is_empty()
                || id.len() > MAX_JOB_ID_LEN
                || id.chars().any(char::is_control))
        {
            return invalid(format!(
                "job_id must be 1 to {MAX_JOB_ID_LEN} bytes of printable text"
            ));
        }
        if self.file.trim().is_empty() {
            return invalid("file is empty".into());
        }
        if !["file://", "s3://", "az://", "gs://", "https://", "http://"]
            .iter()
            .any(|scheme| self.file.starts_with(scheme))
        {
            return invalid(format!(
                "file {:?} is not a file://, s3://, az://, gs:// or http(s):// reference",
                crate::text::redact_url(&self.file)
            ));
        }
        if self
            .content_type
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return invalid("content_type is empty".into());
        }
        if self
            .data_action_id
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return invalid("data_action_id is empty".into());
        }
        Ok(())
    }
}

/// The `Idempotency-Key` of every attempt of a job: `job_id`, else the AMQP
/// `message_id`, else `sha256:` + hex SHA-256 of the body. The body and properties
/// travel unchanged through retries and the DLQ, so the key never changes.
pub fn idempotency_key(job_id: Option<&str>, message_id: Option<&str>, body: &[u8]) -> String {
    if let Some(id) = job_id.filter(|s| !s.is_empty()) {
        return id.to_owned();
    }
    if let Some(id) = message_id.filter(|s| !s.is_empty()) {
        return id.to_owned();
    }
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

/// Longest `file` shown in outputs: a reference may be as long as the job allows.
const MAX_SHOWN_FILE: usize = 2048;

/// A job's file reference as outputs show it (results, audit events, records, logs,
/// `dlq list`): userinfo, query and fragment removed, since any of them may hold a
/// credential (a presigned signature, a password). `file://` paths are shown as the
/// job wrote them: the worker reads them without percent-decoding, so a `?` or `#`
/// there is part of the file's name.
pub fn shown_file(reference: &str) -> String {
    let shown = if reference.starts_with("file://") {
        crate::text::redact_url(reference)
    } else {
        match url::Url::parse(reference) {
            Ok(url) if url.has_host() => {
                let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
                if let Some(port) = url.port() {
                    out.push_str(&format!(":{port}"));
                }
                out.push_str(url.path());
                out
            }
            _ => {
                // Redact first: a password may itself hold `?` or `#`.
                let redacted = crate::text::redact_url(reference);
                let end = redacted.find(['?', '#']).unwrap_or(redacted.len());
                redacted[..end].to_owned()
            }
        }
    };
    cut(shown, MAX_SHOWN_FILE)
}

/// `text` cut to at most `max` bytes on a character boundary, `…` marking a cut.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Reads the `job_id` of a body that may not be a valid job, so that even an
/// `invalid_job` result names the job when it can.
pub fn loose_job_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Loose {
        job_id: Option<String>,
    }
    serde_json::from_slice::<Loose>(body)
        .ok()?
        .job_id
        .filter(|id| !id.trim().is_empty() && id.len() <= MAX_JOB_ID_LEN)
}

/// Reads the `file` of a body that may not be a valid job, as outputs show it.
pub fn loose_file(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Loose {
        file: Option<String>,
    }
    let file = serde_json::from_slice::<Loose>(body).ok()?.file?;
    Some(shown_file(&file))
}

/// The contract's error kinds: why a job failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidJob,
    FileNotFound,
    FileAccessDenied,
    EmptyFile,
    TooLarge,
    UnsupportedType,
    TypeMismatch,
    Rejected,
    Forbidden,
    Exhausted,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidJob,
        ErrorKind::FileNotFound,
        ErrorKind::FileAccessDenied,
        ErrorKind::EmptyFile,
        ErrorKind::TooLarge,
        ErrorKind::UnsupportedType,
        ErrorKind::TypeMismatch,
        ErrorKind::Rejected,
        ErrorKind::Forbidden,
        ErrorKind::Exhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidJob => "invalid_job",
            ErrorKind::FileNotFound => "file_not_found",
            ErrorKind::FileAccessDenied => "file_access_denied",
            ErrorKind::EmptyFile => "empty_file",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::UnsupportedType => "unsupported_type",
            ErrorKind::TypeMismatch => "type_mismatch",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Exhausted => "exhausted",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the whole worker, not one job, cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Systemic {
    /// The token endpoint refuses our client credentials.
    CredentialsRefused,
    /// What answers at the token URL is no token endpoint (404, 405, an answer that
    /// is not a token): the URL is wrong, not the credentials.
    TokenEndpointInvalid,
    /// The API cannot be reached (transport errors in a row, or no token to be had).
    ApiUnreachable,
    /// The storage endpoint refuses the worker (401/403, permission denied, a
    /// read-only file system, a missing bucket).
    StorageRefused,
    /// The storage endpoint is down (connection refused, 5xx, timeouts in a row).
    StorageUnavailable,
}

impl Systemic {
    pub const ALL: [Systemic; 5] = [
        Systemic::CredentialsRefused,
        Systemic::TokenEndpointInvalid,
        Systemic::ApiUnreachable,
        Systemic::StorageRefused,
        Systemic::StorageUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Systemic::CredentialsRefused => "credentials_refused",
            Systemic::TokenEndpointInvalid => "token_endpoint_invalid",
            Systemic::ApiUnreachable => "api_unreachable",
            Systemic::StorageRefused => "storage_refused",
            Systemic::StorageUnavailable => "storage_unavailable",
        }
    }

    /// What `/readyz` says while the worker is paused for this.
    pub fn describe(self) -> &'static str {
        match self {
            Systemic::CredentialsRefused => "the API refuses the client credentials",
            Systemic::TokenEndpointInvalid => {
                "the token URL answers, but not as a token endpoint: check CXONE_API_URL / CXONE_TOKEN_URL"
            }
            Systemic::ApiUnreachable => "the API is unreachable",
            Systemic::StorageRefused => "the storage endpoint refuses the worker",
            Systemic::StorageUnavailable => "the storage endpoint is unavailable",
        }
    }

    /// Whether the storage, not the API, is what a probe must ask.
    pub fn is_storage(self) -> bool {
        matches!(
            self,
            Systemic::StorageRefused | Systemic::StorageUnavailable
        )
    }
}

/// A failure, sorted by the decision it drives. The consumer matches on this and
/// nothing else.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The job itself is at fault: dead-letter it now, whatever the attempt count.
    #[error("{kind}: {message}")]
    Permanent { kind: ErrorKind, message: String },
    /// Worth another attempt later; dead-lettered as `exhausted` at `MAX_ATTEMPTS`.
    #[error("{message}")]
    Retryable { message: String },
    /// Not the job's fault: hand the job back, pause the worker, resume when it clears.
    #[error("{}: {message}", .cause.as_str())]
    Systemic { cause: Systemic, message: String },
}

impl Failure {
    pub fn permanent(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure::Permanent {
            kind,
            message: message.into(),
        }
    }

    pub fn retryable(message: impl Into<String>) -> Self {
        Failure::Retryable {
            message: message.into(),
        }
    }

    pub fn systemic(cause: Systemic, message: impl Into<String>) -> Self {
        Failure::Systemic {
            cause,
            message: message.into(),
        }
    }

    /// The same failure, its message preceded by `context`.
    pub fn context(mut self, context: &str) -> Self {
        match &mut self {
            Failure::Permanent { message, .. }
            | Failure::Retryable { message }
            | Failure::Systemic { message, .. } => message.insert_str(0, context),
        }
        self
    }

    /// The message without the kind prefix, as results and DLQ headers carry it.
    pub fn message(&self) -> &str {
        match self {
            Failure::Permanent { message, .. }
            | Failure::Retryable { message }
            | Failure::Systemic { message, .. } => message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind_and_leads_the_message() {
        let f = Failure::permanent(ErrorKind::FileNotFound, "gone").context("ran; ");
        assert_eq!(f, Failure::permanent(ErrorKind::FileNotFound, "ran; gone"));
        assert_eq!(Failure::retryable("503").context("x: ").message(), "x: 503");
    }

    fn kind(r: Result<Job, Failure>) -> ErrorKind {
        match r {
            Err(Failure::Permanent { kind, .. }) => kind,
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_contract_example() {
        let body = br#"{"job_id": "inv-2026-000123",
            "file": "file:///var/spool/cxone/in/invoice.pdf",
            "content_type": "application/pdf",
            "data_action_id": "abc123-def456",
            "metadata": {"source": "billing", "priority": "high"}}"#;
        let job = Job::parse(body).unwrap();
        assert_eq!(job.job_id.as_deref(), Some("inv-2026-000123"));
        assert_eq!(job.metadata.unwrap()["priority"], "high");
    }

    #[test]
    fn refuses_bad_jobs_as_invalid_job() {
        for body in [
            &b"{not json"[..],
            br#"["file:///x.pdf"]"#,
            br#"{"file": "file:///x.pdf", "fle": 1}"#,
            br#"{"job_id": "a"}"#,
            br#"{"file": ""}"#,
            br#"{"file": "ftp://host/x.pdf"}"#,
            br#"{"file": "/x.pdf"}"#,
            br#"{"file": "file:///x", "metadata": [1]}"#,
            br#"{"file": "file:///x", "metadata": "m"}"#,
            br#"{"file": "file:///x", "job_id": ""}"#,
            br#"{"file": "file:///x", "job_id": 7}"#,
            br#"{"file": "file:///x", "job_id": "a\nb"}"#,
            br#"{"file": "file:///x", "content_type": " "}"#,
            br#"{"file": "file:///x", "data_action_id": ""}"#,
        ] {
            assert_eq!(
                kind(Job::parse(body)),
                ErrorKind::InvalidJob,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!(
            r#"{{"file": "file:///x", "job_id": "{}"}}"#,
            "a".repeat(256)
        );
        assert_eq!(kind(Job::parse(long.as_bytes())), ErrorKind::InvalidJob);
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let job = Job::parse(br#"{"file": "s3://b/k", "metadata": null, "job_id": null}"#).unwrap();
        assert!(job.metadata.is_none() && job.job_id.is_none());
    }

    #[test]
    fn idempotency_key_order() {
        let body = br#"{"file":"file:///a"}"#;
        assert_eq!(idempotency_key(Some("j"), Some("m"), body), "j");
        assert_eq!(idempotency_key(None, Some("m"), body), "m");
        assert_eq!(
            idempotency_key(Some(""), Some(""), body),
            format!("sha256:{}", hex::encode(Sha256::digest(body)))
        );
    }

    #[test]
    fn loose_job_id_reads_broken_jobs() {
        assert_eq!(
            loose_job_id(br#"{"job_id":"x","fle":1}"#).as_deref(),
            Some("x")
        );
        assert_eq!(loose_job_id(b"{not json"), None);
    }

    #[test]
    fn shown_files_hold_no_credentials() {
        assert_eq!(
            shown_file("s3://bucket/inv/a.pdf?versionId=3#x"),
            "s3://bucket/inv/a.pdf"
        );
        assert_eq!(
            shown_file("https://user:pw@files.example.com:8443/a%20b.pdf?X-Amz-Signature=abc#f"),
            "https://files.example.com:8443/a%20b.pdf"
        );
        assert_eq!(
            shown_file("file:///var/spool/in/a b#1.pdf"),
            "file:///var/spool/in/a b#1.pdf"
        );
        assert_eq!(
            shown_file("https://u:p?w@[bad/x?sig=1"),
            "https://u:***@[bad/x"
        );
        let long = format!("file:///{}", "é".repeat(3000));
        let shown = shown_file(&long);
        assert!(shown.len() <= MAX_SHOWN_FILE && shown.ends_with('…'));
    }

    #[test]
    fn error_kinds_round_trip() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
