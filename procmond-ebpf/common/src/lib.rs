//! The wire between procmond's eBPF programs and their userspace loader.
//!
//! Everything here is `#[repr(C)]` with explicit padding, so the kernel side
//! (`bpfel-unknown-none`) and the host agree on every offset. The kernel side
//! writes events into the `EVENTS` ring buffer; userspace decodes them by
//! field offset (`core::mem::offset_of!`), never by casting the buffer.
//!
//! - [`KernelOffsets`]: the kernel struct offsets the programs need, resolved
//!   from BTF at load time and passed in as the read-only global
//!   [`OFFSETS_GLOBAL`] (rustc emits no CO-RE relocations).
//! - [`ExecEvent`], [`ForkEvent`], [`ExitEvent`]: one per hook, each starting
//!   with an [`EventHeader`] whose `kind` tells them apart.
//! - [`drop_reason`]: the slots of the `DROPS` per-CPU counter array; every
//!   place the kernel side loses or trims an event counts there.
//!
//! With the `user` feature, [`KernelOffsets`] implements `aya::Pod`.

#![no_std]

/// Length of `task_struct.comm` (`TASK_COMM_LEN`).
pub const TASK_COMM_LEN: usize = 16;
/// Bytes of the executable path kept in an exec event (the rest is cut and
/// [`EXEC_FILENAME_TRUNCATED`] set).
pub const FILENAME_CAP: usize = 1024;
/// Bytes of the argument vector (`mm->arg_start..arg_end`) read in one
/// bounded read; a longer vector is cut and [`EXEC_ARGV_TRUNCATED`] set.
pub const ARGV_CAP: usize = 16 * 1024;

/// Name of the ring buffer map.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU drop counter map (`u64` per [`drop_reason`]).
pub const DROPS_MAP: &str = "DROPS";
/// Name of the per-CPU scratch map holding one [`ExecEvent`].
pub const EXEC_SCRATCH_MAP: &str = "EXEC_SCRATCH";
/// Name of the read-only global holding the [`KernelOffsets`].
pub const OFFSETS_GLOBAL: &str = "OFFSETS";
/// The exec program (function name in the eBPF crate); raw tracepoint
/// `sched_process_exec`.
pub const EXEC_PROGRAM: &str = "procmond_exec";
/// The fork program; raw tracepoint `sched_process_fork`.
pub const FORK_PROGRAM: &str = "procmond_fork";
/// The exit program for kernels whose `sched_process_exit` passes
/// `bool group_dead` (Linux 6.16+).
pub const EXIT_PROGRAM: &str = "procmond_exit";
/// The exit program for older kernels (`signal->live == 0`).
pub const EXIT_LEGACY_PROGRAM: &str = "procmond_exit_legacy";

/// [`EventHeader::kind`] of an [`ExecEvent`].
pub const EVENT_EXEC: u32 = 1;
/// [`EventHeader::kind`] of a [`ForkEvent`].
pub const EVENT_FORK: u32 = 2;
/// [`EventHeader::kind`] of an [`ExitEvent`].
pub const EVENT_EXIT: u32 = 3;

/// Exec flag: the argument vector was longer than [`ARGV_CAP`] and was cut.
pub const EXEC_ARGV_TRUNCATED: u32 = 1 << 0;
/// Exec flag: the argument vector could not be read (no argv in the event).
pub const EXEC_ARGV_UNREADABLE: u32 = 1 << 1;
/// Exec flag: the path filled [`FILENAME_CAP`] and may have been cut.
pub const EXEC_FILENAME_TRUNCATED: u32 = 1 << 2;
/// Exec flag: the path could not be read (no filename in the event).
pub const EXEC_FILENAME_UNREADABLE: u32 = 1 << 3;
/// Exec flag: the credentials could not be read (ids are not valid).
pub const EXEC_CRED_UNREADABLE: u32 = 1 << 4;
/// Exec/fork flag: the parent could not be read (ppid and parent start are
/// not valid).
pub const PARENT_UNREADABLE: u32 = 1 << 5;
/// Fork flag: the new task is a thread of its parent's process
/// (`CLONE_THREAD`: its tgid is the parent's), not a new process.
pub const FORK_THREAD: u32 = 1 << 6;
/// Exec flag: the executable's inode could not be read (the `image_*`
/// fields are not valid).
pub const EXEC_IMAGE_UNREADABLE: u32 = 1 << 7;

/// `bpf_ringbuf_query` flag: bytes not yet consumed.
pub const BPF_RB_AVAIL_DATA: u64 = 0;
/// `bpf_ringbuf_query` flag: the ring's size in bytes.
pub const BPF_RB_RING_SIZE: u64 = 1;
/// `bpf_ringbuf_output` flag: do not wake the consumer.
pub const BPF_RB_NO_WAKEUP: u64 = 1;
/// `bpf_ringbuf_output` flag: wake the consumer even if it has records to
/// read (a record sent with [`BPF_RB_NO_WAKEUP`] before this one would
/// otherwise keep the kernel's adaptive wake-up from firing).
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Fork and exit records wake the consumer only once the ring holds more
/// than `1 / LAZY_WAKEUP_FILL` of its size; below that they wait for the
/// next exec (which always wakes it) or the consumer's idle poll.
pub const LAZY_WAKEUP_FILL: u64 = 4;

/// The slots of the `DROPS` per-CPU `u64` array.
pub mod drop_reason {
    /// An exec event did not fit in the ring buffer (lost).
    pub const RINGBUF_FULL_EXEC: u32 = 0;
    /// A fork event did not fit in the ring buffer (lost).
    pub const RINGBUF_FULL_FORK: u32 = 1;
    /// An exit event did not fit in the ring buffer (lost).
    pub const RINGBUF_FULL_EXIT: u32 = 2;
    /// The per-CPU exec scratch buffer was unavailable (exec lost).
    pub const SCRATCH_UNAVAILABLE: u32 = 3;
    /// The task's identity (pid, tgid, start time) could not be read (lost).
    pub const TASK_UNREADABLE: u32 = 4;
    /// The argument vector could not be read (exec sent without argv).
    pub const ARGV_UNREADABLE: u32 = 5;
    /// The executable path could not be read (exec sent without it).
    pub const FILENAME_UNREADABLE: u32 = 6;
    /// Number of slots.
    pub const COUNT: u32 = 7;
    /// Slots below this one count lost events; the others count events sent
    /// with a part missing.
    pub const LOST_BELOW: u32 = 5;
    /// Stable names of the slots (for `gap` reasons, logs and health).
    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_full_exec",
        "ringbuf_full_fork",
        "ringbuf_full_exit",
        "scratch_unavailable",
        "task_unreadable",
        "argv_unreadable",
        "filename_unreadable",
    ];
}

/// Kernel struct member offsets in bytes, resolved from BTF at load time.
///
/// Each field is the byte offset of a member in its struct (`task_*` in
/// `task_struct`, `signal_*` in `signal_struct`, `mm_*` in `mm_struct`,
/// `cred_*` in `cred`, `bprm_*` in `linux_binprm`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.pid` (the thread id).
    pub task_pid: u32,
    /// `task_struct.tgid` (the process id).
    pub task_tgid: u32,
    /// `task_struct.real_parent`.
    pub task_real_parent: u32,
    /// `task_struct.group_leader`.
    pub task_group_leader: u32,
    /// `task_struct.start_boottime` (ns since boot, suspend included).
    pub task_start_boottime: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `task_struct.exit_code`.
    pub task_exit_code: u32,
    /// `task_struct.signal`.
    pub task_signal: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `task_struct.real_cred` (the objective credentials, as `/proc` shows).
    pub task_real_cred: u32,
    /// `signal_struct.live` (an `atomic_t`: its counter is at offset 0).
    pub signal_live: u32,
    /// `signal_struct.flags`.
    pub signal_flags: u32,
    /// `signal_struct.group_exit_code`.
    pub signal_group_exit_code: u32,
    /// `mm_struct.arg_start`.
    pub mm_arg_start: u32,
    /// `mm_struct.arg_end`.
    pub mm_arg_end: u32,
    /// `cred.uid`.
    pub cred_uid: u32,
    /// `cred.gid`.
    pub cred_gid: u32,
    /// `cred.euid`.
    pub cred_euid: u32,
    /// `cred.egid`.
    pub cred_egid: u32,
    /// `linux_binprm.filename`.
    pub bprm_filename: u32,
    /// `linux_binprm.file` (the image that runs: `/proc/<pid>/exe`).
    pub bprm_file: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `inode.i_sb`.
    pub inode_sb: u32,
    /// `inode.i_size`.
    pub inode_size: u32,
    /// The seconds of `inode`'s mtime (`i_mtime_sec`, or `tv_sec` of the
    /// older `__i_mtime`/`i_mtime` timespec).
    pub inode_mtime_sec: u32,
    /// The nanoseconds of `inode`'s mtime (read as a `u32`).
    pub inode_mtime_nsec: u32,
    /// The seconds of `inode`'s ctime.
    pub inode_ctime_sec: u32,
    /// The nanoseconds of `inode`'s ctime (bit 31 may be the kernel's
    /// `I_CTIME_QUERIED` flag; userspace masks it).
    pub inode_ctime_nsec: u32,
    /// `super_block.s_dev` (the kernel's `dev_t`: major << 20 | minor).
    pub sb_dev: u32,
    /// `SIGNAL_GROUP_EXIT` in `signal_struct.flags`.
    pub signal_group_exit_flag: u32,
}

impl KernelOffsets {
    /// All zero: the value compiled into the object, replaced at load time.
    pub const ZERO: Self = Self {
        task_pid: 0,
        task_tgid: 0,
        task_real_parent: 0,
        task_group_leader: 0,
        task_start_boottime: 0,
        task_comm: 0,
        task_exit_code: 0,
        task_signal: 0,
        task_mm: 0,
        task_real_cred: 0,
        signal_live: 0,
        signal_flags: 0,
        signal_group_exit_code: 0,
        mm_arg_start: 0,
        mm_arg_end: 0,
        cred_uid: 0,
        cred_gid: 0,
        cred_euid: 0,
        cred_egid: 0,
        bprm_filename: 0,
        bprm_file: 0,
        file_inode: 0,
        inode_ino: 0,
        inode_sb: 0,
        inode_size: 0,
        inode_mtime_sec: 0,
        inode_mtime_nsec: 0,
        inode_ctime_sec: 0,
        inode_ctime_nsec: 0,
        sb_dev: 0,
        signal_group_exit_flag: 0,
    };
}

// SAFETY: `KernelOffsets` is `#[repr(C)]`, `Copy`, made of `u32`s only (no
// padding, no pointers), so every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for KernelOffsets {}

/// The first 16 bytes of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// [`EVENT_EXEC`], [`EVENT_FORK`] or [`EVENT_EXIT`].
    pub kind: u32,
    /// `EXEC_*`, `FORK_*`, `PARENT_*` flags.
    pub flags: u32,
    /// When the hook fired, `bpf_ktime_get_boot_ns()` (ns since boot).
    pub time_boot_ns: u64,
}

/// `sched_process_exec`: a process replaced its image.
///
/// Sent with a variable length: the fixed part up to `data`, then
/// `filename_len` bytes of path and `argv_len` bytes of the NUL-separated
/// argument vector, in that order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// Kind [`EVENT_EXEC`].
    pub header: EventHeader,
    /// Process id (after exec the task is its group's leader).
    pub tgid: u32,
    /// The thread id that called exec (`old_pid`; differs from `tgid` when
    /// a non-leader thread exec'd).
    pub old_pid: u32,
    /// `real_parent->tgid`.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Effective group id.
    pub egid: u32,
    /// Bytes of path at the start of `data` (no NUL).
    pub filename_len: u32,
    /// Bytes of argument vector after the path.
    pub argv_len: u32,
    /// `arg_end - arg_start` as the kernel had it (saturated), so a cut
    /// can be told from a short vector.
    pub argv_full_len: u32,
    /// The image's device, the kernel's `dev_t` (`major << 20 | minor`).
    pub image_dev: u32,
    /// Padding; zero.
    pub reserved: u32,
    /// The process's start, `start_boottime` (ns since boot).
    pub start_boottime_ns: u64,
    /// The parent process's start (`real_parent->group_leader`).
    pub parent_start_boottime_ns: u64,
    /// The task's cgroup v2 id (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// The running image (`bprm->file`, what `/proc/<pid>/exe` names): its
    /// inode number, size, mtime and ctime, so that userspace finds its hash
    /// in the cache without a `stat` ([`EXEC_IMAGE_UNREADABLE`] when not
    /// read).
    pub image_ino: u64,
    /// The image's size in bytes.
    pub image_size: u64,
    /// The image's mtime, seconds.
    pub image_mtime_sec: i64,
    /// The image's ctime, seconds.
    pub image_ctime_sec: i64,
    /// The image's mtime, nanoseconds.
    pub image_mtime_nsec: u32,
    /// The image's ctime, nanoseconds (flag bits included; see
    /// [`KernelOffsets::inode_ctime_nsec`]).
    pub image_ctime_nsec: u32,
    /// The new `comm`.
    pub comm: [u8; TASK_COMM_LEN],
    /// Path, then argument vector.
    pub data: [u8; FILENAME_CAP + ARGV_CAP],
}

/// Offset of [`ExecEvent::data`]: the fixed part of an exec event.
pub const EXEC_FIXED_LEN: usize = core::mem::offset_of!(ExecEvent, data);

/// `sched_process_fork`: a task created a new process or thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkEvent {
    /// Kind [`EVENT_FORK`]; [`FORK_THREAD`] in the flags for a thread.
    pub header: EventHeader,
    /// The forking task's process id.
    pub parent_tgid: u32,
    /// The forking task's thread id.
    pub parent_pid: u32,
    /// The new task's process id (equals `parent_tgid` for a thread).
    pub child_tgid: u32,
    /// The new task's thread id.
    pub child_pid: u32,
    /// The new task's `real_parent->tgid` (differs from `parent_tgid` with
    /// `CLONE_PARENT`).
    pub child_ppid: u32,
    /// Padding; zero.
    pub reserved: u32,
    /// The new task's process start (`group_leader->start_boottime`; for a
    /// new process its own).
    pub child_start_boottime_ns: u64,
    /// The start of the new task's parent process
    /// (`real_parent->group_leader->start_boottime`).
    pub parent_start_boottime_ns: u64,
    /// The new task's `comm` (inherited).
    pub comm: [u8; TASK_COMM_LEN],
}

/// `sched_process_exit`, once per thread group, when the group is dead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    /// Kind [`EVENT_EXIT`].
    pub header: EventHeader,
    /// Process id.
    pub tgid: u32,
    /// The last thread to exit.
    pub pid: u32,
    /// The wait status the parent will see: `(code << 8) | signal`
    /// (`signal->group_exit_code` on a group exit, else the leader's
    /// `exit_code`).
    pub exit_status: u32,
    /// Padding; zero.
    pub reserved: u32,
    /// The process's start (`group_leader->start_boottime`).
    pub start_boottime_ns: u64,
    /// The exiting task's `comm`.
    pub comm: [u8; TASK_COMM_LEN],
}

/// Size of a [`ForkEvent`].
pub const FORK_EVENT_LEN: usize = core::mem::size_of::<ForkEvent>();
/// Size of an [`ExitEvent`].
pub const EXIT_EVENT_LEN: usize = core::mem::size_of::<ExitEvent>();

// The layout is part of the wire: pin it.
const _: () = {
    assert!(core::mem::size_of::<EventHeader>() == 16);
    assert!(EXEC_FIXED_LEN == 144);
    assert!(FORK_EVENT_LEN == 72);
    assert!(EXIT_EVENT_LEN == 56);
    assert!(core::mem::size_of::<KernelOffsets>() == 31 * 4);
    // A per-CPU map value may not exceed 32 KiB (PCPU_MIN_UNIT_SIZE).
    assert!(core::mem::size_of::<ExecEvent>() <= 32 * 1024);
};
