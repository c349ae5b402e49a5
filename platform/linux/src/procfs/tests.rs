//! Tests of the reader against the real `/proc` and against fake trees.

use super::*;
use std::os::unix::fs::symlink;
use std::process::{Child, Command};

const BOOT: &str = "0123abcd-0000-4000-8000-000000000000";
const BTIME: i64 = 1_700_000_000;
const CID: &str = "4f1c2a3b4c5d6e7f80919293949596979899aabbccddeeff0011223344556677";

/// A child killed on drop, so a failing test leaves no `sleep` behind.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- real /proc ----------------------------------------------------------

#[test]
fn reads_the_test_process_itself() {
    let r = ProcfsReader::new().unwrap();
    let me = std::process::id();
    let rec = r.read_process(me).unwrap();
    assert_eq!(rec.pid, me);
    assert_eq!(rec.ppid, Some(std::os::unix::process::parent_id()));
    assert_eq!(rec.process_key, r.key_of(me).unwrap().to_string());
    assert_eq!(rec.parent_key, Some(r.key_of(std::os::unix::process::parent_id()).unwrap().to_string()));
    let exe = std::env::current_exe().unwrap();
    assert_eq!(rec.executable_path.as_deref(), Some(exe.to_str().unwrap()));
    assert_eq!(rec.file_exists, Some(true));
    assert_eq!(rec.accessible, Some(true));
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(rec.argv.as_ref().map(|a| &a.args), Some(&args));
    assert_eq!(rec.command_line, Some(join_command_line(&args)));
    assert_eq!(rec.uid, Some(nix::unistd::getuid().as_raw()));
    assert_eq!(rec.euid, Some(nix::unistd::geteuid().as_raw()));
    assert_eq!(rec.gid, Some(nix::unistd::getgid().as_raw()));
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(rec.cwd.as_deref(), Some(cwd.to_str().unwrap()));
    assert!(rec.memory_usage.unwrap_or(0) > 0);
    assert!(rec.cgroup.is_some());
    // Started after boot, before now.
    let start = rec.start_time_ns.unwrap();
    assert!(start >= r.boot_time_ns() && start <= daemoneye_lib::models::time::now_ns());
    if nix::unistd::getuid().is_root() {
        assert_eq!(rec.user_name.as_deref(), Some("root"));
    }
}

#[test]
fn sees_a_spawned_child_and_its_parent() {
    let r = ProcfsReader::new().unwrap();
    let marker = format!("{}.{}", std::process::id(), 4711);
    let child = Reaped(Command::new("sleep").arg("30").arg(&marker).spawn().unwrap());
    let pid = child.0.id();
    // The exec may not have happened yet right after spawn: wait for it.
    let mut rec = r.read_process(pid).unwrap();
    for _ in 0..200 {
        if rec.argv.as_ref().is_some_and(|a| a.args.len() == 3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        rec = r.read_process(pid).unwrap();
    }
    assert_eq!(rec.argv.unwrap().args, vec!["sleep".to_string(), "30".into(), marker]);
    assert_eq!(rec.name.as_deref(), Some("sleep"));
    assert_eq!(rec.ppid, Some(std::process::id()));
    assert_eq!(rec.parent_key, Some(r.key_of(std::process::id()).unwrap().to_string()));
    assert!(r.pids().unwrap().contains(&pid));
    assert!(r.snapshot().iter().any(|p| p.process_key == rec.process_key));
    drop(child);
    // Reaped: gone.
    assert!(matches!(r.read_process(pid), Err(ProcfsError::Gone(p)) if p == pid));
}

#[test]
fn snapshot_is_parents_first_and_threads_are_refused() {
    let r = ProcfsReader::new().unwrap();
    let snap = r.snapshot();
    assert!(snap.iter().any(|p| p.pid == std::process::id()));
    assert!(snap.windows(2).all(|w| w[0].start_time_ns <= w[1].start_time_ns));
    // A thread of this process is not a process.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        tx.send(nix::unistd::gettid().as_raw()).unwrap();
        let _ = done_rx.recv();
    });
    let live_tid = u32::try_from(rx.recv().unwrap()).unwrap();
    assert!(matches!(
        r.read_process(live_tid),
        Err(ProcfsError::Thread { tgid, .. }) if tgid == std::process::id()
    ));
    drop(done_tx);
    t.join().unwrap();
}

#[test]
fn denied_parts_are_unknown_not_guessed() {
    // pid 1's exe is often denied even to root inside sandboxes; when it is,
    // the record says so instead of failing.
    let r = ProcfsReader::new().unwrap();
    if std::fs::read_link("/proc/1/exe").is_ok() {
        eprintln!("skipped: /proc/1/exe is readable here, nothing is denied");
        return;
    }
    let rec = r.read_process(1).unwrap();
    assert_eq!(rec.accessible, Some(false));
    assert_eq!(rec.executable_path, None);
    assert_eq!(rec.file_exists, None);
}

// ---- fake trees ------------------------------------------------------------

struct FakeProc {
    dir: tempfile::TempDir,
}

impl FakeProc {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/sys/kernel/random")).unwrap();
        std::fs::write(dir.path().join("proc/sys/kernel/random/boot_id"), format!("{BOOT}\n")).unwrap();
        std::fs::write(dir.path().join("proc/stat"), format!("cpu 1 2 3\nbtime {BTIME}\n")).unwrap();
        std::fs::write(
            dir.path().join("passwd"),
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    fn reader(&self) -> ProcfsReader {
        ProcfsReader::with_root(&self.root()).unwrap().with_passwd(&self.dir.path().join("passwd"))
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        pid: u32,
        comm: &str,
        ppid: u32,
        flags: u64,
        start: u64,
        uid: u32,
        cmdline: &[u8],
        exe: Option<&str>,
        cgroup: &str,
    ) {
        let d = self.root().join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("stat"),
            format!(
                "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 {start} \
                 0 25 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("status"),
            format!(
                "Name:\t{comm}\nTgid:\t{pid}\nPid:\t{pid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n\
                 Gid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
            ),
        )
        .unwrap();
        std::fs::write(d.join("cmdline"), cmdline).unwrap();
        std::fs::write(d.join("cgroup"), cgroup).unwrap();
        if let Some(exe) = exe {
            symlink(exe, d.join("exe")).unwrap();
            symlink("/srv/work dir", d.join("cwd")).unwrap();
        }
    }
}

#[test]
fn fake_tree_with_hostile_comm_kernel_thread_deleted_exe_and_container() {
    let f = FakeProc::new();
    f.add(1, "init", 0, 0x400100, 1, 0, b"/sbin/init\0", Some("/sbin/init"), "0::/init.scope\n");
    f.add(2, "kthreadd", 0, 0x208040, 1, 0, b"", None, "0::/\n");
    f.add(
        100,
        "we) ird (x) S 1",
        1,
        0x400100,
        500,
        1000,
        b"./we ird\0--flag=it's\0",
        Some("/opt/app/bin/app (deleted)"),
        &format!("0::/system.slice/docker-{CID}.scope\n"),
    );
    std::fs::write(f.root().join("self"), "not a pid").unwrap();
    std::fs::create_dir_all(f.root().join("sys/x")).unwrap();
    let r = f.reader();
    assert_eq!(r.boot_time_ns(), BTIME * 1_000_000_000);
    assert_eq!(r.pids().unwrap(), vec![1, 2, 100]);

    let p = r.read_process(100).unwrap();
    assert_eq!(p.name.as_deref(), Some("we) ird (x) S 1"));
    assert_eq!(p.ppid, Some(1));
    assert_eq!(p.process_key, "0123abcd-100-500");
    assert_eq!(p.parent_key.as_deref(), Some("0123abcd-1-1"));
    assert_eq!(p.executable_path.as_deref(), Some("/opt/app/bin/app"));
    assert_eq!(p.file_exists, Some(false));
    assert_eq!(p.argv.as_ref().unwrap().args, vec!["./we ird".to_string(), "--flag=it's".into()]);
    assert!(!p.argv.as_ref().unwrap().truncated);
    assert_eq!(p.command_line.as_deref(), Some(r"'./we ird' '--flag=it'\''s'"));
    assert_eq!(p.cwd.as_deref(), Some("/srv/work dir"));
    assert_eq!((p.uid, p.euid, p.gid, p.egid), (Some(1000), Some(1000), Some(1000), Some(1000)));
    assert_eq!(p.user_name.as_deref(), Some("alice"));
    assert_eq!(p.container_id.as_deref(), Some(CID));
    assert_eq!(p.cgroup, Some(format!("/system.slice/docker-{CID}.scope")));
    assert_eq!(p.start_time_ns, Some(BTIME * 1_000_000_000 + 500 * TICK_NS as i64));
    assert_eq!(p.memory_usage, Some(25 * r.page_size));
    assert_eq!(p.accessible, Some(true));
    assert_eq!(p.executable_hash, None);

    let k = r.read_process(2).unwrap();
    assert_eq!(k.name.as_deref(), Some("kthreadd"));
    assert_eq!(k.argv, None);
    assert_eq!(k.command_line, None);
    assert_eq!(k.executable_path, None);
    assert_eq!(k.file_exists, None);
    assert_eq!(k.parent_key, None);
    assert_eq!(k.container_id, None);
    assert_eq!(k.cgroup.as_deref(), Some("/"));

    let init = r.read_process(1).unwrap();
    assert_eq!(init.user_name.as_deref(), Some("root"));
    assert_eq!(init.file_exists, Some(true));

    // A child with a wrapped (smaller) pid, started in its parent's tick.
    f.add(50, "child", 100, 0x400100, 500, 1000, b"c\0", Some("/bin/c"), "0::/\n");
    let snap = r.snapshot();
    let order: Vec<u32> = snap.iter().map(|p| p.pid).collect();
    assert_eq!(order, vec![1, 2, 100, 50]);
}

#[test]
fn fake_tree_vanished_unknown_user_and_long_cmdline() {
    let f = FakeProc::new();
    let long = vec![b'a'; usize::try_from(MAX_CMDLINE_BYTES).unwrap() + 10];
    f.add(7, "big", 99, 0, 9, 4242, &long, Some("/bin/big"), "");
    let r = f.reader();
    assert!(matches!(r.read_process(8), Err(ProcfsError::Gone(8))));
    assert!(matches!(r.key_of(8), Err(ProcfsError::Gone(8))));
    let p = r.read_process(7).unwrap();
    // Parent 99 is not there: its key is unknown, not guessed.
    assert_eq!(p.parent_key, None);
    assert_eq!(p.ppid, Some(99));
    assert_eq!(p.user_name, None);
    assert_eq!(p.cgroup, None);
    let argv = p.argv.unwrap();
    assert!(argv.truncated);
    assert_eq!(argv.args[0].len() as u64, MAX_CMDLINE_BYTES);
    // A corrupt stat is a parse error naming the file, not a panic.
    std::fs::write(f.root().join("7/stat"), "garbage").unwrap();
    let err = r.read_process(7).unwrap_err();
    assert!(matches!(err, ProcfsError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("7/stat"));
    assert!(r.snapshot().is_empty());
}

#[test]
fn fake_tree_without_btime_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = ProcfsReader::with_root(dir.path()).unwrap_err();
    assert!(matches!(err, ProcfsError::Io { .. }), "{err}");
    // A reader whose root disappeared: snapshot is empty, try_snapshot says why.
    let f = FakeProc::new();
    let r = f.reader();
    std::fs::remove_dir_all(f.root()).unwrap();
    assert!(r.snapshot().is_empty());
    assert!(matches!(r.try_snapshot(), Err(ProcfsError::Io { .. })));
}

#[test]
fn container_id_from_a_cgroup_path_as_ebpf_resolves_it() {
    // eBPF exec events carry a cgroup id that resolves to a path, not a
    // /proc/<pid>/cgroup file: the same rules must apply to it.
    assert_eq!(container_id_of_cgroup_path(&format!("/system.slice/docker-{CID}.scope")).as_deref(), Some(CID));
    assert_eq!(container_id_of_cgroup_path(&format!("/kubepods/burstable/pod1/{CID}")).as_deref(), Some(CID));
    assert_eq!(container_id_of_cgroup_path(&format!("/machine.slice/libpod-conmon-{CID}.scope")), None);
    assert_eq!(container_id_of_cgroup_path("/user.slice/user-0.slice/session-1.scope"), None);
}
