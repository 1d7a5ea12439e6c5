//! `s3://` and `az://` sources against moto and Azurite.

use super::*;

pub(super) async fn s3_put(endpoint: &External, bucket: &str, key: &str, body: impl Into<Bytes>) {
    servers::create_bucket(endpoint, bucket).await;
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint.url())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(servers::AWS_KEY)
        .with_secret_access_key(servers::AWS_KEY)
        .with_bucket_name(bucket)
        .build()
        .expect("S3 store");
    store
        .put(&ObjectPath::from(key), body.into().into())
        .await
        .expect("put");
}

pub(super) async fn azure_put(
    endpoint: &External,
    container: &str,
    name: &str,
    body: impl Into<Bytes>,
) {
    servers::create_container(endpoint, container).await;
    let store = MicrosoftAzureBuilder::new()
        .with_account(servers::AZURE_ACCOUNT)
        .with_access_key(servers::AZURE_KEY)
        .with_endpoint(format!("{}/{}", endpoint.url(), servers::AZURE_ACCOUNT))
        .with_allow_http(true)
        .with_container_name(container)
        .build()
        .expect("Azure store");
    store
        .put(&ObjectPath::from(name), body.into().into())
        .await
        .expect("put");
}

/// The cloud variables with the endpoint replaced by `endpoint`.
fn pointed_at(mut env: Vec<(String, String)>, endpoint: String) -> Vec<(String, String)> {
    for (k, v) in &mut env {
        if k == "AWS_ENDPOINT_URL" || k == "AZURE_STORAGE_ENDPOINT" {
            *v = endpoint.clone();
        }
    }
    env
}

#[tokio::test]
async fn s3_objects_are_read_and_refused_as_the_contract_says() {
    let moto = servers::moto();
    s3_put(moto, "src-read", "in/a.pdf", PDF).await;
    s3_put(moto, "src-read", "in/empty.pdf", Bytes::new()).await;
    let s = sources(&[], servers::s3_env(moto));
    let opened = s.open("s3://src-read/in/a.pdf").await.expect("opened");
    assert_eq!(opened.size(), PDF.len() as u64);
    assert_eq!(opened.read(100_000).await.expect("read"), PDF);
    assert_kind(
        read(&s, "s3://src-read/in/missing.pdf").await,
        ErrorKind::FileNotFound,
    );
    assert_kind(
        read(&s, "s3://no-such-bucket/a.pdf").await,
        ErrorKind::FileNotFound,
    );
    assert_kind(
        read(&s, "s3://src-read/in/empty.pdf").await,
        ErrorKind::EmptyFile,
    );
    let locked = sources(&[], servers::s3_env(servers::moto_locked()));
    assert_kind(
        read(&locked, "s3://src-read/in/a.pdf").await,
        ErrorKind::FileAccessDenied,
    );
}

#[tokio::test]
async fn azure_blobs_are_read_and_refused_as_the_contract_says() {
    let azurite = servers::azurite();
    azure_put(azurite, "src-read", "in/a.pdf", PDF).await;
    let s = sources(&[], servers::azure_env(azurite));
    let opened = s.open("az://src-read/in/a.pdf").await.expect("opened");
    assert_eq!(opened.size(), PDF.len() as u64);
    assert_eq!(opened.read(100_000).await.expect("read"), PDF);
    assert_kind(
        read(&s, "az://src-read/in/missing.pdf").await,
        ErrorKind::FileNotFound,
    );
    assert_kind(
        read(&s, "az://no-such-container/a.pdf").await,
        ErrorKind::FileNotFound,
    );
    let mut wrong_key = servers::azure_env(azurite);
    wrong_key[1].1 = base64_of("not the account key");
    let s = sources(&[], wrong_key);
    assert_kind(
        read(&s, "az://src-read/in/a.pdf").await,
        ErrorKind::FileAccessDenied,
    );
}

fn base64_of(text: &str) -> String {
    use base64::prelude::{BASE64_STANDARD, Engine as _};
    BASE64_STANDARD.encode(text)
}

/// Oversize objects are refused from their metadata; objects that grew after `open`
/// are cut by the ranged GET: either way the server sends a few KiB, not the object.
async fn oversize_objects_cost_little(server: &External, env: Vec<(String, String)>, scheme: &str) {
    let proxy = CountingProxy::start(server.port).await;
    let s = sources(&[], pointed_at(env, proxy.url() + &endpoint_path(scheme)));
    let reference = |name: &str| format!("{scheme}://oversize/{name}");
    // Refused from the metadata: a HEAD, no GET.
    assert_kind(read(&s, &reference("big.pdf")).await, ErrorKind::TooLarge);
    let sent = proxy.settled().await;
    assert!(
        sent < 16 * 1024,
        "{sent} bytes sent for a refused object of 2 MiB"
    );
    // Grown after `open`: the GET asks for the limit + 1 bytes, no more.
    let grows = s
        .open(&reference("grows.pdf"))
        .await
        .expect("small at open");
    let big = Bytes::from(vec![b'x'; 2 * MIB as usize]);
    match scheme {
        "s3" => s3_put(server, "oversize", "grows.pdf", big).await,
        _ => azure_put(server, "oversize", "grows.pdf", big).await,
    }
    let before = proxy.settled().await;
    assert_kind(grows.read(100_000).await, ErrorKind::TooLarge);
    let sent = proxy.settled().await - before;
    assert!(
        sent < 100_001 + 16 * 1024,
        "{sent} bytes sent for an object grown to 2 MiB"
    );
}

fn endpoint_path(scheme: &str) -> String {
    if scheme == "az" {
        format!("/{}", servers::AZURE_ACCOUNT)
    } else {
        String::new()
    }
}

#[tokio::test]
async fn oversize_s3_objects_are_refused_without_downloading_them() {
    let moto = servers::moto();
    s3_put(moto, "oversize", "big.pdf", vec![b'x'; 2 * MIB as usize]).await;
    s3_put(moto, "oversize", "grows.pdf", PDF).await;
    oversize_objects_cost_little(moto, servers::s3_env(moto), "s3").await;
}

#[tokio::test]
async fn oversize_azure_blobs_are_refused_without_downloading_them() {
    let azurite = servers::azurite();
    azure_put(azurite, "oversize", "big.pdf", vec![b'x'; 2 * MIB as usize]).await;
    azure_put(azurite, "oversize", "grows.pdf", PDF).await;
    oversize_objects_cost_little(azurite, servers::azure_env(azurite), "az").await;
}

#[tokio::test]
async fn buckets_outside_the_allowlist_are_refused_before_any_request() {
    let moto = servers::moto();
    let proxy = CountingProxy::start(moto.port).await;
    s3_put(moto, "allowed", "a.pdf", PDF).await;
    s3_put(moto, "other", "a.pdf", PDF).await;
    let s = sources(
        &["--file-buckets=allowed,src-read"],
        pointed_at(servers::s3_env(moto), proxy.url()),
    );
    assert_kind(
        read(&s, "s3://other/a.pdf").await,
        ErrorKind::FileAccessDenied,
    );
    assert_kind(
        read(&s, "az://other/a.pdf").await,
        ErrorKind::FileAccessDenied,
    );
    assert_eq!(proxy.connections(), 0, "no request was made");
    assert_eq!(read(&s, "s3://allowed/a.pdf").await.expect("read"), PDF);
}

#[tokio::test]
async fn object_store_outages_are_retryable() {
    let server = FileServer::start().await;
    let port = server.http.port();
    for endpoint in [
        format!("http://127.0.0.1:{port}/fail/503"),
        format!("http://127.0.0.1:{port}/stall"),
        format!("http://127.0.0.1:{}", servers::free_port()),
    ] {
        let mut s3_env = servers::s3_env_at(&endpoint);
        let mut az_env = servers::azure_env_at(&endpoint);
        s3_env.push(("AWS_TIMEOUT".into(), "1s".into()));
        az_env.push(("AZURE_TIMEOUT".into(), "1s".into()));
        let started = Instant::now();
        assert_retryable(read(&sources(&[], s3_env), "s3://b/a.pdf").await);
        assert_retryable(read(&sources(&[], az_env), "az://c/a.pdf").await);
        assert!(started.elapsed() < Duration::from_secs(20), "{endpoint}");
    }
}
