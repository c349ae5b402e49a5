//! Detection engine cost (issue 4; PRODUCT.md §15): one simple streaming
//! rule per event (target <= 200 ns), every shipped rule per event (target
//! <= 20 us), and a table rule over 10,000 processes.
//!
//! `cargo bench -p daemoneye-lib --bench detection`; with `PER_RULE=1` in
//! the environment each shipped streaming rule is also measured on its own
//! (to find the rule that costs the most). The process table is a
//! [`MemTables`] with 10,000 rows (the provider rules see in the agent is an
//! in-memory view with the same indexes); events are typical benign execs
//! whose parent is in the table, so joins do their index lookup.

// A benchmark that cannot set up its rules has nothing to measure: failing
// loudly is the intent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use daemoneye_lib::detection::schema::{event_row, process_row};
use daemoneye_lib::detection::{Limits, MemTables, Params, Query, Table, Value, load_rules_dir};
use daemoneye_lib::proto::{Argv, EventType, ProcessEvent, ProcessRecord, ProcessState};

/// Processes in the table.
const PROCESSES: u32 = 10_000;

fn record(pid: u32, name: &str, argv: &[&str]) -> ProcessRecord {
    let args: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
    ProcessRecord {
        pid,
        ppid: Some(pid / 2),
        process_key: format!("0123abcd-{pid}-{}", u64::from(pid) * 7),
        parent_key: Some(format!("0123abcd-{}-{}", pid / 2, u64::from(pid / 2) * 7)),
        name: Some(name.to_owned()),
        executable_path: Some(format!("/usr/bin/{name}")),
        command_line: Some(args.join(" ")),
        argv: Some(Argv { args, truncated: false }),
        cwd: Some("/home/user/project".into()),
        uid: Some(1000),
        gid: Some(1000),
        euid: Some(1000),
        egid: Some(1000),
        user_name: Some("user".into()),
        start_time_ns: Some(1_700_000_000_000_000_000 + i64::from(pid)),
        file_exists: Some(pid % 1000 != 7),
        ..ProcessRecord::default()
    }
}

fn state(rec: ProcessRecord) -> ProcessState {
    ProcessState { record: Some(rec), is_alive: true, source: 1, last_seq: 1 }
}

/// 10,000 processes, a mix of shells, servers and tools.
fn table() -> MemTables {
    const NAMES: [&str; 8] = ["bash", "nginx", "python3", "cargo", "rustc", "sshd", "postgres", "systemd"];
    let mut t = MemTables::new();
    for pid in 1..=PROCESSES {
        let name = NAMES[pid as usize % NAMES.len()];
        t.insert(Table::Processes, process_row(&state(record(pid, name, &[name, "--flag", "value"]))));
    }
    t
}

/// A benign exec: `bash -c 'ls -la | grep src'` whose parent (pid 4000,
/// `bash`) is in the table.
fn benign_event() -> Vec<Value> {
    let rec = record(8001, "bash", &["bash", "-c", "ls -la | grep src"]);
    let ev = ProcessEvent {
        seq: 42,
        event_type: EventType::Exec as i32,
        event_time_ns: 1_700_000_000_000_000_000,
        source: 1,
        process: Some(rec.clone()),
        gap: None,
        prev_seq: 0,
    };
    event_row(&ev, Some(&state(rec)))
}

fn streaming(c: &mut Criterion) {
    let tables = table();
    let row = benign_event();
    let params = Params::default();
    let limits = Limits::default();
    let mut g = c.benchmark_group("detection/streaming");
    g.throughput(Throughput::Elements(1));

    let simple = Query::compile(
        "SELECT pid, process_key, name FROM process_events WHERE event_type = 'exec' AND name = 'xmrig'",
    )
    .unwrap();
    g.bench_function("one simple rule per event", |b| {
        b.iter(|| black_box(simple.evaluate_event(black_box(&row), &tables, &params, &limits).unwrap()));
    });

    let join = Query::compile(
        "SELECT e.pid, p.name AS parent FROM process_events e JOIN processes p ON p.process_key = e.parent_key \
         WHERE e.event_type = 'exec' AND e.name IN ('sh', 'bash') AND p.name IN ('nginx', 'httpd')",
    )
    .unwrap();
    g.bench_function("one parent-join rule per event", |b| {
        b.iter(|| black_box(join.evaluate_event(black_box(&row), &tables, &params, &limits).unwrap()));
    });

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let set = load_rules_dir(&dir);
    assert!(set.errors.is_empty(), "shipped rules do not load: {:?}", set.errors);
    let shipped: Vec<&Query> =
        set.rules.iter().filter(|r| r.rule.enabled && r.query.is_streaming()).map(|r| &r.query).collect();
    assert!(shipped.len() >= 25, "only {} streaming rules", shipped.len());
    if std::env::var_os("PER_RULE").is_some() {
        for r in set.rules.iter().filter(|r| r.rule.enabled && r.query.is_streaming()) {
            g.bench_function(format!("rule {}", r.rule.id), |b| {
                b.iter(|| black_box(r.query.evaluate_event(black_box(&row), &tables, &params, &limits).unwrap()));
            });
        }
    }
    g.bench_function(format!("all {} shipped streaming rules per event", shipped.len()), |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for q in &shipped {
                hits += q.evaluate_event(black_box(&row), &tables, &params, &limits).unwrap().rows.len();
            }
            black_box(hits)
        });
    });
    g.finish();
}

fn table_rules(c: &mut Criterion) {
    let tables = table();
    let params = Params::default();
    let limits = Limits::default();
    let mut g = c.benchmark_group("detection/table");
    g.throughput(Throughput::Elements(u64::from(PROCESSES)));
    g.sample_size(30);

    let deleted = Query::compile(
        "SELECT pid, ppid, process_key, name, executable_path, command_line, uid FROM processes \
         WHERE is_alive = 1 AND file_exists = 0 AND executable_path NOT LIKE '/memfd:%'",
    )
    .unwrap();
    g.bench_function("deleted-executable-running over 10k processes", |b| {
        b.iter(|| black_box(deleted.execute(&tables, &params, &limits).unwrap()));
    });

    let grouped = Query::compile(
        "SELECT parent_key, count(*) AS children, group_concat(DISTINCT name) AS names FROM processes \
         WHERE is_alive = 1 GROUP BY parent_key HAVING count(*) >= 2",
    )
    .unwrap();
    g.bench_function("GROUP BY parent_key over 10k processes", |b| {
        b.iter(|| black_box(grouped.execute(&tables, &params, &limits).unwrap()));
    });

    let joined = Query::compile(
        "SELECT c.pid, p.name FROM processes c JOIN processes p ON p.process_key = c.parent_key \
         WHERE c.name = 'bash' AND p.name = 'nginx'",
    )
    .unwrap();
    g.bench_function("parent join over 10k processes", |b| {
        b.iter(|| black_box(joined.execute(&tables, &params, &limits).unwrap()));
    });
    g.finish();
}

criterion_group!(benches, streaming, table_rules);
criterion_main!(benches);
