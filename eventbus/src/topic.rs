//! Topic names, subscription patterns and matching.
//!
//! A topic is 1 to 4 dot-separated segments of `[a-z0-9_-]+`, e.g.
//! `events.process.lifecycle`. A pattern may also use `+` (exactly one
//! segment) and `#` (zero or more segments, only as the last segment):
//! `events.+.lifecycle`, `events.process.#`, `#`. `events.process.#` matches
//! `events.process` itself as well (MQTT semantics).
//!
//! This module owns the grammar and matching only; which topics exist is
//! listed in [`known`], who may use them is [`crate::acl`]'s business.

/// Maximum number of segments in a topic or pattern.
pub const MAX_LEVELS: usize = 4;
/// Maximum length in bytes of a topic or pattern.
pub const MAX_TOPIC_LEN: usize = 255;

/// Why a topic or pattern was rejected.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic is empty.
    #[error("topic is empty; use dot-separated segments such as events.process.lifecycle")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`].
    #[error("topic is {0} bytes long; at most {MAX_TOPIC_LEN} are allowed")]
    TooLong(usize),
    /// More than [`MAX_LEVELS`] segments.
    #[error("topic has {0} levels; at most {MAX_LEVELS} are allowed")]
    TooManyLevels(usize),
    /// An empty segment (`a..b`, leading or trailing dot).
    #[error("segment {0} is empty (leading, trailing or doubled dot)")]
    EmptySegment(usize),
    /// A segment contains a character outside `[a-z0-9_-]`.
    #[error("segment {index} {segment:?} may contain only a-z, 0-9, '_' and '-'")]
    BadCharacter {
        /// 0-based segment index.
        index: usize,
        /// The segment.
        segment: String,
    },
    /// A wildcard in a topic that is published to.
    #[error("segment {0} is a wildcard; wildcards are allowed in subscription patterns only")]
    WildcardInTopic(usize),
    /// `#` not in last position, or a wildcard mixed with other characters.
    #[error(
        "segment {index} {segment:?} misuses a wildcard: '+' and '#' must be whole segments \
         and '#' must be the last one"
    )]
    BadWildcard {
        /// 0-based segment index.
        index: usize,
        /// The segment.
        segment: String,
    },
}

/// Validates a concrete topic (no wildcards), as used in `Publish`.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    for (index, segment) in checked_segments(topic)?.enumerate() {
        if segment == "+" || segment == "#" {
            return Err(TopicError::WildcardInTopic(index));
        }
        check_segment(index, segment)?;
    }
    Ok(())
}

/// Validates a subscription pattern (`+` and a trailing `#` allowed).
pub fn validate_pattern(pattern: &str) -> Result<(), TopicError> {
    let levels = checked_segments(pattern)?.count();
    for (index, segment) in pattern.split('.').enumerate() {
        match segment {
            "+" => {}
            "#" if index + 1 == levels => {}
            _ if segment.contains('+') || segment.contains('#') => {
                return Err(TopicError::BadWildcard { index, segment: segment.to_owned() });
            }
            _ => check_segment(index, segment)?,
        }
    }
    Ok(())
}

/// True if the (valid) `pattern` matches the (valid) `topic`.
///
/// Inputs are not validated here; invalid inputs give an unspecified but
/// panic-free answer.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(ps), Some(ts)) if ps == ts => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if some topic could match both patterns. Used by the access-control
/// check of wildcard subscriptions.
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if `pattern` contains a wildcard.
pub fn is_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|s| s == "+" || s == "#")
}

fn checked_segments(topic: &str) -> Result<std::str::Split<'_, char>, TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(topic.len()));
    }
    let levels = topic.split('.').count();
    if levels > MAX_LEVELS {
        return Err(TopicError::TooManyLevels(levels));
    }
    Ok(topic.split('.'))
}

fn check_segment(index: usize, segment: &str) -> Result<(), TopicError> {
    if segment.is_empty() {
        return Err(TopicError::EmptySegment(index));
    }
    let ok = segment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(TopicError::BadCharacter { index, segment: segment.to_owned() }) }
}

/// The topic hierarchy of DaemonEye (PRODUCT.md §7).
pub mod known {
    /// Process lifecycle deltas (exec, fork, exit, ...) from procmond.
    pub const PROCESS_LIFECYCLE: &str = "events.process.lifecycle";
    /// Process metadata updates (e.g. a late executable hash).
    pub const PROCESS_METADATA: &str = "events.process.metadata";
    /// Process tree snapshots and changes.
    pub const PROCESS_TREE: &str = "events.process.tree";
    /// Executable integrity findings.
    pub const PROCESS_INTEGRITY: &str = "events.process.integrity";
    /// Process anomalies.
    pub const PROCESS_ANOMALY: &str = "events.process.anomaly";
    /// Batched process events.
    pub const PROCESS_BATCH: &str = "events.process.batch";
    /// All process events.
    pub const PROCESS_ALL: &str = "events.process.#";
    /// Reserved: network events.
    pub const NETWORK_ALL: &str = "events.network.#";
    /// Reserved: filesystem events.
    pub const FILESYSTEM_ALL: &str = "events.filesystem.#";
    /// Reserved: performance events.
    pub const PERFORMANCE_ALL: &str = "events.performance.#";
    /// Detection tasks from the agent to collectors.
    pub const COLLECTOR_TASK: &str = "control.collector.task";
    /// Detection results from collectors to the agent.
    pub const COLLECTOR_RESULT: &str = "control.collector.result";
    /// Collector lifecycle and configuration.
    pub const COLLECTOR_ALL: &str = "control.collector.#";
    /// Agent orchestration and policy.
    pub const AGENT_ALL: &str = "control.agent.#";
    /// Health and diagnostics (public to subscribe).
    pub const HEALTH_ALL: &str = "control.health.#";
    /// All control topics.
    pub const CONTROL_ALL: &str = "control.#";
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_and_invalid_topics() {
        assert!(validate_topic("events.process.lifecycle").is_ok());
        assert!(validate_topic("a").is_ok());
        assert!(validate_topic("a.b-c.d_e.f9").is_ok());
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(validate_topic("a.b.c.d.e"), Err(TopicError::TooManyLevels(5)));
        assert_eq!(validate_topic("a..b"), Err(TopicError::EmptySegment(1)));
        assert_eq!(validate_topic("a.b."), Err(TopicError::EmptySegment(2)));
        assert!(matches!(validate_topic("Events.x"), Err(TopicError::BadCharacter { .. })));
        assert!(matches!(validate_topic("a b"), Err(TopicError::BadCharacter { .. })));
        assert_eq!(validate_topic("events.+"), Err(TopicError::WildcardInTopic(1)));
        assert!(validate_topic(&"a".repeat(300)).is_err());
    }

    #[test]
    fn valid_and_invalid_patterns() {
        for p in ["#", "+", "events.#", "events.+.lifecycle", "+.+.+.+", "a.b.c.#"] {
            assert!(validate_pattern(p).is_ok(), "{p}");
        }
        for p in ["#.a", "a.#.b", "a+", "a.b#", "a..#", "", "a.b.c.d.#"] {
            assert!(validate_pattern(p).is_err(), "{p}");
        }
    }

    #[test]
    fn matching_examples() {
        assert!(matches("events.+.lifecycle", "events.process.lifecycle"));
        assert!(matches("events.process.#", "events.process.lifecycle"));
        assert!(matches("events.process.#", "events.process"));
        assert!(matches("#", "control.health.x"));
        assert!(!matches("events.+", "events.process.lifecycle"));
        assert!(!matches("events.process.lifecycle", "events.process"));
        assert!(!matches("control.#", "events.process.lifecycle"));
    }

    #[test]
    fn overlap_examples() {
        assert!(patterns_overlap("control.#", "control.health.#"));
        assert!(patterns_overlap("+.health.x", "control.#"));
        assert!(!patterns_overlap("events.process.#", "control.#"));
        assert!(!patterns_overlap("a.b", "a.b.c"));
    }

    /// Reference matcher: a straightforward recursive definition.
    fn reference(pattern: &[&str], topic: &[&str]) -> bool {
        match (pattern.split_first(), topic.split_first()) {
            (None, None) => true,
            (Some((&"#", _)), _) => true,
            (Some((&"+", pr)), Some((_, tr))) => reference(pr, tr),
            (Some((p, pr)), Some((t, tr))) => p == t && reference(pr, tr),
            _ => false,
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_owned()), Just("b".to_owned()), Just("c-1".to_owned())]
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 1..=4).prop_map(|v| v.join("."))
    }

    fn pattern_strategy() -> impl Strategy<Value = String> {
        let seg = prop_oneof![3 => segment(), 1 => Just("+".to_owned())];
        (prop::collection::vec(seg, 0..=4), any::<bool>()).prop_filter_map("valid pattern", |(mut v, hash)| {
            if hash && v.len() < 4 {
                v.push("#".to_owned());
            }
            let p = v.join(".");
            validate_pattern(&p).is_ok().then_some(p)
        })
    }

    proptest! {
        #[test]
        fn matches_agrees_with_reference(p in pattern_strategy(), t in topic_strategy()) {
            prop_assert!(validate_topic(&t).is_ok());
            let ps: Vec<&str> = p.split('.').collect();
            let ts: Vec<&str> = t.split('.').collect();
            prop_assert_eq!(matches(&p, &t), reference(&ps, &ts), "pattern {} topic {}", p, t);
        }

        #[test]
        fn overlap_is_sound(a in pattern_strategy(), b in pattern_strategy(), t in topic_strategy()) {
            // Any topic matching both patterns implies they overlap.
            if matches(&a, &t) && matches(&b, &t) {
                prop_assert!(patterns_overlap(&a, &b));
            }
        }

        #[test]
        fn validators_never_panic(s in "\\PC{0,40}") {
            let _ = validate_topic(&s);
            let _ = validate_pattern(&s);
            let _ = matches(&s, &s);
        }
    }
}
