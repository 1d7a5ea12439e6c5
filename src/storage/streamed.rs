//! The record of a chunked job: its payload is the whole file, which the worker never
//! holds. The file's pieces come as a stream and are written as they come (a
//! multipart upload for object stores, a streamed PUT over http), one piece in
//! memory at a time.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::{ObjectStoreExt, WriteMultipart};

use super::error::Cause;
use super::{Record, Storage, StorageError, Target, local_store, object_name};
use crate::config::StoragePayload;
use crate::encode::chunks::base64_len;
use crate::job::Failure;
use crate::telemetry::names;

/// Object stores take multipart uploads in parts of at least 5 MiB (S3, GCS); a
/// local directory writes each part at once, so a small one keeps memory low.
const CLOUD_PART: usize = 5 * 1024 * 1024;
const LOCAL_PART: usize = 256 * 1024;

/// Why a streamed record was not written: storage, or the file read again for it.
#[derive(Debug)]
pub enum StoreError {
    Storage(StorageError),
    Source(Failure),
}

impl From<StorageError> for StoreError {
    fn from(e: StorageError) -> Self {
        StoreError::Storage(e)
    }
}

impl Storage {
    /// Writes `record` (its `base64` and `raw` unused) with the payload of a file of
    /// `total` bytes that `pieces` yields in order, every piece but the last a
    /// multiple of 3 bytes (so their base64 texts join into the file's). Not retried
    /// inside: a failure is the job's retry or the worker's pause, which reads the
    /// pieces again.
    pub async fn write_streamed<S>(
        &self,
        record: &Record<'_>,
        total: u64,
        pieces: S,
    ) -> Result<(), StoreError>
    where
        S: Stream<Item = Result<Bytes, Failure>> + Send,
    {
        let name = object_name(record.job_id);
        let json = format!("{name}.json");
        let result = match self.payload {
            StoragePayload::None => return Ok(self.write(record).await?),
            StoragePayload::Raw => {
                self.stream(&format!("{name}.bin"), total, &[], pieces, &[], false)
                    .await?;
                return Ok(self.write(record).await?);
            }
            StoragePayload::Base64 => {
                let (head, tail) = self.frame(record);
                let length = head.len() as u64 + base64_len(total) + tail.len() as u64;
                self.stream(&json, length, &head, pieces, &tail, true).await
            }
        };
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(names::STORAGE_WRITES, "result" => label).increment(1);
        result
    }

    /// Streams `head`, the pieces (base64-encoded when `encode`), and `tail` into
    /// the object `name`, `length` bytes in all.
    async fn stream<S>(
        &self,
        name: &str,
        length: u64,
        head: &[u8],
        pieces: S,
        tail: &[u8],
        encode: bool,
    ) -> Result<(), StoreError>
    where
        S: Stream<Item = Result<Bytes, Failure>> + Send,
    {
        let convert = move |piece: Bytes| {
            if encode {
                Bytes::from(base64_simd::STANDARD.encode_type::<Vec<u8>>(&piece))
            } else {
                piece
            }
        };
        let parts = futures_util::stream::iter([Ok(Bytes::copy_from_slice(head))])
            .chain(pieces.map(move |p| p.map(convert)))
            .chain(futures_util::stream::iter([Ok(Bytes::copy_from_slice(
                tail,
            ))]));
        let fail = |cause| StoreError::Storage(StorageError::new(name, cause));
        let (store, path, part) = match &self.target {
            Target::Local { dir, store } => (
                local_store(dir, store).await.map_err(fail)?,
                object_store::path::Path::from(name),
                LOCAL_PART,
            ),
            Target::Objects { store, prefix } => {
                (store.clone(), prefix.clone().join(name), CLOUD_PART)
            }
            Target::Http {
                client,
                base,
                token,
            } => {
                let url = super::JoinSegment::join_segment(base, name);
                return put_http_streamed(client, &url, token.as_ref(), length, parts)
                    .await
                    .map_err(|e| match e {
                        Streamed::Source(f) => StoreError::Source(f),
                        Streamed::Storage(cause) => fail(cause),
                    });
            }
        };
        let upload = store
            .put_multipart(&path)
            .await
            .map_err(|e| fail(Cause::Store(e)))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
        let mut parts = std::pin::pin!(parts);
        while let Some(part) = parts.next().await {
            match part {
                Ok(bytes) => {
                    // One part uploading at a time: memory stays one part.
                    if let Err(e) = writer.wait_for_capacity(1).await {
                        return Err(fail(Cause::Store(e)));
                    }
                    writer.put(bytes);
                }
                Err(failure) => {
                    let _ = writer.abort().await;
                    return Err(StoreError::Source(failure));
                }
            }
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| fail(Cause::Store(e)))
    }
}

enum Streamed {
    Source(Failure),
    Storage(Cause),
}

/// A PUT whose body is fed from `parts` as they come, with its exact length.
async fn put_http_streamed<S>(
    client: &reqwest::Client,
    url: &url::Url,
    token: Option<&crate::config::Secret<String>>,
    length: u64,
    parts: S,
) -> Result<(), Streamed>
where
    S: Stream<Item = Result<Bytes, Failure>> + Send,
{
    // The body must be 'static: a channel carries the parts to it, one at a time.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_of(rx));
    let mut request = client
        .put(url.clone())
        .header(reqwest::header::CONTENT_LENGTH, length)
        .header(
            reqwest::header::CONTENT_TYPE,
            super::content_type_of(url.path()),
        )
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token.expose());
    }
    let feed = async move {
        let mut parts = std::pin::pin!(parts);
        while let Some(part) = parts.next().await {
            match part {
                Ok(bytes) => {
                    if tx.send(Ok(bytes)).await.is_err() {
                        return Ok(()); // the request ended first; it says why
                    }
                }
                Err(failure) => {
                    let _ = tx.send(Err(std::io::Error::other("source failed"))).await;
                    return Err(failure);
                }
            }
        }
        Ok(())
    };
    let (sent, fed) = tokio::join!(request.send(), feed);
    fed.map_err(Streamed::Source)?;
    let response = sent.map_err(|e| Streamed::Storage(Cause::Transport(e.without_url())))?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status => Err(Streamed::Storage(Cause::Status(status))),
    }
}

fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
