//! `--since`/`--until` values: a time, or how long ago.

use anyhow::Context as _;

/// What a TIME argument accepts, for `--help` and errors.
pub(crate) const TIME_HELP: &str =
    "RFC 3339 (2026-05-01T12:00:00Z), Unix milliseconds, `now`, or a duration ago (30s, 10m, 2h, 1d)";

/// Parses a TIME argument into Unix milliseconds: an RFC 3339 time, Unix
/// milliseconds, `now`, or a duration meaning that long before now.
pub(crate) fn parse_ms(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if s.starts_with(|c: char| c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_alphabetic())
        && let Ok(ago) = humantime::parse_duration(s)
    {
        let ago = i64::try_from(ago.as_millis()).context("duration too long")?;
        return Ok(daemoneye_lib::models::time::now_ms() - ago);
    }
    let ns = crate::ledger::parse_time(s).with_context(|| format!("{s:?} is not a time: use {TIME_HELP}"))?;
    Ok(ns.div_euclid(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_ago() {
        assert_eq!(parse_ms("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_ms("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        let now = daemoneye_lib::models::time::now_ms();
        let ten_min = parse_ms("10m").unwrap();
        assert!((now - 600_000 - ten_min).abs() < 5_000, "{ten_min}");
        assert!(parse_ms("1d").unwrap() < ten_min);
        let e = format!("{:#}", parse_ms("yesterday").unwrap_err());
        assert!(e.contains("RFC 3339") && e.contains("10m"), "{e}");
    }
}
