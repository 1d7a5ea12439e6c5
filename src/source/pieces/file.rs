//! Pieces of a `file://` file: `pread` on the descriptor opened (and confined) once,
//! on the blocking pool, the file's size and modification time checked after each.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::changed;
use crate::budget::ByteBudget;
use crate::job::Failure;
use crate::source::file::{OpenedFile, io_failure};
use crate::source::{Fetched, blocking};

#[derive(Debug)]
pub(super) struct FilePieces {
    file: Arc<File>,
    size: u64,
    /// A rewrite of the same size shows here.
    modified: Option<SystemTime>,
    shown: String,
}

impl FilePieces {
    pub(super) async fn new(opened: OpenedFile, shown: String) -> Result<Self, Failure> {
        let size = opened.size;
        let file = Arc::new(opened.file);
        let stat = file.clone();
        let meta = blocking(move || {
            stat.metadata()
                .map_err(|e| io_failure("cannot read the file's metadata", &e))
        })
        .await?;
        Ok(Self {
            file,
            size,
            modified: meta.modified().ok(),
            shown,
        })
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    pub(super) async fn read(
        &self,
        offset: u64,
        len: u64,
        budget: &ByteBudget,
    ) -> Result<Fetched, Failure> {
        let reservation = budget.reserve(len).await;
        let (file, size, modified) = (self.file.clone(), self.size, self.modified);
        let shown = self.shown.clone();
        let bytes = blocking(move || {
            let mut buf = vec![0u8; len as usize];
            let read = file.read_exact_at(&mut buf, offset);
            // After the read: a change before or during it shows as well.
            let meta = file
                .metadata()
                .map_err(|e| io_failure("cannot read the file's metadata", &e))?;
            if meta.len() != size {
                return Err(changed(
                    &shown,
                    &format!("{size} bytes, now {}", meta.len()),
                ));
            }
            if meta.modified().ok() != modified {
                return Err(changed(&shown, "modified since it was opened"));
            }
            read.map_err(|e| io_failure("cannot read the file", &e))?;
            Ok(Bytes::from(buf))
        })
        .await?;
        Ok(Fetched { bytes, reservation })
    }
}
