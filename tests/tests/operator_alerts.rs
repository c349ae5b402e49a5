//! Issue #7 (alerts and rules from the CLI), against the real agent (poll
//! backend): `alerts watch|show|list` on an alert of a shipped rule raised
//! by a real process; `rules disable|enable` kept across a reload and a
//! restart; `rules test` on a rule file and on an event.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use daemoneye_tests::{Agent, AgentOptions, Reaped, bin, copy_executable, marker, spawn_retrying, wait_for, work_dir};
use serde_json::Value as Json;

fn shipped_rule_file(name: &str) -> (String, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules").join(name);
    (name.to_owned(), std::fs::read_to_string(p).unwrap())
}

fn canary_rule(m: &str) -> (String, String) {
    (
        "canary.yaml".into(),
        format!(
            "id: e2e-canary\nname: Canary\ndescription: The canary ran.\nseverity: low\nsql: |\n  \
             SELECT pid, process_key, name FROM process_events WHERE event_type = 'exec' AND name = '{m}'\n"
        ),
    )
}

/// `alerts watch` running as a child: its stdout lines on a channel.
struct Watch {
    _child: Reaped,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    fn start(agent: &Agent, args: &[&str]) -> Watch {
        let mut child = Command::new(bin("daemoneye-cli"))
            .arg("--data-dir")
            .arg(agent.data_dir())
            .args(["alerts", "watch"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                if tx.send(l.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        // The hint on stderr comes once the agent follows new alerts.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first).unwrap();
        assert!(first.contains("watching for new alerts"), "alerts watch said: {first}");
        Watch { _child: Reaped(child), lines }
    }

    /// The first JSON line matching `f`, within `timeout`.
    fn next(&self, timeout: Duration, f: impl Fn(&Json) -> bool) -> Option<Json> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            let doc: Json = serde_json::from_str(&line).unwrap_or_else(|e| panic!("watch printed {line:?}: {e}"));
            if f(&doc) {
                return Some(doc);
            }
        }
    }
}

/// Runs a copy of sleep named `name` for a while (outside /tmp).
fn named_sleep(dir: &Path, name: &str) -> Reaped {
    let exe = copy_executable(Path::new("/bin/sleep"), dir, name);
    Reaped(spawn_retrying(Command::new(exe).arg("120").stdin(Stdio::null())))
}

fn alerts_about(agent: &Agent, rule: &str, pid: u32) -> Vec<Json> {
    agent
        .cli_json(&["alerts", "list", "--rule", rule, "--limit", "0"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["pid"] == pid)
        .cloned()
        .collect()
}

/// Waits until `pid` is in the table, then runs the canary and waits for
/// its alert: every rule has seen `pid`'s exec by then.
fn settle(agent: &Agent, work: &Path, pid: u32, canary: &str, n: usize) {
    let seen = wait_for(Duration::from_secs(30), || {
        (!agent.query(&format!("SELECT seq FROM process_events WHERE pid = {pid} AND event_type = 'exec'")).is_empty())
            .then_some(())
    });
    assert!(seen.is_some(), "pid {pid} never reached the table");
    let c = named_sleep(&work.join(format!("canary{n}")).tap_mkdir(), canary);
    let cpid = c.0.id();
    let fired =
        wait_for(Duration::from_secs(30), || (!alerts_about(agent, "e2e-canary", cpid).is_empty()).then_some(()));
    assert!(fired.is_some(), "the canary was never alerted on");
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn alerts_watch_show_and_rules_enable_disable_test() {
    let canary = marker("cn");
    let opts = AgentOptions {
        rules: vec![shipped_rule_file("impact.yaml"), canary_rule(&canary)],
        env: vec![("DAEMONEYE_RULES__TABLE_INTERVAL".into(), "1s".into())],
        ..Default::default()
    };
    let agent = Agent::start(opts.clone());
    let work = work_dir("operator-cli");
    let rule = "crypto-miner-name";

    // watch, then a real process trips the shipped rule: the alert arrives on
    // watch's stdout as a JSON line.
    let watch = Watch::start(&agent, &["--format", "json", "--rule", rule]);
    let miner = named_sleep(&work.path().join("m1").tap_mkdir(), "xmrig");
    let mpid = miner.0.id();
    let alert = watch
        .next(Duration::from_secs(60), |a| a["rule_id"] == rule && a["pid"] == mpid)
        .unwrap_or_else(|| panic!("no {rule} alert on alerts watch; agent log:\n{}", agent.stderr()));
    assert_eq!(alert["severity"], "high");
    assert_eq!(alert["row"]["name"], "xmrig");
    let id = alert["id"].as_str().unwrap().to_owned();

    // show: every field of PRODUCT.md §10, and the stdout sink's delivery.
    let shown = wait_for(Duration::from_secs(20), || {
        let s = agent.cli_json(&["alerts", "show", &id[..23]]);
        (s["deliveries"][0]["state"] == "delivered").then_some(s)
    })
    .expect("the alert was never delivered to stdout");
    for f in [
        "id",
        "alert_time",
        "rule_id",
        "title",
        "description",
        "severity",
        "row",
        "process_key",
        "pid",
        "event_seq",
        "correlation_id",
        "dedupe_key",
        "occurrences",
    ] {
        assert!(!shown[f].is_null(), "alerts show lacks {f}: {shown}");
    }
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["deliveries"][0]["sink"], "stdout");
    let table = agent.cli_ok(&["alerts", "show", &id]);
    assert!(table.contains("dedupe_key") && table.contains("row.name") && table.contains("delivered"), "{table}");
    assert!(!agent.cli(&["alerts", "show", "ffffffff-no"]).status.success());

    // list filters.
    let listed = |args: &[&str]| -> Vec<Json> {
        let mut all = vec!["alerts", "list"];
        all.extend(args);
        agent.cli_json(&all).as_array().unwrap().clone()
    };
    assert!(listed(&["--rule", rule, "--severity", "high", "--since", "10m"]).iter().any(|a| a["id"] == id.as_str()));
    assert!(listed(&["--severity", "critical"]).iter().all(|a| a["severity"] == "critical"));
    assert!(listed(&["--since", "2200-01-01T00:00:00Z"]).is_empty());
    assert!(listed(&["--until", "2000-01-01T00:00:00Z"]).is_empty());
    assert_eq!(listed(&["--limit", "1"]).len(), 1);

    // export alerts, JSON lines and CSV, equal to `query`.
    let out = tempfile::tempdir().unwrap();
    let jf = out.path().join("alerts.jsonl");
    agent.cli_ok(&["export", "alerts", "--output", jf.to_str().unwrap(), "--rule", rule]);
    let exported: Vec<Json> =
        std::fs::read_to_string(&jf).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let q = agent.query(&format!("SELECT * FROM alerts WHERE rule_id = '{rule}'"));
    assert_eq!(exported.len(), q.len());
    for row in &q {
        let e = exported.iter().find(|e| e["id"] == row["id"]).unwrap();
        for (col, v) in row.as_object().unwrap() {
            if col != "occurrences" && col != "last_seen" {
                assert_eq!(&e[col], v, "alert column {col}");
            }
        }
    }
    let cf = out.path().join("alerts.csv");
    agent.cli_ok(&["export", "alerts", "--output", cf.to_str().unwrap(), "--severity", "high"]);
    let mut reader = csv::Reader::from_path(&cf).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    let rec =
        reader.records().map(Result::unwrap).find(|r| r.get(0) == Some(id.as_str())).expect("the alert in the CSV");
    let at = |c: &str| rec.get(header.iter().position(|h| h == c).unwrap()).unwrap().to_owned();
    assert_eq!(at("rule_id"), rule);
    assert_eq!(at("pid"), mpid.to_string());
    let row: Json = serde_json::from_str(&at("row")).unwrap();
    assert_eq!(row["name"], "xmrig");
    let refused = agent.cli(&["export", "alerts", "--output", cf.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));

    // rules test: a rule file outside the rules dir, over the table; a
    // shipped rule over one event; neither raises an alert.
    let rule_file = work.path().join("probe.yaml");
    std::fs::write(
        &rule_file,
        "id: e2e-probe\nname: Probe\ndescription: d\nseverity: low\nsql: SELECT pid, name FROM processes WHERE name = 'xmrig' AND is_alive = 1\n",
    )
    .unwrap();
    let tested = agent.cli_json(&["rules", "test", rule_file.to_str().unwrap(), "--against-table"]);
    assert_eq!(tested[0]["rule_id"], "e2e-probe");
    assert!(tested[0]["matches"].as_array().unwrap().iter().any(|m| m["pid"] == mpid), "{tested}");
    let human = agent.cli_ok(&["rules", "test", rule_file.to_str().unwrap()]);
    assert!(human.contains("rule e2e-probe (table) against the current table: 1 match"), "{human}");
    let ev = r#"{"name": "xmrig", "pid": 4242, "event_type": "exec", "process_key": "k-4242"}"#;
    let on_event = agent.cli_json(&["rules", "test", rule, "--event", ev]);
    assert_eq!(on_event[0]["matches"][0]["pid"], 4242, "{on_event}");
    let no_match = agent.cli_json(&["rules", "test", rule, "--event", r#"{"name": "bash"}"#]);
    assert_eq!(no_match[0]["matches"].as_array().unwrap().len(), 0);
    let table_on_event = agent.cli(&["rules", "test", rule_file.to_str().unwrap(), "--event", ev]);
    assert!(String::from_utf8_lossy(&table_on_event.stderr).contains("table rule"));
    let bad_col = agent.cli(&["rules", "test", rule, "--event", r#"{"nmae": "x"}"#]);
    assert!(String::from_utf8_lossy(&bad_col.stderr).contains("unknown column \"nmae\""));
    assert!(agent.cli_json(&["alerts", "list", "--rule", "e2e-probe"]).as_array().unwrap().is_empty());
    assert!(alerts_about(&agent, rule, 4242).is_empty());

    // disable: a new miner raises nothing.
    let rule_state = |agent: &Agent| {
        let list = agent.cli_json(&["rules", "list"]);
        list["rules"].as_array().unwrap().iter().find(|r| r["id"] == rule).unwrap().clone()
    };
    let said = agent.cli_ok(&["rules", "disable", rule]);
    assert!(said.contains("disabled") && said.contains("rules enable"), "{said}");
    assert_eq!(rule_state(&agent)["enabled"], false);
    assert_eq!(rule_state(&agent)["enabled_override"], false);
    assert!(agent.cli_ok(&["rules", "list"]).contains("no (rules disable)"));
    let quiet = named_sleep(&work.path().join("m2").tap_mkdir(), "xmrig");
    settle(&agent, work.path(), quiet.0.id(), &canary, 1);
    assert!(alerts_about(&agent, rule, quiet.0.id()).is_empty(), "a disabled rule raised an alert");
    drop(quiet);
    let missing = agent.cli(&["rules", "disable", "no-such-rule"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("rules list"));

    // Kept across a restart and a hot reload.
    drop(watch);
    drop(miner);
    let root = agent.kill9();
    let agent = Agent::start_in(root, opts.clone(), &[]);
    assert_eq!(rule_state(&agent)["enabled"], false, "the disable did not survive a restart");
    agent.cli_ok(&["rules", "reload"]);
    assert_eq!(rule_state(&agent)["enabled"], false, "the disable did not survive a reload");

    // enable: alerts again, and that too survives a restart.
    agent.cli_ok(&["rules", "enable", rule]);
    assert_eq!(rule_state(&agent)["enabled"], true);
    let loud = named_sleep(&work.path().join("m3").tap_mkdir(), "xmrig");
    let lpid = loud.0.id();
    let fired = wait_for(Duration::from_secs(30), || (!alerts_about(&agent, rule, lpid).is_empty()).then_some(()));
    assert!(fired.is_some(), "the re-enabled rule raised nothing");
    let root = agent.kill9();
    let agent = Agent::start_in(root, opts, &[]);
    assert_eq!(rule_state(&agent)["enabled"], true);
    assert_eq!(rule_state(&agent)["enabled_override"], true);
}
