//! Windows process telemetry: ETW `Microsoft-Windows-Kernel-Process`.
//!
//! Split like every platform crate:
//!
//! - [`fields`], [`translate`] and [`cmdline`] are plain Rust, compiled and
//!   unit-tested on every OS against fixtures shaped like the provider's
//!   events (manifest field names and types).
//! - `binding` (the ETW session through ferrisetw, the process queries,
//!   SeDebugPrivilege) and `service` (the agent as a Windows service,
//!   through windows-service) exist only on Windows (`cfg(windows)`); CI
//!   type-checks them with `--target x86_64-pc-windows-gnu`.
//!
//! The named pipes of the bus and the agent API (SYSTEM + Administrators
//! descriptor, first-instance check, client identity) are not here but in
//! `daemoneye_eventbus::transport`, which the bus, the agent and the CLI
//! share without depending on a platform crate.
//!
//! # Why `Microsoft-Windows-Kernel-Process` and not the NT kernel logger
//!
//! The NT Kernel Logger's process events (`MSNT_SystemTrace`, `Process`
//! class, opcode 1/2) carry the command line and user SID, but there is one
//! such session per machine (or a `SystemTraceProvider` session on Windows
//! 11+): another tool (Process Monitor, xperf, an EDR) that owns it stops us,
//! or we stop it. The manifest provider is enabled in a private real-time
//! session (`UserTrace`) with keyword `WINEVENT_KEYWORD_PROCESS` (0x10) only,
//! coexists with other consumers, and carries what the key needs exactly
//! (`ProcessID`, `CreateTime` in both start and stop, `ParentProcessID`,
//! `SessionID`, the token elevation on Windows 10+, `ExitCode`). What it
//! lacks, the command line and the token user, is read from the live process
//! at the event (it is still being created when the start event is logged,
//! so it can be opened); when that fails the fields stay unknown.

pub mod cmdline;
pub mod fields;
pub mod translate;

#[cfg(windows)]
pub mod binding;
#[cfg(windows)]
pub mod service;
