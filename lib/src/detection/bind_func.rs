//! Binding function calls against the allowlist: scalar functions become
//! `Expr::Func`, aggregates are collected on their query level.

use sqlparser::ast;

use super::bind::{Binder, not_allowed, single_name, snippet};
use super::error::{Pos, SqlError, suggest};
use super::functions::{self, Resolved};
use super::ops::Aff;
use super::plan::{AggCall, Expr};

impl Binder<'_> {
    pub(super) fn bind_function(&mut self, f: &ast::Function, pos: Option<Pos>) -> Result<(Expr, Aff), SqlError> {
        let name = single_name(&f.name, pos)?;
        if f.over.is_some() {
            return Err(not_allowed("a window function (OVER)", pos, "use GROUP BY"));
        }
        if f.filter.is_some() || f.null_treatment.is_some() || !f.within_group.is_empty() || f.uses_odbc_syntax {
            return Err(not_allowed(format!("{name}() modifiers"), pos, "call the function plainly"));
        }
        if !matches!(f.parameters, ast::FunctionArguments::None) {
            return Err(not_allowed(format!("{name}() parameters"), pos, "call the function plainly"));
        }
        let (list, distinct) = match &f.args {
            ast::FunctionArguments::List(l) => {
                if !l.clauses.is_empty() {
                    return Err(not_allowed(format!("clauses inside {name}()"), pos, "call the function plainly"));
                }
                (l.args.as_slice(), matches!(l.duplicate_treatment, Some(ast::DuplicateTreatment::Distinct)))
            }
            ast::FunctionArguments::None => {
                return Err(not_allowed(
                    format!("`{name}` without parentheses"),
                    pos,
                    "call it as a function, e.g. now_ms()",
                ));
            }
            ast::FunctionArguments::Subquery(_) => {
                return Err(not_allowed(format!("{name}(SELECT ...)"), pos, "pass values, not a subquery"));
            }
        };
        let mut star = false;
        let mut arg_exprs = Vec::with_capacity(list.len());
        for a in list {
            match a {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(x)) => arg_exprs.push(x),
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Wildcard) => star = true,
                _ => {
                    return Err(not_allowed(format!("argument {}", snippet(a)), pos, "pass plain expressions"));
                }
            }
        }
        if star && !arg_exprs.is_empty() {
            return Err(not_allowed(format!("{name}(*, ...)"), pos, "write count(*)"));
        }
        let resolved = match functions::resolve(&name, arg_exprs.len(), star) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(SqlError::UnknownFunction {
                    suggestion: suggest(&name, functions::NAMES.iter().copied()),
                    name,
                    pos,
                });
            }
            Err(expected) => {
                return Err(SqlError::ArgCount {
                    name,
                    expected: expected.into(),
                    got: arg_exprs.len() + usize::from(star),
                    pos,
                });
            }
        };
        match resolved {
            Resolved::Scalar(func) => {
                if distinct {
                    return Err(not_allowed(
                        format!("DISTINCT in {name}()"),
                        pos,
                        "DISTINCT applies to aggregates only",
                    ));
                }
                let mut args = Vec::with_capacity(arg_exprs.len());
                for x in arg_exprs {
                    args.push(self.bind_expr(x)?.0);
                }
                Ok((Expr::Func(func, args), Aff::Blob))
            }
            Resolved::Agg(func) => {
                let (ok, clause) = self.levels.last().map_or((false, "here"), |l| (l.agg_ok, l.clause));
                if !ok {
                    return Err(not_allowed(
                        format!("aggregate {name}() in {clause}"),
                        pos,
                        "aggregates belong in the SELECT list, HAVING or ORDER BY",
                    ));
                }
                if distinct && arg_exprs.len() != 1 {
                    return Err(not_allowed(
                        format!("DISTINCT {name}() with {} arguments", arg_exprs.len()),
                        pos,
                        "DISTINCT aggregates take one argument",
                    ));
                }
                // Arguments of an aggregate cannot hold another aggregate.
                if let Some(l) = self.levels.last_mut() {
                    l.agg_ok = false;
                }
                let mut args = Vec::with_capacity(arg_exprs.len());
                let mut err = None;
                for x in arg_exprs {
                    match self.bind_expr(x) {
                        Ok((a, _)) => args.push(a),
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                let level = self.levels.last_mut();
                let i = match level {
                    Some(l) => {
                        l.agg_ok = true;
                        if let Some(e) = err {
                            return Err(e);
                        }
                        l.aggs.push(AggCall { func, args, distinct });
                        l.aggs.len() - 1
                    }
                    None => {
                        return Err(not_allowed(format!("aggregate {name}()"), pos, "use it in a SELECT"));
                    }
                };
                Ok((Expr::Agg(i), Aff::Blob))
            }
        }
    }
}
