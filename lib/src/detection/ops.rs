//! SQLite value semantics: affinity, comparison, arithmetic, casts and the
//! conversions between text and numbers.

use std::borrow::Cow;
use std::cmp::Ordering;

use super::Value;
use super::error::SqlError;

/// The affinity of an expression as SQLite uses it for comparisons:
/// column references carry their column's, `CAST` its target's, everything
/// else has none (`Blob`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aff {
    /// No affinity.
    Blob,
    /// TEXT affinity.
    Text,
    /// INTEGER, REAL or NUMERIC affinity (they compare alike).
    Numeric,
}

impl From<super::Affinity> for Aff {
    fn from(a: super::Affinity) -> Self {
        match a {
            super::Affinity::Text => Aff::Text,
            super::Affinity::Integer | super::Affinity::Real => Aff::Numeric,
        }
    }
}

/// What to apply to each side of a comparison before comparing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conv {
    /// Compare as is.
    None,
    /// Apply NUMERIC affinity to both sides (a no-op on numbers).
    Numeric,
    /// Apply TEXT affinity to both sides (a no-op on text).
    Text,
}

/// SQLite's rule (datatype3 §4.2) for the conversion a comparison applies.
pub(crate) fn comparison_conv(l: Aff, r: Aff) -> Conv {
    match (l, r) {
        (Aff::Numeric, _) | (_, Aff::Numeric) => {
            if l == r {
                Conv::None
            } else {
                Conv::Numeric
            }
        }
        (Aff::Text, Aff::Blob) | (Aff::Blob, Aff::Text) => Conv::Text,
        _ => Conv::None,
    }
}

/// Applies a comparison conversion to a value. With `Conv::Numeric` only
/// the side whose affinity is not numeric changes, but converting a
/// number is a no-op, so both sides can go through it.
pub(crate) fn apply_conv(v: &Value, c: Conv) -> Cow<'_, Value> {
    match (c, v) {
        (Conv::Numeric, Value::Text(s)) => match parse_number(s) {
            Some(n) if n.whole => Cow::Owned(n.value),
            _ => Cow::Borrowed(v),
        },
        (Conv::Text, Value::Integer(_) | Value::Real(_)) => Cow::Owned(Value::Text(to_text(v))),
        _ => Cow::Borrowed(v),
    }
}

/// Compares after the conversion; `None` when either side is NULL.
pub(crate) fn compare(a: &Value, b: &Value, c: Conv) -> Option<Ordering> {
    if a.is_null() || b.is_null() {
        return None;
    }
    if c == Conv::None {
        return Some(a.sort_cmp(b));
    }
    // The conversion goes only to the side without that affinity; numbers
    // and text are unchanged by their own affinity, so converting both is
    // the same thing.
    let (a, b) = (apply_conv(a, c), apply_conv(b, c));
    Some(a.sort_cmp(&b))
}

/// A number parsed from text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    /// The value (INTEGER or REAL).
    pub value: Value,
    /// The whole text (but surrounding spaces) was the number.
    pub whole: bool,
}

/// Parses the longest numeric prefix of `s` the way SQLite does for
/// arithmetic (`'12abc' + 0 = 12`); `None` when there is no digit at all.
pub(crate) fn parse_number(s: &str) -> Option<Parsed> {
    let b = s.as_bytes();
    let mut i = 0;
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    let start = i;
    if matches!(b.get(i), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let mut digits = i - int_start;
    let mut is_int = true;
    if b.get(i) == Some(&b'.') {
        let mut j = i + 1;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        let frac = j - i - 1;
        if digits + frac > 0 {
            digits += frac;
            is_int = false;
            i = j;
        }
    }
    if digits == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let exp_start = j;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        if j > exp_start {
            is_int = false;
            i = j;
        }
    }
    let text = s.get(start..i)?;
    let mut rest = i;
    while b.get(rest).is_some_and(|c| c.is_ascii_whitespace()) {
        rest += 1;
    }
    let whole = rest == b.len();
    let value = if is_int {
        match text.parse::<i64>() {
            Ok(n) => Value::Integer(n),
            Err(_) => Value::Real(text.parse::<f64>().ok()?),
        }
    } else {
        Value::Real(text.parse::<f64>().ok()?)
    };
    Some(Parsed { value, whole })
}

/// The numeric value of an operand of arithmetic: NULL stays NULL, text
/// becomes its numeric prefix (0 when there is none).
pub(crate) fn to_number(v: &Value) -> Value {
    match v {
        Value::Text(s) => parse_number(s).map_or(Value::Integer(0), |p| p.value),
        other => other.clone(),
    }
}

/// The value as f64 (text by its numeric prefix); `None` for NULL.
pub(crate) fn to_f64(v: &Value) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)] // SQLite converts the same way.
    match to_number(v) {
        Value::Integer(i) => Some(i as f64),
        Value::Real(r) => Some(r),
        _ => None,
    }
}

/// The value as i64 the way `CAST(x AS INTEGER)` computes it; `None` for NULL.
pub(crate) fn to_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Null => None,
        Value::Integer(i) => Some(*i),
        Value::Real(r) => Some(real_to_i64(*r)),
        Value::Text(s) => Some(int_prefix(s)),
    }
}

/// Truncates a real toward zero, saturating like SQLite.
#[allow(clippy::cast_possible_truncation)] // saturating `as` is the intent
fn real_to_i64(r: f64) -> i64 {
    if r.is_nan() { 0 } else { r as i64 }
}

/// The longest integer prefix of text (`CAST('12.7x' AS INTEGER) = 12`).
fn int_prefix(s: &str) -> i64 {
    let t = s.trim_start();
    let b = t.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let digits = t.get(..i).unwrap_or("");
    match digits.parse::<i64>() {
        Ok(n) => n,
        Err(_) if i > 1 || (i == 1 && b.first().is_some_and(u8::is_ascii_digit)) => {
            if b.first() == Some(&b'-') {
                i64::MIN
            } else {
                i64::MAX
            }
        }
        Err(_) => 0,
    }
}

/// SQLite's truth value: NULL is unknown, numbers are true when non-zero,
/// text by its numeric prefix.
pub(crate) fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Null => None,
        Value::Integer(i) => Some(*i != 0),
        Value::Real(r) => Some(*r != 0.0),
        Value::Text(_) => to_f64(v).map(|f| f != 0.0),
    }
}

/// The text form of a non-NULL value (numbers as SQLite prints them).
pub(crate) fn to_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => real_to_text(*r),
        Value::Text(s) => s.clone(),
    }
}

/// Borrowed text of a value; `None` for NULL.
pub(crate) fn text_of(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::Null => None,
        Value::Text(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(to_text(other))),
    }
}

/// Prints a real the way SQLite 3.4x+ does: `%!.17g`, reduced to fewer
/// digits only where SQLite's heuristic does (trailing `99...` or `000...`
/// that round-trip), so `0.1` is `0.1` but `2^63` is `9.2233720368547758e+18`.
pub(crate) fn real_to_text(r: f64) -> String {
    if r.is_nan() {
        return "NaN".into();
    }
    if r.is_infinite() {
        return if r > 0.0 { "Inf".into() } else { "-Inf".into() };
    }
    if r == 0.0 {
        return "0.0".into();
    }
    let sign = if r < 0.0 { "-" } else { "" };
    let (digits, dp) = sqlite_digits(r.abs());
    let exp = dp - 1;
    let n = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    if !(-4..17).contains(&exp) {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let rest = if rest.is_empty() { "0" } else { rest };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}.{rest}e{esign}{:02}", exp.abs());
    }
    if exp < 0 {
        let zeros = "0".repeat(usize::try_from(-exp - 1).unwrap_or(0));
        format!("{sign}0.{zeros}{digits}")
    } else if dp >= n {
        let zeros = "0".repeat(usize::try_from(dp - n).unwrap_or(0));
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (a, b) = digits.split_at(usize::try_from(dp).unwrap_or(0));
        format!("{sign}{a}.{b}")
    }
}

/// SQLite's `sqlite3FpDecode(.., 17, ..)` for a positive finite real: the
/// significant digits (no trailing zeros) and the decimal point position.
fn sqlite_digits(r: f64) -> (String, i32) {
    // 18 correctly rounded significant digits, as SQLite starts from.
    let s = format!("{r:.17e}");
    let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    let mut z: Vec<u8> = mant.bytes().filter(u8::is_ascii_digit).collect();
    let dig = |z: &[u8], k: usize| z.get(k).copied().unwrap_or(b'0');
    let mut dp = e + 1;
    let mut round = 17usize;
    let back = |v2: u64, jj: usize| -> bool {
        let p = e + 1 - i32::try_from(jj).unwrap_or(0);
        format!("{v2}e{p}").parse::<f64>().is_ok_and(|x| x == r)
    };
    let num = |z: &[u8], jj: usize| -> u64 {
        z.iter().take(jj).fold(0u64, |acc, d| acc.wrapping_mul(10).wrapping_add(u64::from(d - b'0')))
    };
    if dig(&z, 15) == b'9' && dig(&z, 14) == b'9' {
        let mut jj = 14;
        while jj > 0 && dig(&z, jj - 1) == b'9' {
            jj -= 1;
        }
        let v2 = if jj == 0 { 1 } else { num(&z, jj) + 1 };
        if back(v2, jj) {
            round = jj + 1;
        }
    } else if dp >= 18 || (dig(&z, 15) == b'0' && dig(&z, 14) == b'0' && dig(&z, 13) == b'0') {
        let mut jj = 13;
        while jj > 1 && dig(&z, jj - 1) == b'0' {
            jj -= 1;
        }
        if back(num(&z, jj), jj) {
            round = jj + 1;
        }
    }
    let up = dig(&z, round) >= b'5';
    z.truncate(round);
    if up {
        let mut j = round;
        loop {
            if j == 0 {
                z.insert(0, b'1');
                dp += 1;
                break;
            }
            j -= 1;
            if let Some(d) = z.get_mut(j) {
                if *d == b'9' {
                    *d = b'0';
                } else {
                    *d += 1;
                    break;
                }
            }
        }
    }
    while z.len() > 1 && z.last() == Some(&b'0') {
        z.pop();
    }
    (String::from_utf8(z).unwrap_or_default(), dp)
}

/// A binary arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// SQLite arithmetic: NULL in, NULL out; integers stay integers unless they
/// overflow (then real); division by zero is NULL; integer division
/// truncates.
pub(crate) fn arith(op: Arith, a: &Value, b: &Value) -> Value {
    if a.is_null() || b.is_null() {
        return Value::Null;
    }
    let (orig_a, orig_b) = (a, b);
    let (a, b) = (to_number(a), to_number(b));
    if let (Value::Integer(x), Value::Integer(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        let r = match op {
            Arith::Add => x.checked_add(y),
            Arith::Sub => x.checked_sub(y),
            Arith::Mul => x.checked_mul(y),
            Arith::Div if y == 0 => return Value::Null,
            Arith::Div => x.checked_div(y),
            Arith::Rem if y == 0 => return Value::Null,
            // i64::MIN % -1 is 0 mathematically; checked_rem says overflow.
            Arith::Rem => Some(x.checked_rem(y).unwrap_or(0)),
        };
        if let Some(r) = r {
            return Value::Integer(r);
        }
    }
    let (Some(x), Some(y)) = (to_f64(&a), to_f64(&b)) else {
        return Value::Null;
    };
    let r = match op {
        Arith::Add => x + y,
        Arith::Sub => x - y,
        Arith::Mul => x * y,
        Arith::Div if y == 0.0 => return Value::Null,
        Arith::Div => x / y,
        Arith::Rem => {
            // SQLite computes the remainder on the operands' integer values
            // (text by its integer prefix: '1e3' is 1 here).
            let (xi, yi) = (to_i64(orig_a).unwrap_or(0), to_i64(orig_b).unwrap_or(0));
            if yi == 0 {
                return Value::Null;
            }
            #[allow(clippy::cast_precision_loss)]
            let r = xi.checked_rem(yi).unwrap_or(0) as f64;
            r
        }
    };
    if r.is_nan() { Value::Null } else { Value::Real(r) }
}

/// Unary minus.
pub(crate) fn negate(v: &Value) -> Value {
    match to_number(v) {
        Value::Integer(i) => i.checked_neg().map_or(Value::Real(-(i as f64)), Value::Integer),
        Value::Real(r) => Value::Real(-r),
        other => other,
    }
}

/// The target of a CAST, by SQLite's type-name rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CastTo {
    Integer,
    Real,
    Text,
    Numeric,
    Blob,
}

impl CastTo {
    /// SQLite's affinity rules on a declared type name (datatype3 §3.1).
    pub(crate) fn from_type_name(name: &str) -> CastTo {
        let n = name.to_ascii_uppercase();
        if n.contains("INT") {
            CastTo::Integer
        } else if n.contains("CHAR") || n.contains("CLOB") || n.contains("TEXT") {
            CastTo::Text
        } else if n.contains("BLOB") || n.trim().is_empty() {
            CastTo::Blob
        } else if n.contains("REAL") || n.contains("FLOA") || n.contains("DOUB") {
            CastTo::Real
        } else {
            CastTo::Numeric
        }
    }

    /// The affinity the result carries.
    pub(crate) fn aff(self) -> Aff {
        match self {
            CastTo::Integer | CastTo::Real | CastTo::Numeric => Aff::Numeric,
            CastTo::Text => Aff::Text,
            CastTo::Blob => Aff::Blob,
        }
    }
}

/// `CAST(v AS to)`.
pub(crate) fn cast(v: &Value, to: CastTo) -> Value {
    if v.is_null() {
        return Value::Null;
    }
    match to {
        CastTo::Integer => to_i64(v).map_or(Value::Null, Value::Integer),
        CastTo::Real => to_f64(v).map_or(Value::Null, Value::Real),
        CastTo::Text | CastTo::Blob => Value::Text(to_text(v)),
        CastTo::Numeric => match v {
            Value::Text(s) => match parse_number(s) {
                Some(p) => numeric_normalize(p.value),
                None => Value::Integer(0),
            },
            other => other.clone(),
        },
    }
}

/// A real that is an exact integer in range becomes INTEGER (NUMERIC).
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
fn numeric_normalize(v: Value) -> Value {
    match v {
        Value::Real(r) if r == r.trunc() && (-9.223_372_036_854_775e18..9.223_372_036_854_775e18).contains(&r) => {
            Value::Integer(r as i64)
        }
        other => other,
    }
}

/// The error SQLite raises for `abs(-9223372036854775808)` and an integer
/// `sum()` that overflows.
pub(crate) fn overflow(what: &str) -> SqlError {
    SqlError::Type { message: format!("integer overflow in {what}"), pos: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_from_text() {
        assert_eq!(to_number(&"12abc".into()), Value::Integer(12));
        assert_eq!(to_number(&" 1e3x".into()), Value::Real(1000.0));
        assert_eq!(to_number(&"abc".into()), Value::Integer(0));
        assert_eq!(to_number(&"99999999999999999999".into()), Value::Real(1e20));
        assert!(parse_number(" 42 ").unwrap().whole);
        assert!(!parse_number("42x").unwrap().whole);
        assert_eq!(parse_number("."), None);
        assert_eq!(to_i64(&"12.7x".into()), Some(12));
    }

    #[test]
    fn arithmetic_like_sqlite() {
        let i = Value::Integer;
        assert_eq!(arith(Arith::Div, &i(7), &i(2)), i(3));
        assert_eq!(arith(Arith::Div, &i(-7), &i(2)), i(-3));
        assert_eq!(arith(Arith::Div, &i(7), &i(0)), Value::Null);
        assert_eq!(arith(Arith::Add, &i(i64::MAX), &i(1)), Value::Real(9.223_372_036_854_776e18));
        assert_eq!(arith(Arith::Rem, &Value::Real(5.5), &i(2)), Value::Real(1.0));
        assert_eq!(arith(Arith::Div, &i(i64::MIN), &i(-1)), Value::Real(9.223_372_036_854_776e18));
        assert_eq!(negate(&i(i64::MIN)), Value::Real(9.223_372_036_854_776e18));
    }

    #[test]
    fn affinity_comparisons() {
        let c = comparison_conv(Aff::Numeric, Aff::Blob);
        assert_eq!(compare(&Value::Integer(5), &"5".into(), c), Some(Ordering::Equal));
        let c = comparison_conv(Aff::Text, Aff::Blob);
        assert_eq!(compare(&"5".into(), &Value::Integer(5), c), Some(Ordering::Equal));
        let c = comparison_conv(Aff::Blob, Aff::Blob);
        assert_eq!(compare(&"5".into(), &Value::Integer(5), c), Some(Ordering::Greater));
        assert_eq!(compare(&Value::Null, &Value::Integer(5), c), None);
    }

    #[test]
    fn reals_as_text() {
        assert_eq!(real_to_text(1.0), "1.0");
        assert_eq!(real_to_text(0.1), "0.1");
        assert_eq!(real_to_text(-2.5), "-2.5");
        assert_eq!(real_to_text(1e20), "1.0e+20");
        assert_eq!(real_to_text(1.5e-7), "1.5e-07");
        assert_eq!(real_to_text(123_456.0), "123456.0");
        assert_eq!(real_to_text(0.001), "0.001");
        assert_eq!(real_to_text(9.223_372_036_854_776e18), "9.2233720368547758e+18");
        assert_eq!(real_to_text(63_050_394_783_186_944.0), "63050394783186944.0");
        assert_eq!(real_to_text(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(real_to_text(49.47), "49.47");
        assert_eq!(cast(&"3.0".into(), CastTo::Numeric), Value::Integer(3));
    }
}
