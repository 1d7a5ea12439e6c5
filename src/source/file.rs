//! `file://` references: only inside `FILE_ROOTS`, after resolving `..` and symbolic
//! links, and only regular files.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

pub(crate) use super::fs_errors::io_failure;
use super::{check_size, denied};
use crate::job::{ErrorKind, Failure};

/// Which local paths may be read. `Any` serves `cxone-worker encode`, where the
/// operator names a file on their own disk.
#[derive(Debug, Clone)]
pub(crate) enum Roots {
    Only(Vec<PathBuf>),
    Any,
}

/// A local file, opened and checked, ready to be read.
#[derive(Debug)]
pub(crate) struct OpenedFile {
    pub(super) file: File,
    pub(super) size: u64,
}

impl OpenedFile {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Reads at most `max + 1` bytes, whatever the file has grown to since it was
    /// opened, so that a growing file costs no more memory than the limit.
    pub(crate) fn read(self, max: u64) -> Result<Vec<u8>, Failure> {
        let expected = self.size.min(max) as usize;
        let mut buf = Vec::with_capacity(expected);
        (&self.file)
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io_failure("cannot read the file", &e))?;
        check_size(buf.len() as u64, max)?;
        Ok(buf)
    }
}

/// Opens the file a `file://` reference names, and checks its size from metadata
/// before a byte is read. Blocking: call from `spawn_blocking`.
///
/// The path is first opened with `O_PATH`, which opens nothing (no device driver,
/// no FIFO, no socket) and needs no read permission; the kernel then says where
/// the descriptor really points (`/proc/self/fd`) and what it is (`fstat`). Only a
/// regular file inside the roots is then opened for reading, through that same
/// descriptor: no window between the checks and the open. Only a failed open walks
/// the path to tell "outside the roots" from "missing".
pub(crate) fn open(reference: &str, roots: &Roots, max: u64) -> Result<OpenedFile, Failure> {
    let path = local_path(reference);
    if !path.is_absolute() {
        return Err(denied(format!(
            "{:?} is not an absolute path",
            crate::text::redact_url(reference)
        )));
    }
    let (handle, path) = match roots {
        Roots::Any => (
            open_path(path).map_err(|e| io_failure("cannot open the file", &e))?,
            path.to_path_buf(),
        ),
        Roots::Only(roots) => {
            if roots.is_empty() {
                return Err(denied(
                    "file:// references are disabled (FILE_ROOTS is empty)",
                ));
            }
            let lexical = normalize(path);
            match open_path(&lexical) {
                Ok(handle) => {
                    check_inside(&handle, &lexical, roots, path)?;
                    (handle, lexical)
                }
                // Missing, or not reachable: was it inside the roots at all?
                Err(e) => {
                    confine(path, roots)?;
                    return Err(io_failure("cannot open the file", &e));
                }
            }
        }
    };
    let meta = handle
        .metadata()
        .map_err(|e| io_failure("cannot read the file's metadata", &e))?;
    if !meta.is_file() {
        return Err(Failure::permanent(
            ErrorKind::FileNotFound,
            format!(
                "{} is not a regular file but {}",
                path.display(),
                what_it_is(&meta)
            ),
        ));
    }
    let file = reopen(&handle, &meta, &path).map_err(|e| io_failure("cannot open the file", &e))?;
    let size = meta.len();
    check_size(size, max)?;
    Ok(OpenedFile { file, size })
}

/// A handle on whatever `path` leads to (links followed), opened for nothing.
fn open_path(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
}

/// Opens for reading the regular file `handle` points at. Without /proc, opens
/// `path` again and makes sure it is still the same file.
fn reopen(handle: &File, meta: &Metadata, path: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let by_handle = format!("/proc/self/fd/{}", handle.as_raw_fd());
    match open_nonblocking(Path::new(&by_handle)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !Path::new("/proc/self").exists() => {
            let file = open_nonblocking(path)?;
            let now = file.metadata()?;
            if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
                return Err(io::Error::other(
                    "the file was replaced while it was opened",
                ));
            }
            Ok(file)
        }
        opened => opened,
    }
}

/// What a file that is not a regular file is, for the message.
fn what_it_is(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

/// The path a `file://` reference (or a bare path, for `encode`) names.
pub(super) fn local_path(reference: &str) -> &Path {
    Path::new(
        reference
            .strip_prefix("file://localhost")
            .or_else(|| reference.strip_prefix("file://"))
            .unwrap_or(reference),
    )
}

/// Opens for reading without blocking on a FIFO that slipped in between a check and
/// the open (which would wait for a writer); regular files read the same with or
/// without the flag.
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Refuses an open file that really lies outside `roots`, whatever path led to it.
fn check_inside(
    file: &File,
    lexical: &Path,
    roots: &[PathBuf],
    shown: &Path,
) -> Result<(), Failure> {
    use std::os::fd::AsRawFd;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        // No /proc: resolve the path instead (the file is open, so it exists).
        .or_else(|_| lexical.canonicalize())
        .map_err(|e| io_failure("cannot resolve the file's path", &e))?;
    if roots.iter().any(|root| real.starts_with(root)) {
        Ok(())
    } else {
        Err(denied(format!("{} is outside FILE_ROOTS", shown.display())))
    }
}

/// Resolves `path` to the canonical path it leads to, and refuses it unless that
/// lies inside one of `roots` (canonical themselves). The refusal does not depend on
/// whether the file exists, so nothing about the outside is revealed.
fn confine(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, Failure> {
    if roots.is_empty() {
        return Err(denied(
            "file:// references are disabled (FILE_ROOTS is empty)",
        ));
    }
    let lexical = normalize(path);
    let (resolved, exists) = resolve_existing_prefix(&lexical);
    if !roots.iter().any(|root| resolved.starts_with(root)) {
        return Err(denied(format!("{} is outside FILE_ROOTS", path.display())));
    }
    if !exists {
        return Err(Failure::permanent(
            ErrorKind::FileNotFound,
            format!("{} does not exist", path.display()),
        ));
    }
    Ok(resolved)
}

/// Removes `.` and resolves `..` without touching the file system; `..` at the top
/// stays at `/`, as the kernel does.
pub(super) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Canonicalizes the longest existing ancestor of `path` (resolving every symbolic
/// link in it) and appends the rest, which cannot hold links since it does not exist.
fn resolve_existing_prefix(path: &Path) -> (PathBuf, bool) {
    let mut missing = Vec::new();
    let mut current = path.to_path_buf();
    loop {
        match current.canonicalize() {
            Ok(canonical) => {
                let exists = missing.is_empty();
                let full = missing
                    .iter()
                    .rev()
                    .fold(canonical, |acc, part| acc.join(part));
                return (full, exists);
            }
            Err(_) => match (current.file_name().map(ToOwned::to_owned), current.parent()) {
                (Some(name), Some(parent)) => {
                    missing.push(name);
                    current = parent.to_path_buf();
                }
                _ => return (path.to_path_buf(), false),
            },
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A root (`in`) in a temporary directory, with a file beside it, outside.
    pub(in crate::source) struct Tree {
        _dir: tempfile::TempDir,
        pub(in crate::source) root: PathBuf,
        pub(in crate::source) outside: PathBuf,
    }

    pub(in crate::source) fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let root = base.join("in");
        std::fs::create_dir(&root).unwrap();
        let outside = base.join("outside.pdf");
        std::fs::write(&outside, b"%PDF-1.4 secret").unwrap();
        Tree {
            _dir: dir,
            root,
            outside,
        }
    }

    fn kind_of(r: Result<OpenedFile, Failure>) -> ErrorKind {
        match r {
            Err(Failure::Permanent { kind, .. }) => kind,
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }

    fn open_in(t: &Tree, reference: &str, max: u64) -> Result<OpenedFile, Failure> {
        open(reference, &Roots::Only(vec![t.root.clone()]), max)
    }

    #[test]
    fn reads_a_file_inside_the_roots() {
        let t = tree();
        let p = t.root.join("a.pdf");
        std::fs::write(&p, b"%PDF-1.4 hello").unwrap();
        let opened = open_in(&t, &format!("file://{}", p.display()), 100).unwrap();
        assert_eq!(opened.size(), 14);
        assert_eq!(opened.read(100).unwrap(), b"%PDF-1.4 hello");
        let dotted = format!("file://{}/./sub/../a.pdf", t.root.display());
        std::fs::create_dir(t.root.join("sub")).unwrap();
        assert!(
            open_in(&t, &dotted, 100).is_ok(),
            ".. that stays inside is fine"
        );
    }

    #[test]
    fn escapes_are_denied_whether_or_not_the_target_exists() {
        let t = tree();
        symlink(&t.outside, t.root.join("link.pdf")).unwrap();
        symlink(t.outside.parent().unwrap(), t.root.join("dirlink")).unwrap();
        let r = t.root.display();
        for reference in [
            format!("file://{}", t.outside.display()),
            format!("file://{r}/../outside.pdf"),
            format!("file://{r}/../nowhere.pdf"),
            format!("file://{r}/link.pdf"),
            format!("file://{r}/dirlink/outside.pdf"),
            format!("file://{r}/dirlink/missing.pdf"),
            format!("file://{r}/../../../../etc/passwd"),
            "file://relative/path.pdf".to_string(),
            "file:///etc/passwd".to_string(),
        ] {
            assert_eq!(
                kind_of(open_in(&t, &reference, 100)),
                ErrorKind::FileAccessDenied,
                "{reference}"
            );
        }
    }

    #[test]
    fn links_inside_the_roots_are_followed() {
        let t = tree();
        std::fs::write(t.root.join("real.pdf"), b"%PDF").unwrap();
        symlink(t.root.join("real.pdf"), t.root.join("alias.pdf")).unwrap();
        let opened = open_in(&t, &format!("file://{}/alias.pdf", t.root.display()), 100).unwrap();
        assert_eq!(opened.size(), 4);
    }

    #[test]
    fn no_roots_means_no_file_references() {
        let t = tree();
        let r = open(
            &format!("file://{}", t.outside.display()),
            &Roots::Only(vec![]),
            100,
        );
        assert_eq!(kind_of(r), ErrorKind::FileAccessDenied);
    }

    #[test]
    fn missing_and_non_regular_files_are_not_found() {
        let t = tree();
        let r = t.root.display();
        assert_eq!(
            kind_of(open_in(&t, &format!("file://{r}/missing.pdf"), 100)),
            ErrorKind::FileNotFound
        );
        assert_eq!(
            kind_of(open_in(&t, &format!("file://{r}/no/such/dir.pdf"), 100)),
            ErrorKind::FileNotFound
        );
        std::fs::create_dir(t.root.join("adir")).unwrap();
        assert_eq!(
            kind_of(open_in(&t, &format!("file://{r}/adir"), 100)),
            ErrorKind::FileNotFound
        );
    }

    #[test]
    fn boundary_sizes() {
        let t = tree();
        let at = |n: usize| {
            let p = t.root.join(format!("f{n}"));
            std::fs::write(&p, vec![7u8; n]).unwrap();
            format!("file://{}", p.display())
        };
        assert_eq!(kind_of(open_in(&t, &at(0), 10)), ErrorKind::EmptyFile);
        assert_eq!(open_in(&t, &at(1), 10).unwrap().read(10).unwrap().len(), 1);
        assert_eq!(
            open_in(&t, &at(10), 10).unwrap().read(10).unwrap().len(),
            10
        );
        assert_eq!(kind_of(open_in(&t, &at(11), 10)), ErrorKind::TooLarge);
    }

    #[test]
    fn a_file_that_grows_after_the_check_is_cut_at_max_plus_one() {
        let t = tree();
        let p = t.root.join("grows");
        std::fs::write(&p, vec![1u8; 5]).unwrap();
        let opened = open_in(&t, &format!("file://{}", p.display()), 10).unwrap();
        std::fs::write(&p, vec![1u8; 1000]).unwrap();
        let Err(Failure::Permanent { kind, .. }) = opened.read(10) else {
            panic!("a grown file must be refused");
        };
        assert_eq!(kind, ErrorKind::TooLarge);
    }

    #[test]
    fn a_file_emptied_after_the_check_is_empty() {
        let t = tree();
        let p = t.root.join("shrinks");
        std::fs::write(&p, vec![1u8; 5]).unwrap();
        let opened = open_in(&t, &format!("file://{}", p.display()), 10).unwrap();
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(
            opened.read(10),
            Err(Failure::Permanent {
                kind: ErrorKind::EmptyFile,
                ..
            })
        ));
    }

    #[test]
    fn unreadable_files_are_denied() {
        use std::os::unix::fs::PermissionsExt;
        let t = tree();
        let p = t.root.join("locked.pdf");
        std::fs::write(&p, b"%PDF").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        // root reads anything: only check the mapping where permissions apply.
        if File::open(&p).is_err() {
            assert_eq!(
                kind_of(open_in(&t, &format!("file://{}", p.display()), 100)),
                ErrorKind::FileAccessDenied
            );
        } else {
            let e = io::Error::from(io::ErrorKind::PermissionDenied);
            assert!(matches!(
                io_failure("x", &e),
                Failure::Permanent {
                    kind: ErrorKind::FileAccessDenied,
                    ..
                }
            ));
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let t = tree();
        let fifo = t.root.join("pipe.pdf");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let reference = format!("file://{}", fifo.display());
        let roots = Roots::Only(vec![t.root.clone()]);
        std::thread::spawn(move || tx.send(open(&reference, &roots, 100).map(|f| f.size())));
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("opening a FIFO must not wait for a writer");
        assert!(
            matches!(
                got,
                Err(Failure::Permanent {
                    kind: ErrorKind::FileNotFound,
                    ..
                })
            ),
            "{got:?}"
        );
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../../x")), PathBuf::from("/x"));
    }
}
