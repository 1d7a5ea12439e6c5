//! `s3://bucket/key`, `az://container/blob` and `gs://bucket/key`: the size from the
//! object's metadata, the bytes from one ranged GET that cannot bring more than the
//! limit, read under the minimum rate.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, GetResult, ObjectMeta, ObjectStore, ObjectStoreExt};

use super::stores::{Cloud, CloudEnv, Stores};
use super::transfer::{MinRate, Transfer};
use super::{check_size, denied, too_large};
use crate::job::{ErrorKind, Failure};

/// The buckets that references may name, and the stores that reach them.
#[derive(Debug)]
pub(crate) struct Objects {
    stores: Stores,
    /// Empty: any bucket of the configured accounts.
    buckets: Vec<String>,
    rate: MinRate,
}

/// An object whose metadata was read; its bytes not yet.
#[derive(Debug)]
pub(crate) struct OpenedObject {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) path: ObjectPath,
    pub(super) meta: ObjectMeta,
    pub(super) rate: MinRate,
    /// The reference, for messages.
    pub(super) shown: String,
}

/// A reference taken apart: which cloud, which bucket, which object.
struct Reference {
    cloud: Cloud,
    bucket: String,
    path: ObjectPath,
}

impl Objects {
    pub(crate) fn new(env: CloudEnv, buckets: Vec<String>, rate: MinRate) -> Self {
        Self {
            stores: Stores::new(env),
            buckets,
            rate,
        }
    }

    /// Checks the bucket against `FILE_BUCKETS` before any request, then reads the
    /// object's metadata and refuses it if it is empty or larger than `max`.
    pub(crate) async fn open(&self, reference: &str, max: u64) -> Result<OpenedObject, Failure> {
        let Reference {
            cloud,
            bucket,
            path,
        } = parse(reference)?;
        let shown = format!("{}://{bucket}/{path}", cloud.scheme());
        if !self.buckets.is_empty() && !self.buckets.contains(&bucket) {
            return Err(denied(format!("bucket {bucket:?} is not in FILE_BUCKETS")));
        }
        let store = self.stores.get(cloud, &bucket).map_err(|e| {
            denied(format!(
                "{}:// references are not configured: {}",
                cloud.scheme(),
                crate::telemetry::chain(&e)
            ))
        })?;
        let meta = store.head(&path).await.map_err(|e| failure(&shown, &e))?;
        check_size(meta.size, max)?;
        Ok(OpenedObject {
            store,
            path,
            meta,
            rate: self.rate,
            shown,
        })
    }
}

impl OpenedObject {
    pub(crate) fn size(&self) -> u64 {
        self.meta.size
    }

    /// Asks for the first `max + 1` bytes only, so that an object that grew since
    /// `open` costs one byte over the limit, not its whole size, before it is refused.
    pub(crate) async fn read(self, max: u64) -> Result<Bytes, Failure> {
        let range = GetRange::Bounded(0..max.saturating_add(1));
        let result = self.get(range, None).await?;
        if result.meta.size > max {
            return Err(too_large(max));
        }
        let size = self.meta.size;
        self.body(result).collect(size, size, max, None).await
    }

    /// One ranged GET; with `if_match`, refused by the store if the object changed.
    pub(super) async fn get(
        &self,
        range: GetRange,
        if_match: Option<String>,
    ) -> Result<GetResult, Failure> {
        let options = GetOptions {
            range: Some(range),
            if_match,
            ..GetOptions::default()
        };
        self.store
            .get_opts(&self.path, options)
            .await
            .map_err(|e| failure(&self.shown, &e))
    }

    /// A GET's body as a [`Transfer`].
    pub(super) fn body(&self, result: GetResult) -> Transfer {
        let shown = self.shown.clone();
        let chunks = result
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| failure(&shown, &e)));
        Transfer::new(Box::pin(chunks), self.rate, self.shown.clone())
    }
}

fn parse(reference: &str) -> Result<Reference, Failure> {
    let not_an_object = |why: &str| {
        Failure::permanent(
            ErrorKind::FileNotFound,
            // Shown without userinfo or query: either may hold a credential.
            format!(
                "{:?} does not name an object: {why}",
                super::http::shown_raw(reference)
            ),
        )
    };
    let url = url::Url::parse(reference).map_err(|e| not_an_object(&e.to_string()))?;
    let cloud = Cloud::from_scheme(url.scheme()).ok_or_else(|| not_an_object("unknown scheme"))?;
    let bucket = url
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| not_an_object("no bucket or container"))?
        .to_owned();
    let path = ObjectPath::from_url_path(url.path()).map_err(|e| not_an_object(&e.to_string()))?;
    if path.as_ref().is_empty() {
        return Err(not_an_object("no key"));
    }
    Ok(Reference {
        cloud,
        bucket,
        path,
    })
}

/// What an object store's answer means for the job.
pub(super) fn failure(shown: &str, e: &object_store::Error) -> Failure {
    use object_store::Error as E;
    match e {
        E::Precondition { .. } => Failure::retryable(format!(
            "{shown} changed while it was read (its ETag is not the one first seen)"
        )),
        E::NotFound { .. } => {
            Failure::permanent(ErrorKind::FileNotFound, format!("{shown} does not exist"))
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => denied(format!(
            "access to {shown} was refused: {}",
            crate::telemetry::chain(e)
        )),
        // 5xx after the store's own retries, timeouts, connections refused.
        _ => Failure::retryable(format!(
            "reading {shown} failed: {}",
            crate::telemetry::chain(e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(r: Result<Reference, Failure>) -> ErrorKind {
        match r {
            Err(Failure::Permanent { kind, .. }) => kind,
            Err(other) => panic!("expected a permanent failure, got {other:?}"),
            Ok(_) => panic!("expected a failure"),
        }
    }

    #[test]
    fn references_name_a_bucket_and_a_key() {
        let r = parse("s3://invoices/2026/inv%20001.pdf").unwrap();
        assert_eq!(
            (r.cloud, r.bucket.as_str(), r.path.as_ref()),
            (Cloud::S3, "invoices", "2026/inv 001.pdf")
        );
        let r = parse("az://container/blob.pdf").unwrap();
        assert_eq!((r.cloud, r.bucket.as_str()), (Cloud::Azure, "container"));
        for bad in [
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "s3://b/a//b",
            "s3://b/a%2F%2Fb",
        ] {
            assert_eq!(kind(parse(bad)), ErrorKind::FileNotFound, "{bad}");
        }
    }

    #[tokio::test]
    async fn buckets_outside_the_allowlist_are_denied_before_any_request() {
        // No credentials and no endpoint: a request would fail differently.
        let objects = Objects::new(CloudEnv::default(), vec!["allowed".into()], MinRate::OFF);
        for reference in ["s3://other/k.pdf", "az://other/k.pdf", "gs://other/k.pdf"] {
            let Err(Failure::Permanent { kind, message }) = objects.open(reference, 10).await
            else {
                panic!("{reference} must be refused");
            };
            assert_eq!(kind, ErrorKind::FileAccessDenied, "{reference}");
            assert!(message.contains("FILE_BUCKETS"), "{message}");
        }
    }

    #[tokio::test]
    async fn an_unconfigured_cloud_is_denied() {
        let objects = Objects::new(CloudEnv::default(), vec![], MinRate::OFF);
        let Err(Failure::Permanent { kind, .. }) = objects.open("az://c/k.pdf", 10).await else {
            panic!("az:// without an account must be refused");
        };
        assert_eq!(kind, ErrorKind::FileAccessDenied);
    }
}
