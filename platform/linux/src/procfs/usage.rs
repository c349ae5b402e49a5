//! The resource sampler's reader on Linux: one `/proc/<pid>/stat` per
//! process gives its key (start time), CPU time and resident memory.

use std::sync::Arc;

use collector_core::{Usage, UsageReader};
use daemoneye_lib::models::{ProcessKey, TICK_NS};

use super::{ProcfsError, ProcfsReader};

/// Reads every process's CPU time and memory for
/// [`collector_core::ResourceSampler`].
#[derive(Debug, Clone)]
pub struct UsageFromProc {
    reader: Arc<ProcfsReader>,
}

impl UsageFromProc {
    /// A usage reader over `reader`'s proc root.
    pub fn new(reader: Arc<ProcfsReader>) -> Self {
        Self { reader }
    }
}

impl UsageReader for UsageFromProc {
    fn read(&mut self) -> Vec<Usage> {
        let r = &self.reader;
        let pids = match r.pids() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list processes for resource sampling");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(pids.len());
        for pid in pids {
            match r.stat(pid) {
                Ok(st) => out.push(Usage {
                    pid,
                    start: st.start_ticks,
                    cpu_time_ns: st.cpu_ticks.saturating_mul(TICK_NS),
                    memory_bytes: st.rss_pages.saturating_mul(r.page_size),
                }),
                Err(ProcfsError::Gone(_)) => {}
                Err(e) => tracing::debug!(pid, error = %e, "process skipped by resource sampling"),
            }
        }
        out
    }

    fn key(&self, usage: &Usage) -> String {
        ProcessKey::from_ticks(&self.reader.boot_id, usage.pid, usage.start).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process is read with its own key, some memory, and CPU time
    /// that grows as it works.
    #[test]
    fn reads_this_process() {
        let reader = Arc::new(ProcfsReader::new().unwrap());
        let me = std::process::id();
        let key = reader.key_of(me).unwrap().to_string();
        let mut usage = UsageFromProc::new(Arc::clone(&reader));
        let find = |all: Vec<Usage>| all.into_iter().find(|u| u.pid == me).unwrap();
        let before = find(usage.read());
        assert_eq!(usage.key(&before), key);
        assert!(before.memory_bytes > 1 << 20, "{} bytes resident", before.memory_bytes);
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(7));
        }
        std::hint::black_box(x);
        let after = find(usage.read());
        assert!(after.cpu_time_ns >= before.cpu_time_ns + 50_000_000, "{before:?} -> {after:?}");
    }
}
