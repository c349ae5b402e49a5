//! Issue #4: rule hot reload and `daemoneye-cli rules list|validate|reload`,
//! end to end with the real agent (poll backend, no root needed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use daemoneye_tests::{Agent, AgentOptions, copy_executable, marker, wait_for};
use serde_json::Value as Json;

fn rule(id: &str, name: &str) -> String {
    format!(
        "id: {id}\nname: Marker {name}\nseverity: medium\ntags: [test]\nsql: |\n  SELECT pid, process_key, name FROM process_events\n  WHERE name = '{name}' AND event_type IN ('exec', 'snapshot')\n"
    )
}

/// Starts a copy of `sleep` named `name` for 30 s.
fn start_marker(dir: &Path, name: &str) -> Child {
    let exe = dir.join(name);
    if !exe.exists() {
        copy_executable(Path::new("/bin/sleep"), dir, name);
    }
    Command::new(exe).arg("30").spawn().unwrap()
}

fn rule_ids(agent: &Agent) -> Vec<String> {
    let list = agent.cli_json(&["rules", "list"]);
    list["rules"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

fn alert_for(agent: &Agent, rule: &str, pid: u32) -> Option<Json> {
    let all = agent.cli_json(&["alerts", "list", "--rule", rule, "--limit", "1000"]);
    all.as_array().unwrap().iter().find(|a| a["pid"] == pid).cloned()
}

#[test]
fn added_changed_broken_and_removed_rule_files_take_effect_without_restart() {
    let (ma, mb) = (marker("ra"), marker("rb"));
    let agent =
        Agent::start(AgentOptions { rules: vec![("a.yaml".into(), rule("reload-a", &ma))], ..Default::default() });
    let bins = tempfile::tempdir().unwrap();
    let rules = agent.rules_dir();
    assert_eq!(rule_ids(&agent), ["reload-a"]);

    // Added while running: listed, then fires.
    std::fs::write(rules.join("b.yaml"), rule("reload-b", &mb)).unwrap();
    let listed = wait_for(Duration::from_secs(15), || rule_ids(&agent).contains(&"reload-b".to_owned()).then_some(()));
    assert!(listed.is_some(), "added rule file never loaded:\n{}", agent.stderr());
    let mut b1 = start_marker(bins.path(), &mb);
    let fired = wait_for(Duration::from_secs(20), || alert_for(&agent, "reload-b", b1.id()));
    assert!(fired.is_some(), "the added rule did not fire:\n{}", agent.stderr());

    // A broken edit of a.yaml: reported with its file, rule and position;
    // health degraded; reload-b keeps firing.
    std::fs::write(rules.join("a.yaml"), "id: reload-a\nname: A\nseverity: medium\nsql: SELECT nmae FROM processes\n")
        .unwrap();
    let list = wait_for(Duration::from_secs(15), || {
        let l = agent.cli_json(&["rules", "list"]);
        (!l["errors"].as_array().unwrap().is_empty()).then_some(l)
    })
    .expect("broken edit never reported");
    let err = list["errors"][0].as_str().unwrap();
    assert!(
        err.contains("a.yaml") && err.contains("\"reload-a\"") && err.contains("nmae") && err.contains("1:8"),
        "{err}"
    );
    assert_eq!(rule_ids(&agent), ["reload-b"]);
    let health = agent.cli_json(&["health"]);
    assert_eq!(health["rules_failed"], 1, "{health}");
    assert_eq!(health["rules_loaded"], 1, "{health}");
    assert!(agent.stderr().contains("a.yaml"), "the broken file is not named in the log");
    b1.kill().unwrap();
    b1.wait().unwrap();
    let mut b2 = start_marker(bins.path(), &mb);
    let fired = wait_for(Duration::from_secs(20), || alert_for(&agent, "reload-b", b2.id()));
    assert!(fired.is_some(), "the other rules stopped firing after a broken edit:\n{}", agent.stderr());
    b2.kill().unwrap();
    b2.wait().unwrap();

    // Fixed and b removed: a back, b gone, health clean.
    std::fs::write(rules.join("a.yaml"), rule("reload-a", &ma)).unwrap();
    std::fs::remove_file(rules.join("b.yaml")).unwrap();
    let settled = wait_for(Duration::from_secs(15), || (rule_ids(&agent) == ["reload-a"]).then_some(()));
    assert!(settled.is_some(), "rules after fix and removal: {:?}", rule_ids(&agent));
    assert_eq!(agent.cli_json(&["health"])["rules_failed"], 0);
    let mut a1 = start_marker(bins.path(), &ma);
    let fired = wait_for(Duration::from_secs(20), || alert_for(&agent, "reload-a", a1.id()));
    assert!(fired.is_some(), "the fixed rule did not fire:\n{}", agent.stderr());
    a1.kill().unwrap();
    a1.wait().unwrap();

    // `rules reload` on demand: exit 0 when all load, 1 when one fails.
    let out = agent.cli(&["rules", "reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 rules loaded, 0 failed"));
    std::fs::write(rules.join("c.yaml"), "id: c\nname: C\nseverity: nope\nsql: SELECT 1\n").unwrap();
    let out = agent.cli(&["rules", "reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("c.yaml"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn rules_validate_works_offline_with_positions_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        Command::new(daemoneye_tests::bin("daemoneye-cli"))
            .args(args)
            .env("DAEMONEYE_SOCKET", "/nonexistent/agent.sock")
            .output()
            .unwrap()
    };
    // The shipped rules are all valid.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let out = cli(&["rules", "validate", shipped.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(dir.path().join("bad.yaml"), "- id: good\n  name: G\n  severity: low\n  sql: SELECT pid FROM processes\n- id: bad-sql\n  name: B\n  severity: low\n  sql: |\n    SELECT pid\n    FROM processes WHERE nmae = 'x'\n").unwrap();
    std::fs::write(dir.path().join("yaml.yml"), "id: y\nname: [unclosed\n").unwrap();
    let out = cli(&["rules", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml, rule \"bad-sql\": unknown column \"nmae\" at 2:22"), "{err}");
    assert!(err.contains("yaml.yml") && err.contains("line 2"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok    good"));
    let out = cli(&["rules", "validate", dir.path().join("missing.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}
