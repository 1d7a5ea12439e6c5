//! What `enqueue` will publish: files, directories or an NDJSON manifest turned into
//! contract jobs, each validated and given a stable id, before anything is sent.
//!
//! Planning the whole input first gives the progress bar its total and lets
//! `--strict` refuse a bad manifest before a single job is published.

use std::collections::HashMap;
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
    /// explicitly named file is always taken).
    Paths {
        paths: Vec<PathBuf>,
        recursive: bool,
        globs: Vec<String>,
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
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub jobs: Vec<Planned>,
    pub refused: Vec<Refusal>,
    /// Inputs that repeat a job already planned, body and all.
    pub duplicates: u64,
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
                    Ok(job) => builder.add(origin, job),
                    Err(reason) => builder.refuse(origin, reason),
                }
            }
        }
        Source::Paths {
            paths,
            recursive,
            globs,
        } => {
            for path in paths {
                match std::fs::canonicalize(path) {
                    Err(e) => builder.refuse(path.display().to_string(), e.to_string()),
                    Ok(abs) if abs.is_dir() => {
                        walk(&abs, *recursive, globs, defaults, &mut builder)
                    }
                    Ok(abs) => add_file(&abs, defaults, &mut builder),
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
    fn add(&mut self, origin: String, job: Job) {
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
                self.refuse(origin, reason);
            }
            return;
        }
        self.seen.insert(id.clone(), (origin, digest));
        self.plan.jobs.push(Planned { id, body });
    }

    fn refuse(&mut self, origin: String, reason: String) {
        self.plan.refused.push(Refusal { origin, reason });
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

/// Files of `dir` in name order (so runs and their progress are reproducible),
/// descending into subdirectories with `recursive`. Symbolic links to files are taken;
/// links to directories are not followed, so a loop cannot trap the walk.
fn walk(dir: &Path, recursive: bool, globs: &[String], defaults: &Defaults, builder: &mut Builder) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return builder.refuse(dir.display().to_string(), e.to_string()),
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if recursive {
                walk(&path, recursive, globs, defaults, builder);
            }
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !globs.is_empty() && !globs.iter().any(|g| super::glob::matches(g, &name)) {
            continue;
        }
        // A link is enqueued as the file it points to: its id is that file's, so a
        // link beside its target (`latest.pdf -> inv-003.pdf`) is one job, not two
        // under two keys. Links to directories are not followed.
        let path = if kind.is_symlink() {
            match std::fs::canonicalize(&path) {
                Ok(target) if target.is_file() => target,
                _ => continue,
            }
        } else {
            path
        };
        add_file(&path, defaults, builder);
    }
}

fn add_file(path: &Path, defaults: &Defaults, builder: &mut Builder) {
    let origin = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return builder.refuse(origin, e.to_string()),
    };
    let Some(text) = path.to_str() else {
        return builder.refuse(
            origin,
            "the path is not UTF-8, which a JSON job cannot carry".into(),
        );
    };
    let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
    let mut job = Job {
        job_id: Some(file_job_id(path, meta.len(), mtime)),
        file: format!("file://{text}"),
        content_type: None,
        data_action_id: None,
        metadata: None,
    };
    apply(&mut job, defaults);
    match job.validate() {
        Ok(()) => builder.add(origin, job),
        Err(f) => builder.refuse(origin, f.message().to_owned()),
    }
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
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn file_ids_are_stable_and_change_with_the_file() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = file_job_id(Path::new("/in/a.pdf"), 10, t);
        assert_eq!(a, file_job_id(Path::new("/in/a.pdf"), 10, t));
        assert!(a.starts_with("file-") && a.len() == 37);
        assert_ne!(a, file_job_id(Path::new("/in/a.pdf"), 11, t));
        assert_ne!(
            a,
            file_job_id(Path::new("/in/a.pdf"), 10, t + Duration::from_nanos(1))
        );
        assert_ne!(a, file_job_id(Path::new("/in/b.pdf"), 10, t));
    }

    #[test]
    fn a_link_beside_its_target_is_one_job() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        std::fs::write(dir.join("inv-003.pdf"), b"%PDF-1.4").unwrap();
        std::os::unix::fs::symlink(dir.join("inv-003.pdf"), dir.join("latest.pdf")).unwrap();
        let source = Source::Paths {
            paths: vec![dir.clone()],
            recursive: false,
            globs: vec![],
        };
        let walked = plan(&source, &Defaults::default()).unwrap();
        assert_eq!(walked.jobs.len(), 1, "{:?}", walked.jobs);
        assert_eq!(walked.duplicates, 1);
        let named = Source::Paths {
            paths: vec![dir.join("latest.pdf")],
            recursive: false,
            globs: vec![],
        };
        let named = plan(&named, &Defaults::default()).unwrap();
        assert_eq!(
            named.jobs[0].id, walked.jobs[0].id,
            "the same id whether walked or named"
        );
    }

    #[test]
    fn manifest_lines_get_defaults_without_overriding() {
        let mut defaults = Defaults {
            data_action_id: Some("flag-action".into()),
            ..Defaults::default()
        };
        defaults.metadata.insert("source".into(), "backfill".into());
        defaults.metadata.insert("batch".into(), "7".into());
        let job = manifest_job(
            r#"{"file":"s3://b/k","data_action_id":"own","metadata":{"source":"billing"}}"#,
            &defaults,
        )
        .unwrap();
        assert_eq!(job.data_action_id.as_deref(), Some("own"));
        let m = job.metadata.unwrap();
        assert_eq!(
            (m["source"].as_str(), m["batch"].as_str()),
            (Some("billing"), Some("7"))
        );
        let job = manifest_job(r#"{"file":"s3://b/k"}"#, &defaults).unwrap();
        assert_eq!(job.data_action_id.as_deref(), Some("flag-action"));
    }

    #[test]
    fn bad_lines_say_why() {
        let d = Defaults::default();
        assert!(
            manifest_job("{not json", &d)
                .unwrap_err()
                .starts_with("not a contract job")
        );
        assert!(
            manifest_job(r#"{"file":"s3://b/k","fle":1}"#, &d)
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            manifest_job(r#"{"file":"/tmp/x"}"#, &d)
                .unwrap_err()
                .contains("is not a file://")
        );
    }

    #[test]
    fn repeats_are_duplicates_and_conflicts_are_refused() {
        let mut b = Builder::default();
        let job = |file: &str| Job {
            job_id: Some("j1".into()),
            file: file.into(),
            content_type: None,
            data_action_id: None,
            metadata: None,
        };
        b.add("m:1".into(), job("s3://b/1"));
        b.add("m:2".into(), job("s3://b/1"));
        b.add("m:3".into(), job("s3://b/2"));
        assert_eq!(
            (b.plan.jobs.len(), b.plan.duplicates, b.plan.refused.len()),
            (1, 1, 1)
        );
        assert!(b.plan.refused[0].reason.contains("m:1"));
    }
}
