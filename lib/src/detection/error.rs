//! Errors of the SQL validator and engine.
//!
//! Every message says what failed, where (line:column when the parser gave
//! a position) and, when there is one, what to do instead.

use std::fmt;
use std::time::Duration;

/// A position in the SQL text (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

impl Pos {
    /// The position of a sqlparser span start, `None` when the parser did
    /// not record one (line 0).
    pub(crate) fn from_span(span: sqlparser::tokenizer::Span) -> Option<Pos> {
        let l = span.start;
        (l.line > 0).then_some(Pos { line: l.line, column: l.column })
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Formats ` at L:C` or nothing.
struct At(Option<Pos>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " at {p}"),
            None => Ok(()),
        }
    }
}

/// Formats ` (did you mean "x"?)` or nothing.
struct Hint<'a>(&'a Option<String>);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, " (did you mean \"{s}\"?)"),
            None => Ok(()),
        }
    }
}

/// Why a SQL text was rejected or a query stopped.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SqlError {
    /// The text is not valid SQL.
    #[error("syntax error{}: {message}", At(*pos))]
    Parse {
        /// The parser's message.
        message: String,
        /// Where, when known.
        pos: Option<Pos>,
    },
    /// The SQL is valid but uses something the engine does not allow or
    /// support.
    #[error("{construct} is not allowed{}: {hint}", At(*pos))]
    NotAllowed {
        /// The offending construct.
        construct: String,
        /// Where, when known.
        pos: Option<Pos>,
        /// What to do instead.
        hint: String,
    },
    /// A table that is not in the catalog.
    #[error(
        "unknown table \"{name}\"{}{} (tables: processes, process_events, alerts)",
        At(*pos),
        Hint(suggestion)
    )]
    UnknownTable {
        /// The name as written.
        name: String,
        /// Where, when known.
        pos: Option<Pos>,
        /// The closest known name.
        suggestion: Option<String>,
    },
    /// A column no table in scope has.
    #[error("unknown column \"{name}\"{}{}", At(*pos), Hint(suggestion))]
    UnknownColumn {
        /// The name as written.
        name: String,
        /// Where, when known.
        pos: Option<Pos>,
        /// The closest known name.
        suggestion: Option<String>,
    },
    /// A column name that more than one table in scope has.
    #[error("ambiguous column \"{name}\"{}: qualify it with a table name or alias", At(*pos))]
    AmbiguousColumn {
        /// The name as written.
        name: String,
        /// Where, when known.
        pos: Option<Pos>,
    },
    /// A function that is not on the allowlist.
    #[error("unknown or disallowed function \"{name}\"{}{}", At(*pos), Hint(suggestion))]
    UnknownFunction {
        /// The name as written.
        name: String,
        /// Where, when known.
        pos: Option<Pos>,
        /// The closest allowed name.
        suggestion: Option<String>,
    },
    /// A function called with the wrong number of arguments.
    #[error("function {name}() takes {expected} argument(s), got {got}{}", At(*pos))]
    ArgCount {
        /// The function.
        name: String,
        /// What it accepts, e.g. `1 or 2`.
        expected: String,
        /// What it got.
        got: usize,
        /// Where, when known.
        pos: Option<Pos>,
    },
    /// A value or construct of the wrong type (e.g. a non-integer LIMIT).
    #[error("type error{}: {message}", At(*pos))]
    Type {
        /// What is wrong.
        message: String,
        /// Where, when known.
        pos: Option<Pos>,
    },
    /// The expression or query nesting is deeper than the engine allows.
    #[error("query nested too deeply{} (limit {limit}): simplify the expression", At(*pos))]
    TooDeep {
        /// The limit.
        limit: usize,
        /// Where, when known.
        pos: Option<Pos>,
    },
    /// A parameter the query uses was not supplied.
    #[error("parameter {name} has no value: supply it (e.g. --param {hint}=...)")]
    MissingParam {
        /// `?3` or `:name`.
        name: String,
        /// The name to pass.
        hint: String,
    },
    /// A REGEXP pattern that does not compile or is too large.
    #[error("invalid REGEXP pattern {pattern:?}: {message}")]
    Regex {
        /// The pattern.
        pattern: String,
        /// Why.
        message: String,
    },
    /// The query ran longer than its timeout.
    #[error("query stopped after {elapsed:?}: timeout is {limit:?}; narrow the WHERE clause or raise the limit")]
    Timeout {
        /// How long it ran.
        elapsed: Duration,
        /// The limit.
        limit: Duration,
    },
    /// The query produced more rows than allowed and was stopped.
    #[error("query produced more than {limit} rows; add a LIMIT or narrow the WHERE clause")]
    TooManyRows {
        /// The limit.
        limit: u64,
    },
    /// The query needed to hold more rows in memory than allowed.
    #[error("query needs more than {limit} rows in memory (joins, grouping, sorting); narrow it or raise the limit")]
    MemoryLimit {
        /// The limit.
        limit: u64,
    },
    /// `evaluate_event` was given a row that is not a `process_events` row.
    #[error("event row has {got} columns, process_events has {expected}")]
    BadEventRow {
        /// Catalog width.
        expected: usize,
        /// Given width.
        got: usize,
    },
}

/// The closest candidate to `name` by edit distance, if any is close enough
/// to be a plausible typo.
pub(crate) fn suggest<'a, I>(name: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    let lname = name.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(&lname, &c.to_ascii_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    // A third of the name, at least 1, at most 3 edits: beyond that the
    // suggestion is noise.
    let max = (lname.chars().count() / 3).clamp(1, 3);
    (d <= max).then(|| c.to_owned())
}

/// Optimal-string-alignment distance over chars (a swap of two adjacent
/// characters, the commonest typo, counts as one edit).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().take(w).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1).min(d[i * w + j - 1] + 1).min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_and_messages() {
        assert_eq!(suggest("nmae", ["pid", "name", "ppid"]), Some("name".into()));
        assert_eq!(suggest("zzzzzz", ["pid", "name"]), None);
        let e = SqlError::UnknownColumn {
            name: "nmae".into(),
            pos: Some(Pos { line: 1, column: 34 }),
            suggestion: Some("name".into()),
        };
        assert_eq!(e.to_string(), "unknown column \"nmae\" at 1:34 (did you mean \"name\"?)");
    }
}
