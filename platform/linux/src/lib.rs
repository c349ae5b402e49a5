//! Linux process telemetry for DaemonEye.
//!
//! - [`procfs`]: the `/proc` reader — start-up snapshot and enrichment of
//!   kernel events that carry only ids (pid, ppid, process key, argv, exe,
//!   cwd, ids, cgroup and container id, start time, memory).
//!
//! *Architecture invariant:* this crate translates the OS into
//! `daemoneye_lib::proto` records; nothing above `platform/` knows which OS
//! it runs on, and nothing here opens the ledger or the bus.

#[cfg(target_os = "linux")]
pub mod procfs;

/// Kernel BTF reader (struct offsets for the eBPF programs).
#[cfg(target_os = "linux")]
pub mod btf;
/// The eBPF backend: loader, ring buffer reader, decoder.
#[cfg(target_os = "linux")]
pub mod ebpf;
/// The proc connector backend: netlink process events enriched from `/proc`.
#[cfg(target_os = "linux")]
pub mod proc_connector;
/// procmond's sandbox: capability drop and the network-refusing seccomp filter.
#[cfg(target_os = "linux")]
pub mod sandbox;
