//! The external storage record of a succeeded job: `{endpoint}/{job_id}.json`,
//! written whole or not at all, so that a retry simply overwrites it.
//!
//! The record's `encoded_data` is the base64 text of the request body, shared with
//! it: the record is sent as a list of chunks and never copies the payload.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{Secret, StoragePayload, StorageSettings};
use crate::source::CloudEnv;
use crate::source::stores::{self, Cloud};
use crate::telemetry::names;

/// Longest object name kept readable; longer ones are cut and suffixed with a hash.
const MAX_NAME: usize = 200;

#[derive(Debug, thiserror::Error)]
#[error("storage write of {name} failed: {message}")]
pub struct StorageError {
    name: String,
    message: String,
}

/// The decision a storage error drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The endpoint refuses the worker: a pause.
    Refused,
    /// The endpoint is down: a pause.
    Unavailable,
    /// Anything else: the job's record is written again later.
    Failed,
}

impl StorageError {
    /// Interim: every failure is a retry until errors are sorted by their source.
    pub fn kind(&self) -> StorageErrorKind {
        StorageErrorKind::Failed
    }
}

enum Target {
    Objects {
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
    },
    Http {
        client: reqwest::Client,
        base: url::Url,
        token: Option<Secret<String>>,
    },
}

pub struct Storage {
    target: Target,
    endpoint: String,
    payload: StoragePayload,
    backoff: ExponentialBuilder,
}

/// What a record says about one job.
pub struct Record<'a> {
    pub request_id: &'a str,
    pub job_id: &'a str,
    pub execution_id: Option<&'a str>,
    pub data_action_id: &'a str,
    pub content_type: &'a str,
    pub sha256: &'a str,
    pub original_size: u64,
    pub metadata: Option<&'a Map<String, Value>>,
    /// The base64 text (a slice of the request body).
    pub base64: Bytes,
    /// The raw bytes, for `STORAGE_PAYLOAD=raw`.
    pub raw: Option<Bytes>,
}

#[derive(Serialize)]
struct Head<'a> {
    request_id: &'a str,
    job_id: &'a str,
    execution_id: Option<&'a str>,
    data_action_id: &'a str,
    content_type: &'a str,
    sha256: &'a str,
    original_size: u64,
}

#[derive(Serialize)]
struct Tail<'a> {
    metadata: Option<&'a Map<String, Value>>,
    synced_at: String,
}

impl Storage {
    /// Connects to the endpoint; a local directory is created if missing. Object
    /// stores are configured from the process environment (`AWS_*`, `AZURE_*`, …).
    pub fn new(settings: &StorageSettings) -> anyhow::Result<Self> {
        Self::with_cloud_env(settings, &CloudEnv::from_process())
    }

    /// As [`Storage::new`], object stores configured from `env` instead.
    pub fn with_cloud_env(settings: &StorageSettings, env: &CloudEnv) -> anyhow::Result<Self> {
        let url = url::Url::parse(&settings.endpoint)?;
        let target = match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|()| {
                    anyhow::anyhow!("EXTERNAL_STORAGE_ENDPOINT: {url} is not a local path")
                })?;
                std::fs::create_dir_all(&dir)?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
                Target::Objects {
                    store: Arc::new(store),
                    prefix: ObjectPath::default(),
                }
            }
            "http" | "https" => {
                let mut client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .timeout(Duration::from_secs(120))
                    .redirect(reqwest::redirect::Policy::none());
                if let Some(pem) = &settings.ca_pem {
                    client = client.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem)?);
                }
                Target::Http {
                    client: client.build()?,
                    base: url,
                    token: settings.token.clone(),
                }
            }
            scheme => {
                // s3://bucket/prefix, az://container/prefix, gs://bucket/prefix.
                let cloud = Cloud::from_scheme(scheme).ok_or_else(|| {
                    anyhow::anyhow!("EXTERNAL_STORAGE_ENDPOINT: {scheme}:// is not supported")
                })?;
                let bucket = url.host_str().unwrap_or_default();
                let store = stores::build(cloud, bucket, env)?;
                Target::Objects {
                    store,
                    prefix: ObjectPath::from_url_path(url.path())?,
                }
            }
        };
        // Results carry the record's URI: never the userinfo or query of an http(s) endpoint.
        let endpoint = match &target {
            Target::Http { base, .. } => crate::source::shown_url(base)
                .trim_end_matches('/')
                .to_owned(),
            Target::Objects { .. } => settings.endpoint.clone(),
        };
        Ok(Self {
            target,
            endpoint,
            payload: settings.payload,
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(3),
        })
    }

    pub fn payload(&self) -> StoragePayload {
        self.payload
    }

    /// Whether storage takes a write now: the probe of a storage pause.
    pub async fn probe(&self) -> Result<(), StorageError> {
        self.put(".cxone-worker-probe", vec![Bytes::from_static(b"{}")])
            .await
    }

    /// Where the record of `job_id` lands.
    pub fn uri(&self, job_id: &str) -> String {
        format!("{}/{}.json", self.endpoint, object_name(job_id))
    }

    /// Writes the record (and the raw sibling for `STORAGE_PAYLOAD=raw`), retrying
    /// briefly; a write that still fails is the caller's to retry later.
    pub async fn write(&self, record: &Record<'_>) -> Result<(), StorageError> {
        let name = object_name(record.job_id);
        if let (StoragePayload::Raw, Some(raw)) = (self.payload, &record.raw) {
            self.put_retrying(&format!("{name}.bin"), vec![raw.clone()])
                .await?;
        }
        let chunks = self.record_chunks(record);
        self.put_retrying(&format!("{name}.json"), chunks).await
    }

    fn record_chunks(&self, r: &Record<'_>) -> Vec<Bytes> {
        let head = Head {
            request_id: r.request_id,
            job_id: r.job_id,
            execution_id: r.execution_id,
            data_action_id: r.data_action_id,
            content_type: r.content_type,
            sha256: r.sha256,
            original_size: r.original_size,
        };
        let tail = Tail {
            metadata: r.metadata,
            synced_at: crate::outcome::rfc3339(crate::outcome::now()),
        };
        // Serializing plain structs into a Vec cannot fail.
        let mut head = serde_json::to_vec(&head).expect("record head");
        head.pop(); // the closing brace: more fields follow
        let mut tail_json = serde_json::to_vec(&tail).expect("record tail");
        tail_json[0] = b','; // the opening brace: these fields continue the object
        let mut chunks = Vec::with_capacity(4);
        if self.payload == StoragePayload::Base64 {
            head.extend_from_slice(br#","encoded_data":""#);
            chunks.push(Bytes::from(head));
            chunks.push(r.base64.clone());
            chunks.push(Bytes::from_static(b"\""));
        } else {
            chunks.push(Bytes::from(head));
        }
        chunks.push(Bytes::from(tail_json));
        chunks
    }

    async fn put_retrying(&self, name: &str, chunks: Vec<Bytes>) -> Result<(), StorageError> {
        let put = || self.put(name, chunks.clone());
        let result = put
            .retry(self.backoff)
            .sleep(tokio::time::sleep)
            .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "storage write failed"))
            .await;
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(names::STORAGE_WRITES, "result" => label).increment(1);
        result
    }

    async fn put(&self, name: &str, chunks: Vec<Bytes>) -> Result<(), StorageError> {
        let fail = |message: String| StorageError {
            name: name.to_owned(),
            message,
        };
        match &self.target {
            Target::Objects { store, prefix } => {
                let path = prefix.clone().join(name);
                let payload: PutPayload = chunks.into_iter().collect();
                store
                    .put(&path, payload)
                    .await
                    .map(|_| ())
                    .map_err(|e| fail(crate::telemetry::chain(&e)))
            }
            Target::Http {
                client,
                base,
                token,
            } => {
                let url = base.join_segment(name);
                let length: usize = chunks.iter().map(Bytes::len).sum();
                let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks.into_iter().map(Ok::<_, std::io::Error>),
                ));
                let mut request = client
                    .put(url)
                    .header(reqwest::header::CONTENT_LENGTH, length)
                    .header(reqwest::header::CONTENT_TYPE, content_type_of(name))
                    .body(body);
                if let Some(token) = token {
                    request = request.bearer_auth(token.expose());
                }
                let response = request
                    .send()
                    .await
                    // Without the URL: the endpoint may carry a token in its query.
                    .map_err(|e| fail(crate::telemetry::chain(&e.without_url())))?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(fail(format!("PUT answered {status}")))
                }
            }
        }
    }
}

fn content_type_of(name: &str) -> &'static str {
    if name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

trait JoinSegment {
    fn join_segment(&self, name: &str) -> url::Url;
}

impl JoinSegment for url::Url {
    /// `{base}/{name}`, the name one path segment whatever it holds.
    fn join_segment(&self, name: &str) -> url::Url {
        let mut url = self.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(name);
        }
        url
    }
}

/// A job id made safe as a file and object name, one to one: letters, digits, `-`,
/// `_` and `.` stay (but a leading dot), every other byte becomes `=XX`.
pub fn object_name(job_id: &str) -> String {
    let mut out = String::with_capacity(job_id.len());
    for (i, b) in job_id.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.len() > MAX_NAME {
        // `=~` never comes out of the escaping above (`~` is escaped as `=7E`), so a
        // shortened name cannot equal the escaped name of another id.
        let hash = crate::encode::sha256_hex(job_id.as_bytes());
        out.truncate(MAX_NAME - 34);
        out.push_str("=~");
        out.push_str(&hash[..32]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_safe_and_distinct() {
        assert_eq!(object_name("inv-2026_000123.v2"), "inv-2026_000123.v2");
        assert_eq!(object_name("a/b"), "a=2Fb");
        assert_eq!(object_name("a=2Fb"), "a=3D2Fb");
        assert_eq!(object_name(".."), "=2E.");
        assert_eq!(object_name("sha256:ab"), "sha256=3Aab");
        assert_eq!(object_name("é"), "=C3=A9");
        let long = "x/".repeat(200);
        let name = object_name(&long);
        assert!(name.len() <= MAX_NAME);
        assert_ne!(name, object_name(&"x/".repeat(199)));
        assert!(name.contains("=~"), "{name}");
        // No id short enough to be kept whole can be named with the `=~` marker.
        assert_eq!(object_name("a~b"), "a=7Eb");
    }

    fn record(base64: &'static [u8]) -> Record<'static> {
        Record {
            request_id: "key-1",
            job_id: "job/1",
            execution_id: Some("exec-1"),
            data_action_id: "act",
            content_type: "application/pdf",
            sha256: "ab",
            original_size: 3,
            metadata: None,
            base64: Bytes::from_static(base64),
            raw: Some(Bytes::from_static(b"abc")),
        }
    }

    async fn written(payload: StoragePayload) -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let settings = StorageSettings {
            endpoint: format!("file://{}/records", dir.path().display()),
            token: None,
            ca_pem: None,
            payload,
        };
        let storage = Storage::new(&settings).unwrap();
        storage.write(&record(b"YWJj")).await.unwrap();
        (dir, storage)
    }

    #[tokio::test]
    async fn records_land_as_the_contract_says() {
        let (dir, storage) = written(StoragePayload::Base64).await;
        let path = dir.path().join("records/job=2F1.json");
        assert_eq!(storage.uri("job/1"), format!("file://{}", path.display()));
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "request_id",
            "job_id",
            "execution_id",
            "data_action_id",
            "content_type",
            "sha256",
            "original_size",
            "encoded_data",
            "metadata",
            "synced_at",
        ];
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(v["encoded_data"], "YWJj");
        assert_eq!(v["execution_id"], "exec-1");
        assert!(!dir.path().join("records/job=2F1.bin").exists());
        // A retry overwrites the same object, and leaves no temporary file behind.
        storage.write(&record(b"YWJj")).await.unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("records"))
                .unwrap()
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn raw_and_none_payloads() {
        let (dir, _) = written(StoragePayload::Raw).await;
        let v: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("records/job=2F1.json")).unwrap(),
        )
        .unwrap();
        assert!(v.get("encoded_data").is_none());
        assert_eq!(
            std::fs::read(dir.path().join("records/job=2F1.bin")).unwrap(),
            b"abc"
        );
        let (dir, _) = written(StoragePayload::None).await;
        let v: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("records/job=2F1.json")).unwrap(),
        )
        .unwrap();
        assert!(v.get("encoded_data").is_none() && v["metadata"].is_null());
        assert!(!dir.path().join("records/job=2F1.bin").exists());
    }
}
