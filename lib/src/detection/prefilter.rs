//! Which streaming rules can match an event, decided for all rules at once.
//!
//! Evaluating every streaming rule on every event costs the agent most of
//! its per-event time, and nearly all of it is spent finding that a rule
//! does not apply: `name = 'pkexec'`, `name IN (...)`,
//! `command_line LIKE '%/etc/shadow%'`. For each rule, [`RuleIndex`] reads
//! one *need* off the conditions on the event (`Source::filter` of a
//! streaming plan): a set of *atoms*, at least one of which holds for every
//! event the rule matches. An atom is a text column equal to a literal
//! (`=`, `IN`, also under `lower()`), or containing one (the longest
//! literal run of a `LIKE` or `GLOB` pattern). All atoms of all rules are
//! checked together per event — one hash lookup per column for equalities,
//! one Aho-Corasick pass per column for the literals — and only the rules
//! with a hit, plus those without a need, are evaluated.
//!
//! A need is a *necessary* condition, so skipping a rule whose atoms all
//! miss never loses a match (`tests/prefilter.rs` checks this against full
//! evaluation on random events and queries). Terms that say nothing usable
//! (`REGEXP`, `NOT`, comparisons of numbers, other sources) give no need;
//! a rule without one is always evaluated. Non-text values of a column
//! (which SQLite would convert) count as hits for that column's atoms.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::functions::Func;
use super::ops::Conv;
use super::plan::{CmpOp, Expr, SourceKind};
use super::{Query, Table, Value};

/// The streaming rules' needs, indexed for one pass per event (see the
/// module docs). Built from a rule set's queries, in its order.
#[derive(Debug, Default)]
pub struct RuleIndex {
    rules: usize,
    /// Rules evaluated whatever the event (no need could be read).
    always: Vec<u32>,
    /// Equality atoms, per (column, ASCII case folded).
    eq: Vec<EqIndex>,
    /// Literal atoms, per (column, ASCII case folded).
    contains: Vec<ContainsIndex>,
}

#[derive(Debug)]
struct EqIndex {
    col: usize,
    fold: bool,
    /// Value (lowercased when folded) -> rules.
    values: HashMap<Box<[u8]>, Vec<u32>>,
    /// Every rule with an atom here (hits when the value is not text).
    any: Vec<u32>,
}

#[derive(Debug)]
struct ContainsIndex {
    col: usize,
    automaton: AhoCorasick,
    /// Rules per pattern id.
    rules: Vec<Vec<u32>>,
    any: Vec<u32>,
}

/// The literal atoms of one (column, folding) while the index is built:
/// the literals, the rules of each, and every rule with one.
type Literals = (Vec<Box<[u8]>>, Vec<Vec<u32>>, Vec<u32>);

/// One condition on the event row that a need is made of.
#[derive(Debug, Clone, PartialEq)]
enum Atom {
    /// Column `col` is text equal to `value` (ASCII case folded if `fold`,
    /// the value then lowercased).
    Eq { col: usize, fold: bool, value: Box<[u8]> },
    /// Column `col` is text containing `lit` (ASCII case folded if `fold`).
    Contains { col: usize, fold: bool, lit: Box<[u8]> },
}

impl RuleIndex {
    /// Indexes `queries` (`None` for a rule that is not evaluated on events
    /// at all: it is never a candidate).
    pub fn new<'q>(queries: impl IntoIterator<Item = Option<&'q Query>>) -> RuleIndex {
        let mut index = RuleIndex::default();
        let mut eq: HashMap<(usize, bool), EqIndex> = HashMap::new();
        let mut contains: HashMap<(usize, bool), Literals> = HashMap::new();
        for (i, q) in queries.into_iter().enumerate() {
            index.rules = i + 1;
            let Some(q) = q else { continue };
            let Ok(r) = u32::try_from(i) else { continue };
            let Some(atoms) = need_of(q) else {
                index.always.push(r);
                continue;
            };
            for atom in atoms {
                match atom {
                    Atom::Eq { col, fold, value } => {
                        let e = eq.entry((col, fold)).or_insert_with(|| EqIndex {
                            col,
                            fold,
                            values: HashMap::new(),
                            any: Vec::new(),
                        });
                        push_once(e.values.entry(value).or_default(), r);
                        push_once(&mut e.any, r);
                    }
                    Atom::Contains { col, fold, lit } => {
                        let (lits, rules, any) = contains.entry((col, fold)).or_default();
                        let k = lits.iter().position(|l| *l == lit).unwrap_or_else(|| {
                            lits.push(lit);
                            rules.push(Vec::new());
                            lits.len() - 1
                        });
                        if let Some(v) = rules.get_mut(k) {
                            push_once(v, r);
                        }
                        push_once(any, r);
                    }
                }
            }
        }
        index.eq = eq.into_values().collect();
        for ((col, fold), (lits, rules, any)) in contains {
            let built =
                AhoCorasickBuilder::new().ascii_case_insensitive(fold).match_kind(MatchKind::Standard).build(&lits);
            match built {
                Ok(automaton) => index.contains.push(ContainsIndex { col, automaton, rules, any }),
                // Cannot happen for these sizes; if it does, those rules
                // are simply always evaluated.
                Err(_) => index.always.extend(any),
            }
        }
        index.always.sort_unstable();
        index.always.dedup();
        index
    }

    /// Marks in `out` (resized to the rule count) the rules that may match
    /// the `process_events` row `row`.
    pub fn candidates(&self, row: &[Value], out: &mut Vec<bool>) {
        out.clear();
        out.resize(self.rules, false);
        let mut mark = |rules: &[u32]| {
            for &r in rules {
                if let Some(m) = out.get_mut(r as usize) {
                    *m = true;
                }
            }
        };
        mark(&self.always);
        for e in &self.eq {
            match row.get(e.col) {
                Some(Value::Text(t)) => {
                    let hit = if e.fold {
                        e.values.get(t.to_ascii_lowercase().as_bytes())
                    } else {
                        e.values.get(t.as_bytes())
                    };
                    if let Some(rules) = hit {
                        mark(rules);
                    }
                }
                // NULL is never equal to anything.
                Some(Value::Null) => {}
                _ => mark(&e.any),
            }
        }
        for c in &self.contains {
            match row.get(c.col) {
                Some(Value::Text(t)) => {
                    for m in c.automaton.find_overlapping_iter(t.as_bytes()) {
                        if let Some(rules) = c.rules.get(m.pattern().as_usize()) {
                            mark(rules);
                        }
                    }
                }
                Some(Value::Null) => {}
                _ => mark(&c.any),
            }
        }
    }

    /// Rules that are evaluated on every event (no need was found).
    pub fn unfiltered(&self) -> usize {
        self.always.len()
    }
}

fn push_once(v: &mut Vec<u32>, r: u32) {
    if v.last() != Some(&r) {
        v.push(r);
    }
}

/// The need of a streaming query: the best one among its event conditions
/// (each must hold, so any one's need is necessary). `None`: no need (not
/// streaming, an aggregate or LIMIT that answers whatever the event, or no
/// usable condition).
fn need_of(q: &Query) -> Option<Vec<Atom>> {
    let plan = q.plan();
    let first = plan.root.sources.first()?;
    if !plan.prefilter || first.kind != SourceKind::Table(Table::ProcessEvents) {
        return None;
    }
    first.filter.iter().filter_map(need).min_by_key(|atoms| cost(atoms))
}

/// How costly (and unselective) a need is: equalities are hash lookups on
/// values that rarely match; short literals match often; `event_type`
/// matches a third of all events.
fn cost(atoms: &[Atom]) -> usize {
    let event_type = Table::ProcessEvents.column_index("event_type");
    atoms
        .iter()
        .map(|a| match a {
            Atom::Eq { col, .. } if Some(*col) == event_type => 1_000,
            Atom::Eq { .. } => 1,
            Atom::Contains { lit, .. } => 2 + 16 / lit.len().max(1),
        })
        .sum::<usize>()
        .max(1)
}

/// The atoms one of which holds whenever `e` is true; `None` if `e` says
/// nothing usable. `Some(vec![])`: `e` is never true.
fn need(e: &Expr) -> Option<Vec<Atom>> {
    match e {
        Expr::Cmp { op: CmpOp::Eq, l, r, conv: Conv::None | Conv::Text } => {
            eq_atom(l, r).or_else(|| eq_atom(r, l)).map(|a| vec![a])
        }
        Expr::InList { e, list: _, negated: false, texts: Some(texts) } => {
            let (col, fold) = text_column(e)?;
            Some(texts.iter().map(|t| Atom::Eq { col, fold, value: fold_bytes(t, fold) }).collect())
        }
        Expr::Like { e, negated: false, compiled: Some(p), .. }
        | Expr::Glob { e, negated: false, compiled: Some(p), .. } => {
            let Expr::Col { up: 0, src: 0, idx } = e.as_ref() else { return None };
            if p.matches_nothing() {
                return Some(Vec::new());
            }
            let lit = p.longest_literal().filter(|l| !l.is_empty())?;
            Some(vec![Atom::Contains { col: *idx, fold: p.folds_case(), lit: lit.into() }])
        }
        Expr::Or(a, b) => {
            let mut atoms = need(a)?;
            atoms.extend(need(b)?);
            Some(atoms)
        }
        Expr::And(a, b) => match (need(a), need(b)) {
            (Some(x), Some(y)) => Some(if cost(&y) < cost(&x) { y } else { x }),
            (x, y) => x.or(y),
        },
        _ => None,
    }
}

/// `col = 'text'` (or `lower(col) = 'text'`) as an atom.
fn eq_atom(side: &Expr, other: &Expr) -> Option<Atom> {
    let (col, fold) = text_column(side)?;
    let Expr::Lit(Value::Text(t)) = other else { return None };
    Some(Atom::Eq { col, fold, value: fold_bytes(t, fold) })
}

/// An event column, or `lower()` of one (then compared ASCII-folded:
/// SQLite's `lower` folds ASCII only).
fn text_column(e: &Expr) -> Option<(usize, bool)> {
    match e {
        Expr::Col { up: 0, src: 0, idx } => Some((*idx, false)),
        Expr::Func(Func::Lower, args) => match args.as_slice() {
            [Expr::Col { up: 0, src: 0, idx }] => Some((*idx, true)),
            _ => None,
        },
        _ => None,
    }
}

fn fold_bytes(t: &str, fold: bool) -> Box<[u8]> {
    if fold { t.to_ascii_lowercase().into_bytes().into() } else { t.as_bytes().into() }
}
