//! procmond's eBPF programs: exec, fork and exit from the scheduler's raw
//! tracepoints, into the `EVENTS` ring buffer.
//!
//! rustc emits no CO-RE relocations, so every kernel struct member is read
//! at an offset that userspace resolved from `/sys/kernel/btf/vmlinux` and
//! wrote into the read-only global `OFFSETS` before loading (the verifier
//! sees them as constants). All kernel memory is read with
//! `bpf_probe_read_kernel`; the argument vector with one bounded
//! `bpf_probe_read_user` of `mm->arg_start..arg_end`.
//!
//! Nothing is lost silently: every place an event can be dropped or trimmed
//! increments its slot in the per-CPU `DROPS` array
//! (`procmond_ebpf_common::drop_reason`).

#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{
    bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str,
    bpf_probe_read_user, bpf_ringbuf_output,
};
use aya_ebpf::macros::{map, raw_tracepoint};
use aya_ebpf::maps::{PerCpuArray, RingBuf};
use aya_ebpf::programs::RawTracePointContext;
use procmond_ebpf_common::{
    ARGV_CAP, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE, EVENT_EXEC, EVENT_EXIT,
    EVENT_FORK, EXEC_ARGV_TRUNCATED, EXEC_ARGV_UNREADABLE, EXEC_CRED_UNREADABLE, EXEC_FILENAME_TRUNCATED,
    EXEC_FILENAME_UNREADABLE, EXEC_FIXED_LEN, EXEC_IMAGE_UNREADABLE, EventHeader, ExecEvent, ExitEvent, FILENAME_CAP,
    FORK_THREAD, ForkEvent, KernelOffsets, LAZY_WAKEUP_FILL, PARENT_UNREADABLE, TASK_COMM_LEN, drop_reason,
};

/// The struct offsets, replaced at load time (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::ZERO;

/// The events. Its size is set at load time (`map_max_entries`).
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Drop counters, one `u64` per `drop_reason` slot, per CPU.
#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

/// One exec event per CPU: too big for the 512-byte stack.
#[map(name = "EXEC_SCRATCH")]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// Reads one offset from the read-only global (volatile, so the compiler
/// does not fold the all-zero initial value).
macro_rules! off {
    ($field:ident) => {
        // SAFETY: reading a field of a static; the kernel maps it read-only.
        unsafe { core::ptr::read_volatile(&raw const OFFSETS.$field) }
    };
}

type Task = *const u8;

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
fn rd<T: Copy>(base: *const u8, off: u32) -> Result<T, i64> {
    let mut out = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `out` and
    // fails (without touching it) when the source cannot be read.
    let ret = unsafe {
        bpf_probe_read_kernel(
            out.as_mut_ptr().cast::<c_void>(),
            core::mem::size_of::<T>() as u32,
            base.wrapping_add(off as usize).cast::<c_void>(),
        )
    };
    if ret < 0 {
        return Err(ret);
    }
    // SAFETY: the helper succeeded, so all bytes of `out` are written.
    Ok(unsafe { out.assume_init() })
}

#[inline(always)]
fn count(reason: u32) {
    if let Some(p) = DROPS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot; tracepoint programs do not migrate CPUs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// `(tgid, start_boottime of its group leader)` of `task`'s process.
#[inline(always)]
fn process_of(task: Task) -> Result<(u32, u64), i64> {
    let tgid: u32 = rd(task, off!(task_tgid))?;
    let leader: Task = rd(task, off!(task_group_leader))?;
    let start: u64 = rd(leader, off!(task_start_boottime))?;
    Ok((tgid, start))
}

/// `(tgid, process start)` of `task`'s real parent.
#[inline(always)]
fn parent_of(task: Task) -> Result<(u32, u64), i64> {
    let parent: Task = rd(task, off!(task_real_parent))?;
    process_of(parent)
}

/// The wake-up flag of a fork or exit record. Waking the consumer costs it
/// a context switch (on a VM, tens of microseconds from idle), and nothing
/// waits for these records: they ride along with the next exec, which
/// always wakes it, or the consumer's idle poll — unless the ring is
/// filling, when waiting could lose events.
#[inline(always)]
fn lazy_wakeup() -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA);
    let size = EVENTS.query(BPF_RB_RING_SIZE);
    if pending > size / LAZY_WAKEUP_FILL { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP }
}

#[inline(always)]
fn comm_of(task: Task) -> [u8; TASK_COMM_LEN] {
    rd(task, off!(task_comm)).unwrap_or([0; TASK_COMM_LEN])
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn procmond_exec(ctx: RawTracePointContext) -> i32 {
    exec(&ctx);
    0
}

#[inline(always)]
fn exec(ctx: &RawTracePointContext) {
    let task: Task = ctx.arg(0);
    let old_pid: u64 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg(2);
    let Some(ev) = EXEC_SCRATCH.get_ptr_mut(0) else {
        count(drop_reason::SCRATCH_UNAVAILABLE);
        return;
    };
    // SAFETY: a per-CPU map value of the right type, used by this CPU only
    // until this program returns.
    let ev = unsafe { &mut *ev };
    let mut flags = 0u32;
    ev.header = EventHeader { kind: EVENT_EXEC, flags: 0, time_boot_ns: now() };
    // After exec the task leads its group; its start time is the process's
    // (de_thread copies the old leader's start to a thread that exec'd).
    let (Ok(tgid), Ok(start)) = (rd::<u32>(task, off!(task_tgid)), rd::<u64>(task, off!(task_start_boottime))) else {
        count(drop_reason::TASK_UNREADABLE);
        return;
    };
    ev.tgid = tgid;
    ev.old_pid = old_pid as u32;
    ev.start_boottime_ns = start;
    match parent_of(task) {
        Ok((ppid, pstart)) => {
            ev.ppid = ppid;
            ev.parent_start_boottime_ns = pstart;
        }
        Err(_) => {
            ev.ppid = 0;
            ev.parent_start_boottime_ns = 0;
            flags |= PARENT_UNREADABLE;
        }
    }
    match creds_of(task) {
        Ok([uid, gid, euid, egid]) => {
            ev.uid = uid;
            ev.gid = gid;
            ev.euid = euid;
            ev.egid = egid;
        }
        Err(_) => flags |= EXEC_CRED_UNREADABLE,
    }
    ev.reserved = 0;
    // SAFETY: a helper without arguments; at this tracepoint `p == current`.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.comm = comm_of(task);
    if image_of(bprm, ev).is_err() {
        ev.image_dev = 0;
        ev.image_ino = 0;
        ev.image_size = 0;
        ev.image_mtime_sec = 0;
        ev.image_ctime_sec = 0;
        ev.image_mtime_nsec = 0;
        ev.image_ctime_nsec = 0;
        flags |= EXEC_IMAGE_UNREADABLE;
    }

    // The path, at the start of `data`.
    let mut name_len: usize = 0;
    match rd::<*const u8>(bprm, off!(bprm_filename)) {
        Ok(name) => {
            // SAFETY: writes at most FILENAME_CAP bytes (NUL included) at the
            // start of `data`, which is longer than that.
            let ret = unsafe {
                bpf_probe_read_kernel_str(
                    ev.data.as_mut_ptr().cast::<c_void>(),
                    FILENAME_CAP as u32,
                    name.cast::<c_void>(),
                )
            };
            if ret > 0 {
                // `ret` counts the NUL.
                name_len = (ret as usize) - 1;
                if ret as usize >= FILENAME_CAP {
                    flags |= EXEC_FILENAME_TRUNCATED;
                }
            } else {
                flags |= EXEC_FILENAME_UNREADABLE;
                count(drop_reason::FILENAME_UNREADABLE);
            }
        }
        Err(_) => {
            flags |= EXEC_FILENAME_UNREADABLE;
            count(drop_reason::FILENAME_UNREADABLE);
        }
    }
    if name_len > FILENAME_CAP - 1 {
        name_len = FILENAME_CAP - 1;
    }
    ev.filename_len = name_len as u32;

    // The argument vector, right after the path, in one bounded read.
    let mut argv_len: usize = 0;
    ev.argv_full_len = 0;
    match argv_range(task) {
        Ok((start, end)) if end >= start => {
            let full = end - start;
            ev.argv_full_len = if full > u64::from(u32::MAX) { u32::MAX } else { full as u32 };
            let mut n = full as usize;
            if full > ARGV_CAP as u64 {
                n = ARGV_CAP;
                flags |= EXEC_ARGV_TRUNCATED;
            }
            if n > ARGV_CAP {
                n = ARGV_CAP;
            }
            // SAFETY: `name_len < FILENAME_CAP` and `n <= ARGV_CAP`, so the
            // destination range lies inside `data`; the helper fails
            // (zeroing the destination) on an unreadable source.
            let ret = unsafe {
                bpf_probe_read_user(
                    ev.data.as_mut_ptr().add(name_len).cast::<c_void>(),
                    n as u32,
                    start as *const c_void,
                )
            };
            if ret == 0 {
                argv_len = n;
            } else {
                flags |= EXEC_ARGV_UNREADABLE;
                count(drop_reason::ARGV_UNREADABLE);
            }
        }
        _ => {
            flags |= EXEC_ARGV_UNREADABLE;
            count(drop_reason::ARGV_UNREADABLE);
        }
    }
    ev.argv_len = argv_len as u32;
    ev.header.flags = flags;

    let mut size = EXEC_FIXED_LEN + name_len + argv_len;
    if size > core::mem::size_of::<ExecEvent>() {
        size = core::mem::size_of::<ExecEvent>();
    }
    // SAFETY: `size` bytes from the start of the scratch value, which is
    // `size_of::<ExecEvent>()` long.
    let ret = unsafe {
        bpf_ringbuf_output(
            (&raw const EVENTS).cast_mut().cast::<c_void>(),
            (ev as *mut ExecEvent).cast::<c_void>(),
            size as u64,
            // An exec may match a rule: the consumer wakes at once.
            BPF_RB_FORCE_WAKEUP,
        )
    };
    if ret != 0 {
        count(drop_reason::RINGBUF_FULL_EXEC);
    }
}

/// The identity of the image that runs (`bprm->file`'s inode), which keys
/// userspace's hash cache.
#[inline(always)]
fn image_of(bprm: *const u8, ev: &mut ExecEvent) -> Result<(), i64> {
    let file: *const u8 = rd(bprm, off!(bprm_file))?;
    let inode: *const u8 = rd(file, off!(file_inode))?;
    let sb: *const u8 = rd(inode, off!(inode_sb))?;
    ev.image_dev = rd(sb, off!(sb_dev))?;
    ev.image_ino = rd(inode, off!(inode_ino))?;
    ev.image_size = rd(inode, off!(inode_size))?;
    ev.image_mtime_sec = rd(inode, off!(inode_mtime_sec))?;
    ev.image_ctime_sec = rd(inode, off!(inode_ctime_sec))?;
    ev.image_mtime_nsec = rd(inode, off!(inode_mtime_nsec))?;
    ev.image_ctime_nsec = rd(inode, off!(inode_ctime_nsec))?;
    Ok(())
}

#[inline(always)]
fn creds_of(task: Task) -> Result<[u32; 4], i64> {
    let cred: *const u8 = rd(task, off!(task_real_cred))?;
    Ok([rd(cred, off!(cred_uid))?, rd(cred, off!(cred_gid))?, rd(cred, off!(cred_euid))?, rd(cred, off!(cred_egid))?])
}

#[inline(always)]
fn argv_range(task: Task) -> Result<(u64, u64), i64> {
    let mm: *const u8 = rd(task, off!(task_mm))?;
    if mm.is_null() {
        return Err(-1);
    }
    Ok((rd(mm, off!(mm_arg_start))?, rd(mm, off!(mm_arg_end))?))
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn procmond_fork(ctx: RawTracePointContext) -> i32 {
    fork(&ctx);
    0
}

#[inline(always)]
fn fork(ctx: &RawTracePointContext) {
    let parent: Task = ctx.arg(0);
    let child: Task = ctx.arg(1);
    let time_boot_ns = now();
    let ids = (
        rd::<u32>(parent, off!(task_tgid)),
        rd::<u32>(parent, off!(task_pid)),
        rd::<u32>(child, off!(task_pid)),
        process_of(child),
    );
    let (Ok(parent_tgid), Ok(parent_pid), Ok(child_pid), Ok((child_tgid, child_start))) = ids else {
        count(drop_reason::TASK_UNREADABLE);
        return;
    };
    let mut flags = if child_pid == child_tgid { 0 } else { FORK_THREAD };
    let (child_ppid, parent_start) = match parent_of(child) {
        Ok(p) => p,
        Err(_) => {
            flags |= PARENT_UNREADABLE;
            (0, 0)
        }
    };
    let ev = ForkEvent {
        header: EventHeader { kind: EVENT_FORK, flags, time_boot_ns },
        parent_tgid,
        parent_pid,
        child_tgid,
        child_pid,
        child_ppid,
        reserved: 0,
        child_start_boottime_ns: child_start,
        parent_start_boottime_ns: parent_start,
        comm: comm_of(child),
    };
    if EVENTS.output::<ForkEvent>(&ev, lazy_wakeup()).is_err() {
        count(drop_reason::RINGBUF_FULL_FORK);
    }
}

/// `sched_process_exit(struct task_struct *p, bool group_dead)` (Linux 6.16+).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn procmond_exit(ctx: RawTracePointContext) -> i32 {
    let task: Task = ctx.arg(0);
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff != 0 {
        exit(task);
    }
    0
}

/// `sched_process_exit(struct task_struct *p)` (before Linux 6.16): the
/// group is dead when `signal->live` reached 0, which `do_exit` decrements
/// before the tracepoint. Two threads exiting at the same instant may both
/// see 0; the loader prefers [`procmond_exit`] where the kernel has it.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn procmond_exit_legacy(ctx: RawTracePointContext) -> i32 {
    let task: Task = ctx.arg(0);
    let live = rd::<*const u8>(task, off!(task_signal)).and_then(|s| rd::<i32>(s, off!(signal_live)));
    // An unreadable counter is not a reason to lose the exit.
    if live.unwrap_or(0) == 0 {
        exit(task);
    }
    0
}

#[inline(always)]
fn exit(task: Task) {
    let time_boot_ns = now();
    let (Ok(pid), Ok((tgid, start))) = (rd::<u32>(task, off!(task_pid)), process_of(task)) else {
        count(drop_reason::TASK_UNREADABLE);
        return;
    };
    let ev = ExitEvent {
        header: EventHeader { kind: EVENT_EXIT, flags: 0, time_boot_ns },
        tgid,
        pid,
        exit_status: exit_status(task),
        reserved: 0,
        start_boottime_ns: start,
        comm: comm_of(task),
    };
    if EVENTS.output::<ExitEvent>(&ev, lazy_wakeup()).is_err() {
        count(drop_reason::RINGBUF_FULL_EXIT);
    }
}

/// The status `wait` will report: the group exit code on a group exit, else
/// the leader's own `exit_code` (as `wait_task_zombie` does).
#[inline(always)]
fn exit_status(task: Task) -> u32 {
    if let Ok(signal) = rd::<*const u8>(task, off!(task_signal))
        && let Ok(flags) = rd::<u32>(signal, off!(signal_flags))
        && flags & off!(signal_group_exit_flag) != 0
        && let Ok(code) = rd::<u32>(signal, off!(signal_group_exit_code))
    {
        return code;
    }
    let leader: Result<Task, i64> = rd(task, off!(task_group_leader));
    let code = leader.and_then(|l| rd::<u32>(l, off!(task_exit_code)));
    match code {
        Ok(c) => c,
        Err(_) => rd::<u32>(task, off!(task_exit_code)).unwrap_or(0),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
