//! Process identity: `(boot_id, pid, start_time)`.
//!
//! The start time in the key is the task's start in nanoseconds since boot,
//! rounded down to the kernel's clock tick (10 ms at USER_HZ = 100). That is
//! the precision `/proc/<pid>/stat` offers, so a key computed from an eBPF
//! event (which sees nanoseconds) equals the key computed from a `/proc`
//! snapshot of the same process. Two processes with the same pid starting in
//! the same 10 ms would need the pid space to wrap within 10 ms.

use std::fmt;
use std::str::FromStr;

/// Nanoseconds in one USER_HZ clock tick.
pub const TICK_NS: u64 = 10_000_000;

/// The stable identity of a process, unique across pid reuse and reboots.
///
/// Text form: `<boot8>-<pid>-<start_ticks>`, where `boot8` is the first eight
/// hex digits of the boot id and `start_ticks` the start time since boot in
/// clock ticks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    boot: String,
    pid: u32,
    start_ticks: u64,
}

/// A process key text that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid process key {text:?}: expected <boot8>-<pid>-<start_ticks>")]
pub struct ProcessKeyError {
    text: String,
}

impl ProcessKey {
    /// Builds a key from the boot id, the pid and the start time since boot
    /// in nanoseconds.
    pub fn new(boot_id: &str, pid: u32, start_since_boot_ns: u64) -> Self {
        Self::from_ticks(boot_id, pid, start_since_boot_ns / TICK_NS)
    }

    /// Builds a key from a start time already in clock ticks (as `/proc`
    /// reports it).
    pub fn from_ticks(boot_id: &str, pid: u32, start_ticks: u64) -> Self {
        let boot: String =
            boot_id.chars().filter(|c| c.is_ascii_hexdigit()).take(8).collect::<String>().to_ascii_lowercase();
        Self { boot, pid, start_ticks }
    }

    /// The process id part.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The start time since boot, in clock ticks.
    pub fn start_ticks(&self) -> u64 {
        self.start_ticks
    }
}

impl fmt::Display for ProcessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.boot, self.pid, self.start_ticks)
    }
}

impl FromStr for ProcessKey {
    type Err = ProcessKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ProcessKeyError { text: s.to_owned() };
        let mut parts = s.splitn(3, '-');
        let boot = parts.next().ok_or_else(err)?;
        let pid = parts.next().ok_or_else(err)?.parse().map_err(|_| err())?;
        let start_ticks = parts.next().ok_or_else(err)?.parse().map_err(|_| err())?;
        if boot.is_empty() || !boot.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(err());
        }
        Ok(Self { boot: boot.to_owned(), pid, start_ticks })
    }
}

/// The boot id of the running system (Linux: `/proc/sys/kernel/random/boot_id`).
/// Elsewhere, or when it cannot be read, a stable stand-in derived from the
/// boot time so keys remain unique per boot.
pub fn boot_id() -> String {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let s = s.trim();
        if !s.is_empty() {
            return s.to_owned();
        }
    }
    let boot_ns = crate::models::time::now_ns();
    format!("{:016x}", boot_ns / 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_and_rounds_to_ticks() {
        let k = ProcessKey::new("3F2A9B1C-aaaa-bbbb", 4242, 123_456_789_000);
        assert_eq!(k.to_string(), "3f2a9b1c-4242-12345");
        let back: ProcessKey = k.to_string().parse().unwrap();
        assert_eq!(back, k);
        assert_eq!(ProcessKey::from_ticks("3f2a9b1c", 4242, 12345), k);
    }

    #[test]
    fn bad_keys_are_errors() {
        for s in ["", "x-1-2", "abc-1", "abc-p-2", "abc-1-t"] {
            assert!(s.parse::<ProcessKey>().is_err(), "{s}");
        }
    }

    #[test]
    fn boot_id_is_stable() {
        assert_eq!(boot_id(), boot_id());
    }
}
