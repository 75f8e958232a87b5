//! Secret doors' window keys: what the daemon installs in the kernel as windows pass (the
//! secret itself never goes there; see `knock_common::secret`), and when they are out of date.

use std::time::Duration;

use knock_common::{DoorWindows, WindowKey, secret::WINDOWS};

use crate::{clock::Clock, config::SecretDoor};

impl SecretDoor {
    /// The window it is at `clock`.
    #[must_use]
    pub fn window(&self, clock: &Clock) -> u64 {
        self.params.window_at(clock.unix_secs())
    }

    /// The kernel's keys at `clock`: windows w-1 to w+2, window x accepted from the start of
    /// window x-1 to the end of window x+1.
    #[must_use]
    pub fn windows(&self, clock: &Clock) -> DoorWindows {
        let w = self.window(clock);
        let secs = u64::from(self.params.window_secs);
        let mut out = DoorWindows::default();
        for x in w.saturating_sub(1)..=w.saturating_add(2) {
            let key = WindowKey {
                live: 1,
                not_before_ns: clock.mono_at(x.saturating_sub(1).saturating_mul(secs)),
                not_after_ns: clock.mono_at(x.saturating_add(2).saturating_mul(secs)),
                ..self.key.window_key(&self.params, x)
            };
            out.keys[usize::try_from(x % WINDOWS as u64).unwrap_or(0)] = key;
        }
        out
    }

    /// How long until the next window starts.
    #[must_use]
    pub fn until_next_window(&self, clock: &Clock) -> Duration {
        let secs = u128::from(self.params.window_secs);
        let next = (clock.unix_ns / 1_000_000_000 / secs + 1) * secs * 1_000_000_000;
        Duration::from_nanos(u64::try_from(next - clock.unix_ns).unwrap_or(u64::MAX))
    }
}

/// What the secret doors' keys in the kernel were made for: each door's window, and the wall
/// clock's offset from `CLOCK_MONOTONIC` (the kernel's deadlines are written in the latter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    pub windows: Vec<u64>,
    pub offset_ns: i128,
}

impl Installed {
    /// Wall-clock steps smaller than this leave the kernel's deadlines as they are.
    const CLOCK_STEP_NS: i128 = 500_000_000;

    #[must_use]
    pub fn at<'a>(doors: impl IntoIterator<Item = &'a SecretDoor>, clock: &Clock) -> Self {
        let windows = doors.into_iter().map(|d| d.window(clock)).collect();
        let unix = i128::try_from(clock.unix_ns).unwrap_or(i128::MAX);
        Self { windows, offset_ns: unix - i128::from(clock.mono_ns) }
    }

    /// Whether keys installed for `self` are out of date for `now`: a door has moved on to
    /// another window, or the wall clock has been stepped.
    #[must_use]
    pub fn stale(&self, now: &Self) -> bool {
        self.windows != now.windows
            || (!now.windows.is_empty() && (self.offset_ns - now.offset_ns).abs() >= Self::CLOCK_STEP_NS)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use knock_common::{
        PROTO_TCP,
        secret::derive::{Params, Secret},
    };

    use super::*;

    fn door(window_secs: u32) -> SecretDoor {
        SecretDoor {
            path: PathBuf::from("/k"),
            key: Secret::from_bytes(&[3; 32]),
            params: Params { length: 4, window_secs, proto: PROTO_TCP },
            fleet_claim: false,
        }
    }

    #[test]
    fn keys_cover_the_windows_around_now_with_kernel_deadlines() {
        let d = door(30);
        // 10 s into window 1000 (unix 30,010 s); CLOCK_MONOTONIC reads 500 s.
        let clock = Clock { unix_ns: 30_010 * 1_000_000_000, mono_ns: 500_000_000_000 };
        assert_eq!(d.window(&clock), 1000);
        let w = d.windows(&clock);
        let mono = |unix_secs: i64| u64::try_from(500_000_000_000 + (unix_secs - 30_010) * 1_000_000_000).unwrap();
        for x in [999u64, 1000, 1001, 1002] {
            let k = &w.keys[usize::try_from(x % 4).unwrap()];
            assert_eq!((k.window, k.live), (x, 1));
            assert_eq!(k.first, d.key.window_key(&d.params, x).first);
            // Accepted from the start of window x - 1 to the end of window x + 1.
            let x = i64::try_from(x).unwrap();
            assert_eq!((k.not_before_ns, k.not_after_ns), (mono((x - 1) * 30), mono((x + 2) * 30)));
        }
        // Now (window 1000): w-1, w and w+1, not w+2.
        let now = mono(30_010);
        let live: Vec<u64> = w.keys.iter().filter(|k| k.live_at(now)).map(|k| k.window).collect();
        assert_eq!(live.len(), 3);
        assert!(!live.contains(&1002));
        // 20 s on, with the daemon late (the keys still those of window 1000): 1000, 1001 and 1002.
        let late: Vec<u64> = w.keys.iter().filter(|k| k.live_at(mono(30_030))).map(|k| k.window).collect();
        assert_eq!(late, [1000, 1001, 1002]);
        assert_eq!(d.until_next_window(&clock), Duration::from_secs(20));
        // Moving to the next window replaces only the key of window 999.
        let later = d.windows(&Clock { unix_ns: 30_030 * 1_000_000_000, mono_ns: 520_000_000_000 });
        assert_eq!(later.keys[usize::try_from(1000 % 4).unwrap()], w.keys[usize::try_from(1000 % 4).unwrap()]);
        assert_eq!(later.keys[usize::try_from(1003 % 4).unwrap()].window, 1003);
    }

    /// A key file in a directory of its own, removed on drop.

    #[test]
    fn keys_are_stale_at_a_new_window_or_a_stepped_clock_only() {
        let d = door(30);
        let at = |unix_ms: u128, mono_ms: u64| {
            Installed::at([&d], &Clock { unix_ns: unix_ms * 1_000_000, mono_ns: mono_ms * 1_000_000 })
        };
        let installed = at(30_010_000, 500_000);
        assert!(!installed.stale(&at(30_010_250, 500_250)), "time passing");
        assert!(!installed.stale(&at(30_019_999, 509_999)), "the same window");
        assert!(installed.stale(&at(30_030_000, 520_000)), "the next window");
        assert!(installed.stale(&at(30_012_000, 501_000)), "the wall clock stepped 1 s");
        assert!(!installed.stale(&at(30_010_100, 500_000)), "100 ms of jitter");
        assert!(!Installed::default().stale(&Installed::at([], &Clock::now())), "no secret door");
    }
}
