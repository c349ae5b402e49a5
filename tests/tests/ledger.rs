//! Issue #5: the audit ledger's operator side, end to end with the real
//! binaries and real files: `ledger verify` locating tampering in a copy,
//! procmond and agent crashes (kill -9) under load, `ledger replay`
//! reproducing live alerts, and `ledger state --at` reproducing the table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use daemoneye_tests::{Agent, AgentOptions, bin, copy_executable, is_root, marker, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value as Json;

/// Runs `daemoneye-cli ledger ARGS` (no agent involved).
fn ledger(args: &[&str]) -> Output {
    Command::new(bin("daemoneye-cli")).arg("ledger").args(args).env_remove("DAEMONEYE_SOCKET").output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ledger_json(args: &[&str]) -> Json {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let out = ledger(&all);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ledger {args:?}: no JSON ({e}): {}", text(&out)))
}

/// Every record of the ledger in `dir` (seq, kind, summary, file, offset, ...).
fn records(dir: &Path) -> Vec<Json> {
    ledger_json(&["tail", "--dir", dir.to_str().unwrap(), "-n", "10000000"]).as_array().unwrap().clone()
}

/// Copies the ledger directory (segments and public key) to a new temp dir.
fn copy_ledger(src: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("ledger");
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let keep = name.to_string_lossy().ends_with(".log") || name == "ledger.pub";
        if keep {
            std::fs::copy(e.path(), dst.join(&name)).unwrap();
        }
    }
    (tmp, dst)
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// eBPF when root (sees every exec), else poll.
fn backend() -> String {
    if is_root() { "ebpf".into() } else { "poll".into() }
}

/// True once procmond `pid` wrote its `action` audit record: its `start`
/// record names the pid, and `action` follows it in the same run.
fn has_audit(dir: &Path, action: &str, pid: u64) -> Option<()> {
    let recs = records(dir);
    let start = recs.iter().position(|r| {
        r["kind"] == "audit" && r["summary"].as_str().is_some_and(|s| s.starts_with(&format!("start pid={pid} ")))
    })?;
    recs[start..]
        .iter()
        .any(|r| r["kind"] == "audit" && r["summary"].as_str().is_some_and(|s| s.starts_with(action)))
        .then_some(())
}

fn procmond_pid(agent: &Agent) -> Option<u64> {
    let h = agent.cli_json(&["health"]);
    h["components"].as_array()?.iter().find(|c| c["name"] == "procmond").and_then(|c| c["pid"].as_u64())
}

/// Runs `exe` to completion over and over until `stop`, counting runs.
fn exec_burst(exe: PathBuf, stop: Arc<AtomicBool>, runs: Arc<AtomicUsize>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let _ = Command::new(&exe).status();
            runs.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[test]
fn verify_locates_a_flipped_byte_and_a_cut_tail_in_a_copy() {
    let agent = Agent::start(AgentOptions::default());
    let dir = agent.data_dir().join("ledger");
    // procmond's start-up records and the /proc snapshot are enough data.
    let recs = wait_for(Duration::from_secs(20), || {
        let r = records(&dir);
        r.iter().any(|r| r["kind"] == "event").then_some(r)
    })
    .expect("no event record in the ledger");
    let (_tmp, copy) = copy_ledger(&dir);
    let copy_s = copy.to_str().unwrap();

    let ok = ledger(&["verify", "--dir", copy_s, "--format", "json"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let report: Json = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["status"], "ok");
    assert!(report["records"].as_u64().unwrap() >= recs.len() as u64, "{report}");
    let last_seq = report["last_seq"].as_u64().unwrap();
    let last_hash = report["last_entry_hash"].as_str().unwrap().to_owned();
    // The key kept elsewhere verifies too.
    let key_copy = _tmp.path().join("trusted.pub");
    std::fs::copy(copy.join("ledger.pub"), &key_copy).unwrap();
    let ok = ledger(&["verify", "--dir", copy_s, "--pubkey", key_copy.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok));

    // One flipped byte in an event's payload: named by seq, file, offset.
    let victim = recs.iter().find(|r| r["kind"] == "event").unwrap();
    let (seq, offset) = (victim["seq"].as_u64().unwrap(), victim["offset"].as_u64().unwrap());
    let file_name = Path::new(victim["file"].as_str().unwrap()).file_name().unwrap().to_owned();
    let seg = copy.join(&file_name);
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&seg).unwrap();
    // len 4 + seq 8 + time 8 + kind 1 + payload_len 4: the payload's first byte.
    let at = offset + 25;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
    drop(f);
    let bad = ledger(&["verify", "--dir", copy_s, "--format", "json"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains(&format!("seq {seq} ")), "{err}");
    assert!(err.contains(&*file_name.to_string_lossy()), "{err}");
    assert!(err.contains(&format!("offset {offset}")), "{err}");
    let report: Json = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(report["status"], "failed");
    assert_eq!(report["problem"]["seq"], seq);
    assert_eq!(report["problem"]["offset"], offset);
    assert_eq!(report["records"], seq - 1, "every record before it is good");

    // A fresh copy cut before its end passes alone, but not against the
    // (seq, hash) saved from the full ledger.
    let (_tmp2, cut) = copy_ledger(&dir);
    let expect = format!("{last_seq}:{last_hash}");
    let ok = ledger(&["verify", "--dir", cut.to_str().unwrap(), "--expect", &expect]);
    assert!(ok.status.success(), "{}", text(&ok));
    let saved = records(&cut).into_iter().find(|r| r["seq"] == last_seq).unwrap();
    let seg = PathBuf::from(saved["file"].as_str().unwrap());
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(saved["offset"].as_u64().unwrap()).unwrap();
    while last_segment(&cut) != seg {
        std::fs::remove_file(last_segment(&cut)).unwrap();
    }
    let ok = ledger(&["verify", "--dir", cut.to_str().unwrap()]);
    assert!(ok.status.success(), "a clean cut is a shorter valid chain: {}", text(&ok));
    let bad = ledger(&["verify", "--dir", cut.to_str().unwrap(), "--expect", &expect]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cut off"), "{}", text(&bad));
    // Not a ledger: a clear error, non-zero.
    let none = ledger(&["verify", "--dir", _tmp.path().to_str().unwrap()]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no segment files"), "{}", text(&none));
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[test]
fn procmond_kill9_under_exec_burst_and_a_torn_tail_recover_and_verify() {
    let opts = AgentOptions { backend: backend(), ..Default::default() };
    let agent = Agent::start(opts.clone());
    let dir = agent.data_dir().join("ledger");
    let bins = tempfile::tempdir().unwrap();
    let exe = copy_executable(Path::new("/bin/true"), bins.path(), &marker("lk"));
    let (stop, runs) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let burst = exec_burst(exe, Arc::clone(&stop), Arc::clone(&runs));

    let first = wait_for(Duration::from_secs(15), || procmond_pid(&agent)).expect("procmond not running");
    // procmond is writing events (its backend is up) and the burst is on.
    wait_for(Duration::from_secs(20), || has_audit(&dir, "backend", first)).expect("procmond never chose a backend");
    wait_for(Duration::from_secs(10), || (runs.load(Ordering::Relaxed) > 50).then_some(())).unwrap();
    kill(Pid::from_raw(i32::try_from(first).unwrap()), Signal::SIGKILL).unwrap();
    let second = wait_for(Duration::from_secs(20), || procmond_pid(&agent).filter(|p| *p != first))
        .expect("procmond was not restarted");
    // The new procmond recovered the ledger and writes under load too.
    wait_for(Duration::from_secs(20), || has_audit(&dir, "backend", second)).expect("restarted procmond never came up");
    let at = runs.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(10), || (runs.load(Ordering::Relaxed) > at + 50).then_some(())).unwrap();
    stop.store(true, Ordering::Relaxed);
    burst.join().unwrap();

    let ok = ledger(&["verify", "--dir", dir.to_str().unwrap(), "--format", "json"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let recs = records(&dir);
    let audits: Vec<&str> =
        recs.iter().filter(|r| r["kind"] == "audit").map(|r| r["summary"].as_str().unwrap()).collect();
    // kill -9 rarely tears a write; when it did, the restart says what it cut.
    for a in audits.iter().filter(|a| a.starts_with("ledger.recovered")) {
        assert!(a.contains("offset=") && a.contains("bytes=") && a.contains("first_lost_seq="), "{a}");
    }

    // A torn tail, deterministically: crash everything, leave the first
    // half of a record (a copy of the last one's) at the end, start again.
    let root = agent.kill9();
    let ledger_dir = root.path().join("data/ledger");
    let seg = last_segment(&ledger_dir);
    let last = records(&ledger_dir).pop().unwrap();
    assert_eq!(Path::new(last["file"].as_str().unwrap()), seg);
    let bytes = std::fs::read(&seg).unwrap();
    let offset = usize::try_from(last["offset"].as_u64().unwrap()).unwrap();
    // The record's length field, plus itself; anything after it is a tail
    // the crash may have left already (dropped here, so the cut is ours).
    let len = 4 + u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
    let cut_at = (offset + len) as u64;
    let torn = bytes[offset..offset + len / 2].to_vec();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(cut_at).unwrap();
    drop(f);
    std::fs::OpenOptions::new().append(true).open(&seg).unwrap().write_all(&torn).unwrap();
    let bad = ledger(&["verify", "--dir", root.path().join("data/ledger").to_str().unwrap(), "--format", "json"]);
    let report: Json = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(report["incomplete_tail"]["offset"], cut_at, "{}", text(&bad));

    let agent = Agent::start_in(root, opts, &[]);
    let dir = agent.data_dir().join("ledger");
    let recovered = wait_for(Duration::from_secs(20), || {
        records(&dir)
            .into_iter()
            .find(|r| r["kind"] == "audit" && r["summary"].as_str().unwrap().starts_with("ledger.recovered"))
    })
    .expect("no ledger.recovered audit record after a torn tail");
    let s = recovered["summary"].as_str().unwrap();
    assert!(s.contains(&format!("offset={cut_at}")), "{s}");
    assert!(s.contains(&format!("bytes={}", torn.len())), "{s}");
    assert!(s.contains(&*seg.file_name().unwrap().to_string_lossy()), "{s}");
    let ok = ledger(&["verify", "--dir", dir.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn agent_kill9_during_exec_storm_catches_up_every_exec_exactly_once() {
    if !is_root() {
        eprintln!("skipped: needs root for the eBPF backend (the poll backend cannot see 1,000 short execs)");
        return;
    }
    const STORM: usize = 1000;
    let opts = AgentOptions { backend: "ebpf".into(), ..Default::default() };
    let agent = Agent::start(opts.clone());
    let dir = agent.data_dir().join("ledger");
    let pm = wait_for(Duration::from_secs(15), || procmond_pid(&agent)).expect("procmond not running");
    // The eBPF programs are attached once the backend is recorded.
    wait_for(Duration::from_secs(20), || has_audit(&dir, "backend", pm)).expect("procmond never chose a backend");
    let m = marker("st");
    let bins = tempfile::tempdir().unwrap();
    let exe = copy_executable(Path::new("/bin/true"), bins.path(), &m);
    let runs = Arc::new(AtomicUsize::new(0));
    let storm = {
        let runs = Arc::clone(&runs);
        std::thread::spawn(move || {
            for _ in 0..STORM {
                assert!(Command::new(&exe).status().unwrap().success());
                runs.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Crash the agent alone, mid-storm: procmond keeps writing the ledger.
    wait_for(Duration::from_secs(30), || (runs.load(Ordering::Relaxed) >= STORM / 4).then_some(())).unwrap();
    kill(Pid::from_raw(i32::try_from(agent.pid()).unwrap()), Signal::SIGKILL).unwrap();
    storm.join().unwrap();

    // The ledger has the whole storm, read offline while nobody applies it.
    let count_sql = format!("SELECT count(*) AS n FROM process_events WHERE event_type = 'exec' AND name = '{m}'");
    let in_ledger = wait_for(Duration::from_secs(30), || {
        let out = ledger(&["state", "--at", "now", "--dir", dir.to_str().unwrap(), &count_sql, "--format", "json"]);
        let v: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        let n = v[0]["n"].as_u64().unwrap();
        eprintln!("execs of {m} in the ledger: {n}; {}", String::from_utf8_lossy(&out.stderr).trim());
        (n == STORM as u64).then_some(n)
    });
    assert!(in_ledger.is_some(), "the ledger never held {STORM} execs of {m}");

    // Restart on the same data dir (the orphaned procmond goes with the old group).
    let root = agent.kill9();
    let agent = Agent::start_in(root, opts, &[]);
    let sql = format!(
        "SELECT count(*) AS n, count(DISTINCT seq) AS seqs, count(DISTINCT process_key) AS keys \
         FROM process_events WHERE event_type = 'exec' AND name = '{m}'"
    );
    let row = wait_for(Duration::from_secs(60), || {
        let rows = agent.query(&sql);
        (rows[0]["n"].as_u64().unwrap() >= STORM as u64).then(|| rows[0].clone())
    })
    .unwrap_or_else(|| panic!("the agent did not catch up: {:?}", agent.query(&sql)));
    assert_eq!(row["n"], STORM as u64, "an exec was applied twice: {row}");
    assert_eq!(row["seqs"], STORM as u64, "{row}");
    assert_eq!(row["keys"], STORM as u64, "{row}");
    let procs = agent.query(&format!("SELECT count(*) AS n FROM processes WHERE name = '{m}'"));
    assert_eq!(procs[0]["n"], STORM as u64);
}

fn marker_rules(m: &str) -> Vec<(String, String)> {
    vec![(
        "replay.yaml".into(),
        format!(
            "- id: rp-marker\n  name: marker ran\n  description: d\n  severity: high\n  sql: |\n    SELECT pid, process_key, name FROM process_events\n    WHERE event_type IN ('exec', 'snapshot') AND name = '{m}'\n\
             - id: rp-marker-once\n  name: marker ran (by name)\n  description: d\n  severity: low\n  sql: SELECT pid, process_key, name FROM process_events WHERE event_type IN ('exec', 'snapshot') AND name = '{m}'\n  dedupe: {{ key: [name], window: 10m }}\n"
        ),
    )]
}

fn alert_ids(alerts: &[Json]) -> Vec<(String, String, u64)> {
    alerts
        .iter()
        .map(|a| {
            (
                a["rule_id"].as_str().unwrap().to_owned(),
                a["process_key"].as_str().unwrap().to_owned(),
                a["pid"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn replay_of_a_live_range_raises_the_same_alerts_in_the_same_order() {
    let m = marker("rp");
    let agent = Agent::start(AgentOptions { backend: backend(), rules: marker_rules(&m), ..Default::default() });
    let pm = wait_for(Duration::from_secs(15), || procmond_pid(&agent)).expect("procmond not running");
    let dir = agent.data_dir().join("ledger");
    wait_for(Duration::from_secs(20), || has_audit(&dir, "backend", pm)).expect("procmond never chose a backend");
    let bins = tempfile::tempdir().unwrap();
    let exe = copy_executable(Path::new("/bin/sleep"), bins.path(), &m);
    let since = now_ms();
    // Long enough for the poll backend to see each one.
    let mut children: Vec<_> = (0..5).map(|_| Command::new(&exe).arg("2").spawn().unwrap()).collect();
    let live = wait_for(Duration::from_secs(20), || {
        let all = agent.cli_json(&["alerts", "list"]);
        let mine: Vec<Json> = all
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["rule_id"].as_str().unwrap().starts_with("rp-"))
            .cloned()
            .collect();
        (mine.iter().filter(|a| a["rule_id"] == "rp-marker").count() == 5).then_some(mine)
    })
    .expect("live run did not raise 5 alerts");
    for c in &mut children {
        c.wait().unwrap();
    }
    let until = now_ms();
    assert_eq!(live.iter().filter(|a| a["rule_id"] == "rp-marker-once").count(), 1, "{live:?}");

    let (_tmp, copy) = copy_ledger(&dir);
    let (s, u) = (since.to_string(), until.to_string());
    let rules = agent.rules_dir();
    let args =
        ["replay", "--since", &s, "--until", &u, "--rules", rules.to_str().unwrap(), "--dir", copy.to_str().unwrap()];
    let replayed = ledger_json(&args);
    let replayed = replayed.as_array().unwrap();
    assert_eq!(alert_ids(replayed), alert_ids(&live), "replay:\n{replayed:#?}\nlive:\n{live:#?}");
    let seqs = |v: &[Json]| v.iter().map(|a| a["event_seq"].clone()).collect::<Vec<_>>();
    assert_eq!(seqs(replayed), seqs(&live));
    // The JSON-lines form carries the same alerts.
    let mut jl = args.to_vec();
    jl.push("--jsonl");
    let out = ledger(&jl);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), live.len());
    // A range before the markers raises nothing.
    let before = (since - 60_000).to_string();
    let early = [
        "replay",
        "--since",
        &before,
        "--until",
        &s,
        "--rules",
        rules.to_str().unwrap(),
        "--dir",
        copy.to_str().unwrap(),
    ];
    assert_eq!(ledger_json(&early), Json::Array(Vec::new()));
}

#[test]
fn state_at_a_time_equals_the_table_the_agent_showed_then() {
    let agent = Agent::start(AgentOptions::default());
    let dir = agent.data_dir().join("ledger");
    let d = dir.to_str().unwrap();
    let sql = "SELECT process_key, pid, name, is_alive FROM processes";
    let applied = |a: &Agent| a.cli_json(&["health"])["last_applied_seq"].as_u64().unwrap();
    let as_set = |rows: &[Json]| -> BTreeSet<String> { rows.iter().map(Json::to_string).collect() };
    // A snapshot is exact when nothing was applied or written around it:
    // the agent's seq is the same before and after, and it is the last
    // event in the ledger after the snapshot.
    let (at, snapshot) = wait_for(Duration::from_secs(60), || {
        let before = applied(&agent);
        let at = now_ms();
        let rows = agent.query(sql);
        let after = applied(&agent);
        let last_event = records(&dir)
            .iter()
            .filter(|r| r["kind"] == "event" || r["kind"] == "gap")
            .map(|r| r["seq"].as_u64().unwrap())
            .max()?;
        (before > 0 && before == after && last_event == before).then_some((at, rows))
    })
    .expect("the machine never went quiet for a moment");
    let at_s = at.to_string();
    let state = ledger_json(&["state", "--at", &at_s, "--dir", d, sql]);
    assert_eq!(as_set(state.as_array().unwrap()), as_set(&snapshot));
    assert!(!snapshot.is_empty());
    // A time before the ledger: an empty table, not an error.
    let empty = ledger_json(&["state", "--at", "2000-01-01T00:00:00Z", "--dir", d, sql]);
    assert_eq!(empty, Json::Array(Vec::new()));
    // SQL goes through the validator.
    let bad = ledger(&["state", "--at", &at_s, "--dir", d, "DELETE FROM processes"]);
    assert!(!bad.status.success(), "{}", text(&bad));
}
