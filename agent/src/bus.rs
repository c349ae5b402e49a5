//! The agent's side of the event bus set-up: `[bus]` configuration mapped to
//! a [`BrokerConfig`] (socket group, access rules), the statistics rendered
//! as the `BusHealth` message (for `daemoneye-cli health`), and the periodic
//! `control.health.bus` publisher.

use std::time::Duration;

use bytes::Bytes;
use daemoneye_eventbus::{
    AccessLevel, AccessPolicy, AccessRule, BrokerConfig, BrokerHandle, BrokerStats, CorrelationMetadata, LocalClient,
    Principal,
};
use daemoneye_lib::config::{BusAclRule, BusConfig};
use daemoneye_lib::models::time::now_ms;
use daemoneye_lib::proto::{
    BackpressurePolicy, BusHealth, BusSubscriberHealth, BusTopicHealth, CONTENT_TYPE_BUS_HEALTH, TOPIC_BUS_HEALTH,
};
use prost::Message;
use tokio_util::sync::CancellationToken;

/// What the API needs from the bus: statistics and detection tasks.
#[derive(Debug, Clone)]
pub struct BusServices {
    /// The broker (for statistics).
    pub broker: BrokerHandle,
    /// Detection tasks to procmond.
    pub tasks: crate::tasks::TaskClient,
}

/// A `[bus]` setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusConfigError {
    /// `bus.socket_group` names no group.
    #[error("bus.socket_group = {0:?}: no such group; create it (groupadd) or use a numeric gid")]
    UnknownGroup(String),
    /// `bus.acl[i]` has a bad level, principal or pattern.
    #[error("bus.acl rule {index} (pattern {pattern:?}): {reason}")]
    Rule {
        /// 0-based position in `bus.acl`.
        index: usize,
        /// The rule's pattern.
        pattern: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
}

/// Maps `[bus]` to the broker's configuration: frame size, queue capacity,
/// socket mode 0660 with the configured group, and the access policy
/// (the built-in one when `bus.acl` is empty).
pub fn broker_config(bus: &BusConfig) -> Result<BrokerConfig, BusConfigError> {
    let socket_gid = match bus.socket_group.trim() {
        "" => None,
        g => Some(resolve_group(g)?),
    };
    let acl = if bus.acl.is_empty() { AccessPolicy::default() } else { access_policy(&bus.acl)? };
    Ok(BrokerConfig {
        max_frame_size: usize::try_from(bus.max_frame_size.as_u64()).unwrap_or(usize::MAX),
        default_queue_capacity: bus.queue_capacity,
        socket_mode: 0o660,
        socket_gid,
        acl,
        ..BrokerConfig::default()
    })
}

/// The access policy of `[[bus.acl]]` rules, in order.
pub fn access_policy(rules: &[BusAclRule]) -> Result<AccessPolicy, BusConfigError> {
    let mut out = Vec::with_capacity(rules.len());
    for (index, r) in rules.iter().enumerate() {
        let err = |reason: String| BusConfigError::Rule { index, pattern: r.pattern.clone(), reason };
        daemoneye_eventbus::topic::validate_pattern(&r.pattern).map_err(|e| err(e.to_string()))?;
        let level = match r.level.to_ascii_lowercase().as_str() {
            "public" => AccessLevel::Public,
            "restricted" => AccessLevel::Restricted,
            "privileged" => AccessLevel::Privileged,
            other => return Err(err(format!("unknown level {other:?}: use public, restricted or privileged"))),
        };
        let principals = |list: &[String]| list.iter().map(|p| principal(p)).collect::<Result<Vec<_>, _>>();
        let publishers = principals(&r.publishers).map_err(err)?;
        let subscribers = principals(&r.subscribers).map_err(err)?;
        out.push(AccessRule::new(r.pattern.clone(), level, publishers, subscribers));
    }
    // Every pattern was validated above, so this cannot fail; map it anyway.
    AccessPolicy::new(out).map_err(|e| BusConfigError::Rule { index: 0, pattern: String::new(), reason: e.to_string() })
}

/// Parses one principal: `any`, `root`, `broker`, `uid:N`, `gid:N`,
/// `user:NAME`, `group:NAME`, `exe:PATH-or-NAME`.
fn principal(s: &str) -> Result<Principal, String> {
    let bad =
        || format!("unknown principal {s:?}: use any, root, broker, uid:N, gid:N, user:NAME, group:NAME or exe:PATH");
    match s.trim() {
        "any" | "*" => return Ok(Principal::Any),
        "root" => return Ok(Principal::Root),
        "broker" | "agent" => return Ok(Principal::BrokerUser),
        _ => {}
    }
    let (kind, value) = s.trim().split_once(':').ok_or_else(bad)?;
    let number = |v: &str| v.parse::<u32>().map_err(|_| format!("{s:?}: {v:?} is not a number"));
    match kind {
        "uid" => number(value).map(Principal::Uid),
        "gid" => number(value).map(Principal::Gid),
        "user" => crate::os::user_id(value).map(Principal::Uid).map_err(|e| format!("{s:?}: {e}")),
        "group" => resolve_group(value).map(Principal::Gid).map_err(|e| e.to_string()),
        "exe" if !value.is_empty() => Ok(Principal::Executable(value.to_owned())),
        _ => Err(bad()),
    }
}

fn resolve_group(g: &str) -> Result<u32, BusConfigError> {
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(gid);
    }
    crate::os::group_id(g).map_err(|_| BusConfigError::UnknownGroup(g.to_owned()))
}

/// The broker's statistics as the `BusHealth` message.
pub fn bus_health(stats: &BrokerStats) -> BusHealth {
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    BusHealth {
        connections: stats.connections_current,
        connections_total: stats.connections_total,
        connections_rejected: stats.connections_rejected,
        frames_rejected: stats.frames_rejected,
        access_denied: stats.access_denied,
        topics: stats
            .topics
            .iter()
            .map(|t| BusTopicHealth {
                topic: t.topic.clone(),
                published: t.published,
                delivered: t.delivered,
                dropped: t.dropped,
            })
            .collect(),
        subscribers: stats
            .subscribers
            .iter()
            .map(|s| BusSubscriberHealth {
                connection_id: s.connection_id,
                client_name: s.client_name.clone(),
                peer_uid: s.peer.uid,
                peer_pid: s.peer.pid,
                subscription_id: s.subscription_id,
                pattern: s.pattern.clone(),
                policy: policy_name(s.policy).to_owned(),
                capacity: s.capacity as u64,
                queue_depth: s.queue_depth as u64,
                delivered: s.delivered,
                dropped: s.dropped,
                latency_p50_us: us(s.latency.p50),
                latency_p99_us: us(s.latency.p99),
                latency_max_us: us(s.latency.max),
            })
            .collect(),
        time_ms: now_ms(),
    }
}

fn policy_name(p: BackpressurePolicy) -> &'static str {
    match p {
        BackpressurePolicy::Block => "block",
        BackpressurePolicy::Drop => "drop",
        BackpressurePolicy::Error => "error",
        BackpressurePolicy::Unspecified => "unspecified",
    }
}

/// Publishes the bus statistics on `control.health.bus` every `every` until
/// `cancel`.
pub async fn publish_health(broker: BrokerHandle, local: LocalClient, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        n += 1;
        let payload = Bytes::from(bus_health(&broker.stats()).encode_to_vec());
        let corr = CorrelationMetadata::new(format!("agent:bus-health:{n}")).with_stage("health");
        if let Err(e) = local.publish(TOPIC_BUS_HEALTH, payload, CONTENT_TYPE_BUS_HEALTH, corr).await {
            tracing::debug!(topic = TOPIC_BUS_HEALTH, error = %e, "bus statistics not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, level: &str, publishers: &[&str], subscribers: &[&str]) -> BusAclRule {
        BusAclRule {
            pattern: pattern.into(),
            level: level.into(),
            publishers: publishers.iter().map(|s| (*s).to_owned()).collect(),
            subscribers: subscribers.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn rules_map_in_order_with_principals() {
        let p = access_policy(&[
            rule("control.health.#", "public", &["root", "broker"], &["any"]),
            rule("events.#", "Restricted", &["exe:procmond", "uid:0"], &["gid:0", "group:root", "user:root"]),
        ])
        .unwrap();
        let rules = p.rules();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].level, AccessLevel::Public);
        assert_eq!(rules[0].subscribers, vec![Principal::Any]);
        assert_eq!(rules[1].level, AccessLevel::Restricted);
        assert_eq!(rules[1].publishers, vec![Principal::Executable("procmond".into()), Principal::Uid(0)]);
        assert_eq!(rules[1].subscribers, vec![Principal::Gid(0), Principal::Gid(0), Principal::Uid(0)]);
    }

    #[test]
    fn bad_rules_name_the_rule_and_the_fix() {
        let e = access_policy(&[rule("a.#", "public", &[], &[]), rule("b", "secret", &[], &[])]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("rule 1") && msg.contains("secret") && msg.contains("privileged"), "{msg}");
        let e = access_policy(&[rule("a", "public", &["wizard"], &[])]).unwrap_err().to_string();
        assert!(e.contains("wizard") && e.contains("uid:N"), "{e}");
        let e = access_policy(&[rule("a", "public", &[], &[]), rule("a.#.b", "public", &[], &[])]).unwrap_err();
        assert!(e.to_string().contains("rule 1"), "{e}");
    }

    #[test]
    fn socket_group_resolves_names_and_numbers() {
        let mut bus = daemoneye_lib::config::Config::load(&daemoneye_lib::config::LoadOptions {
            skip_system_files: true,
            ..Default::default()
        })
        .unwrap()
        .bus;
        assert_eq!(broker_config(&bus).unwrap().socket_gid, None);
        assert_eq!(broker_config(&bus).unwrap().socket_mode, 0o660);
        bus.socket_group = "root".into();
        assert_eq!(broker_config(&bus).unwrap().socket_gid, Some(0));
        bus.socket_group = "4242".into();
        assert_eq!(broker_config(&bus).unwrap().socket_gid, Some(4242));
        bus.socket_group = "no-such-group-here".into();
        let e = broker_config(&bus).unwrap_err().to_string();
        assert!(e.contains("no-such-group-here") && e.contains("groupadd"), "{e}");
    }
}
