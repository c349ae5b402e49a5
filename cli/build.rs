//! Embeds the shipped rules (`../rules/*.yaml`) for `service install`.

#![allow(clippy::expect_used, reason = "a build script reports failure by panicking")]

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // Read at run time: checkouts sharing a target dir share this build
    // script's binary, so a compiled-in path could name another checkout.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo");
    let dir = Path::new(&manifest_dir).join("../rules");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("reading the shipped rules directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = String::from(
        "/// The shipped rules: (file name, contents).\npub(crate) const SHIPPED_RULES: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_name().expect("a file name").to_string_lossy();
        let abs = f.canonicalize().expect("canonical rule path");
        writeln!(out, "    ({name:?}, include_str!({:?})),", abs.display().to_string()).expect("writing to a String");
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo")).join("shipped_rules.rs");
    std::fs::write(dest, out).expect("writing shipped_rules.rs");
}
