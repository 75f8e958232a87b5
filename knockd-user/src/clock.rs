//! The two clocks: `CLOCK_MONOTONIC`, the clock of the kernel's `bpf_ktime_get_ns` in which
//! its deadlines are written, and the wall clock, which says which window a secret door is in.

use std::time::{SystemTime, UNIX_EPOCH};

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`, in ns.
#[must_use]
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec())
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.tv_nsec()).unwrap_or(0))
    })
}

/// The wall clock in ms since the Unix epoch: journal due times, a fleet's grants.
#[must_use]
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The two clocks a window key ties together: wall-clock time, which says which window it is
/// (client and server agree on it), and `CLOCK_MONOTONIC` (the kernel's `ktime`), in which
/// the kernel's deadlines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub unix_ns: u128,
    pub mono_ns: u64,
}

impl Clock {
    #[must_use]
    pub fn now() -> Self {
        let unix_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Self { unix_ns, mono_ns: monotonic_ns() }
    }

    /// `CLOCK_MONOTONIC` at wall-clock second `unix_secs` (0 if that is before boot).
    #[must_use]
    pub fn mono_at(&self, unix_secs: u64) -> u64 {
        let at = u128::from(unix_secs) * 1_000_000_000;
        let mono = u128::from(self.mono_ns);
        let t = if at >= self.unix_ns { mono + (at - self.unix_ns) } else { mono.saturating_sub(self.unix_ns - at) };
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// The wall clock in ms.
    #[must_use]
    pub fn unix_ms(&self) -> u64 {
        u64::try_from(self.unix_ns / 1_000_000).unwrap_or(u64::MAX)
    }

    /// The wall clock in whole seconds.
    #[must_use]
    pub fn unix_secs(&self) -> u64 {
        u64::try_from(self.unix_ns / 1_000_000_000).unwrap_or(u64::MAX)
    }
}
