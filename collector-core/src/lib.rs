//! The collector core: what every process-event backend shares.
//!
//! - [`source`]: the [`EventSource`] trait that platform backends (eBPF,
//!   proc connector, ETW, EndpointSecurity, polling) implement, and the
//!   bounded [`EventSink`] they write into. Sources emit `seq = 0`; the
//!   runtime assigns ledger sequence numbers.
//! - [`poll`]: the portable polling backend ([`PollSource`]) that diffs
//!   successive enumerations into snapshot/exec/exit events, over any
//!   [`ProcessEnumerator`].
//! - [`sysinfo_enum`]: a portable [`ProcessEnumerator`] over `sysinfo`
//!   (coarse, second-resolution keys).
//! - [`sampler`]: periodic CPU/memory `update` events ([`ResourceSampler`]).
//! - [`runtime`]: drives the sources: ledger append (group commit), then
//!   publish on the bus; hashing on worker threads.
//! - [`monitor`]: process-tree monitors ([`TreeMonitor`]): which events
//!   belong to a followed subtree and the correlation they carry.
//! - [`hash`]: SHA-256 of executables with a bounded, inode-keyed cache and
//!   no TOCTOU ([`Hasher`]).
//!
//! *Architecture invariant:* collector-core knows no OS-specific backend; it
//! depends on `daemoneye-lib` and the bus client only, and platform crates plug in through
//! [`EventSource`] and [`ProcessEnumerator`].

pub mod hash;
pub mod monitor;
pub mod poll;
pub mod runtime;
pub mod sampler;
pub mod source;
pub mod sysinfo_enum;

pub use hash::{FileIdentity, HashError, HashOutcome, HashStats, Hasher};
pub use monitor::TreeMonitor;
pub use poll::{PollSource, ProcessEnumerator};
pub use sampler::{ResourceSampler, Thresholds, Usage, UsageReader};
pub use source::{EventSink, EventSource, SourceError, SourceEvent, SourceFuture};
pub use sysinfo_enum::SysinfoEnumerator;
