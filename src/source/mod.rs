//! A job's file reference -> its bytes, in two steps: `open` learns the size (so the
//! worker can reserve memory for it), `read` fetches at most `MAX_PAYLOAD_BYTES`.

mod file;

use bytes::Bytes;

use crate::config::FileSettings;
use crate::job::{ErrorKind, Failure};

use file::{OpenedFile, Roots};

/// Reads the files that job references name, within the configured limits.
#[derive(Debug, Clone)]
pub struct Sources {
    roots: Roots,
    max_bytes: u64,
}

/// A reference resolved and checked, its size known, its bytes not yet read.
#[derive(Debug)]
pub struct Opened(Inner);

#[derive(Debug)]
enum Inner {
    File(OpenedFile),
}

impl Sources {
    pub fn new(files: &FileSettings) -> Self {
        Self {
            roots: Roots::Only(files.roots.clone()),
            max_bytes: files.max_payload_bytes,
        }
    }

    /// For `cxone-worker encode`: any local path the operator names, same size checks.
    pub fn local(max_bytes: u64) -> Self {
        Self {
            roots: Roots::Any,
            max_bytes,
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub async fn open(&self, reference: &str) -> Result<Opened, Failure> {
        if reference.starts_with("file://")
            || (reference.starts_with('/') && matches!(self.roots, Roots::Any))
        {
            let (reference, roots, max) =
                (reference.to_owned(), self.roots.clone(), self.max_bytes);
            return blocking(move || {
                file::open(&reference, &roots, max).map(|f| Opened(Inner::File(f)))
            })
            .await;
        }
        let scheme = reference.split("://").next().unwrap_or(reference);
        Err(Failure::permanent(
            ErrorKind::FileAccessDenied,
            format!("{scheme}:// references are not enabled"),
        ))
    }
}

impl Opened {
    /// The size the source reported before reading.
    pub fn size(&self) -> u64 {
        match &self.0 {
            Inner::File(f) => f.size(),
        }
    }

    pub async fn read(self, max_bytes: u64) -> Result<Bytes, Failure> {
        match self.0 {
            Inner::File(f) => blocking(move || f.read(max_bytes).map(Bytes::from)).await,
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
