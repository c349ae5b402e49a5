//! Which exited processes leave the table: the one rule the agent's prune
//! and replay share, so that replay keeps the rows the agent kept.

use crate::proto::ProcessState;

/// When a row's process exited (`None`: alive). An exit always carries its
/// time; a row without one sorts first.
pub fn exited_at(state: &ProcessState) -> Option<i64> {
    (!state.is_alive).then(|| state.record.as_ref().and_then(|r| r.exit_time_ns).unwrap_or(i64::MIN))
}

/// Of `exited` rows as (exit time, key), oldest first, `len` of them: the
/// keys to prune — those that exited before `exited_before_ns`, then as
/// many more as keep at most `max_exited`.
pub fn to_prune<'a>(
    exited: impl Iterator<Item = (i64, &'a String)>,
    len: usize,
    exited_before_ns: i64,
    max_exited: usize,
) -> Vec<String> {
    let over_cap = len.saturating_sub(max_exited);
    exited
        .enumerate()
        .take_while(|(i, (t, _))| *i < over_cap || *t < exited_before_ns)
        .map(|(_, (_, k))| k.clone())
        .collect()
}

/// Whether `exited` rows are far enough over `max_exited` (by an eighth)
/// to prune now rather than at the next interval, so that a few rows over
/// the cap do not make a prune per event.
pub fn over_cap(exited: usize, max_exited: usize) -> bool {
    exited > max_exited.saturating_add(max_exited / 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_first_then_count_and_an_eighth_of_slack() {
        let rows: Vec<(i64, String)> = [10, 20, 30, 40].iter().map(|t| (*t, format!("e{t}"))).collect();
        let take = |before, max| to_prune(rows.iter().map(|(t, k)| (*t, k)), rows.len(), before, max);
        assert_eq!(take(25, 10), ["e10", "e20"]);
        assert_eq!(take(0, 1), ["e10", "e20", "e30"]);
        assert!(take(0, 4).is_empty());
        assert!(!over_cap(18, 16) && over_cap(19, 16) && !over_cap(0, 0) && over_cap(1, 0));
    }
}
