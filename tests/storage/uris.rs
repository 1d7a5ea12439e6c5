//! `storage_uri` names exactly the object written, in every store: each record is
//! read back at the URI `Storage::uri` gives, taken literally.

use super::*;

/// Ids kept whole, and ids whose escaped name is shortened (over 200 characters),
/// with characters that object stores would escape.
fn ids() -> Vec<String> {
    vec![
        "job/1".into(),
        "inv/".repeat(60),
        "~".repeat(120),
        format!("{}#?%*", "ä".repeat(40)),
    ]
}

fn record_of(id: &str) -> Record<'_> {
    Record {
        job_id: id,
        ..record()
    }
}

/// `%XX` sequences decoded: a URI's path as the key it names.
fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8 key")
}

/// The object at an `s3://` or `az://` URI, its key taken as the URI says.
async fn object_at(uri: &str, store_of: impl Fn(&str) -> Arc<dyn ObjectStore>) -> Value {
    let url = url::Url::parse(uri).expect("a URI");
    let store = store_of(url.host_str().expect("a bucket"));
    let key = percent_decoded(url.path().trim_start_matches('/'));
    let path = ObjectPath::parse(&key).expect("a key");
    let bytes = store
        .get(&path)
        .await
        .unwrap_or_else(|e| panic!("no object at {uri}: {e}"))
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&bytes).expect("record JSON")
}

#[tokio::test]
async fn uris_name_the_objects_written_in_s3_and_azure() {
    let (moto, azurite) = (servers::moto(), servers::azurite());
    servers::create_bucket(moto, "uris").await;
    servers::create_container(azurite, "uris").await;
    let s3 = storage(
        "s3://uris/records".into(),
        StoragePayload::None,
        None,
        servers::s3_env(moto),
    );
    let az = storage(
        "az://uris/records".into(),
        StoragePayload::None,
        None,
        servers::azure_env(azurite),
    );
    for id in ids() {
        s3.write(&record_of(&id)).await.expect("written");
        let v = object_at(&s3.uri(&id), |b| s3_store(moto, b)).await;
        assert_eq!(v["job_id"], id.as_str());
        az.write(&record_of(&id)).await.expect("written");
        let v = object_at(&az.uri(&id), |c| azure_store(azurite, c)).await;
        assert_eq!(v["job_id"], id.as_str());
    }
}

#[tokio::test]
async fn uris_name_the_files_and_urls_written() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("file://{}/my%20records", dir.path().display());
    let file = storage(endpoint, StoragePayload::None, None, vec![]);
    let server = FileServer::start().await;
    let base = format!(
        "http://127.0.0.1:{}/put/records?sig=s3cr3t",
        server.http.port()
    );
    let http = storage(base, StoragePayload::None, None, vec![]);
    for id in ids() {
        file.write(&record_of(&id)).await.expect("written");
        let path = url::Url::parse(&file.uri(&id))
            .unwrap()
            .to_file_path()
            .unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["job_id"], id.as_str(), "{}", path.display());

        http.write(&record_of(&id)).await.expect("written");
        let uri = http.uri(&id);
        assert!(!uri.contains("s3cr3t"), "{uri}");
        // The URI shows `?…` for the query; the object is at its path.
        let at = uri.trim_end_matches("?…");
        let got = reqwest::get(at).await.unwrap();
        assert!(got.status().is_success(), "{at}: {}", got.status());
        let v: Value = got.json().await.unwrap();
        assert_eq!(v["job_id"], id.as_str());
    }
}
