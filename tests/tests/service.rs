//! Issue #7: `daemoneye-cli service install|status|uninstall` in a test
//! root, `systemd-analyze verify` on the generated unit, and the agent's
//! sd_notify readiness and watchdog datagrams on a real socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use daemoneye_tests::{Agent, AgentOptions, bin, bin_dir};
use serde_json::Value as Json;

fn service(args: &[&str]) -> Output {
    Command::new(bin("daemoneye-cli")).arg("service").args(args).output().unwrap()
}

fn status(root: &Path, extra: &[&str]) -> (i32, Json) {
    let mut args = vec!["status", "--root", root.to_str().unwrap(), "--format", "json"];
    args.extend(extra);
    let out = service(&args);
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), doc)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has_tool(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn install_verify_status_uninstall_systemd() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    // The unit runs the binaries of this build, so that `systemd-analyze
    // verify` on this host finds ExecStart.
    let bins = bin_dir();
    let layout = ["--root", r, "--bin-dir", bins.to_str().unwrap(), "--no-binaries"];

    let (code, doc) = status(root.path(), &layout[2..]);
    assert_eq!((code, doc["status"].as_str()), (3, Some("not installed")), "{doc}");

    let mut install = vec!["install"];
    install.extend(layout);
    ok(&service(&install));
    let unit = root.path().join("etc/systemd/system/daemoneye-agent.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "StateDirectory=daemoneye",
        "RuntimeDirectory=daemoneye",
    ] {
        assert!(text.lines().any(|l| l == line), "unit lacks {line}:\n{text}");
    }
    assert!(
        text.contains(&format!("ExecStart={}/daemoneye-agent --config /etc/daemoneye/config.toml", bins.display()))
    );
    let sysusers = std::fs::read_to_string(root.path().join("etc/sysusers.d/daemoneye.conf")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u daemoneye ")), "{sysusers}");
    // The installed config loads, with the service's paths.
    let config = root.path().join("etc/daemoneye/config.toml");
    let shown = Command::new(bin("daemoneye-cli"))
        .args(["--config", config.to_str().unwrap(), "config", "validate"])
        .output()
        .unwrap();
    ok(&shown);
    let rules: Vec<_> = std::fs::read_dir(root.path().join("etc/daemoneye/rules")).unwrap().collect();
    let shipped = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules")).unwrap().count();
    assert_eq!(rules.len(), shipped);

    if has_tool("systemd-analyze") {
        let v = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output().unwrap();
        assert!(
            v.status.success() && v.stderr.is_empty(),
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    } else {
        eprintln!("skipping systemd-analyze verify: systemd-analyze is not installed (apt-get install systemd)");
    }
    if has_tool("systemd-sysusers") {
        let v = Command::new("systemd-sysusers").arg(format!("--root={r}")).arg("--dry-run").output().unwrap();
        assert!(v.status.success(), "systemd-sysusers --dry-run: {}", String::from_utf8_lossy(&v.stderr));
    } else {
        eprintln!("skipping systemd-sysusers --dry-run: not installed");
    }

    let (code, doc) = status(root.path(), &layout[2..]);
    assert_eq!((code, doc["status"].as_str()), (0, Some("installed")), "{doc}");

    // The operator's edits survive a reinstall; a changed unit is reported.
    std::fs::write(&config, "# mine\n").unwrap();
    ok(&service(&install));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# mine\n");
    std::fs::write(&unit, "[Unit]\n").unwrap();
    let (code, doc) = status(root.path(), &layout[2..]);
    assert_eq!(code, 1, "{doc}");
    assert!(doc["files"].as_array().unwrap().iter().any(|f| f["state"] == "differs"), "{doc}");

    // Uninstall keeps the configuration; --purge removes it.
    let mut uninstall = vec!["uninstall"];
    uninstall.extend(layout);
    ok(&service(&uninstall));
    assert!(!unit.exists());
    assert!(config.exists());
    assert_eq!(status(root.path(), &layout[2..]).0, 3);
    uninstall.push("--purge");
    ok(&service(&uninstall));
    assert!(!root.path().join("etc/daemoneye").exists());
    // The host's binaries were never touched (--no-binaries).
    assert!(bins.join("daemoneye-agent").exists());
}

#[test]
fn install_copies_binaries_and_writes_launchd_and_windows_definitions() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    ok(&service(&["install", "--root", r]));
    let agent = root.path().join("usr/local/bin/daemoneye-agent");
    assert_eq!(std::fs::metadata(&agent).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(std::fs::read(&agent).unwrap(), std::fs::read(bin("daemoneye-agent")).unwrap());
    assert_eq!(status(root.path(), &[]).0, 0);
    ok(&service(&["uninstall", "--root", r]));
    assert!(!agent.exists() && !root.path().join("usr/local/bin/procmond").exists());

    let mac = tempfile::tempdir().unwrap();
    ok(&service(&["install", "--init", "launchd", "--no-binaries", "--root", mac.path().to_str().unwrap()]));
    let plist = std::fs::read_to_string(mac.path().join("Library/LaunchDaemons/com.daemoneye.agent.plist")).unwrap();
    assert!(plist.contains("<string>/usr/local/bin/daemoneye-agent</string>"), "{plist}");
    assert!(plist.contains("<string>/etc/daemoneye/config.toml</string>"), "{plist}");

    let win = tempfile::tempdir().unwrap();
    ok(&service(&["install", "--init", "windows", "--root", win.path().to_str().unwrap()]));
    let ps1 = std::fs::read_to_string(win.path().join("ProgramData/DaemonEye/install-service.ps1")).unwrap();
    assert!(ps1.contains("New-Service -Name $name"), "{ps1}");
    assert!(win.path().join("ProgramData/DaemonEye/rules").is_dir());
}

#[test]
fn agent_sends_ready_and_watchdog_to_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _agent = Agent::start(AgentOptions {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string()), ("WATCHDOG_USEC".into(), "400000".into())],
        ..Default::default()
    });
    let mut buf = [0u8; 256];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("no sd_notify datagram within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1");
    // Pings every 200 ms: the next datagrams are watchdog pings.
    assert_eq!(recv(), "WATCHDOG=1");
    assert_eq!(recv(), "WATCHDOG=1");
}
