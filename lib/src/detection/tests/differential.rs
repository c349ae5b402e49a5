//! Differential test: random tables and >= 10,000 random queries from a
//! grammar of the supported subset, run by this engine and by SQLite
//! (rusqlite, bundled), compared as multisets unless ORDER BY fixes the
//! order. Expressions are fully parenthesized: sqlparser's precedence for
//! `||` differs from SQLite's (see the module docs of `bind`). Queries over
//! `process_events` are also run the streaming way, one event at a time,
//! and the union of the per-event results must equal SQLite's.
//!
//! REGEXP, basename, dirname and now_ms are not SQLite built-ins: they are
//! registered in the SQLite connection (`regexp(pattern, text)`, which
//! SQLite calls for `text REGEXP pattern`, with the same regex crate and
//! the same text conversions; `basename`/`dirname` with this crate's
//! functions; `now_ms()` returning a fixed time that this engine gets
//! through `Params::now_ms`), so the grammar covers them too.
//!
//! LIKE and GLOB are also compared on their own, on random patterns and
//! texts over an alphabet of wildcards, set syntax, case pairs and
//! multi-byte characters.
//!
//! Columns never hold i64::MIN: SQLite may evaluate (or skip) the terms of
//! a WHERE in another order than written, so whether `abs(i64::MIN)` is
//! reached, and errors, depends on its planner.

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;

use super::super::like::Pattern;
use super::super::*;
use super::grammar::{NAMES, PATHS, Rng, gen_query};

/// What `now_ms()` returns on both sides.
pub(super) const NOW_MS: i64 = 1_700_000_123_456;

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// Random `processes` and `process_events` rows: NULLs, unicode, big
/// integers and reals.
pub(super) fn random_tables(rng: &mut Rng) -> MemTables {
    let mut m = MemTables::new();
    let n = 12 + rng.below(10);
    let pids: Vec<i64> = (0..n)
        .map(|k| [1, 2, 3, 100, 200, 4_000_000_000, -5, i64::MAX, 7, 8][k % 10].wrapping_sub((k as i64 / 10) * 11))
        .collect();
    for (k, &pid) in pids.iter().enumerate() {
        let parent = if k > 0 && rng.chance(80) { Some(pids[rng.below(k)]) } else { None };
        for table in [Table::Processes, Table::ProcessEvents] {
            if table == Table::ProcessEvents && rng.chance(30) {
                continue;
            }
            let mut cols: Vec<(&str, Value)> = vec![
                ("pid", Value::Integer(pid)),
                ("ppid", parent.into()),
                ("process_key", text(&format!("k{pid}"))),
                ("parent_key", parent.map(|p| format!("k{p}")).into()),
                ("name", if rng.chance(10) { Value::Null } else { text(rng.pick::<&str>(NAMES)) }),
                ("executable_path", if rng.chance(10) { Value::Null } else { text(rng.pick::<&str>(PATHS)) }),
                (
                    "uid",
                    if rng.chance(15) { Value::Null } else { Value::Integer(*rng.pick(&[0, 33, 1000, -1, 65534])) },
                ),
                (
                    "cpu_usage",
                    if rng.chance(15) {
                        Value::Null
                    } else {
                        Value::Real(*rng.pick(&[0.0, 1.5, -2.25, 1e10, 3.0, 0.1, 123456.789]))
                    },
                ),
                (
                    "memory_usage",
                    if rng.chance(15) {
                        Value::Null
                    } else {
                        Value::Integer(*rng.pick(&[0, 4096, i64::MAX, i64::MIN + 1, 9_007_199_254_740_993]))
                    },
                ),
                ("start_time", Value::Integer(1_700_000_000_000 + k as i64 * 1000)),
                (
                    "argv",
                    text(&format!(
                        r#"["{}","-c","{}"]"#,
                        rng.pick(&["sh", "curl", "é"]),
                        rng.pick(&["id", "x y", "1"])
                    )),
                ),
                ("is_alive", Value::Integer(rng.below(2) as i64)),
            ];
            if table == Table::ProcessEvents {
                cols.retain(|c| c.0 != "is_alive");
                cols.push(("seq", Value::Integer(k as i64)));
                cols.push(("event_type", text(rng.pick::<&str>(&["exec", "fork", "exit"]))));
                let age = *rng.pick(&[0, 500, 1000, 1001, 59_999, 60_000, 119_999, 120_001, 3_000_000, 4_000_000]);
                cols.push(("event_time", if rng.chance(5) { Value::Null } else { Value::Integer(NOW_MS - age) }));
            }
            m.insert(table, super::engine::row(table, &cols));
        }
    }
    m
}

/// Argument `i` of a registered function as this engine's value.
fn arg(ctx: &Context<'_>, i: usize) -> Value {
    match ctx.get_raw(i) {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
    }
}

/// Argument `i` as text the way this engine converts it (numbers as SQLite
/// prints them); `None` for NULL.
fn arg_text(ctx: &Context<'_>, i: usize) -> Option<String> {
    let v = arg(ctx, i);
    super::super::ops::text_of(&v).map(std::borrow::Cow::into_owned)
}

fn user_error(e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(Box::new(e))
}

/// Registers the functions SQLite lacks, with this engine's semantics.
fn register_functions(c: &rusqlite::Connection) {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let text_fn = |f: fn(&str) -> &str| {
        move |ctx: &mut Context<'_>| -> rusqlite::Result<Option<String>> {
            Ok(arg_text(ctx, 0).map(|s| f(&s).to_owned()))
        }
    };
    c.create_scalar_function("basename", 1, flags, text_fn(basename)).unwrap();
    c.create_scalar_function("dirname", 1, flags, text_fn(dirname)).unwrap();
    c.create_scalar_function("now_ms", 0, flags, |_| Ok(NOW_MS)).unwrap();
    // `X REGEXP Y` calls regexp(Y, X).
    c.create_scalar_function("regexp", 2, flags, |ctx| {
        let (Some(pattern), Some(text)) = (arg_text(ctx, 0), arg_text(ctx, 1)) else {
            return Ok(None);
        };
        let re = regex::Regex::new(&pattern).map_err(user_error)?;
        Ok(Some(i64::from(re.is_match(&text))))
    })
    .unwrap();
}

fn sqlite_of(m: &MemTables) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_in_memory().unwrap();
    register_functions(&c);
    for t in Table::ALL {
        let cols: Vec<String> = t
            .columns()
            .iter()
            .map(|c| {
                let ty = match c.affinity {
                    Affinity::Integer => "INTEGER",
                    Affinity::Real => "REAL",
                    Affinity::Text => "TEXT",
                };
                format!("{} {ty}", c.name)
            })
            .collect();
        c.execute(&format!("CREATE TABLE {} ({})", t.name(), cols.join(", ")), []).unwrap();
        let marks = vec!["?"; t.columns().len()].join(", ");
        let mut st = c.prepare(&format!("INSERT INTO {} VALUES ({marks})", t.name())).unwrap();
        for r in m.rows(t) {
            let vals: Vec<rusqlite::types::Value> = r
                .iter()
                .map(|v| match v {
                    Value::Null => rusqlite::types::Value::Null,
                    Value::Integer(i) => rusqlite::types::Value::Integer(*i),
                    Value::Real(f) => rusqlite::types::Value::Real(*f),
                    Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
                })
                .collect();
            st.execute(rusqlite::params_from_iter(vals)).unwrap();
        }
    }
    c
}

fn sqlite_rows(c: &rusqlite::Connection, sql: &str) -> Result<Vec<Vec<Value>>, String> {
    let mut st = c.prepare(sql).map_err(|e| e.to_string())?;
    let n = st.column_count();
    let mut rows = st.query([]).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(|e| e.to_string())? {
        let mut row = Vec::with_capacity(n);
        for k in 0..n {
            row.push(match r.get_ref(k).map_err(|e| e.to_string())? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(i) => Value::Integer(i),
                ValueRef::Real(f) => Value::Real(f),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(_) => Value::Text("<blob>".into()),
            });
        }
        out.push(row);
    }
    Ok(out)
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Real(x), Value::Real(y)) => {
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()) || (x.is_nan() && y.is_nan())
        }
        _ => a == b,
    }
}

fn same_rows(mut a: Vec<Vec<Value>>, mut b: Vec<Vec<Value>>, ordered: bool) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if !ordered {
        let key = |r: &Vec<Value>| format!("{r:?}");
        let cmp = |x: &Vec<Value>, y: &Vec<Value>| {
            for (p, q) in x.iter().zip(y) {
                let o = p.sort_cmp(q);
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
            key(x).cmp(&key(y))
        };
        a.sort_by(cmp);
        b.sort_by(cmp);
    }
    a.iter().zip(&b).all(|(x, y)| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q)))
}

/// A streaming query run the way the agent runs it: once per
/// `process_events` row, the results concatenated.
fn per_event(q: &Query, m: &MemTables, params: &Params) -> Result<Vec<Vec<Value>>, String> {
    let mut rows = Vec::new();
    let type_column = Table::ProcessEvents.columns().iter().position(|c| c.name == "event_type");
    for ev in m.rows(Table::ProcessEvents) {
        let out = q.evaluate_event(ev, m, params, &Limits::default()).map_err(|e| e.to_string())?.rows;
        // The agent skips a rule whose WHERE rules out the event's type:
        // that must never skip a row.
        if let Some(Value::Text(t)) = type_column.and_then(|i| ev.get(i))
            && !out.is_empty()
            && !q.may_match_event_type(t)
        {
            return Err(format!("may_match_event_type({t:?}) is false but the event matched"));
        }
        rows.extend(out);
    }
    Ok(rows)
}

#[test]
fn differential_against_sqlite() {
    let mut rng = Rng(0x5EED_DAE3_0E1E);
    let mut mismatches = Vec::new();
    let mut ran = 0;
    let mut streamed = 0;
    let mut both_err = 0;
    let params = Params { now_ms: Some(NOW_MS), ..Params::default() };
    for round in 0..25 {
        let m = random_tables(&mut rng);
        let conn = sqlite_of(&m);
        for _ in 0..420 {
            let (sql, ordered) = gen_query(&mut rng);
            ran += 1;
            let compiled = Query::compile(&sql).map_err(|e| format!("compile: {e}"));
            let ours = compiled
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|q| q.execute(&m, &params, &Limits::default()).map_err(|e| e.to_string()));
            let theirs = sqlite_rows(&conn, &sql);
            if let (Ok(q), Ok(t)) = (&compiled, &theirs)
                && q.is_streaming()
            {
                streamed += 1;
                match per_event(q, &m, &params) {
                    Ok(rows) if same_rows(rows.clone(), t.clone(), false) => {}
                    Ok(rows) => {
                        mismatches.push(format!("round {round}, per event: {sql}\n  ours:   {rows:?}\n  sqlite: {t:?}"))
                    }
                    Err(e) => mismatches.push(format!("round {round}, per event: {sql}\n  ours error: {e}")),
                }
            }
            match (ours, theirs) {
                (Ok(o), Ok(t)) => {
                    if !same_rows(o.rows.clone(), t.clone(), ordered) {
                        mismatches.push(format!("round {round}: {sql}\n  ours:   {:?}\n  sqlite: {t:?}", o.rows));
                    }
                }
                (Err(a), Err(b)) => {
                    both_err += 1;
                    if both_err < 6 {
                        eprintln!("both fail: {sql}\n  ours: {a}\n  sqlite: {b}");
                    }
                }
                (Ok(o), Err(e)) => mismatches
                    .push(format!("round {round}: {sql}\n  ours ok ({} rows), sqlite error: {e}", o.rows.len())),
                (Err(e), Ok(t)) => {
                    mismatches.push(format!("round {round}: {sql}\n  ours error: {e}\n  sqlite: {} rows", t.len()))
                }
            }
        }
    }
    assert!(ran >= 10_000);
    assert!(streamed >= 500, "only {streamed} queries were compared per event");
    assert!(
        mismatches.is_empty(),
        "{} of {ran} queries differ; first ones:\n{}",
        mismatches.len(),
        mismatches.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(both_err < ran / 20, "too many queries fail on both sides: {both_err}");
}

/// LIKE (with and without ESCAPE) and GLOB on random patterns and texts
/// agree with SQLite.
#[test]
fn like_and_glob_against_sqlite() {
    const PAT: &[&str] =
        &["a", "A", "b", "%", "_", "[", "]", "^", "-", "*", "?", "é", "É", "ß", "\\", "/", "x", "[a-c]", "[^b]"];
    const TXT: &[&str] = &["a", "A", "b", "B", "é", "É", "-", "%", "_", "*", "?", "[", "]", "/", "\\", "x", "ß"];
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let mut st = conn.prepare("SELECT ?1 LIKE ?2, ?1 LIKE ?2 ESCAPE '\\', ?1 GLOB ?2").unwrap();
    let mut rng = Rng(0x11CE);
    let mut bad = Vec::new();
    for _ in 0..20_000 {
        let pat: String = (0..rng.below(7)).map(|_| *rng.pick(PAT)).collect();
        let text: String = (0..rng.below(9)).map(|_| *rng.pick(TXT)).collect();
        let theirs: (bool, bool, bool) =
            st.query_row([&text, &pat], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        let m = |p: Option<Pattern>| p.unwrap().is_match(&text);
        let ours = (m(Pattern::like(&pat, None)), m(Pattern::like(&pat, Some('\\'))), m(Pattern::glob(&pat)));
        if ours != theirs {
            bad.push(format!("{text:?} vs {pat:?}: ours (LIKE, LIKE ESCAPE, GLOB) {ours:?}, sqlite {theirs:?}"));
        }
    }
    assert!(bad.is_empty(), "{} differ:\n{}", bad.len(), bad.iter().take(15).cloned().collect::<Vec<_>>().join("\n"));
}
