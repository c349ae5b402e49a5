//! The function allowlist: scalar functions and aggregates, with SQLite's
//! semantics. Anything not named here is rejected by the validator.

use std::borrow::Cow;
use std::cmp::Ordering;

use super::Value;
use super::error::SqlError;
use super::ops::{self, text_of, to_text};

/// An allowlisted scalar function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Lower,
    Upper,
    Length,
    Substr,
    Instr,
    Replace,
    Trim,
    Ltrim,
    Rtrim,
    Abs,
    Coalesce,
    Ifnull,
    Nullif,
    Basename,
    Dirname,
    JsonExtract,
    NowMs,
    Typeof,
    /// `min(a, b, ...)`: the scalar form (two or more arguments).
    Min,
    /// `max(a, b, ...)`: the scalar form.
    Max,
}

/// An allowlisted aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggFunc {
    Count,
    CountStar,
    Sum,
    Total,
    Avg,
    Min,
    Max,
    GroupConcat,
}

/// What a function name resolves to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resolved {
    Scalar(Func),
    Agg(AggFunc),
}

/// Every callable name (for "did you mean").
pub(crate) const NAMES: &[&str] = &[
    "lower",
    "upper",
    "length",
    "substr",
    "substring",
    "instr",
    "replace",
    "trim",
    "ltrim",
    "rtrim",
    "abs",
    "coalesce",
    "ifnull",
    "nullif",
    "basename",
    "dirname",
    "json_extract",
    "now_ms",
    "typeof",
    "min",
    "max",
    "count",
    "sum",
    "total",
    "avg",
    "group_concat",
];

/// Resolves a call by name and argument count; `Err((expected, _))` on a
/// bad count, `Ok(None)` for an unknown name.
pub(crate) fn resolve(name: &str, argc: usize, star: bool) -> Result<Option<Resolved>, &'static str> {
    use Resolved::{Agg, Scalar};
    let n = name.to_ascii_lowercase();
    let (r, ok, expected) = match n.as_str() {
        "count" if star => (Agg(AggFunc::CountStar), argc == 0, "*"),
        "count" => (Agg(AggFunc::Count), argc == 1, "1 or *"),
        "sum" => (Agg(AggFunc::Sum), argc == 1, "1"),
        "total" => (Agg(AggFunc::Total), argc == 1, "1"),
        "avg" => (Agg(AggFunc::Avg), argc == 1, "1"),
        "group_concat" => (Agg(AggFunc::GroupConcat), (1..=2).contains(&argc), "1 or 2"),
        "min" if argc == 1 => (Agg(AggFunc::Min), true, "1 or more"),
        "max" if argc == 1 => (Agg(AggFunc::Max), true, "1 or more"),
        "min" => (Scalar(Func::Min), argc >= 2, "1 or more"),
        "max" => (Scalar(Func::Max), argc >= 2, "1 or more"),
        "lower" => (Scalar(Func::Lower), argc == 1, "1"),
        "upper" => (Scalar(Func::Upper), argc == 1, "1"),
        "length" => (Scalar(Func::Length), argc == 1, "1"),
        "substr" | "substring" => (Scalar(Func::Substr), (2..=3).contains(&argc), "2 or 3"),
        "instr" => (Scalar(Func::Instr), argc == 2, "2"),
        "replace" => (Scalar(Func::Replace), argc == 3, "3"),
        "trim" => (Scalar(Func::Trim), (1..=2).contains(&argc), "1 or 2"),
        "ltrim" => (Scalar(Func::Ltrim), (1..=2).contains(&argc), "1 or 2"),
        "rtrim" => (Scalar(Func::Rtrim), (1..=2).contains(&argc), "1 or 2"),
        "abs" => (Scalar(Func::Abs), argc == 1, "1"),
        "coalesce" => (Scalar(Func::Coalesce), argc >= 2, "2 or more"),
        "ifnull" => (Scalar(Func::Ifnull), argc == 2, "2"),
        "nullif" => (Scalar(Func::Nullif), argc == 2, "2"),
        "basename" => (Scalar(Func::Basename), argc == 1, "1"),
        "dirname" => (Scalar(Func::Dirname), argc == 1, "1"),
        "json_extract" => (Scalar(Func::JsonExtract), argc == 2, "2"),
        "now_ms" => (Scalar(Func::NowMs), argc == 0, "0"),
        "typeof" => (Scalar(Func::Typeof), argc == 1, "1"),
        _ => return Ok(None),
    };
    if ok { Ok(Some(r)) } else { Err(expected) }
}

/// Evaluates a scalar function on evaluated arguments (`coalesce`, `ifnull`
/// and friends are short-circuited, and `now_ms` answered, by the
/// evaluator before they get here).
pub(crate) fn call(f: Func, args: &[Cow<'_, Value>]) -> Result<Value, SqlError> {
    let arg = |i: usize| args.get(i).map_or(&Value::Null, |v| &**v);
    let text = |i: usize| text_of(arg(i));
    Ok(match f {
        Func::Lower => text(0).map_or(Value::Null, |s| Value::Text(s.to_ascii_lowercase())),
        Func::Upper => text(0).map_or(Value::Null, |s| Value::Text(s.to_ascii_uppercase())),
        Func::Length => match arg(0) {
            Value::Null => Value::Null,
            v => Value::Integer(count(to_text(v).chars().count())),
        },
        Func::Substr => substr(arg(0), arg(1), args.get(2).map(|v| &**v)),
        Func::Instr => match (text(0), text(1)) {
            (Some(h), Some(n)) => {
                Value::Integer(h.find(n.as_ref()).map_or(0, |b| count(h.get(..b).unwrap_or("").chars().count()) + 1))
            }
            _ => Value::Null,
        },
        Func::Replace => match (text(0), text(1), text(2)) {
            (Some(s), Some(from), Some(to)) if !from.is_empty() => Value::Text(s.replace(from.as_ref(), to.as_ref())),
            (Some(s), Some(_), Some(_)) => Value::Text(s.into_owned()),
            _ => Value::Null,
        },
        Func::Trim | Func::Ltrim | Func::Rtrim => {
            let Some(s) = text(0) else {
                return Ok(Value::Null);
            };
            let set: Vec<char> = match args.get(1) {
                None => vec![' '],
                Some(v) => match text_of(v) {
                    Some(t) => t.chars().collect(),
                    None => return Ok(Value::Null),
                },
            };
            let is = |c: char| set.contains(&c);
            let out = match f {
                Func::Ltrim => s.trim_start_matches(is),
                Func::Rtrim => s.trim_end_matches(is),
                _ => s.trim_matches(is),
            };
            Value::Text(out.to_owned())
        }
        Func::Abs => match arg(0) {
            Value::Null => Value::Null,
            Value::Integer(i) => Value::Integer(i.checked_abs().ok_or_else(|| ops::overflow("abs()"))?),
            v => Value::Real(ops::to_f64(v).unwrap_or(0.0).abs()),
        },
        Func::Coalesce | Func::Ifnull => args.iter().find(|v| !v.is_null()).map_or(Value::Null, |v| (**v).clone()),
        Func::Nullif => {
            if !arg(0).is_null() && !arg(1).is_null() && arg(0).sort_cmp(arg(1)) == Ordering::Equal {
                Value::Null
            } else {
                arg(0).clone()
            }
        }
        Func::Basename => text(0).map_or(Value::Null, |s| Value::Text(basename(&s).to_owned())),
        Func::Dirname => text(0).map_or(Value::Null, |s| Value::Text(dirname(&s).to_owned())),
        Func::JsonExtract => match (text(0), text(1)) {
            (Some(j), Some(p)) => json_extract(&j, &p)?,
            _ => Value::Null,
        },
        Func::NowMs => {
            return Err(SqlError::Type { message: "internal error: now_ms() reached call()".into(), pos: None });
        }
        Func::Typeof => Value::Text(
            match arg(0) {
                Value::Null => "null",
                Value::Integer(_) => "integer",
                Value::Real(_) => "real",
                Value::Text(_) => "text",
            }
            .into(),
        ),
        Func::Min | Func::Max => {
            if args.iter().any(|v| v.is_null()) {
                return Ok(Value::Null);
            }
            // SQLite's min() keeps the later of equal values, max() the earlier.
            let mut best = arg(0);
            for v in args.iter().skip(1).map(|v| &**v) {
                let o = v.sort_cmp(best);
                if (f == Func::Min && o != Ordering::Greater) || (f == Func::Max && o == Ordering::Greater) {
                    best = v;
                }
            }
            best.clone()
        }
    })
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `substr(X, Y[, Z])` with SQLite's rules for zero and negative positions
/// (character-based, 1-based).
fn substr(x: &Value, y: &Value, z: Option<&Value>) -> Value {
    if x.is_null() || y.is_null() || z.is_some_and(Value::is_null) {
        return Value::Null;
    }
    let s = to_text(x);
    let chars: Vec<char> = s.chars().collect();
    let len = count(chars.len());
    let mut p1 = ops::to_i64(y).unwrap_or(0);
    let mut p2 = z.and_then(ops::to_i64).unwrap_or(i64::MAX);
    if p1 < 0 {
        p1 = p1.saturating_add(len);
        if p1 < 0 {
            p2 = if p2 < 0 { 0 } else { p2.saturating_add(p1) };
            p1 = 0;
        }
    } else if p1 > 0 {
        p1 -= 1;
    } else if p2 > 0 {
        p2 -= 1;
    }
    if p2 < 0 {
        if p2 < -p1 {
            p2 = p1;
        } else {
            p2 = -p2;
        }
        p1 -= p2;
    }
    let start = usize::try_from(p1.max(0)).unwrap_or(usize::MAX);
    let take = usize::try_from(p2.max(0)).unwrap_or(usize::MAX);
    Value::Text(chars.iter().skip(start).take(take).collect())
}

/// The last component of a path (`/` or `\` separated), ignoring trailing
/// separators: `basename('/usr/bin/sh') = 'sh'`.
pub fn basename(p: &str) -> &str {
    let is_sep = |c: char| c == '/' || c == '\\';
    let t = p.trim_end_matches(is_sep);
    if t.is_empty() {
        return if p.is_empty() { "" } else { p.get(..1).unwrap_or("") };
    }
    t.rfind(is_sep).map_or(t, |i| t.get(i + 1..).unwrap_or(""))
}

/// Everything before the last component: `dirname('/usr/bin/sh') =
/// '/usr/bin'`, `dirname('/sh') = '/'`, `dirname('sh') = '.'`.
pub fn dirname(p: &str) -> &str {
    let is_sep = |c: char| c == '/' || c == '\\';
    let t = p.trim_end_matches(is_sep);
    if t.is_empty() {
        return if p.is_empty() { "." } else { p.get(..1).unwrap_or(".") };
    }
    match t.rfind(is_sep) {
        None => ".",
        Some(i) => {
            let d = t.get(..i).unwrap_or("").trim_end_matches(is_sep);
            if d.is_empty() { t.get(..1).unwrap_or("/") } else { d }
        }
    }
}

/// `json_extract(json, path)` for paths made of `.key`, `."key"`, `[N]` and
/// `[#-N]` steps.
fn json_extract(json: &str, path: &str) -> Result<Value, SqlError> {
    let bad_path = || SqlError::Type { message: format!("bad JSON path: {path:?}"), pos: None };
    let doc: serde_json::Value = serde_json::from_str(json)
        .map_err(|_| SqlError::Type { message: "malformed JSON in json_extract()".into(), pos: None })?;
    let rest = path.strip_prefix('$').ok_or_else(bad_path)?;
    let mut cur = &doc;
    let mut rest = rest;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(bad_path)?;
            let idx = r.get(..end).ok_or_else(bad_path)?.trim();
            rest = r.get(end + 1..).unwrap_or("");
            let Some(arr) = cur.as_array() else {
                return Ok(Value::Null);
            };
            let i = if let Some(back) = idx.strip_prefix("#-") {
                let b: usize = back.parse().map_err(|_| bad_path())?;
                match arr.len().checked_sub(b) {
                    Some(i) => i,
                    None => return Ok(Value::Null),
                }
            } else {
                idx.parse().map_err(|_| bad_path())?
            };
            match arr.get(i) {
                Some(v) => cur = v,
                None => return Ok(Value::Null),
            }
        } else if let Some(r) = rest.strip_prefix('.') {
            let (key, after) = if let Some(q) = r.strip_prefix('"') {
                let end = q.find('"').ok_or_else(bad_path)?;
                (q.get(..end).unwrap_or(""), q.get(end + 1..).unwrap_or(""))
            } else {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                (r.get(..end).unwrap_or(""), r.get(end..).unwrap_or(""))
            };
            if key.is_empty() {
                return Err(bad_path());
            }
            rest = after;
            match cur.as_object().and_then(|o| o.get(key)) {
                Some(v) => cur = v,
                None => return Ok(Value::Null),
            }
        } else {
            return Err(bad_path());
        }
    }
    Ok(match cur {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Integer(i64::from(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => n.as_f64().map_or(Value::Null, Value::Real),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => Value::Text(other.to_string()),
    })
}

/// The running state of one aggregate call over one group.
#[derive(Debug, Clone)]
pub(crate) enum Acc {
    Count(i64),
    /// sum/total/avg: integer sum until a non-integer or an overflow, then
    /// Kahan-Babuska-Neumaier like SQLite.
    Sum {
        cnt: i64,
        isum: i64,
        approx: bool,
        ovrfl: bool,
        rsum: f64,
        rerr: f64,
    },
    Best(Option<Value>),
    Concat(Option<String>),
}

impl Acc {
    /// The initial state for `f`.
    pub(crate) fn new(f: AggFunc) -> Acc {
        match f {
            AggFunc::Count | AggFunc::CountStar => Acc::Count(0),
            AggFunc::Sum | AggFunc::Total | AggFunc::Avg => {
                Acc::Sum { cnt: 0, isum: 0, approx: false, ovrfl: false, rsum: 0.0, rerr: 0.0 }
            }
            AggFunc::Min | AggFunc::Max => Acc::Best(None),
            AggFunc::GroupConcat => Acc::Concat(None),
        }
    }

    /// Feeds one row's arguments.
    pub(crate) fn step(&mut self, f: AggFunc, args: &[Value]) {
        let a = args.first().unwrap_or(&Value::Null);
        match self {
            Acc::Count(n) => {
                if f == AggFunc::CountStar || !a.is_null() {
                    *n += 1;
                }
            }
            Acc::Sum { cnt, isum, approx, ovrfl, rsum, rerr } => {
                let v = match a {
                    Value::Null => return,
                    Value::Text(s) => match ops::parse_number(s) {
                        Some(p) if p.whole => p.value,
                        // Not a number: SQLite adds its prefix as a real.
                        _ => Value::Real(ops::to_f64(a).unwrap_or(0.0)),
                    },
                    other => other.clone(),
                };
                *cnt += 1;
                match (v, *approx) {
                    (Value::Integer(i), false) => match isum.checked_add(i) {
                        Some(s) => *isum = s,
                        None => {
                            *ovrfl = true;
                            kbn_init(rsum, rerr, *isum);
                            *approx = true;
                            kbn_step_i64(rsum, rerr, i);
                        }
                    },
                    (Value::Integer(i), true) => kbn_step_i64(rsum, rerr, i),
                    (v, was_approx) => {
                        if !was_approx {
                            kbn_init(rsum, rerr, *isum);
                            *approx = true;
                        }
                        *ovrfl = false;
                        kbn_step(rsum, rerr, ops::to_f64(&v).unwrap_or(0.0));
                    }
                }
            }
            Acc::Best(best) => {
                if a.is_null() {
                    return;
                }
                let want = if f == AggFunc::Min { Ordering::Less } else { Ordering::Greater };
                if best.as_ref().is_none_or(|b| a.sort_cmp(b) == want) {
                    *best = Some(a.clone());
                }
            }
            Acc::Concat(s) => {
                if a.is_null() {
                    return;
                }
                match s {
                    None => *s = Some(to_text(a)),
                    Some(buf) => {
                        match args.get(1) {
                            None => buf.push(','),
                            Some(sep) => buf.push_str(&to_text(sep)),
                        }
                        buf.push_str(&to_text(a));
                    }
                }
            }
        }
    }

    /// The result.
    #[allow(clippy::cast_precision_loss)] // SQLite converts the same way.
    pub(crate) fn finish(&self, f: AggFunc) -> Result<Value, SqlError> {
        Ok(match self {
            Acc::Count(n) => Value::Integer(*n),
            Acc::Sum { cnt, isum, approx, ovrfl, rsum, rerr } => {
                let real = || if rerr.is_finite() { rsum + rerr } else { *rsum };
                match f {
                    AggFunc::Total => Value::Real(if *approx { real() } else { *isum as f64 }),
                    _ if *cnt == 0 => Value::Null,
                    AggFunc::Avg => {
                        let s = if *approx { real() } else { *isum as f64 };
                        Value::Real(s / *cnt as f64)
                    }
                    _ if *approx && *ovrfl => return Err(ops::overflow("sum()")),
                    _ if *approx => Value::Real(real()),
                    _ => Value::Integer(*isum),
                }
            }
            Acc::Best(b) => b.clone().unwrap_or(Value::Null),
            Acc::Concat(s) => s.clone().map_or(Value::Null, Value::Text),
        })
    }
}

const BIG: i64 = 4_503_599_627_370_496;

#[allow(clippy::cast_precision_loss)]
fn kbn_init(rsum: &mut f64, rerr: &mut f64, mut i: i64) {
    *rsum = 0.0;
    if !(-BIG + 1..BIG).contains(&i) {
        let sm = i % 16384;
        *rsum = (i - sm) as f64;
        i = sm;
    }
    *rerr = i as f64;
}

#[allow(clippy::cast_precision_loss)]
fn kbn_step_i64(rsum: &mut f64, rerr: &mut f64, i: i64) {
    if !(-BIG + 1..BIG).contains(&i) {
        let sm = i % 16384;
        kbn_step(rsum, rerr, (i - sm) as f64);
        kbn_step(rsum, rerr, sm as f64);
    } else {
        kbn_step(rsum, rerr, i as f64);
    }
}

fn kbn_step(rsum: &mut f64, rerr: &mut f64, r: f64) {
    let s = *rsum;
    let t = s + r;
    if s.abs() > r.abs() {
        *rerr += (s - t) + r;
    } else {
        *rerr += (r - t) + s;
    }
    *rsum = t;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn string_functions() {
        let i = Value::Integer;
        let call = |f: Func, args: &[Value]| -> Result<Value, SqlError> {
            let args: Vec<Cow<'_, Value>> = args.iter().map(Cow::Borrowed).collect();
            super::call(f, &args)
        };
        assert_eq!(call(Func::Substr, &[t("hello"), i(2), i(3)]).unwrap(), t("ell"));
        assert_eq!(call(Func::Substr, &[t("hello"), i(-3)]).unwrap(), t("llo"));
        assert_eq!(call(Func::Substr, &[t("hello"), i(0), i(2)]).unwrap(), t("h"));
        assert_eq!(call(Func::Substr, &[t("hello"), i(3), i(-2)]).unwrap(), t("he"));
        assert_eq!(call(Func::Instr, &[t("héllo"), t("l")]).unwrap(), i(3));
        assert_eq!(call(Func::Trim, &[t("xxhixx"), t("x")]).unwrap(), t("hi"));
        assert_eq!(call(Func::Length, &[Value::Real(1.5)]).unwrap(), i(3));
        assert_eq!(call(Func::Replace, &[t("aaa"), t(""), t("b")]).unwrap(), t("aaa"));
        assert!(call(Func::Abs, &[i(i64::MIN)]).is_err());
    }

    #[test]
    fn paths_and_json() {
        assert_eq!(basename("/usr/bin/sh"), "sh");
        assert_eq!(basename("/usr/bin/"), "bin");
        assert_eq!(basename("sh"), "sh");
        assert_eq!(dirname("/usr/bin/sh"), "/usr/bin");
        assert_eq!(dirname("/sh"), "/");
        assert_eq!(dirname("sh"), ".");
        assert_eq!(dirname("C:\\Windows\\cmd.exe"), "C:\\Windows");
        let argv = r#"["sh","-c","id",{"k":[1,2.5,true]}]"#;
        assert_eq!(json_extract(argv, "$[1]").unwrap(), t("-c"));
        assert_eq!(json_extract(argv, "$[#-1].k[1]").unwrap(), Value::Real(2.5));
        assert_eq!(json_extract(argv, "$[3].k[2]").unwrap(), Value::Integer(1));
        assert_eq!(json_extract(argv, "$[9]").unwrap(), Value::Null);
        assert!(json_extract("nope", "$[0]").is_err());
    }

    #[test]
    fn aggregates() {
        let mut a = Acc::new(AggFunc::Sum);
        for v in [Value::Integer(i64::MAX), Value::Integer(1)] {
            a.step(AggFunc::Sum, &[v]);
        }
        assert!(a.finish(AggFunc::Sum).is_err());
        let mut a = Acc::new(AggFunc::Avg);
        for v in [Value::Integer(1), Value::Null, Value::Integer(2)] {
            a.step(AggFunc::Avg, &[v]);
        }
        assert_eq!(a.finish(AggFunc::Avg).unwrap(), Value::Real(1.5));
        let mut a = Acc::new(AggFunc::GroupConcat);
        for v in [t("a"), Value::Null, Value::Integer(2)] {
            a.step(AggFunc::GroupConcat, &[v, t("|")]);
        }
        assert_eq!(a.finish(AggFunc::GroupConcat).unwrap(), t("a|2"));
    }
}
