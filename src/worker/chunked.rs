//! A file larger than one request may carry (`MAX_REQUEST_BYTES`), sent in chunks,
//! one execution each, in order, holding one chunk in memory at a time.
//!
//! Every chunk's body names the whole file's SHA-256, so the file is read twice:
//! once to hash it and sniff its type, once to send the chunks from the first one
//! not yet executed (the job's state lists those that were, with the chunk size they
//! were cut with). A third read streams it into the storage record.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{Payload, StageSink, Step, Stopped, Worker, at};
use crate::encode::chunks::{self, Fit, Plan, base64_len};
use crate::encode::{ChunkFields, resolve_type};
use crate::job::{ErrorKind, Failure, Job};
use crate::outcome::{Report, Stage};
use crate::source::{Fetched, Pieces};
use crate::telemetry::names;

/// Pieces larger than this are hashed and encoded on the blocking pool.
const INLINE_MAX: u64 = 256 * 1024;
/// The bytes read to tell a file's type (its magic numbers are in the first few).
const SNIFF_BYTES: u64 = 8 * 1024;

/// How a file under a request cap is sent.
pub(super) enum Opened {
    /// In one request: read whole.
    Whole(Fetched),
    /// In chunks.
    Chunks(Box<Pieces>, Plan),
}

impl Worker {
    /// Opens the job's file and decides, from its size, between one request and
    /// chunks. A job that already has chunks executed goes on with their size.
    pub(super) async fn open_for_chunks(
        &self,
        report: &Report,
        job: &Job,
    ) -> Result<Opened, Stopped> {
        let mut pieces = self
            .sources
            .open_pieces(&job.file)
            .await
            .map_err(|f| self.refetch_context(report, f))
            .map_err(at(Step::Prepare))?;
        let total = pieces.size();
        if let Some(chunk_size) = report.state.chunk_size.filter(|n| *n > 0) {
            let plan = Plan {
                total,
                chunk_size,
                count: total.div_ceil(chunk_size),
            };
            return Ok(Opened::Chunks(Box::new(pieces), plan));
        }
        let format = &self.client.profile().body;
        // The type is in the body, so the body's size is known once the type is:
        // the first bytes tell it.
        let head = pieces
            .read(0, total.min(SNIFF_BYTES), &self.budget)
            .await
            .map_err(|f| self.refetch_context(report, f))
            .map_err(at(Step::Prepare))?;
        // Counted once: a whole file when it is encoded, chunks when they are hashed.
        let content_type = self
            .resolve(&head.bytes, job, false)
            .map_err(at(Step::Prepare))?;
        drop(head);
        let sha = "0".repeat(64);
        let widest = ChunkFields {
            upload_id: &report.key,
            index: total,
            count: total,
            offset: total,
            size: total,
            total_size: total,
            sha256: &sha,
            file_sha256: &sha,
        };
        let metadata = job.metadata.as_ref();
        let whole = format.overhead(&content_type, metadata, None) as u64;
        let chunk = format.overhead(&content_type, metadata, Some(&widest)) as u64;
        match chunks::fit(total, self.config.request, whole, chunk).map_err(at(Step::Prepare))? {
            Fit::Whole => {
                let fetched = pieces
                    .read(0, total, &self.budget)
                    .await
                    .map_err(|f| self.refetch_context(report, f))
                    .map_err(at(Step::Prepare))?;
                Ok(Opened::Whole(fetched))
            }
            Fit::Chunks(plan) => Ok(Opened::Chunks(Box::new(pieces), plan)),
        }
    }

    /// Sends the file in chunks, then writes its one storage record.
    pub(super) async fn run_chunks(
        &self,
        report: &mut Report,
        job: &Job,
        action: &str,
        mut pieces: Pieces,
        plan: Plan,
        sink: &dyn StageSink,
    ) -> Result<(), Stopped> {
        let file_sha256 = self
            .hash_and_sniff(report, job, &mut pieces, plan)
            .await
            .map_err(at(Step::Prepare))?;
        sink.reached(report, Stage::Encoded);
        let state = &mut report.state;
        if !state.chunks.is_empty() && state.file_sha256.as_ref() != Some(&file_sha256) {
            // Chunks of the old version were executed under keys that a new upload
            // would repeat: nothing can finish this one.
            return Err((
                Step::Prepare,
                Failure::permanent(
                    ErrorKind::FileNotFound,
                    format!(
                        "the file changed after {} of its {} chunks were executed: the version being sent is gone",
                        state.chunks.len(),
                        plan.count
                    ),
                ),
            ));
        }
        state.chunk_size = Some(plan.chunk_size);
        state.file_sha256 = Some(file_sha256.clone());
        let first = state.chunks.len() as u64;
        for index in first..plan.count {
            self.send_chunk(report, job, action, &mut pieces, plan, index, &file_sha256)
                .await?;
        }
        if first < plan.count {
            report.reach(Stage::Executed);
            sink.reached(report, Stage::Executed);
        }
        let stream = futures_util::stream::unfold((pieces, 0u64), move |(mut p, i)| async move {
            if i >= plan.count {
                return None;
            }
            let (offset, size) = plan.range(i);
            let piece = p.read(offset, size, &self.budget).await.map(|f| f.bytes);
            Some((piece, (p, i + 1)))
        });
        let payload = Payload::Pieces {
            total: plan.total,
            pieces: Box::pin(stream),
        };
        self.store(report, job, action, payload).await?;
        if self.storage.is_some() {
            sink.reached(report, Stage::Synced);
        }
        Ok(())
    }

    /// Reads the file once, a chunk at a time: its type from the first bytes, its
    /// SHA-256 from all of them.
    async fn hash_and_sniff(
        &self,
        report: &mut Report,
        job: &Job,
        pieces: &mut Pieces,
        plan: Plan,
    ) -> Result<String, Failure> {
        let mut hasher = Sha256::new();
        for index in 0..plan.count {
            let (offset, size) = plan.range(index);
            let piece = pieces
                .read(offset, size, &self.budget)
                .await
                .map_err(|f| self.refetch_context(report, f))?;
            if index == 0 {
                report.content_type = Some(self.resolve(&piece.bytes, job, true)?);
            }
            hasher = cpu(size, move || {
                hasher.update(&piece.bytes);
                hasher
            })
            .await?;
        }
        let sha = hex::encode(hasher.finalize());
        report.original_size = Some(plan.total);
        report.encoded_size = Some(base64_len(plan.total));
        report.sha256 = Some(sha.clone());
        report.reach(Stage::Encoded);
        Ok(sha)
    }

    /// The file's type from its first bytes; a refusal is counted in the summary's
    /// encodings, a success when `count_success`.
    fn resolve(&self, head: &[u8], job: &Job, count_success: bool) -> Result<String, Failure> {
        let typed = resolve_type(
            head,
            job.content_type.as_deref(),
            &self.config.allowed_types,
        );
        let counter = match typed {
            Ok(_) if !count_success => return typed,
            Ok(_) => &self.tally.encoded,
            Err(_) => &self.tally.encode_failed,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        typed
    }

    /// Reads, encodes and executes chunk `index`; its execution is recorded in the
    /// job's state, which copies of the job carry on.
    #[allow(clippy::too_many_arguments)] // one chunk's coordinates, each needed once
    async fn send_chunk(
        &self,
        report: &mut Report,
        job: &Job,
        action: &str,
        pieces: &mut Pieces,
        plan: Plan,
        index: u64,
        file_sha256: &str,
    ) -> Result<(), Stopped> {
        let (offset, size) = plan.range(index);
        let piece = pieces
            .read(offset, size, &self.budget)
            .await
            .map_err(|f| self.refetch_context(report, f))
            .map_err(at(Step::Prepare))?;
        let content_type = report.content_type.clone().unwrap_or_default();
        let (format, metadata, key) = (
            self.client.profile().body.clone(),
            job.metadata.clone(),
            report.key.clone(),
        );
        let file_sha256 = file_sha256.to_owned();
        let bytes = piece.bytes.clone();
        let body = cpu(size, move || {
            let sha = hex::encode(Sha256::digest(&bytes));
            let fields = ChunkFields {
                upload_id: &key,
                index,
                count: plan.count,
                offset,
                size,
                total_size: plan.total,
                sha256: &sha,
                file_sha256: &file_sha256,
            };
            format
                .build(&bytes, &content_type, metadata.as_ref(), Some(&fields))
                .0
        })
        .await
        .map_err(at(Step::Prepare))?;
        metrics::counter!(names::BYTES_ENCODED).increment(size);
        let executed = self
            .execute(
                action,
                &format!("{}#{index}", report.key),
                Bytes::from(body),
            )
            .await
            .map_err(at(Step::Execute))?;
        drop(piece);
        metrics::counter!(names::CHUNKS).increment(1);
        report.take_output(executed.output);
        let count = usize::try_from(plan.count).unwrap_or(usize::MAX);
        report.state.step_done(executed.execution_id, Some(count));
        Ok(())
    }
}

/// Runs `f` here when the piece is small, else on the blocking pool: hashing or
/// encoding a large piece would hold an async worker thread for milliseconds.
async fn cpu<T: Send + 'static>(
    size: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failure> {
    if size <= INLINE_MAX {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::retryable(format!("encoding task failed: {e}")))
}
