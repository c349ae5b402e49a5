//! The eBPF backend: loads procmond's programs (`procmond-ebpf/`), attaches
//! them to the scheduler's raw tracepoints and turns their ring buffer
//! records into `ProcessEvent`s.
//!
//! - The object is embedded at build time when `cargo xtask build-ebpf` has
//!   built it (see `build.rs`); [`available`] says why not otherwise, and
//!   [`EbpfSource::load_object`] takes any object bytes.
//! - Offsets: rustc emits no CO-RE relocations, so the kernel struct offsets
//!   come from our own BTF reader ([`crate::btf`]) and are written into the
//!   read-only global `OFFSETS` before loading.
//! - Loss is never silent: the kernel side counts every dropped or trimmed
//!   event per reason ([`DropCounters`]); [`EbpfSource::next_batch`] turns
//!   new losses into `gap` events.
//! - [`decode`] (records to events) is pure and tested on hand-built records.
//!
//! *Architecture invariant:* nothing here blocks a runtime worker: the ring
//! buffer is read through tokio's `AsyncFd`, a bounded batch at a time.

mod cgroup;
mod decode;
mod offsets;
mod source;

use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, RawTracePoint};
use aya::{Ebpf, EbpfLoader};
use collector_core::SourceEvent;
use daemoneye_lib::models::time::now_ns;
use daemoneye_lib::proto::{EventSource, EventType, GapInfo, ProcessEvent, ProcessRecord};
use procmond_ebpf_common::{
    DROPS_MAP, EVENTS_MAP, EXEC_PROGRAM, EXIT_LEGACY_PROGRAM, EXIT_PROGRAM, FORK_PROGRAM, OFFSETS_GLOBAL, drop_reason,
};
use tokio::io::unix::AsyncFd;

pub use decode::{DecodeContext, DecodeError, Decoded, decode};
pub use offsets::ExitHook;

use crate::btf::{Btf, BtfError};

/// Default ring buffer size (4 MiB: about 20,000 typical exec events, or
/// 2.5 s of fork, exec and exit at 2,700 exec/s with procmond stalled).
/// procmond maps the data area twice (for reads across the wrap), so the
/// ring costs it twice this in resident memory.
pub const DEFAULT_RINGBUF_BYTES: u32 = 4 << 20;
/// Most events one [`EbpfSource::next_batch`] returns.
pub const MAX_BATCH: usize = 1024;
/// How often drop counters are read while events flow; an idle source
/// reads them at its next idle poll after this.
const DROP_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Fork and exit records do not wake procmond (see the eBPF programs'
/// `lazy_wakeup`): they come with the next exec, or with a poll of the
/// ring, which costs no system call when it is empty. The poll runs this
/// long after the last events, so a fork or exit of a busy moment waits
/// at most this long...
const IDLE_POLL_MIN: Duration = Duration::from_millis(100);
/// ...and each poll that finds nothing doubles the wait up to this. A
/// quiet machine then wakes procmond about once a second instead of ten
/// times (a timer wake-up from idle costs tens of microseconds on a VM:
/// the larger part of procmond's idle CPU), and the first exit after a
/// quiet second waits at most this long.
const IDLE_POLL_MAX: Duration = Duration::from_secs(1);

/// The embedded object, if the build had one.
#[cfg(daemoneye_ebpf_object)]
static OBJECT: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/procmond.bpf.o")));
#[cfg(not(daemoneye_ebpf_object))]
static OBJECT: Option<&[u8]> = None;

/// Errors of the eBPF backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EbpfError {
    /// The backend cannot run here; the reason says what to do.
    #[error("eBPF backend unavailable: {0}")]
    Unavailable(String),
    /// The kernel's BTF could not be read or lacks a member the programs use.
    #[error("kernel BTF: {0}")]
    Btf(#[from] BtfError),
    /// aya could not parse or load the object (maps, globals).
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is missing, or the verifier or the kernel refused it.
    #[error("eBPF program {program}: {what}: {source}{}", verifier_tail(.source))]
    Program {
        /// The program.
        program: &'static str,
        /// What was being done ("load", "attach to sched_process_exec").
        what: String,
        /// aya's error.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map is missing or has the wrong type.
    #[error("eBPF map {map}: {source}")]
    Map {
        /// The map.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// Waiting on the ring buffer failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The last lines of a verifier log, where the reason is.
fn verifier_tail(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { verifier_log, .. } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines.get(lines.len().saturating_sub(8)..).unwrap_or_default();
            format!("\nverifier log (tail):\n{}", tail.join("\n"))
        }
        _ => String::new(),
    }
}

/// The kernel side's drop counters, summed over CPUs, per
/// [`drop_reason`] slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Count per slot (`drop_reason::NAMES` names them).
    pub per_reason: [u64; drop_reason::COUNT as usize],
    /// Records userspace could not decode (lost too).
    pub decode_errors: u64,
}

impl DropCounters {
    /// Events lost (not sent, or not decodable).
    pub fn lost(&self) -> u64 {
        let lost_slots = self.per_reason.iter().take(drop_reason::LOST_BELOW as usize);
        lost_slots.sum::<u64>().saturating_add(self.decode_errors)
    }

    /// Events sent with a part missing (argv or path unreadable).
    pub fn partial(&self) -> u64 {
        self.per_reason.iter().skip(drop_reason::LOST_BELOW as usize).sum()
    }

    /// `(reason, count)` for every slot, lost ones first, then
    /// `("decode_error", n)`.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        drop_reason::NAMES
            .iter()
            .copied()
            .zip(self.per_reason.iter().copied())
            .chain(std::iter::once(("decode_error", self.decode_errors)))
    }
}

/// Whether this build and this host can run the eBPF backend; `Err` says
/// why not (for logs and `health`). Loading can still fail later (verifier,
/// missing privilege that is only visible then).
pub fn available() -> Result<(), String> {
    if OBJECT.is_none() {
        return Err(format!(
            "this build has no eBPF object (looked for {}): run `cargo xtask build-ebpf`, then rebuild",
            env!("DAEMONEYE_EBPF_OBJECT_SOURCE")
        ));
    }
    if !std::path::Path::new(crate::btf::VMLINUX_BTF).exists() {
        return Err(format!(
            "{} is missing: the kernel lacks CONFIG_DEBUG_INFO_BTF, which the eBPF backend needs for struct offsets",
            crate::btf::VMLINUX_BTF
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root (loading eBPF needs CAP_BPF and CAP_PERFMON)".into());
    }
    Ok(())
}

/// The embedded eBPF object, if this build has one.
pub fn object() -> Option<&'static [u8]> {
    OBJECT
}

/// The loaded, attached programs and their ring buffer.
pub struct EbpfSource {
    ring: Ring,
    drops: PerCpuArray<MapData, u64>,
    ctx: DecodeContext,
    exit_hook: ExitHook,
    ring_bytes: u32,
    thread_forks: bool,
    decode_errors: u64,
    reported: DropCounters,
    last_check: Instant,
    /// The next idle poll's wait: [`IDLE_POLL_MIN`] after events, doubled
    /// by every empty poll up to [`IDLE_POLL_MAX`].
    idle_poll: Duration,
    snapshot: Option<crate::procfs::ProcfsReader>,
    cgroups: cgroup::CgroupPaths,
    /// Owns the programs and links: dropping it detaches them.
    _bpf: Ebpf,
}

impl EbpfSource {
    /// Loads the embedded object with a ring buffer of about
    /// `ringbuf_bytes` (rounded up to a power of two of at least a page, as
    /// the kernel requires) and attaches the programs.
    pub fn load(ringbuf_bytes: u32) -> Result<Self, EbpfError> {
        available().map_err(EbpfError::Unavailable)?;
        let object = OBJECT.ok_or_else(|| EbpfError::Unavailable("no eBPF object".into()))?;
        Self::load_object(object, ringbuf_bytes)
    }

    /// Like [`EbpfSource::load`], with the object given.
    pub fn load_object(object: &[u8], ringbuf_bytes: u32) -> Result<Self, EbpfError> {
        let btf = Btf::from_sys_fs()?;
        let offsets = offsets::kernel_offsets(&btf)?;
        let exit_hook = offsets::exit_hook(&btf)?;
        drop(btf);
        let ring_bytes = ring_size(ringbuf_bytes);
        let mut bpf = EbpfLoader::new()
            .override_global(OFFSETS_GLOBAL, &offsets, true)
            .map_max_entries(EVENTS_MAP, ring_bytes)
            .load(object)
            .map_err(|e| EbpfError::Load(Box::new(e)))?;
        let exit_program = match exit_hook {
            ExitHook::GroupDead => EXIT_PROGRAM,
            ExitHook::Legacy => EXIT_LEGACY_PROGRAM,
        };
        for (program, tracepoint) in [
            (EXEC_PROGRAM, "sched_process_exec"),
            (FORK_PROGRAM, "sched_process_fork"),
            (exit_program, "sched_process_exit"),
        ] {
            attach(&mut bpf, program, tracepoint)?;
        }
        let ring = take_map(&mut bpf, EVENTS_MAP)?;
        let ring = RingBuf::try_from(ring).map_err(|e| map_err(EVENTS_MAP, e))?;
        let drops = take_map(&mut bpf, DROPS_MAP)?;
        let drops = PerCpuArray::try_from(drops).map_err(|e| map_err(DROPS_MAP, e))?;
        tracing::info!(ring_bytes, ?exit_hook, ring_fd = ring.as_raw_fd(), "eBPF programs attached");
        Ok(Self {
            ring: Ring::Unregistered(ring),
            drops,
            ctx: DecodeContext { boot_id: daemoneye_lib::models::boot_id(), boot_time_ns: boot_time_ns() },
            exit_hook,
            ring_bytes,
            thread_forks: false,
            decode_errors: 0,
            reported: DropCounters::default(),
            last_check: Instant::now(),
            idle_poll: IDLE_POLL_MIN,
            snapshot: None,
            cgroups: cgroup::CgroupPaths::host(),
            _bpf: bpf,
        })
    }

    /// Also report forks that create threads (`is_thread = true`, under the
    /// process's key). Off by default: threads are not rows.
    #[must_use]
    pub fn with_thread_forks(mut self, on: bool) -> Self {
        self.thread_forks = on;
        self
    }

    /// When run as an `EventSource`, first send a `/proc` snapshot (source
    /// `procfs`, type `snapshot`) read after the programs were attached,
    /// then the events queued since: no process is missed at start.
    #[must_use]
    pub fn with_startup_snapshot(mut self, reader: crate::procfs::ProcfsReader) -> Self {
        self.snapshot = Some(reader);
        self
    }

    /// The exit program in use.
    pub fn exit_hook(&self) -> ExitHook {
        self.exit_hook
    }

    /// The ring buffer's size in bytes, as created.
    pub fn ring_bytes(&self) -> u32 {
        self.ring_bytes
    }

    /// Waits for events and appends up to [`MAX_BATCH`] of them to `out`,
    /// plus a `gap` event per reason for losses counted since the last
    /// report. Returns with at least one event appended. Cancel-safe: it
    /// only awaits while `out` is untouched.
    pub async fn next_batch(&mut self, out: &mut Vec<SourceEvent>) -> Result<(), EbpfError> {
        let start = out.len();
        loop {
            self.ctx.boot_time_ns = boot_time_ns();
            self.drain(out, start);
            // Reading the counters costs a bpf syscall per reason: done every
            // interval, and at once when a full batch says the ring is busy
            // (where losses start).
            if out.len() - start >= MAX_BATCH || self.last_check.elapsed() >= DROP_CHECK_INTERVAL {
                self.report_drops(out)?;
            }
            if out.len() > start {
                self.idle_poll = IDLE_POLL_MIN;
                return Ok(());
            }
            let ring = self.ring.registered()?;
            match tokio::time::timeout(self.idle_poll, ring.readable_mut()).await {
                Ok(Ok(mut guard)) => guard.clear_ready(),
                Ok(Err(source)) => {
                    return Err(EbpfError::Io { what: "waiting on the eBPF ring buffer", source });
                }
                Err(_elapsed) => self.idle_poll = (self.idle_poll * 2).min(IDLE_POLL_MAX),
            }
        }
    }

    /// The drop counters now (summed over CPUs), for `health`.
    pub fn drop_counters(&self) -> Result<DropCounters, EbpfError> {
        let mut c = DropCounters { decode_errors: self.decode_errors, ..DropCounters::default() };
        for (slot, n) in (0u32..).zip(c.per_reason.iter_mut()) {
            let values = self.drops.get(&slot, 0).map_err(|e| map_err(DROPS_MAP, e))?;
            *n = values.iter().copied().fold(0u64, u64::saturating_add);
        }
        Ok(c)
    }

    fn drain(&mut self, out: &mut Vec<SourceEvent>, start: usize) {
        let Some(ring) = self.ring.get_mut() else {
            return;
        };
        while out.len() - start < MAX_BATCH {
            let Some(item) = ring.next() else { break };
            match decode(&self.ctx, &item) {
                Ok(d) if d.is_thread && !self.thread_forks => {}
                Ok(mut d) => {
                    // Exec records carry the cgroup id; rows want its path,
                    // and the container id read from it as /proc does.
                    if let (Some(id), Some(p)) = (d.cgroup_id, d.event.process.as_mut()) {
                        p.cgroup = self.cgroups.resolve(id);
                        p.container_id = p.cgroup.as_deref().and_then(crate::procfs::container_id_of_cgroup_path);
                    }
                    out.push(SourceEvent { event: d.event, image: d.image });
                }
                Err(e) => {
                    self.decode_errors += 1;
                    tracing::warn!(error = %e, "undecodable eBPF record");
                }
            }
        }
    }

    /// Appends a `gap` event per reason whose lost count grew.
    fn report_drops(&mut self, out: &mut Vec<SourceEvent>) -> Result<(), EbpfError> {
        self.last_check = Instant::now();
        let now = self.drop_counters()?;
        let lost_slots = drop_reason::LOST_BELOW as usize;
        let before = self.reported.named().collect::<Vec<_>>();
        for (i, ((reason, n), (_, was))) in now.named().zip(before).enumerate() {
            let is_loss = i < lost_slots || reason == "decode_error";
            if is_loss && n > was {
                tracing::warn!(reason, lost = n - was, "eBPF events lost");
                out.push(gap_event(n - was, reason).into());
            } else if n > was {
                tracing::debug!(reason, count = n - was, "eBPF events sent with a part missing");
            }
        }
        self.reported = now;
        Ok(())
    }
}

impl std::fmt::Debug for EbpfSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfSource")
            .field("exit_hook", &self.exit_hook)
            .field("ring_bytes", &self.ring_bytes)
            .field("thread_forks", &self.thread_forks)
            .field("reported", &self.reported)
            .finish_non_exhaustive()
    }
}

/// The ring buffer, registered with tokio on first use (registering needs
/// a runtime; loading does not).
enum Ring {
    Unregistered(RingBuf<MapData>),
    Registered(AsyncFd<RingBuf<MapData>>),
    /// Only while moving from one state to the other.
    Moving,
}

impl Ring {
    fn registered(&mut self) -> Result<&mut AsyncFd<RingBuf<MapData>>, EbpfError> {
        if matches!(self, Ring::Unregistered(_)) {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(EbpfError::Io {
                    what: "reading the eBPF ring buffer outside a tokio runtime",
                    source: std::io::Error::other("no tokio runtime"),
                });
            }
            if let Ring::Unregistered(ring) = std::mem::replace(self, Ring::Moving) {
                // SAFETY: the fd is the ring buffer map's, owned by `ring`
                // (aya's `MapData` holds it as an `OwnedFd`): it stays open
                // and the same until the `AsyncFd`, which owns `ring`, is
                // dropped, and `as_raw_fd` always returns it.
                #[allow(unsafe_code)]
                let registered = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
                match registered {
                    Ok(r) => *self = Ring::Registered(r),
                    Err(e) => {
                        let (ring, source) = e.into_parts();
                        *self = Ring::Unregistered(ring);
                        return Err(EbpfError::Io { what: "registering the eBPF ring buffer with tokio", source });
                    }
                }
            }
        }
        match self {
            Ring::Registered(r) => Ok(r),
            _ => Err(EbpfError::Io {
                what: "reading the eBPF ring buffer",
                source: std::io::Error::other("ring buffer not registered"),
            }),
        }
    }

    fn get_mut(&mut self) -> Option<&mut RingBuf<MapData>> {
        match self {
            Ring::Unregistered(r) => Some(r),
            Ring::Registered(r) => Some(r.get_mut()),
            Ring::Moving => None,
        }
    }
}

/// A `gap` event for `lost` events lost for `reason`.
fn gap_event(lost: u64, reason: &str) -> ProcessEvent {
    ProcessEvent {
        seq: 0,
        event_type: EventType::Gap.into(),
        event_time_ns: now_ns(),
        source: EventSource::Ebpf.into(),
        process: Some(ProcessRecord::default()),
        gap: Some(GapInfo { lost_events: lost, reason: format!("ebpf_{reason}") }),
        prev_seq: 0,
    }
}

fn attach(bpf: &mut Ebpf, program: &'static str, tracepoint: &str) -> Result<(), EbpfError> {
    let err = |what: String| move |source| EbpfError::Program { program, what, source: Box::new(source) };
    let prog: &mut RawTracePoint = bpf
        .program_mut(program)
        .ok_or_else(|| EbpfError::Unavailable(format!("the eBPF object has no program {program}: rebuild it")))?
        .try_into()
        .map_err(err("wrong program type".into()))?;
    prog.load().map_err(err("load".into()))?;
    prog.attach(tracepoint).map_err(err(format!("attach to {tracepoint}")))?;
    Ok(())
}

fn take_map(bpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, EbpfError> {
    bpf.take_map(name).ok_or_else(|| EbpfError::Unavailable(format!("the eBPF object has no map {name}: rebuild it")))
}

fn map_err(map: &'static str, e: aya::maps::MapError) -> EbpfError {
    EbpfError::Map { map, source: Box::new(e) }
}

/// The kernel wants a power-of-two multiple of the page size.
fn ring_size(bytes: u32) -> u32 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(4096);
    bytes.max(page).checked_next_power_of_two().unwrap_or(1 << 31)
}

/// `CLOCK_REALTIME - CLOCK_BOOTTIME` in ns: the Unix time of boot, in the
/// clock `bpf_ktime_get_boot_ns` and `start_boottime` count from.
fn boot_time_ns() -> i64 {
    use nix::time::{ClockId, clock_gettime};
    let ns = |c| clock_gettime(c).map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec()).unwrap_or(0);
    let boot_before = ns(ClockId::CLOCK_BOOTTIME);
    let real = ns(ClockId::CLOCK_REALTIME);
    let boot_after = ns(ClockId::CLOCK_BOOTTIME);
    real - (boot_before / 2 + boot_after / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_powers_of_two_of_pages() {
        assert_eq!(ring_size(0), 4096);
        assert_eq!(ring_size(5000), 8192);
        assert_eq!(ring_size(DEFAULT_RINGBUF_BYTES), DEFAULT_RINGBUF_BYTES);
        assert_eq!(ring_size(u32::MAX), 1 << 31);
    }

    #[test]
    fn drop_counters_split_lost_from_partial() {
        let mut c = DropCounters::default();
        c.per_reason[drop_reason::RINGBUF_FULL_EXEC as usize] = 3;
        c.per_reason[drop_reason::ARGV_UNREADABLE as usize] = 5;
        c.decode_errors = 1;
        assert_eq!((c.lost(), c.partial()), (4, 5));
        assert_eq!(c.named().count(), drop_reason::COUNT as usize + 1);
    }

    #[test]
    fn boot_time_is_in_the_past() {
        let b = boot_time_ns();
        assert!(b > 1_000_000_000_000_000_000 && b < now_ns(), "{b}");
    }

    #[test]
    fn availability_explains_itself() {
        if let Err(why) = available() {
            assert!(!why.is_empty());
        }
    }
}
