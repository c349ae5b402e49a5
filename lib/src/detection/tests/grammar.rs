//! The grammar of random queries the differential test runs: a seeded
//! generator, the vocabulary of random values, and queries of every
//! supported shape (plain SELECTs with WHERE/DISTINCT/ORDER BY/LIMIT,
//! aggregates, joins including streaming-style ones over `process_events`,
//! CTEs) built from fully parenthesized expressions, including the functions
//! registered in SQLite for the comparison (REGEXP, basename, dirname,
//! now_ms).

/// splitmix64: a seeded generator, so failures reproduce.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(super) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    pub(super) fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
}

pub(super) const NAMES: &[&str] =
    &["sh", "bash", "nginx", "Nginx", "curl", "ß-tool", "éclair", "a%b", "x_y", "100", " 42 ", "1e3", "", "SH"];
pub(super) const PATHS: &[&str] = &[
    "/bin/sh",
    "/usr/bin/curl",
    "/usr/sbin/nginx",
    "/tmp/x y",
    "/opt/ünï/bin",
    "relative/path",
    "/usr/lib/",
    "/",
    "C:\\Windows\\cmd.exe",
];

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
        match self.rng.below(25) {
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
            21 => format!("{}({})", self.rng.pick(&["basename", "dirname"]), self.expr(d)),
            22 => {
                let f = *self.rng.pick(&["basename", "dirname"]);
                let c = *self.rng.pick(&["executable_path", "name"]);
                format!("{f}({})", self.qual(c))
            }
            23 => self.rng.pick(&["now_ms()", "(now_ms() - 1700000000000)"]).to_string(),
            _ => format!(
                "(SELECT {}(pid) FROM processes WHERE uid = {})",
                self.rng.pick(&["max", "min", "count"]),
                self.rng.pick(&["0", "33", "1000"])
            ),
        }
    }
    fn cond(&mut self, d: usize) -> String {
        let d = d.saturating_sub(1);
        match self.rng.below(15) {
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
            13 => format!(
                "({} {}REGEXP '{}')",
                self.expr(d),
                if self.rng.chance(30) { "NOT " } else { "" },
                self.rng.pick(&["^/usr/", "sh$", "(?i)nginx", "[0-9]+", "^$", "x y", "\\d{2}", "é", "^[a-m]", "."])
            ),
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

pub(super) fn gen_query(rng: &mut Rng) -> (String, bool) {
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

/// The functions SQLite lacks are really exercised: each appears in many
/// generated queries.
#[test]
fn grammar_covers_the_registered_functions() {
    let mut rng = Rng(7);
    let sqls: Vec<String> = (0..4000).map(|_| gen_query(&mut rng).0).collect();
    for f in ["REGEXP", "basename(", "dirname(", "now_ms()"] {
        let n = sqls.iter().filter(|s| s.contains(f)).count();
        assert!(n >= 50, "{f} appears in only {n} of 4000 queries");
    }
}

/// A table query over `process_events` for the event-interest test: a CTE,
/// a derived table, an expression subquery or a join scanning the events,
/// usually with an age bound on `event_time` (and sometimes without one, or
/// LEFT JOINed, which leaves the query without an interest). Conditions
/// mix row-only terms with terms reading other sources and `now_ms()`.
pub(super) fn gen_event_table_query(rng: &mut Rng) -> String {
    let bound = |rng: &mut Rng, c: &str| -> String {
        let ms = *rng.pick(&["0", "1000", "60000", "120000", "3600000"]);
        match rng.below(6) {
            0 => format!("{c} >= now_ms() - {ms}"),
            1 => format!("{c} > now_ms() - {ms}"),
            2 => format!("now_ms() - {ms} <= {c}"),
            3 => format!("{c} BETWEEN now_ms() - {ms} AND now_ms()"),
            4 => format!("{c} >= (now_ms() - 1700000000000)"),
            _ => "1 = 1".into(),
        }
    };
    let mut all: Vec<&str> = INT_COLS.to_vec();
    all.extend_from_slice(TEXT_COLS);
    all.push("event_type");
    let kind = rng.below(5);
    let mut g = Gen { rng, cols: qualified("e", &all) };
    let local = g.cond(3);
    let b = bound(g.rng, "e.event_time");
    let type_term =
        *g.rng.pick(&["e.event_type = 'exec'", "e.event_type IN ('exec', 'exit')", "e.event_type <> 'fork'", "1"]);
    match kind {
        0 => format!(
            "WITH t AS (SELECT e.pid, e.name, e.event_type, e.parent_key FROM process_events e \
             WHERE {type_term} AND {b} AND {local}) \
             SELECT t.parent_key, count(*), count(DISTINCT t.name) FROM t GROUP BY t.parent_key"
        ),
        1 => {
            // `processes` has no event_type.
            let procs: Vec<&str> = all.iter().copied().filter(|c| *c != "event_type").collect();
            let mut g2 = Gen { rng: g.rng, cols: qualified("p", &procs) };
            let outer = g2.cond(2);
            format!(
                "SELECT p.pid, p.name FROM processes p WHERE {outer} AND EXISTS \
                 (SELECT 1 FROM process_events e WHERE e.ppid = p.pid AND {b} AND {local})"
            )
        }
        2 => {
            let join = *g.rng.pick(&["JOIN", "LEFT JOIN"]);
            format!(
                "SELECT p.pid, e.seq FROM processes p {join} process_events e ON e.pid = p.pid \
                 WHERE {b} AND {local} AND (e.uid IS p.uid OR p.uid > 0)"
            )
        }
        3 => format!(
            "SELECT d.name, d.seq FROM (SELECT * FROM process_events e WHERE {local} AND {b} AND {type_term}) d \
             ORDER BY d.seq"
        ),
        _ => format!(
            "SELECT count(*), max(x.seq), (SELECT count(*) FROM process_events e WHERE {b}) \
             FROM (SELECT e.seq FROM process_events e WHERE {local} AND {b} AND e.event_time < now_ms() + 1) x"
        ),
    }
}
