//! `https://` and `http://` sources against the local file server.

use super::*;

/// An https source trusting the test CA, with `hosts` allowed.
fn https_sources(server: &FileServer, dir: &tempfile::TempDir, extra: &[&str]) -> Sources {
    let ca = format!(
        "--file-http-ca-file={}",
        server.write_ca(dir.path()).display()
    );
    let mut args = vec![ca.as_str()];
    args.extend_from_slice(extra);
    sources(&args, vec![])
}

#[tokio::test]
async fn https_files_are_read_through_a_private_ca() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    server.put_file("a.pdf", PDF);
    let s = https_sources(&server, &dir, &["--file-http-allowed-hosts=127.0.0.1:*"]);
    let opened = s
        .open(&server.https_url("/files/a.pdf"))
        .await
        .expect("opened");
    assert_eq!(opened.size(), PDF.len() as u64);
    assert_eq!(opened.read(100_000).await.expect("read"), PDF);
    // Without the CA the certificate is not trusted, and nothing is read.
    let untrusted = sources(&["--file-http-allowed-hosts=127.0.0.1:*"], vec![]);
    assert_retryable(read(&untrusted, &server.https_url("/files/a.pdf")).await);
}

#[tokio::test]
async fn answers_end_as_the_contract_says() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    let s = https_sources(&server, &dir, &["--file-http-allowed-hosts=127.0.0.1:*"]);
    assert_kind(
        read(&s, &server.https_url("/files/missing.pdf")).await,
        ErrorKind::FileNotFound,
    );
    assert_kind(
        read(&s, &server.https_url("/status/410")).await,
        ErrorKind::FileNotFound,
    );
    assert_kind(
        read(&s, &server.https_url("/status/401")).await,
        ErrorKind::FileAccessDenied,
    );
    assert_kind(
        read(&s, &server.https_url("/status/403")).await,
        ErrorKind::FileAccessDenied,
    );
    assert_kind(
        read(&s, &server.https_url("/big/0")).await,
        ErrorKind::EmptyFile,
    );
    assert_retryable(read(&s, &server.https_url("/status/503")).await);
    assert_retryable(read(&s, &server.https_url("/status/500")).await);
    let started = Instant::now();
    let message = assert_retryable(read(&s, &server.https_url("/stall")).await);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "FILE_HTTP_TIMEOUT=1s: {message}"
    );
    let closed = format!("https://127.0.0.1:{}/a.pdf", servers::free_port());
    assert_retryable(read(&s, &closed).await);
}

#[tokio::test]
async fn a_server_under_the_minimum_rate_is_cut_off_and_an_honest_slow_one_is_not() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    // 1000 bytes/s asked over 1 s; each byte comes within FILE_HTTP_TIMEOUT (1 s), but
    // one every 200 ms is 5 bytes/s.
    let s = https_sources(
        &server,
        &dir,
        &[
            "--file-http-allowed-hosts=127.0.0.1:*",
            "--file-min-rate=1000",
            "--file-min-rate-window=1s",
        ],
    );
    for length in [true, false] {
        let started = Instant::now();
        let url = server.https_url(&format!("/drip/100?length={length}"));
        let message = assert_retryable(read(&s, &url).await);
        let took = started.elapsed();
        assert!(message.contains("too slow"), "{message}");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(3),
            "cut off after {took:?}"
        );
    }
    // 100 000 bytes at 20 000 bytes/s: five seconds, above the minimum all along.
    let started = Instant::now();
    let body = read(&s, &server.https_url("/rate/100000/20000"))
        .await
        .expect("an honest slow server is read whole");
    assert_eq!(body.len(), 100_000);
    assert!(started.elapsed() >= Duration::from_secs(4));
}

#[tokio::test]
async fn oversize_files_are_refused_without_downloading_them() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    let s = https_sources(&server, &dir, &["--file-http-allowed-hosts=127.0.0.1:*"]);
    let size = 128 * MIB;
    // What a refused file cost: the socket buffers fill up (a few MiB on loopback)
    // until the client hangs up, and no more is sent.
    let server = &server;
    let cost = |before: u64| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.sent() - before
    };
    // Announced by Content-Length: refused by `open`, before the body is read.
    let before = server.sent();
    assert_kind(
        read(&s, &server.https_url(&format!("/big/{size}"))).await,
        ErrorKind::TooLarge,
    );
    let sent = cost(before).await;
    assert!(
        sent < size / 5,
        "{sent} bytes sent for a refused file of {size}"
    );
    // No length (chunked): `open` cannot know, `read` stops at the limit.
    let before = server.sent();
    let opened = s
        .open(&server.https_url(&format!("/chunked/{size}")))
        .await
        .expect("opened");
    assert_eq!(opened.size(), 100_000, "an unknown size reserves the limit");
    assert_kind(opened.read(100_000).await, ErrorKind::TooLarge);
    let sent = cost(before).await;
    assert!(
        sent < size / 5,
        "{sent} bytes sent for a refused file of {size}"
    );
    // At the limit exactly, chunked or not, the file is read.
    assert_eq!(
        read(&s, &server.https_url("/chunked/100000"))
            .await
            .expect("read")
            .len(),
        100_000
    );
    assert_eq!(
        read(&s, &server.https_url("/big/100000"))
            .await
            .expect("read")
            .len(),
        100_000
    );
}

#[tokio::test]
async fn hosts_outside_the_allowlist_are_refused_before_any_request() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    server.put_file("a.pdf", PDF);
    let s = https_sources(&server, &dir, &["--file-http-allowed-hosts=127.0.0.1:*"]);
    assert_kind(
        read(&s, &server.https_url_by_name("/files/a.pdf")).await,
        ErrorKind::FileAccessDenied,
    );
    let none = https_sources(&server, &dir, &[]);
    assert_kind(
        read(&none, &server.https_url("/files/a.pdf")).await,
        ErrorKind::FileAccessDenied,
    );
    assert_eq!(server.sent(), 0, "no connection was made");
    // The other name works once it is allowed.
    let named = https_sources(&server, &dir, &["--file-http-allowed-hosts=LOCALHOST:*"]);
    assert_eq!(
        read(&named, &server.https_url_by_name("/files/a.pdf"))
            .await
            .expect("read"),
        PDF
    );
}

#[tokio::test]
async fn redirects_are_followed_only_within_the_allowlist() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    server.put_file("a.pdf", PDF);
    let s = https_sources(&server, &dir, &["--file-http-allowed-hosts=127.0.0.1:*"]);
    let via = |target: &str| server.https_url(&format!("/redirect?to={}", urlencode(target)));
    // Relative and absolute, within the allowlist: followed.
    assert_eq!(read(&s, &via("/files/a.pdf")).await.expect("read"), PDF);
    assert_eq!(
        read(&s, &via(&via(&server.https_url("/files/a.pdf"))))
            .await
            .expect("read"),
        PDF
    );
    // To a host outside it, or down to plain http: refused.
    let sent = server.sent();
    assert_kind(
        read(&s, &via(&server.https_url_by_name("/files/a.pdf"))).await,
        ErrorKind::FileAccessDenied,
    );
    assert_kind(
        read(&s, &via(&server.http_url("/files/a.pdf"))).await,
        ErrorKind::FileAccessDenied,
    );
    assert!(
        server.sent() - sent < 16 * 1024,
        "only the redirects were served"
    );
    // Endless redirects: refused after a few.
    let endless = server.https_url("/redirect?to=/redirect%3Fto%3D/redirect");
    assert_kind(read(&s, &endless).await, ErrorKind::FileAccessDenied);
}

#[tokio::test]
async fn plain_http_only_when_allowed() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    server.put_file("a.pdf", PDF);
    let url = server.http_url("/files/a.pdf");
    let strict = https_sources(&server, &dir, &["--file-http-allowed-hosts=127.0.0.1:*"]);
    assert_kind(read(&strict, &url).await, ErrorKind::FileAccessDenied);
    let plain = https_sources(
        &server,
        &dir,
        &[
            "--file-http-allowed-hosts=127.0.0.1:*",
            "--file-http-allow-plain=true",
        ],
    );
    assert_eq!(read(&plain, &url).await.expect("read"), PDF);
    let downgrade = server.https_url(&format!("/redirect?to={}", urlencode(&url)));
    assert_eq!(read(&plain, &downgrade).await.expect("read"), PDF);
}

#[tokio::test]
async fn secrets_in_urls_never_reach_messages() {
    let (server, dir) = (FileServer::start().await, tempfile::tempdir().unwrap());
    let s = https_sources(&server, &dir, &["--file-http-allowed-hosts=127.0.0.1:*"]);
    let port = server.https.port();
    let closed = servers::free_port();
    for reference in [
        format!("https://user:pa55word@127.0.0.1:{port}/status/503?X-Amz-Signature=s3cr3t"),
        format!("https://user:pa55word@127.0.0.1:{port}/files/none?X-Amz-Signature=s3cr3t"),
        format!("https://user:pa55word@127.0.0.1:{closed}/a.pdf?X-Amz-Signature=s3cr3t"),
        format!(
            "https://127.0.0.1:{port}/redirect?to=https://localhost/x%3Fsig%3Ds3cr3t&sig=s3cr3t"
        ),
    ] {
        let Err(failure) = read(&s, &reference).await else {
            panic!("{reference} must fail");
        };
        let message = failure.message();
        assert!(
            !message.contains("s3cr3t") && !message.contains("pa55word"),
            "{message}"
        );
    }
}
