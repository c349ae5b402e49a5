//! SQL values with SQLite's storage classes.

use std::cmp::Ordering;
use std::fmt;

/// One SQL value: NULL, INTEGER, REAL or TEXT (SQLite's storage classes;
/// booleans are integers 0/1).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Unknown / absent.
    Null,
    /// 64-bit signed integer.
    Integer(i64),
    /// 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
}

impl Value {
    /// True for NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// SQLite's type ordering for mixed comparisons: NULL < numbers < text.
    fn class_rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Integer(_) | Value::Real(_) => 1,
            Value::Text(_) => 2,
        }
    }

    /// Total order as SQLite's ORDER BY uses it (NULLs first, numbers by
    /// value, text by bytes).
    pub fn sort_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Integer(a), Value::Integer(b)) => a.cmp(b),
            (Value::Integer(a), Value::Real(b)) => cmp_int_real(*a, *b),
            (Value::Real(a), Value::Integer(b)) => cmp_int_real(*b, *a).reverse(),
            (Value::Real(a), Value::Real(b)) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
            (Value::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            _ => self.class_rank().cmp(&other.class_rank()),
        }
    }
}

/// Compares an integer with a real exactly (no precision loss for |i| > 2^53).
fn cmp_int_real(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        return Ordering::Greater;
    }
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    let t = r.trunc();
    // In range: the truncation converts exactly.
    #[allow(clippy::cast_possible_truncation)]
    let ti = t as i64;
    match i.cmp(&ti) {
        Ordering::Equal => 0.0_f64.partial_cmp(&(r - t)).unwrap_or(Ordering::Equal),
        o => o,
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Real(r) => write!(f, "{}", format_real(*r)),
            Value::Text(s) => f.write_str(s),
        }
    }
}

/// Formats a real the way SQLite prints it (`1.0`, not `1`).
pub fn format_real(r: f64) -> String {
    if r.is_finite() && r == r.trunc() && r.abs() < 1e15 { format!("{r:.1}") } else { format!("{r}") }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Integer(i64::from(v))
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_ordering_across_classes() {
        let mut v = vec![
            Value::Text("b".into()),
            Value::Real(1.5),
            Value::Null,
            Value::Integer(1),
            Value::Text("a".into()),
            Value::Integer(2),
        ];
        v.sort_by(Value::sort_cmp);
        assert_eq!(
            v,
            vec![
                Value::Null,
                Value::Integer(1),
                Value::Real(1.5),
                Value::Integer(2),
                Value::Text("a".into()),
                Value::Text("b".into())
            ]
        );
        assert_eq!(cmp_int_real(i64::MAX, 9.3e18), Ordering::Less);
    }

    #[test]
    fn reals_print_like_sqlite() {
        assert_eq!(Value::Real(1.0).to_string(), "1.0");
        assert_eq!(Value::Real(0.25).to_string(), "0.25");
    }
}
