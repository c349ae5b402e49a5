//! Issue #7 item 6, PRODUCT.md §14: procmond keeps only the documented
//! capabilities once attached, records the drop in the ledger and cannot
//! open network sockets; the agent runs as `agent.user` with no capability
//! and still works end to end; detection tasks still work after procmond's
//! drop. Every test needs root (it starts the real, privileged binaries).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use daemoneye_lib::ledger::{LedgerReader, RecordKind};
use daemoneye_tests::{Agent, AgentOptions, bin, copy_executable, is_root, marker, spawn_retrying, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Group, Pid, User};
use serde_json::Value as Json;

/// procmond's capabilities after attach, as documented (ARCHITECTURE.md,
/// procmond; the systemd unit's comment): effective = permitted = bounding.
const DOCUMENTED: [&str; 2] = ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"];

/// `linux/capability.h`, by bit.
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipping {test}: needs root (procmond's capabilities, a second uid)");
    true
}

/// A `Cap*:` hex mask as capability names.
fn cap_names(hex: &str) -> BTreeSet<String> {
    let mask = u64::from_str_radix(hex.trim(), 16).unwrap_or_else(|e| panic!("capability mask {hex:?}: {e}"));
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| CAP_NAMES.get(bit).map_or_else(|| format!("cap_{bit}"), |n| (*n).to_owned()))
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// A `/proc/.../status` file as key -> value.
fn status(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_owned(), v.trim().to_owned())).collect()
}

/// The status files of every thread of `pid`.
fn thread_statuses(pid: u32) -> Vec<(PathBuf, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let path = task.path().join("status");
        let s = status(&path);
        if !s.is_empty() {
            out.push((path, s));
        }
    }
    assert!(!out.is_empty(), "no threads of pid {pid}");
    out
}

fn procmond_pid(agent: &Agent) -> u32 {
    wait_for(Duration::from_secs(20), || {
        let h = agent.cli_json(&["health"]);
        let pm = h["components"].as_array()?.iter().find(|c| c["name"] == "procmond")?.clone();
        pm["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
    })
    .unwrap_or_else(|| panic!("procmond never reported running:\n{}", agent.stderr()))
}

/// The details of the newest audit record `action` that follows procmond
/// `pid`'s `start` record.
fn audit_after_start(ledger_dir: &Path, pid: u32, action: &str) -> Option<BTreeMap<String, String>> {
    let reader = LedgerReader::open(ledger_dir).ok()?;
    let mut since_start = false;
    let mut found = None;
    for rec in reader.iter_from(1).ok()? {
        let rec = rec.ok()?;
        if rec.kind != RecordKind::Audit {
            continue;
        }
        let Some(a) = rec.audit() else { continue };
        let details: BTreeMap<String, String> = a.details.into_iter().collect();
        if a.action == "start" {
            since_start = details.get("pid").is_some_and(|p| *p == pid.to_string());
        } else if since_start && a.action == action {
            found = Some(details);
        }
    }
    found
}

fn names_of(detail: &str) -> BTreeSet<String> {
    if detail == "none" { BTreeSet::new() } else { detail.split(',').map(str::to_owned).collect() }
}

/// The user tests run unprivileged processes as, and its primary group.
fn nobody() -> (User, Group) {
    let user = User::from_name("nobody").unwrap().expect("user nobody");
    let group = Group::from_gid(user.gid).unwrap().expect("nobody's primary group");
    (user, group)
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

/// Runs a marker process (a sleeping copy of `sleep`: the proc connector
/// reads names from `/proc`, so the process must live a moment) and waits
/// until its exec is in the agent's `process_events`.
fn exec_reaches_the_agent(agent: &Agent, prefix: &str) {
    let bins = tempfile::tempdir().unwrap();
    let m = marker(prefix);
    let exe = copy_executable(Path::new("/bin/sleep"), bins.path(), &m);
    let mut child = spawn_retrying(Command::new(&exe).arg("30"));
    let sql = format!("SELECT pid FROM process_events WHERE event_type = 'exec' AND name = '{m}'");
    let seen = wait_for(Duration::from_secs(30), || (!agent.query(&sql).is_empty()).then_some(()));
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.is_some(), "the exec of {m} never reached the agent:\n{}", agent.stderr());
}

/// A temp root the agent's user can traverse (the harness's is 0700).
fn traversable_root() -> tempfile::TempDir {
    let root = tempfile::Builder::new().prefix("daemoneye-e2e-priv").tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

#[test]
fn sandbox_self_test_refuses_inet_sockets_and_keeps_unix_and_netlink() {
    if skip_unless_root("sandbox_self_test_refuses_inet_sockets_and_keeps_unix_and_netlink") {
        return;
    }
    // The exact routine procmond runs after attaching, in a procmond of its own.
    let out = Command::new(bin("procmond"))
        .args(["--sandbox-self-test", "--no-system-config", "--backend", "poll"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "self-test failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}"))
            .to_owned()
    };
    for family in ["AF_INET", "AF_INET6"] {
        let r = line(&format!("socket {family}: "));
        assert!(r.starts_with("refused (EACCES"), "{family}: {r}");
    }
    for family in ["AF_UNIX", "AF_NETLINK"] {
        assert_eq!(line(&format!("socket {family}: ")), "allowed", "{family}");
    }
    for cap in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(cap_names(&line(&format!("status {cap}:"))), set(&DOCUMENTED), "{cap}\n{text}");
    }
    for cap in ["CapInh", "CapAmb"] {
        assert!(cap_names(&line(&format!("status {cap}:"))).is_empty(), "{cap}\n{text}");
    }
    assert_eq!(line("status NoNewPrivs:").trim(), "1");
    assert_eq!(line("status Seccomp:").trim(), "2");
    assert_eq!(names_of(&line("detail permitted_after=")), set(&DOCUMENTED));
}

/// Starts an agent on `backend` and checks the running procmond: every
/// thread's capability sets are the documented ones, `no_new_privs` and a
/// seccomp filter are on, the ledger has the drop with both sets, and
/// events still flow.
fn procmond_is_sandboxed_after_attach(backend: &str) -> (Agent, u32) {
    let agent = Agent::start(AgentOptions { backend: backend.into(), ..Default::default() });
    let pm = procmond_pid(&agent);
    let ledger_dir = agent.data_dir().join("ledger");
    let record = wait_for(Duration::from_secs(20), || audit_after_start(&ledger_dir, pm, "privilege_drop"))
        .unwrap_or_else(|| panic!("no privilege_drop audit record for procmond {pm}:\n{}", agent.stderr()));
    let chosen = audit_after_start(&ledger_dir, pm, "backend").unwrap_or_default();
    eprintln!("procmond {pm}, backend {:?}: {record:?}", chosen.get("backend"));

    let mut expected = set(&DOCUMENTED);
    if record.contains_key("cap_bpf_kept") {
        eprintln!("this kernel needs CAP_BPF for bpf() map reads: {}", record["cap_bpf_kept"]);
        expected.insert("CAP_BPF".into());
    }
    // The record: both sets, by name.
    for set_name in ["effective", "permitted", "bounding"] {
        assert_eq!(names_of(&record[&format!("{set_name}_after")]), expected, "{set_name}_after");
        let before = names_of(&record[&format!("{set_name}_before")]);
        assert!(before.is_superset(&expected) && before.len() > expected.len(), "{set_name}_before: {before:?}");
    }
    for set_name in ["inheritable_after", "ambient_after"] {
        assert_eq!(record[set_name], "none", "{set_name}");
    }
    assert!(names_of(&record["permitted_before"]).contains("CAP_BPF"), "started with the attach capabilities");
    assert_eq!(record["no_new_privs"], "1");
    assert!(record["seccomp"].contains("AF_UNIX and AF_NETLINK"), "{}", record["seccomp"]);

    // The kernel's view, on every thread (capabilities are per thread).
    for (path, s) in thread_statuses(pm) {
        for cap in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(cap_names(&s[cap]), expected, "{} {cap}", path.display());
        }
        for cap in ["CapInh", "CapAmb"] {
            assert!(cap_names(&s[cap]).is_empty(), "{} {cap}", path.display());
        }
        assert_eq!(s["NoNewPrivs"], "1", "{}", path.display());
        assert_eq!(s["Seccomp"], "2", "{}", path.display());
    }

    // `ledger tail` shows the record too.
    let tail = Command::new(bin("daemoneye-cli"))
        .args(["ledger", "tail", "--dir", ledger_dir.to_str().unwrap(), "-n", "100000", "--format", "json"])
        .output()
        .unwrap();
    let rows: Json = serde_json::from_slice(&tail.stdout).unwrap();
    let shown = rows.as_array().unwrap().iter().any(|r| {
        r["summary"].as_str().is_some_and(|s| {
            s.starts_with("privilege_drop ") && s.contains("permitted_after=") && s.contains("CAP_SYS_PTRACE")
        })
    });
    assert!(shown, "ledger tail does not show the drop");

    exec_reaches_the_agent(&agent, "pv");
    (agent, pm)
}

#[test]
fn procmond_keeps_only_the_documented_capabilities_after_attach() {
    if skip_unless_root("procmond_keeps_only_the_documented_capabilities_after_attach") {
        return;
    }
    let (agent, _) = procmond_is_sandboxed_after_attach("auto");

    // Detection tasks after the drop, on another user's process whose
    // executable only that user may read (in a directory only it may
    // search): reading its /proc entries takes CAP_SYS_PTRACE, hashing the
    // file at its path CAP_DAC_READ_SEARCH.
    let (user, group) = nobody();
    let outer = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let private = outer.path().join("private");
    std::fs::create_dir(&private).unwrap();
    let m = marker("pp");
    let exe = copy_executable(Path::new("/bin/sleep"), &private, &m);
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o500)).unwrap();
    nix::unistd::chown(&exe, Some(user.uid), Some(group.gid)).unwrap();
    nix::unistd::chown(&private, Some(user.uid), Some(group.gid)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let expected_hash = sha256sum(&exe);
    let mut child = spawn_retrying(Command::new(&exe).arg("60").uid(user.uid.as_raw()).gid(group.gid.as_raw()));
    let pid = child.id().to_string();

    let live = agent.cli_json(&["processes", "list", "--live", "--pid", &pid]);
    let row = live.as_array().and_then(|a| a.first()).cloned().unwrap_or_else(|| panic!("not listed: {live}"));
    assert_eq!(row["executable_path"], exe.display().to_string(), "{row}");
    let v = agent.cli_json(&["processes", "verify", &pid]);
    assert_eq!(v["verdict"], "intact", "{v}");
    assert_eq!(v["running_hash"], expected_hash, "{v}");
    assert_eq!(v["disk_hash"], expected_hash, "{v}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn procmond_on_the_proc_connector_is_sandboxed_and_still_receives() {
    if skip_unless_root("procmond_on_the_proc_connector_is_sandboxed_and_still_receives") {
        return;
    }
    // Subscribing needs CAP_NET_ADMIN; receiving afterwards does not.
    procmond_is_sandboxed_after_attach("proc-connector");
}

#[test]
fn agent_runs_as_agent_user_without_capabilities_and_keeps_working() {
    if skip_unless_root("agent_runs_as_agent_user_without_capabilities_and_keeps_working") {
        return;
    }
    let (user, group) = nobody();
    let (uid, gid) = (user.uid.as_raw(), group.gid.as_raw());
    let opts = AgentOptions {
        backend: "auto".into(),
        env: vec![("DAEMONEYE_AGENT__USER".into(), "nobody".into())],
        ..Default::default()
    };
    let mut agent = Agent::start_in(traversable_root(), opts.clone(), &[]);
    let apid = agent.pid();
    let ids = |s: &BTreeMap<String, String>, key: &str| {
        s.get(key).map(|v| v.split_whitespace().map(|x| x.parse::<u32>().unwrap()).collect::<Vec<_>>())
    };
    wait_for(Duration::from_secs(20), || {
        (ids(&status(Path::new(&format!("/proc/{apid}/status"))), "Uid")? == vec![uid; 4]).then_some(())
    })
    .unwrap_or_else(|| panic!("the agent never became nobody:\n{}", agent.stderr()));
    // Every thread: the user and group (real, effective, saved, fs), no
    // capability, no way to gain one through exec.
    for (path, s) in thread_statuses(apid) {
        assert_eq!(ids(&s, "Uid"), Some(vec![uid; 4]), "{}", path.display());
        assert_eq!(ids(&s, "Gid"), Some(vec![gid; 4]), "{}", path.display());
        for cap in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
            assert!(cap_names(&s[cap]).is_empty(), "{} {cap} = {}", path.display(), s[cap]);
        }
        assert_eq!(s["NoNewPrivs"], "1", "{}", path.display());
    }
    // procmond stays root, with the agent's group (its ledger files get it).
    let pm = procmond_pid(&agent);
    let ledger_dir = agent.data_dir().join("ledger");
    wait_for(Duration::from_secs(20), || audit_after_start(&ledger_dir, pm, "privilege_drop"))
        .unwrap_or_else(|| panic!("procmond {pm} never dropped its capabilities:\n{}", agent.stderr()));
    let pms = status(Path::new(&format!("/proc/{pm}/status")));
    assert_eq!(ids(&pms, "Uid"), Some(vec![0; 4]));
    assert_eq!(ids(&pms, "Gid"), Some(vec![gid; 4]));
    assert_eq!(cap_names(&pms["CapEff"]), set(&DOCUMENTED));

    // End to end: an exec reaches the agent's table.
    exec_reaches_the_agent(&agent, "au");

    // A member of the agent's group can use the CLI (agent.sock is 0660 in
    // that group), and the ledger is readable by the group.
    let sock = agent.data_dir().join("run/agent.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, gid), "agent.sock mode and group");
    // A copy of the CLI where that user can reach it (the checkout may sit
    // in a directory only root can enter, e.g. one made by `mktemp -d`).
    let cli_dir = traversable_root();
    let cli = cli_dir.path().join("daemoneye-cli");
    std::fs::copy(bin("daemoneye-cli"), &cli).unwrap();
    let run = || {
        Command::new(&cli)
            .arg("--data-dir")
            .arg(agent.data_dir())
            .args(["health", "--format", "json"])
            .env_remove("DAEMONEYE_SOCKET")
            .uid(uid)
            .gid(gid)
            .output()
    };
    // A test running beside this one may fork while the copy is still open
    // for writing; its child holds that descriptor until it execs, and
    // until then exec of the copy fails with ETXTBSY.
    let mut out = run();
    for _ in 0..50 {
        match &out {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20));
                out = run();
            }
            _ => break,
        }
    }
    let out = out.unwrap();
    let h: Json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("CLI as nobody: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(h["components"].is_array(), "{h}");
    for entry in std::fs::read_dir(&ledger_dir).unwrap().flatten() {
        let m = entry.metadata().unwrap();
        if m.is_file() && entry.file_name().to_string_lossy().ends_with(".log") {
            assert_eq!(m.gid(), gid, "{}", entry.path().display());
            assert_eq!(m.mode() & 0o040, 0o040, "{}", entry.path().display());
        }
    }
    assert!(!agent.stderr().contains("cannot use this path"), "{}", agent.stderr());

    // SIGTERM to the agent alone: it cannot signal the root procmond, so it
    // asks on procmond's stdin; both stop cleanly.
    kill(Pid::from_raw(i32::try_from(apid).unwrap()), Signal::SIGTERM).unwrap();
    let exit = wait_for(Duration::from_secs(20), || agent.try_wait()).expect("the agent did not stop");
    assert!(exit.success(), "agent exit {exit:?}:\n{}", agent.stderr());
    wait_for(Duration::from_secs(10), || audit_after_start(&ledger_dir, pm, "stop"))
        .unwrap_or_else(|| panic!("procmond {pm} did not stop cleanly:\n{}", agent.stderr()));

    // Once dropped, the agent cannot restart procmond: it exits non-zero
    // for the service manager to restart both. (The old procmond holds the
    // ledger lock until it is gone.)
    wait_for(Duration::from_secs(10), || {
        let state = status(Path::new(&format!("/proc/{pm}/status"))).get("State").cloned();
        (state.is_none() || state.is_some_and(|s| s.starts_with('Z'))).then_some(())
    })
    .expect("the old procmond is still running");
    let mut agent = Agent::start_in(agent.kill9(), opts, &[]);
    let apid = agent.pid();
    wait_for(Duration::from_secs(20), || {
        (ids(&status(Path::new(&format!("/proc/{apid}/status"))), "Uid")? == vec![uid; 4]).then_some(())
    })
    .expect("the restarted agent never became nobody");
    let pm = procmond_pid(&agent);
    kill(Pid::from_raw(i32::try_from(pm).unwrap()), Signal::SIGKILL).unwrap();
    let exit = wait_for(Duration::from_secs(20), || agent.try_wait()).expect("the agent kept running without procmond");
    assert!(!exit.success(), "agent exit {exit:?}");
    let log = agent.stderr();
    assert!(log.contains("procmond exited") && log.contains("cannot start procmond again"), "{log}");
}
