//! Predicates: the expressions that have a truth value (comparisons, IS,
//! AND/OR/NOT, LIKE/GLOB/REGEXP, BETWEEN, IN, EXISTS), evaluated straight
//! to SQLite's three-valued logic (`None` is NULL). WHERE, ON and HAVING
//! ask for a truth value, so a rule's conditions never build an integer
//! `Value` just to test it; operands that are columns or literals are
//! borrowed in place.

use std::borrow::Cow;
use std::cmp::Ordering;

use super::Value;
use super::error::SqlError;
use super::exec::{Ctx, Env, internal};
use super::like;
use super::ops::{self, Conv, compare, truthy};
use super::plan::{CmpOp, Expr};

/// A truth value: `Some(true)`, `Some(false)` or NULL (`None`). The error
/// is boxed so that the result fits in two registers: predicates recurse
/// (AND/OR chains) on every row.
type T = Result<Option<bool>, Box<SqlError>>;

impl CmpOp {
    /// Whether an ordering satisfies the operator.
    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        }
    }
}

impl Ctx<'_> {
    /// The truth value of `e` in `env` (any expression: a non-predicate is
    /// tested by SQLite's truthiness of its value).
    pub(crate) fn truth(&self, e: &Expr, env: &Env<'_>) -> Result<Option<bool>, SqlError> {
        self.test(e, env).map_err(|e| *e)
    }

    fn test(&self, e: &Expr, env: &Env<'_>) -> T {
        Ok(match e {
            Expr::Not(a) => self.test(a, env)?.map(|b| !b),
            Expr::And(a, b) => {
                let x = self.test(a, env)?;
                if x == Some(false) {
                    return Ok(Some(false));
                }
                match (x, self.test(b, env)?) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                }
            }
            Expr::Or(a, b) => {
                let x = self.test(a, env)?;
                if x == Some(true) {
                    return Ok(Some(true));
                }
                match (x, self.test(b, env)?) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                }
            }
            Expr::Cmp { op, l, r, conv } => {
                let (x, y) = (self.operand(l, env)?, self.operand(r, env)?);
                compare_fast(&x, &y, *conv).map(|o| op.holds(o))
            }
            Expr::Is { l, r, conv, negated } => {
                let (x, y) = (self.operand(l, env)?, self.operand(r, env)?);
                let same = match (x.is_null(), y.is_null()) {
                    (true, true) => true,
                    (false, false) => compare_fast(&x, &y, *conv) == Some(Ordering::Equal),
                    _ => false,
                };
                Some(same != *negated)
            }
            Expr::IsNull { e, negated } => Some(self.operand(e, env)?.is_null() != *negated),
            Expr::IsBool { e, want, negated } => Some((self.test(e, env)? == Some(*want)) != *negated),
            Expr::Like { e, negated, compiled: Some(m), .. } | Expr::Glob { e, negated, compiled: Some(m), .. } => {
                let x = self.operand(e, env)?;
                ops::text_of(&x).map(|x| m.is_match(&x) != *negated)
            }
            Expr::Like { e, pat, esc, negated, compiled: None } => {
                let (x, p) = (self.operand(e, env)?, self.operand(pat, env)?);
                let esc = match esc {
                    None => None,
                    Some(c) => {
                        let c = self.operand(c, env)?;
                        let Some(t) = ops::text_of(&c) else {
                            return Ok(None);
                        };
                        let mut it = t.chars();
                        match (it.next(), it.next()) {
                            (Some(ch), None) => Some(ch),
                            _ => {
                                return Err(Box::new(SqlError::Type {
                                    message: "ESCAPE expression must be a single character".into(),
                                    pos: None,
                                }));
                            }
                        }
                    }
                };
                match (ops::text_of(&x), ops::text_of(&p)) {
                    (Some(x), Some(p)) => Some(like::like(&x, &p, esc).ok_or_else(too_complex)? != *negated),
                    _ => None,
                }
            }
            Expr::Glob { e, pat, negated, compiled: None } => {
                let (x, p) = (self.operand(e, env)?, self.operand(pat, env)?);
                match (ops::text_of(&x), ops::text_of(&p)) {
                    (Some(x), Some(p)) => Some(like::glob(&x, &p).ok_or_else(too_complex)? != *negated),
                    _ => None,
                }
            }
            Expr::Regexp { e, pat, negated, compiled } => {
                let x = self.operand(e, env)?;
                let p = self.operand(pat, env)?;
                let (Some(x), Some(p)) = (ops::text_of(&x), ops::text_of(&p)) else {
                    return Ok(None);
                };
                let hit = match compiled {
                    Some(re) => re.is_match(&x),
                    None => self.regex(&p)?.is_match(&x),
                };
                Some(hit != *negated)
            }
            Expr::Between { e, lo, hi, negated, conv_lo, conv_hi } => {
                let x = self.operand(e, env)?;
                let (l, h) = (self.operand(lo, env)?, self.operand(hi, env)?);
                let ge = compare_fast(&x, &l, *conv_lo).map(|o| o != Ordering::Less);
                let le = compare_fast(&x, &h, *conv_hi).map(|o| o != Ordering::Greater);
                let r = match (ge, le) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                };
                r.map(|b| b != *negated)
            }
            Expr::InList { e, list, negated, texts } => {
                if list.is_empty() {
                    return Ok(Some(*negated));
                }
                let x = self.operand(e, env)?;
                if x.is_null() {
                    return Ok(None);
                }
                if let (Some(texts), Value::Text(t)) = (texts, &*x) {
                    let hit = texts.binary_search_by(|item| item.as_bytes().cmp(t.as_bytes())).is_ok();
                    return Ok(Some(hit != *negated));
                }
                let mut saw_null = false;
                for (item, conv) in list {
                    let v = self.operand(item, env)?;
                    match compare_fast(&x, &v, *conv) {
                        Some(Ordering::Equal) => return Ok(Some(!*negated)),
                        None => saw_null = true,
                        Some(_) => {}
                    }
                }
                if saw_null { None } else { Some(*negated) }
            }
            Expr::InSub { e, sub, negated, conv } => {
                let rows = self.sub_rows(sub, env, None)?;
                if rows.is_empty() {
                    return Ok(Some(*negated));
                }
                let x = self.operand(e, env)?;
                if x.is_null() {
                    return Ok(None);
                }
                in_rows(&x, &rows, *conv).map(|b| b != *negated)
            }
            Expr::Exists { sub, negated } => Some(self.sub_rows(sub, env, Some(1))?.is_empty() == *negated),
            other => truthy(&*self.eval(other, env)?),
        })
    }

    /// An operand: columns of this level and literals are borrowed without
    /// going through the general evaluator.
    #[inline]
    fn operand<'v>(&'v self, e: &'v Expr, env: &Env<'v>) -> Result<Cow<'v, Value>, SqlError> {
        match e {
            Expr::Col { up: 0, src, idx } => {
                env.segs.get(*src).and_then(|s| s.get(*idx)).map(Cow::Borrowed).ok_or_else(|| internal("column"))
            }
            Expr::Lit(v) => Ok(Cow::Borrowed(v)),
            _ => self.eval(e, env),
        }
    }
}

/// [`compare`] with the common case first: two texts under no numeric
/// conversion compare by bytes.
#[inline]
fn compare_fast(a: &Value, b: &Value, c: Conv) -> Option<Ordering> {
    match (a, b) {
        (Value::Text(x), Value::Text(y)) if c != Conv::Numeric => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => compare(a, b, c),
    }
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
