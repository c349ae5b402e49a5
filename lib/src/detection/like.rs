//! LIKE and GLOB matching with SQLite's semantics, on patterns compiled
//! once (at planning when the pattern is a literal).
//!
//! A pattern is split at its `%`/`*` wildcards into segments; every other
//! element (a literal run, `_`/`?`, a GLOB set) consumes a fixed number of
//! characters. The first segment must match at the start, the last at the
//! end, and the middle ones are found leftmost in order: with fixed-width
//! segments the leftmost match also ends earliest, so this greedy search is
//! exact, runs in O(text × pattern) at worst, and no pattern can make it
//! exponential. Matching works on bytes: literals are compared byte-wise
//! (ASCII-case-folded for LIKE), which equals SQLite's per-character
//! comparison because a literal starts on a character boundary and UTF-8
//! lead bytes never equal continuation bytes.

/// SQLite's default pattern length limit (SQLITE_MAX_LIKE_PATTERN_LENGTH).
pub(crate) const MAX_PATTERN_BYTES: usize = 50_000;

/// A compiled LIKE or GLOB pattern.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pattern {
    /// Segments between wildcards (`segs.len()` is the wildcard count + 1).
    segs: Vec<Seg>,
    /// LIKE: ASCII letters match regardless of case (literals are stored
    /// lowercased).
    fold: bool,
    /// The pattern can match nothing (a LIKE escape at the very end, an
    /// unclosed GLOB `[`), as in SQLite.
    never: bool,
}

/// Elements between two wildcards.
#[derive(Debug, Clone, PartialEq, Default)]
struct Seg {
    items: Vec<Item>,
    /// Characters the segment consumes.
    chars: usize,
}

/// One fixed-width element.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    /// Literal bytes (whole characters; lowercased ASCII for LIKE).
    Lit(Box<[u8]>),
    /// Exactly one character (`_`, `?`).
    One,
    /// A GLOB set `[...]`: ranges, negated with `^`.
    Set { negated: bool, ranges: Box<[(char, char)]> },
}

impl Seg {
    fn push_char(&mut self, c: char, fold: bool) {
        let c = if fold { c.to_ascii_lowercase() } else { c };
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        match self.items.last_mut() {
            Some(Item::Lit(run)) => {
                let mut v = std::mem::take(run).into_vec();
                v.extend_from_slice(bytes);
                *run = v.into_boxed_slice();
            }
            _ => self.items.push(Item::Lit(bytes.into())),
        }
        self.chars += 1;
    }

    fn push(&mut self, item: Item) {
        self.items.push(item);
        self.chars += 1;
    }

    /// Where the segment ends when it starts at byte `at` of `t`.
    fn match_at(&self, t: &str, at: usize, fold: bool) -> Option<usize> {
        let b = t.as_bytes();
        let mut i = at;
        for item in &self.items {
            match item {
                Item::Lit(lit) => {
                    let chunk = b.get(i..i.checked_add(lit.len())?)?;
                    let same = if fold { chunk.eq_ignore_ascii_case(lit) } else { chunk == &**lit };
                    if !same {
                        return None;
                    }
                    i += lit.len();
                }
                Item::One => i += char_len(*b.get(i)?),
                Item::Set { negated, ranges } => {
                    let c = t.get(i..)?.chars().next()?;
                    if ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) == *negated {
                        return None;
                    }
                    i += c.len_utf8();
                }
            }
        }
        Some(i)
    }

    /// The leftmost match starting at or after `from` and ending by the
    /// end of `t`; returns where it ends.
    fn find(&self, t: &str, mut from: usize, fold: bool) -> Option<usize> {
        let b = t.as_bytes();
        // A leading literal byte narrows the candidates (it is ASCII or a
        // lead byte, so every hit is on a character boundary).
        let first = match self.items.first() {
            Some(Item::Lit(l)) => l.first().copied(),
            _ => None,
        };
        loop {
            if let Some(f) = first {
                let rest = b.get(from..)?;
                let off = if fold && f.is_ascii_alphabetic() {
                    memchr::memchr2(f, f.to_ascii_uppercase(), rest)?
                } else {
                    memchr::memchr(f, rest)?
                };
                from += off;
            }
            if let Some(end) = self.match_at(t, from, fold) {
                return Some(end);
            }
            from += char_len(*b.get(from)?);
        }
    }
}

/// Length of the UTF-8 character starting with byte `lead`.
fn char_len(lead: u8) -> usize {
    match lead {
        0..0xC0 => 1,
        0xC0..0xE0 => 2,
        0xE0..0xF0 => 3,
        _ => 4,
    }
}

/// The byte position `n` characters before `end` in `t`.
fn back_chars(t: &str, end: usize, n: usize) -> Option<usize> {
    let b = t.as_bytes();
    let mut i = end;
    for _ in 0..n {
        i = i.checked_sub(1)?;
        while b.get(i).is_some_and(|&x| (0x80..0xC0).contains(&x)) {
            i = i.checked_sub(1)?;
        }
    }
    Some(i)
}

impl Pattern {
    /// The longest literal run every match contains (lowercased ASCII for
    /// LIKE, see [`Pattern::folds_case`]); `None` when it has none.
    pub(crate) fn longest_literal(&self) -> Option<&[u8]> {
        self.segs
            .iter()
            .flat_map(|s| s.items.iter())
            .filter_map(|i| match i {
                Item::Lit(l) => Some(&**l),
                _ => None,
            })
            .max_by_key(|l| l.len())
    }

    /// LIKE (ASCII case folded) rather than GLOB.
    pub(crate) fn folds_case(&self) -> bool {
        self.fold
    }

    /// The pattern matches no text at all.
    pub(crate) fn matches_nothing(&self) -> bool {
        self.never
    }

    /// `LIKE pattern [ESCAPE esc]`: `%` any sequence, `_` one character,
    /// ASCII letters match regardless of case. `None` when the pattern is
    /// too long.
    pub(crate) fn like(pattern: &str, escape: Option<char>) -> Option<Pattern> {
        if pattern.len() > MAX_PATTERN_BYTES {
            return None;
        }
        let mut p = Pattern { segs: vec![Seg::default()], fold: true, never: false };
        let mut it = pattern.chars();
        while let Some(c) = it.next() {
            let seg = p.segs.last_mut()?;
            if Some(c) == escape {
                // An escape at the very end matches nothing, as in SQLite.
                match it.next() {
                    Some(n) => seg.push_char(n, true),
                    None => p.never = true,
                }
            } else if c == '%' {
                p.segs.push(Seg::default());
            } else if c == '_' {
                seg.push(Item::One);
            } else {
                seg.push_char(c, true);
            }
        }
        Some(p)
    }

    /// `GLOB pattern`: `*`, `?`, `[a-z]`, `[^...]`, case-sensitive. `None`
    /// when the pattern is too long.
    pub(crate) fn glob(pattern: &str) -> Option<Pattern> {
        if pattern.len() > MAX_PATTERN_BYTES {
            return None;
        }
        let chars: Vec<char> = pattern.chars().collect();
        let mut p = Pattern { segs: vec![Seg::default()], fold: false, never: false };
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            i += 1;
            let seg = p.segs.last_mut()?;
            match c {
                '*' => p.segs.push(Seg::default()),
                '?' => seg.push(Item::One),
                '[' => match parse_set(&chars, i) {
                    Some((set, next)) => {
                        seg.push(set);
                        i = next;
                    }
                    // An unclosed `[` matches nothing in SQLite.
                    None => {
                        p.never = true;
                        break;
                    }
                },
                c => seg.push_char(c, false),
            }
        }
        Some(p)
    }

    /// Whether `text` matches.
    pub(crate) fn is_match(&self, text: &str) -> bool {
        if self.never {
            return false;
        }
        let fold = self.fold;
        let (Some(first), Some(last)) = (self.segs.first(), self.segs.last()) else {
            return false;
        };
        if self.segs.len() == 1 {
            return first.match_at(text, 0, fold) == Some(text.len());
        }
        let Some(mut pos) = first.match_at(text, 0, fold) else {
            return false;
        };
        // The last segment is anchored at the end: its start is fixed.
        let Some(tail) = back_chars(text, text.len(), last.chars) else {
            return false;
        };
        if tail < pos || last.match_at(text, tail, fold) != Some(text.len()) {
            return false;
        }
        let Some(middle) = text.get(..tail) else {
            return false;
        };
        for seg in self.segs.iter().skip(1).take(self.segs.len() - 2) {
            if seg.items.is_empty() {
                continue;
            }
            match seg.find(middle, pos, fold) {
                Some(end) => pos = end,
                None => return false,
            }
        }
        true
    }
}

/// Parses a set starting after `[`; returns it and the index after `]`.
fn parse_set(chars: &[char], mut i: usize) -> Option<(Item, usize)> {
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
            return Some((Item::Set { negated, ranges: ranges.into() }, i + 1));
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

/// `text LIKE pattern [ESCAPE esc]` with a pattern compiled on the spot;
/// `None` when the pattern is too long.
pub(crate) fn like(text: &str, pattern: &str, escape: Option<char>) -> Option<bool> {
    Pattern::like(pattern, escape).map(|p| p.is_match(text))
}

/// `text GLOB pattern` with a pattern compiled on the spot; `None` when
/// the pattern is too long.
pub(crate) fn glob(text: &str, pattern: &str) -> Option<bool> {
    Pattern::glob(pattern).map(|p| p.is_match(text))
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
        assert_eq!(like("100", "10\\", Some('\\')), Some(false));
        assert_eq!(like("", "%", None), Some(true));
        assert_eq!(like("", "", None), Some(true));
        assert_eq!(like("x", "", None), Some(false));
        assert_eq!(like("abc", "%b%c", None), Some(true));
        assert_eq!(like("aaaaaaaaaaaaaaaaaaaaaaab", "%a%a%a%a%a%a%c", None), Some(false));
        assert_eq!(like("cat /etc/ssh/ssh_host_rsa_key", "%/etc/ssh/ssh_host_%key%", None), Some(true));
        assert_eq!(like("é-x", "_-X", None), Some(true));
        assert_eq!(like("aé", "%_", None), Some(true));
        assert_eq!(like("ab", "a%%b", None), Some(true));
        assert_eq!(like("aXb", "%x%", None), Some(true));
        assert_eq!(like("a", "a%a", None), Some(false));
        assert_eq!(like("aa", "a%a", None), Some(true));
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
        assert_eq!(glob("é", "[à-ê]"), Some(true));
        assert_eq!(glob("/proc/12/fd/3", "/proc/*/fd/*"), Some(true));
    }
}
