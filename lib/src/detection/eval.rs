//! Expression evaluation over a bound plan, with SQLite's three-valued
//! logic. Values are borrowed from rows and literals where possible.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::rc::Rc;

use super::Value;
use super::bind_expr::compile_regex;
use super::error::SqlError;
use super::exec::{Ctx, Env, Rows, cache_put, internal};
use super::functions::{self, Func};
use super::ops::{self, compare, truthy};
use super::plan::{Expr, Sub};

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
            // Predicates have a truth value (true, false or NULL).
            Expr::Not(_)
            | Expr::Cmp { .. }
            | Expr::Is { .. }
            | Expr::And(..)
            | Expr::Or(..)
            | Expr::IsNull { .. }
            | Expr::IsBool { .. }
            | Expr::Like { .. }
            | Expr::Glob { .. }
            | Expr::Regexp { .. }
            | Expr::Between { .. }
            | Expr::InList { .. }
            | Expr::InSub { .. }
            | Expr::Exists { .. } => tri(self.truth(e, env)?),
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
            Func::NowMs => Ok(Cow::Owned(Value::Integer(self.now_ms()))),
            // Case mapping of text that has nothing to map is the text
            // itself: no copy.
            Func::Lower | Func::Upper => {
                let v = self.eval(args.first().ok_or_else(|| internal("argument"))?, env)?;
                let unchanged = match &*v {
                    Value::Text(t) if f == Func::Lower => !t.bytes().any(|b| b.is_ascii_uppercase()),
                    Value::Text(t) => !t.bytes().any(|b| b.is_ascii_lowercase()),
                    _ => false,
                };
                if unchanged {
                    return Ok(v);
                }
                Ok(Cow::Owned(functions::call(f, std::slice::from_ref(&v))?))
            }
            _ => {
                // Arguments are borrowed from rows and literals; up to four
                // need no allocation.
                const INLINE: usize = 4;
                if args.len() <= INLINE {
                    let mut vals: [Cow<'v, Value>; INLINE] = [NULL, NULL, NULL, NULL];
                    for (slot, a) in vals.iter_mut().zip(args) {
                        *slot = self.eval(a, env)?;
                    }
                    let vals = vals.get(..args.len()).ok_or_else(|| internal("arguments"))?;
                    return Ok(Cow::Owned(functions::call(f, vals)?));
                }
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(self.eval(a, env)?);
                }
                Ok(Cow::Owned(functions::call(f, &vals)?))
            }
        }
    }

    /// A REGEXP pattern compiled with the size limit, cached per execution
    /// and per thread (a streaming rule's constant pattern is compiled once
    /// per thread, not once per event).
    pub(crate) fn regex(&self, p: &str) -> Result<Rc<regex::Regex>, SqlError> {
        if let Some(r) = self.regex_cache.borrow().as_ref().and_then(|c| c.get(p)) {
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
        self.regex_cache.borrow_mut().get_or_insert_with(Default::default).insert(p.to_owned(), Rc::clone(&re));
        Ok(re)
    }

    /// The rows of an expression subquery: cached when it does not read the
    /// enclosing row.
    pub(crate) fn sub_rows(&self, sub: &Sub, env: &Env<'_>, cap: Option<u64>) -> Result<Rows, SqlError> {
        if sub.correlated {
            return self.run_nested(&sub.plan, Some(env), cap);
        }
        if let Some(Some(r)) = self.sub_cache.borrow().get(sub.id) {
            return Ok(Rc::clone(r));
        }
        let rows = self.run_nested(&sub.plan, None, cap)?;
        cache_put(&self.sub_cache, sub.id, &rows);
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
