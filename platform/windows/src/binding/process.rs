//! What the binding reads from live processes and the system: command line,
//! token user and elevation, image path, the start-up snapshot, the boot
//! stand-in and the drive-letter map.

use std::io;

use windows_sys::Wdk::System::Threading::NtQueryInformationProcess;
use windows_sys::Win32::Foundation::{CloseHandle, FALSE, FILETIME, HANDLE, LocalFree, UNICODE_STRING};
use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
use windows_sys::Win32::Security::{
    GetTokenInformation, TOKEN_ELEVATION, TOKEN_QUERY, TOKEN_USER, TokenElevation, TokenElevationType, TokenUser,
};
use windows_sys::Win32::Storage::FileSystem::QueryDosDeviceW;
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, PROCESSENTRY32W, Process32FirstW, Process32NextW, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::Registry::{HKEY_LOCAL_MACHINE, RRF_RT_REG_DWORD, RegGetValueW};
use windows_sys::Win32::System::RemoteDesktop::ProcessIdToSessionId;
use windows_sys::Win32::System::Threading::{
    GetProcessTimes, OpenProcess, OpenProcessToken, PROCESS_NAME_WIN32, PROCESS_QUERY_LIMITED_INFORMATION,
    QueryFullProcessImageNameW,
};

use crate::fields::ProcessStart;
use crate::translate::{DeviceMap, ProcessDetails};

/// `PROCESSINFOCLASS::ProcessCommandLineInformation` (Windows 8.1+).
const PROCESS_COMMAND_LINE_INFORMATION: i32 = 60;

/// An owned handle, closed on drop.
struct Handle(HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle was returned open by the API that made it and is
        // closed exactly once, here.
        #[allow(unsafe_code)]
        unsafe {
            CloseHandle(self.0);
        }
    }
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(Some(0)).collect()
}

fn open(pid: u32) -> Option<Handle> {
    // SAFETY: plain call; a null result is checked.
    #[allow(unsafe_code)]
    let h = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid) };
    (!h.is_null()).then_some(Handle(h))
}

/// Reads what the event does not carry from the live process. Every field
/// that cannot be read (the process is gone, protected, or access is denied)
/// stays `None`.
pub fn details(pid: u32) -> ProcessDetails {
    let Some(process) = open(pid) else {
        return ProcessDetails::default();
    };
    let (user_sid, token_elevation_type, token_is_elevated) = token_info(&process);
    ProcessDetails {
        command_line: command_line(&process),
        image_path: image_path(&process),
        user_sid,
        token_elevation_type,
        token_is_elevated,
    }
}

fn command_line(process: &Handle) -> Option<String> {
    let mut len = 0u32;
    // SAFETY: a zero-length query only writes the needed size into `len`.
    #[allow(unsafe_code)]
    unsafe {
        NtQueryInformationProcess(process.0, PROCESS_COMMAND_LINE_INFORMATION, std::ptr::null_mut(), 0, &mut len);
    }
    if len == 0 || len > 1 << 20 {
        return None;
    }
    // u64 storage keeps the UNICODE_STRING header aligned.
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: `buf` holds at least `len` bytes and outlives the call.
    #[allow(unsafe_code)]
    let status = unsafe {
        NtQueryInformationProcess(process.0, PROCESS_COMMAND_LINE_INFORMATION, buf.as_mut_ptr().cast(), len, &mut len)
    };
    if status < 0 {
        return None;
    }
    // SAFETY: on success the buffer starts with a UNICODE_STRING whose Buffer
    // points inside `buf` and holds `Length` bytes of UTF-16.
    #[allow(unsafe_code)]
    let text = unsafe {
        let us = &*buf.as_ptr().cast::<UNICODE_STRING>();
        if us.Buffer.is_null() {
            return None;
        }
        std::slice::from_raw_parts(us.Buffer, usize::from(us.Length) / 2)
    };
    Some(String::from_utf16_lossy(text))
}

fn image_path(process: &Handle) -> Option<String> {
    let mut buf = vec![0u16; 32_768];
    let mut len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    // SAFETY: `buf` has `len` UTF-16 units; `len` is updated to the length.
    #[allow(unsafe_code)]
    let ok = unsafe { QueryFullProcessImageNameW(process.0, PROCESS_NAME_WIN32, buf.as_mut_ptr(), &mut len) };
    (ok != FALSE).then(|| String::from_utf16_lossy(&buf[..(len as usize).min(buf.len())]))
}

fn token_info(process: &Handle) -> (Option<String>, Option<u32>, Option<bool>) {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: `process` is open; `token` is a valid out-pointer.
    #[allow(unsafe_code)]
    if unsafe { OpenProcessToken(process.0, TOKEN_QUERY, &mut token) } == FALSE {
        return (None, None, None);
    }
    let token = Handle(token);
    let mut buf = vec![0u64; 64];
    let size = u32::try_from(buf.len() * 8).unwrap_or(u32::MAX);
    let mut got = 0u32;
    // SAFETY: `buf` holds `size` bytes, aligned for TOKEN_USER.
    #[allow(unsafe_code)]
    let sid = unsafe {
        if GetTokenInformation(token.0, TokenUser, buf.as_mut_ptr().cast(), size, &mut got) == FALSE {
            None
        } else {
            let user = &*buf.as_ptr().cast::<TOKEN_USER>();
            let mut text: *mut u16 = std::ptr::null_mut();
            if ConvertSidToStringSidW(user.User.Sid, &mut text) == FALSE || text.is_null() {
                None
            } else {
                let n = (0..).take_while(|&i| *text.add(i) != 0).count();
                let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, n));
                LocalFree(text.cast());
                Some(s)
            }
        }
    };
    let mut kind = 0i32;
    // SAFETY: TokenElevationType writes one TOKEN_ELEVATION_TYPE (i32).
    #[allow(unsafe_code)]
    let kind = unsafe {
        let size = std::mem::size_of::<i32>() as u32;
        (GetTokenInformation(token.0, TokenElevationType, (&raw mut kind).cast(), size, &mut got) != FALSE)
            .then(|| u32::try_from(kind).ok())
            .flatten()
    };
    let mut elevation = TOKEN_ELEVATION { TokenIsElevated: 0 };
    // SAFETY: TokenElevation writes one TOKEN_ELEVATION.
    #[allow(unsafe_code)]
    let elevated = unsafe {
        let size = std::mem::size_of::<TOKEN_ELEVATION>() as u32;
        (GetTokenInformation(token.0, TokenElevation, (&raw mut elevation).cast(), size, &mut got) != FALSE)
            .then_some(elevation.TokenIsElevated != 0)
    };
    (sid, kind, elevated)
}

fn filetime(ft: FILETIME) -> i64 {
    (i64::from(ft.dwHighDateTime) << 32) | i64::from(ft.dwLowDateTime)
}

/// Every process now, as `ProcessStart`-shaped records with their details,
/// oldest first (so a parent always precedes its children). Processes whose
/// create time cannot be read (the Idle process, protected processes without
/// SeDebugPrivilege, processes that exited meanwhile) are left out and
/// counted in the second value.
pub fn snapshot() -> io::Result<(Vec<(ProcessStart, ProcessDetails)>, usize)> {
    // SAFETY: plain call; the result is checked.
    #[allow(unsafe_code)]
    let snap = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if snap.is_null() || snap as isize == -1 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("CreateToolhelp32Snapshot: {e}")));
    }
    let snap = Handle(snap);
    // SAFETY: PROCESSENTRY32W is plain data; all-zero is a valid value.
    #[allow(unsafe_code)]
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    let mut out = Vec::new();
    let mut skipped = 0;
    // SAFETY: `snap` is a process snapshot; `entry.dwSize` is set.
    #[allow(unsafe_code)]
    let mut more = unsafe { Process32FirstW(snap.0, &mut entry) } != FALSE;
    while more {
        match snapshot_one(entry.th32ProcessID, entry.th32ParentProcessID) {
            Some(rec) => out.push(rec),
            None => skipped += 1,
        }
        // SAFETY: as above.
        #[allow(unsafe_code)]
        {
            more = unsafe { Process32NextW(snap.0, &mut entry) } != FALSE;
        }
    }
    out.sort_by_key(|(s, _)| s.create_time);
    Ok((out, skipped))
}

fn snapshot_one(pid: u32, ppid: u32) -> Option<(ProcessStart, ProcessDetails)> {
    let process = open(pid)?;
    let zero = FILETIME { dwLowDateTime: 0, dwHighDateTime: 0 };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: `process` is open with PROCESS_QUERY_LIMITED_INFORMATION; the
    // four out-pointers are valid.
    #[allow(unsafe_code)]
    let ok = unsafe { GetProcessTimes(process.0, &mut created, &mut exited, &mut kernel, &mut user) };
    if ok == FALSE || filetime(created) == 0 {
        return None;
    }
    let mut session = 0u32;
    // SAFETY: `session` is a valid out-pointer.
    #[allow(unsafe_code)]
    let session = (unsafe { ProcessIdToSessionId(pid, &mut session) } != FALSE).then_some(session);
    drop(process);
    let details = details(pid);
    let start = ProcessStart {
        process_id: pid,
        process_sequence_number: None,
        create_time: filetime(created),
        parent_process_id: Some(ppid),
        session_id: session,
        flags: None,
        token_elevation_type: None,
        token_is_elevated: None,
        image_name: details.image_path.clone(),
        package_full_name: None,
    };
    Some((start, details))
}

/// The boot stand-in of the process key: the kernel's boot counter
/// (`HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Memory
/// Management\PrefetchParameters\BootId`, incremented at every boot), as 8
/// hex digits; `00000000` when unreadable (keys stay unique: their start
/// part is wall-clock time).
pub fn boot_id() -> String {
    let key = wide(r"SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management\PrefetchParameters");
    let value = wide("BootId");
    let mut data = 0u32;
    let mut size = std::mem::size_of::<u32>() as u32;
    // SAFETY: NUL-terminated names; `data` holds `size` bytes.
    #[allow(unsafe_code)]
    let status = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            key.as_ptr(),
            value.as_ptr(),
            RRF_RT_REG_DWORD,
            std::ptr::null_mut(),
            (&raw mut data).cast(),
            &mut size,
        )
    };
    if status == 0 { format!("{data:08x}") } else { "00000000".to_owned() }
}

/// The NT device behind every drive letter, for NT -> DOS image paths.
pub fn device_map() -> DeviceMap {
    let mut pairs = Vec::new();
    let mut buf = vec![0u16; 1024];
    for letter in 'A'..='Z' {
        let drive = format!("{letter}:");
        let name = wide(&drive);
        // SAFETY: `name` is NUL-terminated; `buf` holds `buf.len()` units.
        #[allow(unsafe_code)]
        let n = unsafe { QueryDosDeviceW(name.as_ptr(), buf.as_mut_ptr(), buf.len() as u32) } as usize;
        if n == 0 {
            continue;
        }
        // The result is a list of NUL-terminated strings; the first counts.
        let first = buf[..n.min(buf.len())].split(|&c| c == 0).next().unwrap_or(&[]);
        if !first.is_empty() {
            pairs.push((String::from_utf16_lossy(first), drive));
        }
    }
    DeviceMap::new(pairs)
}
