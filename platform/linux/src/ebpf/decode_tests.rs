use super::*;
use procmond_ebpf_common::{ARGV_CAP, FILENAME_CAP};

const BOOT: &str = "3f2a9b1c-aaaa-bbbb-cccc-000000000000";
const BOOT_NS: i64 = 1_700_000_000_000_000_000;

fn ctx() -> DecodeContext {
    DecodeContext { boot_id: BOOT.into(), boot_time_ns: BOOT_NS }
}

/// The bytes of a `#[repr(C)]` event as the kernel writes them.
fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    let len = size_of::<T>();
    // SAFETY: the event types are `#[repr(C)]` with explicit padding
    // fields, every field initialised, so all `len` bytes are initialised.
    #[allow(unsafe_code)]
    let s = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), len) };
    s.to_vec()
}

fn comm(s: &str) -> [u8; TASK_COMM_LEN] {
    let mut c = [0u8; TASK_COMM_LEN];
    c[..s.len()].copy_from_slice(s.as_bytes());
    c
}

fn exec_event(flags: u32, filename: &[u8], argv: &[u8]) -> Vec<u8> {
    let mut data = [0u8; FILENAME_CAP + ARGV_CAP];
    data[..filename.len()].copy_from_slice(filename);
    data[filename.len()..filename.len() + argv.len()].copy_from_slice(argv);
    let ev = ExecEvent {
        header: EventHeader { kind: EVENT_EXEC, flags, time_boot_ns: 5_000_000_000 },
        tgid: 4242,
        old_pid: 4243,
        ppid: 100,
        uid: 1000,
        gid: 1001,
        euid: 0,
        egid: 1002,
        filename_len: filename.len() as u32,
        argv_len: argv.len() as u32,
        argv_full_len: argv.len() as u32,
        image_dev: (8 << 20) | 3,
        reserved: 0,
        start_boottime_ns: 123_456_789_000,
        parent_start_boottime_ns: 1_000_000_000,
        cgroup_id: 77,
        image_ino: 131_075,
        image_size: 125_560,
        image_mtime_sec: 1_700_000_001,
        image_ctime_sec: 1_700_000_002,
        image_mtime_nsec: 5,
        // Bit 31: multigrain ctime's "queried" flag, not part of the time.
        image_ctime_nsec: (1 << 31) | 6,
        comm: comm("sh"),
        data,
    };
    // The kernel sends only the used part.
    let mut b = bytes_of(&ev);
    b.truncate(EXEC_FIXED_LEN + filename.len() + argv.len());
    b
}

#[test]
fn exec_carries_identity_argv_and_times() {
    let d = decode(&ctx(), &exec_event(0, b"/bin/sh", b"sh\0-c\0exit 7\0")).unwrap();
    assert_eq!(d.cgroup_id, Some(77));
    assert!(!d.is_thread);
    // /dev/sda3 is 8:3, st_dev 0x803.
    let image = collector_core::FileIdentity {
        dev: 0x803,
        ino: 131_075,
        size: 125_560,
        mtime: (1_700_000_001, 5),
        ctime: (1_700_000_002, 6),
    };
    assert_eq!(d.image, Some(image));
    assert_eq!(
        decode(&ctx(), &exec_event(EXEC_IMAGE_UNREADABLE, b"/bin/sh", b"sh\0")).unwrap().image,
        None,
        "no image without its inode"
    );
    let e = d.event;
    assert_eq!(e.event_type(), EventType::Exec);
    assert_eq!(e.source(), EventSource::Ebpf);
    assert_eq!(e.event_time_ns, BOOT_NS + 5_000_000_000);
    let p = e.process.unwrap();
    assert_eq!(p.pid, 4242);
    assert_eq!(p.ppid, Some(100));
    assert_eq!(p.process_key, "3f2a9b1c-4242-12345");
    assert_eq!(p.parent_key.as_deref(), Some("3f2a9b1c-100-100"));
    assert_eq!(p.name.as_deref(), Some("sh"));
    assert_eq!(p.executable_path.as_deref(), Some("/bin/sh"));
    let argv = p.argv.unwrap();
    assert_eq!(argv.args, ["sh", "-c", "exit 7"]);
    assert!(!argv.truncated);
    assert_eq!(p.command_line.as_deref(), Some("sh -c 'exit 7'"));
    assert_eq!((p.uid, p.gid, p.euid, p.egid), (Some(1000), Some(1001), Some(0), Some(1002)));
    assert_eq!(p.start_time_ns, Some(BOOT_NS + 123_456_789_000));
    assert_eq!(p.exit_code, None);
}

#[test]
fn exec_flags_mark_what_is_missing_or_cut() {
    let flags = EXEC_ARGV_TRUNCATED | EXEC_CRED_UNREADABLE | PARENT_UNREADABLE;
    let p = decode(&ctx(), &exec_event(flags, b"/x", b"a\0bb\0partia")).unwrap().event.process.unwrap();
    let argv = p.argv.unwrap();
    assert_eq!(argv.args, ["a", "bb", "partia"]);
    assert!(argv.truncated);
    assert_eq!((p.uid, p.euid, p.ppid, p.parent_key), (None, None, None, None));

    let flags = EXEC_ARGV_UNREADABLE | EXEC_FILENAME_UNREADABLE;
    let p = decode(&ctx(), &exec_event(flags, b"", b"")).unwrap().event.process.unwrap();
    assert_eq!((p.argv, p.command_line, p.executable_path), (None, None, None));
}

#[test]
fn exec_with_full_size_argv_decodes() {
    let argv = vec![b'x'; ARGV_CAP];
    let p = decode(&ctx(), &exec_event(EXEC_ARGV_TRUNCATED, &[b'/'; FILENAME_CAP - 1], &argv))
        .unwrap()
        .event
        .process
        .unwrap();
    assert_eq!(p.argv.unwrap().args[0].len(), ARGV_CAP);
    assert_eq!(p.executable_path.unwrap().len(), FILENAME_CAP - 1);
}

#[test]
fn exec_shorter_than_its_lengths_is_an_error() {
    let mut b = exec_event(0, b"/bin/true", b"true\0");
    b.truncate(b.len() - 1);
    assert!(matches!(decode(&ctx(), &b), Err(DecodeError::Short { kind: EVENT_EXEC, .. })));
}

fn fork_event(flags: u32) -> Vec<u8> {
    bytes_of(&ForkEvent {
        header: EventHeader { kind: EVENT_FORK, flags, time_boot_ns: 7 },
        parent_tgid: 100,
        parent_pid: 101,
        child_tgid: if flags & FORK_THREAD != 0 { 100 } else { 200 },
        child_pid: if flags & FORK_THREAD != 0 { 102 } else { 200 },
        child_ppid: 100,
        reserved: 0,
        child_start_boottime_ns: 2_000_000_000,
        parent_start_boottime_ns: 1_000_000_000,
        comm: comm("bash"),
    })
}

#[test]
fn fork_tells_processes_from_threads() {
    let d = decode(&ctx(), &fork_event(0)).unwrap();
    assert!(!d.is_thread);
    assert_eq!(d.event.event_type(), EventType::Fork);
    let p = d.event.process.unwrap();
    assert_eq!((p.pid, p.ppid, p.is_thread), (200, Some(100), Some(false)));
    assert_eq!(p.process_key, "3f2a9b1c-200-200");
    assert_eq!(p.parent_key.as_deref(), Some("3f2a9b1c-100-100"));
    assert_eq!(p.name.as_deref(), Some("bash"));

    let d = decode(&ctx(), &fork_event(FORK_THREAD)).unwrap();
    assert!(d.is_thread);
    let p = d.event.process.unwrap();
    // A thread is reported under its process's key.
    assert_eq!((p.pid, p.is_thread, p.ppid), (100, Some(true), None));
    assert_eq!(p.process_key, "3f2a9b1c-100-200");
}

fn exit_event(status: u32) -> Vec<u8> {
    bytes_of(&ExitEvent {
        header: EventHeader { kind: EVENT_EXIT, flags: 0, time_boot_ns: 9_000_000_000 },
        tgid: 4242,
        pid: 4250,
        exit_status: status,
        reserved: 0,
        start_boottime_ns: 123_456_789_000,
        comm: comm("sleep"),
    })
}

#[test]
fn exit_splits_code_and_signal() {
    let e = decode(&ctx(), &exit_event(7 << 8)).unwrap().event;
    assert_eq!(e.event_type(), EventType::Exit);
    let p = e.process.unwrap();
    assert_eq!((p.pid, p.exit_code, p.signal), (4242, Some(7), None));
    assert_eq!(p.process_key, "3f2a9b1c-4242-12345");
    assert_eq!(p.exit_time_ns, Some(BOOT_NS + 9_000_000_000));

    let p = decode(&ctx(), &exit_event(9)).unwrap().event.process.unwrap();
    assert_eq!((p.exit_code, p.signal), (None, Some(9)));
    // Core dump bit is not part of the signal.
    let p = decode(&ctx(), &exit_event(0x80 | 11)).unwrap().event.process.unwrap();
    assert_eq!(p.signal, Some(11));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(matches!(decode(&ctx(), &[]), Err(DecodeError::Short { kind: 0, .. })));
    assert!(matches!(decode(&ctx(), &[9, 0, 0, 0]), Err(DecodeError::UnknownKind { kind: 9 })));
    let fork = fork_event(0);
    assert!(decode(&ctx(), &fork[..fork.len() - 1]).is_err());
    for len in 0..200 {
        let mut b = exec_event(0, b"/bin/sh", b"sh\0");
        b.truncate(len);
        let _ = decode(&ctx(), &b);
    }
}

#[test]
fn argv_splitting() {
    assert!(split_argv(b"").is_empty());
    assert_eq!(split_argv(b"\0"), [""]);
    assert_eq!(split_argv(b"a\0\0b\0"), ["a", "", "b"]);
    assert_eq!(split_argv(b"a\0b"), ["a", "b"]);
}
