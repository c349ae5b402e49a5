//! `daemoneye-cli service install|uninstall|status`: the agent as a system
//! service. systemd (Linux): the unit with hardening, readiness and
//! watchdog, a sysusers.d entry for the `daemoneye` user and group,
//! `/etc/daemoneye/config.toml` with the commented defaults, the shipped
//! rules in `/etc/daemoneye/rules`, and the binaries. `--init launchd` and
//! `--init windows` write the macOS job and a Windows service script.
//!
//! `--root DIR` installs into DIR instead of `/` (packaging, tests); only
//! with the real root are `systemd-sysusers` and `systemctl daemon-reload`
//! run. The operator's config and rule files are never overwritten and are
//! removed only by `uninstall --purge`.

mod units;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use serde_json::json;

use crate::output::Format;

include!(concat!(env!("OUT_DIR"), "/shipped_rules.rs"));

/// `service` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ServiceCommand {
    /// Install the agent as a system service (files only; start it with
    /// `systemctl enable --now daemoneye-agent`).
    Install {
        #[command(flatten)]
        target: Target,
    },
    /// Remove what `install` wrote. The configuration, the rules and the
    /// data in /var/lib/daemoneye stay unless --purge.
    Uninstall {
        #[command(flatten)]
        target: Target,
        /// Also remove /etc/daemoneye (configuration and rules).
        #[arg(long)]
        purge: bool,
    },
    /// Which service files are installed and current. Exit code: 0 installed
    /// and current, 1 installed but some files differ or are missing (run
    /// `install` again), 3 not installed.
    Status {
        #[command(flatten)]
        target: Target,
    },
}

/// Where and for which service manager.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// Install under DIR instead of / (for packaging and tests).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// The service manager.
    #[arg(long, value_enum, default_value_t = Init::native())]
    init: Init,
    /// Where the binaries go (and the unit runs them from).
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    bin_dir: PathBuf,
    /// Leave daemoneye-agent, procmond and daemoneye-cli alone (a package
    /// installed them in --bin-dir): not copied, checked or removed.
    #[arg(long)]
    no_binaries: bool,
}

/// A service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Init {
    /// systemd (Linux).
    Systemd,
    /// launchd (macOS).
    Launchd,
    /// The Windows service manager (writes a PowerShell script to run).
    Windows,
}

impl Init {
    fn native() -> Self {
        if cfg!(target_os = "macos") {
            Init::Launchd
        } else if cfg!(windows) {
            Init::Windows
        } else {
            Init::Systemd
        }
    }
}

/// Whether a file belongs to the service (replaced by install, removed by
/// uninstall) or to the operator (written once, removed only by --purge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Service,
    Operator,
}

#[derive(Debug)]
enum Content {
    Text(String),
    Copy(PathBuf),
}

#[derive(Debug)]
struct Item {
    /// Path on the target system (absolute; joined under --root).
    path: PathBuf,
    content: Content,
    mode: u32,
    owner: Owner,
}

/// Runs a `service` subcommand.
pub(crate) fn run(cmd: &ServiceCommand, format: Format, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match cmd {
        ServiceCommand::Install { target } => install(target, out),
        ServiceCommand::Uninstall { target, purge } => uninstall(target, *purge, out),
        ServiceCommand::Status { target } => status(target, format, out),
    }
}

fn plan(init: Init, bin_dir: &Path, binaries: bool) -> anyhow::Result<Vec<Item>> {
    let text = |path: &str, s: String, mode, owner| Item { path: path.into(), content: Content::Text(s), mode, owner };
    let mut items = Vec::new();
    let rules_dir = match init {
        Init::Windows => "/ProgramData/DaemonEye/rules",
        _ => "/etc/daemoneye/rules",
    };
    match init {
        Init::Systemd => {
            items.push(text(
                &format!("/etc/systemd/system/{}", units::UNIT_NAME),
                units::systemd_unit(bin_dir),
                0o644,
                Owner::Service,
            ));
            items.push(text("/etc/sysusers.d/daemoneye.conf", units::sysusers(), 0o644, Owner::Service));
            items.push(text(
                "/etc/daemoneye/config.toml",
                units::installed_config("/var/lib/daemoneye", "/run/daemoneye", rules_dir),
                0o640,
                Owner::Operator,
            ));
        }
        Init::Launchd => {
            use daemoneye_platform_macos::launchd::{AgentJob, PLIST_PATH, agent_plist};
            let program = bin_dir.join("daemoneye-agent");
            let config = Path::new("/etc/daemoneye/config.toml");
            let job =
                AgentJob { program: &program, config: Some(config), log_path: Path::new("/var/log/daemoneye.log") };
            items.push(text(PLIST_PATH, agent_plist(&job), 0o644, Owner::Service));
            items.push(text(
                "/etc/daemoneye/config.toml",
                units::installed_config("/var/lib/daemoneye", "/var/run/daemoneye", rules_dir),
                0o640,
                Owner::Operator,
            ));
        }
        Init::Windows => {
            let data = r"C:\ProgramData\DaemonEye";
            items.push(text(
                "/ProgramData/DaemonEye/install-service.ps1",
                units::windows_service_script(r"C:\Program Files\DaemonEye", &format!(r"{data}\config.toml")),
                0o644,
                Owner::Service,
            ));
            items.push(text(
                "/ProgramData/DaemonEye/config.toml",
                units::installed_config(&format!(r"{data}\data"), "", &format!(r"{data}\rules")),
                0o640,
                Owner::Operator,
            ));
        }
    }
    for (name, body) in SHIPPED_RULES {
        items.push(text(&format!("{rules_dir}/{name}"), (*body).to_owned(), 0o644, Owner::Operator));
    }
    if binaries && init != Init::Windows {
        let here = std::env::current_exe().context("locating daemoneye-cli's own binary")?;
        let src_dir = here.parent().unwrap_or(Path::new("."));
        for name in ["daemoneye-agent", "procmond", "daemoneye-cli"] {
            let src = src_dir.join(name);
            anyhow::ensure!(
                src.is_file(),
                "{} not found next to daemoneye-cli: build it (`cargo build --release --workspace --bins`) or pass --no-binaries",
                src.display()
            );
            items.push(Item {
                path: bin_dir.join(name),
                content: Content::Copy(src),
                mode: 0o755,
                owner: Owner::Service,
            });
        }
    }
    Ok(items)
}

/// `path` (absolute on the target) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn is_real_root(root: &Path) -> bool {
    root == Path::new("/")
}

fn install(target: &Target, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let items = plan(target.init, &target.bin_dir, !target.no_binaries)?;
    for item in &items {
        let dest = under(&target.root, &item.path);
        if item.owner == Owner::Operator && dest.exists() {
            writeln!(out, "kept      {} (yours; not overwritten)", dest.display())?;
            continue;
        }
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        match &item.content {
            Content::Text(s) => write_atomic(&dest, s.as_bytes())?,
            Content::Copy(src) if src.canonicalize().ok() == dest.canonicalize().ok() => {}
            Content::Copy(src) => {
                let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
                write_atomic(&dest, &bytes)?;
            }
        }
        set_mode(&dest, item.mode)?;
        writeln!(out, "installed {}", dest.display())?;
    }
    if is_real_root(&target.root) {
        after_install(target.init, out)?;
    } else {
        writeln!(out, "installed under {}; nothing was started", target.root.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The file's Unix mode (on Windows the files inherit their directory's ACL).
fn set_mode(dest: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", dest.display()))
    }
    #[cfg(not(unix))]
    {
        let _ = (dest, mode);
        Ok(())
    }
}

fn after_install(init: Init, out: &mut dyn Write) -> anyhow::Result<()> {
    match init {
        Init::Systemd => {
            run_tool("systemd-sysusers", &["/etc/sysusers.d/daemoneye.conf"], out)?;
            run_tool("systemctl", &["daemon-reload"], out)?;
            writeln!(out, "start it with: systemctl enable --now {}", units::UNIT_NAME)?;
        }
        Init::Launchd => {
            writeln!(
                out,
                "start it with: launchctl bootstrap system {}",
                daemoneye_platform_macos::launchd::PLIST_PATH
            )?;
        }
        Init::Windows => {
            writeln!(
                out,
                r"register it with (elevated): powershell -File C:\ProgramData\DaemonEye\install-service.ps1"
            )?;
        }
    }
    Ok(())
}

/// Runs a system tool when present; a missing tool is reported, not fatal.
fn run_tool(tool: &str, args: &[&str], out: &mut dyn Write) -> anyhow::Result<()> {
    match Command::new(tool).args(args).status() {
        Ok(s) if s.success() => writeln!(out, "ran       {tool} {}", args.join(" "))?,
        Ok(s) => anyhow::bail!("`{tool} {}` failed ({s}); run it by hand and check its output", args.join(" ")),
        Err(e) => writeln!(out, "skipped   {tool} {} ({e}): run it by hand", args.join(" "))?,
    }
    Ok(())
}

fn write_atomic(dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".daemoneye-new");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("replacing {}", dest.display()))
}

fn uninstall(target: &Target, purge: bool, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    if is_real_root(&target.root) && target.init == Init::Systemd {
        // Stop it first; a unit that is not loaded is fine.
        let _ = Command::new("systemctl").args(["disable", "--now", units::UNIT_NAME]).status();
    }
    for item in plan(target.init, &target.bin_dir, false)?.into_iter().chain(binaries(target)) {
        if item.owner == Owner::Operator && !purge {
            continue;
        }
        let dest = under(&target.root, &item.path);
        match std::fs::remove_file(&dest) {
            Ok(()) => writeln!(out, "removed   {}", dest.display())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dest.display())),
        }
    }
    if purge {
        for dir in ["/etc/daemoneye/rules", "/etc/daemoneye", "/ProgramData/DaemonEye/rules", "/ProgramData/DaemonEye"]
        {
            // Only when empty: files the operator added stay, and are named.
            let d = under(&target.root, Path::new(dir));
            if d.is_dir() && std::fs::remove_dir(&d).is_err() {
                writeln!(out, "kept      {} (holds files install did not write)", d.display())?;
            }
        }
    } else {
        writeln!(
            out,
            "kept      configuration and rules (use --purge to remove them) and the data in /var/lib/daemoneye"
        )?;
    }
    if is_real_root(&target.root) && target.init == Init::Systemd {
        run_tool("systemctl", &["daemon-reload"], out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The installed binaries, as items (for uninstall and status, which must
/// not need the build directory).
fn binaries(target: &Target) -> Vec<Item> {
    if target.no_binaries || target.init == Init::Windows {
        return Vec::new();
    }
    let bin_dir = &target.bin_dir;
    ["daemoneye-agent", "procmond", "daemoneye-cli"]
        .into_iter()
        .map(|n| Item {
            path: bin_dir.join(n),
            content: Content::Copy(PathBuf::new()),
            mode: 0o755,
            owner: Owner::Service,
        })
        .collect()
}

fn status(target: &Target, format: Format, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    let (mut present, mut stale) = (0, 0);
    let items = plan(target.init, &target.bin_dir, false)?;
    let bins = binaries(target);
    for item in items.iter().chain(&bins) {
        let dest = under(&target.root, &item.path);
        let state = match (&item.content, std::fs::read(&dest)) {
            (_, Err(_)) => "missing",
            (Content::Text(s), Ok(b)) if item.owner == Owner::Service && b != s.as_bytes() => "differs",
            _ => "installed",
        };
        if state != "missing" && item.owner == Owner::Service {
            present += 1;
        }
        if state != "installed" && item.owner == Owner::Service {
            stale += 1;
        }
        rows.push((dest, state, item.owner));
    }
    let active = (is_real_root(&target.root) && target.init == Init::Systemd)
        .then(|| Command::new("systemctl").args(["is-active", units::UNIT_NAME]).output().ok())
        .flatten()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let verdict = match (present, stale) {
        (0, _) => "not installed",
        (_, 0) => "installed",
        _ => "incomplete: run `daemoneye-cli service install` again",
    };
    if format == Format::Json {
        let files: Vec<_> = rows
            .iter()
            .map(|(p, s, o)| json!({"path": p.display().to_string(), "state": s, "operator_file": *o == Owner::Operator}))
            .collect();
        let doc = json!({"init": format!("{:?}", target.init).to_lowercase(), "status": verdict, "active": active, "files": files});
        writeln!(out, "{doc}")?;
    } else {
        for (p, s, o) in &rows {
            let note = if *o == Owner::Operator { " (configuration)" } else { "" };
            writeln!(out, "{s:<10}{}{note}", p.display())?;
        }
        if let Some(a) = &active {
            writeln!(out, "service   {a}")?;
        }
        writeln!(out, "{verdict}")?;
    }
    Ok(ExitCode::from(match (present, stale) {
        (0, _) => 3,
        (_, 0) => 0,
        _ => 1,
    }))
}
