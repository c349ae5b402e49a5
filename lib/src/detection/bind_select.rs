//! Binding one SELECT: FROM (through `bind_from`), WHERE and its push-down
//! to the sources, the projection, GROUP BY, HAVING, ORDER BY and LIMIT.

use sqlparser::ast::{self, GroupByExpr, LimitClause, OrderByKind, SelectItem, Spanned};

use super::bind::{Binder, Level, not_allowed, single_name, snippet};
use super::error::{Pos, SqlError, suggest};
use super::ops::Aff;
use super::plan::{Expr, OrderKey, OrderTerm, SelectPlan, Source};

impl Binder<'_> {
    pub(super) fn bind_select(
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
        let filter = push_down(filter, &mut sources);

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

/// Moves each WHERE conjunct to the first source after which everything it
/// reads is joined (`Source::filter`); returns the conjuncts that stay for
/// the whole joined row (those with subqueries, or all without FROM). A
/// conjunct only decides whether the rows through its source go on, so
/// checking it there instead of on the full row changes no result (LEFT
/// JOIN NULL rows are checked too), and it saves the joins of rows it
/// rejects; SQLite plans WHERE terms the same way. Conjuncts keep their
/// written order within a source.
fn push_down(filter: Option<Expr>, sources: &mut [Source]) -> Vec<Expr> {
    let mut conjuncts = Vec::new();
    if let Some(f) = filter {
        split_and(f, &mut conjuncts);
    }
    if sources.is_empty() {
        return conjuncts;
    }
    let mut rest = Vec::new();
    for c in conjuncts {
        match c.last_source().and_then(|i| sources.get_mut(i)) {
            Some(src) => src.filter.push(c),
            None => rest.push(c),
        }
    }
    rest
}

/// The conjuncts of a top-level AND chain, in order.
fn split_and(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::And(a, b) => {
            split_and(*a, out);
            split_and(*b, out);
        }
        other => out.push(other),
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
