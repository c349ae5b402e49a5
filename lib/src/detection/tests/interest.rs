//! Event interest: a table query run over only the `process_events` rows
//! its interest admits and keeps returns exactly what it returns over all
//! of them — on random tables and thousands of random queries, and on the
//! shipped rules.

use super::super::*;
use super::differential::{NOW_MS, random_tables};
use super::grammar::{Rng, gen_event_table_query};

/// `m` with only the events `interest` admits and keeps at `NOW_MS`.
fn cached_view(m: &MemTables, interest: &EventInterest) -> MemTables {
    let mut c = m.clone();
    let kept = m
        .rows(Table::ProcessEvents)
        .iter()
        .filter(|r| interest.admits(r) && interest.keeps(r, NOW_MS))
        .cloned()
        .collect();
    c.set_rows(Table::ProcessEvents, kept);
    c
}

fn sorted(mut rows: Vec<Vec<Value>>) -> Vec<String> {
    let mut out: Vec<String> = rows.drain(..).map(|r| format!("{r:?}")).collect();
    out.sort();
    out
}

#[test]
fn interest_rows_give_the_same_results_as_all_rows() {
    let mut rng = Rng(0x1E7E_2E57);
    let params = Params { now_ms: Some(NOW_MS), ..Params::default() };
    let (mut with_interest, mut without, mut narrowed, mut compared) = (0, 0, 0, 0);
    let mut mismatches = Vec::new();
    for round in 0..40 {
        let m = random_tables(&mut rng);
        for _ in 0..150 {
            let sql = gen_event_table_query(&mut rng);
            let q = match Query::compile(&sql) {
                Ok(q) => q,
                Err(e) => panic!("generated query does not compile: {sql}: {e}"),
            };
            let Some(interest) = q.event_interest() else {
                without += 1;
                continue;
            };
            with_interest += 1;
            let c = cached_view(&m, &interest);
            if c.rows(Table::ProcessEvents).len() < m.rows(Table::ProcessEvents).len() {
                narrowed += 1;
            }
            match (q.execute(&m, &params, &Limits::default()), q.execute(&c, &params, &Limits::default())) {
                (Ok(all), Ok(some)) => {
                    compared += 1;
                    if sorted(all.rows.clone()) != sorted(some.rows.clone()) {
                        mismatches
                            .push(format!("round {round}: {sql}\n  all:    {:?}\n  cached: {:?}", all.rows, some.rows));
                    }
                }
                // An error over all rows may vanish with fewer (see the
                // module docs of `interest`); the reverse must not happen.
                (Err(_), _) => {}
                (Ok(_), Err(e)) => mismatches.push(format!("round {round}: {sql}\n  cached errors: {e}")),
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} queries differ; first ones:\n{}",
        mismatches.len(),
        mismatches.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
    );
    // The test has teeth: most queries have an interest, and it leaves
    // rows out for most of them.
    assert!(compared >= 3000, "only {compared} queries compared");
    assert!(narrowed * 2 >= with_interest, "interest narrowed only {narrowed} of {with_interest}");
    assert!(without >= 200, "only {without} queries without an interest");
}

#[test]
fn queries_without_a_bound_or_with_a_left_join_have_no_interest() {
    for sql in [
        "SELECT count(*) FROM (SELECT * FROM process_events)",
        "WITH t AS (SELECT * FROM process_events WHERE event_type = 'exec') SELECT count(*) FROM t",
        "SELECT p.pid FROM processes p LEFT JOIN process_events e ON e.pid = p.pid \
         WHERE e.event_time >= now_ms() - 1000",
        "SELECT p.pid FROM processes p WHERE EXISTS (SELECT 1 FROM process_events e WHERE e.pid = p.pid)",
        "SELECT count(*) FROM (SELECT * FROM process_events WHERE event_time >= now_ms() - ?)",
        // A streaming rule sees one event at a time: no interest.
        "SELECT * FROM process_events WHERE event_time >= now_ms() - 1000",
        // No process_events at all.
        "SELECT count(*) FROM processes",
    ] {
        let q = Query::compile(sql).unwrap();
        assert!(q.event_interest().is_none(), "{sql} has an interest");
    }
}

#[test]
fn interest_takes_the_largest_bound_and_row_only_conditions() {
    let q = Query::compile(
        "WITH a AS (SELECT pid FROM process_events WHERE event_type = 'exec' AND event_time >= now_ms() - 120000 \
           AND name IN ('id', 'whoami') AND uid = ?), \
         b AS (SELECT pid FROM process_events WHERE event_time > now_ms() - 5000 AND name = 'ss') \
         SELECT count(*) FROM a JOIN b ON b.pid = a.pid",
    )
    .unwrap();
    let i = q.event_interest().unwrap();
    assert_eq!(i.horizon_ms(), 120_000);
    let row = |ty: &str, name: &str, age: i64| {
        super::engine::row(
            Table::ProcessEvents,
            &[
                ("event_type", Value::Text(ty.into())),
                ("name", Value::Text(name.into())),
                ("event_time", Value::Integer(NOW_MS - age)),
                ("uid", Value::Integer(0)),
            ],
        )
    };
    // The parameter term is not row-only: it does not exclude the row.
    assert!(i.admits(&row("exec", "id", 0)));
    assert!(!i.admits(&row("exit", "id", 0)));
    assert!(i.admits(&row("exit", "ss", 0)));
    assert!(!i.admits(&row("exec", "bash", 0)));
    assert!(i.keeps(&row("exec", "id", 120_000), NOW_MS));
    assert!(!i.keeps(&row("exec", "id", 120_001), NOW_MS));
}

/// The shipped table rules read a bounded window: the agent keeps their
/// events in memory.
#[test]
fn shipped_table_rules_have_an_interest() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let set = load_rules_dir(&dir);
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    let mut table_rules = 0;
    for lr in &set.rules {
        if lr.query.is_streaming() {
            continue;
        }
        table_rules += 1;
        let uses_events = lr.rule.sql.contains("process_events");
        assert_eq!(lr.query.event_interest().is_some(), uses_events, "rule {}", lr.rule.id);
    }
    assert!(table_rules >= 1);
}
