//! Issue #2: a process seen by procmond reaches a SQL rule, an alert and the
//! CLI, end to end, with the real binaries on the poll backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test helpers")]

use std::process::Command;
use std::time::Duration;

use daemoneye_tests::{Agent, AgentOptions, copy_executable, marker, wait_for};
use serde_json::Value as Json;

fn rule_yaml(id: &str, marker: &str) -> String {
    format!(
        "id: {id}\nname: Marker process started\ndescription: The e2e marker binary ran.\nseverity: high\ntags: [test]\nsql: |\n  SELECT pid, process_key, name, executable_path FROM process_events\n  WHERE name = '{marker}' AND event_type IN ('exec', 'snapshot')\n"
    )
}

fn sha256sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

#[test]
fn process_reaches_table_rule_alert_and_cli() {
    let m = marker("de");
    let agent = Agent::start(AgentOptions {
        backend: "poll".into(),
        rules: vec![
            ("marker.yaml".into(), rule_yaml("e2e-marker", &m)),
            // Malformed input: a rule with an unknown column and a file that
            // is not YAML. Both are reported and skipped.
            (
                "broken.yaml".into(),
                "id: broken-rule\nname: b\ndescription: d\nseverity: low\nsql: SELECT nmae FROM processes\n".into(),
            ),
            ("garbage.yml".into(), "{ this is: [not yaml\n".into()),
        ],
        ..Default::default()
    });

    // The rule errors name their files; the valid rule still loads.
    let log = agent.stderr();
    assert!(log.contains("broken.yaml"), "broken rule not reported:\n{log}");
    assert!(log.contains("garbage.yml"), "garbage file not reported:\n{log}");
    let health = agent.cli_json(&["health"]);
    assert_eq!(health["rules_loaded"], 1, "{health}");
    assert_eq!(health["rules_failed"], 2, "{health}");

    // Run the marker: a copy of sleep under a unique name, for 3 s.
    let bin_dir = tempfile::tempdir().unwrap();
    let exe = copy_executable(std::path::Path::new("/bin/sleep"), bin_dir.path(), &m);
    let expected_hash = sha256sum(&exe);
    let mut child = Command::new(&exe).arg("3").spawn().unwrap();
    let pid = child.id();

    let sql = format!(
        "SELECT pid, ppid, name, executable_path, command_line, uid, executable_hash FROM processes WHERE name = '{m}'"
    );
    // The hash follows the exec as an update: wait until both are in.
    let rows = wait_for(Duration::from_secs(20), || {
        let rows = agent.query(&sql);
        (rows.len() == 1 && rows[0]["executable_hash"].is_string()).then_some(rows)
    })
    .unwrap_or_else(|| panic!("marker never reached the table with its hash: {:?}", agent.query(&sql)));
    let row = &rows[0];
    assert_eq!(row["pid"], pid);
    assert_eq!(row["ppid"], std::process::id());
    assert_eq!(row["name"], Json::from(m.as_str()));
    assert_eq!(row["executable_path"], Json::from(exe.display().to_string()));
    assert_eq!(row["command_line"], Json::from(format!("{} 3", exe.display())));
    assert_eq!(row["uid"], nix::unistd::getuid().as_raw());
    assert_eq!(row["executable_hash"], Json::from(expected_hash));

    // Exactly one alert, in the store and on stdout, naming the pid.
    let alerts = wait_for(Duration::from_secs(10), || {
        let all = agent.cli_json(&["alerts", "list"]);
        let mine: Vec<Json> =
            all.as_array().unwrap().iter().filter(|a| a["rule_id"] == "e2e-marker").cloned().collect();
        (!mine.is_empty()).then_some(mine)
    })
    .expect("no alert for the marker rule");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["pid"], pid);
    let stdout = agent.stdout();
    let printed: Vec<Json> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|a| a["rule_id"] == "e2e-marker")
        .collect();
    assert_eq!(printed.len(), 1, "alerts on stdout:\n{stdout}");
    assert_eq!(printed[0]["pid"], pid);

    // After it exits the row stays, not alive, with an exit time.
    child.wait().unwrap();
    let exited = wait_for(Duration::from_secs(15), || {
        let rows =
            agent.query(&format!("SELECT is_alive, exit_time FROM processes WHERE name = '{m}' AND pid = {pid}"));
        (rows.len() == 1 && rows[0]["is_alive"] == 0).then(|| rows[0].clone())
    })
    .expect("exit never reached the table");
    assert!(exited["exit_time"].is_i64(), "{exited}");

    // A query the engine cannot run: clear error, non-zero exit, agent fine.
    let bad = agent.cli(&["query", "SELECT nmae FROM processes"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("nmae"), "unclear error: {err}");
    let bad = agent.cli(&["query", "DELETE FROM processes"]);
    assert!(!bad.status.success());
    assert_eq!(agent.cli_json(&["health"])["components"][0]["status"], "healthy");
}

#[test]
fn killed_procmond_is_restarted() {
    let agent = Agent::start(AgentOptions::default());
    let procmond_pid = |h: &Json| {
        h["components"].as_array().unwrap().iter().find(|c| c["name"] == "procmond").and_then(|c| c["pid"].as_u64())
    };
    let first = wait_for(Duration::from_secs(10), || procmond_pid(&agent.cli_json(&["health"])))
        .expect("procmond never reported running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let health = wait_for(Duration::from_secs(15), || {
        let h = agent.cli_json(&["health"]);
        procmond_pid(&h).filter(|p| *p != first).map(|_| h)
    })
    .expect("procmond was not restarted");
    let pm = health["components"].as_array().unwrap().iter().find(|c| c["name"] == "procmond").unwrap();
    assert_eq!(pm["status"], "healthy");
    assert!(pm["restarts"].as_u64().unwrap() >= 1);
    // And it keeps working: the health exit code is 0 once the backend
    // reports in again.
    let ok = wait_for(Duration::from_secs(10), || {
        let out = agent.cli(&["health"]);
        out.status.success().then_some(())
    });
    assert!(ok.is_some(), "health did not return to healthy:\n{}", agent.stderr());
}

/// `agent.max_exited_processes` holds whatever `process_retention` says: a
/// busy host must not keep every process of the last ten minutes. Two waves
/// of 30 processes exit one after the other under a cap of 20: the first
/// wave leaves the table entirely, the table comes back within the cap and
/// its eighth of slack (the store writer prunes when it flushes, so exits
/// seen since the last flush may pass it for a moment), and live processes
/// are never touched.
#[test]
fn exited_processes_beyond_the_cap_leave_the_table_oldest_first() {
    let agent = Agent::start(AgentOptions {
        backend: "poll".into(),
        env: vec![
            ("DAEMONEYE_PROCMOND__POLL_INTERVAL".into(), "200ms".into()),
            ("DAEMONEYE_AGENT__MAX_EXITED_PROCESSES".into(), "20".into()),
        ],
        ..Default::default()
    });
    let bin_dir = tempfile::tempdir().unwrap();
    let names = [marker("capa"), marker("capb"), marker("capl")];
    let exes: Vec<_> =
        names.iter().map(|n| copy_executable(std::path::Path::new("/bin/sleep"), bin_dir.path(), n)).collect();
    let spawn = |exe: &std::path::Path, n: usize| -> Vec<daemoneye_tests::Reaped> {
        (0..n).map(|_| daemoneye_tests::Reaped(daemoneye_tests::spawn_retrying(Command::new(exe).arg("600")))).collect()
    };
    let count = |name: &str, alive: bool| -> i64 {
        let sql =
            format!("SELECT count(*) AS n FROM processes WHERE name = '{name}' AND is_alive = {}", i32::from(alive));
        agent.query(&sql).first().and_then(|r| r["n"].as_i64()).unwrap_or(-1)
    };
    let settle = |what: &str, f: &dyn Fn() -> bool| {
        assert!(
            wait_for(Duration::from_secs(30), || f().then_some(())).is_some(),
            "{what}; stderr:\n{}",
            agent.stderr()
        );
    };

    let (first, second, live) = (&names[0], &names[1], &names[2]);
    let _live = spawn(&exes[2], 5);
    let wave_a = spawn(&exes[0], 30);
    let wave_b = spawn(&exes[1], 30);
    settle("every process in the table", &|| {
        count(first, true) == 30 && count(second, true) == 30 && count(live, true) == 5
    });

    drop(wave_a); // killed and reaped
    settle("the first wave exited, and pruned to the cap", &|| count(first, true) == 0 && count(first, false) <= 22);
    drop(wave_b);
    settle("the second wave exited", &|| count(second, true) == 0 && count(second, false) > 0);
    let exited = || {
        let rows = agent.query("SELECT count(*) AS n FROM processes WHERE is_alive = 0");
        rows.first().and_then(|r| r["n"].as_i64()).unwrap_or(-1)
    };
    // The second wave may exit across two poll rounds, and so be pruned in
    // two flushes: wait for the table to settle, then check what it kept.
    settle("the first wave pruned first, and the table back within the cap (20 + 2 slack)", &|| {
        count(first, false) == 0 && (1..=22).contains(&exited())
    });
    assert!(count(second, false) >= 15, "the newest exits stay: {} of the second wave", count(second, false));
    assert_eq!(count(live, true), 5, "live processes are never pruned");
}
