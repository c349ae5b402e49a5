//! Statements that must be rejected, each with a clear message; and
//! arbitrary input to `validate`, which must never panic.

use proptest::prelude::*;

use super::super::*;

/// Every entry must be rejected; the message must name a reason.
const HOSTILE: &[&str] = &[
    // Writes and DDL.
    "INSERT INTO processes (pid) VALUES (1)",
    "INSERT INTO alerts SELECT * FROM alerts",
    "REPLACE INTO processes (pid) VALUES (1)",
    "UPDATE processes SET name = 'x'",
    "UPDATE processes SET name = 'x' WHERE pid = 1",
    "DELETE FROM processes",
    "DELETE FROM alerts WHERE 1",
    "CREATE TABLE t (a)",
    "CREATE TEMP TABLE t AS SELECT * FROM processes",
    "CREATE VIEW v AS SELECT 1",
    "CREATE INDEX i ON processes(pid)",
    "CREATE TRIGGER t AFTER INSERT ON processes BEGIN SELECT 1; END",
    "CREATE VIRTUAL TABLE t USING fts5(a)",
    "DROP TABLE processes",
    "DROP VIEW v",
    "ALTER TABLE processes ADD COLUMN x",
    "ALTER TABLE processes RENAME TO p",
    "TRUNCATE TABLE processes",
    // Pragmas, attach, extensions, transactions.
    "PRAGMA table_info(processes)",
    "PRAGMA writable_schema = ON",
    "pragma journal_mode=off",
    "ATTACH DATABASE '/etc/passwd' AS p",
    "ATTACH 'file:x?mode=memory' AS y",
    "DETACH DATABASE p",
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT load_extension('/tmp/evil.so', 'entry')",
    "VACUUM",
    "VACUUM INTO '/tmp/x.db'",
    "REINDEX",
    "ANALYZE",
    "BEGIN",
    "BEGIN TRANSACTION",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT a",
    "RELEASE a",
    "EXPLAIN SELECT 1",
    "EXPLAIN QUERY PLAN SELECT 1",
    // Multiple statements and smuggling.
    "SELECT 1; SELECT 2",
    "SELECT 1; DELETE FROM processes",
    "SELECT pid FROM processes; DROP TABLE processes",
    "SELECT 1;; SELECT 2",
    "WITH x AS (SELECT 1) DELETE FROM processes",
    "WITH x AS (SELECT 1) INSERT INTO alerts SELECT * FROM x",
    "WITH x AS (SELECT 1) UPDATE processes SET pid = 1",
    // Unknown tables, schemas, catalog objects.
    "SELECT * FROM sqlite_master",
    "SELECT * FROM sqlite_schema",
    "SELECT * FROM sqlite_temp_master",
    "SELECT * FROM main.processes",
    "SELECT * FROM temp.processes",
    "SELECT * FROM pragma_table_info('processes')",
    "SELECT * FROM procesess",
    "SELECT * FROM users",
    "SELECT * FROM generate_series(1, 10)",
    "SELECT * FROM json_each('[1]')",
    // Unknown columns and functions.
    "SELECT nmae FROM processes",
    "SELECT p.nmae FROM processes p",
    "SELECT x.pid FROM processes p",
    "SELECT \"pid2\" FROM processes",
    "SELECT readfile('/etc/shadow')",
    "SELECT writefile('/tmp/x', 'y')",
    "SELECT edit('x')",
    "SELECT sqlite_version()",
    "SELECT randomblob(1000000000)",
    "SELECT zeroblob(1000000000)",
    "SELECT random()",
    "SELECT printf('%s', name) FROM processes",
    "SELECT char(65)",
    "SELECT hex(name) FROM processes",
    "SELECT fts3_tokenizer('simple')",
    "SELECT unknown_fn(pid) FROM processes",
    "SELECT lowr(name) FROM processes",
    "SELECT json_extract(argv) FROM processes",
    "SELECT substr() FROM processes",
    "SELECT lower(name, name) FROM processes",
    "SELECT now_ms(1)",
    "SELECT CURRENT_TIMESTAMP",
    // Recursion and unbounded joins.
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r",
    "WITH RECURSIVE r AS (SELECT 1) SELECT * FROM r",
    "WITH r AS (SELECT * FROM r) SELECT * FROM r",
    "SELECT * FROM processes a, processes b",
    "SELECT * FROM processes a CROSS JOIN processes b",
    "SELECT * FROM processes a JOIN processes b",
    "SELECT * FROM processes a JOIN processes b ON 1",
    "SELECT * FROM processes a JOIN processes b ON a.pid > b.pid",
    "SELECT * FROM processes a JOIN processes b ON a.pid = a.ppid",
    "SELECT * FROM processes a NATURAL JOIN processes b",
    "SELECT * FROM processes a JOIN processes b USING (pid)",
    "SELECT * FROM processes a RIGHT JOIN processes b ON a.pid = b.pid",
    "SELECT * FROM processes a FULL OUTER JOIN processes b ON a.pid = b.pid",
    // Unsupported or misused constructs.
    "SELECT pid FROM processes UNION SELECT pid FROM processes",
    "SELECT pid FROM processes UNION ALL SELECT 1",
    "SELECT pid FROM processes EXCEPT SELECT 1",
    "SELECT pid FROM processes INTERSECT SELECT 1",
    "VALUES (1), (2)",
    "SELECT row_number() OVER () FROM processes",
    "SELECT count(*) OVER (PARTITION BY uid) FROM processes",
    "SELECT pid FROM processes WHERE count(*) > 1",
    "SELECT pid FROM processes GROUP BY count(*)",
    "SELECT count(count(*)) FROM processes",
    "SELECT name COLLATE NOCASE FROM processes",
    "SELECT (1, 2) = (1, 2)",
    "SELECT pid FROM processes WHERE (pid, ppid) IN (SELECT 1, 2)",
    "SELECT pid FROM processes WHERE pid IN (SELECT pid, ppid FROM processes)",
    "SELECT (SELECT pid, ppid FROM processes)",
    "SELECT pid FROM processes ORDER BY 5",
    "SELECT pid FROM processes ORDER BY 0",
    "SELECT pid FROM processes GROUP BY 3",
    "SELECT x'41'",
    "SELECT 0x10",
    "SELECT pid & 1 FROM processes",
    "SELECT pid << 1 FROM processes",
    "SELECT ~pid FROM processes",
    "SELECT name ILIKE 'x' FROM processes",
    "SELECT name REGEXP '(' FROM processes",
    "SELECT name REGEXP 'a{1000}{1000}{1000}' FROM processes",
    "SELECT DISTINCT ON (pid) pid FROM processes",
    "SELECT * FROM (processes JOIN alerts ON alerts.pid = processes.pid)",
    "SELECT TOP 5 pid FROM processes",
    "SELECT pid INTO t FROM processes",
    "SELECT group_concat(DISTINCT name, ',') FROM processes",
    "SELECT lower(DISTINCT name) FROM processes",
    "SELECT count(*) FILTER (WHERE pid > 1) FROM processes",
    "SELECT pid::text FROM processes",
    "SELECT * FROM processes a JOIN processes b ON a.pid = b.pid JOIN processes c ON c.pid = b.pid JOIN processes d ON d.pid = c.pid JOIN processes e ON e.pid = d.pid JOIN processes f ON f.pid = e.pid JOIN processes g ON g.pid = f.pid JOIN processes h ON h.pid = g.pid JOIN processes i ON i.pid = h.pid",
    // Syntax errors and empty input.
    "",
    "   ",
    "-- just a comment",
    "SELECT",
    "SELECT FROM processes",
    "SELECT pid FROM",
    "SELECT pid FROM processes WHERE",
    "SELECT 'unterminated",
    "SELECT (1",
    "SELCT 1",
];

#[test]
fn hostile_corpus_is_rejected_clearly() {
    assert!(HOSTILE.len() >= 100, "{}", HOSTILE.len());
    for sql in HOSTILE {
        match validate(sql) {
            Ok(()) => panic!("accepted: {sql}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.len() > 15, "unclear message for {sql}: {msg}");
            }
        }
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let cases = [
        format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000)),
        format!("SELECT 1{}", " + 1".repeat(5000)),
        format!("SELECT 1 WHERE {}", vec!["1 = 1"; 3000].join(" AND ")),
        format!("SELECT {}", "NOT ".repeat(3000) + "1"),
        format!("SELECT {}1{}", "(SELECT ".repeat(300), ")".repeat(300)),
        format!("SELECT {}", "-".repeat(3000) + "1"),
        format!("SELECT {}'x'{}", "lower(".repeat(1000), ")".repeat(1000)),
        format!("SELECT CASE {} END", "WHEN 1 THEN 1 ".repeat(3000)),
    ];
    for sql in cases {
        // A 2 MiB test thread: the limits must hold on small stacks.
        assert!(validate(&sql).is_err(), "accepted {} bytes", sql.len());
    }
    // Long but shallow is fine.
    let wide = format!(
        "SELECT pid FROM processes WHERE pid IN ({})",
        (0..2000).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    validate(&wide).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn validate_never_panics(s in "\\PC{0,200}") {
        let _ = validate(&s);
    }

    #[test]
    fn validate_never_panics_on_sqlish(parts in proptest::collection::vec(prop_oneof![
        Just("SELECT "), Just("FROM "), Just("processes "), Just("WHERE "), Just("pid "), Just("name "),
        Just("("), Just(")"), Just(", "), Just("= "), Just("AND "), Just("OR "), Just("NOT "), Just("1 "),
        Just("'x' "), Just("NULL "), Just("IN "), Just("LIKE "), Just("JOIN "), Just("ON "), Just("p "),
        Just("count(*) "), Just("GROUP BY "), Just("ORDER BY "), Just("LIMIT "), Just("? "), Just(":n "),
        Just("CASE WHEN "), Just("THEN "), Just("END "), Just("EXISTS "), Just("WITH "), Just("AS "),
        Just("; "), Just("|| "), Just("- "), Just("/ "), Just("CAST("), Just("AS TEXT) "),
    ], 0..40)) {
        let sql: String = parts.concat();
        if let Ok(q) = Query::compile(&sql) {
            let m = super::engine::fixture();
            let p = Params { positional: vec![Value::Integer(1); q.param_count()], named: q.param_names().into_iter().map(|n| (n, Value::Integer(1))).collect(), now_ms: None };
            let _ = q.execute(&m, &p, &Limits::default());
        }
    }
}
