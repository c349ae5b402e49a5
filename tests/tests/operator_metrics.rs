//! Issue #7 (health and metrics), against the real agent (poll backend):
//! `metrics` as valid Prometheus text, the metrics listener over plain TCP
//! when configured and absent by default, non-loopback refused; no escape
//! codes without a terminal or with NO_COLOR.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::collections::{BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use daemoneye_tests::{Agent, AgentOptions, bin, wait_for};

/// Runs the CLI against `agent` with extra environment.
fn cli_env(agent: &Agent, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin("daemoneye-cli"));
    cmd.arg("--data-dir").arg(agent.data_dir()).args(args).env_remove("DAEMONEYE_SOCKET").env_remove("NO_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// One sample: metric name, label text, value.
type Sample = (String, String, f64);

/// Parses Prometheus text format 0.0.4 line by line; returns family -> type
/// and the samples. Panics on a malformed line.
fn parse_prometheus(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let mut types = HashMap::new();
    let mut helps = BTreeSet::new();
    let mut samples = Vec::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(name_ok(name) && helps.insert(name.to_owned()), "bad or repeated HELP: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name_ok(name), "{line}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "repeated TYPE: {line}");
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line: {line:?}");
            let (name, rest) = match line.find('{') {
                Some(i) => {
                    let close = line.rfind('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                    let labels = &line[i + 1..close];
                    // label="value" pairs; values escape \\ \" \n.
                    let mut chars = labels.chars().peekable();
                    while chars.peek().is_some() {
                        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                        assert!(name_ok(&key), "bad label name {key:?} in {line}");
                        assert_eq!(chars.next(), Some('"'), "{line}");
                        loop {
                            match chars.next() {
                                Some('\\') => assert!(matches!(chars.next(), Some('\\' | '"' | 'n')), "{line}"),
                                Some('"') => break,
                                Some(_) => {}
                                None => panic!("unterminated label value: {line}"),
                            }
                        }
                        match chars.next() {
                            Some(',') | None => {}
                            other => panic!("unexpected {other:?} after a label in {line}"),
                        }
                    }
                    (&line[..i], (labels.to_owned(), line[close + 1..].trim()))
                }
                None => {
                    let (n, v) = line.split_once(' ').unwrap();
                    (n, (String::new(), v.trim()))
                }
            };
            let value: f64 = match rest.1 {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            let kind = types.get(name).unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            samples.push((name.to_owned(), rest.0, value));
        }
    }
    (types, samples)
}

/// TCP ports `pid` listens on (its socket inodes in /proc/net/tcp{,6}).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter_map(|l| l.to_str().and_then(|s| s.strip_prefix("socket:[")).map(|s| s.trim_end_matches(']').to_owned()))
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; st 0A is LISTEN; inode is field 9.
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                ports.push(u16::from_str_radix(f[1].rsplit(':').next().unwrap(), 16).unwrap());
            }
        }
    }
    ports
}

#[test]
fn health_metrics_and_colour() {
    let agent = Agent::start(AgentOptions::default());
    // Health: sinks, store size, memory and CPU per component; the exit code
    // follows the status.
    let health = wait_for(Duration::from_secs(30), || {
        let h = agent.cli_json(&["health"]);
        let procmond_rss = h["components"].as_array()?.iter().find(|c| c["name"] == "procmond")?["rss_bytes"].as_u64();
        procmond_rss.is_some().then_some(h)
    })
    .expect("procmond's memory never showed in health");
    let comp = |n: &str| health["components"].as_array().unwrap().iter().find(|c| c["name"] == n).unwrap().clone();
    assert!(comp("agent")["rss_bytes"].as_u64().unwrap() > 0, "{health}");
    assert!(comp("agent")["cpu_seconds"].as_f64().is_some(), "{health}");
    assert!(comp("agent")["cpu_percent"].as_f64().unwrap() >= 0.0, "{health}");
    assert!(comp("procmond")["cpu_seconds"].as_f64().is_some(), "{health}");
    assert!(health["store_bytes"].as_u64().unwrap() > 0, "{health}");
    let sink = &health["sinks"][0];
    assert_eq!(sink["name"], "stdout", "{health}");
    assert_eq!(sink["breaker"], "closed", "{health}");
    assert!(sink["queue_depth"].is_u64() && sink["delivered"].is_u64() && sink["retried"].is_u64());
    let code = agent.cli(&["health"]).status.code().unwrap();
    let status = agent.cli_json(&["health"])["status"].clone();
    let want = match status.as_str().unwrap() {
        "healthy" => 0,
        "degraded" => 1,
        _ => 2,
    };
    assert_eq!(code, want, "health exit code vs status {status}");

    // Metrics: valid exposition with the expected families and labels (once
    // procmond has published, so that its topic has counters).
    let (text, types, samples) = wait_for(Duration::from_secs(30), || {
        let text = agent.cli_ok(&["metrics"]);
        let (types, samples) = parse_prometheus(&text);
        let published = samples.iter().any(|(n, l, _)| {
            n == "daemoneye_bus_topic_published_total" && l.contains("topic=\"events.process.lifecycle\"")
        });
        published.then_some((text, types, samples))
    })
    .expect("procmond never published process events");
    for (family, kind) in [
        ("daemoneye_events_received_total", "counter"),
        ("daemoneye_events_lost_total", "counter"),
        ("daemoneye_events_per_second", "gauge"),
        ("daemoneye_last_applied_seq", "gauge"),
        ("daemoneye_ledger_head_seq", "gauge"),
        ("daemoneye_rules_loaded", "gauge"),
        ("daemoneye_rules_failed", "gauge"),
        ("daemoneye_alerts_total", "counter"),
        ("daemoneye_store_size_bytes", "gauge"),
        ("daemoneye_component_resident_memory_bytes", "gauge"),
        ("daemoneye_component_cpu_seconds_total", "counter"),
        ("daemoneye_sink_delivered_total", "counter"),
        ("daemoneye_sink_queue_depth", "gauge"),
        ("daemoneye_sink_breaker_state", "gauge"),
        ("daemoneye_bus_topic_published_total", "counter"),
        ("daemoneye_health_status", "gauge"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(kind), "{family} in:\n{text}");
    }
    let has = |name: &str, label: &str| samples.iter().any(|(n, l, _)| n == name && l.contains(label));
    assert!(has("daemoneye_component_resident_memory_bytes", "component=\"agent\""), "{text}");
    assert!(has("daemoneye_component_resident_memory_bytes", "component=\"procmond\""), "{text}");
    assert!(has("daemoneye_sink_delivered_total", "sink=\"stdout\""), "{text}");
    assert!(has("daemoneye_sink_breaker_state", "state=\"closed\""), "{text}");
    assert!(has("daemoneye_bus_topic_published_total", "topic=\"events.process.lifecycle\""), "{text}");

    // No listener unless configured.
    assert!(listening_ports(agent.pid()).is_empty(), "the agent listens on TCP without agent.metrics_listen");
    assert!(!agent.stderr().contains("metrics listening"));

    // Colour: none without a terminal or with NO_COLOR; --color always forces it.
    for (args, env) in [
        (&["health"][..], &[][..]),
        (&["health"][..], &[("NO_COLOR", "1")][..]),
        (&["health", "--color", "auto"][..], &[("NO_COLOR", "1")][..]),
        (&["rules", "list"][..], &[][..]),
        (&["alerts", "list"][..], &[][..]),
        (&["processes", "tree"][..], &[][..]),
    ] {
        let out = cli_env(&agent, args, env);
        assert!(!out.stdout.is_empty(), "{args:?}");
        assert!(!out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b), "escape codes from {args:?} {env:?}");
    }
    let forced = cli_env(&agent, &["health", "--color", "always"], &[]);
    assert!(forced.stdout.contains(&0x1b), "--color always gave no colour");
    let never = cli_env(&agent, &["health", "--color", "always", "--no-color"], &[]);
    assert!(!never.stdout.contains(&0x1b));
}

#[test]
fn metrics_listener_when_configured_and_loopback_only() {
    // Non-loopback: `config validate` and the agent refuse it, naming the key.
    let scratch = tempfile::tempdir().unwrap();
    let bad = Command::new(bin("daemoneye-cli"))
        .args(["--data-dir", scratch.path().to_str().unwrap(), "config", "validate"])
        .env("DAEMONEYE_AGENT__METRICS_LISTEN", "0.0.0.0:9464")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("agent.metrics_listen") && err.contains("loopback"), "{err}");
    let agent_out = Command::new(bin("daemoneye-agent"))
        .args(["--data-dir", scratch.path().to_str().unwrap(), "--no-system-config", "--backend", "poll"])
        .env("DAEMONEYE_AGENT__METRICS_LISTEN", "0.0.0.0:9464")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!agent_out.status.success());
    assert!(String::from_utf8_lossy(&agent_out.stderr).contains("loopback"));

    // A free loopback port (released just before the agent binds it).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let agent = Agent::start(AgentOptions {
        env: vec![("DAEMONEYE_AGENT__METRICS_LISTEN".into(), format!("127.0.0.1:{port}"))],
        ..Default::default()
    });
    let response = wait_for(Duration::from_secs(20), || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        Some(buf)
    })
    .expect("nothing answered on the metrics port");
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    // The body may be chunked: parse only once de-chunked.
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    let (http_types, _) = parse_prometheus(&body);
    let (cli_types, _) = parse_prometheus(&agent.cli_ok(&["metrics"]));
    assert_eq!(http_types, cli_types, "the listener and the CLI serve different families");
    assert!(http_types.contains_key("daemoneye_events_received_total"));
    assert!(listening_ports(agent.pid()).contains(&port));
    // Another path is not found.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    assert!(buf.starts_with("HTTP/1.1 404"), "{buf}");
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}
