//! The object-store servers the tests run against: an S3 (`moto_server`) and an Azure
//! Blob (Azurite) server, each started once per test binary on a free port, and a
//! counting TCP proxy to see how many bytes a server really sent. A server that
//! cannot start fails the test loudly: these tests are never skipped.

#![allow(dead_code)] // each test binary uses its own part of the support

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Azurite's well-known development account.
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Any key works with moto while it does not check signatures.
pub const AWS_KEY: &str = "testing";

/// A server process that lives as long as the test binary.
pub struct External {
    pub port: u16,
    /// Held so that the process is killed when the test binary exits: the wrapper
    /// shell waits on this pipe and kills the server when it closes.
    _child: Mutex<Child>,
    pub log: PathBuf,
}

impl External {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools")
}

/// Finds a program in `.tools/node_modules/.bin`, `.tools/bin` or on PATH.
fn find(program: &str) -> PathBuf {
    let tools = tools_dir();
    for dir in [tools.join("node_modules/.bin"), tools.join("bin")] {
        if dir.join(program).is_file() {
            return dir.join(program);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed: run `scripts/test-servers.sh` (looked in .tools/ and PATH)"))
}

/// A fresh directory for one server's log and data, under the target directory.
fn server_dir(name: &str, port: u16) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("server directory");
    dir
}

/// Runs `$2…` with `$1` its directory. The shell exits when the server does (so an
/// early death shows), and a watcher kills the server and removes the directory
/// once the pipe on stdin closes: when this test process ends, however it ends.
const WRAPPER: &str = r#"
dir=$1; shift
exec 3<&0
"$@" &
server=$!
( read _ignored <&3; kill "$server" 2>/dev/null; sleep 1; rm -rf "$dir" ) &
wait "$server"
"#;

/// Starts `program args…` under a shell that kills it once our stdin pipe closes,
/// which happens however this process ends, and then removes its directory. `args`
/// gets the free port chosen and that directory. Waits until the server listens.
fn start(
    name: &str,
    program: &str,
    args: impl FnOnce(u16, &Path) -> Vec<String>,
    env: &[(&str, &str)],
) -> External {
    let program = find(program);
    let port = free_port();
    let dir = server_dir(name, port);
    let args = args(port, &dir);
    let log = dir.join("server.log");
    let out = std::fs::File::create(&log).expect("log file");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(WRAPPER)
        .arg("sh")
        .arg(&dir)
        .arg(&program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_ok()
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{name} exited with {status} before listening:\n{}",
                read_log(&log)
            );
        }
        if Instant::now() > deadline {
            panic!(
                "{name} did not listen on port {port} within 60 s:\n{}",
                read_log(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    External {
        port,
        _child: Mutex::new(child),
        log,
    }
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn moto_args(port: u16, _: &Path) -> Vec<String> {
    vec!["-p".into(), port.to_string()]
}

/// The S3 server shared by this test binary; it checks no signature.
pub fn moto() -> &'static External {
    static MOTO: OnceLock<External> = OnceLock::new();
    MOTO.get_or_init(|| start("moto", "moto_server", moto_args, &[]))
}

/// An S3 server that refuses every request: signatures are checked against IAM
/// users, and there are none (`INITIAL_NO_AUTH_ACTION_COUNT=0`).
pub fn moto_locked() -> &'static External {
    static MOTO: OnceLock<External> = OnceLock::new();
    let env = [("INITIAL_NO_AUTH_ACTION_COUNT", "0")];
    MOTO.get_or_init(|| start("moto-locked", "moto_server", moto_args, &env))
}

/// The Azure Blob server shared by this test binary, its data in its directory.
pub fn azurite() -> &'static External {
    static AZURITE: OnceLock<External> = OnceLock::new();
    let args = |port: u16, dir: &Path| {
        let location = dir.join("data").display().to_string();
        let port = port.to_string();
        let args = [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port,
            "--location",
            &location,
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
        ];
        args.map(str::to_owned).to_vec()
    };
    AZURITE.get_or_init(|| start("azurite", "azurite-blob", args, &[]))
}

/// The variables that point the AWS builders at `server`.
pub fn s3_env(server: &External) -> Vec<(String, String)> {
    s3_env_at(&server.url())
}

/// The variables that point the AWS builders at an endpoint URL.
pub fn s3_env_at(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", AWS_KEY),
        ("AWS_SECRET_ACCESS_KEY", AWS_KEY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The variables that point the Azure builders at Azurite by account, key and
/// endpoint (what an operator with a real account sets, but for the endpoint).
pub fn azure_env(server: &External) -> Vec<(String, String)> {
    azure_env_at(&format!("{}/{AZURE_ACCOUNT}", server.url()))
}

/// The same, for the account's endpoint URL.
pub fn azure_env_at(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AZURE_STORAGE_ACCOUNT_NAME", AZURE_ACCOUNT),
        ("AZURE_STORAGE_ACCOUNT_KEY", AZURE_KEY),
        ("AZURE_STORAGE_ENDPOINT", endpoint),
        ("AZURE_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Creates a bucket on moto (which accepts unsigned requests); an existing one is fine.
pub async fn create_bucket(server: &External, bucket: &str) {
    let answer = reqwest::Client::new()
        .put(format!("{}/{bucket}", server.url()))
        .send()
        .await
        .expect("moto answers");
    assert!(
        answer.status().is_success(),
        "creating bucket {bucket}: {}",
        answer.status()
    );
}

/// Creates a container on Azurite, signed with the account key (Shared Key).
pub async fn create_container(server: &External, container: &str) {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let version = "2021-08-06";
    let resource = format!("/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}/{container}\nrestype:container");
    let to_sign =
        format!("PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{resource}");
    let key = BASE64_STANDARD.decode(AZURE_KEY).expect("account key");
    let signature = BASE64_STANDARD.encode(hmac_sha256(&key, to_sign.as_bytes()));
    let answer = reqwest::Client::new()
        .put(format!(
            "{}/{AZURE_ACCOUNT}/{container}?restype=container",
            server.url()
        ))
        .header("x-ms-date", date)
        .header("x-ms-version", version)
        .header("content-length", "0")
        .header(
            "authorization",
            format!("SharedKey {AZURE_ACCOUNT}:{signature}"),
        )
        .send()
        .await
        .expect("azurite answers");
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    assert!(
        status.is_success() || body.contains("ContainerAlreadyExists"),
        "creating container {container}: {status} {body}"
    );
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// A TCP proxy in front of a server, counting the bytes the server sent back.
pub struct CountingProxy {
    pub addr: SocketAddr,
    sent: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl CountingProxy {
    /// Serves on the current runtime until the test ends.
    pub async fn start(upstream_port: u16) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let sent = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (counter, accepted) = (sent.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = tokio::spawn(async move {
                        tokio::io::copy(&mut client_read, &mut server_write).await
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if client_write.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                counter.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                    }
                    up.abort();
                });
            }
        });
        CountingProxy {
            addr,
            sent,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes the server sent through the proxy so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Connections clients opened through the proxy so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The count once bytes in flight have passed (or been dropped).
    pub async fn settled(&self) -> u64 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        self.sent()
    }
}
