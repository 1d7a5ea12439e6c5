//! A failed storage write and the decision it drives: the deployment's problem (the
//! worker pauses: [`StorageErrorKind::Refused`], [`StorageErrorKind::Unavailable`])
//! or the record's (the job is retried: [`StorageErrorKind::Failed`]).
//!
//! The error keeps what object_store, reqwest or the file system said until
//! [`StorageError::kind`] decides, so no decision rests on a flattened message.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use reqwest::StatusCode;
use rustix::io::Errno;

/// What a failed write means for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// Storage refuses us: 401/403, permission denied, a read-only file system, a
    /// missing bucket or container, a base directory that cannot be made. No write
    /// will do better until an operator acts: pause.
    Refused,
    /// Storage cannot be reached or is failing: connections refused, DNS, timeouts,
    /// 5xx, a full disk, after the write's own short retries. Pause until it answers.
    Unavailable,
    /// This write failed for a reason of its own (a 400 naming the record, say):
    /// retry the job later.
    Failed,
}

impl StorageErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageErrorKind::Refused => "refused",
            StorageErrorKind::Unavailable => "unavailable",
            StorageErrorKind::Failed => "failed",
        }
    }

    /// Refused or unavailable: not the job's fault, the worker should pause.
    pub fn pauses(self) -> bool {
        self != StorageErrorKind::Failed
    }
}

/// A storage write that failed: which object, and why, as its source said it.
#[derive(Debug)]
pub struct StorageError {
    name: String,
    cause: Cause,
}

#[derive(Debug)]
pub(super) enum Cause {
    Store(object_store::Error),
    /// An http(s) endpoint's transport error (without its URL, which may hold a token).
    Transport(reqwest::Error),
    /// An http(s) endpoint's answer other than a success.
    Status(StatusCode),
    /// The local directory of a `file://` endpoint.
    Io(io::Error),
}

impl StorageError {
    pub(super) fn new(name: &str, cause: Cause) -> Self {
        Self {
            name: name.to_owned(),
            cause,
        }
    }

    /// The object the write was for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The decision this failure drives.
    pub fn kind(&self) -> StorageErrorKind {
        match &self.cause {
            Cause::Store(e) => store_kind(e),
            Cause::Transport(e) => transport_kind(e),
            Cause::Status(status) => status_kind(*status),
            Cause::Io(e) => io_kind(e),
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = match &self.cause {
            Cause::Store(e) => crate::telemetry::chain(e),
            Cause::Transport(e) => crate::telemetry::chain(e),
            Cause::Status(status) => format!("PUT answered {status}"),
            Cause::Io(e) => e.to_string(),
        };
        let kind = self.kind().as_str();
        write!(f, "storage write of {} failed ({kind}): {cause}", self.name)
    }
}

impl StdError for StorageError {}

fn store_kind(e: &object_store::Error) -> StorageErrorKind {
    use object_store::Error as E;
    match e {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => StorageErrorKind::Refused,
        // A write names no object that could be missing: its bucket or container is
        // (or, for a local directory, a part of its path).
        E::NotFound { .. } => StorageErrorKind::Refused,
        E::Generic { .. } => chain_kind(e),
        _ => StorageErrorKind::Failed,
    }
}

/// Reads the kinds object_store keeps in its source chain: an io error (local
/// directory), a transport error (its `HttpError`), else the status of an answer.
fn chain_kind(e: &object_store::Error) -> StorageErrorKind {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return io_kind(io);
        }
        if let Some(http) = cause.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as K;
            return match http.kind() {
                K::Connect | K::Request | K::Timeout | K::Interrupted => {
                    StorageErrorKind::Unavailable
                }
                K::Decode | K::Unknown => StorageErrorKind::Failed,
                _ => StorageErrorKind::Failed,
            };
        }
        source = cause.source();
    }
    // object_store names no public type for a status failure (its `RetryError` is
    // private): the status is only in the text, "…status code: 503 …". A redirect
    // without a Location is an S3 bucket in another region: a setting to fix.
    let text = e.to_string();
    if text.contains("redirect without LOCATION") {
        return StorageErrorKind::Refused;
    }
    match status_in(&text) {
        Some(status) => status_kind(status),
        None => StorageErrorKind::Failed,
    }
}

fn status_in(text: &str) -> Option<StatusCode> {
    let (_, rest) = text.split_once("status code: ")?;
    StatusCode::from_bytes(rest.get(..3)?.as_bytes()).ok()
}

fn status_kind(status: StatusCode) -> StorageErrorKind {
    match status.as_u16() {
        // Credentials refused, or a base path that takes no PUT (missing, moved
        // elsewhere: redirects are not followed).
        401 | 403 | 407 | 404 | 405 | 410 | 300..=399 => StorageErrorKind::Refused,
        408 | 429 | 500..=599 => StorageErrorKind::Unavailable,
        _ => StorageErrorKind::Failed,
    }
}

fn transport_kind(e: &reqwest::Error) -> StorageErrorKind {
    if e.is_builder() {
        StorageErrorKind::Failed
    } else if e.is_redirect() {
        StorageErrorKind::Refused
    } else {
        // Connection refused, DNS, TLS, timeouts, a connection cut while sending.
        StorageErrorKind::Unavailable
    }
}

fn io_kind(e: &io::Error) -> StorageErrorKind {
    if let Some(errno) = Errno::from_io_error(e) {
        return match errno {
            Errno::ACCESS | Errno::PERM | Errno::ROFS | Errno::NOTDIR | Errno::NOENT => {
                StorageErrorKind::Refused
            }
            Errno::NOSPC
            | Errno::DQUOT
            | Errno::IO
            | Errno::STALE
            | Errno::NOTCONN
            | Errno::TIMEDOUT
            | Errno::HOSTDOWN
            | Errno::MFILE
            | Errno::NFILE
            | Errno::NOMEM
            | Errno::AGAIN
            | Errno::INTR => StorageErrorKind::Unavailable,
            _ => StorageErrorKind::Failed,
        };
    }
    match e.kind() {
        io::ErrorKind::PermissionDenied
        | io::ErrorKind::ReadOnlyFilesystem
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::NotFound => StorageErrorKind::Refused,
        io::ErrorKind::StorageFull
        | io::ErrorKind::QuotaExceeded
        | io::ErrorKind::TimedOut
        | io::ErrorKind::Interrupted => StorageErrorKind::Unavailable,
        _ => StorageErrorKind::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(cause: Cause) -> StorageErrorKind {
        StorageError::new("r.json", cause).kind()
    }

    #[test]
    fn answers_of_an_http_endpoint_map_to_decisions() {
        use StorageErrorKind::{Failed, Refused, Unavailable};
        for (code, want) in [
            (401, Refused),
            (403, Refused),
            (404, Refused),
            (405, Refused),
            (301, Refused),
            (408, Unavailable),
            (429, Unavailable),
            (500, Unavailable),
            (503, Unavailable),
            (400, Failed),
            (409, Failed),
            (413, Failed),
            (422, Failed),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(of(Cause::Status(status)), want, "{code}");
        }
    }

    #[test]
    fn errors_of_a_local_directory_map_to_decisions() {
        use StorageErrorKind::{Failed, Refused, Unavailable};
        let errno = |e: Errno| Cause::Io(io::Error::from_raw_os_error(e.raw_os_error()));
        for (e, want) in [
            (Errno::ACCESS, Refused),
            (Errno::PERM, Refused),
            (Errno::ROFS, Refused),
            (Errno::NOTDIR, Refused),
            (Errno::NOENT, Refused),
            (Errno::NOSPC, Unavailable),
            (Errno::DQUOT, Unavailable),
            (Errno::IO, Unavailable),
            (Errno::STALE, Unavailable),
            (Errno::ISDIR, Failed),
            (Errno::NAMETOOLONG, Failed),
        ] {
            assert_eq!(of(errno(e)), want, "{e:?}");
        }
        // Wrapped by object_store's local store, the io error still decides.
        let wrapped = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(io::Error::from_raw_os_error(Errno::ROFS.raw_os_error())),
        };
        assert_eq!(of(Cause::Store(wrapped)), Refused);
    }

    #[test]
    fn statuses_are_read_from_object_store_text() {
        assert_eq!(
            status_in(
                "Error performing PUT http://x in 1ms - Server returned non-2xx status code: 503 Service Unavailable: slow down"
            ),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(status_in("no status here"), None);
        assert_eq!(status_in("status code: 5"), None);
    }
}
