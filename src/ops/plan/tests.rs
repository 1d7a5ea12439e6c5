//! Planning: stable ids, links, refusals of every kind, declared types, manifests.

use std::time::Duration;

use super::*;

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
        declare_type: false,
    };
    let walked = plan(&source, &Defaults::default()).unwrap();
    assert_eq!(walked.jobs.len(), 1, "{:?}", walked.jobs);
    assert_eq!(walked.duplicates, 1);
    let named = Source::Paths {
        paths: vec![dir.join("latest.pdf")],
        recursive: false,
        globs: vec![],
        declare_type: false,
    };
    let named = plan(&named, &Defaults::default()).unwrap();
    assert_eq!(
        named.jobs[0].id, walked.jobs[0].id,
        "the same id whether walked or named"
    );
}

fn walked(dir: &Path, recursive: bool) -> Plan {
    let source = Source::Paths {
        paths: vec![dir.to_owned()],
        recursive,
        globs: vec![],
        declare_type: true,
    };
    plan(&source, &Defaults::default()).unwrap()
}

fn reasons(plan: &Plan) -> Vec<(String, Cause, String)> {
    plan.refused
        .iter()
        .map(|r| (r.origin.clone(), r.cause, r.reason.clone()))
        .collect()
}

#[test]
fn entries_that_cannot_be_read_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    std::fs::write(dir.join("a.pdf"), b"%PDF-1.4").unwrap();
    std::os::unix::fs::symlink(dir.join("gone.pdf"), dir.join("broken.pdf")).unwrap();
    std::os::unix::fs::symlink(dir.join("loop2"), dir.join("loop1")).unwrap();
    std::os::unix::fs::symlink(dir.join("loop1"), dir.join("loop2")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let p = walked(&dir, false);
    assert_eq!(p.jobs.len(), 1);
    let got = reasons(&p);
    let at = |name: &str| dir.join(name).display().to_string();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        got[0],
        (
            at("broken.pdf"),
            Cause::Unreadable,
            "a broken symbolic link: its target does not exist".into()
        )
    );
    assert_eq!(
        (got[1].0.as_str(), got[1].1),
        (at("loop1").as_str(), Cause::Unreadable)
    );
    assert!(
        got[1]
            .2
            .starts_with("a symbolic link that cannot be followed"),
        "{got:?}"
    );
    assert_eq!(got[2].0, at("loop2"));
    assert_eq!(
        got[3],
        (
            at("pipe"),
            Cause::Unreadable,
            "not a regular file (a FIFO, socket or device)".into()
        )
    );
}

#[test]
fn a_directory_of_subdirectories_needs_recursive_and_links_to_directories_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    for sub in ["2026-01", "2026-02"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join("inv.pdf"), b"%PDF-1.4").unwrap();
    }
    std::os::unix::fs::symlink(dir.join("2026-02"), dir.join("latest")).unwrap();
    let flat = walked(&dir, false);
    assert!(flat.jobs.is_empty());
    assert_eq!(
        reasons(&flat),
        [(
            dir.display().to_string(),
            Cause::NoFiles,
            "holds no files, only 3 subdirectories: add --recursive".into()
        )]
    );
    let deep = walked(&dir, true);
    assert_eq!(deep.jobs.len(), 2);
    assert!(deep.refused.is_empty());
    assert_eq!(
        deep.not_followed,
        [dir.join("latest").display().to_string()]
    );
    // A file beside the subdirectories: the directory holds files after all.
    std::fs::write(dir.join("notes.txt"), b"x").unwrap();
    let flat = walked(&dir, false);
    assert!(flat.refused.is_empty());
    assert_eq!(
        flat.declared.get(&None),
        Some(&1),
        "a .txt declares nothing"
    );
}

#[test]
fn file_names_declare_their_type_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    for name in ["a.pdf", "b.PNG", "c.txt"] {
        std::fs::write(dir.join(name), b"x").unwrap();
    }
    let p = walked(&dir, false);
    let types: Vec<Option<String>> = p
        .jobs
        .iter()
        .map(|j| Job::parse(&j.body).unwrap().content_type)
        .collect();
    assert_eq!(
        types,
        [
            Some("application/pdf".into()),
            Some("image/png".into()),
            None
        ]
    );
    assert_eq!(
        p.declared.into_iter().collect::<Vec<_>>(),
        [
            (None, 1),
            (Some("application/pdf"), 1),
            (Some("image/png"), 1)
        ]
    );
    let plain = Source::Paths {
        paths: vec![dir.join("a.pdf")],
        recursive: false,
        globs: vec![],
        declare_type: false,
    };
    let p = plan(&plain, &Defaults::default()).unwrap();
    assert_eq!(Job::parse(&p.jobs[0].body).unwrap().content_type, None);
    assert!(p.declared.is_empty());
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
