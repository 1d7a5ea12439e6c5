//! A file read in pieces, for uploads in chunks: its size first, then any range of
//! its bytes on demand, each piece held in the byte budget for as long as it lives,
//! never the whole file. The same references, confinement and limits as a whole
//! read: `FILE_ROOTS`, the allowlists, `MAX_PAYLOAD_BYTES` for the whole file, the
//! minimum rate.
//!
//! | file | pieces of |
//! |---|---|
//! | `file.rs` | `file://`: `pread` on the descriptor opened once |
//! | `http.rs` | `https://`: `Range` requests, or one stream read in order |
//! | `object.rs` | `s3://`, `az://`, `gs://`: ranged GETs |
//!
//! A file that changes between pieces (another size, another modification time or
//! ETag) is refused as retryable: pieces of two versions must not make one upload.

mod file;
mod http;
mod object;

use super::{Fetched, Sources, blocking, denied, is_local};
use crate::budget::ByteBudget;
use crate::job::Failure;

/// A reference opened for reading in pieces: size known, nothing read yet.
#[derive(Debug)]
pub struct Pieces {
    size: u64,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    File(file::FilePieces),
    Http(http::HttpPieces),
    Object(object::ObjectPieces),
}

impl Sources {
    /// Opens a reference for reading in pieces: size known, nothing read yet. The
    /// refusals are those of [`Sources::open`]: an empty file, one over
    /// `MAX_PAYLOAD_BYTES`, one outside the roots or the allowlists.
    pub async fn open_pieces(&self, reference: &str) -> Result<Pieces, Failure> {
        let max = self.max_bytes;
        let shown = crate::job::shown_file(reference);
        let inner = if is_local(reference, &self.roots) {
            let (reference, roots) = (reference.to_owned(), self.roots.clone());
            let opened = blocking(move || super::file::open(&reference, &roots, max)).await?;
            Inner::File(file::FilePieces::new(opened, shown).await?)
        } else {
            let scheme = reference.split("://").next().unwrap_or(reference);
            match (scheme, &self.http, &self.objects) {
                ("https" | "http", Some(http), _) => {
                    Inner::Http(http::HttpPieces::open(http.clone(), reference, max).await?)
                }
                ("s3" | "az" | "gs", _, Some(objects)) => Inner::Object(object::ObjectPieces::new(
                    objects.open(reference, max).await?,
                )),
                _ => return Err(denied(format!("{scheme}:// references are not enabled"))),
            }
        };
        let size = match &inner {
            Inner::File(f) => f.size(),
            Inner::Http(h) => h.size(),
            Inner::Object(o) => o.size(),
        };
        Ok(Pieces { size, inner })
    }
}

impl Pieces {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes `[offset, offset + len)` of the file (`len` <= what is left), holding
    /// `len` in `budget` for as long as the returned [`Fetched`] lives. Reads are
    /// usually in order; a read at an earlier offset works too (re-opened, or a
    /// ranged GET).
    pub async fn read(
        &mut self,
        offset: u64,
        len: u64,
        budget: &ByteBudget,
    ) -> Result<Fetched, Failure> {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > self.size) {
            // The caller's mistake, not the file's: said plainly, never a panic.
            return Err(Failure::retryable(format!(
                "a piece of {len} bytes at {offset} is not within the file's {} bytes",
                self.size
            )));
        }
        match &mut self.inner {
            Inner::File(f) => f.read(offset, len, budget).await,
            Inner::Http(h) => h.read(offset, len, budget).await,
            Inner::Object(o) => o.read(offset, len, budget).await,
        }
    }
}

/// The failure of a file that is no longer the one opened.
fn changed(shown: &str, what: &str) -> Failure {
    Failure::retryable(format!(
        "{shown} changed while it was read in pieces ({what}): an upload must not mix two versions"
    ))
}
