//! Time conversion, in one place.
//!
//! Internally times are `i64` nanoseconds since the Unix epoch; SQL columns
//! (`*_time`) and JSON output use Unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        // A clock before 1970 is a broken clock; report the epoch.
        Err(_) => 0,
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    ns_to_ms(now_ns())
}

/// Nanoseconds to milliseconds (floor).
pub fn ns_to_ms(ns: i64) -> i64 {
    ns.div_euclid(1_000_000)
}

/// Milliseconds to nanoseconds, saturating.
pub fn ms_to_ns(ms: i64) -> i64 {
    ms.saturating_mul(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_down_and_saturate() {
        assert_eq!(ns_to_ms(1_999_999), 1);
        assert_eq!(ns_to_ms(-1), -1);
        assert_eq!(ms_to_ns(i64::MAX), i64::MAX);
        assert!(now_ms() > 1_600_000_000_000);
    }
}
