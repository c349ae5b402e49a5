//! Tests of the executable hasher on real files.
#![cfg(unix)]

use super::*;
use std::io::Write;
use std::process::Command;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256sum`'s answer, when the tool is installed.
fn sha256sum(path: &Path) -> Option<String> {
    let out = Command::new("sha256sum").arg(path).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

fn write(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn matches_sha256_and_sha256sum_and_caches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prog");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write(&path, &bytes);
    let h = Hasher::new(10 << 20, 16);
    let first = h.hash_path(&path).unwrap();
    assert_eq!(first.hex, sha256_hex(&bytes));
    assert_eq!(first.algorithm, "sha256");
    assert!(!first.from_cache);
    match sha256sum(&path) {
        Some(expected) => assert_eq!(first.hex, expected),
        None => eprintln!("sha256sum not installed: compared with the sha2 crate only"),
    }
    let second = h.hash_path(&path).unwrap();
    assert!(second.from_cache);
    assert_eq!(second.hex, first.hex);
    let st = h.stats();
    assert_eq!((st.hashed, st.cache_hits, st.cache_entries), (1, 1, 1));
    assert_eq!(st.bytes_hashed, bytes.len() as u64);
}

#[test]
fn empty_file_and_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty");
    write(&path, b"");
    let h = Hasher::new(1 << 30, 16);
    assert_eq!(h.hash_path(&path).unwrap().hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    let exe = std::env::current_exe().unwrap();
    let expected = sha256_hex(&std::fs::read(&exe).unwrap());
    assert_eq!(h.hash_path(&exe).unwrap().hex, expected);
}

#[test]
fn modified_and_touched_files_are_rehashed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    write(&path, b"version one");
    let h = Hasher::new(1 << 20, 16);
    let v1 = h.hash_path(&path).unwrap();
    // Rewrite in place (same inode, new contents, new mtime/ctime).
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap().write_all(b"version two").unwrap();
    let v2 = h.hash_path(&path).unwrap();
    assert!(!v2.from_cache);
    assert_eq!(v2.hex, sha256_hex(b"version two"));
    assert_ne!(v1.hex, v2.hex);
    // Touch only: same bytes, new times: re-hashed, same digest.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    drop(f);
    let v3 = h.hash_path(&path).unwrap();
    assert!(!v3.from_cache);
    assert_eq!(v3.hex, v2.hex);
    // Replaced by rename (new inode).
    let tmp = dir.path().join("f.new");
    write(&tmp, b"version three");
    std::fs::rename(&tmp, &path).unwrap();
    let v4 = h.hash_path(&path).unwrap();
    assert!(!v4.from_cache);
    assert_eq!(v4.hex, sha256_hex(b"version three"));
}

#[test]
fn a_file_changed_during_the_read_is_not_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    write(&path, b"stable");
    let h = Hasher::new(1 << 20, 16);
    let p2 = path.clone();
    let err = h
        .hash_path_with(&path, &mut || {
            std::fs::OpenOptions::new().append(true).open(&p2).unwrap().write_all(b" grown").unwrap();
        })
        .unwrap_err();
    assert!(matches!(err, HashError::Changed { .. }), "{err}");
    assert!(err.is_transient());
    assert_eq!(h.stats().changed, 1);
    assert_eq!(h.stats().cache_entries, 0);
    // Once it is quiet, it hashes.
    assert_eq!(h.hash_path(&path).unwrap().hex, sha256_hex(b"stable grown"));
}

#[test]
fn symlinks_oversized_dirs_and_fifos_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    write(&target, b"0123456789");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let h = Hasher::new(5, 16);
    let err = h.hash_path(&link).unwrap_err();
    assert!(matches!(err, HashError::Symlink { .. }), "{err}");
    let err = h.hash_path(&target).unwrap_err();
    assert!(matches!(err, HashError::TooLarge { size: 10, max: 5, .. }), "{err}");
    assert!(err.to_string().contains("limit"));
    let err = h.hash_path(dir.path()).unwrap_err();
    assert!(matches!(err, HashError::NotRegular { kind: "directory", .. }), "{err}");
    let fifo = dir.path().join("fifo");
    nix_mkfifo(&fifo);
    // Must not block waiting for a writer.
    let err = h.hash_path(&fifo).unwrap_err();
    assert!(matches!(err, HashError::NotRegular { kind: "FIFO", .. }), "{err}");
    let err = h.hash_path(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, HashError::Io { .. }), "{err}");
    let st = h.stats();
    assert_eq!((st.refused, st.errors, st.hashed), (4, 1, 0));
}

fn nix_mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn proc_exe_hashes_the_running_image_even_when_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sleep-copy");
    let sleep = ["/bin/sleep", "/usr/bin/sleep"].into_iter().map(Path::new).find(|p| p.exists());
    let Some(sleep) = sleep else {
        eprintln!("skipped: no sleep binary");
        return;
    };
    let bytes = std::fs::read(sleep).unwrap();
    write(&copy, &bytes);
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = Command::new(&copy).arg("30").spawn().unwrap();
    // Wait for the exec to complete (exe points at the copy).
    let link = PathBuf::from(format!("/proc/{}/exe", child.id()));
    for _ in 0..200 {
        if std::fs::read_link(&link).is_ok_and(|t| t.to_string_lossy().contains("sleep-copy")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::fs::remove_file(&copy).unwrap();
    let h = Hasher::new(1 << 30, 16);
    let out = h.hash_path(&link);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(out.unwrap().hex, sha256_hex(&bytes));
    assert!(is_proc_exe_link(Path::new("/proc/self/exe")));
    assert!(is_proc_exe_link(Path::new("/proc/12/task/13/exe")));
    assert!(!is_proc_exe_link(Path::new("/proc/12/cwd")));
    assert!(!is_proc_exe_link(Path::new("/proc//exe")));
    assert!(!is_proc_exe_link(Path::new("/tmp/proc/1/exe")));
}

#[test]
fn cache_is_bounded_and_keeps_hot_entries() {
    let dir = tempfile::tempdir().unwrap();
    let h = Hasher::new(1 << 20, 3);
    let paths: Vec<PathBuf> = (0..6)
        .map(|i| {
            let p = dir.path().join(format!("f{i}"));
            write(&p, format!("file {i}").as_bytes());
            p
        })
        .collect();
    h.hash_path(&paths[0]).unwrap();
    for p in &paths[1..] {
        // Keep f0 hot.
        assert!(h.hash_path(&paths[0]).unwrap().from_cache);
        h.hash_path(p).unwrap();
        assert!(h.stats().cache_entries <= 3);
    }
    assert!(h.hash_path(&paths[0]).unwrap().from_cache);
    assert!(!h.hash_path(&paths[1]).unwrap().from_cache);
    let off = Hasher::new(1 << 20, 0);
    off.hash_path(&paths[0]).unwrap();
    assert!(!off.hash_path(&paths[0]).unwrap().from_cache);
}

#[test]
fn cached_answers_only_for_a_known_unchanged_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prog");
    write(&path, b"first contents");
    let h = Hasher::new(1 << 20, 16);
    // Not hashed yet: no answer, no read.
    assert!(h.cached(&path).unwrap().is_none());
    let hashed = h.hash_path(&path).unwrap();
    let hit = h.cached(&path).unwrap().expect("cached after hashing");
    assert_eq!(hit.hex, hashed.hex);
    assert!(hit.from_cache);
    // A rewrite changes size/mtime/ctime: the cache no longer answers.
    write(&path, b"second, longer contents");
    assert!(h.cached(&path).unwrap().is_none());
    // A symlink is not followed; a missing file is an error the caller sees.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    h.hash_path(&path).unwrap();
    assert!(h.cached(&link).unwrap().is_none());
    let missing = h.cached(&dir.path().join("gone")).unwrap_err();
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
}
