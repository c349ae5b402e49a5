//! LIKE and GLOB matching with SQLite's semantics.
//!
//! Both use the classic wildcard algorithm that remembers only the last
//! `%`/`*` to backtrack to: every other pattern element consumes exactly
//! one character, so this is exact and runs in O(text × pattern) at worst —
//! no pattern can make it exponential.

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq)]
enum Elem {
    /// Any sequence (`%`, `*`).
    Any,
    /// Exactly one character (`_`, `?`).
    One,
    /// A literal character (LIKE: compared ASCII case-insensitively).
    Lit(char),
    /// A GLOB set `[...]`: ranges, negated with `^`.
    Set { negated: bool, ranges: Vec<(char, char)> },
}

/// SQLite's default pattern length limit (SQLITE_MAX_LIKE_PATTERN_LENGTH).
pub(crate) const MAX_PATTERN_BYTES: usize = 50_000;

/// `text LIKE pattern [ESCAPE esc]`: `%` any sequence, `_` one character,
/// ASCII letters match regardless of case. `None` when the pattern is too
/// long.
pub(crate) fn like(text: &str, pattern: &str, escape: Option<char>) -> Option<bool> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return None;
    }
    let mut elems = Vec::new();
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        if Some(c) == escape {
            // An escape at the very end matches nothing, as in SQLite.
            match it.next() {
                Some(n) => elems.push(Elem::Lit(n)),
                None => return Some(false),
            }
        } else if c == '%' {
            elems.push(Elem::Any);
        } else if c == '_' {
            elems.push(Elem::One);
        } else {
            elems.push(Elem::Lit(c));
        }
    }
    Some(matches(&elems, text, true))
}

/// `text GLOB pattern`: `*`, `?`, `[a-z]`, `[^...]`, case-sensitive.
pub(crate) fn glob(text: &str, pattern: &str) -> Option<bool> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return None;
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut elems = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        match c {
            '*' => elems.push(Elem::Any),
            '?' => elems.push(Elem::One),
            '[' => match parse_set(&chars, i) {
                Some((set, next)) => {
                    elems.push(set);
                    i = next;
                }
                // An unclosed `[` matches nothing in SQLite.
                None => return Some(false),
            },
            c => elems.push(Elem::Lit(c)),
        }
    }
    Some(matches(&elems, text, false))
}

/// Parses a set starting after `[`; returns it and the index after `]`.
fn parse_set(chars: &[char], mut i: usize) -> Option<(Elem, usize)> {
    let mut negated = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut ranges = Vec::new();
    // A `]` first in the set is a literal.
    if chars.get(i) == Some(&']') {
        ranges.push((']', ']'));
        i += 1;
    }
    loop {
        let c = *chars.get(i)?;
        if c == ']' {
            return Some((Elem::Set { negated, ranges }, i + 1));
        }
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&n| n != ']') {
            let hi = *chars.get(i + 2)?;
            ranges.push((c, hi));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
}

fn elem_matches(e: &Elem, c: char, fold: bool) -> bool {
    match e {
        Elem::Any | Elem::One => true,
        Elem::Lit(l) => {
            if fold {
                l.eq_ignore_ascii_case(&c)
            } else {
                *l == c
            }
        }
        Elem::Set { negated, ranges } => ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated,
    }
}

fn matches(elems: &[Elem], text: &str, fold: bool) -> bool {
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0usize, 0usize);
    // Where to resume after the last `Any`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    loop {
        match elems.get(p) {
            Some(Elem::Any) => {
                p += 1;
                star = Some((p, t));
                continue;
            }
            Some(e) => {
                if let Some(&c) = text.get(t)
                    && elem_matches(e, c, fold)
                {
                    p += 1;
                    t += 1;
                    continue;
                }
            }
            None if t == text.len() => return true,
            None => {}
        }
        match star {
            Some((sp, st)) if st < text.len() => {
                star = Some((sp, st + 1));
                p = sp;
                t = st + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_semantics() {
        assert_eq!(like("Hello", "h%", None), Some(true));
        assert_eq!(like("Hello", "h_llo", None), Some(true));
        assert_eq!(like("Hello", "h_lo", None), Some(false));
        assert_eq!(like("ÄB", "äb", None), Some(false)); // ASCII-only folding
        assert_eq!(like("10%", "10\\%", Some('\\')), Some(true));
        assert_eq!(like("100", "10\\%", Some('\\')), Some(false));
        assert_eq!(like("", "%", None), Some(true));
        assert_eq!(like("abc", "%b%c", None), Some(true));
        assert_eq!(like("aaaaaaaaaaaaaaaaaaaaaaab", "%a%a%a%a%a%a%c", None), Some(false));
    }

    #[test]
    fn glob_semantics() {
        assert_eq!(glob("/usr/bin/sh", "/usr/*/sh"), Some(true));
        assert_eq!(glob("ABC", "abc"), Some(false));
        assert_eq!(glob("b", "[a-c]"), Some(true));
        assert_eq!(glob("d", "[^a-c]"), Some(true));
        assert_eq!(glob("]", "[]]"), Some(true));
        assert_eq!(glob("-", "[a-]"), Some(true));
        assert_eq!(glob("x", "[x"), Some(false));
        assert_eq!(glob("ab", "a?"), Some(true));
    }
}
