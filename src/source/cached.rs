//! The fast path for `file://`: open and read a file on the runtime thread when the
//! kernel promises that neither waits on a disk or the network. A trip to the
//! blocking pool costs two thread switches, more than opening and reading a cached
//! 10 KB file together. Whatever the kernel does not promise goes to the blocking
//! pool as before (`file.rs`), which also says why a path is refused.
//!
//! The open is `openat2` beneath a root's directory with `RESOLVE_BENEATH` (no
//! escape, by `..` or by a link), `RESOLVE_NO_XDEV` (no other mount, so no network
//! file system below a local root) and `RESOLVE_CACHED` (every step already in the
//! kernel's cache: no disk read). The read is `preadv2` with `RWF_NOWAIT`: only
//! what the page cache holds.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::check_size;
use super::file::{OpenedFile, local_path, normalize};
use crate::job::Failure;

/// Files up to this size may be read on a runtime thread: copying that much out of
/// the page cache takes microseconds. Larger ones go to the blocking pool.
pub(crate) const CACHED_READ_MAX: u64 = 256 * 1024;

/// The roots on local disks, open, to resolve paths beneath them.
#[derive(Debug, Default)]
pub(crate) struct CachedRoots {
    roots: Vec<(PathBuf, OwnedFd)>,
    /// The kernel has no `RESOLVE_CACHED` (before 5.12), or a sandbox forbids
    /// `openat2`: every file goes to the blocking pool.
    unsupported: AtomicBool,
}

impl CachedRoots {
    /// The roots (canonical) that lie on local file systems. Network file systems
    /// (NFS, SMB, FUSE) are left out: opening a file there may wait on the network
    /// even when the path is cached. So are tmpfs and ramfs, which cannot read
    /// with `RWF_NOWAIT`.
    pub(crate) fn new(roots: &[PathBuf]) -> Self {
        Self {
            roots: roots
                .iter()
                .filter(|root| is_local_fs(root))
                .filter_map(|root| Some((root.clone(), open_dir(root).ok()?)))
                .collect(),
            unsupported: AtomicBool::new(false),
        }
    }

    /// Opens the file `reference` names, when the kernel can do it without waiting.
    /// `None` when it cannot promise that, or the open fails for any reason: the
    /// caller then opens it on the blocking pool.
    pub(crate) fn open(&self, reference: &str, max: u64) -> Option<Result<OpenedFile, Failure>> {
        if self.roots.is_empty()
            || !reference.starts_with("file://")
            || self.unsupported.load(Ordering::Relaxed)
        {
            return None;
        }
        let path = local_path(reference);
        if !path.is_absolute() {
            return None;
        }
        let lexical = normalize(path);
        let (root, dir) = self
            .roots
            .iter()
            .find(|(root, _)| lexical.starts_with(root))?;
        let relative = lexical.strip_prefix(root).ok()?;
        // A NUL byte would reach openat2 as EINVAL, the sign of a kernel without
        // RESOLVE_CACHED: the blocking path refuses such a name instead.
        if relative.as_os_str().is_empty() || relative.as_os_str().as_encoded_bytes().contains(&0) {
            return None;
        }
        let file = match open_beneath(dir, relative) {
            Ok(fd) => File::from(fd),
            Err(e) => {
                // EINVAL: no RESOLVE_CACHED; ENOSYS or EPERM: no openat2 (old
                // kernel, seccomp). Asking again would fail again.
                if matches!(e, Errno::INVAL | Errno::NOSYS | Errno::PERM) {
                    self.unsupported.store(true, Ordering::Relaxed);
                }
                return None;
            }
        };
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let size = meta.len();
        Some(check_size(size, max).map(|()| OpenedFile { file, size }))
    }
}

/// Reads `file` only from the page cache. `None` when it is (or grew) larger than
/// [`CACHED_READ_MAX`], part of it is not cached, the file system cannot promise not
/// to wait, or reading fails: the caller then reads it with [`OpenedFile::read`] on
/// the blocking pool, which also reports errors. Same checks as that read: a file
/// that grew past `max` or became empty is refused.
#[cfg(target_os = "linux")]
pub(crate) fn read(file: &OpenedFile, max: u64) -> Option<Result<Vec<u8>, Failure>> {
    use rustix::io::{ReadWriteFlags, preadv2};
    use std::io::IoSliceMut;
    if file.size > CACHED_READ_MAX {
        return None;
    }
    let cap = max.min(CACHED_READ_MAX);
    // One byte past the cap tells a file that grew.
    let limit = cap + 1;
    // Zeroed, not spare capacity: rustix reads into initialized memory only. Up to
    // 256 KiB, that costs less than the read; larger ones come zeroed from the kernel.
    // +1: room for the read that finds the end of the file.
    let mut buf = vec![0u8; (file.size.min(cap) + 1) as usize];
    let mut filled = 0usize;
    while (filled as u64) < limit {
        if filled == buf.len() {
            let room = (limit - filled as u64).min(64 * 1024) as usize;
            buf.resize(filled + room, 0);
        }
        let want = (buf.len() - filled).min((limit - filled as u64) as usize);
        let mut iov = [IoSliceMut::new(&mut buf[filled..filled + want])];
        match preadv2(&file.file, &mut iov, filled as u64, ReadWriteFlags::NOWAIT) {
            Ok(0) => break,
            Ok(n) => filled += n,
            // EAGAIN: not cached; EOPNOTSUPP: this file system would wait.
            Err(_) => return None,
        }
    }
    buf.truncate(filled);
    if buf.len() as u64 > cap && cap < max {
        return None;
    }
    Some(check_size(buf.len() as u64, max).map(|()| buf))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn read(_file: &OpenedFile, _max: u64) -> Option<Result<Vec<u8>, Failure>> {
    None
}

fn open_dir(root: &Path) -> io::Result<OwnedFd> {
    // O_PATH: a handle to resolve paths from, which needs no read permission.
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(root, flags, Mode::empty())?)
}

#[cfg(target_os = "linux")]
fn open_beneath(dir: &OwnedFd, relative: &Path) -> Result<OwnedFd, Errno> {
    // Non-blocking: a FIFO must not wait for a writer.
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH
        | ResolveFlags::NO_XDEV
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::CACHED;
    rustix::fs::openat2(dir, relative, flags, Mode::empty(), resolve)
}

#[cfg(not(target_os = "linux"))]
fn open_beneath(_dir: &OwnedFd, _relative: &Path) -> Result<OwnedFd, Errno> {
    Err(Errno::NOSYS)
}

#[cfg(target_os = "linux")]
fn is_local_fs(path: &Path) -> bool {
    // ext2-4, XFS, Btrfs, overlayfs (containers), ZFS, F2FS.
    const LOCAL: [u32; 6] = [
        0xEF53,
        0x5846_5342,
        0x9123_683E,
        0x794C_7630,
        0x2FC1_2FC1,
        0xF2F5_2010,
    ];
    match rustix::fs::statfs(path) {
        // The magic numbers are 32 bits; f_type's width varies by architecture.
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => LOCAL.contains(&(st.f_type as u32)),
        Err(_) => false,
    }
}

#[cfg(not(target_os = "linux"))]
fn is_local_fs(_path: &Path) -> bool {
    false
}

#[cfg(test)]
#[path = "cached_tests.rs"]
mod tests;
