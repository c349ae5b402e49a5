//! Translation tests on fixtures shaped like real `Microsoft-Windows-Kernel-Process`
//! events (field names and types from the provider manifest: `ProcessStart`
//! version 3, `ProcessStop` version 2).

use super::*;
use crate::fields::{FieldType, FieldValue};

/// 2024-05-01T12:00:00Z as a FILETIME.
const T0: i64 = 133_590_384_000_000_000;
/// One second in FILETIME units.
const SEC: i64 = 10_000_000;
const BOOT: &str = "0000002a";

fn devices() -> DeviceMap {
    DeviceMap::new([(r"\Device\HarddiskVolume3", "C:"), (r"\Device\HarddiskVolume10", "D:")])
}

fn tr() -> Translator {
    Translator::new(BOOT, devices())
}

/// A `ProcessStart` v3 as TDH decodes it.
fn start(pid: u32, ppid: u32, created: i64, image: &str) -> RawEvent {
    RawEvent::new(1, 3)
        .with("ProcessID", FieldValue::U32(pid))
        .with("ProcessSequenceNumber", FieldValue::U64(u64::from(pid) + 1000))
        .with("CreateTime", FieldValue::FileTime(created))
        .with("ParentProcessID", FieldValue::U32(ppid))
        .with("ParentProcessSequenceNumber", FieldValue::U64(u64::from(ppid) + 1000))
        .with("SessionID", FieldValue::U32(1))
        .with("Flags", FieldValue::U32(0))
        .with("ProcessTokenElevationType", FieldValue::U32(3))
        .with("ProcessTokenIsElevated", FieldValue::U32(0))
        .with("ImageName", FieldValue::Str(image.to_owned()))
        .with("PackageFullName", FieldValue::Str(String::new()))
}

/// A `ProcessStop` v2 as TDH decodes it.
fn stop(pid: u32, created: i64, exited: i64, code: u32) -> RawEvent {
    RawEvent::new(2, 2)
        .with("ProcessID", FieldValue::U32(pid))
        .with("ProcessSequenceNumber", FieldValue::U64(u64::from(pid) + 1000))
        .with("CreateTime", FieldValue::FileTime(created))
        .with("ExitTime", FieldValue::FileTime(exited))
        .with("ExitCode", FieldValue::U32(code))
        .with("TokenElevationType", FieldValue::U32(3))
        .with("ImageName", FieldValue::Str("cmd.exe".into()))
}

fn rec(e: &ProcessEvent) -> &ProcessRecord {
    e.process.as_ref().unwrap()
}

fn key_of(pid: u32, created: i64) -> String {
    tr().key(pid, created).unwrap().to_string()
}

#[test]
fn start_then_stop_share_one_key() {
    let mut t = tr();
    let details = ProcessDetails {
        command_line: Some(r#""C:\Windows\System32\cmd.exe" /c "echo hi""#.into()),
        user_sid: Some("S-1-5-21-1004336348-1177238915-682003330-1001".into()),
        ..ProcessDetails::default()
    };
    let img = r"\Device\HarddiskVolume3\Windows\System32\cmd.exe";
    let e = t.translate(&start(4242, 1000, T0, img), &details, 1).unwrap();
    assert_eq!(e.event_type(), EventType::Exec);
    assert_eq!(e.source(), proto::EventSource::Etw);
    let r = rec(&e);
    assert_eq!(r.process_key, format!("{BOOT}-4242-{}", (T0 - FILETIME_UNIX_EPOCH) / 100_000));
    assert_eq!(r.executable_path.as_deref(), Some(r"C:\Windows\System32\cmd.exe"));
    assert_eq!(r.name.as_deref(), Some("cmd.exe"));
    assert_eq!(r.argv.as_ref().unwrap().args, vec![r"C:\Windows\System32\cmd.exe", "/c", "echo hi"]);
    assert_eq!(r.user_name.as_deref(), Some("S-1-5-21-1004336348-1177238915-682003330-1001"));
    assert_eq!(r.uid, None);
    assert_eq!(r.session_id, Some(1));
    assert_eq!(r.token_elevation_type.as_deref(), Some("limited"));
    assert_eq!(r.token_elevated, Some(false));
    assert_eq!(r.start_time_ns, Some(1_714_564_800_000_000_000));
    assert_eq!(e.event_time_ns, 1_714_564_800_000_000_000);
    assert_eq!(t.live_count(), 1);

    let x = t.translate(&stop(4242, T0, T0 + 5 * SEC, 0xC000_0005), &ProcessDetails::default(), 1).unwrap();
    assert_eq!(x.event_type(), EventType::Exit);
    assert_eq!(rec(&x).process_key, r.process_key);
    assert_eq!(rec(&x).exit_code, Some(-1_073_741_819));
    assert_eq!(rec(&x).exit_time_ns, Some(1_714_564_805_000_000_000));
    assert_eq!(t.live_count(), 0);
}

#[test]
fn parent_key_resolves_only_for_a_live_older_parent() {
    let mut t = tr();
    let p = t.translate(&start(100, 4, T0, r"\Device\HarddiskVolume3\p.exe"), &ProcessDetails::default(), 0).unwrap();
    let c = t.translate(&start(200, 100, T0 + SEC, r"\Device\HarddiskVolume3\c.exe"), &ProcessDetails::default(), 0);
    assert_eq!(rec(&c.unwrap()).parent_key.as_deref(), Some(rec(&p).process_key.as_str()));
    // The parent exits; its child starts a grandchild and then the parent's
    // pid is reused by an unrelated, newer process.
    t.translate(&stop(100, T0, T0 + 2 * SEC, 0), &ProcessDetails::default(), 0).unwrap();
    let orphan = t.translate(&start(300, 100, T0 + 3 * SEC, r"\Device\HarddiskVolume3\o.exe"), &Default::default(), 0);
    let orphan = orphan.unwrap();
    assert_eq!(rec(&orphan).ppid, Some(100));
    assert_eq!(rec(&orphan).parent_key, None, "a parent that exited first is unknown, not guessed");
    t.translate(&start(100, 4, T0 + 4 * SEC, r"\Device\HarddiskVolume3\new.exe"), &Default::default(), 0).unwrap();
    let late = ProcessStart::decode(&start(400, 100, T0 + 3 * SEC + 1, r"\Device\HarddiskVolume3\x.exe")).unwrap();
    let late = t.start(&late, &ProcessDetails::default(), EventType::Exec, 0).unwrap();
    assert_eq!(rec(&late).parent_key, None, "a reused pid created after the child is not its parent");
}

#[test]
fn pid_reuse_gives_a_new_key() {
    let mut t = tr();
    let a = t.translate(&start(777, 4, T0, r"\Device\HarddiskVolume3\a.exe"), &Default::default(), 0).unwrap();
    t.translate(&stop(777, T0, T0 + SEC, 0), &Default::default(), 0).unwrap();
    let b = t.translate(&start(777, 4, T0 + 2 * SEC, r"\Device\HarddiskVolume3\b.exe"), &Default::default(), 0);
    assert_ne!(rec(&a).process_key, rec(&b.unwrap()).process_key);
    // A stale stop of the first instance does not evict the second one.
    t.translate(&stop(777, T0, T0 + SEC, 0), &Default::default(), 0).unwrap();
    assert_eq!(t.live_count(), 1);
    assert_eq!(key_of(777, T0), rec(&a).process_key);
}

#[test]
fn quoted_unicode_command_line_is_split_and_kept_verbatim() {
    let mut t = tr();
    let line = r#""C:\Users\Zoë\日本\tool.exe" --title "Ünïcödé \"quoted\" 名前" 🦀"#;
    let details = ProcessDetails { command_line: Some(line.into()), ..Default::default() };
    let img = r"\Device\HarddiskVolume10\Users\Zoë\日本\tool.exe";
    let e = t.translate(&start(9, 4, T0, img), &details, 0).unwrap();
    let r = rec(&e);
    assert_eq!(r.command_line.as_deref(), Some(line));
    assert_eq!(
        r.argv.as_ref().unwrap().args,
        vec![r"C:\Users\Zoë\日本\tool.exe", "--title", r#"Ünïcödé "quoted" 名前"#, "🦀"]
    );
    assert_eq!(r.executable_path.as_deref(), Some(r"D:\Users\Zoë\日本\tool.exe"), "Volume10 is not Volume1");
}

#[test]
fn missing_optional_fields_stay_unknown() {
    // A version 0 `ProcessStart` (no token fields), for a process that
    // exited before the binding could open it (no details).
    let raw = RawEvent::new(1, 0)
        .with("ProcessID", FieldValue::U32(55))
        .with("CreateTime", FieldValue::FileTime(T0))
        .with("ParentProcessID", FieldValue::U32(4))
        .with("ImageName", FieldValue::Str(String::new()));
    let e = tr().translate(&raw, &ProcessDetails::default(), 0).unwrap();
    let r = rec(&e);
    assert_eq!((r.command_line.as_ref(), r.argv.as_ref(), r.user_name.as_ref()), (None, None, None));
    assert_eq!((r.executable_path.as_ref(), r.name.as_ref()), (None, None));
    assert_eq!((r.session_id, r.token_elevated, r.token_elevation_type.as_ref()), (None, None, None));
    // The token fields from the process fill in when the event lacks them.
    let details = ProcessDetails { token_elevation_type: Some(2), token_is_elevated: Some(true), ..Default::default() };
    let e = tr().translate(&raw, &details, 0).unwrap();
    assert_eq!((rec(&e).token_elevation_type.as_deref(), rec(&e).token_elevated), (Some("full"), Some(true)));
    // A stop without ExitTime/ExitCode: the header time is the event time.
    let raw = RawEvent::new(2, 0).with("ProcessID", FieldValue::U32(55)).with("CreateTime", FieldValue::FileTime(T0));
    let x = tr().translate(&raw, &ProcessDetails::default(), 42).unwrap();
    assert_eq!((rec(&x).exit_code, rec(&x).exit_time_ns, x.event_time_ns), (None, None, 42));
}

#[test]
fn malformed_events_are_clear_errors() {
    let no_pid = RawEvent::new(1, 3).with("CreateTime", FieldValue::FileTime(T0));
    let err = tr().translate(&no_pid, &ProcessDetails::default(), 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ProcessStart (version 3) has no field ProcessID: the provider manifest changed or TDH could not decode it"
    );

    let wrong = RawEvent::new(2, 2)
        .with("ProcessID", FieldValue::U32(1))
        .with("CreateTime", FieldValue::Str("yesterday".into()));
    let err = tr().translate(&wrong, &ProcessDetails::default(), 0).unwrap_err();
    assert!(matches!(
        err,
        TranslateError::Field(FieldError::WrongType { field: "CreateTime", expected: FieldType::FileTime, .. })
    ));
    assert!(err.to_string().contains("ProcessStop (version 2) field CreateTime"), "{err}");

    let before_1970 = start(1, 0, FILETIME_UNIX_EPOCH - 1, "x");
    let err = tr().translate(&before_1970, &ProcessDetails::default(), 0).unwrap_err();
    assert!(err.to_string().starts_with("process 1: CreateTime"), "{err}");
    let err = tr().translate(&start(1, 0, i64::MAX, "x"), &ProcessDetails::default(), 0).unwrap_err();
    assert!(matches!(err, TranslateError::BadCreateTime { pid: 1, .. }));

    let err = tr().translate(&RawEvent::new(5, 0), &ProcessDetails::default(), 0).unwrap_err();
    assert_eq!(err, TranslateError::UnknownEvent(5));
    assert!(matches!(ProcessStop::decode(&RawEvent::new(1, 0)), Err(FieldError::WrongEvent { found: 1, .. })));
}

#[test]
fn nt_paths_become_dos_paths() {
    let d = devices();
    assert_eq!(d.to_dos_path(r"\Device\HarddiskVolume3\x\y.exe"), r"C:\x\y.exe");
    assert_eq!(d.to_dos_path(r"\device\harddiskvolume3\x.exe"), r"C:\x.exe");
    assert_eq!(d.to_dos_path(r"\Device\HarddiskVolume30\x.exe"), r"\Device\HarddiskVolume30\x.exe");
    assert_eq!(d.to_dos_path(r"\??\C:\Windows\x.exe"), r"C:\Windows\x.exe");
    assert_eq!(d.to_dos_path(r"\\?\UNC\srv\share\x.exe"), r"\\srv\share\x.exe");
    assert_eq!(d.to_dos_path(r"\Device\Mup\srv\share\x.exe"), r"\\srv\share\x.exe");
    assert_eq!(d.to_dos_path("Registry"), "Registry");
}
