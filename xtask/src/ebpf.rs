//! `cargo xtask build-ebpf`: builds procmond's eBPF object, installing what
//! is missing first.
//!
//! Needs: the nightly toolchain with `rust-src` (for `-Z build-std=core`),
//! and `bpf-linker` built against the LLVM major that nightly's rustc uses
//! (`rustc +nightly -vV`), which in turn needs Debian's `llvm-NN-dev`. Each
//! is checked first and installed only when missing (packages only as root;
//! otherwise the command to run is printed), so a second run takes seconds.
//!
//! The object ends up at `<target>/ebpf-object/procmond.bpf.o`, where
//! `platform/linux/build.rs` looks for it to embed it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Builds the object and returns its path.
pub(crate) fn build_ebpf(root: &Path, target: &Path) -> anyhow::Result<PathBuf> {
    let llvm = ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker(llvm)?;

    let manifest = root.join("procmond-ebpf/Cargo.toml");
    let target_dir = target.join("ebpf");
    let mut cmd = nightly_cargo();
    cmd.args(["build", "--release", "-p", "procmond-ebpf", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    if root.join("procmond-ebpf/Cargo.lock").is_file() {
        cmd.arg("--locked");
    }
    run(&mut cmd, "building the eBPF programs")?;

    let built = target_dir.join("bpfel-unknown-none/release/procmond");
    let dest_dir = target.join("ebpf-object");
    let dest = dest_dir.join("procmond.bpf.o");
    std::fs::create_dir_all(&dest_dir).with_context(|| format!("creating {}", dest_dir.display()))?;
    let new = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    // Only a changed object touches the file, so platform/linux rebuilds
    // only when it must.
    if std::fs::read(&dest).ok().as_deref() != Some(new.as_slice()) {
        std::fs::write(&dest, &new).with_context(|| format!("writing {}", dest.display()))?;
    }
    eprintln!("xtask: eBPF object ({} bytes) at {}", new.len(), dest.display());
    Ok(dest)
}

/// `rustup run nightly cargo`, without the variables the outer (stable)
/// cargo set that would leak into it.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]);
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO"] {
        cmd.env_remove(var);
    }
    cmd.env("PATH", path_with_cargo_bin());
    cmd
}

/// `PATH` with `~/.cargo/bin` (where `cargo install` puts bpf-linker).
fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(bin) = cargo_home().map(|h| h.join("bin"))
        && !paths.contains(&bin)
    {
        paths.push(bin);
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// Checks the nightly toolchain (installing it when missing) and returns
/// the LLVM major version its rustc uses.
fn ensure_nightly() -> anyhow::Result<u32> {
    let version =
        || Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]).env_remove("RUSTUP_TOOLCHAIN").output();
    let out = match version() {
        Ok(o) if o.status.success() => o,
        _ => {
            eprintln!("xtask: installing the nightly toolchain");
            run(
                Command::new("rustup").args([
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ]),
                "installing the nightly toolchain",
            )?;
            version().context("running rustc +nightly -vV")?
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    llvm_major(&text).with_context(|| format!("no `LLVM version: NN` line in `rustc +nightly -vV`:\n{text}"))
}

/// The LLVM major from `rustc -vV` output (`LLVM version: 22.1.4`).
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv.lines().find_map(|l| l.strip_prefix("LLVM version: ")?.split('.').next()?.trim().parse().ok())
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("running rustc +nightly --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml").is_file() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    run(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "adding the rust-src component",
    )
}

/// Installs bpf-linker when it is missing or linked against another LLVM.
fn ensure_bpf_linker(llvm: u32) -> anyhow::Result<()> {
    let linker = cargo_home().map(|h| h.join("bin/bpf-linker")).filter(|p| p.is_file());
    let linker = linker.or_else(|| which("bpf-linker"));
    if let Some(linker) = &linker {
        match linked_llvm(linker) {
            Some(found) if found == llvm => return Ok(()),
            Some(found) => {
                eprintln!("xtask: {} uses LLVM {found}, nightly uses LLVM {llvm}: reinstalling", linker.display())
            }
            // Cannot tell (no ldd, static LLVM): trust it.
            None => return Ok(()),
        }
    }
    let prefix = PathBuf::from(format!("/usr/lib/llvm-{llvm}"));
    if !prefix.join("bin/llvm-config").is_file() {
        let packages =
            [format!("llvm-{llvm}-dev"), format!("libpolly-{llvm}-dev"), "libzstd-dev".into(), "zlib1g-dev".into()];
        let install = format!("apt-get install -y {}", packages.join(" "));
        if !is_root() {
            bail!(
                "bpf-linker needs LLVM {llvm} development files: run `sudo {install}`, then `cargo xtask build-ebpf` again"
            );
        }
        eprintln!("xtask: {install}");
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y"]).args(&packages).env("DEBIAN_FRONTEND", "noninteractive");
        if run(&mut cmd, "installing LLVM development packages").is_err() {
            // A fresh machine may have no package lists yet.
            run(Command::new("apt-get").arg("update"), "apt-get update")?;
            run(&mut cmd, "installing LLVM development packages")?;
        }
    }
    eprintln!("xtask: cargo install bpf-linker --no-default-features --features llvm-{llvm} (a few minutes, once)");
    let mut path = vec![prefix.join("bin")];
    path.extend(std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default());
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "bpf-linker", "--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{llvm}"))
        // bpf-linker's build finds LLVM through LLVM_PREFIX, else the first
        // llvm-config on PATH (which may be another version).
        .env("LLVM_PREFIX", &prefix)
        .env("PATH", std::env::join_paths(path).unwrap_or_default())
        .current_dir(std::env::temp_dir());
    for var in
        ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR"]
    {
        cmd.env_remove(var);
    }
    run(&mut cmd, "installing bpf-linker")
}

/// The LLVM major a binary links dynamically (`libLLVM.so.22.1`, or
/// `libLLVM-22.so`), from `ldd`.
fn linked_llvm(bin: &Path) -> Option<u32> {
    let out = Command::new("ldd").arg(bin).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lib = text.split_whitespace().find(|w| w.starts_with("libLLVM"))?;
    let digits = lib.trim_start_matches("libLLVM").trim_start_matches(['-', '.']).trim_start_matches("so.");
    digits.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn is_root() -> bool {
    // `id -u` keeps xtask free of libc; it is on every Linux.
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("{what}: starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status}): {cmd:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_is_read_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0"), None);
    }
}
