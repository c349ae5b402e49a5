//! The validator and planner: parses SQL with sqlparser (SQLite dialect),
//! walks the whole AST against the allowlist and the catalog, and produces a
//! [`Plan`]. Anything it does not understand is rejected, never ignored.
//!
//! This file handles the statement (size limits, forbidden statements,
//! parse errors) and queries (WITH, CTEs, the SELECT body); one SELECT is
//! bound in `bind_select.rs`, FROM/JOIN in `bind_from.rs`, expressions in
//! `bind_expr.rs` and function calls in `bind_func.rs`.

use std::sync::Arc;

use sqlparser::ast::{self, SetExpr, Spanned, Statement};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::error::{Pos, SqlError};
use super::ops::Aff;
use super::plan::{Plan, SelectPlan, SourceKind};

/// Largest SQL text accepted.
pub(crate) const MAX_SQL_BYTES: usize = 256 * 1024;
/// Most tokens accepted: bounds the depth of left-nested operator chains,
/// which the parser builds without recursing but which everything after it
/// (including dropping the AST) walks recursively.
pub(crate) const MAX_TOKENS: usize = 8_000;
/// Deepest expression/query nesting the binder accepts (the executor's
/// recursion is bounded by the same number).
pub(crate) const MAX_DEPTH: usize = 150;

/// A name a FROM clause brought into scope.
#[derive(Debug)]
pub(super) struct ScopeSrc {
    /// Alias, or the table/CTE name.
    pub name: String,
    /// Column names and affinities.
    pub columns: Vec<(String, Aff)>,
    /// Which columns are indexed (catalog tables only).
    pub indexed: Vec<bool>,
    /// Where rows come from.
    pub kind: SourceKind,
}

/// One query level being bound.
#[derive(Debug, Default)]
pub(super) struct Level {
    pub sources: Vec<ScopeSrc>,
    /// A column of an enclosing level was read from here or below.
    pub correlated: bool,
    pub aggs: Vec<super::plan::AggCall>,
    /// Where the binder is: aggregates are allowed in projections, HAVING
    /// and ORDER BY only.
    pub agg_ok: bool,
    /// What clause is being bound (for messages).
    pub clause: &'static str,
}

/// A CTE name in scope.
#[derive(Debug)]
pub(super) struct CteName {
    pub name: String,
    pub id: usize,
    pub columns: Vec<(String, Aff)>,
}

/// The binder's state over one statement.
#[derive(Debug)]
pub(super) struct Binder<'s> {
    pub sql: &'s str,
    pub levels: Vec<Level>,
    pub cte_scopes: Vec<Vec<CteName>>,
    pub ctes: Vec<SelectPlan>,
    pub positional: usize,
    pub named: Vec<String>,
    pub subqueries: usize,
    pub depth: usize,
}

/// Statements refused by their first keyword.
const FORBIDDEN_STATEMENTS: &[&str] = &[
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "UPSERT",
    "MERGE",
    "CREATE",
    "DROP",
    "ALTER",
    "PRAGMA",
    "ATTACH",
    "DETACH",
    "VACUUM",
    "REINDEX",
    "ANALYZE",
    "BEGIN",
    "COMMIT",
    "END",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "EXPLAIN",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "SET",
    "COPY",
    "LOAD",
    "INSTALL",
    "CALL",
    "EXEC",
    "EXECUTE",
    "DECLARE",
    "SHOW",
    "USE",
    "CACHE",
    "UNCACHE",
    "KILL",
];

/// Parses, validates and plans one SQL text.
pub(crate) fn compile(sql: &str) -> Result<Plan, SqlError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(not_allowed(
            format!("a {}-byte query", sql.len()),
            None,
            &format!("queries are limited to {MAX_SQL_BYTES} bytes"),
        ));
    }
    let dialect = SQLiteDialect {};
    let tokens = Tokenizer::new(&dialect, sql).tokenize_with_location().map_err(|e| SqlError::Parse {
        message: e.message.clone(),
        pos: (e.location.line > 0).then_some(Pos { line: e.location.line, column: e.location.column }),
    })?;
    // Name forbidden statements before the parser trips over dialect
    // details (sqlparser cannot parse every PRAGMA form).
    let first = tokens.iter().find(|t| !matches!(t.token, Token::Whitespace(_)));
    if let Some(TokenWithSpan { token: Token::Word(w), span }) = first {
        let kw = w.value.to_ascii_uppercase();
        if FORBIDDEN_STATEMENTS.contains(&kw.as_str()) {
            return Err(not_allowed(
                format!("{kw} statement"),
                Pos::from_span(*span),
                "only a single read-only SELECT is allowed",
            ));
        }
    }
    if tokens.len() > MAX_TOKENS {
        return Err(not_allowed(
            format!("a query of {} tokens", tokens.len()),
            None,
            &format!("queries are limited to {MAX_TOKENS} tokens; split the rule"),
        ));
    }
    let stmts = Parser::new(&dialect).with_tokens_with_locations(tokens).parse_statements().map_err(parse_error)?;
    let stmt = match stmts.as_slice() {
        [one] => one,
        [] => {
            return Err(SqlError::Parse { message: "empty query: write one SELECT statement".into(), pos: None });
        }
        [_, second, ..] => {
            return Err(not_allowed(
                "more than one statement",
                Pos::from_span(second.span()),
                "write exactly one SELECT statement (no `;` between statements)",
            ));
        }
    };
    let Statement::Query(q) = stmt else {
        let text = stmt.to_string();
        let kind: Vec<&str> = text
            .split_whitespace()
            .take_while(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .take(2)
            .collect();
        let kind = if kind.is_empty() { "this".to_owned() } else { kind.join(" ") };
        return Err(not_allowed(
            format!("{kind} statement"),
            Pos::from_span(stmt.span()),
            "only a single read-only SELECT is allowed",
        ));
    };
    let mut b = Binder {
        sql,
        levels: Vec::new(),
        cte_scopes: Vec::new(),
        ctes: Vec::new(),
        positional: 0,
        named: Vec::new(),
        subqueries: 0,
        depth: 0,
    };
    let (root, _) = b.bind_query(q)?;
    let columns = Arc::from(root.columns.as_slice());
    let prefilter = matches!(root.sources.first(), Some(s) if s.kind == SourceKind::Table(super::Table::ProcessEvents) && !s.filter.is_empty())
        && !root.aggregate
        && root.limit.is_none()
        && root.offset.is_none();
    Ok(Plan { root, ctes: b.ctes, positional: b.positional, named: b.named, columns, prefilter })
}

fn parse_error(e: ParserError) -> SqlError {
    match e {
        ParserError::RecursionLimitExceeded => SqlError::TooDeep { limit: 50, pos: None },
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => {
            // sqlparser appends " at Line: L, Column: C".
            if let Some(i) = m.rfind(" at Line: ") {
                let (msg, at) = m.split_at(i);
                let mut nums = at
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| s.parse::<u64>().ok());
                if let (Some(line), Some(column)) = (nums.next(), nums.next()) {
                    return SqlError::Parse { message: msg.to_owned(), pos: Some(Pos { line, column }) };
                }
            }
            SqlError::Parse { message: m, pos: None }
        }
    }
}

/// A `NotAllowed` error.
pub(super) fn not_allowed(construct: impl Into<String>, pos: Option<Pos>, hint: &str) -> SqlError {
    SqlError::NotAllowed { construct: construct.into(), pos, hint: hint.to_owned() }
}

/// Shortens a construct's SQL text for a message.
pub(super) fn snippet(s: &impl std::fmt::Display) -> String {
    let t = s.to_string();
    if t.chars().count() > 40 {
        let cut: String = t.chars().take(37).collect();
        format!("`{cut}...`")
    } else {
        format!("`{t}`")
    }
}

impl Binder<'_> {
    /// Enters one level of nesting, failing past `MAX_DEPTH`.
    pub(super) fn enter(&mut self, pos: Option<Pos>) -> Result<(), SqlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SqlError::TooDeep { limit: MAX_DEPTH, pos });
        }
        Ok(())
    }

    /// Binds a query (WITH, body, ORDER BY, LIMIT); returns the plan and
    /// whether it reads columns of an enclosing query.
    pub(super) fn bind_query(&mut self, q: &ast::Query) -> Result<(SelectPlan, bool), SqlError> {
        self.enter(Pos::from_span(q.span()))?;
        let r = self.bind_query_inner(q);
        self.depth -= 1;
        r
    }

    fn bind_query_inner(&mut self, q: &ast::Query) -> Result<(SelectPlan, bool), SqlError> {
        let pos = Pos::from_span(q.span());
        if q.fetch.is_some() || !q.locks.is_empty() || q.for_clause.is_some() {
            return Err(not_allowed("FETCH/FOR clause", pos, "use LIMIT"));
        }
        if q.settings.is_some() || q.format_clause.is_some() || !q.pipe_operators.is_empty() {
            return Err(not_allowed("SETTINGS/FORMAT/pipe syntax", pos, "write a plain SELECT"));
        }
        let mut pushed = false;
        if let Some(with) = &q.with {
            if with.recursive {
                return Err(not_allowed(
                    "WITH RECURSIVE",
                    Pos::from_span(with.with_token.0.span),
                    "recursive CTEs can run unbounded; use a plain WITH",
                ));
            }
            self.cte_scopes.push(Vec::new());
            pushed = true;
            for cte in &with.cte_tables {
                if let Err(e) = self.bind_cte(cte) {
                    self.cte_scopes.pop();
                    return Err(e);
                }
            }
        }
        let r = match q.body.as_ref() {
            SetExpr::Select(s) => self.bind_select(s, q.order_by.as_ref(), q.limit_clause.as_ref()),
            SetExpr::Query(inner) if q.order_by.is_none() && q.limit_clause.is_none() => self.bind_query(inner),
            SetExpr::SetOperation { op, .. } => Err(not_allowed(
                op.to_string().to_ascii_uppercase(),
                pos,
                "compound SELECTs are not supported; use OR or IN in one SELECT",
            )),
            SetExpr::Values(_) => Err(not_allowed("VALUES", pos, "select from a table")),
            other => Err(not_allowed(snippet(other), pos, "only SELECT is allowed")),
        };
        if pushed {
            self.cte_scopes.pop();
        }
        r
    }

    fn bind_cte(&mut self, cte: &ast::Cte) -> Result<(), SqlError> {
        let pos = Pos::from_span(cte.alias.name.span);
        if cte.from.is_some() {
            return Err(not_allowed("CTE FROM", pos, "write a plain WITH name AS (SELECT ...)"));
        }
        let (plan, _) = self.bind_detached(&cte.query)?;
        let mut columns: Vec<(String, Aff)> = plan.columns.iter().cloned().zip(plan.affs.iter().copied()).collect();
        if !cte.alias.columns.is_empty() {
            if cte.alias.columns.len() != columns.len() {
                return Err(SqlError::Type {
                    message: format!(
                        "CTE {} names {} columns but its SELECT returns {}",
                        cte.alias.name.value,
                        cte.alias.columns.len(),
                        columns.len()
                    ),
                    pos,
                });
            }
            for (c, def) in columns.iter_mut().zip(&cte.alias.columns) {
                if def.data_type.is_some() {
                    return Err(not_allowed("typed CTE column", pos, "drop the type"));
                }
                c.0.clone_from(&def.name.value);
            }
        }
        let id = self.ctes.len();
        self.ctes.push(plan);
        if let Some(scope) = self.cte_scopes.last_mut() {
            scope.push(CteName { name: cte.alias.name.value.clone(), id, columns });
        }
        Ok(())
    }

    /// Binds a query that cannot see enclosing queries (CTE bodies, derived
    /// tables): they are materialized once per execution.
    pub(super) fn bind_detached(&mut self, q: &ast::Query) -> Result<(SelectPlan, bool), SqlError> {
        let saved = std::mem::take(&mut self.levels);
        let r = self.bind_query(q);
        self.levels = saved;
        r
    }
}

/// A one-part name (no `schema.table`).
pub(super) fn single_name(name: &ast::ObjectName, pos: Option<Pos>) -> Result<String, SqlError> {
    match name.0.as_slice() {
        [ast::ObjectNamePart::Identifier(id)] => Ok(id.value.clone()),
        _ => Err(not_allowed(
            format!("qualified name `{name}`"),
            pos,
            "name tables without a schema (processes, process_events, alerts)",
        )),
    }
}
