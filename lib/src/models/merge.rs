//! How a `ProcessEvent` delta changes a process row. The agent's table and
//! the ledger's offline replay both use this, so they cannot disagree.

use crate::proto::{EventType, ProcessEvent, ProcessRecord, ProcessState};

/// Overwrites every field of `state` that `delta` carries; fields absent from
/// the delta keep their value (unknown stays unknown, known is never erased).
pub fn merge_record(state: &mut ProcessRecord, delta: &ProcessRecord) {
    macro_rules! take {
        ($($f:ident),* $(,)?) => {
            $( if delta.$f.is_some() { state.$f.clone_from(&delta.$f); } )*
        };
    }
    state.pid = delta.pid;
    if !delta.process_key.is_empty() {
        state.process_key.clone_from(&delta.process_key);
    }
    take!(
        ppid,
        parent_key,
        name,
        executable_path,
        argv,
        command_line,
        cwd,
        uid,
        gid,
        euid,
        egid,
        user_name,
        cgroup,
        container_id,
        start_time_ns,
        exit_time_ns,
        exit_code,
        signal,
        executable_hash,
        hash_algorithm,
        file_exists,
        accessible,
        cpu_usage,
        memory_usage,
        is_thread,
        signing_id,
        team_id,
        cdhash,
        platform_binary,
        responsible_pid,
        session_id,
        user_sid,
        token_elevation_type,
        token_elevated,
    );
}

/// Applies one event to the row of its process and returns the new row, or
/// `None` when the event does not describe a process (gaps, or an event
/// without a process key).
///
/// - `exec`: the new program replaces the old image's fields (argv, path,
///   hash) but keeps identity and start time.
/// - `exit`: marks the row not alive and records exit time, code, signal.
/// - `fork`, `snapshot`, `update`: merged as deltas.
pub fn apply_event(current: Option<ProcessState>, event: &ProcessEvent) -> Option<ProcessState> {
    let event_type = event.event_type();
    if event_type == EventType::Gap {
        return None;
    }
    let delta = event.process.as_ref()?;
    if delta.process_key.is_empty() {
        return None;
    }
    let mut state = current.unwrap_or_else(|| ProcessState {
        record: Some(ProcessRecord::default()),
        is_alive: true,
        source: event.source,
        last_seq: 0,
    });
    let record = state.record.get_or_insert_with(ProcessRecord::default);
    if event_type == EventType::Exec {
        // A new image: what described the old one no longer holds.
        record.executable_hash = None;
        record.hash_algorithm = None;
        record.argv = None;
        record.command_line = None;
        record.file_exists = None;
        record.accessible = None;
        // The code signature describes the image too.
        record.signing_id = None;
        record.team_id = None;
        record.cdhash = None;
        record.platform_binary = None;
    }
    merge_record(record, delta);
    match event_type {
        EventType::Exit => {
            state.is_alive = false;
            if record.exit_time_ns.is_none() {
                record.exit_time_ns = Some(event.event_time_ns);
            }
        }
        EventType::Exec | EventType::Fork | EventType::Snapshot => state.is_alive = true,
        _ => {}
    }
    state.last_seq = state.last_seq.max(event.seq);
    Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Argv, EventSource};

    fn ev(seq: u64, t: EventType, rec: ProcessRecord) -> ProcessEvent {
        ProcessEvent {
            seq,
            event_type: t as i32,
            event_time_ns: 1_000 * seq as i64,
            source: EventSource::Poll as i32,
            process: Some(rec),
            gap: None,
            prev_seq: 0,
        }
    }

    fn rec(key: &str) -> ProcessRecord {
        ProcessRecord { pid: 7, process_key: key.into(), ..Default::default() }
    }

    #[test]
    fn exec_update_exit_build_the_row() {
        let exec = ProcessRecord {
            name: Some("sleep".into()),
            argv: Some(Argv { args: vec!["sleep".into(), "3".into()], truncated: false }),
            ..rec("k")
        };
        let s = apply_event(None, &ev(1, EventType::Exec, exec)).unwrap();
        assert!(s.is_alive);
        let upd = ProcessRecord { executable_hash: Some("ab".into()), ..rec("k") };
        let s = apply_event(Some(s), &ev(2, EventType::Update, upd)).unwrap();
        let r = s.record.as_ref().unwrap();
        assert_eq!(r.name.as_deref(), Some("sleep"));
        assert_eq!(r.executable_hash.as_deref(), Some("ab"));
        let exit = ProcessRecord { exit_code: Some(0), ..rec("k") };
        let s = apply_event(Some(s), &ev(3, EventType::Exit, exit)).unwrap();
        assert!(!s.is_alive);
        assert_eq!(s.record.as_ref().unwrap().exit_time_ns, Some(3000));
        assert_eq!(s.last_seq, 3);
    }

    #[test]
    fn exec_clears_the_old_image() {
        let first = ProcessRecord { executable_hash: Some("old".into()), ..rec("k") };
        let s = apply_event(None, &ev(1, EventType::Snapshot, first)).unwrap();
        let s = apply_event(Some(s), &ev(2, EventType::Exec, rec("k"))).unwrap();
        assert_eq!(s.record.unwrap().executable_hash, None);
    }

    #[test]
    fn gaps_and_keyless_events_are_not_rows() {
        assert!(apply_event(None, &ev(1, EventType::Gap, rec("k"))).is_none());
        assert!(apply_event(None, &ev(1, EventType::Exec, rec(""))).is_none());
    }
}
