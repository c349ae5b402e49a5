//! Build chores for DaemonEye: `cargo xtask <command>`.
//!
//! - `run`: build everything and start the agent (which starts procmond)
//!   with the embedded defaults: data under `target/daemoneye`, the shipped
//!   `rules/`, alerts on stdout.
//! - `test`: build the binaries, then run every test of the workspace.
//! - `ci`: what `.ci/run` runs after installing the toolchain: formatting,
//!   clippy, then `test`.
//! - `build-ebpf`: build procmond's eBPF object (nightly + bpf-linker,
//!   installed when missing; see `ebpf.rs`). `run` and `test` try it first
//!   and go on without it (procmond then uses its fallbacks) when it fails.
//! - `bench`: the sensor benchmarks of PRODUCT.md §15 on the real kernel
//!   (`bench.rs`), `--criterion` adds the criterion benchmarks.
//! - `install [--root DIR]`: release build, then `daemoneye-cli service
//!   install` (systemd unit, user, config, rules, binaries).

#![allow(clippy::print_stderr, reason = "xtask reports progress to the developer on stderr")]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;
mod ebpf;

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "DaemonEye build chores")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build and start the agent with the embedded defaults.
    Run {
        /// Build with optimisations.
        #[arg(long)]
        release: bool,
        /// Extra arguments for daemoneye-agent (after `--`).
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Build the binaries and run every test.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Lints (rustfmt, clippy -D warnings) and then `test`, as CI runs them.
    Ci,
    /// Build procmond's eBPF object, installing the toolchain parts it needs.
    BuildEbpf,
    /// Sensor benchmarks on the real kernel (exec storms against a baseline
    /// and execsnoop, start-up snapshot, memory); needs root.
    Bench(bench::BenchArgs),
    /// Build release binaries and install them as a system service
    /// (`daemoneye-cli service install`: systemd unit, sysusers.d entry,
    /// /etc/daemoneye/config.toml, the shipped rules, the binaries).
    Install {
        /// Install under DIR instead of / (packaging, tests).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Extra arguments for `daemoneye-cli service install` (after `--`).
        #[arg(last = true)]
        service_args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run { release, agent_args } => run(release, &agent_args),
        Cmd::Test { test_args } => test(&test_args),
        Cmd::Bench(args) => bench::bench(&workspace_root(), &target_dir(), &args),
        Cmd::BuildEbpf => ebpf::build_ebpf(&workspace_root(), &target_dir()).map(drop),
        Cmd::Install { root, service_args } => install(&root, &service_args),
        Cmd::Ci => {
            cargo(&["fmt", "--all", "--check"]).context("formatting differs: run `cargo fmt --all`")?;
            cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
            test(&[])
        }
    }
}

fn workspace_root() -> PathBuf {
    // xtask lives in <root>/xtask. `cargo xtask` (cargo run) sets
    // CARGO_MANIFEST_DIR at run time; it is read then rather than compiled
    // in, because checkouts sharing a target dir share this binary.
    let dir =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    dir.parent().map_or_else(|| PathBuf::from("."), Path::to_owned)
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Builds the eBPF object when possible; without it procmond runs on its
/// fallbacks, so a failure is reported and the caller goes on.
fn try_build_ebpf() {
    if let Err(e) = ebpf::build_ebpf(&workspace_root(), &target_dir()) {
        eprintln!("xtask: warning: no eBPF object ({e:#}); procmond will use its fallback backends");
    }
}

fn install(root: &Path, service_args: &[String]) -> anyhow::Result<()> {
    try_build_ebpf();
    cargo(&["build", "--release", "--workspace", "--bins"])?;
    let cli = target_dir().join("release").join("daemoneye-cli");
    let status = Command::new(&cli)
        .args(["service", "install", "--root"])
        .arg(root)
        .args(service_args)
        .status()
        .with_context(|| format!("running {}", cli.display()))?;
    if !status.success() {
        bail!("`daemoneye-cli service install` failed ({status})");
    }
    Ok(())
}

fn run(release: bool, agent_args: &[String]) -> anyhow::Result<()> {
    try_build_ebpf();
    let mut build = vec!["build", "--workspace", "--bins"];
    if release {
        build.push("--release");
    }
    cargo(&build)?;
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join(if release { "release" } else { "debug" }).join("daemoneye-agent");
    let data = target.join("daemoneye");
    eprintln!("xtask: starting {} with data in {}", bin.display(), data.display());
    let status = Command::new(&bin)
        .arg("--data-dir")
        .arg(&data)
        .arg("--rules-dir")
        .arg(root.join("rules"))
        .arg("--no-system-config")
        .args(agent_args)
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !status.success() {
        bail!("daemoneye-agent exited with {status}");
    }
    Ok(())
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    // The end-to-end tests start the real binaries: build them first.
    try_build_ebpf();
    cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}
