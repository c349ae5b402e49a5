//! The kernel struct offsets the eBPF programs read at, from BTF.

use procmond_ebpf_common::KernelOffsets;

use crate::btf::{Btf, BtfError};

/// `SIGNAL_GROUP_EXIT` (`include/linux/sched/signal.h`), unchanged since
/// Linux 2.6; BTF does not carry `#define`s.
const SIGNAL_GROUP_EXIT: u32 = 0x0000_0004;

/// Which `sched_process_exit` program fits the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitHook {
    /// `sched_process_exit(p, group_dead)` (Linux 6.16+): exact.
    GroupDead,
    /// `sched_process_exit(p)`: the program reads `signal->live`.
    Legacy,
}

/// Resolves every offset the programs use; any missing member is an error
/// naming it.
pub(crate) fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let task = |m: &str| btf.member_offset("task_struct", m);
    let inode = |m: &str| btf.member_offset("inode", m);
    let (inode_mtime_sec, inode_mtime_nsec) = inode_time(btf, "mtime")?;
    let (inode_ctime_sec, inode_ctime_nsec) = inode_time(btf, "ctime")?;
    Ok(KernelOffsets {
        task_pid: task("pid")?,
        task_tgid: task("tgid")?,
        task_real_parent: task("real_parent")?,
        task_group_leader: task("group_leader")?,
        task_start_boottime: task("start_boottime")?,
        task_comm: task("comm")?,
        task_exit_code: task("exit_code")?,
        task_signal: task("signal")?,
        task_mm: task("mm")?,
        task_real_cred: task("real_cred")?,
        signal_live: btf.member_offset("signal_struct", "live")?,
        signal_flags: btf.member_offset("signal_struct", "flags")?,
        signal_group_exit_code: btf.member_offset("signal_struct", "group_exit_code")?,
        mm_arg_start: btf.member_offset("mm_struct", "arg_start")?,
        mm_arg_end: btf.member_offset("mm_struct", "arg_end")?,
        cred_uid: btf.member_offset("cred", "uid")?,
        cred_gid: btf.member_offset("cred", "gid")?,
        cred_euid: btf.member_offset("cred", "euid")?,
        cred_egid: btf.member_offset("cred", "egid")?,
        bprm_filename: btf.member_offset("linux_binprm", "filename")?,
        bprm_file: btf.member_offset("linux_binprm", "file")?,
        file_inode: btf.member_offset("file", "f_inode")?,
        inode_ino: inode("i_ino")?,
        inode_sb: inode("i_sb")?,
        inode_size: inode("i_size")?,
        inode_mtime_sec,
        inode_mtime_nsec,
        inode_ctime_sec,
        inode_ctime_nsec,
        sb_dev: btf.member_offset("super_block", "s_dev")?,
        signal_group_exit_flag: SIGNAL_GROUP_EXIT,
    })
}

/// `(seconds, nanoseconds)` offsets of an inode time (`which` is `mtime`
/// or `ctime`). Linux 6.11+ splits them into `i_<which>_sec` and
/// `i_<which>_nsec`; 6.6–6.10 have a `struct timespec64 __i_<which>`, older
/// kernels `i_<which>` (a timespec64: `tv_sec` at 0, `tv_nsec` at 8).
fn inode_time(btf: &Btf, which: &str) -> Result<(u32, u32), BtfError> {
    if let (Ok(sec), Ok(nsec)) =
        (btf.member_offset("inode", &format!("i_{which}_sec")), btf.member_offset("inode", &format!("i_{which}_nsec")))
    {
        return Ok((sec, nsec));
    }
    let spec = btf
        .member_offset("inode", &format!("__i_{which}"))
        .or_else(|_| btf.member_offset("inode", &format!("i_{which}")))?;
    Ok((spec, spec + 8))
}

/// The exit hook the kernel offers: `btf_trace_sched_process_exit` has
/// three parameters (`void *`, task, `group_dead`) from Linux 6.16 on.
pub(crate) fn exit_hook(btf: &Btf) -> Result<ExitHook, BtfError> {
    Ok(if btf.fn_typedef_params("btf_trace_sched_process_exit")? >= 3 { ExitHook::GroupDead } else { ExitHook::Legacy })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::print_stderr, reason = "tests say why they skipped")]
    use super::*;

    #[test]
    fn offsets_resolve_on_the_running_kernel() {
        let btf = match Btf::from_sys_fs() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let o = kernel_offsets(&btf).unwrap();
        // Distinct members of task_struct have distinct offsets.
        let mut task = vec![o.task_pid, o.task_tgid, o.task_real_parent, o.task_group_leader, o.task_mm];
        task.sort_unstable();
        task.dedup();
        assert_eq!(task.len(), 5);
        assert_eq!(o.task_tgid, o.task_pid + 4, "tgid follows pid in task_struct");
        assert!(o.mm_arg_end > o.mm_arg_start);
        let mut inode = vec![o.inode_ino, o.inode_sb, o.inode_size, o.inode_mtime_sec, o.inode_ctime_sec];
        inode.sort_unstable();
        inode.dedup();
        assert_eq!(inode.len(), 5, "{o:?}");
        assert_ne!(o.inode_mtime_nsec, o.inode_ctime_nsec);
        exit_hook(&btf).unwrap();
    }
}
