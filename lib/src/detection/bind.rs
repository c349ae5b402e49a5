//! The validator and planner: parses SQL with sqlparser (SQLite dialect),
//! walks the whole AST against the allowlist and the catalog, and produces a
//! [`Plan`]. Anything it does not understand is rejected, never ignored.
//!
//! Expression binding is in `bind_expr.rs`; this file handles statements,
//! queries, FROM/JOIN, projections, GROUP BY, ORDER BY and LIMIT.

use sqlparser::ast::{self, GroupByExpr, LimitClause, OrderByKind, SelectItem, SetExpr, Spanned, Statement};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::error::{Pos, SqlError, suggest};
use super::ops::Aff;
use super::plan::{Expr, OrderKey, OrderTerm, Plan, SelectPlan, SourceKind};

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
    Ok(Plan { root, ctes: b.ctes, positional: b.positional, named: b.named })
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

    fn bind_select(
        &mut self,
        s: &ast::Select,
        order_by: Option<&ast::OrderBy>,
        limit: Option<&LimitClause>,
    ) -> Result<(SelectPlan, bool), SqlError> {
        let pos = Pos::from_span(s.select_token.0.span);
        reject_select_extras(s, pos)?;
        self.levels.push(Level::default());
        let r = self.bind_select_body(s, order_by, limit, pos);
        let level = self.levels.pop().unwrap_or_default();
        let mut plan = r?;
        plan.aggregate = plan.aggregate || !level.aggs.is_empty();
        plan.aggs = level.aggs;
        Ok((plan, level.correlated))
    }

    fn bind_select_body(
        &mut self,
        s: &ast::Select,
        order_by: Option<&ast::OrderBy>,
        limit: Option<&LimitClause>,
        pos: Option<Pos>,
    ) -> Result<SelectPlan, SqlError> {
        let mut sources = Vec::new();
        match s.from.as_slice() {
            [] => {}
            [twj] => self.bind_from(twj, &mut sources)?,
            [_, second, ..] => {
                return Err(not_allowed(
                    "a comma join (cross join)",
                    Pos::from_span(second.relation.span()),
                    "join tables with JOIN ... ON <equality>",
                ));
            }
        }
        let filter = match &s.selection {
            Some(e) => Some(self.bind_clause(e, "WHERE", false)?.0),
            None => None,
        };
        if let (Some(f), Some(first)) = (&filter, sources.first_mut()) {
            first.lookup = self.find_lookup(f, 0);
        }

        // Projection.
        let mut projection = Vec::new();
        let mut columns = Vec::new();
        let mut affs = Vec::new();
        let mut aliases: Vec<(String, &ast::Expr)> = Vec::new();
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let (x, a) = self.bind_clause(e, "the SELECT list", true)?;
                    projection.push(x);
                    affs.push(a);
                    columns.push(self.column_name(e));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let (x, a) = self.bind_clause(expr, "the SELECT list", true)?;
                    projection.push(x);
                    affs.push(a);
                    columns.push(alias.value.clone());
                    aliases.push((alias.value.clone(), expr));
                }
                SelectItem::Wildcard(opts) => {
                    check_wildcard(opts)?;
                    let level = self.levels.last().map(|l| l.sources.as_slice()).unwrap_or(&[]);
                    if level.is_empty() {
                        return Err(not_allowed(
                            "SELECT * without FROM",
                            Pos::from_span(opts.wildcard_token.0.span),
                            "name a table",
                        ));
                    }
                    for (si, src) in level.iter().enumerate() {
                        for (ci, (name, aff)) in src.columns.iter().enumerate() {
                            projection.push(Expr::Col { up: 0, src: si, idx: ci });
                            columns.push(name.clone());
                            affs.push(*aff);
                        }
                    }
                }
                SelectItem::QualifiedWildcard(kind, opts) => {
                    check_wildcard(opts)?;
                    let ast::SelectItemQualifiedWildcardKind::ObjectName(name) = kind else {
                        return Err(not_allowed(snippet(item), pos, "write table.*"));
                    };
                    let wpos = Pos::from_span(name.span());
                    let n = single_name(name, wpos)?;
                    let level = self.levels.last().map(|l| l.sources.as_slice()).unwrap_or(&[]);
                    let Some(si) = level.iter().position(|x| x.name.eq_ignore_ascii_case(&n)) else {
                        return Err(SqlError::UnknownTable {
                            suggestion: suggest(&n, level.iter().map(|x| x.name.as_str())),
                            name: n,
                            pos: wpos,
                        });
                    };
                    if let Some(src) = level.get(si) {
                        for (ci, (name, aff)) in src.columns.iter().enumerate() {
                            projection.push(Expr::Col { up: 0, src: si, idx: ci });
                            columns.push(name.clone());
                            affs.push(*aff);
                        }
                    }
                }
                SelectItem::ExprWithAliases { .. } => {
                    return Err(not_allowed(snippet(item), pos, "use one alias per column"));
                }
            }
        }

        // GROUP BY: a position, a source column, or an output alias.
        let mut group_by = Vec::new();
        let mut grouped = false;
        match &s.group_by {
            GroupByExpr::Expressions(exprs, mods) => {
                if !mods.is_empty() {
                    return Err(not_allowed("GROUP BY modifiers", pos, "use plain GROUP BY"));
                }
                for e in exprs {
                    grouped = true;
                    let target = if let Some(k) = position_of(e, s.projection.len())? {
                        projection_expr(&s.projection, k)
                            .ok_or_else(|| not_allowed("GROUP BY on *", pos, "name the column"))?
                    } else if let ast::Expr::Identifier(id) = e {
                        if self.resolves(&id.value) { e } else { alias_expr(&aliases, &id.value).unwrap_or(e) }
                    } else {
                        e
                    };
                    group_by.push(self.bind_clause(target, "GROUP BY", false)?.0);
                }
            }
            GroupByExpr::All(_) => {
                return Err(not_allowed("GROUP BY ALL", pos, "list the columns"));
            }
        }
        let having = match &s.having {
            Some(e) => Some(self.bind_clause(e, "HAVING", true)?.0),
            None => None,
        };
        let order_by = self.bind_order_by(order_by, &columns, &aliases)?;
        let (limit, offset) = self.bind_limit(limit)?;
        let distinct = match &s.distinct {
            None | Some(ast::Distinct::All) => false,
            Some(ast::Distinct::Distinct) => true,
            Some(ast::Distinct::On(_)) => {
                return Err(not_allowed("DISTINCT ON", pos, "use GROUP BY"));
            }
        };
        Ok(SelectPlan {
            sources,
            filter,
            group_by,
            aggs: Vec::new(),
            aggregate: grouped || having.is_some(),
            having,
            projection,
            columns,
            affs,
            distinct,
            order_by,
            limit,
            offset,
        })
    }

    /// Binds an expression of one clause of the current level.
    pub(super) fn bind_clause(
        &mut self,
        e: &ast::Expr,
        clause: &'static str,
        agg_ok: bool,
    ) -> Result<(Expr, Aff), SqlError> {
        if let Some(l) = self.levels.last_mut() {
            l.agg_ok = agg_ok;
            l.clause = clause;
        }
        self.bind_expr(e)
    }

    /// Whether a bare name is a column of some source in scope.
    fn resolves(&self, name: &str) -> bool {
        self.levels.iter().any(|l| l.sources.iter().any(|s| s.columns.iter().any(|c| c.0.eq_ignore_ascii_case(name))))
    }

    fn bind_order_by(
        &mut self,
        order_by: Option<&ast::OrderBy>,
        columns: &[String],
        aliases: &[(String, &ast::Expr)],
    ) -> Result<Vec<OrderTerm>, SqlError> {
        let Some(ob) = order_by else {
            return Ok(Vec::new());
        };
        let OrderByKind::Expressions(terms) = &ob.kind else {
            return Err(not_allowed("ORDER BY ALL", None, "list the columns"));
        };
        if ob.interpolate.is_some() {
            return Err(not_allowed("INTERPOLATE", None, "remove it"));
        }
        let mut out = Vec::new();
        for t in terms {
            let pos = Pos::from_span(t.expr.span());
            if t.with_fill.is_some() {
                return Err(not_allowed("WITH FILL", pos, "remove it"));
            }
            let desc = match &t.options.sort {
                None | Some(ast::OrderBySort::Asc) => false,
                Some(ast::OrderBySort::Desc) => true,
                Some(other) => {
                    return Err(not_allowed(format!("ORDER BY {other:?}"), pos, "use ASC or DESC"));
                }
            };
            let nulls_first = t.options.nulls_first.unwrap_or(!desc);
            let key = if let Some(k) = position_of(&t.expr, columns.len())? {
                OrderKey::Output(k)
            } else if let Some(i) = match &t.expr {
                ast::Expr::Identifier(id) => {
                    aliases.iter().position(|(a, _)| a.eq_ignore_ascii_case(&id.value)).and_then(|ai| {
                        let name = &aliases.get(ai)?.0;
                        columns.iter().position(|c| c == name)
                    })
                }
                _ => None,
            } {
                OrderKey::Output(i)
            } else {
                OrderKey::Expr(self.bind_clause(&t.expr, "ORDER BY", true)?.0)
            };
            out.push(OrderTerm { key, desc, nulls_first });
        }
        Ok(out)
    }

    fn bind_limit(&mut self, l: Option<&LimitClause>) -> Result<(Option<Expr>, Option<Expr>), SqlError> {
        let (limit, offset) = match l {
            None => return Ok((None, None)),
            Some(LimitClause::LimitOffset { limit, offset, limit_by }) => {
                if !limit_by.is_empty() {
                    return Err(not_allowed("LIMIT BY", None, "use LIMIT n"));
                }
                (limit.as_ref(), offset.as_ref().map(|o| &o.value))
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => (Some(limit), Some(offset)),
        };
        // LIMIT and OFFSET are constants: bind them where no column is
        // visible.
        let saved = std::mem::replace(&mut self.levels, vec![Level::default()]);
        let r = (|| {
            let l = limit.map(|e| self.bind_clause(e, "LIMIT", false)).transpose()?;
            let o = offset.map(|e| self.bind_clause(e, "OFFSET", false)).transpose()?;
            Ok((l.map(|x| x.0), o.map(|x| x.0)))
        })();
        self.levels = saved;
        r
    }

    /// The output name SQLite gives an unaliased expression: a column's
    /// name, otherwise the expression's text as written.
    fn column_name(&self, e: &ast::Expr) -> String {
        match e {
            ast::Expr::Identifier(id) => id.value.clone(),
            ast::Expr::CompoundIdentifier(parts) => parts.last().map_or_else(|| e.to_string(), |p| p.value.clone()),
            _ => source_text(self.sql, e.span()).unwrap_or_else(|| e.to_string()),
        }
    }
}

/// The text of a span of the SQL (lines and columns are 1-based, columns
/// count characters).
fn source_text(sql: &str, span: sqlparser::tokenizer::Span) -> Option<String> {
    let offset = |l: sqlparser::tokenizer::Location| -> Option<usize> {
        let line_start: usize =
            sql.split_inclusive('\n').take(usize::try_from(l.line).ok()?.checked_sub(1)?).map(str::len).sum();
        let rest = sql.get(line_start..)?;
        let col = usize::try_from(l.column).ok()?.checked_sub(1)?;
        Some(line_start + rest.char_indices().nth(col).map_or(rest.len(), |(i, _)| i))
    };
    let (a, mut b) = (offset(span.start)?, offset(span.end)?);
    // Some spans stop before a call's closing parentheses: take them in.
    loop {
        let t = sql.get(a..b)?;
        if t.matches('(').count() <= t.matches(')').count() {
            break;
        }
        let rest = sql.get(b..)?;
        let skip = rest.len() - rest.trim_start().len();
        if !rest.trim_start().starts_with(')') {
            break;
        }
        b += skip + 1;
    }
    let t = sql.get(a..b)?.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn reject_select_extras(s: &ast::Select, pos: Option<Pos>) -> Result<(), SqlError> {
    let bad = if s.top.is_some() {
        Some("TOP")
    } else if s.into.is_some() {
        Some("SELECT INTO")
    } else if !s.lateral_views.is_empty() {
        Some("LATERAL VIEW")
    } else if s.prewhere.is_some() {
        Some("PREWHERE")
    } else if !s.connect_by.is_empty() {
        Some("CONNECT BY")
    } else if !s.cluster_by.is_empty() || !s.distribute_by.is_empty() || !s.sort_by.is_empty() {
        Some("CLUSTER/DISTRIBUTE/SORT BY")
    } else if !s.named_window.is_empty() || s.qualify.is_some() {
        Some("WINDOW/QUALIFY")
    } else if s.value_table_mode.is_some() || s.exclude.is_some() || s.select_modifiers.is_some() {
        Some("this SELECT modifier")
    } else if !s.optimizer_hints.is_empty() {
        Some("optimizer hints")
    } else if s.flavor != ast::SelectFlavor::Standard {
        Some("FROM-first SELECT")
    } else {
        None
    };
    match bad {
        Some(b) => Err(not_allowed(b, pos, "write a plain SQLite SELECT")),
        None => Ok(()),
    }
}

fn check_wildcard(o: &ast::WildcardAdditionalOptions) -> Result<(), SqlError> {
    if o.opt_ilike.is_some()
        || o.opt_exclude.is_some()
        || o.opt_except.is_some()
        || o.opt_replace.is_some()
        || o.opt_rename.is_some()
        || o.opt_alias.is_some()
    {
        return Err(not_allowed(
            "wildcard modifiers",
            Pos::from_span(o.wildcard_token.0.span),
            "write * or table.* only",
        ));
    }
    Ok(())
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

/// `ORDER BY 2` / `GROUP BY 2`: a 1-based output column position.
fn position_of(e: &ast::Expr, ncols: usize) -> Result<Option<usize>, SqlError> {
    // SQLite treats any constant integer term (`2`, `-1`, `(3)`) as a position.
    let mut e = e;
    let mut neg = false;
    loop {
        match e {
            ast::Expr::Nested(x) => e = x,
            ast::Expr::UnaryOp { op: ast::UnaryOperator::Minus, expr } => {
                neg = !neg;
                e = expr;
            }
            ast::Expr::UnaryOp { op: ast::UnaryOperator::Plus, expr } => e = expr,
            _ => break,
        }
    }
    let ast::Expr::Value(v) = e else {
        return Ok(None);
    };
    let ast::Value::Number(n, _) = &v.value else {
        return Ok(None);
    };
    let Ok(k) = n.parse::<usize>() else {
        return Ok(None);
    };
    if neg || k == 0 || k > ncols {
        let k = if neg { format!("-{k}") } else { k.to_string() };
        return Err(SqlError::Type {
            message: format!("term {k} is out of range: the SELECT has {ncols} column(s)"),
            pos: Pos::from_span(v.span),
        });
    }
    Ok(Some(k - 1))
}

fn projection_expr(items: &[SelectItem], k: usize) -> Option<&ast::Expr> {
    match items.get(k)? {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
        _ => None,
    }
}

fn alias_expr<'a>(aliases: &[(String, &'a ast::Expr)], name: &str) -> Option<&'a ast::Expr> {
    aliases.iter().find(|(a, _)| a.eq_ignore_ascii_case(name)).map(|(_, e)| *e)
}
