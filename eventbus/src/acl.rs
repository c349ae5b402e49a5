//! Access control: who may publish or subscribe to which topics.
//!
//! The broker decides with the peer's identity taken from the socket
//! (`SO_PEERCRED`: uid, gid, pid) and `/proc/<pid>/exe`, never from what the
//! client says in `Hello`. On Windows the identity comes from the pipe
//! client's process and token; SYSTEM and elevated administrators are uid 0
//! (`root`), others the relative id of their SID (see
//! [`crate::transport::windows_peer_ids`]). An [`AccessPolicy`] is an ordered list of
//! [`AccessRule`]s; for a concrete topic the *first* rule whose pattern
//! matches decides, and a topic that no rule matches is denied.
//!
//! Levels:
//! - [`AccessLevel::Public`] and [`AccessLevel::Restricted`]: the rule's
//!   principal lists decide (`Principal::Any` makes an operation public).
//! - [`AccessLevel::Privileged`]: the lists decide *and* the peer must run as
//!   root or as the broker's own user, whatever the lists say.
//!
//! Wildcard subscriptions are accepted when at least one rule whose pattern
//! overlaps them allows the peer to subscribe; every delivery is then checked
//! against the concrete topic, so a `control.#` subscription by an
//! unprivileged peer only ever sees `control.health.*`.

use std::fmt;
use std::path::PathBuf;

use crate::error::BusError;
use crate::topic;

/// Sensitivity label of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLevel {
    /// Meant to be open (health topics).
    Public,
    /// Limited to named components (process events).
    Restricted,
    /// Limited to named components running as root or as the broker's user.
    Privileged,
}

/// Who a rule admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Every peer.
    Any,
    /// Peers with uid 0.
    Root,
    /// Peers running as the broker's own (effective) user.
    BrokerUser,
    /// Peers with this uid.
    Uid(u32),
    /// Peers with this primary gid (supplementary groups are not visible
    /// through `SO_PEERCRED`).
    Gid(u32),
    /// Peers whose `/proc/<pid>/exe` is this path (when it contains a path
    /// separator) or has this file name (on Windows with `.exe`). Needs the
    /// broker to be allowed to read the link (same user or CAP_SYS_PTRACE);
    /// otherwise it never matches.
    Executable(String),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("anyone"),
            Self::Root => f.write_str("root"),
            Self::BrokerUser => f.write_str("the broker's user"),
            Self::Uid(u) => write!(f, "uid {u}"),
            Self::Gid(g) => write!(f, "gid {g}"),
            Self::Executable(e) => write!(f, "executable {e}"),
        }
    }
}

/// One rule of an [`AccessPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    /// Topic pattern the rule covers (wildcards allowed).
    pub pattern: String,
    /// Sensitivity label.
    pub level: AccessLevel,
    /// Who may publish to matching topics.
    pub publishers: Vec<Principal>,
    /// Who may subscribe to matching topics.
    pub subscribers: Vec<Principal>,
}

impl AccessRule {
    /// A rule with explicit principal lists.
    pub fn new(
        pattern: impl Into<String>,
        level: AccessLevel,
        publishers: Vec<Principal>,
        subscribers: Vec<Principal>,
    ) -> Self {
        Self { pattern: pattern.into(), level, publishers, subscribers }
    }
}

/// The identity the broker observed for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Effective uid of the peer at connect time.
    pub uid: u32,
    /// Effective gid of the peer at connect time.
    pub gid: u32,
    /// Pid of the peer (0 if unknown).
    pub pid: u32,
    /// `/proc/<pid>/exe`, when readable.
    pub exe: Option<PathBuf>,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {} gid {} pid {}", self.uid, self.gid, self.pid)?;
        if let Some(exe) = &self.exe {
            write!(f, " ({})", exe.display())?;
        }
        Ok(())
    }
}

/// What a peer wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Publish to a topic.
    Publish,
    /// Subscribe to (receive from) a topic.
    Subscribe,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Publish => "publish to",
            Self::Subscribe => "subscribe to",
        })
    }
}

/// Ordered access rules; the first rule matching a topic decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    rules: Vec<AccessRule>,
}

impl Default for AccessPolicy {
    /// The DaemonEye default:
    /// - `control.health.#` public to subscribe, published by root or the broker's user;
    /// - `control.#` privileged: root or the broker's user;
    /// - `events.process.#` restricted: root (procmond) or the broker's user;
    /// - `#` (everything else, incl. the reserved `events.*`): restricted the same way.
    fn default() -> Self {
        let trusted = || vec![Principal::Root, Principal::BrokerUser];
        Self {
            rules: vec![
                AccessRule::new(topic::known::HEALTH_ALL, AccessLevel::Public, trusted(), vec![Principal::Any]),
                AccessRule::new(topic::known::CONTROL_ALL, AccessLevel::Privileged, trusted(), trusted()),
                AccessRule::new(topic::known::PROCESS_ALL, AccessLevel::Restricted, trusted(), trusted()),
                AccessRule::new("#", AccessLevel::Restricted, trusted(), trusted()),
            ],
        }
    }
}

impl AccessPolicy {
    /// A policy from ordered rules; every pattern must be valid.
    pub fn new(rules: Vec<AccessRule>) -> Result<Self, BusError> {
        for r in &rules {
            topic::validate_pattern(&r.pattern)
                .map_err(|source| BusError::InvalidTopic { topic: r.pattern.clone(), source })?;
        }
        Ok(Self { rules })
    }

    /// A policy that lets everyone do everything (development and tests only).
    pub fn allow_all() -> Self {
        Self { rules: vec![AccessRule::new("#", AccessLevel::Public, vec![Principal::Any], vec![Principal::Any])] }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[AccessRule] {
        &self.rules
    }

    /// The rule that decides for a concrete topic.
    pub fn rule_for(&self, topic_name: &str) -> Option<&AccessRule> {
        self.rules.iter().find(|r| topic::matches(&r.pattern, topic_name))
    }

    /// Checks `op` on a concrete topic. `Err` carries a message for the peer.
    pub fn check_topic(
        &self,
        op: Operation,
        topic_name: &str,
        peer: &PeerIdentity,
        broker_uid: u32,
    ) -> Result<(), String> {
        let Some(rule) = self.rule_for(topic_name) else {
            return Err(format!(
                "{peer} may not {op} {topic_name:?}: no access rule covers this topic; \
                 add one to the bus access policy"
            ));
        };
        if rule_allows(rule, op, peer, broker_uid) {
            return Ok(());
        }
        Err(deny_message(rule, op, topic_name, peer))
    }

    /// Checks a subscription pattern (see the module docs for wildcards).
    pub fn check_subscribe(&self, pattern: &str, peer: &PeerIdentity, broker_uid: u32) -> Result<(), String> {
        if !topic::is_wildcard(pattern) {
            return self.check_topic(Operation::Subscribe, pattern, peer, broker_uid);
        }
        let mut overlapping = self.rules.iter().filter(|r| topic::patterns_overlap(&r.pattern, pattern)).peekable();
        let Some(first) = overlapping.peek().copied() else {
            return Err(format!("{peer} may not subscribe to {pattern:?}: no access rule covers these topics"));
        };
        if overlapping.any(|r| rule_allows(r, Operation::Subscribe, peer, broker_uid)) {
            Ok(())
        } else {
            Err(deny_message(first, Operation::Subscribe, pattern, peer))
        }
    }
}

fn rule_allows(rule: &AccessRule, op: Operation, peer: &PeerIdentity, broker_uid: u32) -> bool {
    if rule.level == AccessLevel::Privileged && peer.uid != 0 && peer.uid != broker_uid {
        return false;
    }
    let list = match op {
        Operation::Publish => &rule.publishers,
        Operation::Subscribe => &rule.subscribers,
    };
    list.iter().any(|p| principal_matches(p, peer, broker_uid))
}

fn principal_matches(p: &Principal, peer: &PeerIdentity, broker_uid: u32) -> bool {
    match p {
        Principal::Any => true,
        Principal::Root => peer.uid == 0,
        Principal::BrokerUser => peer.uid == broker_uid,
        Principal::Uid(u) => peer.uid == *u,
        Principal::Gid(g) => peer.gid == *g,
        Principal::Executable(name) => peer.exe.as_ref().is_some_and(|exe| {
            if name.chars().any(std::path::is_separator) {
                exe.as_os_str() == name.as_str()
            } else {
                exe.file_name().is_some_and(|f| f == name.as_str())
            }
        }),
    }
}

fn deny_message(rule: &AccessRule, op: Operation, what: &str, peer: &PeerIdentity) -> String {
    let list = match op {
        Operation::Publish => &rule.publishers,
        Operation::Subscribe => &rule.subscribers,
    };
    let who: Vec<String> = list.iter().map(ToString::to_string).collect();
    let who = if who.is_empty() { "nobody".to_owned() } else { who.join(", ") };
    let extra =
        if rule.level == AccessLevel::Privileged { " (privileged: root or the broker's user only)" } else { "" };
    format!(
        "{peer} may not {op} {what:?}: rule {:?} ({:?}) allows {who}{extra}; run the client as \
         an allowed user or change the bus access policy",
        rule.pattern, rule.level
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> PeerIdentity {
        PeerIdentity { uid, gid: uid, pid: 1, exe: Some(PathBuf::from("/usr/bin/procmond")) }
    }

    #[test]
    fn default_policy() {
        let p = AccessPolicy::default();
        let broker = 500;
        for uid in [0, 500] {
            assert!(p.check_topic(Operation::Publish, "events.process.lifecycle", &peer(uid), broker).is_ok());
            assert!(p.check_topic(Operation::Publish, "control.collector.task", &peer(uid), broker).is_ok());
        }
        let other = peer(1000);
        assert!(p.check_topic(Operation::Publish, "events.process.lifecycle", &other, broker).is_err());
        assert!(p.check_topic(Operation::Subscribe, "events.process.lifecycle", &other, broker).is_err());
        assert!(p.check_topic(Operation::Subscribe, "control.health.status", &other, broker).is_ok());
        assert!(p.check_topic(Operation::Publish, "control.health.status", &other, broker).is_err());
        // Wildcards: control.# overlaps the public health rule.
        assert!(p.check_subscribe("control.#", &other, broker).is_ok());
        assert!(p.check_subscribe("events.#", &other, broker).is_err());
        assert!(p.check_subscribe("control.collector.task", &other, broker).is_err());
    }

    #[test]
    fn privileged_guard_and_executables() {
        let rule = AccessRule::new(
            "control.#",
            AccessLevel::Privileged,
            vec![Principal::Executable("procmond".into())],
            vec![Principal::Any],
        );
        let p = AccessPolicy::new(vec![rule]).unwrap();
        assert!(p.check_topic(Operation::Publish, "control.x", &peer(0), 500).is_ok());
        // Right executable, wrong user: the privileged guard refuses.
        let err = p.check_topic(Operation::Publish, "control.x", &peer(1000), 500).unwrap_err();
        assert!(err.contains("privileged"), "{err}");
        let mut other = peer(0);
        other.exe = Some(PathBuf::from("/usr/bin/bash"));
        assert!(p.check_topic(Operation::Publish, "control.x", &other, 500).is_err());
        assert!(p.check_topic(Operation::Publish, "events.x", &peer(0), 500).is_err());
    }

    #[test]
    fn invalid_rule_patterns_are_rejected() {
        let rule = AccessRule::new("a.#.b", AccessLevel::Public, vec![], vec![]);
        assert!(AccessPolicy::new(vec![rule]).is_err());
    }
}
