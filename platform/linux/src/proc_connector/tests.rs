//! The real socket (root only) and the datagram walk.

use super::*;
use std::process::Command;
use std::time::Instant;

#[test]
fn datagrams_split_into_messages_and_numbers() {
    // Two messages: a proc event (what = EXEC, cpu 3, seq 41) padded to 4
    // bytes, then a bare header with a length past the end (ignored).
    let mut dgram = Vec::new();
    let mut msg = vec![0u8; NLMSG_HDR + CN_MSG_HDR + 16 + 8];
    let len = u32::try_from(msg.len() - 2).unwrap();
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    msg[NLMSG_HDR + 8..NLMSG_HDR + 12].copy_from_slice(&41u32.to_ne_bytes());
    msg[NLMSG_HDR + CN_MSG_HDR..NLMSG_HDR + CN_MSG_HDR + 4].copy_from_slice(&2u32.to_ne_bytes());
    msg[NLMSG_HDR + CN_MSG_HDR + 4..NLMSG_HDR + CN_MSG_HDR + 8].copy_from_slice(&3u32.to_ne_bytes());
    dgram.extend_from_slice(&msg);
    dgram.extend_from_slice(&999u32.to_ne_bytes());
    dgram.extend_from_slice(&[0u8; 12]);
    let mut pos = 0;
    let first = next_message(&dgram, &mut pos).unwrap();
    assert_eq!(first.len(), msg.len() - 2);
    assert_eq!(pos, msg.len(), "aligned to 4 bytes");
    assert_eq!(cpu_seq(first), Some((3, 41)));
    assert!(next_message(&dgram, &mut pos).is_none(), "a length past the end ends the walk");
    // The subscription acknowledgement (what = 0) is not numbered.
    let mut ack = msg.clone();
    ack[NLMSG_HDR + CN_MSG_HDR..NLMSG_HDR + CN_MSG_HDR + 4].copy_from_slice(&0u32.to_ne_bytes());
    assert_eq!(cpu_seq(&ack), None);
    assert_eq!(cpu_seq(&msg[..NLMSG_HDR + 4]), None, "short");
}

/// Receives until an exit of `pid` arrives (or 20 s pass).
fn exit_of(src: &mut ProcConnectorSource, pid: u32, seen: &mut Vec<ProcessEvent>) -> Option<ProcessEvent> {
    let mut buf = vec![0u8; RECV_BYTES];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut out = Vec::new();
        src.receive(&mut buf, RECV_POLL, &mut out).unwrap();
        for ev in out {
            let hit = ev.event_type() == EventType::Exit && ev.process.as_ref().is_some_and(|p| p.pid == pid);
            seen.push(ev.clone());
            if hit {
                return Some(ev);
            }
        }
    }
    None
}

#[test]
fn kernel_reports_exec_exit_code_and_signal() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the proc connector needs root (CAP_NET_ADMIN)");
        return;
    }
    let mut src = ProcConnectorSource::open(ProcfsReader::new().unwrap(), DEFAULT_RECV_BUFFER_BYTES).unwrap();
    assert!(src.recv_buffer().is_some_and(|b| b >= DEFAULT_RECV_BUFFER_BYTES), "{:?}", src.recv_buffer());

    let mut seen = Vec::new();
    let mut sh = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
    let pid = sh.id();
    let exit = exit_of(&mut src, pid, &mut seen).unwrap_or_else(|| panic!("no exit for {pid}: {seen:?}"));
    sh.wait().unwrap();
    assert_eq!(exit.source(), proto::EventSource::ProcConnector);
    let p = exit.process.unwrap();
    assert_eq!((p.exit_code, p.signal), (Some(7), None));
    let mine: Vec<_> = seen.iter().filter(|e| e.process.as_ref().is_some_and(|q| q.pid == pid)).collect();
    let kinds: Vec<EventType> = mine.iter().map(|e| e.event_type()).collect();
    assert_eq!(kinds, [EventType::Fork, EventType::Exec, EventType::Exit], "{mine:?}");
    assert!(mine.iter().all(|e| e.process.as_ref().unwrap().process_key == p.process_key), "one identity");
    assert_eq!(mine[1].process.as_ref().unwrap().ppid, Some(std::process::id()));

    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id();
    sleeper.kill().unwrap();
    let exit = exit_of(&mut src, pid, &mut seen).unwrap_or_else(|| panic!("no exit for {pid}: {seen:?}"));
    sleeper.wait().unwrap();
    let p = exit.process.unwrap();
    assert_eq!((p.exit_code, p.signal), (None, Some(9)));
    let lost: Vec<_> = seen.iter().filter(|e| e.event_type() == EventType::Gap).collect();
    assert!(lost.is_empty(), "nothing should be lost at this pace: {lost:?}");
}
