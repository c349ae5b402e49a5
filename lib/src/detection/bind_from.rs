//! Binding FROM clauses: catalog tables, CTEs, derived tables, joins
//! (only INNER/LEFT with an equality ON), and the index lookups the
//! executor uses instead of scanning.

use sqlparser::ast::{self, JoinConstraint, JoinOperator, Spanned, TableFactor};

use super::Table;
use super::bind::{Binder, ScopeSrc, not_allowed, single_name, snippet};
use super::error::{Pos, SqlError, suggest};
use super::ops::Aff;
use super::plan::{CmpOp, Expr, Lookup, MAX_SOURCES, Source, SourceKind};

impl Binder<'_> {
    pub(super) fn bind_from(&mut self, twj: &ast::TableWithJoins, out: &mut Vec<Source>) -> Result<(), SqlError> {
        let src = self.bind_table_factor(&twj.relation)?;
        out.push(Source {
            kind: src.kind,
            width: src.columns.len(),
            left: false,
            on: None,
            lookup: None,
            filter: Vec::new(),
        });
        self.push_source(src);
        for j in &twj.joins {
            let jpos = Pos::from_span(j.relation.span());
            if out.len() >= MAX_SOURCES {
                return Err(not_allowed(
                    format!("more than {MAX_SOURCES} tables in one SELECT"),
                    jpos,
                    "split the query",
                ));
            }
            let (left, constraint) = match &j.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) => (false, c),
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (true, c),
                other => {
                    let name = format!("{other:?}");
                    let name = name.split('(').next().unwrap_or("this").to_ascii_uppercase();
                    return Err(not_allowed(
                        format!("{name} join"),
                        jpos,
                        "only [INNER] JOIN and LEFT JOIN with ON <equality> are supported",
                    ));
                }
            };
            let on = match constraint {
                JoinConstraint::On(e) => e,
                JoinConstraint::Natural | JoinConstraint::Using(..) | JoinConstraint::UsingAlias(..) => {
                    return Err(not_allowed("NATURAL/USING join", jpos, "write the condition as ON a.col = b.col"));
                }
                JoinConstraint::None => {
                    return Err(not_allowed(
                        "a join without ON (cross join)",
                        jpos,
                        "add ON <joined table column> = <other table column>",
                    ));
                }
            };
            let src = self.bind_table_factor(&j.relation)?;
            let idx = out.len();
            out.push(Source {
                kind: src.kind,
                width: src.columns.len(),
                left,
                on: None,
                lookup: None,
                filter: Vec::new(),
            });
            self.push_source(src);
            let (on_expr, _) = self.bind_clause(on, "ON", false)?;
            if !has_join_equality(&on_expr, idx) {
                return Err(not_allowed(
                    "a join whose ON has no equality with the joined table",
                    Pos::from_span(on.span()),
                    "add ON <joined table column> = <other table column> (unbounded cross joins are refused)",
                ));
            }
            let lookup = self.find_lookup(&on_expr, idx);
            if let Some(s) = out.last_mut() {
                s.on = Some(on_expr);
                s.lookup = lookup;
            }
        }
        Ok(())
    }

    fn push_source(&mut self, src: ScopeSrc) {
        if let Some(l) = self.levels.last_mut() {
            l.sources.push(src);
        }
    }

    fn bind_table_factor(&mut self, tf: &TableFactor) -> Result<ScopeSrc, SqlError> {
        let pos = Pos::from_span(tf.span());
        match tf {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                with_ordinality,
                partitions,
                json_path,
                sample,
                index_directives,
                inheritance,
            } => {
                if args.is_some() {
                    return Err(not_allowed("table-valued function", pos, "select from a table"));
                }
                if !with_hints.is_empty()
                    || version.is_some()
                    || *with_ordinality
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || sample.is_some()
                    || !index_directives.is_empty()
                    || inheritance.is_some()
                {
                    return Err(not_allowed(snippet(tf), pos, "name the table only"));
                }
                let tname = single_name(name, pos)?;
                let alias_name = self.table_alias(alias.as_ref())?;
                // CTEs shadow catalog tables, innermost first.
                let cte = self
                    .cte_scopes
                    .iter()
                    .rev()
                    .flat_map(|s| s.iter().rev())
                    .find(|c| c.name.eq_ignore_ascii_case(&tname));
                if let Some(c) = cte {
                    return Ok(ScopeSrc {
                        name: alias_name.unwrap_or_else(|| c.name.clone()),
                        indexed: vec![false; c.columns.len()],
                        columns: c.columns.clone(),
                        kind: SourceKind::Cte(c.id),
                    });
                }
                let Some(t) = Table::from_name(&tname) else {
                    let ctes: Vec<&str> = self.cte_scopes.iter().flatten().map(|c| c.name.as_str()).collect();
                    return Err(SqlError::UnknownTable {
                        suggestion: suggest(&tname, Table::ALL.iter().map(|t| t.name()).chain(ctes.iter().copied())),
                        name: tname,
                        pos,
                    });
                };
                Ok(ScopeSrc {
                    name: alias_name.unwrap_or_else(|| t.name().to_owned()),
                    columns: t.columns().iter().map(|c| (c.name.to_owned(), c.affinity.into())).collect(),
                    indexed: t.columns().iter().map(|c| c.indexed).collect(),
                    kind: SourceKind::Table(t),
                })
            }
            TableFactor::Derived { lateral, subquery, alias, sample } => {
                if *lateral || sample.is_some() {
                    return Err(not_allowed(snippet(tf), pos, "use a plain subquery"));
                }
                let alias_name = self.table_alias(alias.as_ref())?;
                let (plan, _) = self.bind_detached(subquery)?;
                let columns = plan.columns.iter().cloned().zip(plan.affs.iter().copied()).collect::<Vec<_>>();
                let id = self.ctes.len();
                self.ctes.push(plan);
                Ok(ScopeSrc {
                    name: alias_name.unwrap_or_default(),
                    indexed: vec![false; columns.len()],
                    columns,
                    kind: SourceKind::Cte(id),
                })
            }
            TableFactor::NestedJoin { .. } => {
                Err(not_allowed("a parenthesized join", pos, "write joins without parentheses"))
            }
            _ => Err(not_allowed(snippet(tf), pos, "select from processes, process_events or alerts")),
        }
    }

    fn table_alias(&self, alias: Option<&ast::TableAlias>) -> Result<Option<String>, SqlError> {
        match alias {
            None => Ok(None),
            Some(a) if a.columns.is_empty() && a.at.is_none() => Ok(Some(a.name.value.clone())),
            Some(a) => Err(not_allowed(
                "column aliases on a table",
                Pos::from_span(a.name.span),
                "alias the columns in the SELECT list",
            )),
        }
    }

    /// The first `col = key` conjunct usable as an index lookup for source
    /// `src` of the current level.
    pub(super) fn find_lookup(&self, cond: &Expr, src: usize) -> Option<Lookup> {
        let level = self.levels.last()?;
        let s = level.sources.get(src)?;
        if !matches!(s.kind, SourceKind::Table(_)) {
            return None;
        }
        let mut conjuncts = Vec::new();
        collect_conjuncts(cond, &mut conjuncts);
        for c in conjuncts {
            let Expr::Cmp { op: CmpOp::Eq, l, r, .. } = c else {
                continue;
            };
            for (col, key) in [(l, r), (r, l)] {
                let Expr::Col { up: 0, src: cs, idx } = **col else {
                    continue;
                };
                if cs != src || !s.indexed.get(idx).copied().unwrap_or(false) || !key.is_key_for(src) {
                    continue;
                }
                let numeric = s.columns.get(idx).is_some_and(|c| c.1 == Aff::Numeric);
                // A text column compared with a numeric-affinity key
                // converts the column's values: an exact lookup could miss.
                if !numeric && self.static_aff(key) == Aff::Numeric {
                    continue;
                }
                return Some(Lookup { column: idx, numeric, key: clone_key(key)? });
            }
        }
        None
    }

    /// The affinity of a lookup key (columns and casts carry one).
    fn static_aff(&self, e: &Expr) -> Aff {
        match e {
            Expr::Col { up, src, idx } => {
                let li = self.levels.len().saturating_sub(1 + up);
                self.levels
                    .get(li)
                    .and_then(|l| l.sources.get(*src))
                    .and_then(|s| s.columns.get(*idx))
                    .map_or(Aff::Blob, |c| c.1)
            }
            Expr::Cast(_, to) => to.aff(),
            _ => Aff::Blob,
        }
    }
}

fn collect_conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::And(a, b) => {
            collect_conjuncts(a, out);
            collect_conjuncts(b, out);
        }
        other => out.push(other),
    }
}

/// Whether ON has a conjunct `x = y` where one side reads the joined
/// source and the other does not.
fn has_join_equality(on: &Expr, src: usize) -> bool {
    let mut conjuncts = Vec::new();
    collect_conjuncts(on, &mut conjuncts);
    conjuncts.iter().any(|c| match c {
        Expr::Cmp { op: CmpOp::Eq, l, r, .. } | Expr::Is { l, r, negated: false, .. } => {
            (reads_src(l, src) && r.is_key_for(src)) || (reads_src(r, src) && l.is_key_for(src))
        }
        _ => false,
    })
}

fn reads_src(e: &Expr, src: usize) -> bool {
    match e {
        Expr::Col { up: 0, src: s, .. } => *s == src,
        Expr::Neg(a) | Expr::Plus(a) | Expr::Cast(a, _) => reads_src(a, src),
        Expr::Arith(_, a, b) | Expr::Concat(a, b) => reads_src(a, src) || reads_src(b, src),
        Expr::Func(_, args) => args.iter().any(|a| reads_src(a, src)),
        _ => false,
    }
}

/// Copies a key expression (only the shapes `is_key_for` accepts).
fn clone_key(e: &Expr) -> Option<Expr> {
    Some(match e {
        Expr::Col { up, src, idx } => Expr::Col { up: *up, src: *src, idx: *idx },
        Expr::Lit(v) => Expr::Lit(v.clone()),
        Expr::Param(i) => Expr::Param(*i),
        Expr::NamedParam(i) => Expr::NamedParam(*i),
        Expr::Neg(a) => Expr::Neg(Box::new(clone_key(a)?)),
        Expr::Plus(a) => Expr::Plus(Box::new(clone_key(a)?)),
        Expr::Cast(a, t) => Expr::Cast(Box::new(clone_key(a)?), *t),
        Expr::Arith(op, a, b) => Expr::Arith(*op, Box::new(clone_key(a)?), Box::new(clone_key(b)?)),
        Expr::Concat(a, b) => Expr::Concat(Box::new(clone_key(a)?), Box::new(clone_key(b)?)),
        Expr::Func(f, args) => Expr::Func(*f, args.iter().map(clone_key).collect::<Option<_>>()?),
        _ => return None,
    })
}
