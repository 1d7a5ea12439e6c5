use std::os::unix::fs::symlink;

use super::*;
use crate::job::ErrorKind;

/// A root with a file outside it, and the fast path over that root.
struct Tree {
    root: PathBuf,
    outside: PathBuf,
    roots: CachedRoots,
    _files: super::super::file::tests::Tree,
}

/// `None` where the fast path cannot apply (the temporary directory is on tmpfs,
/// say): nothing to test there but that it stays out of the way, which
/// `every_root_elsewhere_is_left_to_the_blocking_pool` does.
fn tree() -> Option<Tree> {
    let files = super::super::file::tests::tree();
    if !(cfg!(all(target_os = "linux", target_env = "gnu")) && is_local_fs(&files.root)) {
        return None;
    }
    Some(Tree {
        root: files.root.clone(),
        outside: files.outside.clone(),
        roots: CachedRoots::new(std::slice::from_ref(&files.root)),
        _files: files,
    })
}

fn reference(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// Drops the file's pages from the page cache, as if it had never been read.
fn evict(p: &Path) {
    use std::os::fd::AsRawFd;
    let f = File::open(p).unwrap();
    f.sync_all().unwrap();
    // SAFETY: a valid descriptor; advice only.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}

#[test]
fn cached_files_are_opened_and_read_whole() {
    let Some(t) = tree() else { return };
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let p = t.root.join("big.pdf");
    std::fs::write(&p, &body).unwrap();
    let file = t.roots.open(&reference(&p), 300_000).unwrap().unwrap();
    assert_eq!(file.size, 200_000);
    // Several 64 KiB steps, then the read that finds the end.
    assert_eq!(read(&file, 300_000).unwrap().unwrap(), body);
    let sub = t.root.join("sub");
    std::fs::create_dir(&sub).unwrap();
    symlink("../big.pdf", sub.join("link.pdf")).unwrap();
    let linked = t.roots.open(&reference(&sub.join("link.pdf")), 300_000);
    assert_eq!(
        linked.unwrap().unwrap().size,
        200_000,
        "a link that stays inside"
    );
}

#[test]
fn pages_on_disk_only_are_left_to_the_blocking_pool() {
    let Some(t) = tree() else { return };
    let p = t.root.join("cold.pdf");
    std::fs::write(&p, vec![7u8; 50_000]).unwrap();
    evict(&p);
    let file = t.roots.open(&reference(&p), 100_000).unwrap().unwrap();
    assert!(read(&file, 100_000).is_none());
    assert_eq!(file.read(100_000).unwrap().len(), 50_000);
}

#[test]
fn anything_the_kernel_does_not_promise_is_left_to_the_blocking_pool() {
    let Some(t) = tree() else { return };
    symlink(&t.outside, t.root.join("out.pdf")).unwrap();
    symlink("../outside.pdf", t.root.join("rel-out.pdf")).unwrap();
    std::fs::create_dir(t.root.join("dir")).unwrap();
    let r = t.root.display();
    for refused in [
        reference(&t.outside),
        format!("file://{r}/../outside.pdf"),
        format!("file://{r}/out.pdf"),
        format!("file://{r}/rel-out.pdf"),
        format!("file://{r}/missing.pdf"),
        format!("file://{r}/dir"),
        format!("file://{r}"),
        "file://relative.pdf".into(),
        "/bare/path.pdf".into(),
    ] {
        assert!(t.roots.open(&refused, 100).is_none(), "{refused}");
    }
}

#[test]
fn the_size_checks_are_the_blocking_reads() {
    let Some(t) = tree() else { return };
    let kind = |r: Option<Result<_, Failure>>| match r {
        Some(Err(Failure::Permanent { kind, .. })) => kind,
        other => panic!(
            "expected a refusal, got {:?}",
            other.map(|r| r.map(|_: Vec<u8>| ()))
        ),
    };
    let p = t.root.join("changes.pdf");
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(
        t.roots.open(&reference(&p), 10),
        Some(Err(Failure::Permanent {
            kind: ErrorKind::EmptyFile,
            ..
        }))
    ));
    std::fs::write(&p, vec![1u8; 11]).unwrap();
    assert!(matches!(
        t.roots.open(&reference(&p), 10),
        Some(Err(Failure::Permanent {
            kind: ErrorKind::TooLarge,
            ..
        }))
    ));
    std::fs::write(&p, vec![1u8; 10]).unwrap();
    let at_limit = t.roots.open(&reference(&p), 10).unwrap().unwrap();
    assert_eq!(read(&at_limit, 10).unwrap().unwrap().len(), 10);
    std::fs::write(&p, vec![1u8; 1000]).unwrap();
    assert_eq!(kind(read(&at_limit, 10)), ErrorKind::TooLarge, "grew");
    std::fs::write(&p, b"").unwrap();
    assert_eq!(kind(read(&at_limit, 10)), ErrorKind::EmptyFile, "emptied");
    // Grown past what may be read on a runtime thread, though within the limit:
    // the blocking read takes it.
    std::fs::write(&p, vec![1u8; 10]).unwrap();
    let small = t
        .roots
        .open(&reference(&p), 10 * CACHED_READ_MAX)
        .unwrap()
        .unwrap();
    std::fs::write(&p, vec![1u8; CACHED_READ_MAX as usize + 10]).unwrap();
    assert!(read(&small, 10 * CACHED_READ_MAX).is_none());
}

#[test]
fn every_root_elsewhere_is_left_to_the_blocking_pool() {
    for elsewhere in ["/proc", "/dev/shm", "/no/such/root"] {
        let roots = CachedRoots::new(&[PathBuf::from(elsewhere)]);
        assert!(roots.roots.is_empty(), "{elsewhere}");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    if cfg!(target_os = "linux") {
        let fs = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(&root)
            .output()
            .unwrap();
        let fs = String::from_utf8_lossy(&fs.stdout).trim().to_owned();
        let expected = matches!(
            fs.as_str(),
            "ext2/ext3" | "xfs" | "btrfs" | "overlayfs" | "zfs" | "f2fs"
        );
        let roots = CachedRoots::new(std::slice::from_ref(&root));
        assert_eq!(!roots.roots.is_empty(), expected, "{fs}");
    }
}

#[test]
fn a_name_with_a_nul_byte_leaves_the_fast_path_on() {
    let Some(t) = tree() else { return };
    let p = t.root.join("ok.pdf");
    std::fs::write(&p, b"%PDF").unwrap();
    let nul = format!("file://{}/a\0b.pdf", t.root.display());
    assert!(t.roots.open(&nul, 100).is_none());
    assert!(
        t.roots.open(&reference(&p), 100).is_some(),
        "one odd name must not turn the fast path off for every file"
    );
}
