//! The start-up snapshot on macOS: every process from `proc_listallpids`,
//! with `proc_pidinfo(PROC_PIDTBSDINFO)` (parent, ids, start time — the same
//! `p_start` EndpointSecurity reports as `start_time`, so keys agree) and
//! `proc_pidpath`. Processes that vanish meanwhile are left out.

use std::ffi::c_void;

use crate::translate::EsProcess;

/// Every process now, oldest first (a parent precedes its children).
pub(crate) fn processes() -> Vec<EsProcess> {
    // SAFETY: a null buffer asks for the number of pids.
    #[allow(unsafe_code)]
    let n = unsafe { libc::proc_listallpids(std::ptr::null_mut(), 0) };
    let Ok(n) = usize::try_from(n) else { return Vec::new() };
    // Room for processes started since the count.
    let mut pids = vec![0 as libc::pid_t; n + 64];
    let bytes = i32::try_from(pids.len() * std::mem::size_of::<libc::pid_t>()).unwrap_or(i32::MAX);
    // SAFETY: `pids` holds `bytes` bytes.
    #[allow(unsafe_code)]
    let got = unsafe { libc::proc_listallpids(pids.as_mut_ptr().cast::<c_void>(), bytes) };
    pids.truncate(usize::try_from(got).unwrap_or(0).min(pids.len()));
    let mut out: Vec<EsProcess> = pids.into_iter().filter(|p| *p > 0).filter_map(one).collect();
    out.sort_by_key(|p| p.start_time);
    out
}

fn one(pid: libc::pid_t) -> Option<EsProcess> {
    // SAFETY: proc_bsdinfo is plain data; all-zero is a valid value.
    #[allow(unsafe_code)]
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = i32::try_from(std::mem::size_of::<libc::proc_bsdinfo>()).ok()?;
    // SAFETY: `info` holds `size` bytes.
    #[allow(unsafe_code)]
    let got = unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDTBSDINFO, 0, (&raw mut info).cast(), size) };
    if got != size {
        return None;
    }
    let mut path = vec![0u8; 4 * 1024];
    // SAFETY: `path` holds the given number of bytes.
    #[allow(unsafe_code)]
    let len = unsafe { libc::proc_pidpath(pid, path.as_mut_ptr().cast(), u32::try_from(path.len()).unwrap_or(0)) };
    path.truncate(usize::try_from(len).unwrap_or(0));
    Some(EsProcess {
        pid,
        ruid: info.pbi_ruid,
        rgid: info.pbi_rgid,
        euid: info.pbi_uid,
        egid: info.pbi_gid,
        ppid: i32::try_from(info.pbi_ppid).unwrap_or(-1),
        original_ppid: i32::try_from(info.pbi_ppid).unwrap_or(-1),
        executable_path: String::from_utf8_lossy(&path).into_owned(),
        start_time: Some((i64::try_from(info.pbi_start_tvsec).ok()?, i64::try_from(info.pbi_start_tvusec).ok()?)),
        ..EsProcess::default()
    })
}
