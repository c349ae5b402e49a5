//! The end-to-end test harness: starts the real binaries from the build
//! directory with a temporary data dir, runs the real CLI against them, and
//! kills everything it started when dropped.
//!
//! Tests call [`Agent::start`], then [`Agent::cli`] / [`Agent::cli_json`],
//! and poll with [`wait_for`] (bounded by a deadline, never asserting on
//! elapsed time).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// The directory holding the workspace binaries (`target/<profile>`),
/// derived from this test executable's location (`target/<profile>/deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_owned()
}

/// Path of a workspace binary; panics with the command to build it.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` (or `cargo xtask test`) first",
        p.display()
    );
    p
}

/// True when running as root (privileged tests need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How to start the agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--backend`.
    pub backend: String,
    /// Rule files to write into the rules dir: (file name, contents).
    pub rules: Vec<(String, String)>,
    /// Extra environment (e.g. `DAEMONEYE_PROCMOND__POLL_INTERVAL`).
    pub env: Vec<(String, String)>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self { backend: "poll".into(), rules: Vec::new(), env: Vec::new() }
    }
}

/// A running agent (with its procmond) on a private data dir.
pub struct Agent {
    child: Child,
    /// The temporary root: data/, rules/, agent.stdout, agent.stderr.
    pub root: tempfile::TempDir,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("root", &self.root.path()).finish()
    }
}

impl Agent {
    /// Starts `daemoneye-agent` and waits until its API answers `health`.
    pub fn start(opts: AgentOptions) -> Agent {
        let root = tempfile::Builder::new().prefix("daemoneye-e2e").tempdir().unwrap();
        Self::start_in(root, opts, &[])
    }

    /// Like [`Agent::start`], on an existing root (e.g. the one
    /// [`Agent::kill9`] returned: the same data dir), with extra agent
    /// arguments (e.g. `--config FILE`). stdout/stderr files are appended to.
    pub fn start_in(root: tempfile::TempDir, opts: AgentOptions, extra_args: &[&str]) -> Agent {
        let rules = root.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        for (name, body) in &opts.rules {
            std::fs::write(rules.join(name), body).unwrap();
        }
        let append = |name: &str| File::options().create(true).append(true).open(root.path().join(name)).unwrap();
        let (stdout, stderr) = (append("agent.stdout"), append("agent.stderr"));
        let mut cmd = Command::new(bin("daemoneye-agent"));
        cmd.arg("--data-dir")
            .arg(root.path().join("data"))
            .arg("--rules-dir")
            .arg(&rules)
            .arg("--backend")
            .arg(&opts.backend)
            .arg("--no-system-config")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so Drop can end procmond too.
            .process_group(0);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.args(extra_args);
        let child = cmd.spawn().expect("start daemoneye-agent");
        let agent = Agent { child, root };
        // Up means the API answered: any health verdict, not "unreachable"
        // (3) nor a CLI error (1 without JSON on stdout).
        let up = wait_for(Duration::from_secs(30), || {
            let out = agent.cli(&["health", "--format", "json"]);
            serde_json::from_slice::<Json>(&out.stdout).ok().map(|_| ())
        });
        assert!(up.is_some(), "agent did not come up; stderr:\n{}", agent.stderr());
        agent
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The rules dir.
    pub fn rules_dir(&self) -> PathBuf {
        self.root.path().join("rules")
    }

    /// Runs `daemoneye-cli --data-dir <data> ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("daemoneye-cli"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .env_remove("DAEMONEYE_SOCKET")
            .output()
            .expect("run daemoneye-cli")
    }

    /// Runs the CLI, asserts that it succeeded (else panics with its
    /// output) and returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "daemoneye-cli {args:?} failed ({:?}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("daemoneye-cli printed UTF-8")
    }

    /// Runs the CLI with `--format json` and parses stdout; panics with the
    /// CLI's stderr when it printed no JSON. (`health` prints its JSON and
    /// still exits non-zero when not healthy; the exit code is checked by
    /// the tests that care through [`Agent::cli`].)
    pub fn cli_json(&self, args: &[&str]) -> Json {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--format", "json"]);
        let out = self.cli(&all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "daemoneye-cli {args:?} ({:?}) printed no JSON ({e}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Runs a query and returns its rows (JSON objects).
    pub fn query(&self, sql: &str) -> Vec<Json> {
        match self.cli_json(&["query", sql]) {
            Json::Array(rows) => rows,
            other => panic!("query returned {other}"),
        }
    }

    /// The agent's stdout so far (alerts as JSON lines).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.root.path().join("agent.stdout")).unwrap_or_default()
    }

    /// The agent's (and procmond's) logs so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.root.path().join("agent.stderr")).unwrap_or_default()
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's exit status once it has exited on its own (`None` while
    /// it runs).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILLs the agent and its procmond (a crash: no shutdown code runs)
    /// and hands back the root, kept, for [`Agent::start_in`].
    pub fn kill9(mut self) -> tempfile::TempDir {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)), Signal::SIGKILL);
        let _ = self.child.wait();
        let spare = tempfile::Builder::new().prefix("daemoneye-e2e-spare").tempdir().unwrap();
        std::mem::replace(&mut self.root, spare)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let pgid = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- agent stderr ({}) ---\n{}", self.root.path().display(), self.stderr());
        }
    }
}

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private work dir outside temporary locations (so that only the rules
/// meant to fire on /tmp do), readable by every user (some triggers run as
/// nobody). When the checkout itself lives under a temporary directory (CI
/// clones can), the work dir goes to /var/lib instead (these tests run as
/// root).
pub fn work_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    // Cargo's `target/tmp` (CARGO_TARGET_TMPDIR of integration tests).
    let target_tmp = bin_dir().parent().map(|t| t.join("tmp")).expect("target dir");
    let under_tmp = ["/tmp", "/var/tmp", "/dev/shm"].iter().any(|t| target_tmp.starts_with(t));
    let base = if under_tmp { PathBuf::from("/var/lib") } else { target_tmp };
    std::fs::create_dir_all(&base).unwrap();
    let d = tempfile::Builder::new().prefix(prefix).tempdir_in(&base).unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Copies `src` to `dir/name` (executable) and returns the new path.
pub fn copy_executable(src: &Path, dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dst = dir.join(name);
    std::fs::copy(src, &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

/// A unique marker name for this test run, at most 15 bytes so that it
/// survives the kernel's `comm` truncation (`prefix` at most 7 bytes).
pub fn marker(prefix: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mix = nanos ^ std::process::id().rotate_left(16);
    let m = format!("{prefix}{mix:08x}");
    assert!(m.len() <= 15, "marker prefix too long: {prefix}");
    m
}

/// Spawns `cmd`, retrying while the kernel answers ETXTBSY: a binary copied
/// a moment ago can still be open for writing in a child that another test
/// thread forked before that child's exec closed the descriptor.
pub fn spawn_retrying(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(libc_etxtbsy()) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("spawn {cmd:?}: {e}"),
        }
    }
}

fn libc_etxtbsy() -> i32 {
    nix::errno::Errno::ETXTBSY as i32
}
