//! A local file server over HTTP and HTTPS (a certificate from a throwaway CA), for
//! the http(s) sources and the http storage endpoint. It counts the bytes it really
//! wrote to its sockets, redirects on demand, fails on demand and records PUTs.

#![allow(dead_code)] // each test binary uses its own part of the support

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// One PUT the server received.
#[derive(Debug, Clone)]
pub struct Put {
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Default)]
struct Shared {
    files: Mutex<HashMap<String, Bytes>>,
    /// Files already served once by `/once/{name}`.
    served_once: Mutex<std::collections::HashSet<String>>,
    puts: Mutex<Vec<Put>>,
    sent: AtomicU64,
    /// GETs of `/files/…`, counted to see when a reader asks again.
    file_requests: AtomicU64,
}

/// The server, on two ports of 127.0.0.1: plain HTTP and HTTPS.
pub struct FileServer {
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// PEM of the CA that signed the server's certificate (for `FILE_HTTP_CA_FILE`).
    pub ca_pem: String,
    shared: Arc<Shared>,
}

impl FileServer {
    /// Serves on the current runtime until the test ends. The certificate names
    /// both `127.0.0.1` and `localhost`, two hosts for the allowlist to tell apart.
    pub async fn start() -> FileServer {
        let shared = Arc::new(Shared::default());
        let (ca_pem, tls) = tls_config();
        let http = serve(shared.clone(), None).await;
        let https = serve(shared.clone(), Some(TlsAcceptor::from(Arc::new(tls)))).await;
        FileServer {
            http,
            https,
            ca_pem,
            shared,
        }
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https.port())
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http.port())
    }

    /// The same server under its other name, `localhost`.
    pub fn https_url_by_name(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    /// Serves `body` at `/files/{name}`, with a `Content-Length`.
    pub fn put_file(&self, name: &str, body: impl Into<Bytes>) {
        self.shared
            .files
            .lock()
            .unwrap()
            .insert(name.to_owned(), body.into());
    }

    /// GETs of `/files/…` so far.
    pub fn file_requests(&self) -> u64 {
        self.shared.file_requests.load(Ordering::Relaxed)
    }

    /// Bytes written to the sockets so far, TLS records and headers included.
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    pub fn puts(&self) -> Vec<Put> {
        self.shared.puts.lock().unwrap().clone()
    }

    /// Writes the CA to a file in `dir` and returns its path.
    pub fn write_ca(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("CA file");
        path
    }
}

fn tls_config() -> (String, ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cxone-worker test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params");
    leaf.distinguished_name
        .push(DnType::CommonName, "cxone-worker test server");
    let cert = leaf.signed_by(&key, &issuer).expect("server certificate");
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .expect("TLS config");
    (ca_cert.pem(), config)
}

/// Accepts connections (and TLS handshakes, off the accept loop), counting what is
/// written to each socket, and serves the router on them.
async fn serve(shared: Arc<Shared>, tls: Option<TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("file server port");
    let addr = listener.local_addr().expect("file server address");
    let (tx, rx) = mpsc::channel(64);
    let counter = shared.clone();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let io = Counting {
                inner: tcp,
                shared: counter.clone(),
            };
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                let io: Box<dyn Io> = match tls {
                    None => Box::new(io),
                    Some(tls) => match tls.accept(io).await {
                        Ok(stream) => Box::new(stream),
                        Err(_) => return,
                    },
                };
                let _ = tx.send((io, peer)).await;
            });
        }
    });
    tokio::spawn(async move { axum::serve(Accepted { rx, addr }, router(shared)).await });
    addr
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Accepted {
    rx: mpsc::Receiver<(Box<dyn Io>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for Accepted {
    type Io = Box<dyn Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// A socket that adds every byte written to it to the server's count.
struct Counting<T> {
    inner: T,
    shared: Arc<Shared>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            self.shared.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// | route | answer |
/// |---|---|
/// | `GET /files/{name}` | a stored file, with its length and an ETag, honouring `Range` (one range) and `If-Match`; 404 when absent. `?ranges=false`: `Range` ignored; `?length=false`: no length either |
/// | `GET /big/{size}` | `size` bytes of PDF-looking filler, with its length, made as sent |
/// | `GET /chunked/{size}` | the same without a length (chunked) |
/// | `GET /redirect?to=URL` | 302 to URL |
/// | `GET /status/{code}` | that status |
/// | `* /fail/{code}/{*rest}` | that status, whatever the method (an object store's endpoint that fails) |
/// | `GET /drip/{size}` | `size` bytes, one every `?every_ms=` (200), with a length unless `?length=false` |
/// | `GET /rate/{size}/{per_second}` | `size` bytes at `per_second`, in pieces of a tenth of it, with a length unless `?length=false` |
/// | `GET /stall`, `* /stall/{*rest}` | nothing for a minute |
/// | `PUT /put/{*path}` | recorded, 201 |
/// | `GET /put/{*path}` | the body last PUT there; 404 when none |
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/files/{name}", get(file))
        .route("/once/{name}", get(once))
        .route("/big/{size}", get(big))
        .route("/chunked/{size}", get(chunked))
        .route("/redirect", get(redirect))
        .route("/status/{code}", get(status))
        .route("/fail/{code}/{*rest}", axum::routing::any(fail))
        .route("/drip/{size}", get(drip))
        .route("/rate/{size}/{per_second}", get(rate))
        .route("/stall", get(stall))
        .route("/stall/{*rest}", axum::routing::any(stall))
        .route(
            "/put/{*path}",
            axum::routing::put(record_put).get(stored_put),
        )
        .with_state(shared)
}

/// How `/files/{name}` behaves.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct FileOptions {
    ranges: Option<bool>,
    length: Option<bool>,
}

async fn file(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(options): Query<FileOptions>,
    headers: HeaderMap,
) -> Response {
    shared.file_requests.fetch_add(1, Ordering::Relaxed);
    let Some(body) = shared.files.lock().unwrap().get(&name).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = format!(
        "\"{:x}-{}\"",
        body.len(),
        body.iter().map(|b| *b as u64).sum::<u64>()
    );
    let header_of = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if header_of(header::IF_MATCH).is_some_and(|m| m != etag) {
        return StatusCode::PRECONDITION_FAILED.into_response();
    }
    if options.length == Some(false) {
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(body)]);
        return ([(header::ETAG, etag)], Body::from_stream(stream)).into_response();
    }
    let range = header_of(header::RANGE).filter(|_| options.ranges != Some(false));
    let Some(range) = range else {
        return ([(header::ETAG, etag)], body).into_response();
    };
    let len = body.len() as u64;
    match parse_range(range, len) {
        Some((first, last)) => (
            StatusCode::PARTIAL_CONTENT,
            [
                (header::ETAG, etag),
                (header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}")),
            ],
            body.slice(first as usize..=last as usize),
        )
            .into_response(),
        None => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
        )
            .into_response(),
    }
}

/// `bytes=first-last` or `bytes=first-` within `len` bytes.
fn parse_range(raw: &str, len: u64) -> Option<(u64, u64)> {
    let (first, last) = raw.strip_prefix("bytes=")?.split_once('-')?;
    let first: u64 = first.parse().ok()?;
    let last: u64 = match last {
        "" => len.checked_sub(1)?,
        last => last.parse::<u64>().ok()?.min(len.checked_sub(1)?),
    };
    (first <= last).then_some((first, last))
}

/// A file served the first time, and 503 ever after.
async fn once(state: State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    if !state.served_once.lock().unwrap().insert(name.clone()) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    file(
        state,
        Path(name),
        Query(FileOptions::default()),
        HeaderMap::new(),
    )
    .await
}

/// A body of `size` bytes in 64 KiB pieces, made as the client reads them.
fn filler(size: u64) -> Body {
    const PIECE: u64 = 64 * 1024;
    let pieces = (0..size.div_ceil(PIECE)).map(move |i| {
        let len = PIECE.min(size - i * PIECE) as usize;
        let mut piece = vec![b'x'; len];
        if i == 0 {
            let head = b"%PDF-1.4\n";
            let n = head.len().min(len);
            piece[..n].copy_from_slice(&head[..n]);
        }
        Ok::<_, std::io::Error>(Bytes::from(piece))
    });
    Body::from_stream(futures_util::stream::iter(pieces))
}

async fn big(Path(size): Path<u64>) -> Response {
    ([(header::CONTENT_LENGTH, size.to_string())], filler(size)).into_response()
}

async fn chunked(Path(size): Path<u64>) -> Response {
    filler(size).into_response()
}

async fn redirect(Query(query): Query<HashMap<String, String>>) -> Response {
    let to = query.get("to").cloned().unwrap_or_default();
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn status(Path(code): Path<u16>) -> Response {
    StatusCode::from_u16(code)
        .unwrap_or(StatusCode::IM_A_TEAPOT)
        .into_response()
}

async fn fail(Path((code, _)): Path<(u16, String)>) -> Response {
    status(Path(code)).await
}

#[derive(serde::Deserialize)]
#[serde(default)]
struct Paced {
    every_ms: u64,
    length: bool,
}

impl Default for Paced {
    fn default() -> Self {
        Self {
            every_ms: 200,
            length: true,
        }
    }
}

/// A body of `size` bytes in `pieces` of `piece` bytes, one every `every`.
fn paced(size: u64, piece: u64, every: Duration, length: bool) -> Response {
    let bytes = futures_util::stream::unfold(0u64, move |sent| async move {
        if sent == size {
            return None;
        }
        tokio::time::sleep(every).await;
        let n = piece.min(size - sent) as usize;
        let mut chunk = vec![b'x'; n];
        if sent == 0 {
            chunk[0] = b'%';
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), sent + n as u64))
    });
    let body = Body::from_stream(bytes);
    if length {
        ([(header::CONTENT_LENGTH, size.to_string())], body).into_response()
    } else {
        body.into_response()
    }
}

/// `size` bytes, one every `every_ms`: each wait is short, the whole is not.
async fn drip(Path(size): Path<u64>, Query(p): Query<Paced>) -> Response {
    paced(size, 1, Duration::from_millis(p.every_ms), p.length)
}

/// An honest but limited server: `size` bytes at `per_second`.
async fn rate(Path((size, per_second)): Path<(u64, u64)>, Query(p): Query<Paced>) -> Response {
    let piece = (per_second / 10).max(1);
    paced(size, piece, Duration::from_millis(100), p.length)
}

async fn stall() -> Response {
    tokio::time::sleep(Duration::from_secs(60)).await;
    "too late".into_response()
}

async fn record_put(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    shared.puts.lock().unwrap().push(Put {
        path,
        authorization: text(header::AUTHORIZATION),
        content_type: text(header::CONTENT_TYPE),
        body,
    });
    StatusCode::CREATED
}

async fn stored_put(State(shared): State<Arc<Shared>>, Path(path): Path<String>) -> Response {
    let puts = shared.puts.lock().unwrap();
    match puts.iter().rev().find(|p| p.path == path) {
        Some(put) => put.body.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
