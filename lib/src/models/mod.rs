//! Process identity, time conversion, the delta-merge rule and which
//! exited processes the table drops.
//!
//! *Architecture invariant:* process identity is the [`ProcessKey`], never the
//! bare pid. Kernel times are nanoseconds; SQL-visible times are Unix
//! milliseconds, converted only by [`time::ns_to_ms`].

mod alert;
mod key;
mod merge;
pub mod retention;
pub mod time;

pub use alert::{ALERT_FIELDS, alert_json, parse_severity, severity_name};
pub use key::{ProcessKey, ProcessKeyError, TICK_NS, boot_id};
pub use merge::{apply_event, merge_record};

use crate::proto::{EventSource, EventType};

/// The lowercase name used in SQL and JSON for an event type.
pub fn event_type_name(t: EventType) -> &'static str {
    match t {
        EventType::Unspecified => "unspecified",
        EventType::Exec => "exec",
        EventType::Fork => "fork",
        EventType::Exit => "exit",
        EventType::Snapshot => "snapshot",
        EventType::Update => "update",
        EventType::Gap => "gap",
    }
}

/// The lowercase name used in SQL, JSON, config and health for a source.
pub fn event_source_name(s: EventSource) -> &'static str {
    match s {
        EventSource::Unspecified => "unspecified",
        EventSource::Ebpf => "ebpf",
        EventSource::ProcConnector => "proc_connector",
        EventSource::Poll => "poll",
        EventSource::Procfs => "procfs",
        EventSource::Etw => "etw",
        EventSource::EndpointSecurity => "endpoint_security",
    }
}

/// Renders an argument vector as one command line, quoting arguments that
/// need it the way a POSIX shell would read them back.
pub fn join_command_line(args: &[String]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let plain =
            !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b) || b >= 0x80);
        if plain {
            out.push_str(a);
        } else {
            out.push('\'');
            out.push_str(&a.replace('\'', "'\\''"));
            out.push('\'');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_only_what_needs_it() {
        let args = vec!["sleep".into(), "3".into(), "a b".into(), "it's".into(), "".into()];
        assert_eq!(join_command_line(&args), r#"sleep 3 'a b' 'it'\''s' ''"#);
    }
}
