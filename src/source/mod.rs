//! A job's file reference -> its bytes, in two steps: `open` learns the size (so the
//! worker can reserve memory for it) and refuses what is too large before any byte
//! of it is read; `read` fetches at most `MAX_PAYLOAD_BYTES`, whatever the source claimed.
//!
//! | file | references |
//! |---|---|
//! | `file.rs` | `file://` inside `FILE_ROOTS` |
//! | `http.rs` | `https://` (and `http://`) to the hosts of `FILE_HTTP_ALLOWED_HOSTS` |
//! | `object.rs` | `s3://`, `az://`, `gs://` in the buckets of `FILE_BUCKETS` |
//! | `stores.rs` | the object stores, built from each cloud's environment (shared with `storage`) |
//! | `cached.rs` | small cached local files, opened and read on the runtime thread |
//! | `fs_errors.rs` | what each error of the local file system means for the job |
//! | `transfer.rs` | network bodies: the minimum rate, the cap, the budget paid as bytes arrive |
//! | `pieces/` | a file read in pieces, for chunked uploads |

mod cached;
mod file;
mod fs_errors;
mod http;
mod object;
mod pieces;
pub(crate) mod stores;
mod transfer;

use std::sync::Arc;

use bytes::Bytes;

use crate::budget::{ByteBudget, Reservation};
use crate::config::{ConfigError, FileSettings};
use crate::job::{ErrorKind, Failure};

use cached::CachedRoots;
use file::{OpenedFile, Roots};
pub(crate) use http::shown as shown_url;
use http::{Http, OpenedHttp};
use object::{Objects, OpenedObject};
pub use pieces::Pieces;
pub use stores::CloudEnv;
use transfer::MinRate;

/// Reads the files that job references name, within the configured limits.
#[derive(Debug, Clone)]
pub struct Sources {
    roots: Roots,
    /// The roots on local disks, for files opened and read without the blocking pool.
    cached: Arc<CachedRoots>,
    max_bytes: u64,
    /// `None`: http(s):// references are refused (`cxone-worker encode`).
    http: Option<Arc<Http>>,
    /// `None`: s3://, az:// and gs:// references are refused.
    objects: Option<Arc<Objects>>,
}

/// A reference resolved and checked, its size known, its bytes not yet read.
#[derive(Debug)]
pub struct Opened(Inner);

#[derive(Debug)]
enum Inner {
    File(OpenedFile),
    Http(OpenedHttp),
    Object(OpenedObject),
}

impl Sources {
    /// Every kind of reference, object stores configured from the process environment.
    pub fn new(files: &FileSettings) -> Result<Self, ConfigError> {
        Self::with_cloud_env(files, CloudEnv::from_process())
    }

    /// As [`Sources::new`], the object stores configured from `env` instead.
    pub fn with_cloud_env(files: &FileSettings, env: CloudEnv) -> Result<Self, ConfigError> {
        Ok(Self {
            roots: Roots::Only(files.roots.clone()),
            cached: Arc::new(CachedRoots::new(&files.roots)),
            max_bytes: files.max_payload_bytes,
            http: Some(Arc::new(Http::new(files)?)),
            objects: Some(Arc::new(Objects::new(
                env,
                files.buckets.clone(),
                MinRate::from_settings(files),
            ))),
        })
    }

    /// For `cxone-worker encode`: any local path the operator names, same size checks.
    pub fn local(max_bytes: u64) -> Self {
        Self {
            roots: Roots::Any,
            cached: Arc::default(),
            max_bytes,
            http: None,
            objects: None,
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub async fn open(&self, reference: &str) -> Result<Opened, Failure> {
        let max = self.max_bytes;
        if is_local(reference, &self.roots) {
            let (reference, roots) = (reference.to_owned(), self.roots.clone());
            return blocking(move || {
                file::open(&reference, &roots, max).map(|f| Opened(Inner::File(f)))
            })
            .await;
        }
        let scheme = reference.split("://").next().unwrap_or(reference);
        match (scheme, &self.http, &self.objects) {
            ("https" | "http", Some(http), _) => {
                Ok(Opened(Inner::Http(http.open(reference, max).await?)))
            }
            ("s3" | "az" | "gs", _, Some(objects)) => {
                Ok(Opened(Inner::Object(objects.open(reference, max).await?)))
            }
            _ => Err(denied(format!("{scheme}:// references are not enabled"))),
        }
    }
}

/// A file's bytes, and the share of the byte budget they hold until dropped.
pub struct Fetched {
    pub bytes: Bytes,
    pub reservation: Reservation,
}

impl Sources {
    /// Opens `reference`, reserves its size in `budget` (waiting for room), and reads
    /// it; an `http(s)` body, whose size is only claimed, reserves as it arrives
    /// instead, waiting a bounded time. A local file whose size fits the budget right
    /// away is opened and read in one trip to the blocking pool, the common case of a
    /// busy worker; with roots on local disks, a small file the page cache holds
    /// needs no trip at all.
    pub async fn fetch(&self, reference: &str, budget: &ByteBudget) -> Result<Fetched, Failure> {
        let max = self.max_bytes;
        if let Some(opened) = self.cached.open(reference, max) {
            let file = opened?;
            let reservation = match budget.try_reserve(file.size()) {
                Some(reservation) => {
                    if let Some(read) = cached::read(&file, max) {
                        return Ok(Fetched {
                            bytes: Bytes::from(read?),
                            reservation,
                        });
                    }
                    reservation
                }
                None => budget.reserve(file.size()).await,
            };
            let bytes = blocking(move || file.read(max).map(Bytes::from)).await?;
            return Ok(Fetched { bytes, reservation });
        }
        if is_local(reference, &self.roots) {
            let (reference, roots, room) =
                (reference.to_owned(), self.roots.clone(), budget.clone());
            let first = blocking(move || {
                let file = file::open(&reference, &roots, max)?;
                Ok(match room.try_reserve(file.size()) {
                    Some(reservation) => Ok(Fetched {
                        bytes: Bytes::from(file.read(max)?),
                        reservation,
                    }),
                    None => Err(file),
                })
            })
            .await?;
            let file = match first {
                Ok(fetched) => return Ok(fetched),
                Err(file) => file,
            };
            let reservation = budget.reserve(file.size()).await;
            let bytes = blocking(move || file.read(max).map(Bytes::from)).await?;
            return Ok(Fetched { bytes, reservation });
        }
        match self.open(reference).await?.0 {
            // Its size is only what the server claims: the reservation grows as
            // bytes arrive, from the share of the budget kept for such sources.
            Inner::Http(http) => {
                let mut reservation = budget.streamed();
                let bytes = http.read(max, Some(&mut reservation)).await?;
                Ok(Fetched { bytes, reservation })
            }
            inner => {
                let opened = Opened(inner);
                let reservation = budget.reserve(opened.size()).await;
                let bytes = opened.read(max).await?;
                Ok(Fetched { bytes, reservation })
            }
        }
    }
}

fn is_local(reference: &str, roots: &Roots) -> bool {
    reference.starts_with("file://") || (reference.starts_with('/') && matches!(roots, Roots::Any))
}

impl Opened {
    /// The size the source reported before reading (the limit, when it said none).
    pub fn size(&self) -> u64 {
        match &self.0 {
            Inner::File(f) => f.size(),
            Inner::Http(h) => h.size(),
            Inner::Object(o) => o.size(),
        }
    }

    pub async fn read(self, max_bytes: u64) -> Result<Bytes, Failure> {
        match self.0 {
            Inner::File(f) => blocking(move || f.read(max_bytes).map(Bytes::from)).await,
            Inner::Http(h) => h.read(max_bytes, None).await,
            Inner::Object(o) => o.read(max_bytes).await,
        }
    }
}

/// File I/O runs on the blocking pool: one call there reads a whole file, where
/// `tokio::fs` would hop between threads for every chunk.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Failure::retryable(format!("file task failed: {e}"))))
}

/// Refuses an empty file and one larger than `max`.
fn check_size(size: u64, max: u64) -> Result<(), Failure> {
    if size == 0 {
        return Err(Failure::permanent(
            ErrorKind::EmptyFile,
            "the file is empty",
        ));
    }
    if size > max {
        return Err(too_large(max));
    }
    Ok(())
}

fn too_large(max: u64) -> Failure {
    Failure::permanent(
        ErrorKind::TooLarge,
        format!("the file has more than the {max} bytes allowed (MAX_PAYLOAD_BYTES)"),
    )
}

fn denied(message: impl Into<String>) -> Failure {
    Failure::permanent(ErrorKind::FileAccessDenied, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_sources_refuse_remote_references() {
        let sources = Sources::local(10);
        for reference in ["https://example.com/a.pdf", "s3://b/k.pdf"] {
            let Err(Failure::Permanent { kind, .. }) = sources.open(reference).await else {
                panic!("{reference} must be refused");
            };
            assert_eq!(kind, ErrorKind::FileAccessDenied);
        }
    }
}
