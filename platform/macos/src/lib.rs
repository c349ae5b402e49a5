//! macOS process telemetry: EndpointSecurity `NOTIFY_EXEC`, `NOTIFY_FORK`
//! and `NOTIFY_EXIT`, through endpoint-sec.
//!
//! Split like every platform crate:
//!
//! - [`translate`] (EndpointSecurity messages as plain structs ->
//!   `ProcessEvent`) and [`launchd`] (the agent's launchd job) are plain
//!   Rust, compiled and unit-tested on every OS.
//! - `binding` (the `es_client_t`) and `snapshot` (`proc_pidinfo`) exist only
//!   on macOS; CI type-checks them with `--target aarch64-apple-darwin`.
//!
//! # What the EndpointSecurity client needs
//!
//! - **The entitlement** `com.apple.developer.endpoint-security.client`
//!   (`true`) in the code signature of the binary that calls
//!   `es_new_client` — procmond. Apple grants it on request to a Developer
//!   ID team; the binary must be signed with a provisioning profile that
//!   carries it. Without it `es_new_client` fails with
//!   `ES_NEW_CLIENT_RESULT_ERR_NOT_ENTITLED`.
//! - **Root**: the client must be created and live in a process running as
//!   root (`ES_NEW_CLIENT_RESULT_ERR_NOT_PRIVILEGED`), which the launchd job
//!   in [`launchd`] provides for the agent and so for procmond.
//! - **Full Disk Access** (TCC approval) for procmond, granted by the user in
//!   System Settings > Privacy & Security > Full Disk Access, or pushed by an
//!   MDM PPPC profile (`SystemPolicyAllFiles` for procmond's code
//!   requirement). Without it `es_new_client` fails with
//!   `ES_NEW_CLIENT_RESULT_ERR_NOT_PERMITTED`.
//! - macOS 11 or later (message version 4+, which carries the responsible
//!   process's audit token; start times need version 3).
//!
//! Any of these missing makes [`binding::EsSource::start`] fail with an error
//! naming all three, and `auto` falls back to polling.

pub mod launchd;
pub mod translate;

#[cfg(target_os = "macos")]
pub mod binding;
#[cfg(target_os = "macos")]
mod snapshot;
