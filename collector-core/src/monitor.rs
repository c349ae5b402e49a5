//! Process-tree monitors (MONITOR_PROCESS_TREE): which process keys belong to
//! a followed subtree, and the correlation their events are published with.
//!
//! A monitor starts from the keys of a root process and its live
//! descendants. The publisher asks [`TreeMonitor::tag`] for every event: an
//! event of a monitored key, or an exec/fork/snapshot whose `parent_key` is
//! monitored (the subtree grows), gets a child of the monitor's correlation
//! (same workflow id — the monitor's id — stage and tags, parent = the
//! monitor). An exit ends the key's membership after its event is tagged.
//!
//! Bounded: at most [`MAX_MONITORS`] monitors and [`MAX_KEYS`] keys in all;
//! beyond that new members are not followed (counted in
//! [`TreeMonitor::keys_refused`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use daemoneye_lib::proto::{Correlation, EventType, ProcessEvent};

/// Most monitors at once.
pub const MAX_MONITORS: usize = 64;
/// Most followed process keys, over all monitors.
pub const MAX_KEYS: usize = 65_536;

/// Shared between the task handler (start/stop) and the publisher (tag).
#[derive(Debug, Default)]
pub struct TreeMonitor {
    state: Mutex<State>,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// monitor id -> its correlation.
    monitors: HashMap<String, Correlation>,
    /// process key -> monitor id.
    keys: HashMap<String, String>,
}

/// Why a monitor could not start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MonitorError {
    /// [`MAX_MONITORS`] are running.
    #[error("{MAX_MONITORS} process tree monitors are already running; stop one first")]
    TooMany,
}

impl TreeMonitor {
    /// Starts monitor `id` over `keys` (the root first, then its live
    /// descendants); events of the subtree are tagged with children of
    /// `correlation`. A key already followed by another monitor moves here.
    pub fn start(&self, id: &str, correlation: Correlation, keys: &[String]) -> Result<(), MonitorError> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !s.monitors.contains_key(id) && s.monitors.len() >= MAX_MONITORS {
            return Err(MonitorError::TooMany);
        }
        s.monitors.insert(id.to_owned(), correlation);
        for k in keys {
            if s.keys.len() >= MAX_KEYS && !s.keys.contains_key(k) {
                self.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            s.keys.insert(k.clone(), id.to_owned());
        }
        Ok(())
    }

    /// Stops monitor `id`; true if it was running.
    pub fn stop(&self, id: &str) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.keys.retain(|_, m| m != id);
        s.monitors.remove(id).is_some()
    }

    /// Number of running monitors.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).monitors.len()
    }

    /// True when no monitor runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Subtree members not followed because of [`MAX_KEYS`].
    pub fn keys_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The correlation to publish `ev` with when it belongs to a monitored
    /// subtree: a child of the monitor's correlation with id `correlation_id`.
    pub fn tag(&self, ev: &ProcessEvent, correlation_id: &str) -> Option<Correlation> {
        let rec = ev.process.as_ref()?;
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.monitors.is_empty() {
            return None;
        }
        let monitor = match s.keys.get(&rec.process_key) {
            Some(m) => m.clone(),
            None => {
                let grows = matches!(ev.event_type(), EventType::Exec | EventType::Fork | EventType::Snapshot);
                let parent = rec.parent_key.as_ref().filter(|_| grows)?;
                let m = s.keys.get(parent)?.clone();
                if s.keys.len() >= MAX_KEYS {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    s.keys.insert(rec.process_key.clone(), m.clone());
                }
                m
            }
        };
        if ev.event_type() == EventType::Exit {
            s.keys.remove(&rec.process_key);
        }
        let root = s.monitors.get(&monitor)?;
        Some(Correlation {
            correlation_id: correlation_id.to_owned(),
            parent_id: Some(root.correlation_id.clone()),
            workflow_id: root.workflow_id.clone().or_else(|| Some(root.correlation_id.clone())),
            stage: root.stage.clone(),
            tags: root.tags.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemoneye_lib::proto::ProcessRecord;

    fn ev(t: EventType, key: &str, parent: Option<&str>) -> ProcessEvent {
        ProcessEvent {
            event_type: t as i32,
            process: Some(ProcessRecord {
                process_key: key.into(),
                parent_key: parent.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn corr(id: &str) -> Correlation {
        Correlation {
            correlation_id: id.into(),
            workflow_id: Some(id.into()),
            stage: Some("monitor".into()),
            tags: [("monitor".to_owned(), id.to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn follows_the_subtree_and_forgets_exits() {
        let m = TreeMonitor::default();
        m.start("mon-1", corr("mon-1"), &["root".into()]).unwrap();
        assert!(m.tag(&ev(EventType::Exec, "other", Some("x")), "c0").is_none());
        let c = m.tag(&ev(EventType::Fork, "child", Some("root")), "c1").unwrap();
        assert_eq!(c.correlation_id, "c1");
        assert_eq!(c.parent_id.as_deref(), Some("mon-1"));
        assert_eq!(c.workflow_id.as_deref(), Some("mon-1"));
        assert_eq!(c.tags["monitor"], "mon-1");
        // Grandchild through the child; an update of the child is tagged.
        assert!(m.tag(&ev(EventType::Exec, "grand", Some("child")), "c2").is_some());
        assert!(m.tag(&ev(EventType::Update, "child", None), "c3").is_some());
        // An update never adds a member.
        assert!(m.tag(&ev(EventType::Update, "stranger", Some("root")), "c4").is_none());
        // Exit is tagged once, then the key is gone.
        assert!(m.tag(&ev(EventType::Exit, "grand", Some("child")), "c5").is_some());
        assert!(m.tag(&ev(EventType::Update, "grand", None), "c6").is_none());
        assert!(m.stop("mon-1"));
        assert!(m.tag(&ev(EventType::Update, "child", None), "c7").is_none());
        assert!(!m.stop("mon-1"));
        assert!(m.is_empty());
    }

    #[test]
    fn monitors_are_bounded() {
        let m = TreeMonitor::default();
        for i in 0..MAX_MONITORS {
            m.start(&format!("m{i}"), corr("x"), &[]).unwrap();
        }
        assert_eq!(m.start("one-more", corr("y"), &[]), Err(MonitorError::TooMany));
        // Restarting an existing id is fine.
        assert!(m.start("m0", corr("x"), &[]).is_ok());
    }
}
