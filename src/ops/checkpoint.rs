//! A backfill's checkpoint: the ids of the jobs the broker confirmed, one per line,
//! appended as the confirms arrive, so that a re-run skips them.
//!
//! An id is written only after its confirm, and the file is appended to with plain
//! `write(2)` calls (no fsync): a killed process loses nothing the kernel already
//! has, so after SIGKILL the only ids missing are those whose confirm was still
//! outstanding (at most the confirm window). A machine crash may lose the last
//! unsynced lines too; their jobs are then published again, under the same job id.
//!
//! A run that writes holds an exclusive `flock(2)` on the file from before it reads
//! the ids until it exits, so a second run on the same checkpoint stops at once
//! instead of publishing the same jobs beside the first. The kernel drops the lock
//! with the process however it ends (SIGKILL included), so a dead run never leaves
//! a stale lock behind, unlike a lock file.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The first line; the prefix it names must match, so a checkpoint of one
/// deployment cannot make a backfill of another skip its jobs.
const HEADER: &str = "# cxone-worker enqueue checkpoint; CXONE_QUEUE_PREFIX=";

/// Closes a line a kill cut short. Job ids are printable text, so a line with a
/// tab is never an id: the torn text (`file-1` of `file-12`, say) must not make a
/// later run skip the job whose id it happens to spell.
const TORN: &str = "\t# cut short by a kill; not an id\n";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checkpoint {path} is not a cxone-worker enqueue checkpoint (its first line is not {HEADER:?}…)"
    )]
    Foreign { path: String },
    /// Another run holds the checkpoint; this one must not publish at all.
    #[error(
        "checkpoint {path} is in use by another enqueue run (it holds the file's lock); \
         let that run finish, or stop it, before running again"
    )]
    Locked { path: String },
    #[error("checkpoint {path} belongs to CXONE_QUEUE_PREFIX={found:?}, not {expected:?}")]
    OtherPrefix {
        path: String,
        found: String,
        expected: String,
    },
}

#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    /// `None` for a dry run: the file is read, never created or written.
    file: Option<File>,
    done: HashSet<String>,
    /// Recorded ids not yet handed to the kernel.
    buffer: String,
}

impl Checkpoint {
    /// Reads the ids already confirmed; with `write`, creates the file if needed,
    /// takes its lock (see the module documentation) and prepares to append. A last
    /// line without its newline was cut short by a kill: its id does not count (the
    /// job is published again) and the line is closed.
    pub fn open(path: &Path, prefix: &str, write: bool) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut text = String::new();
        let file = if write {
            let mut file = OpenOptions::new()
                .read(true)
                .create(true)
                .append(true)
                .open(path)
                .map_err(io)?;
            lock(&file, path)?;
            // Read through the locked descriptor: what the previous run wrote is all there.
            file.read_to_string(&mut text).map_err(io)?;
            Some(file)
        } else {
            match File::open(path) {
                Ok(mut f) => {
                    f.read_to_string(&mut text).map_err(io)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
            None
        };
        let mut done = HashSet::new();
        let mut buffer = String::new();
        if text.is_empty() {
            buffer = format!("{HEADER}{prefix}\n");
        } else {
            let mut lines = text.split('\n');
            let header = lines.next().unwrap_or_default();
            let found = header
                .strip_prefix(HEADER)
                .ok_or_else(|| CheckpointError::Foreign {
                    path: path.display().to_string(),
                })?;
            if found != prefix {
                return Err(CheckpointError::OtherPrefix {
                    path: path.display().to_string(),
                    found: found.to_owned(),
                    expected: prefix.to_owned(),
                });
            }
            let complete: Vec<&str> = lines.collect();
            // `split` leaves the text after the last newline as the last item: empty
            // when the file ends cleanly, a torn id otherwise.
            let (torn, ids) = complete
                .split_last()
                .map_or(("", &[][..]), |(l, r)| (*l, r));
            done.extend(
                ids.iter()
                    .filter(|id| !id.is_empty() && !id.contains('\t'))
                    .map(|id| (*id).to_owned()),
            );
            if !torn.is_empty() {
                buffer.push_str(TORN);
            } else if !text.ends_with('\n') {
                // Only the header, without its newline.
                buffer.push('\n');
            }
        }
        let mut checkpoint = Self {
            path: path.to_owned(),
            file,
            done,
            buffer,
        };
        checkpoint.flush()?;
        Ok(checkpoint)
    }

    /// Whether the job was confirmed by an earlier run.
    pub fn contains(&self, id: &str) -> bool {
        self.done.contains(id)
    }

    /// Ids confirmed so far, this run included.
    pub fn len(&self) -> usize {
        self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    /// Records a confirmed id; call [`Checkpoint::flush`] after a batch.
    pub fn record(&mut self, id: &str) {
        if self.done.insert(id.to_owned()) {
            self.buffer.push_str(id);
            self.buffer.push('\n');
        }
    }

    /// Hands the recorded ids to the kernel in one write.
    pub fn flush(&mut self) -> Result<(), CheckpointError> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        if self.buffer.is_empty() {
            return Ok(());
        }
        file.write_all(self.buffer.as_bytes())
            .map_err(|source| CheckpointError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
        self.buffer.clear();
        Ok(())
    }
}

/// Takes the file's exclusive lock without waiting; held until the file is closed.
fn lock(file: &File, path: &Path) -> Result<(), CheckpointError> {
    use rustix::fs::{FlockOperation, flock};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(CheckpointError::Locked {
            path: path.display().to_string(),
        }),
        Err(e) => Err(CheckpointError::Io {
            path: path.display().to_string(),
            source: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_and_torn_lines_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        let mut cp = Checkpoint::open(&path, "p", true).unwrap();
        cp.record("a");
        cp.record("b");
        cp.record("a");
        cp.flush().unwrap();
        drop(cp);
        // A kill in the middle of a write leaves a line without its newline.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"c-tor")
            .unwrap();
        let mut cp = Checkpoint::open(&path, "p", true).unwrap();
        assert!(cp.contains("a") && cp.contains("b") && !cp.contains("c-tor"));
        assert_eq!(cp.len(), 2);
        cp.record("c");
        cp.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{HEADER}p\na\nb\nc-tor{TORN}c\n"));
        let cp = Checkpoint::open(&path, "p", false).unwrap();
        assert!(cp.contains("c"));
        assert!(
            !cp.contains("c-tor"),
            "a closed torn line stays torn: it may spell another job's id"
        );
        assert_eq!(cp.len(), 3);
    }

    #[test]
    fn refuses_other_files_and_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        Checkpoint::open(&path, "p", true).unwrap();
        assert!(matches!(
            Checkpoint::open(&path, "q", true),
            Err(CheckpointError::OtherPrefix { .. })
        ));
        std::fs::write(&path, "id-1\n").unwrap();
        assert!(matches!(
            Checkpoint::open(&path, "p", true),
            Err(CheckpointError::Foreign { .. })
        ));
    }

    #[test]
    fn one_writer_at_a_time_until_it_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        let first = Checkpoint::open(&path, "p", true).unwrap();
        assert!(matches!(
            Checkpoint::open(&path, "p", true),
            Err(CheckpointError::Locked { .. })
        ));
        // A dry run only reads: it neither needs nor takes the lock.
        assert!(Checkpoint::open(&path, "p", false).is_ok());
        drop(first);
        assert!(Checkpoint::open(&path, "p", true).is_ok());
    }

    #[test]
    fn dry_runs_do_not_create_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        let mut cp = Checkpoint::open(&path, "p", false).unwrap();
        cp.record("a");
        cp.flush().unwrap();
        assert!(!path.exists());
    }
}
