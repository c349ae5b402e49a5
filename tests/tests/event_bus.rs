//! Issue #6: the event bus in use — access control against a real second
//! user, a slow subscriber under an exec storm, bus statistics in `health`,
//! and the detection tasks end to end through the CLI.
//!
//! All tests need root (a second uid, eBPF, reading other processes'
//! `/proc/PID/exe`); they print why and return when not root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]
#![allow(clippy::print_stderr, reason = "skip notices")]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemoneye_lib::proto::bus_message::Kind;
use daemoneye_lib::proto::{BackpressurePolicy, BusMessage, Hello, Ping, ProcessEvent, Subscribe};
use daemoneye_tests::{Agent, AgentOptions, bin, copy_executable, is_root, marker, wait_for};
use prost::Message;
use serde_json::Value as Json;

const NOBODY: u32 = 65534;

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipping {test}: needs root (a second uid, eBPF and other processes' /proc/PID/exe)");
    true
}

fn procmond_pid(agent: &Agent) -> u64 {
    let h = agent.cli_json(&["health"]);
    let pm = h["components"].as_array().unwrap().iter().find(|c| c["name"] == "procmond").cloned().unwrap();
    pm["pid"].as_u64().unwrap_or_else(|| panic!("procmond not running: {h}"))
}

/// Waits until procmond serves detection tasks (its task subscription is up).
fn wait_for_tasks(agent: &Agent) {
    let up = wait_for(Duration::from_secs(30), || {
        let h = agent.cli_json(&["health"]);
        let subs = h["bus"]["subscribers"].as_array().cloned().unwrap_or_default();
        subs.iter().any(|s| s["pattern"] == "control.collector.task").then_some(())
    });
    assert!(up.is_some(), "procmond never subscribed to control.collector.task:\n{}", agent.stderr());
}

#[test]
fn unprivileged_client_is_refused_privileged_topics_but_reads_public_ones() {
    if skip_unless_root("unprivileged_client_is_refused_privileged_topics_but_reads_public_ones") {
        return;
    }
    let agent = Agent::start(AgentOptions {
        env: vec![("DAEMONEYE_BUS__SOCKET_GROUP".into(), "nogroup".into())],
        ..Default::default()
    });
    // The socket is 0660 in the configured group; let nobody traverse to it.
    let socket = agent.data_dir().join("run/bus.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "bus socket mode");
    assert_eq!(meta.gid(), NOBODY, "bus socket group");
    std::fs::set_permissions(agent.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pm_pid = procmond_pid(&agent);

    let out = Command::new(bin("bus-probe"))
        .arg(&socket)
        .arg(NOBODY.to_string())
        .arg(NOBODY.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Json> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let find = |key: &str, value: &str| {
        lines.iter().find(|l| l[key] == value).cloned().unwrap_or_else(|| {
            panic!("no {key}={value} in the probe's output:\n{text}\n{}", String::from_utf8_lossy(&out.stderr))
        })
    };
    assert_eq!(lines[0]["euid"], NOBODY, "{text}");
    // The broker saw the real uid, whatever the client's name says.
    let connect = &lines[1];
    assert_eq!(connect["connect"], true, "{text}");
    assert_eq!(connect["peer_uid"], NOBODY);
    for topic in [
        "events.process.lifecycle",
        "events.process.metadata",
        "control.collector.task",
        "control.collector.result",
        "control.agent.shutdown",
        "control.health.collector",
    ] {
        let p = find("publish", topic);
        assert_eq!(p["ok"], false, "nobody published on {topic}: {text}");
        let err = p["error"].as_str().unwrap();
        assert!(err.contains("may not publish") && err.contains("uid 65534"), "unclear refusal for {topic}: {err}");
    }
    let lifecycle_sub = find("subscribe", "events.process.lifecycle");
    assert_eq!(lifecycle_sub["ok"], false, "{text}");
    assert_eq!(find("subscribe", "control.collector.task")["ok"], false, "{text}");
    assert_eq!(find("subscribe", "control.health.collector")["ok"], true, "{text}");
    let got = lines.iter().find(|l| l.get("received").is_some()).unwrap();
    assert_eq!(got["received"], "control.health.collector", "{text}");
    assert_eq!(got["collector_pid"], pm_pid, "the heartbeat is procmond's: {text}");
    assert!(out.status.success(), "{text}");

    // The refusals are counted in health, and nothing forged reached the table.
    let health = agent.cli_json(&["health"]);
    assert!(health["bus"]["access_denied"].as_u64().unwrap() >= 8, "{}", health["bus"]);
    assert!(agent.query("SELECT seq FROM process_events WHERE name = 'forged'").is_empty());
}

/// Records a delivery's ledger seq; true for the `Pong`.
fn take(m: BusMessage, received: &mut BTreeSet<u64>) -> bool {
    match m.kind {
        Some(Kind::Deliver(d)) => {
            received.insert(ProcessEvent::decode(d.payload.as_slice()).unwrap().seq);
            false
        }
        Some(Kind::Pong(_)) => true,
        other => panic!("unexpected frame: {other:?}"),
    }
}

/// Raw bus connection: frames are 4-byte big-endian length + `BusMessage`.
struct RawClient {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl RawClient {
    fn connect(path: &std::path::Path, name: &str) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        let mut c = RawClient { stream, buf: Vec::new() };
        c.send(Kind::Hello(Hello { client_name: name.into(), protocol_version: 1 }));
        match c.next(Duration::from_secs(5)).and_then(|m| m.kind) {
            Some(Kind::Welcome(_)) => {}
            other => panic!("no Welcome: {other:?}"),
        }
        c
    }

    fn send(&mut self, kind: Kind) {
        let body = BusMessage { kind: Some(kind) }.encode_to_vec();
        let len = u32::try_from(body.len()).unwrap();
        self.stream.write_all(&len.to_be_bytes()).unwrap();
        self.stream.write_all(&body).unwrap();
    }

    /// The next frame, or `None` when nothing arrives within `idle`.
    fn next(&mut self, idle: Duration) -> Option<BusMessage> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + len {
                    let msg = BusMessage::decode(&self.buf[4..4 + len]).unwrap();
                    self.buf.drain(..4 + len);
                    return Some(msg);
                }
            }
            self.stream.set_read_timeout(Some(idle)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the broker closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) => panic!("reading the bus: {e}"),
            }
        }
    }
}

#[test]
fn slow_subscriber_drops_exactly_what_it_lost_and_the_table_misses_nothing() {
    if skip_unless_root("slow_subscriber_drops_exactly_what_it_lost_and_the_table_misses_nothing") {
        return;
    }
    const EXECS: usize = 2000;
    let agent = Agent::start(AgentOptions {
        backend: "ebpf".into(),
        env: vec![("DAEMONEYE_PROCMOND__SAMPLE_INTERVAL".into(), "0s".into())],
        ..Default::default()
    });
    let socket = agent.data_dir().join("run/bus.sock");

    // Subscribe with the drop policy and a small queue, confirm, then stop reading.
    let mut slow = RawClient::connect(&socket, "slow-subscriber");
    slow.send(Kind::Subscribe(Subscribe {
        subscription_id: 1,
        pattern: "events.process.lifecycle".into(),
        policy: BackpressurePolicy::Drop as i32,
        queue_capacity: 64,
    }));
    slow.send(Kind::Ping(Ping { nonce: 7 }));
    let mut received: BTreeSet<u64> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no Pong: the subscription was not confirmed");
        if let Some(m) = slow.next(Duration::from_secs(1))
            && take(m, &mut received)
        {
            break;
        }
    }

    // The exec storm: a marker binary run EXECS times.
    let m = marker("ds");
    let dir = tempfile::tempdir().unwrap();
    let exe = copy_executable(std::path::Path::new("/bin/true"), dir.path(), &m);
    for _ in 0..EXECS {
        assert!(retry_busy(|| Command::new(&exe).status()).success());
    }

    // Wait until the storm has gone through (the marker's exec count is stable).
    let sql = format!("SELECT seq FROM process_events WHERE name = '{m}' AND event_type = 'exec'");
    let mut last_n = 0;
    let settled = wait_for(Duration::from_secs(60), || {
        let n = agent.query(&sql).len();
        let stable = n > 0 && n == last_n;
        last_n = n;
        if stable {
            Some(n)
        } else {
            std::thread::sleep(Duration::from_secs(1));
            None
        }
    });
    let execs_in_table = settled.expect("the storm never reached the table");

    // Now read everything the slow subscriber was sent.
    while let Some(msg) = slow.next(Duration::from_secs(2)) {
        take(msg, &mut received);
    }
    // The storm's tail may have been dropped entirely: one more process,
    // delivered now that the queue is empty, closes the range of seqs routed
    // to the subscriber after every drop.
    let before = *received.last().unwrap();
    let closed = wait_for(Duration::from_secs(20), || {
        assert!(Command::new("/bin/true").status().unwrap().success());
        while let Some(msg) = slow.next(Duration::from_millis(500)) {
            take(msg, &mut received);
        }
        (*received.last().unwrap() > before).then_some(())
    });
    assert!(closed.is_some(), "no delivery after the storm");
    let first = *received.first().unwrap();
    let last = *received.last().unwrap();
    // Every lifecycle message carries its ledger seq and procmond publishes
    // every seq in order, so the messages routed to the subscriber between
    // its first and last delivery are the table's events in that range.
    let in_table: BTreeSet<u64> = agent
        .query(&format!("SELECT seq FROM process_events WHERE seq >= {first} AND seq <= {last}"))
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    // Messages routed to the subscriber: the table's events in the range,
    // plus any delivered record the table does not keep as an event row.
    let routed = in_table.union(&received).count();
    let lost = routed as u64 - received.len() as u64;
    let holes: Vec<u64> = (first..=last).filter(|s| !in_table.contains(s) && !received.contains(s)).collect();
    eprintln!(
        "slow subscriber: {EXECS} execs, {execs_in_table} exec events in the table, {routed} routed, {} received, \
         seqs in neither: {holes:?}",
        received.len()
    );

    let health = agent.cli_json(&["health"]);
    let subs = health["bus"]["subscribers"].as_array().unwrap();
    let me = subs.iter().find(|s| s["client"] == "slow-subscriber").unwrap_or_else(|| panic!("{}", health["bus"]));
    let dropped = me["dropped"].as_u64().unwrap();
    assert_eq!(me["policy"], "drop");
    assert!(dropped > 0, "the storm never filled the slow subscriber's queue: {me}");
    assert_eq!(dropped, lost, "dropped in health vs lost (routed {routed}, received {}): {me}", received.len());
    let topic = health["bus"]["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "events.process.lifecycle")
        .cloned()
        .unwrap();
    assert!(topic["dropped"].as_u64().unwrap() >= dropped, "{topic}");
    // The agent's own subscription lost nothing it did not recover, and the
    // table's subscriber statistics carry latency percentiles.
    let agent_sub = subs.iter().find(|s| s["client"] == "daemoneye-agent").unwrap();
    assert!(agent_sub["latency_p99_us"].as_u64().unwrap() >= agent_sub["latency_p50_us"].as_u64().unwrap());
}

/// Runs `f` again while it fails with ETXTBSY: a freshly copied executable
/// is "busy" while another test thread's fork still holds the write fd
/// (until that child execs).
fn retry_busy<T>(mut f: impl FnMut() -> std::io::Result<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r.unwrap(),
        }
    }
}

fn sha256sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

#[test]
fn detection_tasks_end_to_end_through_the_cli() {
    if skip_unless_root("detection_tasks_end_to_end_through_the_cli") {
        return;
    }
    let agent = Agent::start(AgentOptions { backend: "ebpf".into(), ..Default::default() });
    wait_for_tasks(&agent);
    let dir = tempfile::tempdir().unwrap();

    // ENUMERATE_PROCESSES: live list with name, pid and executable filters.
    let m = marker("dt");
    let exe = copy_executable(std::path::Path::new("/bin/sleep"), dir.path(), &m);
    let mut intact = retry_busy(|| Command::new(&exe).arg("60").spawn());
    let pid = intact.id();
    let rows = agent.cli_json(&["processes", "list", "--live", "--name", &m]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["pid"], pid);
    assert_eq!(rows[0]["executable_path"], exe.display().to_string());
    let by_pid = agent.cli_json(&["processes", "list", "--live", "--pid", &pid.to_string()]);
    assert_eq!(by_pid.as_array().unwrap().len(), 1);
    let pattern = format!("{}/*", dir.path().display());
    let by_exe = agent.cli_json(&["processes", "list", "--live", "--exe", &pattern]);
    assert_eq!(
        by_exe.as_array().unwrap().iter().map(|r| r["pid"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![u64::from(pid)]
    );
    assert!(
        agent.cli_json(&["processes", "list", "--live", "--name", "no-such-proc-x"]).as_array().unwrap().is_empty()
    );

    // VERIFY_EXECUTABLE: intact.
    let v = agent.cli_json(&["processes", "verify", &pid.to_string()]);
    assert_eq!(v["verdict"], "intact", "{v}");
    assert_eq!(v["running_hash"], sha256sum(&exe));
    assert_eq!(v["disk_hash"], v["running_hash"]);

    // CHECK_PROCESS_HASH: match and mismatch (exit 2).
    let expected = sha256sum(&exe);
    let path = exe.display().to_string();
    let c = agent.cli_json(&["processes", "check-hash", &path, "--expected", &expected]);
    assert_eq!(c["verdict"], "match", "{c}");
    let wrong = "0".repeat(64);
    let out = agent.cli(&["processes", "check-hash", &path, "--expected", &wrong, "--format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let c: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((c["verdict"].as_str(), c["actual_hash"].as_str()), (Some("mismatch"), Some(expected.as_str())));

    // A binary replaced on disk while it runs (a running text file cannot be
    // written in place — ETXTBSY — so it is replaced by rename, as installers do).
    let m2 = marker("dr");
    let replaced = copy_executable(std::path::Path::new("/bin/sleep"), dir.path(), &m2);
    let mut replaced_child = retry_busy(|| Command::new(&replaced).arg("60").spawn());
    let running_hash = sha256sum(&replaced);
    let staging = copy_executable(std::path::Path::new("/bin/true"), dir.path(), "staging");
    std::fs::rename(&staging, &replaced).unwrap();
    let out = agent.cli(&["processes", "verify", &replaced_child.id().to_string(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "replaced", "{v}");
    assert_eq!(v["running_hash"], running_hash, "the running image is hashed, not the new file");
    assert_eq!(v["disk_hash"], sha256sum(&replaced));
    assert_eq!(v["file_replaced"], true);
    assert_eq!(v["matches"], false);

    // A binary deleted while it runs.
    let m3 = marker("dd");
    let deleted = copy_executable(std::path::Path::new("/bin/sleep"), dir.path(), &m3);
    let mut deleted_child = retry_busy(|| Command::new(&deleted).arg("60").spawn());
    let deleted_hash = sha256sum(&deleted);
    std::fs::remove_file(&deleted).unwrap();
    let out = agent.cli(&["processes", "verify", &deleted_child.id().to_string(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "deleted", "{v}");
    assert_eq!(v["file_deleted"], true);
    assert_eq!(v["running_hash"], deleted_hash);
    assert!(v["disk_hash"].is_null());

    // Errors are clear: no such pid.
    let out = agent.cli(&["processes", "verify", "4194303"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pid 4194303"), "{}", String::from_utf8_lossy(&out.stderr));

    for c in [&mut intact, &mut replaced_child, &mut deleted_child] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn watch_follows_a_process_tree_with_the_monitor_correlation() {
    if skip_unless_root("watch_follows_a_process_tree_with_the_monitor_correlation") {
        return;
    }
    let agent = Agent::start(AgentOptions { backend: "ebpf".into(), ..Default::default() });
    wait_for_tasks(&agent);
    let dir = tempfile::tempdir().unwrap();
    let m = marker("dw");
    let child_exe = copy_executable(std::path::Path::new("/bin/true"), dir.path(), &m);
    // A root shell that waits (builtin `read`: no child) for a line on its
    // stdin, then runs the marker 3 times.
    let script = format!("read x; for i in 1 2 3; do {}; done; sleep 60", child_exe.display());
    let mut root = Command::new("/bin/sh").arg("-c").arg(&script).stdin(Stdio::piped()).spawn().unwrap();
    let root_pid = root.id();
    // An unrelated marker run must not show up.
    let stranger = copy_executable(std::path::Path::new("/bin/true"), dir.path(), &marker("dx"));

    let mut watch = Command::new(bin("daemoneye-cli"))
        .arg("--data-dir")
        .arg(agent.data_dir())
        .args(["processes", "watch", &root_pid.to_string(), "--count", "9", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = watch.stdout.take().unwrap();
    // The first line says the monitor started with the root in its tree.
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    let started: Json =
        serde_json::from_slice(&first).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&first)));
    let monitor = started["monitor"].as_str().unwrap().to_owned();
    assert!(started["processes"].as_array().unwrap().iter().any(|p| p["pid"] == root_pid), "{started}");

    assert!(retry_busy(|| Command::new(&stranger).status()).success());
    root.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = watch.wait().unwrap();
    assert!(status.success(), "watch failed: {rest}");
    let events: Vec<Json> = rest.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 9, "{rest}");
    for e in &events {
        assert_eq!(e["monitor"], Json::from(monitor.as_str()), "event not tagged with the monitor: {e}");
        assert_ne!(e["name"], stranger.file_name().unwrap().to_str().unwrap(), "a stranger leaked in: {e}");
    }
    let marker_execs = events.iter().filter(|e| e["event_type"] == "exec" && e["name"] == m.as_str()).count();
    assert!(marker_execs >= 1, "no exec of the marker child among {rest}");
    let _ = root.kill();
    let _ = root.wait();
}
