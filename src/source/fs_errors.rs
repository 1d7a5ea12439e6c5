//! What an error of the local file system means for a `file://` job: its own fault
//! (and which error kind), the deployment's, or one that may pass by itself.
//!
//! Every errno that opening (`O_PATH`, then the reopen for reading), `fstat` and
//! `read` can give is sorted here, so that a reference that can never be read ends at
//! once instead of being retried for a quarter of an hour.

use std::io;

use rustix::io::Errno;

use super::denied;
use crate::job::{ErrorKind, Failure};

/// Whose fault an error is, and so what becomes of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The reference names something that will never be read: fail the job now.
    Job(ErrorKind),
    /// The machine or its file systems are failing (descriptors exhausted, a network
    /// file system gone): not the job's fault, and no other `file://` job will fare
    /// better until an operator acts.
    Deployment,
    /// Worth another attempt later.
    Transient,
}

/// Sorts an error of `open`, `fstat` or `read`.
pub(crate) fn fault(e: &io::Error) -> Fault {
    match Errno::from_io_error(e) {
        Some(errno) => by_errno(errno),
        None => by_kind(e.kind()),
    }
}

fn by_errno(errno: Errno) -> Fault {
    use Fault::{Deployment, Job, Transient};
    match errno {
        // Nothing there, or nothing that is a file: a directory in the path is a
        // file, a name too long, a loop of links, a socket (ENXIO), a device without
        // a driver, a directory, an object unsuitable for reading (EINVAL).
        Errno::NOENT
        | Errno::NOTDIR
        | Errno::NAMETOOLONG
        | Errno::LOOP
        | Errno::NXIO
        | Errno::NODEV
        | Errno::ISDIR
        | Errno::INVAL
        | Errno::OPNOTSUPP => Job(ErrorKind::FileNotFound),
        Errno::ACCESS | Errno::PERM => Job(ErrorKind::FileAccessDenied),
        // Larger than offsets can say: certainly over MAX_PAYLOAD_BYTES.
        Errno::OVERFLOW | Errno::FBIG => Job(ErrorKind::TooLarge),
        // Out of descriptors or memory, a network file system that is gone or
        // unreachable, a medium removed, a kernel without the call.
        Errno::MFILE
        | Errno::NFILE
        | Errno::NOMEM
        | Errno::NOBUFS
        | Errno::STALE
        | Errno::NOTCONN
        | Errno::TIMEDOUT
        | Errno::HOSTDOWN
        | Errno::HOSTUNREACH
        | Errno::NETDOWN
        | Errno::NETUNREACH
        | Errno::CONNREFUSED
        | Errno::CONNRESET
        | Errno::CONNABORTED
        | Errno::NOLINK
        | Errno::REMOTEIO
        | Errno::SHUTDOWN
        | Errno::NOMEDIUM
        | Errno::NOSYS => Deployment,
        // A lease being broken (EWOULDBLOCK on a non-blocking open), a signal, a
        // lock, and EIO or corruption reports: those hit one file (a bad sector) as
        // often as a whole disk, so the job is retried and the others go on.
        _ => Transient,
    }
}

/// Errors with no errno: made by the standard library itself.
fn by_kind(kind: io::ErrorKind) -> Fault {
    match kind {
        io::ErrorKind::NotFound
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::InvalidFilename
        // A NUL byte in the path: no file has that name.
        | io::ErrorKind::InvalidInput => Fault::Job(ErrorKind::FileNotFound),
        io::ErrorKind::PermissionDenied => Fault::Job(ErrorKind::FileAccessDenied),
        io::ErrorKind::FileTooLarge => Fault::Job(ErrorKind::TooLarge),
        io::ErrorKind::OutOfMemory => Fault::Deployment,
        _ => Fault::Transient,
    }
}

/// The job's failure for an error of the local file system. `what` says which step.
pub(crate) fn io_failure(what: &str, e: &io::Error) -> Failure {
    match fault(e) {
        Fault::Job(ErrorKind::FileAccessDenied) => denied(format!("{what}: {e}")),
        Fault::Job(kind) => Failure::permanent(kind, format!("{what}: {e}")),
        // No pause for a source yet (job::Systemic has no cause for it): retried, and
        // the message says whose fault it is.
        Fault::Deployment => Failure::retryable(format!(
            "{what}: {e} (a fault of the file system or the machine, not of the job)"
        )),
        Fault::Transient => Failure::retryable(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(errno: Errno) -> Fault {
        fault(&io::Error::from_raw_os_error(errno.raw_os_error()))
    }

    #[test]
    fn every_errno_has_its_decision() {
        use Fault::{Deployment, Job, Transient};
        let not_found = Job(ErrorKind::FileNotFound);
        for (errno, want) in [
            (Errno::NOENT, not_found),
            (Errno::NOTDIR, not_found),
            (Errno::NAMETOOLONG, not_found),
            (Errno::LOOP, not_found),
            (Errno::NXIO, not_found),
            (Errno::NODEV, not_found),
            (Errno::ISDIR, not_found),
            (Errno::INVAL, not_found),
            (Errno::OPNOTSUPP, not_found),
            (Errno::ACCESS, Job(ErrorKind::FileAccessDenied)),
            (Errno::PERM, Job(ErrorKind::FileAccessDenied)),
            (Errno::OVERFLOW, Job(ErrorKind::TooLarge)),
            (Errno::FBIG, Job(ErrorKind::TooLarge)),
            (Errno::MFILE, Deployment),
            (Errno::NFILE, Deployment),
            (Errno::NOMEM, Deployment),
            (Errno::STALE, Deployment),
            (Errno::NOTCONN, Deployment),
            (Errno::TIMEDOUT, Deployment),
            (Errno::HOSTDOWN, Deployment),
            (Errno::NOMEDIUM, Deployment),
            (Errno::NOSYS, Deployment),
            (Errno::AGAIN, Transient),
            (Errno::INTR, Transient),
            (Errno::IO, Transient),
            (Errno::BUSY, Transient),
            (Errno::NOLCK, Transient),
            (Errno::UCLEAN, Transient),
        ] {
            assert_eq!(of(errno), want, "{errno:?}");
        }
        assert_eq!(
            fault(&io::Error::new(io::ErrorKind::InvalidInput, "nul byte")),
            not_found
        );
        assert_eq!(fault(&io::Error::other("anything else")), Fault::Transient);
    }

    #[test]
    fn failures_say_the_decision() {
        let e = io::Error::from_raw_os_error(Errno::NXIO.raw_os_error());
        assert!(matches!(
            io_failure("cannot open the file", &e),
            Failure::Permanent {
                kind: ErrorKind::FileNotFound,
                ..
            }
        ));
        let e = io::Error::from_raw_os_error(Errno::MFILE.raw_os_error());
        let Failure::Retryable { message } = io_failure("cannot open the file", &e) else {
            panic!("EMFILE is not the job's fault");
        };
        assert!(message.contains("not of the job"), "{message}");
    }
}
