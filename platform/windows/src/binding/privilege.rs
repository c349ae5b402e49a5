//! `SeDebugPrivilege` for the start-up snapshot, removed afterwards.
//!
//! With the privilege, `OpenProcess` succeeds on every process except the
//! protected ones, so the snapshot can read command lines and tokens of
//! services and other users' processes. The privilege is then *removed*
//! from procmond's token (`SE_PRIVILEGE_REMOVED`), not just disabled, so no
//! later bug can turn it back on: the token restriction PRODUCT.md §6 asks
//! for. Events after the snapshot are read with the rights a
//! LocalSystem service has anyway.

use std::io;

use windows_sys::Win32::Foundation::{CloseHandle, ERROR_NOT_ALL_ASSIGNED, FALSE, GetLastError, HANDLE, LUID};
use windows_sys::Win32::Security::{
    AdjustTokenPrivileges, LUID_AND_ATTRIBUTES, LookupPrivilegeValueW, SE_PRIVILEGE_ENABLED, SE_PRIVILEGE_REMOVED,
    TOKEN_ADJUST_PRIVILEGES, TOKEN_PRIVILEGES, TOKEN_QUERY,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// `SeDebugPrivilege`, enabled while this guard lives and removed from the
/// token when it is dropped (or by [`DebugPrivilege::remove`]).
pub struct DebugPrivilege {
    luid: LUID,
    removed: bool,
}

impl std::fmt::Debug for DebugPrivilege {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugPrivilege").field("removed", &self.removed).finish_non_exhaustive()
    }
}

impl DebugPrivilege {
    /// Enables the privilege. Fails when the token does not hold it (not an
    /// administrator or LocalSystem): the snapshot then sees less, which the
    /// caller logs.
    pub fn enable() -> io::Result<Self> {
        let name: Vec<u16> = "SeDebugPrivilege".encode_utf16().chain(Some(0)).collect();
        let mut luid = LUID { LowPart: 0, HighPart: 0 };
        // SAFETY: `name` is NUL-terminated UTF-16; `luid` is a valid out-pointer.
        #[allow(unsafe_code)]
        let ok = unsafe { LookupPrivilegeValueW(std::ptr::null(), name.as_ptr(), &mut luid) };
        if ok == FALSE {
            return Err(context("looking up SeDebugPrivilege", io::Error::last_os_error()));
        }
        adjust(luid, SE_PRIVILEGE_ENABLED).map_err(|e| context("enabling SeDebugPrivilege", e))?;
        Ok(Self { luid, removed: false })
    }

    /// Removes the privilege from the process token for good.
    pub fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        adjust(self.luid, SE_PRIVILEGE_REMOVED).map_err(|e| context("removing SeDebugPrivilege", e))
    }
}

impl Drop for DebugPrivilege {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = adjust(self.luid, SE_PRIVILEGE_REMOVED)
        {
            tracing::warn!(error = %e, "could not remove SeDebugPrivilege from the token");
        }
    }
}

fn context(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e} (procmond must run as LocalSystem or an administrator)"))
}

fn adjust(luid: LUID, attributes: u32) -> io::Result<()> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: the pseudo-handle of the current process is always valid;
    // `token` is a valid out-pointer.
    #[allow(unsafe_code)]
    let ok = unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY, &mut token) };
    if ok == FALSE {
        return Err(io::Error::last_os_error());
    }
    let privileges = TOKEN_PRIVILEGES {
        PrivilegeCount: 1,
        Privileges: [LUID_AND_ATTRIBUTES { Luid: luid, Attributes: attributes }],
    };
    // SAFETY: `token` was opened above with TOKEN_ADJUST_PRIVILEGES;
    // `privileges` is a valid one-entry TOKEN_PRIVILEGES; the previous state
    // is not requested (null, 0).
    #[allow(unsafe_code)]
    let (ok, last) = unsafe {
        let ok = AdjustTokenPrivileges(token, FALSE, &privileges, 0, std::ptr::null_mut(), std::ptr::null_mut());
        let last = GetLastError();
        CloseHandle(token);
        (ok, last)
    };
    if ok == FALSE {
        return Err(io::Error::from_raw_os_error(i32::try_from(last).unwrap_or(i32::MAX)));
    }
    // AdjustTokenPrivileges "succeeds" without the privilege in the token.
    if last == ERROR_NOT_ALL_ASSIGNED {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the token does not hold SeDebugPrivilege"));
    }
    Ok(())
}
