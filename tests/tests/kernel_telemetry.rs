//! Issue #3: kernel telemetry end to end — exec storms through eBPF and the
//! proc connector reach `process_events` complete, exit codes and signals
//! are right, threads are not processes, processes that predate procmond
//! come from the `/proc` snapshot, and loss is reported, never silent.
//!
//! Needs root (eBPF, netlink proc connector); skips with a printed reason
//! otherwise. With `--backend ebpf` as root the eBPF object must be built
//! (`cargo xtask build-ebpf`): a missing object fails the test.
//!
//! The tests take a lock so that two storms never share the two CPUs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]
#![allow(clippy::print_stderr, reason = "tests report skips and measured rates")]

use std::collections::HashSet;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use daemoneye_tests::{Agent, AgentOptions, bin_dir, copy_executable, is_root, marker, wait_for};
use serde_json::Value as Json;

/// Processes in a storm.
const STORM: usize = 5_000;
/// Env var that turns [`child_helper`] into a helper process.
const CHILD_ENV: &str = "DAEMONEYE_E2E_CHILD";

static SERIAL: Mutex<()> = Mutex::new(());

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped {test}: needs root (eBPF and the netlink proc connector)");
    true
}

/// Starts an agent on `backend` and waits until procmond reports it.
/// For `ebpf`, a missing eBPF object is a failure, not a skip.
fn start(backend: &str, env: Vec<(String, String)>) -> Agent {
    let object = bin_dir().parent().unwrap().join("ebpf-object/procmond.bpf.o");
    if backend == "ebpf" {
        assert!(
            object.exists(),
            "{} is missing: run `cargo xtask build-ebpf`, then `cargo build --workspace --bins`",
            object.display()
        );
    }
    let agent = Agent::start(AgentOptions { backend: backend.into(), env, ..Default::default() });
    let want = backend.replace('-', "_");
    let up =
        wait_for(Duration::from_secs(60), || (agent.cli_json(&["health"])["backend"] == want.as_str()).then_some(()));
    assert!(
        up.is_some(),
        "procmond never reported backend {want}: {}\n{}",
        agent.cli_json(&["health"]),
        agent.stderr()
    );
    agent
}

/// A fresh marker binary (a copy of /bin/true under a unique name).
fn marker_binary(dir: &Path, prefix: &str) -> (String, PathBuf) {
    let name = marker(prefix);
    let exe = copy_executable(Path::new("/bin/true"), dir, &name);
    (name, exe)
}

/// Two workers fork+exec `exe` `total` times as fast as they can, argv
/// `<name> <run_id> <i>`. Returns the children's pids.
fn storm(exe: &Path, name: &str, run_id: &str, total: usize) -> Vec<u32> {
    let started = Instant::now();
    let pids: Vec<u32> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                s.spawn(move || {
                    let mut pids = Vec::with_capacity(total / 2 + 1);
                    for i in (w..total).step_by(2) {
                        let mut child = Command::new(exe)
                            .arg0(name)
                            .args([run_id, &i.to_string()])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .spawn()
                            .unwrap();
                        pids.push(child.id());
                        assert!(child.wait().unwrap().success());
                    }
                    pids
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let secs = started.elapsed().as_secs_f64();
    eprintln!("storm: {total} exec in {secs:.2} s ({:.0} exec/s)", total as f64 / secs);
    pids
}

fn count(agent: &Agent, sql: &str) -> i64 {
    agent.query(sql)[0]["n"].as_i64().unwrap_or(0)
}

/// Waits until `sql` (a `count(*) AS n`) reaches `want`; returns the last
/// count.
fn wait_count(agent: &Agent, sql: &str, want: i64, timeout: Duration) -> i64 {
    let mut last = 0;
    let _ = wait_for(timeout, || {
        last = count(agent, sql);
        (last >= want).then_some(())
    });
    last
}

fn health(agent: &Agent) -> Json {
    agent.cli_json(&["health"])
}

fn rows(agent: &Agent, sql: &str) -> Vec<Json> {
    match agent.cli_json(&["query", "--max-rows", "100000", sql]) {
        Json::Array(r) => r,
        other => panic!("query returned {other}"),
    }
}

#[test]
fn ebpf_storm_is_complete_with_argv_ppid_and_exit_codes() {
    if skip_unless_root("ebpf_storm_is_complete_with_argv_ppid_and_exit_codes") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let agent = start("ebpf", Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let (m, exe) = marker_binary(dir.path(), "st");
    let run_id = format!("run{}", std::process::id());
    let pids = storm(&exe, &m, &run_id, STORM);

    let execs = format!("SELECT count(*) AS n FROM process_events WHERE name = '{m}' AND event_type = 'exec'");
    let exits = format!("SELECT count(*) AS n FROM process_events WHERE name = '{m}' AND event_type = 'exit'");
    let n = wait_count(&agent, &execs, STORM as i64, Duration::from_secs(180));
    assert_eq!(n, STORM as i64, "exec events; health: {}", health(&agent));
    let n = wait_count(&agent, &exits, STORM as i64, Duration::from_secs(60));
    assert_eq!(n, STORM as i64, "exit events; health: {}", health(&agent));

    let me = i64::from(std::process::id());
    let execs = rows(
        &agent,
        &format!("SELECT pid, ppid, argv, source FROM process_events WHERE name = '{m}' AND event_type = 'exec'"),
    );
    let mut seen_i = HashSet::new();
    for r in &execs {
        assert_eq!(r["ppid"].as_i64(), Some(me), "{r}");
        assert_eq!(r["source"], "ebpf", "{r}");
        let argv: Vec<String> = serde_json::from_str(r["argv"].as_str().unwrap()).unwrap();
        assert_eq!(argv.len(), 3, "{r}");
        assert_eq!((argv[0].as_str(), argv[1].as_str()), (m.as_str(), run_id.as_str()), "{r}");
        assert!(seen_i.insert(argv[2].parse::<usize>().unwrap()), "argument seen twice: {r}");
    }
    assert_eq!(seen_i, (0..STORM).collect::<HashSet<_>>(), "every unique argument, once");
    let exec_pids: HashSet<u32> = execs.iter().map(|r| u32::try_from(r["pid"].as_i64().unwrap()).unwrap()).collect();
    assert_eq!(exec_pids, pids.iter().copied().collect(), "the pids the storm started");

    let bad = rows(
        &agent,
        &format!(
            "SELECT pid, exit_code, signal FROM process_events WHERE name = '{m}' AND event_type = 'exit' \
             AND (exit_code IS NULL OR exit_code <> 0 OR signal IS NOT NULL)"
        ),
    );
    assert!(bad.is_empty(), "exits not 0: {bad:?}");
    let h = health(&agent);
    assert_eq!(h["events_lost"], 0, "{h}");
    let gaps = count(&agent, "SELECT count(*) AS n FROM process_events WHERE event_type = 'gap'");
    assert_eq!(gaps, 0, "no gap events");
}

#[test]
fn ebpf_exit_codes_signals_threads_and_the_startup_snapshot() {
    if skip_unless_root("ebpf_exit_codes_signals_threads_and_the_startup_snapshot") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    // Running before procmond starts: must come from the snapshot.
    let dir = tempfile::tempdir().unwrap();
    let old_name = marker("pre");
    let old_exe = copy_executable(Path::new("/bin/sleep"), dir.path(), &old_name);
    let mut old = Command::new(&old_exe).arg("120").spawn().unwrap();
    let agent = start("ebpf", Vec::new());

    let me = std::process::id();
    let row = wait_for(Duration::from_secs(30), || {
        agent
            .query(&format!("SELECT pid, ppid, parent_key, source, is_alive FROM processes WHERE pid = {}", old.id()))
            .pop()
    })
    .expect("the pre-existing process is in processes");
    let my_key = agent.query(&format!("SELECT process_key FROM processes WHERE pid = {me}")).pop().unwrap();
    assert_eq!(row["source"], "procfs", "{row}");
    assert_eq!(row["ppid"], me, "{row}");
    assert_eq!(row["parent_key"], my_key["process_key"], "{row}");
    assert_eq!(row["is_alive"], 1, "{row}");

    // A process whose non-leader thread calls exit(3) while other threads
    // run: one exit, code 3. Then one whose non-leader thread execs the
    // marker: the process lives on under its key and exits once, code 0.
    let (m, exe) = marker_binary(dir.path(), "th");
    let mt = helper(&[("threads", "")]);
    let te = helper(&[("exec", exe.to_str().unwrap()), ("marker", &m)]);

    // Exit code and signal.
    let sh = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
    let sh_pid = sh.id();
    assert_eq!(sh.wait_with_output().unwrap().status.code(), Some(7));
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let killed = sleeper.id();
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    // The SIGKILL'd exit is the last: when it is in, the others are too.
    let exit_of = |pid: u32| {
        agent.query(&format!(
            "SELECT exit_code, signal, process_key FROM process_events WHERE pid = {pid} AND event_type = 'exit'"
        ))
    };
    let k = wait_for(Duration::from_secs(30), || exit_of(killed).pop()).expect("exit of the killed sleep");
    assert_eq!((k["exit_code"].clone(), k["signal"].clone()), (Json::Null, Json::from(9)), "{k}");
    let s = exit_of(sh_pid);
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!((s[0]["exit_code"].clone(), s[0]["signal"].clone()), (Json::from(7), Json::Null), "{s:?}");

    let e = exit_of(mt);
    assert_eq!(e.len(), 1, "one exit for a multi-threaded process: {e:?}");
    assert_eq!(e[0]["exit_code"], 3, "{e:?}");

    let e = exit_of(te);
    assert_eq!(e.len(), 1, "one exit after a thread's exec: {e:?}");
    assert_eq!(e[0]["exit_code"], 0, "{e:?}");
    let x = agent.query(&format!(
        "SELECT seq, event_time, source, process_key, argv FROM process_events WHERE pid = {te} AND event_type = 'exec' AND name = '{m}'"
    ));
    assert_eq!(
        x.len(),
        1,
        "the thread's exec: {x:?}\nall: {:?}",
        agent.query(&format!(
            "SELECT seq, event_type, event_time, name, exit_code FROM process_events WHERE pid = {te}"
        ))
    );
    assert_eq!(x[0]["process_key"], e[0]["process_key"], "the same process");
    assert_eq!(x[0]["argv"], Json::from(format!(r#"["{m}","from-thread"]"#)));

    let _ = old.kill();
    let _ = old.wait();
}

#[test]
fn proc_connector_storm_sees_every_exec_and_exit_pid() {
    if skip_unless_root("proc_connector_storm_sees_every_exec_and_exit_pid") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let agent = start("proc-connector", Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let (m, exe) = marker_binary(dir.path(), "pc");
    let run_id = format!("run{}", std::process::id());
    let head = health(&agent)["last_applied_seq"].as_i64().unwrap_or(0);
    let pids: HashSet<i64> = storm(&exe, &m, &run_id, STORM).into_iter().map(i64::from).collect();

    // Names come from /proc and may be NULL: match by pid after the start.
    let pids_of = |kind: &str| -> HashSet<i64> {
        rows(
            &agent,
            &format!(
                "SELECT pid FROM process_events WHERE seq > {head} AND event_type = '{kind}' \
                 AND source = 'proc_connector'"
            ),
        )
        .iter()
        .filter_map(|r| r["pid"].as_i64())
        .collect()
    };
    let mut missing = Vec::new();
    let done = wait_for(Duration::from_secs(180), || {
        let execs = pids_of("exec");
        let exits = pids_of("exit");
        missing = pids.iter().filter(|p| !execs.contains(p) || !exits.contains(p)).copied().collect();
        missing.is_empty().then_some(())
    });
    assert!(
        done.is_some(),
        "{} pids lack an exec or exit (e.g. {:?}); health {}",
        missing.len(),
        &missing[..missing.len().min(5)],
        health(&agent)
    );

    // Where /proc could still be read, the argv is the storm's (a zombie
    // has a name but no argv any more).
    let argvs = rows(
        &agent,
        &format!(
            "SELECT argv FROM process_events WHERE seq > {head} AND event_type = 'exec' AND name = '{m}' \
             AND argv IS NOT NULL"
        ),
    );
    for r in &argvs {
        let argv: Vec<String> = serde_json::from_str(r["argv"].as_str().unwrap()).unwrap();
        assert_eq!((argv.len(), argv[0].as_str(), argv[1].as_str()), (3, m.as_str(), run_id.as_str()), "{r}");
    }
    let bad = count(
        &agent,
        &format!(
            "SELECT count(*) AS n FROM process_events WHERE seq > {head} AND event_type = 'exit' \
             AND source = 'proc_connector' AND name = '{m}' AND exit_code <> 0"
        ),
    );
    assert_eq!(bad, 0);
    eprintln!(
        "proc connector: {} of {STORM} execs enriched with argv; events_lost {}",
        argvs.len(),
        health(&agent)["events_lost"]
    );
}

#[test]
fn a_tiny_ring_buffer_reports_its_losses() {
    if skip_unless_root("a_tiny_ring_buffer_reports_its_losses") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let agent = start("ebpf", vec![("DAEMONEYE_PROCMOND__RINGBUF_SIZE".into(), "4KiB".into())]);
    let dir = tempfile::tempdir().unwrap();
    let (m, exe) = marker_binary(dir.path(), "rb");
    let run_id = format!("run{}", std::process::id());
    let head = health(&agent)["last_applied_seq"].as_i64().unwrap_or(0);
    // A consumer that keeps up never fills even 4 KiB, however fast the
    // storm: stall procmond (SIGSTOP) for the storm, as a busy or
    // descheduled collector would be, so the ring must overflow.
    let procmond = health(&agent)["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "procmond"))
        .and_then(|c| c["pid"].as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .expect("procmond pid in health");
    let procmond = nix::unistd::Pid::from_raw(procmond);
    nix::sys::signal::kill(procmond, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let pids = storm(&exe, &m, &run_id, STORM);
    nix::sys::signal::kill(procmond, nix::sys::signal::Signal::SIGCONT).unwrap();

    // Nothing is under-counted: what arrived plus what was reported lost
    // covers the storm (the lost counts also include other processes').
    let execs = || {
        count(&agent, &format!("SELECT count(*) AS n FROM process_events WHERE name = '{m}' AND event_type = 'exec'"))
    };
    // By pid: the exit of a process whose exec was lost has another name.
    let exits = || {
        let rows = rows(&agent, &format!("SELECT pid FROM process_events WHERE seq > {head} AND event_type = 'exit'"));
        let exited: HashSet<i64> = rows.iter().filter_map(|r| r["pid"].as_i64()).collect();
        pids.iter().filter(|p| exited.contains(&i64::from(**p))).count() as i64
    };
    let lost = || health(&agent)["events_lost"].as_i64().unwrap_or(0);
    // Wait while the agent still ingests the backlog.
    let mut last = (0, 0, 0);
    let covered = wait_for(Duration::from_secs(120), || {
        last = (execs(), exits(), lost());
        (last.0 + last.1 + last.2 >= 2 * STORM as i64).then_some(())
    });
    let (execs, exits, total_lost) = last;
    eprintln!("tiny ring: seen {execs} execs and {exits} exits of {STORM}; {total_lost} events reported lost");
    assert!(covered.is_some(), "loss not accounted for: seen {execs} + {exits}, lost {total_lost}");
    assert!(execs < STORM as i64 || exits < STORM as i64, "a 4 KiB ring should overflow under the storm");

    // Once all is in: the gap rows add up to what health shows, and the
    // loss is visible.
    let sum = "SELECT count(*) AS n, sum(lost_events) AS lost FROM process_events WHERE event_type = 'gap'";
    let mut last = (Json::Null, Json::Null);
    let agreed = wait_for(Duration::from_secs(120), || {
        let r = agent.query(sum).pop()?;
        let lost = health(&agent)["events_lost"].clone();
        last = (r["lost"].clone(), lost.clone());
        (r["lost"].as_i64().is_some_and(|l| l > 0) && r["lost"] == lost).then_some(())
    });
    assert!(agreed.is_some(), "gap sum vs health events_lost: {last:?}");
}

/// Starts this test binary as a helper process (see [`child_helper`]) and
/// waits for it; returns its pid.
fn helper(args: &[(&str, &str)]) -> u32 {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_helper", "--nocapture", "--test-threads", "1"]);
    for (k, v) in args {
        cmd.env(format!("{CHILD_ENV}_{}", k.to_uppercase()), v);
    }
    let child = cmd.env(CHILD_ENV, "1").stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.code().is_some(), "helper died of a signal: {:?}", out.status);
    pid
}

/// Not a test of its own: a helper process when [`CHILD_ENV`] is set.
/// `_THREADS`: four threads, the last calls `exit(3)`. `_EXEC=<path>`
/// (with `_MARKER=<name>`): a non-leader thread execs `<path>`.
#[test]
fn child_helper() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let _sleepers: Vec<_> =
        (0..3).map(|_| std::thread::spawn(|| std::thread::sleep(Duration::from_secs(30)))).collect();
    if let Some(path) = std::env::var_os(format!("{CHILD_ENV}_EXEC")) {
        let name = std::env::var(format!("{CHILD_ENV}_MARKER")).unwrap();
        let t = std::thread::spawn(move || Command::new(path).arg0(name).arg("from-thread").exec());
        panic!("exec from a thread failed: {:?}", t.join());
    }
    std::thread::spawn(|| std::process::exit(3)).join().unwrap();
}
