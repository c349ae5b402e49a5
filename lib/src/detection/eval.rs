//! Expression evaluation over a bound plan, with SQLite's three-valued
//! logic. Values are borrowed from rows and literals where possible.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::rc::Rc;

use super::Value;
use super::bind_expr::compile_regex;
use super::error::SqlError;
use super::exec::{Ctx, Env, Rows, internal};
use super::functions::{self, Func};
use super::like;
use super::ops::{self, Conv, compare, truthy};
use super::plan::{CmpOp, Expr, Sub};

type R<'v> = Result<Cow<'v, Value>, SqlError>;

fn int(b: bool) -> Cow<'static, Value> {
    Cow::Owned(Value::Integer(i64::from(b)))
}

fn tri(b: Option<bool>) -> Cow<'static, Value> {
    b.map_or(Cow::Owned(Value::Null), int)
}

const NULL: Cow<'static, Value> = Cow::Owned(Value::Null);

impl Ctx<'_> {
    /// Evaluates `e` in `env`.
    pub(crate) fn eval<'v>(&'v self, e: &'v Expr, env: &Env<'v>) -> R<'v> {
        Ok(match e {
            Expr::Col { up, src, idx } => {
                let mut en = env;
                for _ in 0..*up {
                    en = en.outer.ok_or_else(|| internal("outer reference"))?;
                }
                let seg = en.segs.get(*src).ok_or_else(|| internal("source"))?;
                Cow::Borrowed(seg.get(*idx).ok_or_else(|| internal("column"))?)
            }
            Expr::Lit(v) => Cow::Borrowed(v),
            Expr::Param(i) => Cow::Borrowed(self.positional.get(*i).ok_or_else(|| internal("parameter"))?),
            Expr::NamedParam(i) => Cow::Borrowed(self.named.get(*i).ok_or_else(|| internal("parameter"))?),
            Expr::Neg(a) => Cow::Owned(ops::negate(&*self.eval(a, env)?)),
            Expr::Plus(a) => self.eval(a, env)?,
            Expr::Not(a) => tri(truthy(&*self.eval(a, env)?).map(|b| !b)),
            Expr::Arith(op, a, b) => {
                let (x, y) = (self.eval(a, env)?, self.eval(b, env)?);
                Cow::Owned(ops::arith(*op, &x, &y))
            }
            Expr::Concat(a, b) => {
                let (x, y) = (self.eval(a, env)?, self.eval(b, env)?);
                match (ops::text_of(&x), ops::text_of(&y)) {
                    (Some(x), Some(y)) => Cow::Owned(Value::Text(format!("{x}{y}"))),
                    _ => NULL,
                }
            }
            Expr::Cmp { op, l, r, conv } => {
                let (x, y) = (self.eval(l, env)?, self.eval(r, env)?);
                tri(compare(&x, &y, *conv).map(|o| match op {
                    CmpOp::Eq => o == Ordering::Equal,
                    CmpOp::Ne => o != Ordering::Equal,
                    CmpOp::Lt => o == Ordering::Less,
                    CmpOp::Le => o != Ordering::Greater,
                    CmpOp::Gt => o == Ordering::Greater,
                    CmpOp::Ge => o != Ordering::Less,
                }))
            }
            Expr::Is { l, r, conv, negated } => {
                let (x, y) = (self.eval(l, env)?, self.eval(r, env)?);
                let same = match (x.is_null(), y.is_null()) {
                    (true, true) => true,
                    (false, false) => compare(&x, &y, *conv) == Some(Ordering::Equal),
                    _ => false,
                };
                int(same != *negated)
            }
            Expr::And(a, b) => {
                let x = truthy(&*self.eval(a, env)?);
                if x == Some(false) {
                    return Ok(int(false));
                }
                let y = truthy(&*self.eval(b, env)?);
                match (x, y) {
                    (_, Some(false)) => int(false),
                    (Some(true), Some(true)) => int(true),
                    _ => NULL,
                }
            }
            Expr::Or(a, b) => {
                let x = truthy(&*self.eval(a, env)?);
                if x == Some(true) {
                    return Ok(int(true));
                }
                let y = truthy(&*self.eval(b, env)?);
                match (x, y) {
                    (_, Some(true)) => int(true),
                    (Some(false), Some(false)) => int(false),
                    _ => NULL,
                }
            }
            Expr::IsNull { e, negated } => int(self.eval(e, env)?.is_null() != *negated),
            Expr::IsBool { e, want, negated } => int((truthy(&*self.eval(e, env)?) == Some(*want)) != *negated),
            Expr::Like { e, pat, esc, negated } => {
                let (x, p) = (self.eval(e, env)?, self.eval(pat, env)?);
                let esc = match esc {
                    None => None,
                    Some(c) => {
                        let c = self.eval(c, env)?;
                        let Some(t) = ops::text_of(&c) else {
                            return Ok(NULL);
                        };
                        let mut it = t.chars();
                        match (it.next(), it.next()) {
                            (Some(ch), None) => Some(ch),
                            _ => {
                                return Err(SqlError::Type {
                                    message: "ESCAPE expression must be a single character".into(),
                                    pos: None,
                                });
                            }
                        }
                    }
                };
                match (ops::text_of(&x), ops::text_of(&p)) {
                    (Some(x), Some(p)) => int(like::like(&x, &p, esc).ok_or_else(too_complex)? != *negated),
                    _ => NULL,
                }
            }
            Expr::Glob { e, pat, negated } => {
                let (x, p) = (self.eval(e, env)?, self.eval(pat, env)?);
                match (ops::text_of(&x), ops::text_of(&p)) {
                    (Some(x), Some(p)) => int(like::glob(&x, &p).ok_or_else(too_complex)? != *negated),
                    _ => NULL,
                }
            }
            Expr::Regexp { e, pat, negated, compiled } => {
                let x = self.eval(e, env)?;
                let p = self.eval(pat, env)?;
                let (Some(x), Some(p)) = (ops::text_of(&x), ops::text_of(&p)) else {
                    return Ok(NULL);
                };
                let hit = match compiled {
                    Some(re) => re.is_match(&x),
                    None => self.regex(&p)?.is_match(&x),
                };
                int(hit != *negated)
            }
            Expr::Between { e, lo, hi, negated, conv_lo, conv_hi } => {
                let x = self.eval(e, env)?;
                let (l, h) = (self.eval(lo, env)?, self.eval(hi, env)?);
                let ge = compare(&x, &l, *conv_lo).map(|o| o != Ordering::Less);
                let le = compare(&x, &h, *conv_hi).map(|o| o != Ordering::Greater);
                let r = match (ge, le) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                };
                tri(r.map(|b| b != *negated))
            }
            Expr::InList { e, list, negated } => {
                if list.is_empty() {
                    return Ok(int(*negated));
                }
                let x = self.eval(e, env)?;
                if x.is_null() {
                    return Ok(NULL);
                }
                let mut saw_null = false;
                for (item, conv) in list {
                    let v = self.eval(item, env)?;
                    match compare(&x, &v, *conv) {
                        Some(Ordering::Equal) => return Ok(int(!*negated)),
                        None => saw_null = true,
                        Some(_) => {}
                    }
                }
                if saw_null { NULL } else { int(*negated) }
            }
            Expr::InSub { e, sub, negated, conv } => {
                let rows = self.sub_rows(sub, env, None)?;
                if rows.is_empty() {
                    return Ok(int(*negated));
                }
                let x = self.eval(e, env)?;
                if x.is_null() {
                    return Ok(NULL);
                }
                tri(in_rows(&x, &rows, *conv).map(|b| b != *negated))
            }
            Expr::Exists { sub, negated } => int(self.sub_rows(sub, env, Some(1))?.is_empty() == *negated),
            Expr::Scalar(sub) => {
                let rows = self.sub_rows(sub, env, Some(1))?;
                Cow::Owned(rows.first().and_then(|r| r.first()).cloned().unwrap_or(Value::Null))
            }
            Expr::Case { operand, whens, else_ } => {
                let op = match operand {
                    Some(o) => Some(self.eval(o, env)?),
                    None => None,
                };
                for (cond, result, conv) in whens {
                    let c = self.eval(cond, env)?;
                    let hit = match &op {
                        Some(o) => compare(o, &c, *conv) == Some(Ordering::Equal),
                        None => truthy(&c) == Some(true),
                    };
                    if hit {
                        return self.eval(result, env);
                    }
                }
                match else_ {
                    Some(x) => self.eval(x, env)?,
                    None => NULL,
                }
            }
            Expr::Cast(a, to) => Cow::Owned(ops::cast(&*self.eval(a, env)?, *to)),
            Expr::Func(f, args) => self.call(*f, args, env)?,
            Expr::Agg(i) => Cow::Borrowed(env.aggs.get(*i).ok_or_else(|| internal("aggregate"))?),
        })
    }

    fn call<'v>(&'v self, f: Func, args: &'v [Expr], env: &Env<'v>) -> R<'v> {
        match f {
            // Lazy: later arguments are not evaluated once one is non-NULL.
            Func::Coalesce | Func::Ifnull => {
                for a in args {
                    let v = self.eval(a, env)?;
                    if !v.is_null() {
                        return Ok(v);
                    }
                }
                Ok(NULL)
            }
            _ => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(self.eval(a, env)?.into_owned());
                }
                Ok(Cow::Owned(functions::call(f, &vals, self.now_ms)?))
            }
        }
    }

    /// A REGEXP pattern compiled with the size limit, cached per execution
    /// and per thread (a streaming rule's constant pattern is compiled once
    /// per thread, not once per event).
    fn regex(&self, p: &str) -> Result<Rc<regex::Regex>, SqlError> {
        if let Some(r) = self.regex_cache.borrow().get(p) {
            return Ok(Rc::clone(r));
        }
        let limit = self.limits.regex_size_limit;
        let cached = THREAD_REGEXES.with(|c| c.borrow().get(&(p.to_owned(), limit)).cloned());
        let re = match cached {
            Some(re) => re,
            None => {
                let re = compile_regex(p, limit)?;
                THREAD_REGEXES.with(|c| {
                    let mut c = c.borrow_mut();
                    // Bounded: ad-hoc queries with ever-new patterns must not grow it.
                    if c.len() >= THREAD_REGEX_CACHE {
                        c.clear();
                    }
                    c.insert((p.to_owned(), limit), re.clone());
                });
                re
            }
        };
        let re = Rc::new(re);
        self.regex_cache.borrow_mut().insert(p.to_owned(), Rc::clone(&re));
        Ok(re)
    }

    /// The rows of an expression subquery: cached when it does not read the
    /// enclosing row.
    fn sub_rows(&self, sub: &Sub, env: &Env<'_>, cap: Option<u64>) -> Result<Rows, SqlError> {
        if sub.correlated {
            return self.run_nested(&sub.plan, Some(env), cap);
        }
        if let Some(r) = self.sub_cache.borrow().get(&sub.id) {
            return Ok(Rc::clone(r));
        }
        let rows = self.run_nested(&sub.plan, None, cap)?;
        self.sub_cache.borrow_mut().insert(sub.id, Rc::clone(&rows));
        Ok(rows)
    }
}

/// Compiled patterns kept per thread (`regex::Regex` clones share the
/// compiled program).
const THREAD_REGEX_CACHE: usize = 128;

thread_local! {
    static THREAD_REGEXES: std::cell::RefCell<std::collections::HashMap<(String, usize), regex::Regex>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// `x IN rows`: true on a match, NULL when no match but a NULL was seen.
fn in_rows(x: &Value, rows: &[Vec<Value>], conv: Conv) -> Option<bool> {
    let mut saw_null = false;
    for r in rows {
        match compare(x, r.first().unwrap_or(&Value::Null), conv) {
            Some(Ordering::Equal) => return Some(true),
            None => saw_null = true,
            Some(_) => {}
        }
    }
    if saw_null { None } else { Some(false) }
}

fn too_complex() -> SqlError {
    SqlError::Type {
        message: format!("LIKE or GLOB pattern too complex (over {} bytes)", like::MAX_PATTERN_BYTES),
        pos: None,
    }
}
