//! Embeds procmond's eBPF object when `cargo xtask build-ebpf` has built it.
//!
//! Looks for the object at `$DAEMONEYE_EBPF_OBJECT`, else at
//! `<target>/ebpf-object/procmond.bpf.o` (where the xtask puts it; `<target>`
//! is `$CARGO_TARGET_DIR` or the workspace's `target/`). When found, it is
//! copied to `$OUT_DIR/procmond.bpf.o` and `cfg(daemoneye_ebpf_object)` is
//! set; otherwise the crate builds without it and `ebpf::available()` says
//! why. The xtask's output directory is created here and watched, so a later
//! `cargo xtask build-ebpf` makes the next build embed the new object.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(daemoneye_ebpf_object)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=DAEMONEYE_EBPF_OBJECT");
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());

    let object = match std::env::var_os("DAEMONEYE_EBPF_OBJECT").filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo::rerun-if-changed={}", path.display());
            path
        }
        None => {
            let dir = target_dir().join("ebpf-object");
            // Watch the directory, which must exist for cargo to watch it.
            if std::fs::create_dir_all(&dir).is_ok() {
                println!("cargo::rerun-if-changed={}", dir.display());
            }
            dir.join("procmond.bpf.o")
        }
    };
    let embedded = out_dir.join("procmond.bpf.o");
    if object.is_file() && std::fs::copy(&object, &embedded).is_ok() {
        println!("cargo::rustc-cfg=daemoneye_ebpf_object");
        println!("cargo::rustc-env=DAEMONEYE_EBPF_OBJECT_SOURCE={}", object.display());
    } else {
        let _ = std::fs::remove_file(&embedded);
        println!("cargo::rustc-env=DAEMONEYE_EBPF_OBJECT_SOURCE={}", object.display());
    }
}

/// `$CARGO_TARGET_DIR`, else `<workspace>/target` (this crate is
/// `<workspace>/platform/linux`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    manifest.ancestors().nth(2).map_or_else(|| Path::new("target").to_owned(), |root| root.join("target"))
}
