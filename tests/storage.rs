//! The external storage record in S3 (moto), Azure Blob (Azurite) and behind an HTTP
//! PUT endpoint: written by `Storage` directly, then end to end through RabbitMQ with the
//! job's file in the same kind of place.

#[path = "support/cleanup.rs"]
mod cleanup;
#[path = "support/file_server.rs"]
mod file_server;
#[path = "support/worker.rs"]
mod harness;
#[path = "support/servers.rs"]
mod servers;

// What a failed write means, the probe, and records' URIs, beside this file.
#[path = "storage/faults.rs"]
mod faults;
#[path = "storage/uris.rs"]
mod uris;

use std::sync::Arc;
use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use bytes::Bytes;
use cxone_worker::config::{StoragePayload, StorageSettings};
use cxone_worker::source::CloudEnv;
use cxone_worker::storage::{Record, Storage};
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{Value, json};

use file_server::FileServer;
use servers::External;

const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n";

fn s3_store(server: &External, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(server.url())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(servers::AWS_KEY)
            .with_secret_access_key(servers::AWS_KEY)
            .with_bucket_name(bucket)
            .build()
            .expect("S3 store"),
    )
}

fn azure_store(server: &External, container: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        MicrosoftAzureBuilder::new()
            .with_account(servers::AZURE_ACCOUNT)
            .with_access_key(servers::AZURE_KEY)
            .with_endpoint(format!("{}/{}", server.url(), servers::AZURE_ACCOUNT))
            .with_allow_http(true)
            .with_container_name(container)
            .build()
            .expect("Azure store"),
    )
}

async fn get(store: &Arc<dyn ObjectStore>, path: &str) -> Bytes {
    let path = ObjectPath::from(path);
    store
        .get(&path)
        .await
        .expect("object exists")
        .bytes()
        .await
        .expect("object body")
}

async fn json_at(store: &Arc<dyn ObjectStore>, path: &str) -> Value {
    serde_json::from_slice(&get(store, path).await).expect("record JSON")
}

async fn names(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    let prefix = ObjectPath::from(prefix);
    let mut names: Vec<String> = store
        .list(Some(&prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    names.sort();
    names
}

fn record() -> Record<'static> {
    Record {
        request_id: "key-1",
        job_id: "job/1",
        execution_id: Some("exec-1"),
        data_action_id: "act",
        content_type: "application/pdf",
        sha256: "ab",
        original_size: PDF.len() as u64,
        metadata: None,
        file: None,
        base64: Bytes::from(BASE64_STANDARD.encode(PDF)),
        raw: Some(Bytes::from_static(PDF)),
    }
}

fn storage(
    endpoint: String,
    payload: StoragePayload,
    token: Option<&str>,
    env: Vec<(String, String)>,
) -> Storage {
    let settings = StorageSettings {
        endpoint,
        token: token.map(|t| cxone_worker::config::Secret::new(t.to_owned())),
        ca_pem: None,
        payload,
    };
    Storage::with_cloud_env(&settings, &CloudEnv::from_pairs(env)).expect("storage")
}

/// Writes twice (a retry overwrites) and checks what landed under `prefix`.
async fn check_written(
    store: Arc<dyn ObjectStore>,
    storage: Storage,
    scheme_bucket: &str,
    prefix: &str,
) {
    storage.write(&record()).await.expect("written");
    storage.write(&record()).await.expect("written again");
    assert_eq!(
        storage.uri("job/1"),
        format!("{scheme_bucket}/{prefix}/job=2F1.json")
    );
    let landed = names(&store, prefix).await;
    assert_eq!(
        landed,
        [
            format!("{prefix}/job=2F1.bin"),
            format!("{prefix}/job=2F1.json")
        ]
    );
    let v = json_at(&store, &format!("{prefix}/job=2F1.json")).await;
    assert_eq!(
        (v["job_id"].as_str(), v["execution_id"].as_str()),
        (Some("job/1"), Some("exec-1"))
    );
    assert!(v.get("encoded_data").is_none(), "raw: no encoded_data");
    assert_eq!(get(&store, &format!("{prefix}/job=2F1.bin")).await, PDF);
}

#[tokio::test]
async fn records_land_in_s3() {
    let moto = servers::moto();
    servers::create_bucket(moto, "records-direct").await;
    let store = s3_store(moto, "records-direct");
    let raw = storage(
        "s3://records-direct/raw/x".into(),
        StoragePayload::Raw,
        None,
        servers::s3_env(moto),
    );
    check_written(store.clone(), raw, "s3://records-direct", "raw/x").await;
    let base64 = storage(
        "s3://records-direct/b64".into(),
        StoragePayload::Base64,
        None,
        servers::s3_env(moto),
    );
    base64.write(&record()).await.expect("written");
    let v = json_at(&store, "b64/job=2F1.json").await;
    assert_eq!(
        BASE64_STANDARD
            .decode(v["encoded_data"].as_str().unwrap())
            .unwrap(),
        PDF
    );
}

#[tokio::test]
async fn records_land_in_azure_blob() {
    let azurite = servers::azurite();
    servers::create_container(azurite, "records-direct").await;
    let store = azure_store(azurite, "records-direct");
    let raw = storage(
        "az://records-direct/raw".into(),
        StoragePayload::Raw,
        None,
        servers::azure_env(azurite),
    );
    check_written(store.clone(), raw, "az://records-direct", "raw").await;
    let none = storage(
        "az://records-direct/none".into(),
        StoragePayload::None,
        None,
        servers::azure_env(azurite),
    );
    none.write(&record()).await.expect("written");
    assert_eq!(names(&store, "none").await, ["none/job=2F1.json"]);
}

#[tokio::test]
async fn records_are_put_over_http_with_the_token() {
    let server = FileServer::start().await;
    let base = format!("http://127.0.0.1:{}/put/records/", server.http.port());
    let s = storage(base, StoragePayload::Raw, Some("t0ken"), vec![]);
    s.write(&record()).await.expect("written");
    let puts = server.puts();
    let paths: Vec<&str> = puts.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["records/job=2F1.bin", "records/job=2F1.json"]);
    assert!(
        puts.iter()
            .all(|p| p.authorization.as_deref() == Some("Bearer t0ken"))
    );
    assert_eq!(puts[0].body, PDF);
    assert_eq!(puts[1].content_type.as_deref(), Some("application/json"));
    let v: Value = serde_json::from_slice(&puts[1].body).expect("record JSON");
    assert_eq!(v["request_id"], "key-1");
}

#[tokio::test]
async fn records_are_put_over_https_trusting_the_configured_ca() {
    let server = FileServer::start().await;
    let base = server.https_url("/put/records/");
    let untrusted = storage(base.clone(), StoragePayload::None, None, vec![]);
    let err = untrusted
        .write(&record())
        .await
        .expect_err("a private CA is not trusted by default");
    assert!(server.puts().is_empty(), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let ca = std::fs::read(server.write_ca(dir.path())).unwrap();
    let settings = StorageSettings {
        endpoint: base,
        token: None,
        ca_pem: Some(ca),
        payload: StoragePayload::None,
    };
    let trusted = Storage::with_cloud_env(
        &settings,
        &CloudEnv::from_pairs(Vec::<(String, String)>::new()),
    )
    .unwrap();
    trusted.write(&record()).await.expect("written over https");
    let puts = server.puts();
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].path, "records/job=2F1.json");
}

#[test]
fn record_uris_hold_no_endpoint_secrets() {
    let endpoint = "https://user:pa55@files.example.com/put?sig=s3cr3t".to_owned();
    let s = storage(endpoint, StoragePayload::Base64, Some("t"), vec![]);
    assert_eq!(s.uri("j"), "https://files.example.com/put/j.json?…");
}

#[tokio::test]
async fn failed_writes_are_errors_not_panics() {
    let server = FileServer::start().await;
    let failing = format!("http://127.0.0.1:{}/fail/500/records", server.http.port());
    let s = storage(failing, StoragePayload::Base64, None, vec![]);
    let e = s.write(&record()).await.expect_err("500 is a failure");
    assert!(e.to_string().contains("500"), "{e}");
    let s = storage(
        "s3://no-such-bucket/x".into(),
        StoragePayload::Base64,
        None,
        servers::s3_env(servers::moto()),
    );
    s.write(&record())
        .await
        .expect_err("a missing bucket is a failure");
}

// ---------------------------------------------------------------- through RabbitMQ

fn job(id: &str, file: &str) -> Value {
    json!({"job_id": id, "file": file, "content_type": "application/pdf", "metadata": {"source": "e2e"}})
}

/// Runs the worker with `env`, sends one job for `file`, and returns its result.
async fn succeeds(env: Vec<(String, String)>, id: &str, file: &str) -> Value {
    let mut run = harness::Worker::started(&env).await;
    run.publish(&job(id, file)).await;
    let results = run.results(1, Duration::from_secs(20)).await;
    let r = harness::result_of(&results, id);
    assert_eq!(r.routing_key, "job.succeeded", "{:?}", r.body);
    assert_eq!(r.body["original_size"], PDF.len());
    r.body.clone()
}

#[tokio::test]
async fn a_job_from_s3_succeeds_and_its_record_lands_in_s3() {
    let moto = servers::moto();
    for bucket in ["e2e-files", "e2e-records"] {
        servers::create_bucket(moto, bucket).await;
    }
    s3_store(moto, "e2e-files")
        .put(&ObjectPath::from("in/a.pdf"), PDF.into())
        .await
        .expect("put");
    let mut env = servers::s3_env(moto);
    env.push((
        "EXTERNAL_STORAGE_ENDPOINT".into(),
        "s3://e2e-records/synced".into(),
    ));
    let result = succeeds(env, "e2e-s3", "s3://e2e-files/in/a.pdf").await;
    assert_eq!(result["storage_uri"], "s3://e2e-records/synced/e2e-s3.json");
    let v = json_at(&s3_store(moto, "e2e-records"), "synced/e2e-s3.json").await;
    assert_eq!(
        BASE64_STANDARD
            .decode(v["encoded_data"].as_str().unwrap())
            .unwrap(),
        PDF
    );
    assert_eq!(v["metadata"]["source"], "e2e");
}

#[tokio::test]
async fn a_job_from_azure_succeeds_and_its_record_lands_in_azure() {
    let azurite = servers::azurite();
    for container in ["e2e-files", "e2e-records"] {
        servers::create_container(azurite, container).await;
    }
    azure_store(azurite, "e2e-files")
        .put(&ObjectPath::from("a.pdf"), PDF.into())
        .await
        .expect("put");
    // The emulator switch, as a developer sets it against Azurite.
    let env = vec![
        ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
        ("AZURITE_BLOB_STORAGE_URL".into(), azurite.url()),
        (
            "EXTERNAL_STORAGE_ENDPOINT".into(),
            "az://e2e-records/synced".into(),
        ),
        ("STORAGE_PAYLOAD".into(), "raw".into()),
    ];
    let result = succeeds(env, "e2e-az", "az://e2e-files/a.pdf").await;
    assert_eq!(result["storage_uri"], "az://e2e-records/synced/e2e-az.json");
    let store = azure_store(azurite, "e2e-records");
    let v = json_at(&store, "synced/e2e-az.json").await;
    assert_eq!(v["job_id"], "e2e-az");
    assert!(v.get("encoded_data").is_none());
    assert_eq!(get(&store, "synced/e2e-az.bin").await, PDF);
}

#[tokio::test]
async fn a_job_over_https_succeeds_and_its_record_is_put_with_the_token() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    server.put_file("a.pdf", PDF);
    let base = format!("http://127.0.0.1:{}/put/records", server.http.port());
    let env = vec![
        ("FILE_HTTP_ALLOWED_HOSTS".into(), "127.0.0.1:*".into()),
        (
            "FILE_HTTP_CA_FILE".into(),
            server.write_ca(dir.path()).display().to_string(),
        ),
        ("EXTERNAL_STORAGE_ENDPOINT".into(), base.clone()),
        ("EXTERNAL_STORAGE_TOKEN".into(), "e2e-t0ken".into()),
    ];
    let result = succeeds(env, "e2e-https", &server.https_url("/files/a.pdf")).await;
    assert_eq!(result["storage_uri"], format!("{base}/e2e-https.json"));
    let puts = server.puts();
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(puts[0].path, "records/e2e-https.json");
    assert_eq!(puts[0].authorization.as_deref(), Some("Bearer e2e-t0ken"));
    let v: Value = serde_json::from_slice(&puts[0].body).expect("record JSON");
    assert_eq!(
        BASE64_STANDARD
            .decode(v["encoded_data"].as_str().unwrap())
            .unwrap(),
        PDF
    );
}

#[tokio::test]
async fn a_record_only_retry_that_cannot_fetch_the_file_again_ends_without_a_second_execution() {
    // The file is served once; the storage endpoint always refuses the record (400:
    // the record's fault, a retry, not a pause). The retries that only have the
    // record left to write cannot even read the file again: they count as storage
    // failures and end, instead of looping for ever.
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    server.put_file("once.pdf", PDF);
    let env = vec![
        ("FILE_HTTP_ALLOWED_HOSTS".into(), "127.0.0.1:*".into()),
        (
            "FILE_HTTP_CA_FILE".into(),
            server.write_ca(dir.path()).display().to_string(),
        ),
        (
            "EXTERNAL_STORAGE_ENDPOINT".into(),
            format!("http://127.0.0.1:{}/fail/400/records", server.http.port()),
        ),
        ("MAX_ATTEMPTS".into(), "3".into()),
    ];
    let mut run = harness::Worker::started(&env).await;
    run.publish(&job("e2e-once", &server.https_url("/once/once.pdf")))
        .await;
    let results = run.results(1, Duration::from_secs(20)).await;
    let r = harness::result_of(&results, "e2e-once");
    assert_eq!(r.routing_key, "job.failed", "{:?}", r.body);
    assert_eq!(r.body["error_kind"], "exhausted", "{:?}", r.body);
    assert_eq!(r.body["attempts"], 1, "executed once: {:?}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("the action already ran")),
        "{:?}",
        r.body
    );
}
