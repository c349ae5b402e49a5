//! The public face of the engine: compile a SELECT once, run it many times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::bind;
use super::error::SqlError;
use super::exec::Ctx;
use super::plan::{CmpOp, Expr, Plan, SourceKind};
use super::{EventInterest, Table, TableProvider, Value};

/// A validated, compiled SELECT. Cheap to clone and share between threads.
#[derive(Debug, Clone)]
pub struct Query {
    plan: Arc<Plan>,
    sql: Arc<str>,
    /// For a streaming query whose WHERE has a top-level `event_type = 'x'`
    /// or `event_type IN ('x', ...)`: those types, sorted. Lets a caller skip
    /// the query for other events without running it.
    event_types: Option<Arc<[Box<str>]>>,
}

/// Values for a query's parameters: `?`/`?N` by position (0-based here,
/// `?1` is `positional[0]`), `:name`/`@name`/`$name` by name (with or
/// without the prefix); and the time `now_ms()` returns.
#[derive(Debug, Default, Clone)]
pub struct Params {
    /// Positional values.
    pub positional: Vec<Value>,
    /// Named values.
    pub named: HashMap<String, Value>,
    /// What `now_ms()` returns (Unix milliseconds), e.g. the recorded time
    /// in a replay; `None` reads the wall clock, once per execution and
    /// only when the query calls `now_ms()`.
    pub now_ms: Option<i64>,
}

/// Bounds on one execution.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock bound, checked every 256 rows visited (the clock starts
    /// at the first check, so an evaluation that visits fewer rows, such as
    /// a streaming rule on one event, never reads it).
    pub timeout: Duration,
    /// Most rows returned (the result is cut and marked `truncated`);
    /// a subquery or CTE past it is an error.
    pub max_rows: u64,
    /// Most rows held in memory at once (sorting, grouping, subquery and
    /// CTE results, lookups), summed over the execution.
    pub max_memory_rows: u64,
    /// Size bound for REGEXP patterns compiled at run time.
    pub regex_size_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            max_rows: 100_000,
            max_memory_rows: 1_000_000,
            regex_size_limit: 1 << 20,
        }
    }
}

/// The rows a query returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSet {
    /// Output column names, shared with the compiled query (cloning the
    /// `Arc` is all an evaluation costs for them).
    pub columns: Arc<[String]>,
    /// Rows, each as long as `columns`.
    pub rows: Vec<Vec<Value>>,
    /// More rows existed than `Limits::max_rows`.
    pub truncated: bool,
}

/// Parses and validates SQL without keeping the plan.
pub fn validate(sql: &str) -> Result<(), SqlError> {
    bind::compile(sql).map(|_| ())
}

impl Query {
    /// Parses, validates and plans one SELECT.
    pub fn compile(sql: &str) -> Result<Query, SqlError> {
        let plan = bind::compile(sql)?;
        let event_types = event_types_of(&plan);
        Ok(Query { plan: Arc::new(plan), sql: Arc::from(sql), event_types })
    }

    /// Whether this query can match an event of type `event_type` (as SQL
    /// sees it: `exec`, `exit`, ...). `false` only when a top-level WHERE
    /// term of a streaming query rules the type out, so running it on
    /// such an event would return no rows anyway.
    pub fn may_match_event_type(&self, event_type: &str) -> bool {
        self.event_types.as_ref().is_none_or(|types| types.binary_search_by(|t| (**t).cmp(event_type)).is_ok())
    }

    /// The SQL text it was compiled from.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Output column names (aliases honoured; `p.name` is `name`;
    /// expressions are named by their text).
    pub fn columns(&self) -> &[String] {
        &self.plan.columns
    }

    /// Whether the top-level FROM is `process_events`: a streaming rule,
    /// evaluated on every event with [`Query::evaluate_event`].
    pub fn is_streaming(&self) -> bool {
        matches!(self.plan.root.sources.first().map(|s| s.kind), Some(SourceKind::Table(Table::ProcessEvents)))
    }

    /// For a table query (not streaming): which `process_events` rows it
    /// can read, when that is bounded (see [`EventInterest`]). The agent
    /// keeps just those in memory for the query.
    pub fn event_interest(&self) -> Option<EventInterest> {
        if self.is_streaming() {
            return None;
        }
        EventInterest::of(&self.plan)
    }

    /// The compiled plan.
    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Number of positional parameters (`?`, `?N`).
    pub fn param_count(&self) -> usize {
        self.plan.positional
    }

    /// Named parameters, without their `:`/`@`/`$` prefix.
    pub fn param_names(&self) -> Vec<String> {
        self.plan.named.clone()
    }

    /// Runs the query over `tables`.
    pub fn execute(&self, tables: &dyn TableProvider, params: &Params, limits: &Limits) -> Result<ResultSet, SqlError> {
        self.run(None, tables, params, limits)
    }

    /// Streaming evaluation: `process_events` is bound to exactly this one
    /// row (catalog order); other tables come from `tables`.
    pub fn evaluate_event(
        &self,
        event_row: &[Value],
        tables: &dyn TableProvider,
        params: &Params,
        limits: &Limits,
    ) -> Result<ResultSet, SqlError> {
        let expected = Table::ProcessEvents.columns().len();
        if event_row.len() != expected {
            return Err(SqlError::BadEventRow { expected, got: event_row.len() });
        }
        self.run(Some(event_row), tables, params, limits)
    }

    fn run(
        &self,
        event: Option<&[Value]>,
        tables: &dyn TableProvider,
        params: &Params,
        limits: &Limits,
    ) -> Result<ResultSet, SqlError> {
        let (positional, named) = self.bind_params(params)?;
        let ctx = Ctx::new(&self.plan, tables, event, &positional, &named, limits, params.now_ms);
        if let Some(ev) = event
            && ctx.event_rejected(ev)?
        {
            return Ok(ResultSet { columns: Arc::clone(&self.plan.columns), rows: Vec::new(), truncated: false });
        }
        let (rows, truncated) = ctx.run_root()?;
        Ok(ResultSet { columns: Arc::clone(&self.plan.columns), rows, truncated })
    }

    fn bind_params(&self, params: &Params) -> Result<(Vec<Value>, Vec<Value>), SqlError> {
        let mut positional = Vec::with_capacity(self.plan.positional);
        for i in 0..self.plan.positional {
            match params.positional.get(i) {
                Some(v) => positional.push(v.clone()),
                None => {
                    return Err(SqlError::MissingParam { name: format!("?{}", i + 1), hint: (i + 1).to_string() });
                }
            }
        }
        let mut named = Vec::with_capacity(self.plan.named.len());
        for n in &self.plan.named {
            let v = params
                .named
                .get(n)
                .or_else(|| [':', '@', '$'].iter().find_map(|p| params.named.get(&format!("{p}{n}"))));
            match v {
                Some(v) => named.push(v.clone()),
                None => {
                    return Err(SqlError::MissingParam { name: format!(":{n}"), hint: n.clone() });
                }
            }
        }
        Ok((positional, named))
    }
}

/// The event types a streaming plan's top-level conjuncts allow (see
/// [`Query::may_match_event_type`]); `None` when they do not say.
fn event_types_of(plan: &Plan) -> Option<Arc<[Box<str>]>> {
    // An aggregate or LIMIT answers (or not) whatever the event: only a
    // plan whose event conditions alone reject an event says anything.
    if !plan.prefilter {
        return None;
    }
    let first = plan.root.sources.first()?;
    if !matches!(first.kind, SourceKind::Table(Table::ProcessEvents)) {
        return None;
    }
    let column = Table::ProcessEvents.columns().iter().position(|c| c.name == "event_type")?;
    let is_event_type = |e: &Expr| matches!(e, Expr::Col { up: 0, src: 0, idx } if *idx == column);
    let text = |e: &Expr| match e {
        Expr::Lit(Value::Text(t)) => Some(t.as_str().into()),
        _ => None,
    };
    for term in &first.filter {
        let found: Option<Vec<Box<str>>> = match term {
            Expr::Cmp { op: CmpOp::Eq, l, r, .. } if is_event_type(l) => text(r).map(|t| vec![t]),
            Expr::Cmp { op: CmpOp::Eq, l, r, .. } if is_event_type(r) => text(l).map(|t| vec![t]),
            Expr::InList { e, list, negated: false, .. } if is_event_type(e) => {
                list.iter().map(|(item, _)| text(item)).collect()
            }
            _ => None,
        };
        if let Some(mut types) = found {
            types.sort();
            return Some(types.into());
        }
    }
    None
}
