//! Generates the protobuf and gRPC code from `../proto` with a vendored
//! `protoc`, so that no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe_env_set("PROTOC", protoc.as_os_str());

    // Read at run time: a build script binary compiled for one checkout can
    // be reused by another one sharing the target dir (Cargo hashes member
    // paths relative to the workspace), and `env!` would point at the first.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?;
    let proto_dir = PathBuf::from(manifest).join("../proto");
    let files = ["events.proto", "bus.proto", "tasks.proto", "agent.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", proto_dir.join(f).display());
    }
    let paths: Vec<PathBuf> = files.iter().map(|f| proto_dir.join(f)).collect();

    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .build_transport(false)
        .compile_protos(&paths, &[proto_dir])?;
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_env_set(key: &str, value: &std::ffi::OsStr) {
    // SAFETY: the build script has no other threads that read the
    // environment concurrently.
    unsafe { std::env::set_var(key, value) };
}
