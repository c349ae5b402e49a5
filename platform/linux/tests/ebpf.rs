//! The eBPF backend against the running kernel (root, BTF and the built
//! object needed; otherwise the test says why it skipped).
//!
//! Spawns known processes and checks what the programs report: exec with the
//! full argv and the right parent, exit code 7, signal 9, exactly one exit
//! for a multi-threaded process, a thread that calls exec, a cut argv that
//! is flagged, and no drops.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr, reason = "test")]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemoneye_lib::proto::{EventType, ProcessEvent};
use daemoneye_platform_linux::ebpf::{self, DEFAULT_RINGBUF_BYTES, EbpfSource};

/// Events per pid, in arrival order.
#[derive(Default)]
struct Seen {
    by_pid: HashMap<u32, Vec<ProcessEvent>>,
}

impl Seen {
    fn of(&self, pid: u32, t: EventType) -> Vec<&ProcessEvent> {
        self.by_pid.get(&pid).map(|v| v.iter().filter(|e| e.event_type() == t).collect()).unwrap_or_default()
    }
}

fn python3() -> Option<&'static str> {
    Command::new("python3").arg("-c").arg("pass").status().ok().filter(|s| s.success()).map(|_| "python3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_fork_exit_from_the_kernel() {
    if let Err(why) = ebpf::available() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut src = EbpfSource::load(DEFAULT_RINGBUF_BYTES).expect("load and attach").with_thread_forks(true);
    let me = std::process::id();
    let marker = format!("daemoneye-ebpf-test-{me}-{}", Instant::now().elapsed().as_nanos());

    // `sh -c 'exit 7'`.
    let mut sh = Command::new("/bin/sh").args(["-c", "exit 7", &marker]).spawn().unwrap();
    let sh_pid = sh.id();
    assert_eq!(sh.wait().unwrap().code(), Some(7));

    // A sleep killed by SIGKILL.
    let mut sleep = Command::new("sleep").arg("30").spawn().unwrap();
    let sleep_pid = sleep.id();
    std::thread::sleep(Duration::from_millis(50));
    sleep.kill().unwrap();
    sleep.wait().unwrap();

    // A unique argv of ~12 KiB (whole), and one over the cap (cut, flagged).
    let arg = |i: usize| if i == 0 { marker.clone() } else { format!("a-{i:05}") };
    let long: Vec<String> = (0..1500).map(arg).collect();
    let long_len: usize = long.iter().map(|a| a.len() + 1).sum::<usize>() + "true".len() + 1;
    assert!(long_len > 4096 && long_len < procmond_ebpf_common::ARGV_CAP, "{long_len}");
    let mut t = Command::new("/bin/true").args(&long).spawn().unwrap();
    let long_pid = t.id();
    t.wait().unwrap();
    let huge: Vec<String> = (0..3000).map(arg).collect();
    let mut t = Command::new("/bin/true").args(&huge).spawn().unwrap();
    let huge_pid = t.id();
    t.wait().unwrap();

    // A multi-threaded process that exits with its threads alive, and a
    // thread that calls exec.
    let py = python3();
    let mut threaded_pid = None;
    let mut thread_exec_pid = None;
    if let Some(py) = py {
        let code = "import threading,time,os\n\
                    ts=[threading.Thread(target=time.sleep,args=(5,),daemon=True) for _ in range(4)]\n\
                    [t.start() for t in ts]\ntime.sleep(0.2)\nos._exit(3)\n";
        let mut c = Command::new(py).args(["-c", code]).spawn().unwrap();
        threaded_pid = Some(c.id());
        assert_eq!(c.wait().unwrap().code(), Some(3));
        let code = format!(
            "import threading,time,os\n\
             threading.Thread(target=lambda: os.execv('/bin/sh', ['sh','-c','exit 5','{marker}'])).start()\n\
             time.sleep(5)\n"
        );
        let mut c = Command::new(py).args(["-c", &code]).stdin(Stdio::null()).spawn().unwrap();
        thread_exec_pid = Some(c.id());
        assert_eq!(c.wait().unwrap().code(), Some(5));
    } else {
        eprintln!("python3 not found: the multi-threaded cases are skipped");
    }

    // Collect until everything was seen (or 15 s).
    let mut seen = Seen::default();
    let wanted: Vec<u32> =
        [Some(sh_pid), Some(sleep_pid), Some(long_pid), Some(huge_pid), threaded_pid, thread_exec_pid]
            .into_iter()
            .flatten()
            .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut batch = Vec::new();
    let mut images = HashMap::new();
    while Instant::now() < deadline {
        if wanted.iter().all(|p| !seen.of(*p, EventType::Exit).is_empty()) {
            // Give late duplicates a chance to show.
            if tokio::time::timeout(Duration::from_millis(300), src.next_batch(&mut batch)).await.is_err() {
                break;
            }
        } else {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, src.next_batch(&mut batch)).await;
        }
        for se in batch.drain(..) {
            let e = se.event;
            if e.event_type() == EventType::Gap {
                panic!("unexpected gap: {:?}", e.gap);
            }
            let pid = e.process.as_ref().map_or(0, |p| p.pid);
            if e.event_type() == EventType::Exec {
                images.insert(pid, se.image);
            }
            seen.by_pid.entry(pid).or_default().push(e);
        }
    }

    // sh: fork from us, exec with full argv and our pid as parent, exit 7.
    let forks = seen.of(sh_pid, EventType::Fork);
    assert_eq!(forks.len(), 1, "one fork for sh: {forks:?}");
    let f = forks[0].process.as_ref().unwrap();
    assert_eq!((f.ppid, f.is_thread), (Some(me), Some(false)));
    let execs = seen.of(sh_pid, EventType::Exec);
    assert_eq!(execs.len(), 1, "{execs:?}");
    let x = execs[0].process.as_ref().unwrap();
    assert_eq!(x.ppid, Some(me));
    assert_eq!(x.argv.as_ref().unwrap().args, ["/bin/sh", "-c", "exit 7", marker.as_str()]);
    assert_eq!(x.executable_path.as_deref(), Some("/bin/sh"));
    assert_eq!(x.process_key, f.process_key, "fork and exec agree on the key");
    // The image identity (the hash cache's key) is what stat says of the
    // file that runs.
    let meta = std::fs::metadata("/bin/sh").unwrap();
    let want = {
        use std::os::unix::fs::MetadataExt;
        collector_core::FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    };
    assert_eq!(images.get(&sh_pid).copied().flatten(), Some(want), "image of /bin/sh");
    let my_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    if let Some(path) = my_cgroup.lines().find_map(|l| l.strip_prefix("0::")) {
        assert_eq!(x.cgroup.as_deref(), Some(path), "the child's cgroup is ours");
    }
    let me_key = daemoneye_platform_linux::procfs::ProcfsReader::new().unwrap().key_of(me).unwrap();
    assert_eq!(x.parent_key.as_deref(), Some(me_key.to_string().as_str()), "parent key equals /proc's");
    let exits = seen.of(sh_pid, EventType::Exit);
    assert_eq!(exits.len(), 1, "{exits:?}");
    let e = exits[0].process.as_ref().unwrap();
    assert_eq!((e.exit_code, e.signal), (Some(7), None));
    assert_eq!(e.process_key, x.process_key);

    // sleep: signal 9.
    let exits = seen.of(sleep_pid, EventType::Exit);
    assert_eq!(exits.len(), 1, "{exits:?}");
    let e = exits[0].process.as_ref().unwrap();
    assert_eq!((e.exit_code, e.signal), (None, Some(9)));

    // Long argv whole; huge argv cut and flagged.
    let x = seen.of(long_pid, EventType::Exec);
    let argv = x[0].process.as_ref().unwrap().argv.as_ref().unwrap();
    assert!(!argv.truncated);
    assert_eq!(argv.args.len(), long.len() + 1);
    assert_eq!(&argv.args[1..], long.as_slice());
    let x = seen.of(huge_pid, EventType::Exec);
    let argv = x[0].process.as_ref().unwrap().argv.as_ref().unwrap();
    assert!(argv.truncated, "an argv over the cap is flagged");
    assert!(argv.args.len() > 1000 && argv.args.len() < huge.len() + 1);

    if let (Some(tp), Some(xp)) = (threaded_pid, thread_exec_pid) {
        let exits = seen.of(tp, EventType::Exit);
        assert_eq!(exits.len(), 1, "one exit for a multi-threaded process: {exits:?}");
        assert_eq!(exits[0].process.as_ref().unwrap().exit_code, Some(3));
        let threads =
            seen.of(tp, EventType::Fork).iter().filter(|f| f.process.as_ref().unwrap().is_thread == Some(true)).count();
        assert!(threads >= 4, "thread forks seen: {threads}");

        // The thread's exec: reported under the process's pid, one exit.
        let execs = seen.of(xp, EventType::Exec);
        let sh = execs.iter().find(|e| e.process.as_ref().unwrap().executable_path.as_deref() == Some("/bin/sh"));
        let sh = sh.expect("exec of /bin/sh by a thread").process.as_ref().unwrap();
        assert_eq!(sh.argv.as_ref().unwrap().args.last(), Some(&marker));
        let exits = seen.of(xp, EventType::Exit);
        assert_eq!(exits.len(), 1, "{exits:?}");
        assert_eq!(exits[0].process.as_ref().unwrap().exit_code, Some(5));
        assert_eq!(exits[0].process.as_ref().unwrap().process_key, sh.process_key);
    }

    let drops = src.drop_counters().unwrap();
    assert_eq!(drops.lost(), 0, "{drops:?}");
}

/// A ring buffer of one page overflows under a burst; the loss comes back
/// as `gap` events whose counts add up to the kernel's drop counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_ring_buffer_reports_its_losses_as_gaps() {
    if let Err(why) = ebpf::available() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut src = EbpfSource::load(4096).expect("load and attach");
    assert_eq!(src.ring_bytes(), 4096);
    // Nobody reads while 200 processes start and end.
    for _ in 0..200 {
        Command::new("/bin/true").status().unwrap();
    }
    let mut gap_total = 0;
    let mut batch = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(500), src.next_batch(&mut batch)).await;
        for e in batch.drain(..).map(|se| se.event) {
            if let Some(gap) = &e.gap {
                assert_eq!(e.event_type(), EventType::Gap);
                assert!(gap.reason.starts_with("ebpf_ringbuf_full"), "{}", gap.reason);
                gap_total += gap.lost_events;
            }
        }
        let lost = src.drop_counters().unwrap().lost();
        if (lost > 0 && gap_total == lost) || Instant::now() > deadline {
            assert!(lost > 0, "a one-page ring buffer must overflow under 600 events");
            assert_eq!(gap_total, lost, "every lost event is in a gap");
            break;
        }
    }
}
