//! The executor: nested-loop joins (index lookups where the plan found an
//! indexed equality), filtering, grouping, DISTINCT, sorting and LIMIT, with
//! the limits checked as it goes.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use super::error::SqlError;
use super::functions::Acc;
use super::ops;
use super::plan::{MAX_SOURCES, OrderKey, Plan, SelectPlan, Source, SourceKind};
use super::query::Limits;
use super::{Table, TableProvider, Value};

/// Materialized rows (a CTE, a subquery result).
pub(crate) type Rows = Rc<Vec<Vec<Value>>>;

/// What an expression sees: the current joined row (one slice per source),
/// the aggregate results of its group, and the enclosing query's
/// environment (correlated subqueries).
#[derive(Clone, Copy)]
pub(crate) struct Env<'a> {
    pub segs: &'a [&'a [Value]],
    pub aggs: &'a [Value],
    pub outer: Option<&'a Env<'a>>,
}

/// State of one execution.
pub(crate) struct Ctx<'a> {
    pub plan: &'a Plan,
    pub tables: &'a dyn TableProvider,
    /// Streaming: the one `process_events` row.
    pub event: Option<&'a [Value]>,
    pub positional: &'a [Value],
    pub named: &'a [Value],
    pub limits: &'a Limits,
    /// What `now_ms()` returns: fixed by the caller, or read from the
    /// wall clock on first use (once per execution).
    now_ms: Cell<Option<i64>>,
    /// When the timeout clock started: at the first check (after 256 units
    /// of work), so a short evaluation never reads a clock.
    start: Cell<Option<Instant>>,
    ticks: Cell<u32>,
    mem_rows: Cell<u64>,
    /// The event passed the streaming pre-filter: the root's first source
    /// need not check the same conditions again.
    prefiltered: Cell<bool>,
    /// CTE results by id (grown on first use: nothing is allocated for a
    /// query without CTEs).
    cte_cache: RefCell<Vec<Option<Rows>>>,
    /// Uncorrelated subquery results by id.
    pub(crate) sub_cache: RefCell<Vec<Option<Rows>>>,
    pub(crate) regex_cache: RefCell<Option<HashMap<String, Rc<regex::Regex>>>>,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("event", &self.event.is_some()).finish_non_exhaustive()
    }
}

/// A group-by / DISTINCT key part: values that compare equal hash equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyPart {
    Null,
    Int(i64),
    Real(u64),
    Text(String),
}

#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn key_part(v: &Value) -> KeyPart {
    match v {
        Value::Null => KeyPart::Null,
        Value::Integer(i) => KeyPart::Int(*i),
        Value::Real(r) => {
            // 1.0 and 1 are the same group in SQLite.
            if r.trunc() == *r && (-9.2e18..9.2e18).contains(r) {
                KeyPart::Int(*r as i64)
            } else {
                KeyPart::Real(r.to_bits())
            }
        }
        Value::Text(s) => KeyPart::Text(s.clone()),
    }
}

/// One group of an aggregate query.
struct Group {
    /// The group's first row (bare columns read it).
    rep: Vec<Vec<Value>>,
    accs: Vec<Acc>,
    seen: Vec<Option<HashSet<KeyPart>>>,
}

/// An output row and its ORDER BY keys.
type Out = (Vec<Value>, Vec<Value>);

impl<'a> Ctx<'a> {
    /// A fresh execution context.
    pub(crate) fn new(
        plan: &'a Plan,
        tables: &'a dyn TableProvider,
        event: Option<&'a [Value]>,
        positional: &'a [Value],
        named: &'a [Value],
        limits: &'a Limits,
        now_ms: Option<i64>,
    ) -> Self {
        Ctx {
            plan,
            tables,
            event,
            positional,
            named,
            limits,
            now_ms: Cell::new(now_ms),
            start: Cell::new(None),
            ticks: Cell::new(0),
            mem_rows: Cell::new(0),
            prefiltered: Cell::new(false),
            cte_cache: RefCell::new(Vec::new()),
            sub_cache: RefCell::new(Vec::new()),
            regex_cache: RefCell::new(None),
        }
    }

    /// `now_ms()`: the same value for the whole execution.
    pub(crate) fn now_ms(&self) -> i64 {
        if let Some(t) = self.now_ms.get() {
            return t;
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.now_ms.set(Some(t));
        t
    }

    /// Counts one unit of work (a row visited); checks the timeout every
    /// 256. The clock starts at the first check: the work before it is at
    /// most 255 rows, and an evaluation smaller than that (a streaming rule
    /// on one event) never pays for reading a clock.
    pub(crate) fn tick(&self) -> Result<(), SqlError> {
        let t = self.ticks.get().wrapping_add(1);
        self.ticks.set(t);
        if t.is_multiple_of(256) {
            match self.start.get() {
                None => self.start.set(Some(Instant::now())),
                Some(start) => {
                    let elapsed = start.elapsed();
                    if elapsed > self.limits.timeout {
                        return Err(SqlError::Timeout { elapsed, limit: self.limits.timeout });
                    }
                }
            }
        }
        Ok(())
    }

    /// Accounts for `n` more rows held in memory.
    fn hold(&self, n: usize) -> Result<(), SqlError> {
        let total = self.mem_rows.get().saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        self.mem_rows.set(total);
        if total > self.limits.max_memory_rows {
            return Err(SqlError::MemoryLimit { limit: self.limits.max_memory_rows });
        }
        Ok(())
    }

    /// Whether the event fails the streaming pre-filter (see
    /// `Plan::prefilter`): then the query returns no row, and nothing else
    /// needs to run.
    pub(crate) fn event_rejected(&self, event: &[Value]) -> Result<bool, SqlError> {
        let Some(src) = self.plan.root.sources.first().filter(|_| self.plan.prefilter) else {
            return Ok(false);
        };
        let segs = [event];
        let pass = self.passes_all(&src.filter, &Env { segs: &segs, aggs: &[], outer: None })?;
        self.prefiltered.set(pass);
        Ok(!pass)
    }

    /// Runs the top-level SELECT; returns its rows and whether they were
    /// cut at `max_rows`.
    pub(crate) fn run_root(&self) -> Result<(Vec<Vec<Value>>, bool), SqlError> {
        let cap = self.limits.max_rows.saturating_add(1);
        let mut rows = self.run_select(&self.plan.root, None, Some(cap))?;
        let max = usize::try_from(self.limits.max_rows).unwrap_or(usize::MAX);
        let truncated = rows.len() > max;
        rows.truncate(max);
        Ok((rows, truncated))
    }

    /// Runs a subquery or CTE body, which must not exceed `max_rows`.
    pub(crate) fn run_nested(
        &self,
        p: &SelectPlan,
        outer: Option<&Env<'_>>,
        cap: Option<u64>,
    ) -> Result<Rows, SqlError> {
        let cap = cap.unwrap_or(self.limits.max_rows.saturating_add(1));
        let rows = self.run_select(p, outer, Some(cap))?;
        if u64::try_from(rows.len()).unwrap_or(u64::MAX) > self.limits.max_rows {
            return Err(SqlError::TooManyRows { limit: self.limits.max_rows });
        }
        self.hold(rows.len())?;
        Ok(Rc::new(rows))
    }

    fn cte_rows(&self, id: usize) -> Result<Rows, SqlError> {
        if let Some(Some(r)) = self.cte_cache.borrow().get(id) {
            return Ok(Rc::clone(r));
        }
        let body = self.plan.ctes.get(id).ok_or_else(|| internal("CTE id"))?;
        let rows = self.run_nested(body, None, None)?;
        cache_put(&self.cte_cache, id, &rows);
        Ok(rows)
    }

    /// Evaluates a constant LIMIT/OFFSET expression; `None` = unbounded.
    fn limit_value(&self, e: Option<&super::plan::Expr>, what: &str) -> Result<Option<u64>, SqlError> {
        let Some(e) = e else { return Ok(None) };
        let env = Env { segs: &[], aggs: &[], outer: None };
        let v = self.eval(e, &env)?;
        let v = ops::apply_conv(&v, ops::Conv::Numeric).into_owned();
        match v {
            Value::Integer(i) => Ok(u64::try_from(i).ok()),
            other => Err(SqlError::Type { message: format!("{what} must be an integer, got {other:?}"), pos: None }),
        }
    }

    /// Runs one SELECT. `cap` stops early once that many rows are final
    /// (only when nothing after the scan can change which rows they are).
    fn run_select(
        &self,
        p: &SelectPlan,
        outer: Option<&Env<'_>>,
        cap: Option<u64>,
    ) -> Result<Vec<Vec<Value>>, SqlError> {
        let limit = self.limit_value(p.limit.as_ref(), "LIMIT")?;
        let offset = self.limit_value(p.offset.as_ref(), "OFFSET")?.unwrap_or(0);
        // SQLite does not evaluate anything under LIMIT 0.
        if limit == Some(0) {
            return Ok(Vec::new());
        }
        let mut want = limit.map(|l| l.saturating_add(offset));
        if let Some(c) = cap {
            want = Some(want.map_or(c.saturating_add(offset), |w| w.min(c.saturating_add(offset))));
        }
        let streaming_cut = !p.aggregate && !p.distinct && p.order_by.is_empty();
        let mut out: Vec<Out> = Vec::new();
        if p.aggregate {
            self.run_grouped(p, outer, &mut out)?;
        } else {
            self.for_each_row(p, outer, &mut |env| {
                if !self.passes_all(&p.filter, env)? {
                    return Ok(true);
                }
                let row = self.project(p, env)?;
                self.hold(1)?;
                out.push(row);
                Ok(!(streaming_cut && want.is_some_and(|w| u64::try_from(out.len()).unwrap_or(u64::MAX) >= w)))
            })?;
        }
        if p.distinct {
            let mut seen = HashSet::new();
            out.retain(|(r, _)| seen.insert(r.iter().map(key_part).collect::<Vec<_>>()));
        }
        if !p.order_by.is_empty() {
            let terms = &p.order_by;
            out.sort_by(|(_, a), (_, b)| {
                for (t, (x, y)) in terms.iter().zip(a.iter().zip(b.iter())) {
                    let o = match (x.is_null(), y.is_null()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) if t.nulls_first => std::cmp::Ordering::Less,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) if t.nulls_first => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        (false, false) if t.desc => x.sort_cmp(y).reverse(),
                        (false, false) => x.sort_cmp(y),
                    };
                    if o != std::cmp::Ordering::Equal {
                        return o;
                    }
                }
                std::cmp::Ordering::Equal
            });
        }
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let take = want.map_or(usize::MAX, |w| usize::try_from(w.saturating_sub(offset)).unwrap_or(usize::MAX));
        Ok(out.into_iter().skip(skip).take(take).map(|(r, _)| r).collect())
    }

    /// The output row and sort keys of one (joined row or group) env.
    fn project(&self, p: &SelectPlan, env: &Env<'_>) -> Result<Out, SqlError> {
        let mut row = Vec::with_capacity(p.projection.len());
        for e in &p.projection {
            row.push(self.eval(e, env)?.into_owned());
        }
        let mut keys = Vec::with_capacity(p.order_by.len());
        for t in &p.order_by {
            keys.push(match &t.key {
                OrderKey::Output(i) => row.get(*i).cloned().unwrap_or(Value::Null),
                OrderKey::Expr(e) => self.eval(e, env)?.into_owned(),
            });
        }
        Ok((row, keys))
    }

    fn run_grouped(&self, p: &SelectPlan, outer: Option<&Env<'_>>, out: &mut Vec<Out>) -> Result<(), SqlError> {
        let mut index: HashMap<Vec<KeyPart>, usize> = HashMap::new();
        let mut groups: Vec<Group> = Vec::new();
        self.for_each_row(p, outer, &mut |env| {
            if !self.passes_all(&p.filter, env)? {
                return Ok(true);
            }
            let mut key = Vec::with_capacity(p.group_by.len());
            for g in &p.group_by {
                key.push(key_part(&*self.eval(g, env)?));
            }
            let gi = match index.get(&key) {
                Some(&i) => i,
                None => {
                    self.hold(1)?;
                    groups.push(Group {
                        rep: env.segs.iter().map(|s| s.to_vec()).collect(),
                        accs: p.aggs.iter().map(|a| Acc::new(a.func)).collect(),
                        seen: p.aggs.iter().map(|a| a.distinct.then(HashSet::new)).collect(),
                    });
                    index.insert(key, groups.len() - 1);
                    groups.len() - 1
                }
            };
            let g = groups.get_mut(gi).ok_or_else(|| internal("group"))?;
            for ((call, acc), seen) in p.aggs.iter().zip(g.accs.iter_mut()).zip(g.seen.iter_mut()) {
                let mut args = Vec::with_capacity(call.args.len());
                for a in &call.args {
                    args.push(self.eval(a, env)?.into_owned());
                }
                if let (Some(seen), Some(first)) = (seen.as_mut(), args.first())
                    && (first.is_null() || !seen.insert(key_part(first)))
                {
                    continue;
                }
                acc.step(call.func, &args);
            }
            Ok(true)
        })?;
        // No GROUP BY: one group even over no rows, its bare columns NULL.
        if groups.is_empty() && p.group_by.is_empty() {
            groups.push(Group {
                rep: p.sources.iter().map(|s| vec![Value::Null; s.width]).collect(),
                accs: p.aggs.iter().map(|a| Acc::new(a.func)).collect(),
                seen: Vec::new(),
            });
        }
        for g in &groups {
            self.tick()?;
            let mut aggs = Vec::with_capacity(g.accs.len());
            for (call, acc) in p.aggs.iter().zip(&g.accs) {
                aggs.push(acc.finish(call.func)?);
            }
            let segs: Vec<&[Value]> = g.rep.iter().map(Vec::as_slice).collect();
            let env = Env { segs: &segs, aggs: &aggs, outer };
            if !self.passes(p.having.as_ref(), &env)? {
                continue;
            }
            out.push(self.project(p, &env)?);
        }
        Ok(())
    }

    /// Calls `f` on every joined row of the FROM clause (before WHERE);
    /// `f` returns false to stop.
    fn for_each_row(
        &self,
        p: &SelectPlan,
        outer: Option<&Env<'_>>,
        f: &mut dyn FnMut(&Env<'_>) -> Result<bool, SqlError>,
    ) -> Result<(), SqlError> {
        if p.sources.is_empty() {
            let env = Env { segs: &[], aggs: &[], outer };
            f(&env)?;
            return Ok(());
        }
        self.join(p, 0, &[], outer, f).map(|_| ())
    }

    fn join(
        &self,
        p: &SelectPlan,
        i: usize,
        segs: &[&[Value]],
        outer: Option<&Env<'_>>,
        f: &mut dyn FnMut(&Env<'_>) -> Result<bool, SqlError>,
    ) -> Result<bool, SqlError> {
        let Some(src) = p.sources.get(i) else {
            let env = Env { segs, aggs: &[], outer };
            return f(&env);
        };
        let mut matched = false;
        match src.kind {
            SourceKind::Cte(id) => {
                let rows = self.cte_rows(id)?;
                for r in rows.iter() {
                    if !self.visit(p, i, src, segs, r, outer, f, &mut matched)? {
                        return Ok(false);
                    }
                }
            }
            SourceKind::Table(t) => {
                if let (Table::ProcessEvents, Some(ev)) = (t, self.event) {
                    if !self.visit(p, i, src, segs, ev, outer, f, &mut matched)? {
                        return Ok(false);
                    }
                } else if let Some(rows) = self.lookup_rows(t, src, segs, outer)? {
                    self.hold(rows.len())?;
                    for r in &rows {
                        if !self.visit(p, i, src, segs, r, outer, f, &mut matched)? {
                            return Ok(false);
                        }
                    }
                } else {
                    for r in self.tables.scan(t) {
                        if !self.visit(p, i, src, segs, &r, outer, f, &mut matched)? {
                            return Ok(false);
                        }
                    }
                }
            }
        }
        if src.left && !matched {
            let nulls = vec![Value::Null; src.width];
            let mut next: [&[Value]; MAX_SOURCES] = [&[]; MAX_SOURCES];
            let n = segs.len().min(MAX_SOURCES - 1);
            next[..n].copy_from_slice(&segs[..n]);
            next[n] = &nulls;
            let segs = &next[..=n];
            if !self.passes_all(&src.filter, &Env { segs, aggs: &[], outer })? {
                return Ok(true);
            }
            return self.join(p, i + 1, segs, outer, f);
        }
        Ok(true)
    }

    /// Whether a filter (ON, HAVING) lets the row through: only a true
    /// value does.
    fn passes(&self, filter: Option<&super::plan::Expr>, env: &Env<'_>) -> Result<bool, SqlError> {
        match filter {
            None => Ok(true),
            Some(e) => Ok(self.truth(e, env)? == Some(true)),
        }
    }

    /// Whether every WHERE conjunct is true; stops at the first that is
    /// not (as SQLite does: a NULL term skips the rest like a false one).
    fn passes_all(&self, conjuncts: &[super::plan::Expr], env: &Env<'_>) -> Result<bool, SqlError> {
        for c in conjuncts {
            if self.truth(c, env)? != Some(true) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Rows of `t` matching the source's index lookup; `None` to scan.
    fn lookup_rows(
        &self,
        t: Table,
        src: &Source,
        segs: &[&[Value]],
        outer: Option<&Env<'_>>,
    ) -> Result<Option<Vec<super::RowRef<'a>>>, SqlError> {
        let Some(lk) = &src.lookup else {
            return Ok(None);
        };
        let env = Env { segs, aggs: &[], outer };
        let key = self.eval(&lk.key, &env)?;
        let key = if lk.numeric {
            Cow::Owned(match *ops::apply_conv(&key, ops::Conv::Numeric) {
                Value::Integer(i) => Value::Integer(i),
                #[allow(clippy::cast_possible_truncation)]
                Value::Real(r) if r.trunc() == r && (-9.2e18..9.2e18).contains(&r) => Value::Integer(r as i64),
                Value::Real(r) => Value::Real(r),
                // NULL or non-numeric text equals no integer.
                _ => return Ok(Some(Vec::new())),
            })
        } else {
            match &*key {
                Value::Null => return Ok(Some(Vec::new())),
                // Text keys (the usual `p.process_key = e.parent_key`) are
                // looked up borrowed.
                Value::Text(_) => key,
                other => Cow::Owned(Value::Text(ops::to_text(other))),
            }
        };
        Ok(self.tables.lookup(t, lk.column, &key))
    }

    #[allow(clippy::too_many_arguments)]
    fn visit(
        &self,
        p: &SelectPlan,
        i: usize,
        src: &Source,
        segs: &[&[Value]],
        row: &[Value],
        outer: Option<&Env<'_>>,
        f: &mut dyn FnMut(&Env<'_>) -> Result<bool, SqlError>,
        matched: &mut bool,
    ) -> Result<bool, SqlError> {
        self.tick()?;
        let mut next: [&[Value]; MAX_SOURCES] = [&[]; MAX_SOURCES];
        let n = segs.len().min(MAX_SOURCES - 1);
        next[..n].copy_from_slice(&segs[..n]);
        next[n] = row;
        let segs = &next[..=n];
        let env = Env { segs, aggs: &[], outer };
        if !self.passes(src.on.as_ref(), &env)? {
            return Ok(true);
        }
        *matched = true;
        let prefiltered = i == 0 && self.prefiltered.get() && std::ptr::eq(p, &self.plan.root);
        if !prefiltered && !self.passes_all(&src.filter, &env)? {
            return Ok(true);
        }
        self.join(p, i + 1, segs, outer, f)
    }
}

/// Stores a result in a per-execution cache slot.
pub(crate) fn cache_put(cache: &RefCell<Vec<Option<Rows>>>, id: usize, rows: &Rows) {
    let mut c = cache.borrow_mut();
    if c.len() <= id {
        c.resize(id + 1, None);
    }
    if let Some(slot) = c.get_mut(id) {
        *slot = Some(Rc::clone(rows));
    }
}

/// An invariant of the planner did not hold (a bug, reported, not a panic).
pub(crate) fn internal(what: &str) -> SqlError {
    SqlError::Type { message: format!("internal error: bad {what} in plan"), pos: None }
}
