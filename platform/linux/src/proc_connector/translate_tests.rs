//! Translation against the real `/proc`: live processes are enriched, gone
//! ones keep the identity their fork gave them.

use super::*;
use std::process::{Child, Command};

/// A child killed on drop, so a failing test leaves no `sleep` behind.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mono_now() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    u64::try_from(t.tv_sec() * 1_000_000_000 + t.tv_nsec()).unwrap()
}

fn translator() -> Translator {
    Translator::new(ProcfsReader::new().unwrap())
}

fn one(t: &mut Translator, ev: &ProcEvent) -> Option<ProcessEvent> {
    let mut out = Vec::new();
    t.translate(ev, &mut out);
    assert!(out.len() <= 1, "{out:?}");
    out.pop()
}

fn fork(parent: u32, child: u32, child_tgid: u32) -> ProcEvent {
    ProcEvent::Fork {
        cpu: 0,
        seq: 0,
        parent_pid: parent,
        parent_tgid: parent,
        child_pid: child,
        child_tgid,
        timestamp_ns: mono_now(),
    }
}

fn exec(pid: u32) -> ProcEvent {
    ProcEvent::Exec { cpu: 0, seq: 0, pid, tgid: pid, timestamp_ns: mono_now() }
}

fn exit(pid: u32, tgid: u32, status: u32) -> ProcEvent {
    ProcEvent::Exit {
        cpu: 0,
        seq: 0,
        pid,
        tgid,
        exit_code: status,
        exit_signal: 17,
        parent_pid: 1,
        parent_tgid: 1,
        timestamp_ns: mono_now(),
    }
}

#[test]
fn wait_status_splits_into_code_or_signal() {
    assert_eq!(split_status(0), (Some(0), None));
    assert_eq!(split_status(7 << 8), (Some(7), None));
    assert_eq!(split_status(9), (None, Some(9)));
    // Killed with a core dump: the 0x80 bit is not part of the signal.
    assert_eq!(split_status(0x80 | 11), (None, Some(11)));
}

#[test]
fn skipped_message_numbers_are_counted_per_cpu() {
    let mut t = translator();
    assert!(t.check_seq(0, 10).is_none(), "the first number is the base");
    assert!(t.check_seq(1, 500).is_none());
    assert!(t.check_seq(0, 11).is_none());
    let gap = t.check_seq(0, 15).unwrap();
    assert_eq!(gap.gap.as_ref().map(|g| (g.lost_events, g.reason.as_str())), Some((3, REASON_SEQ_GAP)));
    assert_eq!(gap.event_type(), EventType::Gap);
    assert!(t.check_seq(1, 501).is_none(), "CPUs count separately");
    assert!(t.check_seq(2, u32::MAX).is_none());
    assert!(t.check_seq(2, 0).is_none(), "wrapping is not a loss");
    assert!(t.check_seq(2, 1).is_none());
}

#[test]
fn a_live_exec_is_enriched_from_proc() {
    let child = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = child.0.id();
    // spawn returns once exec has begun; under load the new image's argv
    // can appear in /proc a moment later, as it would for the connector.
    let cmdline = format!("/proc/{pid}/cmdline");
    for _ in 0..500 {
        if std::fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"sleep\0")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut t = translator();
    let ev = one(&mut t, &exec(pid)).unwrap();
    assert_eq!(ev.event_type(), EventType::Exec);
    assert_eq!(ev.source(), EventSource::ProcConnector);
    let p = ev.process.unwrap();
    assert_eq!(p.pid, pid);
    assert_eq!(p.ppid, Some(std::process::id()));
    assert_eq!(p.process_key, t.reader().key_of(pid).unwrap().to_string());
    assert_eq!(p.parent_key, Some(t.reader().key_of(std::process::id()).unwrap().to_string()));
    assert_eq!(p.argv.map(|a| a.args), Some(vec!["sleep".to_owned(), "30".to_owned()]));
    // The exit that follows uses the same key.
    let ex = one(&mut t, &exit(pid, pid, 9)).unwrap();
    let q = ex.process.unwrap();
    assert_eq!((q.process_key, q.exit_code, q.signal), (p.process_key, None, Some(9)));
    assert!(q.exit_time_ns.is_some());
}

#[test]
fn a_gone_process_keeps_the_identity_its_fork_gave_it() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    // Its fork message as the kernel would have sent it: we read it late.
    let fork_msg = fork(std::process::id(), pid, pid);
    child.wait().unwrap();
    let mut t = translator();
    let f = one(&mut t, &fork_msg).unwrap();
    assert_eq!(f.event_type(), EventType::Fork);
    let fp = f.process.unwrap();
    assert_eq!(fp.ppid, Some(std::process::id()));
    assert_eq!(fp.parent_key, Some(t.reader().key_of(std::process::id()).unwrap().to_string()));
    assert!(fp.process_key.contains(&format!("-{pid}-")), "{}", fp.process_key);
    let e = one(&mut t, &exec(pid)).unwrap().process.unwrap();
    assert_eq!((e.pid, &e.process_key, e.ppid), (pid, &fp.process_key, Some(std::process::id())));
    assert_eq!(e.argv, None, "argv unknown, not empty");
    assert_eq!(e.executable_path, None);
    let x = one(&mut t, &exit(pid, pid, 7 << 8)).unwrap().process.unwrap();
    assert_eq!((&x.process_key, x.exit_code, x.signal), (&fp.process_key, Some(7), None));
    assert_eq!(t.known_len(), 0, "the exit forgets the pid");
}

#[test]
fn threads_are_not_processes_and_unknown_gone_execs_are_counted() {
    let mut t = translator();
    let me = std::process::id();
    assert!(one(&mut t, &fork(me, me + 1, me)).is_none(), "a new thread");
    assert!(one(&mut t, &exit(me + 1, me, 0)).is_none(), "a thread's exit");
    // A pid that does not exist (beyond pid_max) and was never seen.
    let gap = one(&mut t, &exec(u32::MAX - 1)).unwrap();
    assert_eq!(gap.gap.map(|g| (g.lost_events, g.reason)), Some((1, REASON_UNIDENTIFIED.to_owned())));
    assert!(one(&mut t, &exit(u32::MAX - 1, u32::MAX - 1, 0)).is_none(), "never seen, nothing to end");
}
