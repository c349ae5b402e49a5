//! Ring buffer records to `ProcessEvent`s: pure, no I/O.
//!
//! Records are read field by field at `offset_of!` positions of the shared
//! `#[repr(C)]` types, so a short or garbled record is a [`DecodeError`],
//! never undefined behaviour. Kernel times (ns since boot) become Unix ns by
//! adding the boot time; process keys use the boot-relative start time,
//! exactly as `/proc` gives it, so both paths agree on identity.

use std::mem::offset_of;

use collector_core::FileIdentity;
use daemoneye_lib::models::{ProcessKey, join_command_line};
use daemoneye_lib::proto::{Argv, EventSource, EventType, ProcessEvent, ProcessRecord};
use procmond_ebpf_common::{
    EVENT_EXEC, EVENT_EXIT, EVENT_FORK, EXEC_ARGV_TRUNCATED, EXEC_ARGV_UNREADABLE, EXEC_CRED_UNREADABLE,
    EXEC_FILENAME_UNREADABLE, EXEC_FIXED_LEN, EXEC_IMAGE_UNREADABLE, EXIT_EVENT_LEN, EventHeader, ExecEvent, ExitEvent,
    FORK_EVENT_LEN, FORK_THREAD, ForkEvent, PARENT_UNREADABLE, TASK_COMM_LEN,
};

/// What decoding needs besides the record.
#[derive(Debug, Clone)]
pub struct DecodeContext {
    /// The boot id in process keys.
    pub boot_id: String,
    /// The boot time in ns since the Unix epoch (`CLOCK_REALTIME -
    /// CLOCK_BOOTTIME`).
    pub boot_time_ns: i64,
}

/// A record that is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the record kind needs.
    #[error("eBPF record of kind {kind} is {len} bytes, needs {need}")]
    Short {
        /// The kind (0 when even the header is short).
        kind: u32,
        /// The record's length.
        len: usize,
        /// The length needed.
        need: usize,
    },
    /// An unknown record kind.
    #[error("eBPF record of unknown kind {kind}")]
    UnknownKind {
        /// The kind.
        kind: u32,
    },
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The event (`seq` 0, source `ebpf`).
    pub event: ProcessEvent,
    /// The cgroup v2 id of an exec (resolved to a path by the caller).
    pub cgroup_id: Option<u64>,
    /// True for a fork that created a thread, not a process.
    pub is_thread: bool,
    /// The running image of an exec (its inode as the kernel had it), the
    /// hash cache's key.
    pub image: Option<FileIdentity>,
}

/// Decodes one ring buffer record.
pub fn decode(ctx: &DecodeContext, rec: &[u8]) -> Result<Decoded, DecodeError> {
    let r = Record(rec);
    let kind = r.u32(offset_of!(EventHeader, kind)).ok_or(DecodeError::Short {
        kind: 0,
        len: rec.len(),
        need: size_of::<EventHeader>(),
    })?;
    let need = match kind {
        EVENT_EXEC => EXEC_FIXED_LEN,
        EVENT_FORK => FORK_EVENT_LEN,
        EVENT_EXIT => EXIT_EVENT_LEN,
        kind => return Err(DecodeError::UnknownKind { kind }),
    };
    let short = DecodeError::Short { kind, len: rec.len(), need };
    if rec.len() < need {
        return Err(short);
    }
    let flags = r.u32(offset_of!(EventHeader, flags)).ok_or_else(|| short.clone())?;
    let time = r.u64(offset_of!(EventHeader, time_boot_ns)).ok_or_else(|| short.clone())?;
    let event_time_ns = ctx.unix_ns(time);
    let (process, cgroup_id, is_thread, event_type) = match kind {
        EVENT_EXEC => {
            let (p, cg) = exec(ctx, &r, flags).ok_or_else(|| short.clone())?;
            (p, Some(cg), false, EventType::Exec)
        }
        EVENT_FORK => {
            let p = fork(ctx, &r, flags).ok_or_else(|| short.clone())?;
            (p, None, flags & FORK_THREAD != 0, EventType::Fork)
        }
        _ => {
            let mut p = exit(ctx, &r).ok_or_else(|| short.clone())?;
            p.exit_time_ns = Some(event_time_ns);
            (p, None, false, EventType::Exit)
        }
    };
    let image = if kind == EVENT_EXEC && flags & EXEC_IMAGE_UNREADABLE == 0 { image(&r) } else { None };
    Ok(Decoded {
        event: ProcessEvent {
            seq: 0,
            event_type: event_type.into(),
            event_time_ns,
            source: EventSource::Ebpf.into(),
            process: Some(process),
            gap: None,
            prev_seq: 0,
        },
        cgroup_id,
        is_thread,
        image,
    })
}

/// Nanoseconds below 10^9 fit in 30 bits; the kernel keeps flags above
/// (multigrain ctime's `I_CTIME_QUERIED` is bit 31).
const NSEC_MASK: u32 = (1 << 30) - 1;

/// The exec record's image identity, in the form `stat` reports it.
fn image(r: &Record<'_>) -> Option<FileIdentity> {
    let dev = r.u32(offset_of!(ExecEvent, image_dev))?;
    let secs = |off| r.u64(off).map(|v| v as i64);
    let nsecs = |off| r.u32(off).map(|v| i64::from(v & NSEC_MASK));
    Some(FileIdentity {
        // The kernel's dev_t is major << 20 | minor.
        dev: FileIdentity::encode_dev(dev >> 20, dev & 0xf_ffff),
        ino: r.u64(offset_of!(ExecEvent, image_ino))?,
        size: r.u64(offset_of!(ExecEvent, image_size))?,
        mtime: (secs(offset_of!(ExecEvent, image_mtime_sec))?, nsecs(offset_of!(ExecEvent, image_mtime_nsec))?),
        ctime: (secs(offset_of!(ExecEvent, image_ctime_sec))?, nsecs(offset_of!(ExecEvent, image_ctime_nsec))?),
    })
}

impl DecodeContext {
    /// Boot-relative ns to Unix ns (saturating).
    pub fn unix_ns(&self, since_boot_ns: u64) -> i64 {
        self.boot_time_ns.saturating_add(i64::try_from(since_boot_ns).unwrap_or(i64::MAX))
    }

    fn key(&self, pid: u32, start_boottime_ns: u64) -> String {
        ProcessKey::new(&self.boot_id, pid, start_boottime_ns).to_string()
    }

    /// The parent's key, unless the parent could not be read or is the
    /// kernel's pid 0 (which has no process key).
    fn parent_key(&self, flags: u32, ppid: u32, start: u64) -> Option<String> {
        (flags & PARENT_UNREADABLE == 0 && ppid != 0).then(|| self.key(ppid, start))
    }
}

fn exec(ctx: &DecodeContext, r: &Record<'_>, flags: u32) -> Option<(ProcessRecord, u64)> {
    let tgid = r.u32(offset_of!(ExecEvent, tgid))?;
    let ppid = r.u32(offset_of!(ExecEvent, ppid))?;
    let start = r.u64(offset_of!(ExecEvent, start_boottime_ns))?;
    let pstart = r.u64(offset_of!(ExecEvent, parent_start_boottime_ns))?;
    let name_len = usize::try_from(r.u32(offset_of!(ExecEvent, filename_len))?).ok()?;
    let argv_len = usize::try_from(r.u32(offset_of!(ExecEvent, argv_len))?).ok()?;
    let data = r.0.get(EXEC_FIXED_LEN..)?;
    // A record shorter than its lengths say is garbled: refuse it.
    let filename = data.get(..name_len)?;
    let argv_bytes = data.get(name_len..name_len.checked_add(argv_len)?)?;
    let creds = flags & EXEC_CRED_UNREADABLE == 0;
    let id = |off| if creds { r.u32(off) } else { None };
    let argv = (flags & EXEC_ARGV_UNREADABLE == 0)
        .then(|| Argv { args: split_argv(argv_bytes), truncated: flags & EXEC_ARGV_TRUNCATED != 0 });
    let command_line = argv.as_ref().map(|a| join_command_line(&a.args));
    let rec = ProcessRecord {
        pid: tgid,
        ppid: (flags & PARENT_UNREADABLE == 0).then_some(ppid),
        process_key: ctx.key(tgid, start),
        parent_key: ctx.parent_key(flags, ppid, pstart),
        name: Some(comm(r.bytes(offset_of!(ExecEvent, comm), TASK_COMM_LEN)?)),
        executable_path: (flags & EXEC_FILENAME_UNREADABLE == 0)
            .then(|| String::from_utf8_lossy(filename).into_owned()),
        argv,
        command_line,
        uid: id(offset_of!(ExecEvent, uid)),
        gid: id(offset_of!(ExecEvent, gid)),
        euid: id(offset_of!(ExecEvent, euid)),
        egid: id(offset_of!(ExecEvent, egid)),
        start_time_ns: Some(ctx.unix_ns(start)),
        ..Default::default()
    };
    Some((rec, r.u64(offset_of!(ExecEvent, cgroup_id))?))
}

fn fork(ctx: &DecodeContext, r: &Record<'_>, flags: u32) -> Option<ProcessRecord> {
    let tgid = r.u32(offset_of!(ForkEvent, child_tgid))?;
    let start = r.u64(offset_of!(ForkEvent, child_start_boottime_ns))?;
    if flags & FORK_THREAD != 0 {
        // A new thread of a known process: identity only.
        return Some(ProcessRecord {
            pid: tgid,
            process_key: ctx.key(tgid, start),
            is_thread: Some(true),
            ..Default::default()
        });
    }
    let ppid = r.u32(offset_of!(ForkEvent, child_ppid))?;
    let pstart = r.u64(offset_of!(ForkEvent, parent_start_boottime_ns))?;
    Some(ProcessRecord {
        pid: tgid,
        ppid: (flags & PARENT_UNREADABLE == 0).then_some(ppid),
        process_key: ctx.key(tgid, start),
        parent_key: ctx.parent_key(flags, ppid, pstart),
        name: Some(comm(r.bytes(offset_of!(ForkEvent, comm), TASK_COMM_LEN)?)),
        start_time_ns: Some(ctx.unix_ns(start)),
        is_thread: Some(false),
        ..Default::default()
    })
}

fn exit(ctx: &DecodeContext, r: &Record<'_>) -> Option<ProcessRecord> {
    let tgid = r.u32(offset_of!(ExitEvent, tgid))?;
    let start = r.u64(offset_of!(ExitEvent, start_boottime_ns))?;
    let status = r.u32(offset_of!(ExitEvent, exit_status))?;
    let (exit_code, signal) = split_status(status);
    Some(ProcessRecord { pid: tgid, process_key: ctx.key(tgid, start), exit_code, signal, ..Default::default() })
}

/// A wait status into (exit code, signal): a process killed by a signal has
/// no exit code, one that exited has no signal.
pub(crate) fn split_status(status: u32) -> (Option<i32>, Option<i32>) {
    let signal = (status & 0x7f) as i32;
    let code = ((status >> 8) & 0xff) as i32;
    if signal == 0 { (Some(code), None) } else { (None, Some(signal)) }
}

/// Splits a NUL-separated argument vector. The final NUL ends the last
/// argument; bytes after the last NUL (a cut vector) are a partial argument.
pub(crate) fn split_argv(bytes: &[u8]) -> Vec<String> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let body = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    body.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

fn comm(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(bytes.get(..end).unwrap_or_default()).into_owned()
}

/// Little-endian field reads at offsets, bounds checked.
struct Record<'a>(&'a [u8]);

impl Record<'_> {
    fn bytes(&self, off: usize, len: usize) -> Option<&[u8]> {
        self.0.get(off..off.checked_add(len)?)
    }

    fn u32(&self, off: usize) -> Option<u32> {
        self.bytes(off, 4)?.try_into().ok().map(u32::from_ne_bytes)
    }

    fn u64(&self, off: usize) -> Option<u64> {
        self.bytes(off, 8)?.try_into().ok().map(u64::from_ne_bytes)
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
