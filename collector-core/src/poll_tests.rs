//! Tests of the poll diffing (scripted enumerator) and of the sysinfo
//! enumerator on the real machine.

use super::*;
use crate::sysinfo_enum::SysinfoEnumerator;
use daemoneye_lib::proto::Argv;
use std::collections::VecDeque;

fn rec(pid: u32, start: i64, parent: Option<&str>, exe: &str, args: &[&str]) -> ProcessRecord {
    ProcessRecord {
        pid,
        process_key: format!("b-{pid}-{start}"),
        parent_key: parent.map(str::to_owned),
        start_time_ns: Some(start),
        executable_path: Some(exe.into()),
        argv: Some(Argv { args: args.iter().map(|s| s.to_string()).collect(), truncated: false }),
        ..ProcessRecord::default()
    }
}

fn kinds(events: &[ProcessEvent]) -> Vec<(EventType, String)> {
    events.iter().map(|e| (e.event_type(), e.process.as_ref().unwrap().process_key.clone())).collect()
}

#[test]
fn first_round_is_a_snapshot_parents_first() {
    let mut d = Differ::new(proto::EventSource::Procfs);
    // Child listed first and starting in the same (coarse) tick as its
    // parent, with a smaller pid (pid wrap).
    let child = rec(5, 100, Some("b-900-100"), "/bin/sh", &["sh"]);
    let parent = rec(900, 100, Some("b-1-1"), "/sbin/init", &["init"]);
    let init = rec(1, 1, None, "/sbin/init", &["init"]);
    let ev = d.round(vec![child, parent, init], 7);
    assert_eq!(
        kinds(&ev),
        vec![
            (EventType::Snapshot, "b-1-1".into()),
            (EventType::Snapshot, "b-900-100".into()),
            (EventType::Snapshot, "b-5-100".into()),
        ]
    );
    assert!(ev.iter().all(|e| e.source() == proto::EventSource::Procfs && e.seq == 0 && e.event_time_ns == 7));
    // Nothing changed: nothing to say.
    let again = vec![rec(1, 1, None, "/sbin/init", &["init"])];
    let ev = d.round(again, 8);
    // Children exit before their parents.
    assert_eq!(kinds(&ev), vec![(EventType::Exit, "b-5-100".into()), (EventType::Exit, "b-900-100".into())]);
    assert!(d.round(vec![rec(1, 1, None, "/sbin/init", &["init"])], 9).is_empty());
}

#[test]
fn new_vanished_reused_and_exec_in_place() {
    let mut d = Differ::new(proto::EventSource::Procfs);
    d.round(
        vec![rec(1, 1, None, "/sbin/init", &["init"]), rec(42, 50, Some("b-1-1"), "/bin/sleep", &["sleep", "9"])],
        1,
    );
    // pid 42 reused by a new process; pid 43 new child of it; pid 1 execs in place.
    let round = vec![
        rec(43, 300, Some("b-42-200"), "/bin/cat", &["cat"]),
        rec(42, 200, Some("b-1-1"), "/bin/bash", &["bash"]),
        rec(1, 1, None, "/lib/systemd/systemd", &["init"]),
    ];
    let ev = d.round(round, 2);
    assert_eq!(
        kinds(&ev),
        vec![
            (EventType::Exit, "b-42-50".into()),
            (EventType::Exec, "b-1-1".into()),
            (EventType::Exec, "b-42-200".into()),
            (EventType::Exec, "b-43-300".into()),
        ]
    );
    let exit = ev[0].process.as_ref().unwrap();
    assert_eq!((exit.pid, exit.exit_time_ns, exit.exit_code), (42, Some(2), None));
    assert_eq!(exit.executable_path, None, "exit is a delta: identity and exit time only");
    assert!(ev.iter().all(|e| e.source() == proto::EventSource::Poll));
    assert_eq!(ev[1].process.as_ref().unwrap().executable_path.as_deref(), Some("/lib/systemd/systemd"));
    // argv-only change is an exec too.
    let ev = d.round(
        vec![
            rec(1, 1, None, "/lib/systemd/systemd", &["init", "--user"]),
            rec(42, 200, Some("b-1-1"), "/bin/bash", &["bash"]),
            rec(43, 300, Some("b-42-200"), "/bin/cat", &["cat"]),
        ],
        3,
    );
    assert_eq!(kinds(&ev), vec![(EventType::Exec, "b-1-1".into())]);
}

#[test]
fn unreadable_fields_are_not_an_exec() {
    let mut d = Differ::new(proto::EventSource::Poll);
    d.round(vec![rec(7, 1, None, "/bin/x", &["x"])], 1);
    // A zombie: no exe, no argv. Not an exec; and when it comes back the
    // same, not an exec either.
    let zombie = ProcessRecord { executable_path: None, argv: None, ..rec(7, 1, None, "", &[]) };
    assert!(d.round(vec![zombie], 2).is_empty());
    assert!(d.round(vec![rec(7, 1, None, "/bin/x", &["x"])], 3).is_empty());
    // Keyless and duplicate records are ignored.
    let keyless = ProcessRecord { pid: 9, ..ProcessRecord::default() };
    let ev = d.round(vec![keyless, rec(7, 1, None, "/bin/x", &["x"]), rec(7, 1, None, "/bin/x", &["x"])], 4);
    assert!(ev.is_empty());
}

#[test]
fn parents_first_survives_cycles_and_missing_parents() {
    let a = rec(1, 5, Some("b-2-5"), "/a", &[]);
    let b = rec(2, 5, Some("b-1-5"), "/b", &[]);
    let c = rec(3, 1, Some("b-99-0"), "/c", &[]);
    let out = parents_first(vec![a, b, c]);
    let pids: Vec<u32> = out.iter().map(|r| r.pid).collect();
    assert_eq!(pids.len(), 3);
    assert_eq!(pids[0], 3);
}

/// Replays scripted rounds; after the script, repeats the last round.
struct Scripted {
    rounds: VecDeque<Result<Vec<ProcessRecord>, String>>,
    last: Vec<ProcessRecord>,
}

impl ProcessEnumerator for Scripted {
    fn enumerate(&mut self) -> Result<Vec<ProcessRecord>, SourceError> {
        match self.rounds.pop_front() {
            Some(Ok(r)) => {
                self.last = r.clone();
                Ok(r)
            }
            Some(Err(e)) => Err(SourceError::Enumerate(e)),
            None => Ok(self.last.clone()),
        }
    }
}

#[tokio::test]
async fn poll_source_runs_rounds_and_stops_on_cancel() {
    let rounds = VecDeque::from([
        Ok(vec![rec(1, 1, None, "/init", &["init"])]),
        Err("transient".to_string()),
        Ok(vec![rec(1, 1, None, "/init", &["init"]), rec(2, 2, Some("b-1-1"), "/sh", &["sh"])]),
        Ok(vec![rec(1, 1, None, "/init", &["init"])]),
    ]);
    let e = Scripted { rounds, last: Vec::new() };
    let src: Box<dyn EventSource> = Box::new(PollSource::new(e).with_interval(Duration::from_millis(10)));
    assert_eq!((src.name(), src.kind()), ("poll", proto::EventSource::Poll));
    let (sink, mut rx) = EventSink::channel(16);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(src.run(sink, cancel.clone()));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(rx.recv().await.unwrap().event);
    }
    assert_eq!(
        kinds(&got),
        vec![
            (EventType::Snapshot, "b-1-1".into()),
            (EventType::Exec, "b-2-2".into()),
            (EventType::Exit, "b-2-2".into())
        ]
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn poll_source_fails_when_the_first_round_fails() {
    let e = Scripted { rounds: VecDeque::from([Err("no /proc".to_string())]), last: Vec::new() };
    let (sink, _rx) = EventSink::channel(4);
    let r = Box::new(PollSource::new(e)).run(sink, CancellationToken::new()).await;
    assert!(matches!(r, Err(SourceError::Enumerate(_))));
}

#[tokio::test]
async fn sysinfo_enumerator_sees_a_spawned_sleep_and_its_exit() {
    let mut e = SysinfoEnumerator::new().unwrap();
    let mut d = Differ::new(proto::EventSource::Procfs);
    let first = d.round(e.enumerate().unwrap(), 1);
    let me = std::process::id();
    let me_rec = first.iter().filter_map(|e| e.process.as_ref()).find(|p| p.pid == me).unwrap().clone();
    assert!(me_rec.start_time_ns.is_some() && me_rec.argv.is_some());

    let marker = format!("{}.{}", me, 9713);
    let mut child = std::process::Command::new("sleep").arg("30").arg(&marker).spawn().unwrap();
    let pid = child.id();
    let mut exec = None;
    for i in 0..200 {
        let ev = d.round(e.enumerate().unwrap(), 10 + i);
        exec = ev.into_iter().filter(|e| e.event_type() == EventType::Exec).find_map(|e| {
            e.process.filter(|p| p.pid == pid && p.argv.as_ref().is_some_and(|a| a.args.contains(&marker)))
        });
        if exec.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exec = exec.expect("the spawned sleep was seen");
    assert_eq!(exec.ppid, Some(me));
    assert_eq!(exec.parent_key.as_deref(), Some(me_rec.process_key.as_str()));
    assert_eq!(exec.name.as_deref(), Some("sleep"));
    assert!(exec.executable_path.as_deref().is_some_and(|p| p.ends_with("sleep")));
    #[cfg(unix)]
    assert_eq!(exec.uid, Some(nix_uid()));

    child.kill().unwrap();
    child.wait().unwrap();
    let ev = d.round(e.enumerate().unwrap(), 1000);
    let exit = ev
        .iter()
        .find(|e| {
            e.event_type() == EventType::Exit && e.process.as_ref().is_some_and(|p| p.process_key == exec.process_key)
        })
        .expect("the exit was seen");
    assert_eq!(exit.process.as_ref().unwrap().exit_time_ns, Some(1000));
}

#[cfg(unix)]
fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap()
}
