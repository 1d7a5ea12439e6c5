//! What `enqueue` will publish: files, directories or an NDJSON manifest turned into
//! contract jobs, each validated and given a stable id, before anything is sent.
//!
//! Planning the whole input first gives the progress bar its total and lets
//! `--strict` refuse a bad manifest before a single job is published.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::job::{Job, idempotency_key};

/// Where the jobs come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Files and directories; `globs` filter the files found in directories (an
    /// explicitly named file is always taken). With `declare_type`, each job declares
    /// the `content_type` its file's name says (see [`super::mime`]).
    Paths {
        paths: Vec<PathBuf>,
        recursive: bool,
        globs: Vec<String>,
        declare_type: bool,
    },
    /// One contract job per line; `None` reads stdin.
    Manifest(Option<PathBuf>),
}

/// What the command line adds to every job.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// Set on jobs that name no data action (a manifest's own value wins).
    pub data_action_id: Option<String>,
    /// Added to each job's metadata; a key the job already has keeps its value.
    pub metadata: Map<String, Value>,
}

/// One job ready to publish.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The job's `job_id`, else the idempotency key the worker would derive; also the
    /// message id, and the line written to the checkpoint.
    pub id: String,
    pub body: Vec<u8>,
}

/// An input that will not be sent, and why; `origin` is `manifest:LINE` or a path.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub origin: String,
    pub cause: Cause,
    pub reason: String,
}

/// What kind of input was refused, as the summary counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A manifest line or a job that the contract refuses.
    Invalid,
    /// A file or directory entry that cannot be read: permission denied, gone since
    /// it was listed, a broken link, metadata that fails, not a regular file.
    Unreadable,
    /// A directory given without `--recursive` that holds only subdirectories.
    NoFiles,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub jobs: Vec<Planned>,
    pub refused: Vec<Refusal>,
    /// Inputs that repeat a job already planned, body and all.
    pub duplicates: u64,
    /// Links to directories met in a `--recursive` walk: not followed (a loop could
    /// trap the walk), and said so, neither refused nor dropped silently.
    pub not_followed: Vec<String>,
    /// Jobs from paths by the `content_type` their file's name declared; `None`
    /// counts those whose name declares nothing.
    pub declared: BTreeMap<Option<&'static str>, u64>,
}

/// Reading the input itself failed (not one bad line or file).
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what}: {source}")]
pub struct PlanError {
    what: String,
    #[source]
    source: std::io::Error,
}

pub fn plan(source: &Source, defaults: &Defaults) -> Result<Plan, PlanError> {
    let mut builder = Builder::default();
    match source {
        Source::Manifest(path) => {
            let name = path
                .as_ref()
                .map_or_else(|| "stdin".to_owned(), |p| p.display().to_string());
            let failed = |source| PlanError {
                what: name.clone(),
                source,
            };
            let reader: Box<dyn BufRead> = match path {
                None => Box::new(std::io::stdin().lock()),
                Some(p) => Box::new(std::io::BufReader::new(
                    std::fs::File::open(p).map_err(failed)?,
                )),
            };
            for (i, line) in reader.lines().enumerate() {
                let line = line.map_err(failed)?;
                if line.trim().is_empty() {
                    continue;
                }
                let origin = format!("{name}:{}", i + 1);
                match manifest_job(&line, defaults) {
                    Ok(job) => {
                        builder.add(origin, job);
                    }
                    Err(reason) => builder.refuse(origin, Cause::Invalid, reason),
                }
            }
        }
        Source::Paths {
            paths,
            recursive,
            globs,
            declare_type,
        } => {
            let walk = Walk {
                recursive: *recursive,
                globs,
                declare_type: *declare_type,
                defaults,
            };
            for path in paths {
                match std::fs::canonicalize(path) {
                    Err(e) => {
                        builder.refuse(path.display().to_string(), Cause::Unreadable, e.to_string())
                    }
                    Ok(abs) if abs.is_dir() => walk.dir(&abs, &mut builder),
                    Ok(abs) => walk.file(&abs, &mut builder),
                }
            }
        }
    }
    Ok(builder.plan)
}

/// Collects jobs, dropping repeats: the same id with the same body is a duplicate,
/// the same id with another body is refused (two different jobs cannot share a key).
#[derive(Default)]
struct Builder {
    plan: Plan,
    seen: HashMap<String, (String, [u8; 32])>,
}

impl Builder {
    /// Plans `job`; false when it repeats one already planned (or is refused so).
    fn add(&mut self, origin: String, job: Job) -> bool {
        // A job always serializes.
        let body = serde_json::to_vec(&job).unwrap_or_default();
        let id = job
            .job_id
            .clone()
            .unwrap_or_else(|| idempotency_key(None, None, &body));
        let digest: [u8; 32] = Sha256::digest(&body).into();
        if let Some((first, seen)) = self.seen.get(&id) {
            if *seen == digest {
                self.plan.duplicates += 1;
            } else {
                let reason =
                    format!("job_id {id:?} is already used by {first} for a different job");
                self.refuse(origin, Cause::Invalid, reason);
            }
            return false;
        }
        self.seen.insert(id.clone(), (origin, digest));
        self.plan.jobs.push(Planned { id, body });
        true
    }

    fn refuse(&mut self, origin: String, cause: Cause, reason: String) {
        self.plan.refused.push(Refusal {
            origin,
            cause,
            reason,
        });
    }
}

fn manifest_job(line: &str, defaults: &Defaults) -> Result<Job, String> {
    let mut job: Job =
        serde_json::from_str(line).map_err(|e| format!("not a contract job: {e}"))?;
    apply(&mut job, defaults);
    job.validate().map_err(|f| f.message().to_owned())?;
    Ok(job)
}

fn apply(job: &mut Job, defaults: &Defaults) {
    if job.data_action_id.is_none() {
        job.data_action_id.clone_from(&defaults.data_action_id);
    }
    if !defaults.metadata.is_empty() {
        let metadata = job.metadata.get_or_insert_with(Map::new);
        for (k, v) in &defaults.metadata {
            metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// How the paths of the command line become jobs.
struct Walk<'a> {
    recursive: bool,
    globs: &'a [String],
    declare_type: bool,
    defaults: &'a Defaults,
}

impl Walk<'_> {
    /// Files of `dir` in name order (so runs and their progress are reproducible),
    /// descending into subdirectories with `recursive`. Symbolic links to files are
    /// taken; links to directories are not followed, so a loop cannot trap the walk.
    /// Every entry that cannot be read is refused with its reason, never skipped.
    fn dir(&self, dir: &Path, builder: &mut Builder) {
        let origin = || dir.display().to_string();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                let reason = format!("cannot list it: {e}");
                return builder.refuse(origin(), Cause::Unreadable, reason);
            }
        };
        let mut listed = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => listed.push(entry),
                // The listing itself failed part-way: the entries after it are unknown.
                Err(e) => builder.refuse(
                    origin(),
                    Cause::Unreadable,
                    format!("listing it failed part-way: {e}"),
                ),
            }
        }
        listed.sort_by_key(std::fs::DirEntry::file_name);
        let (mut files, mut subdirs) = (0, 0);
        for entry in listed {
            match self.entry(&entry, builder) {
                Entry::Dir => subdirs += 1,
                Entry::Other => files += 1,
            }
        }
        if !self.recursive && files == 0 && subdirs > 0 {
            let reason = format!("holds no files, only {subdirs} subdirectories: add --recursive");
            builder.refuse(origin(), Cause::NoFiles, reason);
        }
    }

    /// One entry of a walked directory: walked, planned, or refused with its reason.
    fn entry(&self, entry: &std::fs::DirEntry, builder: &mut Builder) -> Entry {
        let path = entry.path();
        let origin = || path.display().to_string();
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(e) => {
                let reason = format!("cannot tell what it is: {e}");
                builder.refuse(origin(), Cause::Unreadable, reason);
                return Entry::Other;
            }
        };
        if kind.is_dir() {
            if self.recursive {
                self.dir(&path, builder);
            }
            return Entry::Dir;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !self.globs.is_empty() && !self.globs.iter().any(|g| super::glob::matches(g, &name)) {
            return Entry::Other;
        }
        if !kind.is_symlink() {
            self.file(&path, builder);
            return Entry::Other;
        }
        // A link is enqueued as the file it points to: its id is that file's, so a
        // link beside its target (`latest.pdf -> inv-003.pdf`) is one job, not two
        // under two keys.
        match std::fs::canonicalize(&path) {
            Ok(target) if target.is_dir() => {
                if self.recursive {
                    builder.plan.not_followed.push(origin());
                }
                return Entry::Dir;
            }
            Ok(target) => self.file(&target, builder),
            Err(e) => {
                let reason = match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        "a broken symbolic link: its target does not exist".to_owned()
                    }
                    _ => format!("a symbolic link that cannot be followed: {e}"),
                };
                builder.refuse(origin(), Cause::Unreadable, reason);
            }
        }
        Entry::Other
    }

    fn file(&self, path: &Path, builder: &mut Builder) {
        let origin = path.display().to_string();
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                let reason = format!("cannot read its metadata: {e}");
                return builder.refuse(origin, Cause::Unreadable, reason);
            }
        };
        if !meta.is_file() {
            let reason = "not a regular file (a FIFO, socket or device)".to_owned();
            return builder.refuse(origin, Cause::Unreadable, reason);
        }
        let Some(text) = path.to_str() else {
            return builder.refuse(
                origin,
                Cause::Invalid,
                "the path is not UTF-8, which a JSON job cannot carry".into(),
            );
        };
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        let declared = self
            .declare_type
            .then(|| super::mime::declared_type(path))
            .flatten();
        let mut job = Job {
            job_id: Some(file_job_id(path, meta.len(), mtime)),
            file: format!("file://{text}"),
            content_type: declared.map(str::to_owned),
            data_action_id: None,
            metadata: None,
        };
        apply(&mut job, self.defaults);
        if let Err(f) = job.validate() {
            return builder.refuse(origin, Cause::Invalid, f.message().to_owned());
        }
        if builder.add(origin, job) && self.declare_type {
            *builder.plan.declared.entry(declared).or_default() += 1;
        }
    }
}

/// What a directory entry counts as, for "holds no files, only subdirectories".
enum Entry {
    Dir,
    Other,
}

/// A file's job id: a digest of its absolute path, size and modification time. The
/// same file gives the same id on every run (so the worker's idempotency key is the
/// same); a file that changed is a new job.
pub fn file_job_id(path: &Path, size: u64, mtime: SystemTime) -> String {
    let stamp = match mtime.duration_since(UNIX_EPOCH) {
        Ok(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        Err(e) => format!(
            "-{}.{:09}",
            e.duration().as_secs(),
            e.duration().subsec_nanos()
        ),
    };
    let mut h = Sha256::new();
    h.update(path.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(size.to_string());
    h.update(b"\0");
    h.update(stamp);
    format!("file-{}", &hex::encode(h.finalize())[..32])
}

#[cfg(test)]
mod tests;
