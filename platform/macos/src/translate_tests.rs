//! Translation tests on fixtures shaped like EndpointSecurity messages
//! (`es_message_t` version 7, macOS 14), field names as in `es_process_t`.

use super::*;

const BOOT: &str = "5b1e9d3a-0c4f-4e7a-9d7e-2f6c1a8b9e00";
/// 2024-05-01T12:00:00Z.
const T0: i64 = 1_714_564_800;

fn proc_(pid: i32, ppid: i32, start_s: i64, path: &str) -> EsProcess {
    EsProcess {
        pid,
        ruid: 501,
        rgid: 20,
        euid: 501,
        egid: 20,
        ppid,
        original_ppid: ppid,
        session_id: 100_001,
        codesigning_flags: 0x2661_3001,
        is_platform_binary: true,
        cdhash: [0xab; 20],
        signing_id: "com.apple.zsh".into(),
        team_id: String::new(),
        executable_path: path.into(),
        path_truncated: false,
        start_time: Some((start_s, 250_000)),
        responsible_pid: Some(412),
    }
}

fn msg(process: EsProcess, event: EsEvent) -> EsMessage {
    EsMessage { version: 7, time_ns: T0 * 1_000_000_000 + 5, process, event }
}

fn rec(e: &ProcessEvent) -> &ProcessRecord {
    e.process.as_ref().unwrap()
}

#[test]
fn fork_exec_exit_of_one_process_share_one_key() {
    let mut t = Translator::new(BOOT);
    let shell = proc_(300, 1, T0 - 100, "/bin/zsh");
    let child = proc_(301, 300, T0, "/bin/zsh");
    let f = t.translate(&msg(shell.clone(), EsEvent::Fork { child: child.clone() })).unwrap();
    assert_eq!(f.event_type(), EventType::Fork);
    assert_eq!(f.source(), proto::EventSource::EndpointSecurity);
    let key = format!("5b1e9d3a-301-{}", (T0 * 1_000_000_000 + 250_000_000) as u64 / TICK_NS);
    assert_eq!(rec(&f).process_key, key);
    assert_eq!(rec(&f).parent_key.as_deref(), Some(format!("5b1e9d3a-300-{}", (T0 - 100) * 100 + 25).as_str()));

    let mut target = proc_(301, 300, T0, "/usr/bin/codesign");
    target.signing_id = "com.example.tool".into();
    target.team_id = "ABCDE12345".into();
    target.is_platform_binary = false;
    let args = vec!["codesign".to_owned(), "-dv".to_owned(), "My App.app".to_owned()];
    let exec = EsEvent::Exec { target, args, cwd: Some("/Users/zoë".into()) };
    let e = t.translate(&msg(child.clone(), exec)).unwrap();
    let r = rec(&e);
    assert_eq!(r.process_key, key);
    assert_eq!(r.parent_key, rec(&f).parent_key);
    assert_eq!(r.name.as_deref(), Some("codesign"));
    assert_eq!(r.command_line.as_deref(), Some("codesign -dv 'My App.app'"));
    assert_eq!((r.uid, r.gid, r.euid, r.egid), (Some(501), Some(20), Some(501), Some(20)));
    assert_eq!(r.signing_id.as_deref(), Some("com.example.tool"));
    assert_eq!(r.team_id.as_deref(), Some("ABCDE12345"));
    assert_eq!(r.cdhash.as_deref(), Some("abababababababababababababababababababab"));
    assert_eq!(r.platform_binary, Some(false));
    assert_eq!(r.responsible_pid, Some(412));
    assert_eq!(r.cwd.as_deref(), Some("/Users/zoë"));

    let x = t.translate(&msg(child, EsEvent::Exit { stat: 3 << 8 })).unwrap();
    assert_eq!((rec(&x).process_key.as_str(), rec(&x).exit_code, rec(&x).signal), (key.as_str(), Some(3), None));
    let killed = t.translate(&msg(shell, EsEvent::Exit { stat: 9 })).unwrap();
    assert_eq!((rec(&killed).exit_code, rec(&killed).signal), (None, Some(9)));
    assert_eq!(t.live_count(), 0);
}

#[test]
fn parent_that_exited_first_is_unknown_not_guessed() {
    let mut t = Translator::new(BOOT);
    let parent = proc_(500, 1, T0, "/bin/sh");
    let child = proc_(501, 500, T0 + 1, "/bin/sh");
    t.translate(&msg(parent.clone(), EsEvent::Fork { child: child.clone() })).unwrap();
    t.translate(&msg(parent, EsEvent::Exit { stat: 0 })).unwrap();
    // The orphan execs: launchd adopted it, and ES reports the new ppid.
    let mut target = proc_(501, 1, T0 + 1, "/usr/bin/true");
    target.original_ppid = 500;
    let e = t.translate(&msg(child.clone(), EsEvent::Exec { target, args: vec![], cwd: None })).unwrap();
    assert_eq!((rec(&e).ppid, rec(&e).parent_key.as_ref()), (Some(1), None));
    // Or still names the dead parent's pid, reused by a newer process.
    t.translate(&msg(proc_(1, 0, T0 - 1000, "/sbin/launchd"), EsEvent::Fork { child: proc_(500, 1, T0 + 2, "/x") }))
        .unwrap();
    let target = proc_(501, 500, T0 + 1, "/usr/bin/true");
    let e = t.translate(&msg(child, EsEvent::Exec { target, args: vec![], cwd: None })).unwrap();
    assert_eq!(rec(&e).parent_key, None, "a pid reused after the child started is not its parent");
}

#[test]
fn pid_reuse_gives_a_new_key() {
    let mut t = Translator::new(BOOT);
    let a = t.translate(&msg(proc_(1, 0, T0, "/sbin/launchd"), EsEvent::Fork { child: proc_(700, 1, T0, "/a") }));
    let b = t.translate(&msg(proc_(1, 0, T0, "/sbin/launchd"), EsEvent::Fork { child: proc_(700, 1, T0 + 60, "/b") }));
    assert_ne!(rec(&a.unwrap()).process_key, rec(&b.unwrap()).process_key);
}

#[test]
fn quoted_unicode_argv_is_kept_exactly() {
    let mut t = Translator::new(BOOT);
    let args: Vec<String> = ["/usr/bin/say", "\"quoted\" it's", "日本語 🦀", ""].map(String::from).to_vec();
    let target = proc_(42, 1, T0, "/usr/bin/say");
    let e = t.translate(&msg(target.clone(), EsEvent::Exec { target, args: args.clone(), cwd: None })).unwrap();
    assert_eq!(rec(&e).argv.as_ref().unwrap().args, args);
    assert_eq!(rec(&e).command_line.as_deref(), Some(r#"/usr/bin/say '"quoted" it'\''s' '日本語 🦀' ''"#));
}

#[test]
fn missing_fields_stay_unknown() {
    let mut t = Translator::new(BOOT);
    let mut p = proc_(43, 1, T0, "");
    p.signing_id.clear();
    p.cdhash = [0; 20];
    p.responsible_pid = None;
    let e = t.translate(&msg(p.clone(), EsEvent::Exec { target: p.clone(), args: vec![], cwd: None })).unwrap();
    let r = rec(&e);
    assert_eq!((r.executable_path.as_ref(), r.name.as_ref(), r.cwd.as_ref()), (None, None, None));
    assert_eq!((r.signing_id.as_ref(), r.team_id.as_ref(), r.cdhash.as_ref()), (None, None, None));
    assert_eq!((r.responsible_pid, r.command_line.as_ref(), r.parent_key.as_ref()), (None, None, None));
    p.executable_path = "/Very/long/cut".into();
    p.path_truncated = true;
    let e = t.translate(&msg(p.clone(), EsEvent::Exec { target: p, args: vec![], cwd: None })).unwrap();
    assert_eq!(rec(&e).executable_path, None, "a truncated path is not the path");
}

#[test]
fn malformed_messages_are_clear_errors() {
    let mut t = Translator::new(BOOT);
    let mut old = proc_(44, 1, T0, "/bin/ls");
    old.start_time = None;
    let mut m = msg(old.clone(), EsEvent::Exit { stat: 0 });
    m.version = 2;
    let err = t.translate(&m).unwrap_err();
    assert_eq!(
        err.to_string(),
        "EndpointSecurity exit message (version 2), pid 44: no valid es_process_t.start_time (needs message \
         version 3, macOS 10.15.4+); message dropped"
    );
    let mut bad = proc_(-5, 1, T0, "/bin/ls");
    let err = t.translate(&msg(bad.clone(), EsEvent::Exec { target: bad.clone(), args: vec![], cwd: None }));
    assert!(matches!(err, Err(TranslateError::BadPid { pid: -5, event: "exec", .. })));
    bad.pid = 45;
    bad.start_time = Some((T0, 2_000_000));
    assert!(matches!(
        t.translate(&msg(bad.clone(), EsEvent::Exit { stat: 0 })),
        Err(TranslateError::NoStartTime { .. })
    ));
    assert_eq!(t.live_count(), 0);
}

#[test]
fn wait_status_decoding() {
    assert_eq!(decode_wait_status(0), (Some(0), None));
    assert_eq!(decode_wait_status(255 << 8), (Some(255), None));
    assert_eq!(decode_wait_status(15), (None, Some(15)));
    assert_eq!(decode_wait_status(0x80 | 11), (None, Some(11)), "core dump flag ignored");
    assert_eq!(decode_wait_status(0x137f), (None, None), "stopped is not an exit");
}
