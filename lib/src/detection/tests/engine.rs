//! Whole-query tests over a small in-memory process table.

use super::super::*;

/// A row of `table` with the named columns set, the rest NULL.
pub(super) fn row(table: Table, cols: &[(&str, Value)]) -> Vec<Value> {
    let mut r = vec![Value::Null; table.columns().len()];
    for (n, v) in cols {
        let i = table.column_index(n).unwrap_or_else(|| panic!("no column {n}"));
        r[i] = v.clone();
    }
    r
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}
fn i(v: i64) -> Value {
    Value::Integer(v)
}

pub(super) fn fixture() -> MemTables {
    let mut m = MemTables::new();
    let p = Table::Processes;
    let procs = [
        (1, None, "k1", None, "systemd", "/usr/lib/systemd/systemd", 0),
        (100, Some(1), "k100", Some("k1"), "nginx", "/usr/sbin/nginx", 33),
        (200, Some(100), "k200", Some("k100"), "sh", "/bin/sh", 33),
        (300, Some(200), "k300", Some("k200"), "curl", "/usr/bin/curl", 33),
        (400, Some(1), "k400", Some("k1"), "bash", "/bin/bash", 1000),
    ];
    for (pid, ppid, key, parent, name, exe, uid) in procs {
        m.insert(
            p,
            row(
                p,
                &[
                    ("pid", i(pid)),
                    ("ppid", ppid.map(i).into()),
                    ("process_key", t(key)),
                    ("parent_key", parent.map(t).into()),
                    ("name", t(name)),
                    ("executable_path", t(exe)),
                    ("uid", i(uid)),
                    ("argv", t(&format!(r#"["{name}","-x"]"#))),
                    ("is_alive", i(1)),
                    ("cpu_usage", Value::Real(f64::from(u32::try_from(pid).unwrap()) / 8.0)),
                ],
            ),
        );
    }
    m
}

fn q(sql: &str) -> ResultSet {
    let m = fixture();
    Query::compile(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .execute(&m, &Params::default(), &Limits::default())
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn rows(sql: &str) -> Vec<Vec<Value>> {
    q(sql).rows
}

fn err(sql: &str) -> String {
    match Query::compile(sql) {
        Ok(_) => panic!("accepted: {sql}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn projections_and_names() {
    let r = q("SELECT pid, p.name, pid + 1 AS next, upper(name) FROM processes p WHERE pid = 200");
    assert_eq!(&*r.columns, ["pid", "name", "next", "upper(name)"]);
    assert_eq!(r.rows, vec![vec![i(200), t("sh"), i(201), t("SH")]]);
    assert_eq!(q("SELECT * FROM alerts").columns.len(), Table::Alerts.columns().len());
    assert_eq!(rows("SELECT 1 + 2 * 3, 7 / 2, 7 % 3, 'a' || 1 || NULL"), vec![vec![i(7), i(3), i(1), Value::Null]]);
}

#[test]
fn where_logic_and_predicates() {
    let names = |sql: &str| -> Vec<Value> { rows(sql).into_iter().map(|r| r[0].clone()).collect() };
    assert_eq!(names("SELECT name FROM processes WHERE name LIKE 'N%' ORDER BY name"), vec![t("nginx")]);
    assert_eq!(names("SELECT name FROM processes WHERE name IN ('sh', 'bash') ORDER BY pid"), vec![t("sh"), t("bash")]);
    assert_eq!(names("SELECT name FROM processes WHERE ppid IS NULL"), vec![t("systemd")]);
    assert_eq!(names("SELECT name FROM processes WHERE NOT (ppid = 1) ORDER BY pid"), vec![t("sh"), t("curl")]);
    assert_eq!(
        names("SELECT name FROM processes WHERE pid BETWEEN 150 AND 350 ORDER BY pid DESC"),
        vec![t("curl"), t("sh")]
    );
    assert_eq!(
        names("SELECT name FROM processes WHERE executable_path GLOB '/bin/*' ORDER BY 1"),
        vec![t("bash"), t("sh")]
    );
    assert_eq!(
        names("SELECT name FROM processes WHERE name REGEXP '^(sh|bash)$' ORDER BY 1"),
        vec![t("bash"), t("sh")]
    );
    // Three-valued logic: NULL = 1 is unknown, so neither branch matches.
    assert_eq!(names("SELECT name FROM processes WHERE ppid = 1 OR NOT ppid = 1 ORDER BY pid").len(), 4);
    // Affinity: INTEGER column against a text literal.
    assert_eq!(names("SELECT name FROM processes WHERE pid = '200'"), vec![t("sh")]);
    assert_eq!(names("SELECT name FROM processes WHERE ppid IN ('100')"), vec![t("sh")]);
}

#[test]
fn order_limit_offset_nulls() {
    let r = rows("SELECT ppid FROM processes ORDER BY ppid LIMIT 2");
    assert_eq!(r, vec![vec![Value::Null], vec![i(1)]]);
    let r = rows("SELECT ppid FROM processes ORDER BY ppid DESC LIMIT 1 OFFSET 4");
    assert_eq!(r, vec![vec![Value::Null]]);
    let r = rows("SELECT pid FROM processes ORDER BY pid LIMIT 1, 2");
    assert_eq!(r, vec![vec![i(100)], vec![i(200)]]);
}

#[test]
fn params() {
    let m = fixture();
    let qy = Query::compile("SELECT name FROM processes WHERE pid = ? OR name = :n").unwrap();
    assert_eq!(qy.param_count(), 1);
    assert_eq!(qy.param_names(), vec!["n".to_string()]);
    let mut p = Params { positional: vec![i(100)], ..Default::default() };
    p.named.insert("n".into(), t("sh"));
    let r = qy.execute(&m, &p, &Limits::default()).unwrap();
    assert_eq!(r.rows.len(), 2);
    let e = qy.execute(&m, &Params::default(), &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("?1"), "{e}");
}

#[test]
fn joins_and_streaming() {
    let r = rows(
        "SELECT c.name, p.name FROM processes c JOIN processes p ON p.process_key = c.parent_key \
         WHERE p.name = 'nginx'",
    );
    assert_eq!(r, vec![vec![t("sh"), t("nginx")]]);
    let r = rows(
        "SELECT c.name, p.name FROM processes c LEFT JOIN processes p ON p.process_key = c.parent_key WHERE c.pid = 1",
    );
    assert_eq!(r, vec![vec![t("systemd"), Value::Null]]);

    let m = fixture();
    let qy = Query::compile(
        "SELECT e.pid, p.name AS parent FROM process_events e JOIN processes p ON p.process_key = e.parent_key \
         WHERE e.event_type = 'exec' AND e.name IN ('sh','bash') AND p.name = 'nginx'",
    )
    .unwrap();
    assert!(qy.is_streaming());
    assert_eq!(qy.columns(), ["pid", "parent"]);
    let ev = row(
        Table::ProcessEvents,
        &[("seq", i(9)), ("event_type", t("exec")), ("pid", i(200)), ("name", t("sh")), ("parent_key", t("k100"))],
    );
    let r = qy.evaluate_event(&ev, &m, &Params::default(), &Limits::default()).unwrap();
    assert_eq!(r.rows, vec![vec![i(200), t("nginx")]]);
    let ev2 = row(Table::ProcessEvents, &[("event_type", t("exec")), ("name", t("sh")), ("parent_key", t("k1"))]);
    assert!(qy.evaluate_event(&ev2, &m, &Params::default(), &Limits::default()).unwrap().rows.is_empty());
    assert!(qy.evaluate_event(&[], &m, &Params::default(), &Limits::default()).is_err());
}

/// WHERE conditions checked early (on the event before any join, on a
/// source as soon as it is joined) give the results of checking them on
/// the whole row: aggregates still answer over no rows, LIMIT 0 evaluates
/// nothing, LEFT JOIN NULL rows are filtered like matched ones, and the
/// result's column names are shared with the query.
#[test]
fn early_conditions_keep_results() {
    let m = fixture();
    let p = Params::default();
    let l = Limits::default();
    let benign = row(Table::ProcessEvents, &[("event_type", t("exec")), ("name", t("ls")), ("parent_key", t("k1"))]);
    let eval = |sql: &str| Query::compile(sql).unwrap().evaluate_event(&benign, &m, &p, &l).unwrap().rows;
    assert_eq!(eval("SELECT count(*) FROM process_events WHERE name = 'xmrig'"), vec![vec![i(0)]]);
    assert!(eval("SELECT name FROM process_events WHERE name = 'xmrig'").is_empty());
    assert_eq!(eval("SELECT name FROM process_events WHERE event_type = 'exec'"), vec![vec![t("ls")]]);
    // The conjunct that would fail is never reached under LIMIT 0.
    assert!(eval("SELECT name FROM process_events WHERE abs(-9223372036854775808) > 0 LIMIT 0").is_empty());
    let orphan = "SELECT e.name, p.name FROM process_events e LEFT JOIN processes p ON p.process_key = e.ppid \
                  WHERE e.event_type = 'exec' AND p.name IS NULL";
    assert_eq!(eval(orphan), vec![vec![t("ls"), Value::Null]]);
    let parent = "SELECT e.name, p.name FROM process_events e LEFT JOIN processes p ON p.process_key = e.parent_key \
                  WHERE p.name IS NULL";
    assert!(eval(parent).is_empty());
    // A WHERE term that is NULL stops the row like a false one: the later
    // term (which would fail) is not evaluated, as in SQLite.
    assert!(eval("SELECT name FROM process_events WHERE uid = 0 AND abs(-9223372036854775808) > 0").is_empty());

    let q = Query::compile("SELECT name AS n, pid FROM process_events WHERE event_type = 'exec'").unwrap();
    let a = q.evaluate_event(&benign, &m, &p, &l).unwrap();
    let b = q.evaluate_event(&benign, &m, &p, &l).unwrap();
    assert_eq!(&*a.columns, ["n", "pid"]);
    assert!(std::sync::Arc::ptr_eq(&a.columns, &b.columns));
}

/// `now_ms()` is the caller's time when given (a replay's recorded time),
/// the wall clock otherwise.
#[test]
fn now_ms_from_params_or_clock() {
    let m = fixture();
    let q = Query::compile("SELECT now_ms()").unwrap();
    let fixed = Params { now_ms: Some(1_234), ..Params::default() };
    assert_eq!(q.execute(&m, &fixed, &Limits::default()).unwrap().rows, vec![vec![i(1_234)]]);
    let Value::Integer(now) = q.execute(&m, &Params::default(), &Limits::default()).unwrap().rows[0][0] else {
        panic!("now_ms() is not an integer");
    };
    assert!(now > 1_600_000_000_000, "now_ms() = {now}");
}

#[test]
fn aggregates_and_subqueries() {
    let r = rows("SELECT uid, count(*), group_concat(name, '|') FROM processes GROUP BY uid HAVING count(*) > 1");
    assert_eq!(r, vec![vec![i(33), i(3), t("nginx|sh|curl")]]);
    assert_eq!(
        rows("SELECT count(*), sum(pid), min(name), max(pid), avg(uid) FROM processes WHERE pid > 1000"),
        vec![vec![i(0), Value::Null, Value::Null, Value::Null, Value::Null]]
    );
    assert_eq!(rows("SELECT count(DISTINCT uid) FROM processes"), vec![vec![i(3)]]);
    assert_eq!(rows("SELECT DISTINCT uid FROM processes ORDER BY uid").len(), 3);
    let r = rows(
        "SELECT name FROM processes p WHERE EXISTS (SELECT 1 FROM processes c WHERE c.parent_key = p.process_key) ORDER BY pid",
    );
    assert_eq!(r, vec![vec![t("systemd")], vec![t("nginx")], vec![t("sh")]]);
    let r = rows("SELECT name FROM processes WHERE pid IN (SELECT ppid FROM processes WHERE uid = 33) ORDER BY pid");
    assert_eq!(r, vec![vec![t("systemd")], vec![t("nginx")], vec![t("sh")]]);
    assert_eq!(rows("SELECT (SELECT max(pid) FROM processes)"), vec![vec![i(400)]]);
    let r = rows(
        "WITH web AS (SELECT process_key FROM processes WHERE name = 'nginx') SELECT c.name FROM processes c JOIN web ON web.process_key = c.parent_key",
    );
    assert_eq!(r, vec![vec![t("sh")]]);
}

#[test]
fn functions() {
    let r = rows(
        "SELECT basename(executable_path), dirname(executable_path), json_extract(argv, '$[1]'), \
         CASE WHEN uid = 0 THEN 'root' ELSE 'user' END, CAST(pid AS TEXT), coalesce(ppid, -1), \
         substr(name, 2, 3), length(name), instr(name, 's'), replace(name, 's', 'S'), trim('  x '), \
         abs(-3), nullif(uid, 0), ifnull(NULL, 'd'), typeof(cpu_usage) FROM processes WHERE pid = 1",
    );
    assert_eq!(
        r,
        vec![vec![
            t("systemd"),
            t("/usr/lib/systemd"),
            t("-x"),
            t("root"),
            t("1"),
            i(-1),
            t("yst"),
            i(7),
            i(1),
            t("SyStemd"),
            t("x"),
            i(3),
            Value::Null,
            t("d"),
            t("real")
        ]]
    );
    let now = rows("SELECT now_ms()")[0][0].clone();
    assert!(matches!(now, Value::Integer(n) if n > 1_600_000_000_000));
}

#[test]
fn limits() {
    let m = fixture();
    let qy = Query::compile("SELECT a.pid FROM processes a JOIN processes b ON b.uid = a.uid").unwrap();
    let lim = Limits { max_rows: 3, ..Limits::default() };
    let r = qy.execute(&m, &Params::default(), &lim).unwrap();
    assert!(r.truncated);
    assert_eq!(r.rows.len(), 3);
    let lim = Limits { max_memory_rows: 2, ..Limits::default() };
    let e = Query::compile("SELECT pid FROM processes ORDER BY pid").unwrap().execute(&m, &Params::default(), &lim);
    assert!(matches!(e, Err(SqlError::MemoryLimit { .. })));
    let lim = Limits { timeout: std::time::Duration::ZERO, ..Limits::default() };
    let big = {
        let mut b = MemTables::new();
        for k in 0..2000 {
            b.insert(Table::Processes, row(Table::Processes, &[("pid", i(k)), ("uid", i(0))]));
        }
        b
    };
    let e = qy.execute(&big, &Params::default(), &lim);
    assert!(matches!(e, Err(SqlError::Timeout { .. })), "{e:?}");
}

#[test]
fn rejections_are_clear() {
    assert!(err("DELETE FROM processes").contains("DELETE"));
    assert!(err("SELECT 1; SELECT 2").contains("more than one statement"));
    let e = err("SELECT nmae FROM processes");
    assert!(e.contains("unknown column \"nmae\" at 1:8 (did you mean \"name\"?)"), "{e}");
    assert!(err("SELECT * FROM procesess").contains("did you mean \"processes\""));
    assert!(err("SELECT load_extension('x')").contains("load_extension"));
    assert!(err("WITH RECURSIVE r(n) AS (SELECT 1) SELECT n FROM r").contains("RECURSIVE"));
    assert!(err("SELECT a.pid FROM processes a JOIN processes b").contains("cross join"));
    assert!(err("SELECT a.pid FROM processes a, processes b").contains("comma join"));
    assert!(err("SELECT pid FROM processes WHERE count(*) > 1").contains("aggregate"));
    assert!(err("SELECT pid FROM processes UNION SELECT pid FROM processes").contains("UNION"));
    assert!(err("PRAGMA table_info(processes)").contains("PRAGMA statement"));
    assert!(err("ATTACH 'x' AS y").contains("ATTACH statement"));
    assert!(err("SELECT pid FROM").contains("syntax error"));
    let deep = format!("SELECT {}1{} ", "(".repeat(400), ")".repeat(400));
    assert!(matches!(Query::compile(&deep), Err(SqlError::TooDeep { .. })));
    let long_chain = format!("SELECT 1{}", " + 1".repeat(3000));
    assert!(Query::compile(&long_chain).is_err());
}

#[test]
fn event_types_a_streaming_query_can_match() {
    let may = |sql: &str, t: &str| Query::compile(sql).unwrap().may_match_event_type(t);
    let exec_only = "SELECT pid FROM process_events WHERE name = 'x' AND event_type = 'exec'";
    assert!(may(exec_only, "exec"));
    assert!(!may(exec_only, "exit"));
    // Reversed operands, an alias, and an IN list.
    assert!(!may("SELECT pid FROM process_events e WHERE 'exec' = e.event_type", "fork"));
    let two = "SELECT pid FROM process_events WHERE event_type IN ('exit', 'exec') AND pid > 1";
    assert!(may(two, "exit") && may(two, "exec") && !may(two, "update"));
    // Terms that do not pin the type down: every type may match.
    for sql in [
        "SELECT pid FROM process_events WHERE event_type = 'exec' OR pid = 1",
        "SELECT pid FROM process_events WHERE event_type NOT IN ('exec')",
        "SELECT pid FROM process_events WHERE event_type <> 'exec'",
        "SELECT pid FROM process_events",
        "SELECT pid FROM processes WHERE name = 'exec'",
    ] {
        assert!(may(sql, "exit") && may(sql, "exec"), "{sql}");
    }
}
