//! Differential test: random tables and >= 10,000 random queries from a
//! grammar of the supported subset, run by this engine and by SQLite
//! (rusqlite, bundled), compared as multisets unless ORDER BY fixes the
//! order. Expressions are fully parenthesized: sqlparser's precedence for
//! `||` differs from SQLite's (see the module docs of `bind`).
//!
//! REGEXP, basename, dirname and now_ms are not SQLite built-ins and
//! rusqlite's `functions` feature is off in this workspace, so they are
//! covered by unit tests instead.
//!
//! Columns never hold i64::MIN: SQLite may evaluate (or skip) the terms of
//! a WHERE in another order than written, so whether `abs(i64::MIN)` is
//! reached, and errors, depends on its planner.

use rusqlite::types::ValueRef;

use super::super::*;

/// splitmix64: a seeded generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
}

const NAMES: &[&str] =
    &["sh", "bash", "nginx", "Nginx", "curl", "ß-tool", "éclair", "a%b", "x_y", "100", " 42 ", "1e3", "", "SH"];
const PATHS: &[&str] = &["/bin/sh", "/usr/bin/curl", "/usr/sbin/nginx", "/tmp/x y", "/opt/ünï/bin", "relative/path"];

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// Random `processes` and `process_events` rows: NULLs, unicode, big
/// integers and reals.
fn random_tables(rng: &mut Rng) -> MemTables {
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
            }
            m.insert(table, super::engine::row(table, &cols));
        }
    }
    m
}

fn sqlite_of(m: &MemTables) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_in_memory().unwrap();
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

/// The query generator: `cols` are the column references in scope.
struct Gen<'a> {
    rng: &'a mut Rng,
    cols: Vec<String>,
}

const INT_COLS: &[&str] = &["pid", "ppid", "uid", "memory_usage", "start_time"];
const TEXT_COLS: &[&str] = &["name", "executable_path", "process_key", "parent_key"];

impl Gen<'_> {
    fn col(&mut self) -> String {
        self.rng.pick(&self.cols).clone()
    }
    fn lit(&mut self) -> String {
        match self.rng.below(9) {
            0 => "NULL".into(),
            1 => self
                .rng
                .pick(&["0", "1", "-1", "33", "100", "9223372036854775807", "-9223372036854775808", "4000000000"])
                .to_string(),
            2 => self.rng.pick(&["1.5", "0.1", "-2.25", "1e10", "3.0", "0.0"]).to_string(),
            3 | 4 => format!("'{}'", self.rng.pick(NAMES).replace('\'', "''")),
            5 => self.rng.pick(&["'100'", "'33'", "' 42 '", "'1e3'", "'abc'", "'3.0'"]).to_string(),
            _ => self.rng.pick(&["2", "3", "7", "-3"]).to_string(),
        }
    }
    fn leaf(&mut self) -> String {
        if self.rng.chance(60) { self.col() } else { self.lit() }
    }
    fn expr(&mut self, d: usize) -> String {
        if d == 0 || self.rng.chance(25) {
            return self.leaf();
        }
        let d = d - 1;
        match self.rng.below(22) {
            0 => format!("({} {} {})", self.expr(d), self.rng.pick(&["+", "-", "*", "/", "%"]), self.expr(d)),
            1 => format!("({} || {})", self.expr(d), self.expr(d)),
            2 | 3 => self.cond(d),
            4 => format!("(- {})", self.expr(d)),
            5 => format!("lower({})", self.expr(d)),
            6 => format!("upper({})", self.expr(d)),
            7 => format!("length({})", self.expr(d)),
            8 => format!(
                "substr({}, {}, {})",
                self.expr(d),
                self.rng.pick(&["1", "2", "0", "-2", "-5"]),
                self.rng.pick(&["1", "3", "-1", "100"])
            ),
            9 => format!("instr({}, {})", self.expr(d), self.lit()),
            10 => format!(
                "replace({}, {}, {})",
                self.expr(d),
                self.rng.pick(&["'s'", "'a'", "''"]),
                self.rng.pick(&["'S'", "'xy'", "''"])
            ),
            11 => format!(
                "{}({}, {})",
                self.rng.pick(&["trim", "ltrim", "rtrim"]),
                self.expr(d),
                self.rng.pick(&["' '", "'/'", "'sx'"])
            ),
            12 => format!("abs({})", self.expr(d)),
            13 => format!("coalesce({}, {}, {})", self.expr(d), self.expr(d), self.lit()),
            14 => format!("{}({}, {})", self.rng.pick(&["ifnull", "nullif"]), self.expr(d), self.expr(d)),
            15 => format!("typeof({})", self.expr(d)),
            16 => format!("CAST({} AS {})", self.expr(d), self.rng.pick(&["INTEGER", "REAL", "TEXT", "NUMERIC"])),
            17 => format!(
                "CASE WHEN {} THEN {} WHEN {} THEN {} ELSE {} END",
                self.cond(d),
                self.expr(d),
                self.cond(d),
                self.expr(d),
                self.expr(d)
            ),
            18 => format!("CASE {} WHEN {} THEN {} ELSE {} END", self.expr(d), self.lit(), self.expr(d), self.expr(d)),
            19 => format!("{}({}, {})", self.rng.pick(&["min", "max"]), self.expr(d), self.expr(d)),
            20 if self.cols.iter().any(|c| c.ends_with("argv")) => format!(
                "json_extract({}, '{}')",
                self.qual("argv"),
                self.rng.pick(&["$[0]", "$[1]", "$[2]", "$[5]", "$[#-1]"])
            ),
            20 => self.leaf(),
            _ => format!(
                "(SELECT {}(pid) FROM processes WHERE uid = {})",
                self.rng.pick(&["max", "min", "count"]),
                self.rng.pick(&["0", "33", "1000"])
            ),
        }
    }
    fn cond(&mut self, d: usize) -> String {
        let d = d.saturating_sub(1);
        match self.rng.below(14) {
            0 | 1 => format!(
                "({} {} {})",
                self.expr(d),
                self.rng.pick(&["=", "<>", "<", "<=", ">", ">=", "!="]),
                self.expr(d)
            ),
            2 => {
                let c = *self.rng.pick(INT_COLS);
                let q = self.qual(c);
                format!("({q} {} {})", self.rng.pick(&["=", "<", ">="]), self.lit())
            }
            3 => {
                let c = *self.rng.pick(TEXT_COLS);
                let q = self.qual(c);
                format!("({q} {} {})", self.rng.pick(&["=", "<", ">="]), self.lit())
            }
            4 => format!("({} AND {})", self.cond(d), self.cond(d)),
            5 => format!("({} OR {})", self.cond(d), self.cond(d)),
            6 => format!("(NOT {})", self.cond(d)),
            7 => format!("({} IS {}NULL)", self.expr(d), if self.rng.chance(50) { "NOT " } else { "" }),
            8 => format!("({} IS {}{})", self.expr(d), if self.rng.chance(50) { "NOT " } else { "" }, self.expr(d)),
            9 => format!(
                "({} {}LIKE {}{})",
                self.expr(d),
                if self.rng.chance(30) { "NOT " } else { "" },
                self.rng.pick(&["'%sh%'", "'S_'", "'%'", "'n%x'", "'a\\%b' ESCAPE '\\'", "'%1%'", "'_'", "'%É%'"]),
                ""
            ),
            10 => format!(
                "({} GLOB {})",
                self.expr(d),
                self.rng.pick(&["'*sh*'", "'[a-m]*'", "'?'", "'*/bin/*'", "'[^s]*'", "'N*'"])
            ),
            11 => {
                let items: Vec<String> = (0..1 + self.rng.below(4)).map(|_| self.lit()).collect();
                format!("({} {}IN ({}))", self.expr(d), if self.rng.chance(30) { "NOT " } else { "" }, items.join(", "))
            }
            12 => format!(
                "({} {}BETWEEN {} AND {})",
                self.expr(d),
                if self.rng.chance(30) { "NOT " } else { "" },
                self.lit(),
                self.lit()
            ),
            _ => {
                let c = *self.rng.pick(INT_COLS);
                let q = self.qual(c);
                match self.rng.below(3) {
                    0 => format!("({q} IN (SELECT ppid FROM processes WHERE {}))", self.inner_cond()),
                    1 => format!("(EXISTS (SELECT 1 FROM processes c2 WHERE c2.ppid = {q}))"),
                    _ => {
                        format!("({q} {}IN (SELECT uid FROM processes))", if self.rng.chance(50) { "NOT " } else { "" })
                    }
                }
            }
        }
    }
    fn inner_cond(&mut self) -> String {
        format!("uid {} {}", self.rng.pick(&["=", "<>", ">"]), self.rng.pick(&["0", "33", "NULL", "'33'"]))
    }
    /// A column called `c` in scope (any column when there is none).
    fn qual(&mut self, c: &str) -> String {
        let dotted = format!(".{c}");
        match self.cols.iter().find(|x| *x == c || x.ends_with(&dotted)) {
            Some(x) => x.clone(),
            None => self.col(),
        }
    }
}

fn qualified(alias: &str, names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("{alias}.{n}")).collect()
}

fn gen_query(rng: &mut Rng) -> (String, bool) {
    let mut all: Vec<&str> = INT_COLS.to_vec();
    all.extend_from_slice(TEXT_COLS);
    all.push("cpu_usage");
    all.push("argv");
    match rng.below(6) {
        // Plain SELECT with WHERE, DISTINCT, ORDER BY, LIMIT.
        0..=2 => {
            let mut g = Gen { rng, cols: qualified("p", &all) };
            let n = 1 + g.rng.below(3);
            let proj: Vec<String> = (0..n).map(|_| g.expr(3)).collect();
            let distinct = g.rng.chance(15);
            let where_ = if g.rng.chance(80) { format!(" WHERE {}", g.cond(4)) } else { String::new() };
            let mut sql = format!(
                "SELECT {}{} FROM processes p{where_}",
                if distinct { "DISTINCT " } else { "" },
                proj.join(", ")
            );
            let ordered = g.rng.chance(40);
            if ordered {
                if distinct {
                    let keys: Vec<String> =
                        (1..=n).map(|k| format!("{k}{}", if k % 2 == 0 { " DESC" } else { "" })).collect();
                    sql += &format!(" ORDER BY {}", keys.join(", "));
                } else {
                    let key = format!("coalesce({}, {})", g.col(), g.expr(1));
                    sql += &format!(" ORDER BY {key} {}, p.pid", g.rng.pick(&["ASC", "DESC"]));
                }
                if g.rng.chance(50) {
                    sql += &format!(" LIMIT {} OFFSET {}", g.rng.below(5), g.rng.below(3));
                }
            }
            (sql, ordered)
        }
        // Aggregates, GROUP BY, HAVING.
        3 => {
            let mut g = Gen { rng, cols: qualified("p", &all) };
            let key = format!("coalesce({}, {})", g.col(), g.expr(1));
            let arg = g.expr(2);
            let agg = g
                .rng
                .pick(&["count", "sum", "avg", "min", "max", "total", "group_concat", "count(DISTINCT"])
                .to_string();
            let aggexpr =
                if agg == "count(DISTINCT" { format!("count(DISTINCT {arg})") } else { format!("{agg}({arg})") };
            let where_ = if g.rng.chance(60) { format!(" WHERE {}", g.cond(3)) } else { String::new() };
            if g.rng.chance(70) {
                let having = if g.rng.chance(40) {
                    format!(" HAVING count(*) {} {}", g.rng.pick(&[">", "=", "<"]), g.rng.below(3))
                } else {
                    String::new()
                };
                // group_concat order depends on scan order: compare its length only.
                let shown = if agg == "group_concat" { format!("length({aggexpr})") } else { aggexpr };
                (format!("SELECT {key}, count(*), {shown} FROM processes p{where_} GROUP BY {key}{having}"), false)
            } else {
                let shown = if agg == "group_concat" { format!("length({aggexpr})") } else { aggexpr };
                (format!("SELECT count(*), {shown}, max(p.name) FROM processes p{where_}"), false)
            }
        }
        // Joins (inner/left), streaming-style joins.
        4 => {
            let mut cols = qualified("c", &all);
            cols.extend(qualified("p", &all));
            let mut g = Gen { rng, cols };
            let (from, on) = if g.rng.chance(50) {
                ("processes c", *g.rng.pick(&["p.process_key = c.parent_key", "p.pid = c.ppid", "p.uid = c.uid"]))
            } else {
                ("process_events c", *g.rng.pick(&["p.process_key = c.parent_key", "p.pid = c.ppid", "p.pid = c.pid"]))
            };
            let kind = *g.rng.pick(&["JOIN", "LEFT JOIN", "INNER JOIN"]);
            let proj = format!("{}, {}", g.expr(2), g.expr(2));
            let where_ = if g.rng.chance(70) { format!(" WHERE {}", g.cond(3)) } else { String::new() };
            (format!("SELECT {proj} FROM {from} {kind} processes p ON {on}{where_}"), false)
        }
        // CTEs and derived tables.
        _ => {
            let mut g = Gen { rng, cols: all.iter().map(|s| (*s).to_owned()).collect() };
            let inner_where = g.cond(2);
            let mut g2 = Gen { rng: g.rng, cols: vec!["t.pid".into(), "t.name".into(), "t.uid".into()] };
            let proj = g2.expr(2);
            let outer = g2.cond(2);
            (
                format!(
                    "WITH t AS (SELECT pid, name, uid FROM processes WHERE {inner_where}) SELECT {proj}, t.pid FROM t WHERE {outer}"
                ),
                false,
            )
        }
    }
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

#[test]
fn differential_against_sqlite() {
    let mut rng = Rng(0x5EED_DAE3_0E1E);
    let mut mismatches = Vec::new();
    let mut ran = 0;
    let mut both_err = 0;
    for round in 0..25 {
        let m = random_tables(&mut rng);
        let conn = sqlite_of(&m);
        for _ in 0..420 {
            let (sql, ordered) = gen_query(&mut rng);
            ran += 1;
            let ours = Query::compile(&sql)
                .map_err(|e| format!("compile: {e}"))
                .and_then(|q| q.execute(&m, &Params::default(), &Limits::default()).map_err(|e| e.to_string()));
            let theirs = sqlite_rows(&conn, &sql);
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
    assert!(
        mismatches.is_empty(),
        "{} of {ran} queries differ; first ones:\n{}",
        mismatches.len(),
        mismatches.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(both_err < ran / 20, "too many queries fail on both sides: {both_err}");
}
