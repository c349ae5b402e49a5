//! Issue #7: alerts reach every sink at least once, through failures,
//! downtime and an agent crash, with real receivers: a small HTTP server
//! that fails and goes down, and syslog listeners on UDP and TCP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use daemoneye_tests::{Agent, AgentOptions, copy_executable, marker, wait_for};
use serde_json::Value as Json;

const RULE_ID: &str = "e2e-delivery";

fn options(m: &str) -> AgentOptions {
    let rule = format!(
        "id: {RULE_ID}\nname: Delivery marker\ndescription: The e2e marker ran.\nseverity: high\nsql: |\n  SELECT pid, process_key, name FROM process_events\n  WHERE name = '{m}' AND event_type IN ('exec', 'snapshot')\n"
    );
    AgentOptions {
        rules: vec![("delivery.yaml".into(), rule)],
        env: vec![("DAEMONEYE_PROCMOND__POLL_INTERVAL".into(), "200ms".into())],
        ..Default::default()
    }
}

/// Writes `root/config.toml` and returns its path.
fn write_config(root: &Path, body: &str) -> PathBuf {
    let path = root.join("config.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// Starts `n` copies of sleep named `m`, each living `secs`.
fn run_markers(m: &str, n: usize, secs: u32) -> (tempfile::TempDir, Vec<Child>) {
    let dir = tempfile::tempdir().unwrap();
    let exe = copy_executable(Path::new("/bin/sleep"), dir.path(), m);
    let children = (0..n).map(|_| Command::new(&exe).arg(secs.to_string()).spawn().unwrap()).collect();
    (dir, children)
}

fn stored_alert_ids(agent: &Agent) -> BTreeSet<String> {
    let all = agent.cli_json(&["alerts", "list"]);
    all.as_array()
        .unwrap()
        .iter()
        .filter(|a| a["rule_id"] == RULE_ID)
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------- webhook receiver

#[derive(Default)]
struct Seen {
    /// Requests answered 503 so far.
    failed: usize,
    /// Bodies accepted (200), with their Authorization header.
    accepted: Vec<(Json, Option<String>)>,
}

/// A tiny HTTP/1.1 server on 127.0.0.1: answers the first `fail_first`
/// requests 503, then 200; one request per connection.
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn up(port: u16, fail_first: usize, seen: Arc<Mutex<Seen>>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut answered = 0;
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let fail = answered < fail_first;
                            if handle(stream, fail, &seen) {
                                answered += 1;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
                // The listener is dropped here: the port refuses connections.
            })
        };
        Receiver { port, seen, stop, thread: Some(thread) }
    }

    /// Closes the listener.
    fn down(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
    }

    fn ids(&self) -> BTreeSet<String> {
        ids_of(&self.seen)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ids_of(seen: &Mutex<Seen>) -> BTreeSet<String> {
    seen.lock().unwrap().accepted.iter().map(|(b, _)| b["id"].as_str().unwrap_or_default().to_owned()).collect()
}

/// Reads one request and answers it; false when no complete request came.
fn handle(stream: TcpStream, fail: bool, seen: &Mutex<Seen>) -> bool {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut headers = BTreeMap::new();
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return false;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return false;
    }
    assert!(request_line.starts_with("POST /hook "), "unexpected request {request_line:?}");
    assert_eq!(headers.get("content-type").map(String::as_str), Some("application/json"));
    let status = if fail { "503 Service Unavailable" } else { "200 OK" };
    let mut out = stream;
    let _ = write!(out, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = out.flush();
    let mut s = seen.lock().unwrap();
    if fail {
        s.failed += 1;
    } else {
        s.accepted.push((serde_json::from_slice(&body).unwrap(), headers.get("authorization").cloned()));
    }
    true
}

fn webhook_config(port: u16) -> String {
    format!(
        "[alerts]\nstdout = true\n[[alerts.sinks]]\ntype = \"webhook\"\nname = \"hook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         headers = {{ Authorization = \"Bearer e2e-token\" }}\ntimeout = \"2s\"\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\n\
         breaker_failures = 3\nbreaker_cooldown = \"300ms\"\n"
    )
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn webhook_gets_every_alert_through_failures_and_downtime() {
    const ALERTS: usize = 4;
    const FAIL_FIRST: usize = 4;
    let m = marker("dw");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let receiver = Receiver::up(0, FAIL_FIRST, Arc::clone(&seen));
    let port = receiver.port;
    let root = tempfile::Builder::new().prefix("daemoneye-e2e").tempdir().unwrap();
    let config = write_config(root.path(), &webhook_config(port));
    let agent = Agent::start_in(root, options(&m), &["--config", config.to_str().unwrap()]);
    let (_dir, mut markers) = run_markers(&m, ALERTS, 3);

    // The first requests fail with 503 ...
    wait_for(Duration::from_secs(30), || (seen.lock().unwrap().failed >= FAIL_FIRST).then_some(()))
        .unwrap_or_else(|| panic!("the receiver never saw {FAIL_FIRST} requests; stderr:\n{}", agent.stderr()));
    // ... then the receiver is down (connections refused) until the
    // breaker has opened and a probe has failed against the closed port.
    receiver.down();
    let failures_before = count(&agent.stderr(), "alert delivery failed");
    wait_for(Duration::from_secs(30), || {
        let log = agent.stderr();
        (count(&log, "circuit breaker opened") >= 1 && count(&log, "alert delivery failed") >= failures_before + 2)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no failed attempts while the receiver was down; stderr:\n{}", agent.stderr()));
    let receiver = Receiver::up(port, 0, Arc::clone(&seen));

    // Every stored alert arrives; after dedup by id nothing else arrives.
    let stored = wait_for(Duration::from_secs(30), || {
        let stored = stored_alert_ids(&agent);
        (stored.len() == ALERTS && receiver.ids() == stored).then_some(stored)
    })
    .unwrap_or_else(|| {
        panic!("stored {:?}, received {:?}; stderr:\n{}", stored_alert_ids(&agent), receiver.ids(), agent.stderr())
    });
    assert_eq!(receiver.ids(), stored);
    for (body, auth) in &seen.lock().unwrap().accepted {
        assert_eq!(auth.as_deref(), Some("Bearer e2e-token"), "header auth missing on {body}");
        assert_eq!(body["rule_id"], RULE_ID);
        assert_eq!(body["severity"], "high");
    }

    // The breaker opened and then closed again, as logged.
    let log = agent.stderr();
    let opened = log.rfind("circuit breaker opened").expect("breaker never opened");
    let closed = log.rfind("circuit breaker closed").unwrap_or_else(|| panic!("breaker never closed:\n{log}"));
    assert!(closed > opened, "the breaker's last transition is not `closed`:\n{log}");
    assert!(log.contains("circuit breaker half-open"), "{log}");
    assert!(!log.contains("e2e-token"), "the auth header leaked into the logs");
    // The stdout sink was not held up by the failing webhook.
    let stdout_ids: BTreeSet<String> = agent
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|a| a["rule_id"] == RULE_ID)
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stdout_ids, stored);
    for c in &mut markers {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn a_full_sink_queue_delivers_every_alert_once_from_the_outbox() {
    const ALERTS: usize = 6;
    let m = marker("dq");
    let seen = Arc::new(Mutex::new(Seen::default()));
    // The receiver is down at first: the worker retries the first alert
    // while the others fill its one-slot queue and overflow to the outbox.
    let receiver = Receiver::up(0, 0, Arc::clone(&seen));
    let port = receiver.port;
    receiver.down();
    let root = tempfile::Builder::new().prefix("daemoneye-e2e").tempdir().unwrap();
    let config = format!("{}queue_capacity = 1\n", webhook_config(port));
    let config = write_config(root.path(), &config);
    let agent = Agent::start_in(root, options(&m), &["--config", config.to_str().unwrap()]);
    let (_first_dir, mut first) = run_markers(&m, 1, 5);
    wait_for(Duration::from_secs(30), || agent.stderr().contains("alert delivery failed").then_some(()))
        .unwrap_or_else(|| panic!("the first alert was never attempted; stderr:\n{}", agent.stderr()));
    // The worker holds the first alert: the next one waits in the queue
    // (and in the outbox), the rest overflow.
    let (_dir, mut markers) = run_markers(&m, ALERTS - 1, 5);
    markers.append(&mut first);
    wait_for(Duration::from_secs(30), || {
        (stored_alert_ids(&agent).len() == ALERTS && agent.stderr().contains("sink queue full")).then_some(())
    })
    .unwrap_or_else(|| panic!("no overflow with {ALERTS} alerts and a one-slot queue; stderr:\n{}", agent.stderr()));

    let receiver = Receiver::up(port, 0, Arc::clone(&seen));
    let stored = stored_alert_ids(&agent);
    wait_for(Duration::from_secs(30), || (receiver.ids() == stored).then_some(()))
        .unwrap_or_else(|| panic!("stored {stored:?}, received {:?}; stderr:\n{}", receiver.ids(), agent.stderr()));
    // The queued copies of what the outbox re-read delivered are skipped:
    // each alert arrives once (give a duplicate time to show up).
    std::thread::sleep(Duration::from_secs(1));
    let bodies: Vec<String> =
        seen.lock().unwrap().accepted.iter().map(|(b, _)| b["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(bodies.len(), ALERTS, "alerts delivered more than once: {bodies:?}");
    for c in &mut markers {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn alert_pending_at_kill9_is_delivered_after_restart() {
    let m = marker("dk");
    // A port with nobody listening: delivery stays pending.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root = tempfile::Builder::new().prefix("daemoneye-e2e").tempdir().unwrap();
    let config = write_config(root.path(), &webhook_config(port));
    let config_arg = config.to_str().unwrap().to_owned();
    let agent = Agent::start_in(root, options(&m), &["--config", &config_arg]);
    let (_dir, mut markers) = run_markers(&m, 1, 2);

    let id = wait_for(Duration::from_secs(30), || {
        let ids = stored_alert_ids(&agent);
        let log = agent.stderr();
        ids.into_iter().next().filter(|id| log.lines().any(|l| l.contains(id.as_str()) && l.contains("will retry")))
    })
    .unwrap_or_else(|| panic!("no stored alert with a failed delivery; stderr:\n{}", agent.stderr()));

    let root = agent.kill9();
    for c in &mut markers {
        let _ = c.kill();
        let _ = c.wait();
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let receiver = Receiver::up(port, 0, Arc::clone(&seen));
    let agent = Agent::start_in(root, options(&m), &["--config", &config_arg]);
    wait_for(Duration::from_secs(30), || receiver.ids().contains(&id).then_some(()))
        .unwrap_or_else(|| panic!("alert {id} not delivered after the restart; stderr:\n{}", agent.stderr()));
    // The alert was committed to the alert file before delivery, relaxed:
    // either that commit was made durable before the kill (the outbox
    // re-queues it), or the restart re-applied its event from the ledger
    // and raised it again, with the same id.
    let log = agent.stderr();
    assert!(
        log.contains("re-queued undelivered alerts from the outbox") || log.contains("caught up from the ledger"),
        "the alert came neither from the outbox nor from the ledger; stderr:\n{log}"
    );
    // Either way the receiver only ever sees that one alert, with its id.
    assert_eq!(stored_alert_ids(&agent), BTreeSet::from([id.clone()]));
    assert_eq!(receiver.ids(), BTreeSet::from([id]));
}

// ---------------------------------------------------------------- syslog

/// Checks one RFC 5424 message strictly; returns (PRI, SD params, MSG).
fn parse_rfc5424(line: &str) -> Result<(u32, BTreeMap<String, String>, String), String> {
    let rest = line.strip_prefix('<').ok_or("no '<'")?;
    let (pri, rest) = rest.split_once('>').ok_or("no '>'")?;
    if pri.is_empty() || pri.len() > 3 || !pri.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad PRI {pri:?}"));
    }
    let pri: u32 = pri.parse().map_err(|_| "PRI")?;
    if pri > 191 {
        return Err(format!("PRI {pri} > 191"));
    }
    let rest = rest.strip_prefix("1 ").ok_or("VERSION is not 1")?;
    let mut fields = rest.splitn(6, ' ');
    let mut field = |what: &str, max: usize| -> Result<String, String> {
        let f = fields.next().ok_or(format!("missing {what}"))?;
        if f.is_empty() || f.len() > max || !f.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(format!("bad {what} {f:?}"));
        }
        Ok(f.to_owned())
    };
    let ts = field("TIMESTAMP", 64)?;
    let t = ts.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| t.get(i).is_some_and(u8::is_ascii_digit));
    let shape = t.len() >= 20
        && digits(0..4)
        && t[4] == b'-'
        && digits(5..7)
        && t[7] == b'-'
        && digits(8..10)
        && t[10] == b'T'
        && digits(11..13)
        && t[13] == b':'
        && digits(14..16)
        && t[16] == b':'
        && digits(17..19);
    let frac_ok = match ts.get(19..).unwrap_or_default() {
        "Z" => true,
        s => s
            .strip_prefix('.')
            .and_then(|f| f.strip_suffix('Z'))
            .is_some_and(|f| (1..=6).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit())),
    };
    if !(shape && frac_ok) {
        return Err(format!("bad TIMESTAMP {ts:?}"));
    }
    field("HOSTNAME", 255)?;
    field("APP-NAME", 48)?;
    field("PROCID", 128)?;
    field("MSGID", 32)?;
    let rest = fields.next().ok_or("missing STRUCTURED-DATA")?;
    // STRUCTURED-DATA: one SD-ELEMENT here.
    let mut chars = rest.char_indices().peekable();
    let mut params = BTreeMap::new();
    if chars.next().map(|c| c.1) != Some('[') {
        return Err("SD does not start with '['".into());
    }
    let sd_name = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, stop: &[char]| {
        let mut s = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if stop.contains(&c) {
                break;
            }
            if !c.is_ascii_graphic() || matches!(c, '=' | ']' | '"') {
                return Err(format!("bad SD-NAME char {c:?}"));
            }
            s.push(c);
            chars.next();
        }
        if s.is_empty() || s.len() > 32 { Err(format!("bad SD-NAME {s:?}")) } else { Ok(s) }
    };
    let sd_id = sd_name(&mut chars, &[' ', ']'])?;
    params.insert("@id".to_owned(), sd_id);
    loop {
        match chars.next().map(|c| c.1) {
            Some(']') => break,
            Some(' ') => {}
            other => return Err(format!("unexpected {other:?} in SD")),
        }
        let name = sd_name(&mut chars, &['='])?;
        if chars.next().map(|c| c.1) != Some('=') || chars.next().map(|c| c.1) != Some('"') {
            return Err(format!("param {name} lacks =\""));
        }
        let mut value = String::new();
        loop {
            match chars.next().map(|c| c.1) {
                Some('\\') => match chars.next().map(|c| c.1) {
                    Some(c @ ('"' | '\\' | ']')) => value.push(c),
                    Some(c) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err("SD ends in an escape".into()),
                },
                Some('"') => break,
                Some(']') => return Err(format!("unescaped ']' in {name}")),
                Some(c) => value.push(c),
                None => return Err("SD value not closed".into()),
            }
        }
        params.insert(name, value);
    }
    let msg = match chars.next() {
        None => String::new(),
        Some((i, ' ')) => rest[i + 1..].to_owned(),
        Some((_, c)) => return Err(format!("{c:?} after SD instead of SP")),
    };
    let msg = msg.strip_prefix('\u{feff}').ok_or("MSG is not BOM + UTF-8")?.to_owned();
    Ok((pri, params, msg))
}

#[test]
fn rfc5424_checker_rejects_malformed_lines() {
    let good = "<131>1 2024-01-02T03:04:05.678Z h app 1 alert [x@1 id=\"a\\]b\"] \u{feff}{}";
    let (pri, sd, msg) = parse_rfc5424(good).unwrap();
    assert_eq!((pri, sd["id"].as_str(), msg.as_str()), (131, "a]b", "{}"));
    for bad in [
        "<192>1 2024-01-02T03:04:05Z h a 1 m [x] \u{feff}m",
        "<13>2 2024-01-02T03:04:05Z h a 1 m [x] \u{feff}m",
        "<13>1 2024-01-02 03:04:05Z h a 1 m [x] \u{feff}m",
        "<13>1 2024-01-02T03:04:05Z h a 1 m [x id=\"]\"] \u{feff}m",
        "<13>1 2024-01-02T03:04:05Z h a 1 m [x] m",
    ] {
        assert!(parse_rfc5424(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn syslog_udp_tcp_and_file_sinks_get_well_formed_messages() {
    let m = marker("ds");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    udp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    let udp_thread = {
        let (got, stop) = (Arc::clone(&got), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = udp.recv(&mut buf) {
                    got.lock().unwrap().push(("udp", String::from_utf8(buf[..n].to_vec()).unwrap()));
                }
            }
        })
    };
    let tcp_thread = {
        let got = Arc::clone(&got);
        std::thread::spawn(move || {
            // One connection, octet-counted frames: "LEN SP MSG".
            let (stream, _) = tcp.accept().unwrap();
            let mut r = BufReader::new(stream);
            loop {
                let mut len = Vec::new();
                if r.read_until(b' ', &mut len).unwrap_or(0) == 0 {
                    return;
                }
                let n: usize = std::str::from_utf8(&len[..len.len() - 1]).unwrap().parse().unwrap();
                let mut msg = vec![0; n];
                r.read_exact(&mut msg).unwrap();
                got.lock().unwrap().push(("tcp", String::from_utf8(msg).unwrap()));
            }
        })
    };

    let root = tempfile::Builder::new().prefix("daemoneye-e2e").tempdir().unwrap();
    let file = root.path().join("out/alerts.jsonl");
    let config = write_config(
        root.path(),
        &format!(
            "[alerts]\nstdout = false\n\
             [[alerts.sinks]]\ntype = \"syslog\"\nname = \"udp\"\naddress = \"udp://127.0.0.1:{udp_port}\"\nfacility = \"local0\"\n\
             [[alerts.sinks]]\ntype = \"syslog\"\nname = \"tcp\"\naddress = \"tcp://127.0.0.1:{tcp_port}\"\nfacility = \"local0\"\napp_name = \"de-e2e\"\n\
             [[alerts.sinks]]\ntype = \"file\"\npath = \"{}\"\n",
            file.display()
        ),
    );
    let agent = Agent::start_in(root, options(&m), &["--config", config.to_str().unwrap()]);
    let (_dir, mut markers) = run_markers(&m, 1, 2);

    let id = wait_for(Duration::from_secs(30), || {
        let ids = stored_alert_ids(&agent);
        let id = ids.into_iter().next()?;
        let g = got.lock().unwrap();
        let has = |t| g.iter().any(|(tr, msg)| *tr == t && msg.contains(&id));
        (has("udp") && has("tcp") && std::fs::read_to_string(&file).is_ok_and(|s| s.contains(&id))).then_some(id)
    })
    .unwrap_or_else(|| {
        panic!("syslog/file sinks did not get the alert: {:?}; stderr:\n{}", got.lock(), agent.stderr())
    });

    for (transport, line) in got.lock().unwrap().iter() {
        let (pri, sd, msg) = parse_rfc5424(line).unwrap_or_else(|e| panic!("{transport}: {e}: {line:?}"));
        assert_eq!(pri, 16 * 8 + 3, "local0.err for a high alert: {line}");
        assert_eq!(sd["@id"], "daemoneye@32473");
        assert_eq!(sd["id"], id);
        assert_eq!(sd["rule_id"], RULE_ID);
        assert_eq!(sd["severity"], "high");
        let json: Json = serde_json::from_str(&msg).unwrap();
        assert_eq!(json["id"], Json::from(id.as_str()));
        let app = line.split(' ').nth(3).unwrap();
        assert_eq!(app, if *transport == "tcp" { "de-e2e" } else { "daemoneye" });
    }
    let lines: Vec<Json> =
        std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["id"], Json::from(id.as_str()));
    // stdout = false: the stdout sink is off.
    assert!(!agent.stdout().contains(&id));

    stop.store(true, Ordering::Relaxed);
    drop(agent); // closes the TCP connection, ending the reader
    udp_thread.join().unwrap();
    tcp_thread.join().unwrap();
    for c in &mut markers {
        let _ = c.kill();
        let _ = c.wait();
    }
}
