//! procmond's sandbox on Linux (PRODUCT.md §14).
//!
//! Once the backend is attached, [`enter`] keeps only the capabilities that
//! steady state needs ([`STEADY_STATE`]: reading other users'
//! `/proc/<pid>/{exe,cmdline,environ,...}` and hashing executables they
//! cannot read) in every set — effective, permitted, inheritable, ambient
//! and bounding — then sets `no_new_privs` and installs a seccomp filter
//! under which `socket()` succeeds only for `AF_UNIX` (the bus) and
//! `AF_NETLINK` (the proc connector); every other family, `AF_INET` and
//! `AF_INET6` first, fails with `EACCES`. `io_uring_setup` is refused too,
//! since io_uring could open sockets without the `socket` system call.
//!
//! Capabilities belong to threads: [`enter`] refuses to run while the process
//! has more than one thread, so that every thread started later inherits the
//! reduced sets. The filter is installed with `SECCOMP_FILTER_FLAG_TSYNC`.
//!
//! One exception to [`STEADY_STATE`]: before Linux 5.19, with unprivileged
//! BPF disabled, every `bpf()` command needs `CAP_BPF`, including the map
//! reads of the eBPF backend's drop counters; there `CAP_BPF` is kept for
//! the eBPF backend. Whether the kernel is such a kernel is probed, not
//! guessed from its version.

use std::collections::{BTreeMap, BTreeSet};

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// The capabilities procmond keeps after [`enter`] (besides `CAP_BPF` on
/// old kernels, see the module docs).
pub const STEADY_STATE: [Capability; 2] = [Capability::CAP_DAC_READ_SEARCH, Capability::CAP_SYS_PTRACE];

/// What `seccomp` refuses, as recorded in the audit record.
pub const SECCOMP_POLICY: &str =
    "socket() of any family but AF_UNIX and AF_NETLINK, and io_uring_setup(), fail with EACCES";

/// Why the sandbox could not be entered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// Capabilities are per thread: a drop with other threads running
    /// would leave theirs.
    #[error(
        "the sandbox must be entered while the process has one thread, it has {0}: call it before starting the async runtime"
    )]
    Threads(usize),
    /// A capability set could not be read.
    #[error("reading the {set} capability set: {reason}")]
    Read {
        /// The set.
        set: &'static str,
        /// The kernel's answer.
        reason: String,
    },
    /// A step of the drop failed.
    #[error("dropping capabilities ({step}): {reason}")]
    Drop {
        /// What was being done.
        step: &'static str,
        /// The kernel's answer.
        reason: String,
    },
    /// After the drop a set is not what was asked for.
    #[error("after the drop the {set} capability set is {found}, expected {expected}")]
    Verify {
        /// The set.
        set: &'static str,
        /// What the kernel reports.
        found: String,
        /// What was asked for.
        expected: String,
    },
    /// The seccomp filter could not be built or installed.
    #[error("seccomp filter: {0} (procmond needs a kernel with CONFIG_SECCOMP_FILTER)")]
    Seccomp(String),
}

/// The five capability sets of the calling thread, by name (`CAP_...`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapabilitySets {
    /// Effective.
    pub effective: BTreeSet<String>,
    /// Permitted.
    pub permitted: BTreeSet<String>,
    /// Inheritable.
    pub inheritable: BTreeSet<String>,
    /// Ambient.
    pub ambient: BTreeSet<String>,
    /// Bounding.
    pub bounding: BTreeSet<String>,
}

impl CapabilitySets {
    /// The calling thread's sets.
    pub fn current() -> Result<Self, SandboxError> {
        Ok(Self {
            effective: names(&read(CapSet::Effective, "effective")?),
            permitted: names(&read(CapSet::Permitted, "permitted")?),
            inheritable: names(&read(CapSet::Inheritable, "inheritable")?),
            ambient: names(&read(CapSet::Ambient, "ambient")?),
            bounding: names(&read(CapSet::Bounding, "bounding")?),
        })
    }

    /// `(name, set)` for each set, in a fixed order.
    pub fn sets(&self) -> [(&'static str, &BTreeSet<String>); 5] {
        [
            ("effective", &self.effective),
            ("permitted", &self.permitted),
            ("inheritable", &self.inheritable),
            ("ambient", &self.ambient),
            ("bounding", &self.bounding),
        ]
    }
}

/// A set as recorded: names joined by commas, `none` when empty.
pub fn render(set: &BTreeSet<String>) -> String {
    if set.is_empty() { "none".to_owned() } else { set.iter().cloned().collect::<Vec<_>>().join(",") }
}

/// What [`enter`] did.
#[derive(Debug, Clone)]
pub struct SandboxReport {
    /// The sets before the drop.
    pub before: CapabilitySets,
    /// The sets after it.
    pub after: CapabilitySets,
    /// Why `CAP_BPF` was kept, when it was.
    pub cap_bpf_kept: Option<String>,
    /// Why the bounding set could not be reduced, when it could not.
    pub bounding_note: Option<String>,
}

impl SandboxReport {
    /// The details of the `privilege_drop` audit record: every set before
    /// and after (`effective_before`, ..., `bounding_after`), then
    /// `no_new_privs` and `seccomp`, and the notes when there are any.
    pub fn audit_details(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (when, sets) in [("before", &self.before), ("after", &self.after)] {
            for (name, set) in sets.sets() {
                out.push((format!("{name}_{when}"), render(set)));
            }
        }
        out.push(("no_new_privs".into(), "1".into()));
        out.push(("seccomp".into(), SECCOMP_POLICY.into()));
        if let Some(why) = &self.cap_bpf_kept {
            out.push(("cap_bpf_kept".into(), why.clone()));
        }
        if let Some(note) = &self.bounding_note {
            out.push(("bounding_note".into(), note.clone()));
        }
        out
    }

    /// The capabilities given up (permitted before, not after).
    pub fn dropped(&self) -> BTreeSet<String> {
        self.before.permitted.difference(&self.after.permitted).cloned().collect()
    }
}

/// Drops every capability outside the steady-state set (for `backend`, the
/// name of the backend in use), sets `no_new_privs` and installs the
/// network-refusing seccomp filter. Must run while the process has one
/// thread.
pub fn enter(backend: &str) -> Result<SandboxReport, SandboxError> {
    let threads = std::fs::read_dir("/proc/self/task").map(Iterator::count).unwrap_or(1);
    if threads > 1 {
        return Err(SandboxError::Threads(threads));
    }
    let before = CapabilitySets::current()?;
    let permitted = read(CapSet::Permitted, "permitted")?;
    let mut keep: CapsHashSet = STEADY_STATE.into_iter().filter(|c| permitted.contains(c)).collect();
    let cap_bpf_kept =
        (backend == "ebpf" && permitted.contains(&Capability::CAP_BPF)).then(bpf_needs_cap_bpf).transpose()?.flatten();
    if cap_bpf_kept.is_some() {
        keep.insert(Capability::CAP_BPF);
    }
    let bounding_note = drop_to(&keep)?;
    let after = CapabilitySets::current()?;
    let want = names(&keep);
    for (set, found) in [("effective", &after.effective), ("permitted", &after.permitted)] {
        if *found != want {
            return Err(SandboxError::Verify { set, found: render(found), expected: render(&want) });
        }
    }
    for (set, found) in [("inheritable", &after.inheritable), ("ambient", &after.ambient)] {
        if !found.is_empty() {
            return Err(SandboxError::Verify { set, found: render(found), expected: "none".into() });
        }
    }
    if bounding_note.is_none() && !after.bounding.is_subset(&want) {
        return Err(SandboxError::Verify { set: "bounding", found: render(&after.bounding), expected: render(&want) });
    }
    install_network_filter()?;
    Ok(SandboxReport { before, after, cap_bpf_kept, bounding_note })
}

/// Tries `socket()` for each family procmond's filter decides on: the
/// family's name and `Ok` or the error. For the self-test.
pub fn probe_sockets() -> Vec<(&'static str, Result<(), nix::errno::Errno>)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    [
        ("AF_INET", AddressFamily::Inet, SockType::Stream),
        ("AF_INET6", AddressFamily::Inet6, SockType::Datagram),
        ("AF_UNIX", AddressFamily::Unix, SockType::Stream),
        ("AF_NETLINK", AddressFamily::Netlink, SockType::Datagram),
    ]
    .into_iter()
    .map(|(name, family, kind)| (name, socket(family, kind, SockFlag::SOCK_CLOEXEC, None).map(drop)))
    .collect()
}

fn read(set: CapSet, name: &'static str) -> Result<CapsHashSet, SandboxError> {
    caps::read(None, set).map_err(|e| SandboxError::Read { set: name, reason: e.to_string() })
}

fn names(set: &CapsHashSet) -> BTreeSet<String> {
    set.iter().map(ToString::to_string).collect()
}

/// Reduces the calling thread's sets to `keep`: bounding first (it needs
/// `CAP_SETPCAP`, which goes with the rest), then ambient, inheritable,
/// effective and permitted. Returns a note when the bounding set had to
/// stay as it was.
fn drop_to(keep: &CapsHashSet) -> Result<Option<String>, SandboxError> {
    let err = |step: &'static str| move |e: caps::errors::CapsError| SandboxError::Drop { step, reason: e.to_string() };
    let bounding = read(CapSet::Bounding, "bounding")?;
    let extra: Vec<Capability> = bounding.difference(keep).copied().collect();
    let mut note = None;
    if !extra.is_empty() {
        if read(CapSet::Effective, "effective")?.contains(&Capability::CAP_SETPCAP) {
            for cap in extra {
                caps::drop(None, CapSet::Bounding, cap).map_err(err("bounding set"))?;
            }
        } else {
            // Without CAP_SETPCAP the bounding set cannot shrink; with
            // no_new_privs and nothing permitted beyond `keep`, nothing can
            // be regained through it either.
            let why = "the bounding set is unchanged: procmond was started without CAP_SETPCAP".to_owned();
            tracing::warn!("{why}");
            note = Some(why);
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err("ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("inheritable set"))?;
    caps::set(None, CapSet::Effective, keep).map_err(err("effective set"))?;
    caps::set(None, CapSet::Permitted, keep).map_err(err("permitted set"))?;
    Ok(note)
}

/// True (with the reason) when `bpf()` commands other than loading need
/// `CAP_BPF` on this kernel: the probe asks for the info of an invalid fd
/// with `CAP_BPF` and `CAP_SYS_ADMIN` lowered from the effective set. Before
/// Linux 5.19 (unprivileged BPF disabled) that is `EPERM`; later it is
/// `EBADF`.
fn bpf_needs_cap_bpf() -> Result<Option<String>, SandboxError> {
    let err = |step: &'static str| move |e: caps::errors::CapsError| SandboxError::Drop { step, reason: e.to_string() };
    let effective = read(CapSet::Effective, "effective")?;
    let lowered: Vec<Capability> =
        [Capability::CAP_BPF, Capability::CAP_SYS_ADMIN].into_iter().filter(|c| effective.contains(c)).collect();
    for cap in &lowered {
        caps::drop(None, CapSet::Effective, *cap).map_err(err("lowering for the bpf() probe"))?;
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // `union bpf_attr` for this command: bpf_fd (u32), info_len (u32), info (u64).
    let mut attr = [0u32; 4];
    attr[0] = u32::MAX;
    let size = std::mem::size_of_val(&attr);
    // SAFETY: `attr` is a live, initialised 16-byte buffer of the layout the
    // command reads, and `size` is its length; the kernel only reads it
    // (info_len = 0 asks it to write nothing).
    #[allow(unsafe_code)]
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), size) };
    let errno = nix::errno::Errno::last();
    for cap in &lowered {
        caps::raise(None, CapSet::Effective, *cap).map_err(err("raising after the bpf() probe"))?;
    }
    Ok((rc < 0 && errno == nix::errno::Errno::EPERM).then(|| {
        "this kernel refuses every bpf() command without CAP_BPF (before Linux 5.19, unprivileged BPF disabled); \
         the eBPF backend reads its drop counters with bpf()"
            .to_owned()
    }))
}

/// `no_new_privs`, then the filter on every thread.
fn install_network_filter() -> Result<(), SandboxError> {
    let program = network_filter()?;
    // apply_filter_all_threads sets no_new_privs itself (the kernel needs it
    // for an unprivileged filter) before seccomp(SECCOMP_FILTER_FLAG_TSYNC).
    seccompiler::apply_filter_all_threads(&program).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

/// The filter: `socket(domain, ...)` with a domain other than `AF_UNIX` or
/// `AF_NETLINK`, and `io_uring_setup`, return `EACCES`; everything else is
/// allowed. On x86_64 the x32 numbers of both are covered too (the arch
/// check cannot tell x32 calls from native ones); other architectures'
/// calls kill the process (seccompiler's arch check).
fn network_filter() -> Result<BpfProgram, SandboxError> {
    let fail = |e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string());
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(fail)?;
    let not_family = |family: libc::c_int| {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, u64::from(family.unsigned_abs()))
    };
    let foreign_family =
        SeccompRule::new(vec![not_family(libc::AF_UNIX).map_err(fail)?, not_family(libc::AF_NETLINK).map_err(fail)?])
            .map_err(fail)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_socket, vec![foreign_family.clone()]);
    // An empty rule list matches on the syscall number alone.
    rules.insert(libc::SYS_io_uring_setup, Vec::new());
    #[cfg(target_arch = "x86_64")]
    {
        const X32_SYSCALL_BIT: i64 = 0x4000_0000;
        rules.insert(X32_SYSCALL_BIT | libc::SYS_socket, vec![foreign_family]);
        rules.insert(X32_SYSCALL_BIT | libc::SYS_io_uring_setup, Vec::new());
    }
    #[cfg(not(target_arch = "x86_64"))]
    drop(foreign_family);
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EACCES.unsigned_abs()), arch)
            .map_err(fail)?;
    filter.try_into().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_builds_for_this_architecture() {
        let program = network_filter().unwrap();
        assert!(!program.is_empty());
    }

    #[test]
    fn audit_details_name_every_set_before_and_after() {
        let mut before = CapabilitySets::default();
        before.permitted.insert("CAP_BPF".into());
        before.permitted.insert("CAP_SYS_PTRACE".into());
        let mut after = CapabilitySets::default();
        after.permitted.insert("CAP_SYS_PTRACE".into());
        let report = SandboxReport { before, after, cap_bpf_kept: None, bounding_note: None };
        let d = report.audit_details();
        let get = |k: &str| d.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("permitted_before"), Some("CAP_BPF,CAP_SYS_PTRACE"));
        assert_eq!(get("permitted_after"), Some("CAP_SYS_PTRACE"));
        assert_eq!(get("ambient_after"), Some("none"));
        assert_eq!(get("no_new_privs"), Some("1"));
        assert_eq!(report.dropped().into_iter().collect::<Vec<_>>(), vec!["CAP_BPF".to_owned()]);
    }
}
