//! The per-sink circuit breaker: closed -> open after N consecutive failures
//! -> half-open (one probe) after a cool-down -> closed on success, open
//! again on failure. Pure state; the worker logs the transitions.

use std::time::{Duration, Instant};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    /// Deliveries go through.
    Closed = 0,
    /// Deliveries wait for the cool-down.
    Open = 1,
    /// One probe delivery decides.
    HalfOpen = 2,
}

impl BreakerState {
    /// The lowercase name (logs, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// From the `repr(u8)` value (metrics store it in an atomic).
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// A circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: BreakerState,
    opened_at: Option<Instant>,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, probes after `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold: threshold.max(1), cooldown, failures: 0, state: BreakerState::Closed, opened_at: None }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Before an attempt: `Err(wait)` while open and cooling down; when the
    /// cool-down has passed the breaker turns half-open (returned as
    /// `Ok(Some(HalfOpen))`) and lets one attempt through.
    pub fn before_attempt(&mut self, now: Instant) -> Result<Option<BreakerState>, Duration> {
        if self.state != BreakerState::Open {
            return Ok(None);
        }
        let ready_at = self.opened_at.map_or(now, |t| t + self.cooldown);
        if now < ready_at {
            return Err(ready_at - now);
        }
        self.state = BreakerState::HalfOpen;
        Ok(Some(BreakerState::HalfOpen))
    }

    /// After a successful attempt; `Some(Closed)` when that closed it.
    pub fn on_success(&mut self) -> Option<BreakerState> {
        self.failures = 0;
        self.opened_at = None;
        let was = std::mem::replace(&mut self.state, BreakerState::Closed);
        (was != BreakerState::Closed).then_some(BreakerState::Closed)
    }

    /// After a failed attempt; `Some(Open)` when that opened it.
    pub fn on_failure(&mut self, now: Instant) -> Option<BreakerState> {
        self.failures = self.failures.saturating_add(1);
        let open = self.state == BreakerState::HalfOpen || self.failures >= self.threshold;
        if open {
            self.state = BreakerState::Open;
            self.opened_at = Some(now);
            return Some(BreakerState::Open);
        }
        None
    }
}

/// The retry delay after `failures` consecutive failures: `initial`
/// doubled per failure, capped at `max`.
pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    initial.saturating_mul(1u32 << shift).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_after_cooldown_and_closes() {
        let t0 = Instant::now();
        let cd = Duration::from_secs(10);
        let mut b = Breaker::new(3, cd);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.before_attempt(t0), Ok(None));
        assert_eq!(b.on_failure(t0), Some(BreakerState::Open));
        assert_eq!(b.before_attempt(t0 + Duration::from_secs(4)), Err(Duration::from_secs(6)));
        assert_eq!(b.before_attempt(t0 + cd), Ok(Some(BreakerState::HalfOpen)));
        // A failed probe opens it again at once, with a fresh cool-down.
        let t1 = t0 + cd;
        assert_eq!(b.on_failure(t1), Some(BreakerState::Open));
        assert!(b.before_attempt(t1 + Duration::from_secs(1)).is_err());
        assert_eq!(b.before_attempt(t1 + cd), Ok(Some(BreakerState::HalfOpen)));
        assert_eq!(b.on_success(), Some(BreakerState::Closed));
        assert_eq!(b.failures(), 0);
        assert_eq!(b.on_success(), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
        let got: Vec<_> = (1..=6).map(|n| backoff(i, m, n).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(i, m, u32::MAX), m);
    }
}
