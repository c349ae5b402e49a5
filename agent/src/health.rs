//! Shared health state: counters the pipeline and supervisor update and the
//! API reads. Plain atomics and a small mutex; no locks on the event path
//! beyond a relaxed increment.
//!
//! [`HealthSource::snapshot`] turns them (with the sinks, the store size,
//! each component's memory and CPU, and the bus statistics) into the one
//! `HealthResponse` that `health`, `metrics` and the metrics listener all
//! render.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use daemoneye_eventbus::BrokerHandle;
use daemoneye_lib::proto::{
    CollectorStatus, ComponentHealth, HealthResponse, HealthStatus, RuleAlertCount, SinkHealth,
};

use crate::pipeline::Shared;
use crate::procstat::{self, CpuSampler};
use crate::sinks::BreakerState;

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
    /// Last seq applied to the process table and the rules (the store has it
    /// at most `STORE_FLUSH_EVERY` later).
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

/// Everything a health snapshot reads. Cheap to clone (the API and the
/// metrics listener each hold one).
#[derive(Debug, Clone)]
pub struct HealthSource {
    shared: Arc<Shared>,
    broker: Option<BrokerHandle>,
    started_ms: i64,
    cpu: Arc<CpuSampler>,
}

impl HealthSource {
    /// A source over `shared` (and the bus statistics of `broker`, when the
    /// bus runs); the agent's start time is now.
    pub fn new(shared: Arc<Shared>, broker: Option<BrokerHandle>) -> Self {
        Self { shared, broker, started_ms: daemoneye_lib::models::time::now_ms(), cpu: Arc::default() }
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The health of the agent now. Reads `/proc` and the store file's
    /// size: call from a blocking-tolerant context (it is quick).
    pub fn snapshot(&self) -> HealthResponse {
        let shared = &self.shared;
        let h = &shared.health;
        let pm = h.procmond();
        let collector = h.collector();
        let rules = shared.rules();
        let (alive, total) = shared.table.read().map(|t| t.counts()).unwrap_or_default();
        let (sinks, rule_alerts) = {
            let alerts = shared.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut per_rule: Vec<RuleAlertCount> = alerts
                .raised_per_rule()
                .iter()
                .map(|(rule_id, n)| RuleAlertCount { rule_id: rule_id.clone(), alerts: *n })
                .collect();
            per_rule.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
            (alerts.delivery().snapshot(), per_rule)
        };
        let sinks: Vec<SinkHealth> = sinks
            .into_iter()
            .map(|s| SinkHealth {
                name: s.name,
                kind: s.kind.to_owned(),
                breaker: s.breaker.as_str().to_owned(),
                queue_depth: s.queue_depth,
                delivered: s.delivered,
                failed: s.failed,
                retried: s.retried,
                rejected: s.rejected,
                overflowed: s.overflowed,
            })
            .collect();

        let procmond_status = if pm.pid.is_some() { HealthStatus::Healthy } else { HealthStatus::Unhealthy };
        let procmond_detail = match (&pm.pid, &pm.error, &pm.last_exit) {
            (Some(_), _, _) => "running".to_owned(),
            (None, Some(err), _) => err.clone(),
            (None, None, Some(exit)) => format!("not running (last {exit})"),
            (None, None, None) => "not running".to_owned(),
        };
        let rules_failed = u32::try_from(rules.errors.len()).unwrap_or(u32::MAX);
        let rule_status = if rules_failed > 0 { HealthStatus::Degraded } else { HealthStatus::Healthy };
        let open: Vec<&str> =
            sinks.iter().filter(|s| s.breaker != BreakerState::Closed.as_str()).map(|s| s.name.as_str()).collect();
        let (sink_status, sink_detail) = if open.is_empty() {
            (HealthStatus::Healthy, format!("{} sink(s), all delivering", sinks.len()))
        } else {
            (HealthStatus::Degraded, format!("circuit breaker not closed: {}", open.join(", ")))
        };
        let me = std::process::id();
        let mut components = vec![
            self.component("agent", HealthStatus::Healthy, "running".into(), Some(me), 0, Some(self.started_ms)),
            self.component("procmond", procmond_status, procmond_detail, pm.pid, pm.restarts, pm.running_since_ms),
            self.component(
                "rules",
                rule_status,
                format!("{} loaded, {} failed", rules.rules.len(), rules_failed),
                None,
                0,
                None,
            ),
        ];
        components.push(self.component("sinks", sink_status, sink_detail, None, 0, None));
        let overall = components.iter().map(|c| c.status).max().unwrap_or(HealthStatus::Healthy as i32);
        HealthResponse {
            status: overall,
            components,
            backend: collector.as_ref().map(|c| c.backend.clone()).unwrap_or_default(),
            events_received: h.events_received.load(Relaxed),
            events_lost: collector.as_ref().map_or(0, |c| c.events_lost),
            last_applied_seq: h.last_applied_seq.load(Relaxed),
            rules_loaded: u32::try_from(rules.rules.len()).unwrap_or(u32::MAX),
            rules_failed,
            processes_alive: alive,
            processes_total: total,
            alerts_total: h.alerts_raised.load(Relaxed),
            events_per_second: collector.as_ref().map_or(0.0, |c| c.events_per_second),
            version: env!("CARGO_PKG_VERSION").into(),
            agent_started_ms: self.started_ms,
            bus: self.broker.as_ref().map(|b| crate::bus::bus_health(&b.stats())),
            sinks,
            store_bytes: std::fs::metadata(shared.store.path())
                .ok()
                .map(|m| m.len() + std::fs::metadata(shared.store.alerts_path()).map_or(0, |a| a.len())),
            ledger_head: collector.as_ref().map_or(0, |c| c.ledger_head),
            seq_gaps: h.seq_gaps.load(Relaxed),
            events_malformed: h.events_malformed.load(Relaxed),
            rule_errors: h.rule_errors.load(Relaxed),
            rule_alerts,
        }
    }

    fn component(
        &self,
        name: &str,
        status: HealthStatus,
        detail: String,
        pid: Option<u32>,
        restarts: u64,
        running_since_ms: Option<i64>,
    ) -> ComponentHealth {
        let usage = pid.and_then(procstat::read);
        ComponentHealth {
            name: name.into(),
            status: status as i32,
            detail,
            pid,
            restarts,
            running_since_ms,
            rss_bytes: usage.map(|u| u.rss_bytes),
            cpu_seconds: usage.map(|u| u.cpu_seconds),
            cpu_percent: pid.zip(usage).map(|(p, u)| self.cpu.percent(p, &u)),
        }
    }
}
