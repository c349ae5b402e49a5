//! Which `process_events` rows a table query can read: lets the agent keep
//! just those in memory, fed as events arrive, instead of loading every
//! retained event from the store on each run of a table rule.
//!
//! A query has an interest when every place it scans `process_events` (a
//! *site*: a FROM source in the top SELECT, a CTE, a derived table or an
//! expression subquery) has a WHERE conjunct that bounds the event's age,
//! `event_time >= now_ms() - C` (or `>`, the mirrored forms, or `BETWEEN
//! now_ms() - C AND ...`). A row is then *admitted* when, for some site,
//! every other conjunct that reads only that row (no other source, no
//! parameter, no `now_ms()`, no subquery) is true; and *kept* while it is
//! younger than the largest bound. Rows that fail either can never reach a
//! result: the engine still applies every condition to the rows it gets,
//! so giving it the admitted, kept rows instead of all of them returns the
//! same rows. (One difference: a conjunct that errors on a row the cache
//! left out no longer errors.)
//!
//! Conditions of expression subqueries are not evaluated here (their sites
//! admit every row within their bound). A LEFT JOIN of `process_events`, or
//! a site without a bound, leaves the query without an interest: every
//! retained event may matter.

use std::borrow::Cow;
use std::sync::Arc;

use super::exec::{Ctx, Env};
use super::functions::Func;
use super::ops::Arith;
use super::plan::{CmpOp, Expr, MAX_SOURCES, Plan, SelectPlan, Source, SourceKind};
use super::query::Limits;
use super::{RowRef, Table, TableProvider, Value};

/// The `process_events` rows a table query can read (see the module docs).
#[derive(Debug, Clone)]
pub struct EventInterest {
    plan: Arc<Plan>,
    sites: Vec<Site>,
    horizon_ms: i64,
    event_time: usize,
}

/// One scan of `process_events`.
#[derive(Debug, Clone)]
struct Site {
    /// The SELECT holding it, when its conditions are evaluated here (the
    /// top SELECT or a CTE body); `None` for a subquery's site, which
    /// admits every row.
    select: Option<SelectRef>,
    /// Its position in that SELECT's FROM.
    src: usize,
    /// Positions in `Source::filter` of the conjuncts that read only the
    /// row.
    local: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
enum SelectRef {
    Root,
    Cte(usize),
}

impl EventInterest {
    /// The interest of a plan, if it has one (see the module docs).
    pub(crate) fn of(plan: &Arc<Plan>) -> Option<EventInterest> {
        let event_time = column("event_time")?;
        let mut found = Found { sites: Vec::new(), horizon_ms: 0, event_time };
        found.select(&plan.root, Some(SelectRef::Root))?;
        for (i, cte) in plan.ctes.iter().enumerate() {
            found.select(cte, Some(SelectRef::Cte(i)))?;
        }
        if found.sites.is_empty() {
            return None;
        }
        Some(EventInterest { plan: Arc::clone(plan), sites: found.sites, horizon_ms: found.horizon_ms, event_time })
    }

    /// How far back (milliseconds before `now_ms()`) the query reads
    /// events: the largest bound of its sites.
    pub fn horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    /// Whether some site's row-only conditions hold for `row` (a
    /// `process_events` row in catalog order). A condition that fails to
    /// evaluate admits the row: leaving one out must never change a result.
    pub fn admits(&self, row: &[Value]) -> bool {
        let limits = Limits::default();
        self.sites.iter().any(|site| {
            let Some(select) = site.select else { return true };
            let p = match select {
                SelectRef::Root => &self.plan.root,
                SelectRef::Cte(i) => match self.plan.ctes.get(i) {
                    Some(p) => p,
                    None => return true,
                },
            };
            let Some(source) = p.sources.get(site.src) else { return true };
            let ctx = Ctx::new(&self.plan, &NoTables, None, &[], &[], &limits, Some(0));
            let mut segs: [&[Value]; MAX_SOURCES] = [&[]; MAX_SOURCES];
            if let Some(seg) = segs.get_mut(site.src) {
                *seg = row;
            }
            let env = Env { segs: &segs, aggs: &[], outer: None };
            site.local
                .iter()
                .all(|&k| source.filter.get(k).is_none_or(|c| ctx.truth(c, &env).map_or(true, |t| t == Some(true))))
        })
    }

    /// Whether `row` is young enough to matter at `now_ms` (its
    /// `event_time` within the horizon). A NULL time never passes a bound;
    /// a time that is not a number is kept.
    pub fn keeps(&self, row: &[Value], now_ms: i64) -> bool {
        let floor = now_ms.saturating_sub(self.horizon_ms);
        match row.get(self.event_time) {
            Some(Value::Integer(t)) => *t >= floor,
            #[allow(clippy::cast_precision_loss)]
            Some(Value::Real(t)) => *t >= floor as f64,
            Some(Value::Null) | None => false,
            Some(Value::Text(_)) => true,
        }
    }
}

fn column(name: &str) -> Option<usize> {
    Table::ProcessEvents.columns().iter().position(|c| c.name == name)
}

/// What the walk over a plan found; `None` from a method means the query
/// has no interest.
struct Found {
    sites: Vec<Site>,
    horizon_ms: i64,
    event_time: usize,
}

impl Found {
    fn select<'p>(&mut self, p: &'p SelectPlan, select: Option<SelectRef>) -> Option<()> {
        for (i, s) in p.sources.iter().enumerate() {
            if s.kind == SourceKind::Table(Table::ProcessEvents) {
                self.site(s, i, select)?;
            }
        }
        // Subqueries anywhere in this SELECT scan on their own.
        let mut subs: Vec<&'p SelectPlan> = Vec::new();
        let mut collect = |e: &'p Expr| match e {
            Expr::InSub { sub, .. } | Expr::Exists { sub, .. } | Expr::Scalar(sub) => subs.push(&sub.plan),
            _ => {}
        };
        for e in exprs_of(p) {
            e.walk(&mut collect);
        }
        for sub in subs {
            self.select(sub, None)?;
        }
        Some(())
    }

    fn site(&mut self, s: &Source, src: usize, select: Option<SelectRef>) -> Option<()> {
        if s.left {
            return None;
        }
        let mut horizon: Option<i64> = None;
        let mut local = Vec::new();
        for (k, c) in s.filter.iter().enumerate() {
            if let Some(h) = self.bound(c, src) {
                // Every conjunct holds for a result row: the tightest wins.
                horizon = Some(horizon.map_or(h, |x| x.min(h)));
            } else if reads_only(c, src) {
                local.push(k);
            }
        }
        self.horizon_ms = self.horizon_ms.max(horizon?);
        let local = if select.is_some() { local } else { Vec::new() };
        self.sites.push(Site { select, src, local });
        Some(())
    }

    /// `C` when `c` is `event_time >= now_ms() - C` or an equivalent form.
    fn bound(&self, c: &Expr, src: usize) -> Option<i64> {
        let is_time = |e: &Expr| matches!(e, Expr::Col { up: 0, src: s, idx } if *s == src && *idx == self.event_time);
        match c {
            Expr::Cmp { op: CmpOp::Ge | CmpOp::Gt, l, r, .. } if is_time(l) => back_from_now(r),
            Expr::Cmp { op: CmpOp::Le | CmpOp::Lt, l, r, .. } if is_time(r) => back_from_now(l),
            Expr::Between { e, lo, negated: false, .. } if is_time(e) => back_from_now(lo),
            _ => None,
        }
    }
}

/// `C` for `now_ms()` (0) or `now_ms() - C` with a literal `C >= 0`.
fn back_from_now(e: &Expr) -> Option<i64> {
    let is_now = |e: &Expr| matches!(e, Expr::Func(Func::NowMs, args) if args.is_empty());
    match e {
        e if is_now(e) => Some(0),
        Expr::Arith(Arith::Sub, a, b) if is_now(a) => match b.as_ref() {
            Expr::Lit(Value::Integer(c)) if *c >= 0 => Some(*c),
            _ => None,
        },
        _ => None,
    }
}

/// Whether `e` reads nothing but source `src` of its own level and
/// literals: its value depends on the row alone.
fn reads_only(e: &Expr, src: usize) -> bool {
    let mut ok = true;
    e.walk(&mut |x| match x {
        Expr::Col { up, src: s, .. } => ok &= *up == 0 && *s == src,
        Expr::Param(_)
        | Expr::NamedParam(_)
        | Expr::Func(Func::NowMs, _)
        | Expr::InSub { .. }
        | Expr::Exists { .. }
        | Expr::Scalar(_)
        | Expr::Agg(_) => ok = false,
        _ => {}
    });
    ok
}

/// Every expression directly in a SELECT (not inside its subqueries).
fn exprs_of(p: &SelectPlan) -> Vec<&Expr> {
    let mut out: Vec<&Expr> = Vec::new();
    for s in &p.sources {
        out.extend(s.on.iter());
        out.extend(s.lookup.iter().map(|l| &l.key));
        out.extend(s.filter.iter());
    }
    out.extend(p.filter.iter());
    out.extend(p.group_by.iter());
    out.extend(p.aggs.iter().flat_map(|a| a.args.iter()));
    out.extend(p.having.iter());
    out.extend(p.projection.iter());
    out.extend(p.order_by.iter().filter_map(|t| match &t.key {
        super::plan::OrderKey::Expr(e) => Some(e),
        super::plan::OrderKey::Output(_) => None,
    }));
    out.extend(p.limit.iter());
    out.extend(p.offset.iter());
    out
}

/// The provider for evaluating row-only conditions: they read no table.
struct NoTables;

impl TableProvider for NoTables {
    fn scan(&self, _table: Table) -> Box<dyn Iterator<Item = RowRef<'_>> + '_> {
        Box::new(std::iter::empty::<Cow<'_, [Value]>>())
    }
}
