//! Named pipes: where the bus and the agent API live on Windows, instead of
//! the Unix sockets under `<run_dir>` on Linux and macOS.
//!
//! - The bus is `\\.\pipe\daemoneye-bus`, the agent API
//!   `\\.\pipe\daemoneye-agent` ([`BUS_PIPE`], [`AGENT_PIPE`]); a test or a
//!   second instance passes its own suffix ([`pipe_path`]).
//! - Every instance is created with the security descriptor [`PIPE_SDDL`]:
//!   a protected DACL granting full access to `SYSTEM` and the built-in
//!   Administrators and nothing to anyone else (the Windows counterpart of
//!   socket mode 0660 with group `daemoneye`). Remote clients are rejected.
//! - The first instance is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`, so a
//!   process that created the name first (pipe squatting) makes start-up fail
//!   instead of receiving our clients.
//! - The peer's identity comes from `GetNamedPipeClientProcessId` and the
//!   client's token (`ImpersonateNamedPipeClient`), the counterparts of
//!   `SO_PEERCRED`; the broker's ACL maps SYSTEM/Administrators to
//!   "privileged". Wiring the bus and the agent API onto these pipes belongs
//!   to those crates and is not done here.

/// The SDDL of every DaemonEye pipe: owner Administrators, protected DACL,
/// generic-all for `SY` (LocalSystem) and `BA` (BUILTIN\Administrators).
pub const PIPE_SDDL: &str = "O:BAG:SYD:P(A;;GA;;;SY)(A;;GA;;;BA)";

/// The bus pipe's base name.
pub const BUS_PIPE: &str = "daemoneye-bus";
/// The agent API pipe's base name.
pub const AGENT_PIPE: &str = "daemoneye-agent";

/// The longest pipe name Windows accepts after `\\.\pipe\`.
const MAX_PIPE_NAME: usize = 256 - 9;

/// An invalid pipe name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pipe name {name:?}: {why}")]
pub struct PipeNameError {
    name: String,
    why: &'static str,
}

/// `\\.\pipe\<base>` or `\\.\pipe\<base>-<suffix>`. Names must be non-empty,
/// without backslashes or NULs, and at most 247 characters.
pub fn pipe_path(base: &str, suffix: Option<&str>) -> Result<String, PipeNameError> {
    let name = match suffix {
        Some(s) => format!("{base}-{s}"),
        None => base.to_owned(),
    };
    let why = if name.is_empty() || suffix == Some("") {
        Some("empty name or suffix")
    } else if name.contains(['\\', '\0']) {
        Some("backslash or NUL in the name")
    } else if name.chars().count() > MAX_PIPE_NAME {
        Some("longer than 247 characters")
    } else {
        None
    };
    match why {
        Some(why) => Err(PipeNameError { name, why }),
        None => Ok(format!(r"\\.\pipe\{name}")),
    }
}

/// Creates one server instance of the pipe at `path` (from [`pipe_path`])
/// with the [`PIPE_SDDL`] descriptor. `first` adds
/// `FILE_FLAG_FIRST_PIPE_INSTANCE`: pass `true` for the first instance a
/// server creates, `false` for the instances that follow each accepted
/// client. Must run inside a tokio runtime.
#[cfg(windows)]
pub fn create_server(path: &str, first: bool) -> std::io::Result<tokio::net::windows::named_pipe::NamedPipeServer> {
    use std::io;
    use windows_sys::Win32::Foundation::{FALSE, LocalFree};
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    };
    use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};

    let sddl: Vec<u16> = PIPE_SDDL.encode_utf16().chain(Some(0)).collect();
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `sddl` is a NUL-terminated UTF-16 string that outlives the call;
    // `descriptor` is a valid out-pointer; the size out-pointer may be null.
    #[allow(unsafe_code)]
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut descriptor,
            std::ptr::null_mut(),
        )
    };
    if ok == FALSE {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("pipe {path}: cannot build its security descriptor: {e}")));
    }
    let mut attrs = SECURITY_ATTRIBUTES {
        nLength: u32::try_from(std::mem::size_of::<SECURITY_ATTRIBUTES>()).unwrap_or(u32::MAX),
        lpSecurityDescriptor: descriptor,
        bInheritHandle: FALSE,
    };
    // SAFETY: `attrs` is a valid SECURITY_ATTRIBUTES whose descriptor stays
    // alive until after the call (freed below); the pipe copies it.
    #[allow(unsafe_code)]
    let server = unsafe {
        tokio::net::windows::named_pipe::ServerOptions::new()
            .first_pipe_instance(first)
            .reject_remote_clients(true)
            .create_with_security_attributes_raw(path, (&raw mut attrs).cast())
    };
    // SAFETY: `descriptor` was allocated by LocalAlloc inside the conversion
    // above and is not used after this point.
    #[allow(unsafe_code)]
    unsafe {
        LocalFree(descriptor);
    }
    server.map_err(|e| io::Error::new(e.kind(), format!("pipe {path}: cannot create it: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_paths() {
        assert_eq!(pipe_path(BUS_PIPE, None).unwrap(), r"\\.\pipe\daemoneye-bus");
        assert_eq!(pipe_path(AGENT_PIPE, Some("test1")).unwrap(), r"\\.\pipe\daemoneye-agent-test1");
        assert!(pipe_path("a\\b", None).is_err());
        assert!(pipe_path(BUS_PIPE, Some("")).is_err());
        let err = pipe_path(&"x".repeat(300), None).unwrap_err();
        assert!(err.to_string().contains("longer than 247"), "{err}");
    }

    #[test]
    fn descriptor_grants_only_system_and_administrators() {
        let dacl = PIPE_SDDL.split_once("D:").map(|(_, d)| d).unwrap();
        assert!(dacl.starts_with("P("), "the DACL must be protected (no inherited entries)");
        let aces: Vec<&str> =
            dacl.trim_start_matches('P').split_terminator(')').map(|a| a.trim_start_matches('(')).collect();
        assert_eq!(aces, vec!["A;;GA;;;SY", "A;;GA;;;BA"]);
    }
}
