//! Binding expressions: names to positions, functions to the allowlist,
//! comparisons to their affinity conversions. Every AST variant not handled
//! here is rejected with its position.

use std::sync::Arc;

use sqlparser::ast::{self, BinaryOperator as B, Spanned, UnaryOperator as U};

use super::Value;
use super::bind::{Binder, MAX_DEPTH, not_allowed, snippet};
use super::error::{Pos, SqlError, suggest};
use super::functions::{self};
use super::like::Pattern;
use super::ops::{Aff, Arith, CastTo, Conv, comparison_conv};
use super::plan::{CmpOp, Expr, Sub};

/// Largest compiled regex (the default of `Limits::regex_size_limit`; a
/// literal pattern is compiled once, at validation).
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a REGEXP pattern with a size bound.
pub(crate) fn compile_regex(pattern: &str, size_limit: usize) -> Result<regex::Regex, SqlError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(size_limit)
        .dfa_size_limit(size_limit)
        .build()
        .map_err(|e| SqlError::Regex { pattern: pattern.to_owned(), message: e.to_string() })
}

fn bx(e: Expr) -> Box<Expr> {
    Box::new(e)
}

/// A LIKE pattern known at planning: a text literal, with no escape or a
/// one-character literal one. Anything else is compiled per evaluation
/// (which also reports a bad escape or an over-long pattern).
fn compile_like(pat: &Expr, esc: Option<&Expr>) -> Option<Box<Pattern>> {
    let Expr::Lit(Value::Text(p)) = pat else {
        return None;
    };
    let esc = match esc {
        None => None,
        Some(Expr::Lit(Value::Text(e))) => {
            let mut it = e.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => Some(c),
                _ => return None,
            }
        }
        Some(_) => return None,
    };
    Pattern::like(p, esc).map(Box::new)
}

/// `x IN ('a', 'b', ...)` where every item is a text literal and no
/// numeric conversion applies: a text `x` equals an item exactly when
/// their bytes are equal, so a sorted list answers it.
fn text_set(list: &[(Expr, Conv)], conv: Conv) -> Option<Box<[Box<str>]>> {
    if conv == Conv::Numeric || list.is_empty() {
        return None;
    }
    let mut texts = Vec::with_capacity(list.len());
    for (item, _) in list {
        let Expr::Lit(Value::Text(t)) = item else {
            return None;
        };
        texts.push(Box::<str>::from(t.as_str()));
    }
    texts.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    texts.dedup();
    Some(texts.into_boxed_slice())
}

impl Binder<'_> {
    /// Binds one expression of the current level; returns it and its
    /// affinity.
    pub(super) fn bind_expr(&mut self, e: &ast::Expr) -> Result<(Expr, Aff), SqlError> {
        let pos = Pos::from_span(e.span());
        self.depth += 1;
        let r = if self.depth > MAX_DEPTH {
            Err(SqlError::TooDeep { limit: MAX_DEPTH, pos })
        } else {
            self.bind_expr_inner(e, pos)
        };
        self.depth -= 1;
        r
    }

    fn bind_expr_inner(&mut self, e: &ast::Expr, pos: Option<Pos>) -> Result<(Expr, Aff), SqlError> {
        use ast::Expr as A;
        let none = Aff::Blob;
        Ok(match e {
            A::Identifier(id) => self.resolve_column(None, id)?,
            A::CompoundIdentifier(parts) => match parts.as_slice() {
                [t, c] => self.resolve_column(Some(t), c)?,
                _ => {
                    return Err(not_allowed(format!("qualified name {}", snippet(e)), pos, "write table.column"));
                }
            },
            A::Value(v) => (self.bind_value(&v.value, pos)?, none),
            A::Nested(inner) => self.bind_expr(inner)?,
            A::UnaryOp { op, expr } => match op {
                U::Minus => {
                    // `-9223372036854775808` is the smallest integer, not a
                    // negated real.
                    if let A::Value(v) = expr.as_ref()
                        && let ast::Value::Number(n, _) = &v.value
                        && n == "9223372036854775808"
                    {
                        return Ok((Expr::Lit(Value::Integer(i64::MIN)), none));
                    }
                    (Expr::Neg(bx(self.bind_expr(expr)?.0)), none)
                }
                U::Plus => (Expr::Plus(bx(self.bind_expr(expr)?.0)), none),
                U::Not => (Expr::Not(bx(self.bind_expr(expr)?.0)), none),
                other => {
                    return Err(not_allowed(format!("operator {other}"), pos, "bitwise operators are not supported"));
                }
            },
            A::BinaryOp { left, op, right } => self.bind_binary(left, op, right, pos)?,
            A::IsNull(x) => (Expr::IsNull { e: bx(self.bind_expr(x)?.0), negated: false }, none),
            A::IsNotNull(x) => (Expr::IsNull { e: bx(self.bind_expr(x)?.0), negated: true }, none),
            A::IsTrue(x) | A::IsNotTrue(x) | A::IsFalse(x) | A::IsNotFalse(x) => {
                let want = matches!(e, A::IsTrue(_) | A::IsNotTrue(_));
                let negated = matches!(e, A::IsNotTrue(_) | A::IsNotFalse(_));
                (Expr::IsBool { e: bx(self.bind_expr(x)?.0), want, negated }, none)
            }
            A::IsDistinctFrom(a, b) | A::IsNotDistinctFrom(a, b) => {
                let (l, la) = self.bind_expr(a)?;
                let (r, ra) = self.bind_expr(b)?;
                let negated = matches!(e, A::IsDistinctFrom(..));
                (Expr::Is { l: bx(l), r: bx(r), conv: comparison_conv(la, ra), negated }, none)
            }
            A::In { expr, target, negated, global } => {
                if *global {
                    return Err(not_allowed("GLOBAL IN", pos, "use IN"));
                }
                let (x, xa) = self.bind_expr(expr)?;
                match target {
                    ast::InTarget::List(items) => {
                        // SQLite compares list items with the left side's
                        // affinity only.
                        let conv = match xa {
                            Aff::Numeric => Conv::Numeric,
                            Aff::Text => Conv::Text,
                            Aff::Blob => Conv::None,
                        };
                        let mut list = Vec::with_capacity(items.len());
                        for it in items {
                            list.push((self.bind_expr(it)?.0, conv));
                        }
                        let texts = text_set(&list, conv);
                        (Expr::InList { e: bx(x), list, negated: *negated, texts }, none)
                    }
                    ast::InTarget::Subquery(q) => {
                        let sub = self.bind_sub(q, pos)?;
                        Self::one_column(&sub, pos)?;
                        let conv = comparison_conv(xa, sub.plan.affs.first().copied().unwrap_or(none));
                        (Expr::InSub { e: bx(x), sub: Box::new(sub), negated: *negated, conv }, none)
                    }
                    _ => {
                        return Err(not_allowed(snippet(e), pos, "use IN (list) or IN (SELECT ...)"));
                    }
                }
            }
            A::Between { expr, negated, low, high } => {
                let (x, xa) = self.bind_expr(expr)?;
                let (lo, la) = self.bind_expr(low)?;
                let (hi, ha) = self.bind_expr(high)?;
                (
                    Expr::Between {
                        e: bx(x),
                        lo: bx(lo),
                        hi: bx(hi),
                        negated: *negated,
                        conv_lo: comparison_conv(xa, la),
                        conv_hi: comparison_conv(xa, ha),
                    },
                    none,
                )
            }
            A::Like { negated, any, expr, pattern, escape_char } => {
                if *any {
                    return Err(not_allowed("LIKE ANY", pos, "use OR"));
                }
                let esc = match escape_char {
                    Some(c) => Some(bx(self.bind_expr(c)?.0)),
                    None => None,
                };
                let e = bx(self.bind_expr(expr)?.0);
                let pat = bx(self.bind_expr(pattern)?.0);
                let compiled = compile_like(&pat, esc.as_deref());
                (Expr::Like { e, pat, esc, negated: *negated, compiled }, none)
            }
            A::ILike { .. } => {
                return Err(not_allowed("ILIKE", pos, "LIKE is already case-insensitive for ASCII"));
            }
            A::RLike { negated, expr, pattern, .. } => self.bind_regexp(expr, pattern, *negated)?,
            A::Function(f) => self.bind_function(f, pos)?,
            A::Substring { expr, substring_from, substring_for, .. } => {
                let mut args = vec![self.bind_expr(expr)?.0];
                match substring_from {
                    Some(f) => args.push(self.bind_expr(f)?.0),
                    None => {
                        return Err(SqlError::ArgCount {
                            name: "substr".into(),
                            expected: "2 or 3".into(),
                            got: 1,
                            pos,
                        });
                    }
                }
                if let Some(n) = substring_for {
                    args.push(self.bind_expr(n)?.0);
                }
                (Expr::Func(functions::Func::Substr, args), none)
            }
            A::Trim { trim_where, trim_what, expr, trim_characters } => {
                let f = match trim_where {
                    None | Some(ast::TrimWhereField::Both) => functions::Func::Trim,
                    Some(ast::TrimWhereField::Leading) => functions::Func::Ltrim,
                    Some(ast::TrimWhereField::Trailing) => functions::Func::Rtrim,
                };
                let mut args = vec![self.bind_expr(expr)?.0];
                let chars: Vec<&ast::Expr> =
                    trim_what.iter().map(AsRef::as_ref).chain(trim_characters.iter().flatten()).collect();
                match chars.as_slice() {
                    [] => {}
                    [c] => args.push(self.bind_expr(c)?.0),
                    _ => {
                        return Err(SqlError::ArgCount {
                            name: "trim".into(),
                            expected: "1 or 2".into(),
                            got: 1 + chars.len(),
                            pos,
                        });
                    }
                }
                (Expr::Func(f, args), none)
            }
            A::Case { operand, conditions, else_result, .. } => {
                let (op, oa) = match operand {
                    Some(o) => {
                        let (x, a) = self.bind_expr(o)?;
                        (Some(bx(x)), a)
                    }
                    None => (None, none),
                };
                let mut whens = Vec::with_capacity(conditions.len());
                for w in conditions {
                    let (c, ca) = self.bind_expr(&w.condition)?;
                    let (r, _) = self.bind_expr(&w.result)?;
                    whens.push((c, r, comparison_conv(oa, ca)));
                }
                let else_ = match else_result {
                    Some(x) => Some(bx(self.bind_expr(x)?.0)),
                    None => None,
                };
                (Expr::Case { operand: op, whens, else_ }, none)
            }
            A::Cast { kind, expr, data_type, format } => {
                if *kind != ast::CastKind::Cast || format.is_some() {
                    return Err(not_allowed(snippet(e), pos, "write CAST(x AS type)"));
                }
                let to = CastTo::from_type_name(&data_type.to_string());
                (Expr::Cast(bx(self.bind_expr(expr)?.0), to), to.aff())
            }
            A::Exists { subquery, negated } => {
                let sub = self.bind_sub(subquery, pos)?;
                (Expr::Exists { sub: Box::new(sub), negated: *negated }, none)
            }
            A::Subquery(q) => {
                let sub = self.bind_sub(q, pos)?;
                Self::one_column(&sub, pos)?;
                let aff = sub.plan.affs.first().copied().unwrap_or(none);
                (Expr::Scalar(Box::new(sub)), aff)
            }
            A::Collate { .. } => {
                return Err(not_allowed("COLLATE", pos, "use lower()/upper() for case-insensitive comparison"));
            }
            A::Tuple(_) => {
                return Err(not_allowed("a row value", pos, "compare columns one by one"));
            }
            _ => {
                return Err(not_allowed(snippet(e), pos, "this construct is not supported by the rule engine"));
            }
        })
    }

    fn bind_binary(
        &mut self,
        left: &ast::Expr,
        op: &B,
        right: &ast::Expr,
        pos: Option<Pos>,
    ) -> Result<(Expr, Aff), SqlError> {
        let none = Aff::Blob;
        let arith = match op {
            B::Plus => Some(Arith::Add),
            B::Minus => Some(Arith::Sub),
            B::Multiply => Some(Arith::Mul),
            B::Divide => Some(Arith::Div),
            B::Modulo => Some(Arith::Rem),
            _ => None,
        };
        if let Some(a) = arith {
            let (l, _) = self.bind_expr(left)?;
            let (r, _) = self.bind_expr(right)?;
            return Ok((Expr::Arith(a, bx(l), bx(r)), none));
        }
        let cmp = match op {
            B::Eq => Some(CmpOp::Eq),
            B::NotEq => Some(CmpOp::Ne),
            B::Lt => Some(CmpOp::Lt),
            B::LtEq => Some(CmpOp::Le),
            B::Gt => Some(CmpOp::Gt),
            B::GtEq => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(c) = cmp {
            let (l, la) = self.bind_expr(left)?;
            let (r, ra) = self.bind_expr(right)?;
            return Ok((Expr::Cmp { op: c, l: bx(l), r: bx(r), conv: comparison_conv(la, ra) }, none));
        }
        Ok(match op {
            B::Is | B::IsNot => {
                let (l, la) = self.bind_expr(left)?;
                let (r, ra) = self.bind_expr(right)?;
                (Expr::Is { l: bx(l), r: bx(r), conv: comparison_conv(la, ra), negated: *op == B::IsNot }, none)
            }
            B::And => (Expr::And(bx(self.bind_expr(left)?.0), bx(self.bind_expr(right)?.0)), none),
            B::Or => (Expr::Or(bx(self.bind_expr(left)?.0), bx(self.bind_expr(right)?.0)), none),
            B::StringConcat => (Expr::Concat(bx(self.bind_expr(left)?.0), bx(self.bind_expr(right)?.0)), none),
            B::Glob => {
                let e = bx(self.bind_expr(left)?.0);
                let pat = bx(self.bind_expr(right)?.0);
                let compiled = match &*pat {
                    Expr::Lit(Value::Text(p)) => Pattern::glob(p).map(Box::new),
                    _ => None,
                };
                (Expr::Glob { e, pat, negated: false, compiled }, none)
            }
            B::Regexp => self.bind_regexp(left, right, false)?,
            other => {
                return Err(not_allowed(
                    format!("operator {other}"),
                    pos,
                    "supported operators: + - * / % || = <> < <= > >= AND OR NOT IS LIKE GLOB REGEXP IN BETWEEN",
                ));
            }
        })
    }

    fn bind_regexp(&mut self, expr: &ast::Expr, pattern: &ast::Expr, negated: bool) -> Result<(Expr, Aff), SqlError> {
        let (x, _) = self.bind_expr(expr)?;
        let (p, _) = self.bind_expr(pattern)?;
        let compiled = match &p {
            Expr::Lit(Value::Text(s)) => Some(Arc::new(compile_regex(s, REGEX_SIZE_LIMIT)?)),
            _ => None,
        };
        Ok((Expr::Regexp { e: bx(x), pat: bx(p), negated, compiled }, Aff::Blob))
    }

    fn bind_value(&mut self, v: &ast::Value, pos: Option<Pos>) -> Result<Expr, SqlError> {
        Ok(Expr::Lit(match v {
            ast::Value::Number(n, _) => {
                if let Ok(i) = n.parse::<i64>() {
                    Value::Integer(i)
                } else if n.starts_with("0x") || n.starts_with("0X") {
                    return Err(not_allowed(format!("hex literal {n}"), pos, "write the number in decimal"));
                } else {
                    Value::Real(
                        n.parse::<f64>().map_err(|_| SqlError::Parse { message: format!("bad number {n}"), pos })?,
                    )
                }
            }
            ast::Value::SingleQuotedString(s) => Value::Text(s.clone()),
            ast::Value::Boolean(b) => Value::Integer(i64::from(*b)),
            ast::Value::Null => Value::Null,
            ast::Value::Placeholder(p) => return self.bind_param(p, pos),
            ast::Value::DoubleQuotedString(_) => {
                return Err(not_allowed("a double-quoted string", pos, "write strings in single quotes"));
            }
            other => {
                return Err(not_allowed(format!("literal {other}"), pos, "use integers, reals, 'text' or NULL"));
            }
        }))
    }

    fn bind_param(&mut self, p: &str, pos: Option<Pos>) -> Result<Expr, SqlError> {
        if p == "?" {
            self.positional += 1;
            return Ok(Expr::Param(self.positional - 1));
        }
        if let Some(n) = p.strip_prefix('?') {
            return match n.parse::<usize>() {
                Ok(k) if (1..=32_766).contains(&k) => {
                    self.positional = self.positional.max(k);
                    Ok(Expr::Param(k - 1))
                }
                _ => Err(not_allowed(format!("parameter {p}"), pos, "number parameters ?1 to ?32766")),
            };
        }
        let name = p.get(1..).unwrap_or("");
        if !p.starts_with([':', '@', '$']) || name.is_empty() {
            return Err(not_allowed(format!("parameter {p}"), pos, "use ? or :name"));
        }
        let i = match self.named.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.named.push(name.to_owned());
                self.named.len() - 1
            }
        };
        Ok(Expr::NamedParam(i))
    }

    fn bind_sub(&mut self, q: &ast::Query, _pos: Option<Pos>) -> Result<Sub, SqlError> {
        let (plan, correlated) = self.bind_query(q)?;
        let id = self.subqueries;
        self.subqueries += 1;
        Ok(Sub { id, correlated, plan })
    }

    /// Checks that a subquery used as a value or IN target has one column.
    fn one_column(sub: &Sub, pos: Option<Pos>) -> Result<(), SqlError> {
        if sub.plan.columns.len() != 1 {
            return Err(SqlError::Type {
                message: format!("subquery returns {} columns, expected 1", sub.plan.columns.len()),
                pos,
            });
        }
        Ok(())
    }

    fn resolve_column(&mut self, table: Option<&ast::Ident>, col: &ast::Ident) -> Result<(Expr, Aff), SqlError> {
        let pos = Pos::from_span(col.span);
        let n = self.levels.len();
        for (up, li) in (0..n).rev().enumerate() {
            let Some(level) = self.levels.get(li) else {
                continue;
            };
            let mut found: Option<(usize, usize, Aff)> = None;
            for (si, s) in level.sources.iter().enumerate() {
                if let Some(t) = table
                    && !s.name.eq_ignore_ascii_case(&t.value)
                {
                    continue;
                }
                if let Some(ci) = s.columns.iter().position(|c| c.0.eq_ignore_ascii_case(&col.value)) {
                    if found.is_some() {
                        return Err(SqlError::AmbiguousColumn { name: col.value.clone(), pos });
                    }
                    let aff = s.columns.get(ci).map_or(Aff::Blob, |c| c.1);
                    found = Some((si, ci, aff));
                }
            }
            if let Some((si, ci, aff)) = found {
                // Every level between here and the one that owns the
                // column reads an enclosing query.
                for l in self.levels.iter_mut().skip(li + 1) {
                    l.correlated = true;
                }
                return Ok((Expr::Col { up, src: si, idx: ci }, aff));
            }
        }
        // Not found: say which table or column was meant.
        if let Some(t) = table {
            let known = self.levels.iter().flat_map(|l| &l.sources).any(|s| s.name.eq_ignore_ascii_case(&t.value));
            if !known {
                let names: Vec<String> = self.levels.iter().flat_map(|l| &l.sources).map(|s| s.name.clone()).collect();
                return Err(SqlError::UnknownTable {
                    suggestion: suggest(&t.value, names.iter().map(String::as_str)),
                    name: t.value.clone(),
                    pos: Pos::from_span(t.span),
                });
            }
        }
        let names: Vec<String> = self
            .levels
            .iter()
            .flat_map(|l| &l.sources)
            .filter(|s| table.is_none_or(|t| s.name.eq_ignore_ascii_case(&t.value)))
            .flat_map(|s| s.columns.iter().map(|c| c.0.clone()))
            .collect();
        Err(SqlError::UnknownColumn {
            name: table.map_or_else(|| col.value.clone(), |t| format!("{}.{}", t.value, col.value)),
            pos,
            suggestion: suggest(&col.value, names.iter().map(String::as_str)),
        })
    }
}
