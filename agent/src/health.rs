//! Shared health state: counters the pipeline and supervisor update and the
//! API reads. Plain atomics and a small mutex; no locks on the event path
//! beyond a relaxed increment.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use daemoneye_lib::proto::CollectorStatus;

/// What the supervisor knows about procmond.
#[derive(Debug, Clone, Default)]
pub struct ProcmondState {
    /// Running pid, when running.
    pub pid: Option<u32>,
    /// Restarts since the agent started.
    pub restarts: u64,
    /// When the current process started (Unix ms).
    pub running_since_ms: Option<i64>,
    /// The last exit, rendered ("exit code 1", "signal 9").
    pub last_exit: Option<String>,
    /// Why it is not running, when it is not.
    pub error: Option<String>,
}

/// Agent-wide health counters.
#[derive(Debug, Default)]
pub struct Health {
    /// Events taken off the bus or the ledger.
    pub events_received: AtomicU64,
    /// Payloads that did not decode.
    pub events_malformed: AtomicU64,
    /// Sequence gaps seen on the bus (recovered from the ledger when it can).
    pub seq_gaps: AtomicU64,
    /// Last seq committed to the store.
    pub last_applied_seq: AtomicU64,
    /// Rules loaded / failed.
    pub rules_loaded: AtomicU32,
    /// Rule files or rules that failed to load.
    pub rules_failed: AtomicU32,
    /// Rule evaluations that failed at run time.
    pub rule_errors: AtomicU64,
    /// Alerts raised (new, not repeats).
    pub alerts_raised: AtomicU64,
    /// procmond, as the supervisor sees it.
    pub procmond: Mutex<ProcmondState>,
    /// procmond's own last report.
    pub collector: Mutex<Option<CollectorStatus>>,
}

impl Health {
    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// A copy of the supervisor state.
    pub fn procmond(&self) -> ProcmondState {
        self.procmond.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Updates the supervisor state.
    pub fn set_procmond(&self, f: impl FnOnce(&mut ProcmondState)) {
        if let Ok(mut g) = self.procmond.lock() {
            f(&mut g);
        }
    }

    /// The collector's last report.
    pub fn collector(&self) -> Option<CollectorStatus> {
        self.collector.lock().ok().and_then(|g| g.clone())
    }

    /// Stores the collector's report.
    pub fn set_collector(&self, s: CollectorStatus) {
        if let Ok(mut g) = self.collector.lock() {
            *g = Some(s);
        }
    }
}
