//! `bus-probe SOCKET UID GID`: a test helper for `tests/event_bus.rs`.
//!
//! Started as root, it drops to UID/GID (`setgroups([])`, `setgid`,
//! `setuid`), connects to the bus with `BusClient`, tries to publish on
//! privileged and restricted topics, subscribes to a restricted and a public
//! topic, waits for one `control.health.collector` heartbeat, and prints one
//! JSON object per line on stdout describing each outcome.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a test helper: JSON lines on stdout, usage errors on stderr"
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_eventbus::{BackpressurePolicy, BusClient, CorrelationMetadata};
use daemoneye_lib::proto::{CollectorStatus, TOPIC_COLLECTOR_STATUS};
use nix::unistd::{Gid, Uid, getegid, geteuid, setgid, setgroups, setuid};
use prost::Message;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(socket), Some(uid), Some(gid)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: bus-probe SOCKET UID GID");
        return ExitCode::from(2);
    };
    let (Ok(uid), Ok(gid)) = (uid.parse::<u32>(), gid.parse::<u32>()) else {
        eprintln!("bus-probe: UID and GID must be numbers");
        return ExitCode::from(2);
    };
    // Order matters: groups and gid while still root, then the uid.
    let dropped = setgroups(&[]).and_then(|()| setgid(Gid::from_raw(gid))).and_then(|()| setuid(Uid::from_raw(uid)));
    if let Err(e) = dropped {
        eprintln!("bus-probe: cannot drop to uid {uid} gid {gid}: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bus-probe: no runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(probe(PathBuf::from(socket)))
}

fn line(v: serde_json::Value) {
    println!("{v}");
}

async fn probe(socket: PathBuf) -> ExitCode {
    line(serde_json::json!({"euid": geteuid().as_raw(), "egid": getegid().as_raw()}));
    let client = match BusClient::connect(&socket, "bus-probe").await {
        Ok(c) => c,
        Err(e) => {
            line(serde_json::json!({"connect": false, "error": e.to_string()}));
            return ExitCode::from(1);
        }
    };
    let w = client.peer_identity();
    line(serde_json::json!({"connect": true, "peer_uid": w.peer_uid, "peer_gid": w.peer_gid}));
    for topic in [
        "events.process.lifecycle",
        "events.process.metadata",
        "control.collector.task",
        "control.collector.result",
        "control.agent.shutdown",
        "control.health.collector",
    ] {
        let corr = CorrelationMetadata::new("bus-probe");
        let r = client.publish_acked(topic, Bytes::from_static(b"forged"), "application/octet-stream", corr).await;
        line(serde_json::json!({
            "publish": topic,
            "ok": r.is_ok(),
            "error": r.err().map(|e| e.to_string()),
        }));
    }
    for pattern in ["events.process.lifecycle", "control.collector.task"] {
        let r = client.subscribe(pattern, BackpressurePolicy::Drop, 16).await;
        line(serde_json::json!({"subscribe": pattern, "ok": r.is_ok(), "error": r.err().map(|e| e.to_string())}));
    }
    let mut sub = match client.subscribe(TOPIC_COLLECTOR_STATUS, BackpressurePolicy::Drop, 16).await {
        Ok(s) => {
            line(serde_json::json!({"subscribe": TOPIC_COLLECTOR_STATUS, "ok": true}));
            s
        }
        Err(e) => {
            line(serde_json::json!({"subscribe": TOPIC_COLLECTOR_STATUS, "ok": false, "error": e.to_string()}));
            return ExitCode::from(1);
        }
    };
    match tokio::time::timeout(Duration::from_secs(15), sub.recv()).await {
        Ok(Some(d)) => {
            let status = CollectorStatus::decode(d.payload.as_ref()).ok();
            line(serde_json::json!({
                "received": d.topic,
                "content_type": d.content_type,
                "collector_pid": status.as_ref().map(|s| s.pid),
                "backend": status.map(|s| s.backend),
            }));
            ExitCode::SUCCESS
        }
        Ok(None) => {
            line(serde_json::json!({"received": null, "error": sub.end_reason()}));
            ExitCode::from(1)
        }
        Err(_) => {
            line(serde_json::json!({"received": null, "error": "no heartbeat within 15 s"}));
            ExitCode::from(1)
        }
    }
}
