//! The external storage record of a succeeded job: `{endpoint}/{job_id}.json`,
//! written whole or not at all, so that a retry simply overwrites it.
//!
//! The record's `encoded_data` is the base64 text of the request body, shared with
//! it: the record is sent as a list of chunks and never copies the payload.
//!
//! A write that fails says what it means (`error.rs`): storage refusing us or out
//! of reach pauses the worker, a failure of this one record retries the job.
//! [`Storage::probe`] tells when storage takes writes again.

mod error;
mod streamed;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{ConfigError, Secret, StoragePayload, StorageSettings};
use crate::source::CloudEnv;
use crate::source::stores::{self, Cloud};
use crate::telemetry::names;
use error::Cause;
pub use error::{StorageError, StorageErrorKind};
pub use streamed::StoreError;

/// Longest object name kept readable; longer ones are cut and suffixed with a hash.
const MAX_NAME: usize = 200;

/// The object [`Storage::probe`] writes, beside the records. No record is named so:
/// [`object_name`] never starts a name with a dot.
pub const PROBE_NAME: &str = ".cxone-worker-probe";

enum Target {
    /// A `file://` directory. Made at start if it can be, else at the first write
    /// that can: a directory that cannot be made yet (a mount not there) is a
    /// refusal the worker pauses on, not a start that fails.
    Local {
        dir: PathBuf,
        store: Mutex<Option<Arc<dyn ObjectStore>>>,
    },
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
    /// The endpoint, parsed: records' URIs are this plus their name.
    endpoint: url::Url,
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
    /// The job's file reference as outputs show it.
    pub file: Option<&'a str>,
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
    file: Option<&'a str>,
}

#[derive(Serialize)]
struct Tail<'a> {
    metadata: Option<&'a Map<String, Value>>,
    synced_at: String,
}

impl Storage {
    /// Prepares the endpoint: a local directory is made if it can be, no network is
    /// touched. Object stores are configured from the process environment
    /// (`AWS_*`, `AZURE_*`, …).
    pub fn new(settings: &StorageSettings) -> Result<Self, ConfigError> {
        Self::with_cloud_env(settings, &CloudEnv::from_process())
    }

    /// As [`Storage::new`], object stores configured from `env` instead.
    pub fn with_cloud_env(settings: &StorageSettings, env: &CloudEnv) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError {
            var: "EXTERNAL_STORAGE_ENDPOINT",
            message,
        };
        let url = url::Url::parse(&settings.endpoint).map_err(|e| bad(e.to_string()))?;
        let target = match url.scheme() {
            "file" => {
                let dir = url
                    .to_file_path()
                    .map_err(|()| bad(format!("{url} is not a local path")))?;
                // Made now when it can be; when not, the first write (or probe)
                // tries again and says why it cannot.
                let store = std::fs::create_dir_all(&dir)
                    .ok()
                    .and_then(|()| LocalFileSystem::new_with_prefix(&dir).ok())
                    .map(|s| Arc::new(s) as Arc<dyn ObjectStore>);
                Target::Local {
                    dir,
                    store: Mutex::new(store),
                }
            }
            "http" | "https" => {
                let mut client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .timeout(Duration::from_secs(120))
                    .redirect(reqwest::redirect::Policy::none());
                if let Some(pem) = &settings.ca_pem {
                    let certs =
                        reqwest::Certificate::from_pem_bundle(pem).map_err(|e| ConfigError {
                            var: "EXTERNAL_STORAGE_CA_FILE",
                            message: e.to_string(),
                        })?;
                    client = client.tls_certs_merge(certs);
                }
                Target::Http {
                    client: client
                        .build()
                        .map_err(|e| bad(format!("cannot build the https client: {e}")))?,
                    base: url.clone(),
                    token: settings.token.clone(),
                }
            }
            scheme => {
                // s3://bucket/prefix, az://container/prefix, gs://bucket/prefix.
                let cloud = Cloud::from_scheme(scheme)
                    .ok_or_else(|| bad(format!("{scheme}:// is not supported")))?;
                let bucket = url.host_str().unwrap_or_default();
                let store = stores::build(cloud, bucket, env)
                    .map_err(|e| bad(crate::telemetry::chain(&e)))?;
                let prefix =
                    ObjectPath::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
                // Taken as it is (decoded, never escaped): the URI of a record is the
                // endpoint's URL and its name.
                Target::Objects { store, prefix }
            }
        };
        Ok(Self {
            target,
            endpoint: url,
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

    /// Where the record of `job_id` lands: the URI of exactly the object that
    /// [`Storage::write`] writes. Never the userinfo or query of an http(s) endpoint.
    pub fn uri(&self, job_id: &str) -> String {
        self.uri_of(&format!("{}.json", object_name(job_id)))
    }

    fn uri_of(&self, name: &str) -> String {
        let url = self.endpoint.join_segment(name);
        match &self.target {
            Target::Http { .. } => crate::source::shown_url(&url),
            Target::Local { .. } | Target::Objects { .. } => url.to_string(),
        }
    }

    /// Writes the record (and the raw sibling for `STORAGE_PAYLOAD=raw`), retrying
    /// briefly what may pass; a write that still fails says, by its
    /// [`StorageError::kind`], whether to pause the worker or retry the job.
    pub async fn write(&self, record: &Record<'_>) -> Result<(), StorageError> {
        let name = object_name(record.job_id);
        if let (StoragePayload::Raw, Some(raw)) = (self.payload, &record.raw) {
            self.put_retrying(&format!("{name}.bin"), vec![raw.clone()])
                .await?;
        }
        let chunks = self.record_chunks(record);
        self.put_retrying(&format!("{name}.json"), chunks).await
    }

    /// Whether storage takes a write now: the worker asks while it is paused on a
    /// storage failure, and resumes when this succeeds. One attempt, no retries.
    ///
    /// It overwrites [`PROBE_NAME`] beside the records, rather than writing and
    /// deleting a fresh object: a write is what the records need, so read-only file
    /// systems, refused credentials and missing buckets all show, while a delete
    /// would need a permission (s3:DeleteObject) the worker has no other use for, and
    /// a probe that failed between the two would leave objects behind. One small
    /// object stays, overwritten each time.
    pub async fn probe(&self) -> Result<(), StorageError> {
        let body = format!(
            r#"{{"probe":"cxone-worker","at":"{}"}}"#,
            crate::text::rfc3339(crate::text::now())
        );
        self.put(PROBE_NAME, vec![Bytes::from(body)]).await
    }

    fn record_chunks(&self, r: &Record<'_>) -> Vec<Bytes> {
        let (head, tail) = self.frame(r);
        if self.payload == StoragePayload::Base64 {
            vec![Bytes::from(head), r.base64.clone(), Bytes::from(tail)]
        } else {
            vec![Bytes::from(head), Bytes::from(tail)]
        }
    }

    /// The record's JSON before and after the base64 of `encoded_data` (with
    /// `STORAGE_PAYLOAD=base64`), or its two halves that join into the whole record.
    fn frame(&self, r: &Record<'_>) -> (Vec<u8>, Vec<u8>) {
        let head = Head {
            request_id: r.request_id,
            job_id: r.job_id,
            execution_id: r.execution_id,
            data_action_id: r.data_action_id,
            content_type: r.content_type,
            sha256: r.sha256,
            original_size: r.original_size,
            file: r.file,
        };
        let tail = Tail {
            metadata: r.metadata,
            synced_at: crate::text::rfc3339(crate::text::now()),
        };
        // Serializing plain structs into a Vec cannot fail.
        let mut head = serde_json::to_vec(&head).expect("record head");
        head.pop(); // the closing brace: more fields follow
        let mut tail_json = serde_json::to_vec(&tail).expect("record tail");
        tail_json[0] = b','; // the opening brace: these fields continue the object
        if self.payload == StoragePayload::Base64 {
            head.extend_from_slice(br#","encoded_data":""#);
            tail_json.insert(0, b'"');
        }
        (head, tail_json)
    }

    async fn put_retrying(&self, name: &str, chunks: Vec<Bytes>) -> Result<(), StorageError> {
        let put = || self.put(name, chunks.clone());
        let result = put
            .retry(self.backoff)
            .sleep(tokio::time::sleep)
            // A refusal will not pass in a second: say so at once.
            .when(|e| e.kind() != StorageErrorKind::Refused)
            .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "storage write failed"))
            .await;
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(names::STORAGE_WRITES, "result" => label).increment(1);
        result
    }

    async fn put(&self, name: &str, chunks: Vec<Bytes>) -> Result<(), StorageError> {
        let fail = |cause| StorageError::new(name, cause);
        let (store, path) = match &self.target {
            Target::Local { dir, store } => (
                local_store(dir, store).await.map_err(fail)?,
                ObjectPath::from(name),
            ),
            Target::Objects { store, prefix } => (store.clone(), prefix.clone().join(name)),
            Target::Http {
                client,
                base,
                token,
            } => {
                return put_http(client, &base.join_segment(name), token.as_ref(), chunks)
                    .await
                    .map_err(fail);
            }
        };
        let payload: PutPayload = chunks.into_iter().collect();
        store
            .put(&path, payload)
            .await
            .map(|_| ())
            .map_err(|e| fail(Cause::Store(e)))
    }
}

/// The store of a `file://` directory, made (with the directory) at the first write
/// that finds it missing; a failure is kept for no one, so the next write tries again.
async fn local_store(
    dir: &std::path::Path,
    cell: &Mutex<Option<Arc<dyn ObjectStore>>>,
) -> Result<Arc<dyn ObjectStore>, Cause> {
    // A poisoned lock only means a writer panicked: the cell itself is whole.
    if let Some(store) = cell.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        return Ok(store);
    }
    tokio::fs::create_dir_all(dir).await.map_err(|e| {
        // Something that is not a directory stands where the directory should be.
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            let message = format!("{} exists and is not a directory", dir.display());
            Cause::Io(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                message,
            ))
        } else {
            Cause::Io(e)
        }
    })?;
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(Cause::Store)?);
    *cell.lock().unwrap_or_else(|p| p.into_inner()) = Some(store.clone());
    Ok(store)
}

async fn put_http(
    client: &reqwest::Client,
    url: &url::Url,
    token: Option<&Secret<String>>,
    chunks: Vec<Bytes>,
) -> Result<(), Cause> {
    let length: usize = chunks.iter().map(Bytes::len).sum();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::io::Error>),
    ));
    let name = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("");
    let mut request = client
        .put(url.clone())
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
        .map_err(|e| Cause::Transport(e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(Cause::Status(status))
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
        // `=_` never comes out of the escaping above (`=` is always followed by two
        // hex digits), so a shortened name cannot equal the escaped name of another
        // id; and `_`, unlike the `~` once used, is a character no object store
        // escapes, so the name written is the name in the record's URI.
        let hash = crate::encode::sha256_hex(job_id.as_bytes());
        out.truncate(MAX_NAME - 34);
        out.push_str("=_");
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
        assert!(name.contains("=_"), "{name}");
        // No id short enough to be kept whole can be named with the `=_` marker.
        assert_eq!(object_name("a=_b"), "a=3D_b");
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
            file: None,
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
            "file",
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

    #[test]
    fn object_names_are_left_alone_by_every_store() {
        // What `write` writes is what `uri` says only if no layer escapes a
        // character of the name: object_store's keys, url's path segments.
        let names = [
            object_name(&"x/".repeat(200)),
            object_name("inv~2026/ä?#%*[]{}"),
            object_name(&"~".repeat(300)),
        ];
        for name in names {
            assert_eq!(ObjectPath::from(name.as_str()).as_ref(), name);
            let url = url::Url::parse("s3://b/p").unwrap().join_segment(&name);
            assert_eq!(url.path(), format!("/p/{name}"));
        }
    }

    #[test]
    fn record_uris_are_the_endpoint_and_the_name() {
        let at = |endpoint: &str| {
            let settings = StorageSettings {
                endpoint: endpoint.to_owned(),
                token: None,
                ca_pem: None,
                payload: StoragePayload::None,
            };
            let env = CloudEnv::from_pairs([("AWS_REGION", "us-east-1")]);
            let storage = Storage::with_cloud_env(&settings, &env).unwrap();
            let Target::Objects { prefix, .. } = &storage.target else {
                panic!("an object store");
            };
            (storage.uri("j"), prefix.as_ref().to_owned())
        };
        // The prefix is the URL's path decoded, never escaped again: the URI's
        // path decoded is the key.
        for (endpoint, key) in [
            ("s3://b/records/2026", "records/2026"),
            ("s3://b", ""),
            ("s3://b/a~b", "a~b"),
            ("s3://b/100%25/x%23y", "100%/x#y"),
        ] {
            let (uri, prefix) = at(endpoint);
            assert_eq!(uri, format!("{endpoint}/j.json"));
            assert_eq!(prefix, key, "{endpoint}");
        }
    }

    #[tokio::test]
    async fn the_uri_of_a_shortened_name_is_the_file_written() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StorageSettings {
            endpoint: format!("file://{}/deep/records", dir.path().display()),
            token: None,
            ca_pem: None,
            payload: StoragePayload::None,
        };
        let storage = Storage::new(&settings).unwrap();
        let mut r = record(b"");
        let id = "~".repeat(100);
        r.job_id = &id;
        storage.write(&r).await.unwrap();
        let uri = url::Url::parse(&storage.uri(&id)).unwrap();
        let path = uri.to_file_path().unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["job_id"], id.as_str());
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
