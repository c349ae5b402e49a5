//! The compiled form of a query: every name resolved to a position, every
//! function to an enum, every comparison's affinity conversion decided.
//! The executor never looks at the SQL AST.

use std::sync::Arc;

use super::Table;
use super::Value;
use super::functions::{AggFunc, Func};
use super::like::Pattern;
use super::ops::{Aff, Arith, CastTo, Conv};

/// The most sources (tables, CTEs, joins) one SELECT may read; the executor
/// keeps the joined row as a fixed array of slices.
pub(crate) const MAX_SOURCES: usize = 8;

/// A whole compiled query: the top SELECT and the CTE/derived-table bodies
/// it reads (each materialized at most once per execution).
#[derive(Debug)]
pub(crate) struct Plan {
    /// The top-level SELECT.
    pub root: SelectPlan,
    /// Bodies of CTEs and derived tables, by id.
    pub ctes: Vec<SelectPlan>,
    /// Number of positional parameter slots (`?`, `?N`).
    pub positional: usize,
    /// Named parameters (without their `:`/`@`/`$` prefix), in slot order
    /// after the positional ones.
    pub named: Vec<String>,
    /// The top-level SELECT's output names, shared by every result (an
    /// evaluation hands out this `Arc`, never a copy of the names).
    pub columns: Arc<[String]>,
    /// A streaming query whose event conditions (`root.sources[0].filter`)
    /// alone can reject an event: no aggregate (which answers even over no
    /// rows) and no LIMIT/OFFSET (`LIMIT 0` evaluates nothing). Checked
    /// before anything else runs.
    pub prefilter: bool,
}

/// One SELECT.
#[derive(Debug)]
pub(crate) struct SelectPlan {
    /// FROM and its joins, in order; empty for `SELECT 1`.
    pub sources: Vec<Source>,
    /// The WHERE conjuncts left after the others were pushed down to the
    /// sources (`Source::filter`): those with subqueries, or all of them
    /// when there is no FROM. Like SQLite, a row stops at the first
    /// conjunct that is not true (later ones are not evaluated).
    pub filter: Vec<Expr>,
    /// GROUP BY expressions.
    pub group_by: Vec<Expr>,
    /// Aggregate calls referenced by `Expr::Agg(i)`.
    pub aggs: Vec<AggCall>,
    /// Whether rows are grouped (GROUP BY, an aggregate, or HAVING).
    pub aggregate: bool,
    /// HAVING.
    pub having: Option<Expr>,
    /// Output expressions.
    pub projection: Vec<Expr>,
    /// Output names.
    pub columns: Vec<String>,
    /// Output affinities (for comparisons against a subquery or CTE).
    pub affs: Vec<Aff>,
    /// SELECT DISTINCT.
    pub distinct: bool,
    /// ORDER BY.
    pub order_by: Vec<OrderTerm>,
    /// LIMIT (constant expression).
    pub limit: Option<Expr>,
    /// OFFSET (constant expression).
    pub offset: Option<Expr>,
}

/// One source of rows in a FROM clause.
#[derive(Debug)]
pub(crate) struct Source {
    /// Where rows come from.
    pub kind: SourceKind,
    /// Row width.
    pub width: usize,
    /// LEFT JOIN (NULL-extended when nothing matches).
    pub left: bool,
    /// ON condition (joins).
    pub on: Option<Expr>,
    /// An indexed equality to look rows up by instead of scanning.
    pub lookup: Option<Lookup>,
    /// The WHERE conjuncts that read nothing after this source, checked as
    /// soon as its row is joined (after ON): a streaming rule's conditions
    /// on the event run before any join lookup.
    pub filter: Vec<Expr>,
}

/// Where a source's rows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceKind {
    /// A catalog table.
    Table(Table),
    /// A CTE or derived table, by id into `Plan::ctes`.
    Cte(usize),
}

/// `column = key` where `column` is indexed and `key` only reads earlier
/// sources, outer queries, parameters and literals.
#[derive(Debug)]
pub(crate) struct Lookup {
    /// Catalog position of the indexed column.
    pub column: usize,
    /// Whether the column has numeric affinity (how the key is normalized).
    pub numeric: bool,
    /// The key.
    pub key: Expr,
}

/// One aggregate call.
#[derive(Debug)]
pub(crate) struct AggCall {
    /// Which aggregate.
    pub func: AggFunc,
    /// Arguments (none for `count(*)`).
    pub args: Vec<Expr>,
    /// `DISTINCT` inside the call.
    pub distinct: bool,
}

/// One ORDER BY term.
#[derive(Debug)]
pub(crate) struct OrderTerm {
    /// What to sort by.
    pub key: OrderKey,
    /// DESC.
    pub desc: bool,
    /// NULLs first (SQLite's default: first for ASC, last for DESC).
    pub nulls_first: bool,
}

/// What an ORDER BY term sorts by.
#[derive(Debug)]
pub(crate) enum OrderKey {
    /// An output column (by position or alias).
    Output(usize),
    /// An expression over the source row (or the group).
    Expr(Expr),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// An expression subquery.
#[derive(Debug)]
pub(crate) struct Sub {
    /// Id for the per-execution result cache.
    pub id: usize,
    /// Reads columns of an enclosing query (cannot be cached).
    pub correlated: bool,
    /// The query.
    pub plan: SelectPlan,
}

/// A bound expression.
#[derive(Debug)]
pub(crate) enum Expr {
    /// Column `idx` of source `src`, `up` query levels out (0 = this one).
    Col { up: usize, src: usize, idx: usize },
    /// A literal.
    Lit(Value),
    /// Positional parameter `i` (0-based).
    Param(usize),
    /// Named parameter `i` (index into `Plan::named`).
    NamedParam(usize),
    /// `x IS [NOT] TRUE|FALSE`.
    IsBool { e: Box<Expr>, want: bool, negated: bool },
    /// Unary minus.
    Neg(Box<Expr>),
    /// Unary plus (no-op, drops affinity).
    Plus(Box<Expr>),
    /// NOT.
    Not(Box<Expr>),
    /// `+ - * / %`.
    Arith(Arith, Box<Expr>, Box<Expr>),
    /// `||`.
    Concat(Box<Expr>, Box<Expr>),
    /// A comparison with its affinity conversion.
    Cmp { op: CmpOp, l: Box<Expr>, r: Box<Expr>, conv: Conv },
    /// `IS` / `IS NOT` (NULL-safe equality).
    Is { l: Box<Expr>, r: Box<Expr>, conv: Conv, negated: bool },
    /// AND.
    And(Box<Expr>, Box<Expr>),
    /// OR.
    Or(Box<Expr>, Box<Expr>),
    /// `IS [NOT] NULL`.
    IsNull { e: Box<Expr>, negated: bool },
    /// LIKE; `compiled` when the pattern (and escape) are literals.
    Like { e: Box<Expr>, pat: Box<Expr>, esc: Option<Box<Expr>>, negated: bool, compiled: Option<Box<Pattern>> },
    /// GLOB; `compiled` when the pattern is a literal.
    Glob { e: Box<Expr>, pat: Box<Expr>, negated: bool, compiled: Option<Box<Pattern>> },
    /// REGEXP; `compiled` when the pattern is a literal.
    Regexp { e: Box<Expr>, pat: Box<Expr>, negated: bool, compiled: Option<Arc<regex::Regex>> },
    /// BETWEEN.
    Between { e: Box<Expr>, lo: Box<Expr>, hi: Box<Expr>, negated: bool, conv_lo: Conv, conv_hi: Conv },
    /// `IN (list)`; one conversion per item. `texts`: when every item is a
    /// text literal compared without numeric conversion, the items sorted
    /// by bytes, for a binary search when the value is text.
    InList { e: Box<Expr>, list: Vec<(Expr, Conv)>, negated: bool, texts: Option<Box<[Box<str>]>> },
    /// `IN (subquery)`.
    InSub { e: Box<Expr>, sub: Box<Sub>, negated: bool, conv: Conv },
    /// `[NOT] EXISTS (subquery)`.
    Exists { sub: Box<Sub>, negated: bool },
    /// `(subquery)` as a value.
    Scalar(Box<Sub>),
    /// CASE; with an operand each WHEN compares with its conversion.
    Case { operand: Option<Box<Expr>>, whens: Vec<(Expr, Expr, Conv)>, else_: Option<Box<Expr>> },
    /// CAST.
    Cast(Box<Expr>, CastTo),
    /// A scalar function.
    Func(Func, Vec<Expr>),
    /// The result of aggregate call `i` of this level.
    Agg(usize),
}

impl Expr {
    /// The last source of this level the expression reads (0 when it reads
    /// none); `None` when it holds a subquery or an aggregate, which are
    /// evaluated on the whole joined row only.
    pub(crate) fn last_source(&self) -> Option<usize> {
        let mut last = 0;
        let mut ok = true;
        self.walk(&mut |e| match e {
            Expr::Col { up: 0, src, .. } => last = last.max(*src),
            Expr::InSub { .. } | Expr::Exists { .. } | Expr::Scalar(_) | Expr::Agg(_) => ok = false,
            _ => {}
        });
        ok.then_some(last)
    }

    /// Calls `f` on this expression and every expression under it (not
    /// inside subqueries).
    pub(crate) fn walk<'e>(&'e self, f: &mut dyn FnMut(&'e Expr)) {
        f(self);
        match self {
            Expr::Col { .. }
            | Expr::Lit(_)
            | Expr::Param(_)
            | Expr::NamedParam(_)
            | Expr::Agg(_)
            | Expr::Exists { .. }
            | Expr::Scalar(_) => {}
            Expr::IsBool { e, .. }
            | Expr::Neg(e)
            | Expr::Plus(e)
            | Expr::Not(e)
            | Expr::IsNull { e, .. }
            | Expr::Cast(e, _)
            | Expr::InSub { e, .. } => e.walk(f),
            Expr::Arith(_, a, b)
            | Expr::Concat(a, b)
            | Expr::And(a, b)
            | Expr::Or(a, b)
            | Expr::Cmp { l: a, r: b, .. }
            | Expr::Is { l: a, r: b, .. }
            | Expr::Glob { e: a, pat: b, .. }
            | Expr::Regexp { e: a, pat: b, .. } => {
                a.walk(f);
                b.walk(f);
            }
            Expr::Like { e, pat, esc, .. } => {
                e.walk(f);
                pat.walk(f);
                if let Some(x) = esc {
                    x.walk(f);
                }
            }
            Expr::Between { e, lo, hi, .. } => {
                e.walk(f);
                lo.walk(f);
                hi.walk(f);
            }
            Expr::InList { e, list, .. } => {
                e.walk(f);
                for (x, _) in list {
                    x.walk(f);
                }
            }
            Expr::Case { operand, whens, else_ } => {
                if let Some(o) = operand {
                    o.walk(f);
                }
                for (c, r, _) in whens {
                    c.walk(f);
                    r.walk(f);
                }
                if let Some(x) = else_ {
                    x.walk(f);
                }
            }
            Expr::Func(_, args) => {
                for a in args {
                    a.walk(f);
                }
            }
        }
    }

    /// Whether the expression reads only sources before `src` of this
    /// level (plus outer levels, parameters and literals) and contains no
    /// subquery or aggregate: usable as an index lookup key.
    pub(crate) fn is_key_for(&self, src: usize) -> bool {
        match self {
            Expr::Col { up, src: s, .. } => *up > 0 || *s < src,
            Expr::Lit(_) | Expr::Param(_) | Expr::NamedParam(_) => true,
            Expr::Neg(a) | Expr::Plus(a) | Expr::Cast(a, _) => a.is_key_for(src),
            Expr::Arith(_, a, b) | Expr::Concat(a, b) => a.is_key_for(src) && b.is_key_for(src),
            Expr::Func(f, args) => *f != Func::NowMs && args.iter().all(|a| a.is_key_for(src)),
            _ => false,
        }
    }
}
