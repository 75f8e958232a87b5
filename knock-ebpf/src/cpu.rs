//! This CPU's `CpuState`: its counters, the cached clock, the stage-event budget, and the
//! scratch memory through which values pass out of the verifier's sight.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_ns};
use knock_common::{Counter, CpuState, DoorCounters, Settings};

use crate::maps::CPU;

/// This CPU's `CpuState`.
#[derive(Clone, Copy)]
pub(crate) struct Cpu(*mut CpuState);

impl Cpu {
    #[inline(always)]
    pub(crate) fn get() -> Option<Self> {
        CPU.get_ptr_mut(0).map(Self)
    }

    /// This CPU's state, for the hand-overs that pass through it (`doors`).
    #[inline(always)]
    pub(crate) fn state(self) -> *mut CpuState {
        self.0
    }

    /// Counts an attempt at door slot `slot` that ended without opening.
    #[inline(always)]
    pub(crate) fn count_end(self, slot: u8, end: End) {
        if end == End::TimedOut {
            self.count(Counter::Timeouts);
            self.count_door(slot, |c| c.timeouts += 1);
        } else {
            self.count(Counter::Resets);
            self.count_door(slot, |c| c.resets += 1);
        }
    }

    /// Counts `f` of door slot `slot`.
    #[inline(always)]
    pub(crate) fn count_door(self, slot: u8, f: impl FnOnce(&mut DoorCounters)) {
        // SAFETY: as in `count`.
        f(unsafe { (*self.0).door_mut(slot) });
    }

    #[inline(always)]
    pub(crate) fn count(self, c: Counter) {
        // SAFETY: this CPU's slot; nothing else touches it while the program runs here.
        if let Some(v) = unsafe { (*self.0).counters.get_mut(c as usize) } {
            *v += 1;
        }
    }

    /// `bpf_ktime_get_ns()` read at most once per kernel tick: up to one tick old (4 ms at
    /// HZ=250), which knock and gate timeouts, counted in seconds, do not notice. Reading the
    /// clock costs more than the rest of a knock step; `jiffies` is a plain load. The
    /// stage-event budget is topped up at the same time.
    #[inline(always)]
    pub(crate) fn now_ns(self, settings: &Settings) -> u64 {
        // SAFETY: helpers without arguments; this CPU's slot, as above.
        unsafe {
            let jiffies = bpf_jiffies64();
            if (*self.0).jiffies != jiffies {
                let now = bpf_ktime_get_ns();
                (*self.0).jiffies = jiffies;
                (*self.0).now_ns = now;
                (*self.0).stage_events.refill(now, &settings.stage_events);
            }
            (*self.0).now_ns
        }
    }

    /// `v`, as a value the verifier no longer knows: it goes through this CPU's map memory,
    /// whose contents the verifier does not track. Where a function returns one of several
    /// constants (a slot index), the paths that follow are then one path to the verifier,
    /// not one per constant.
    #[inline(always)]
    #[expect(clippy::cast_possible_truncation, reason = "it reads back the usize written")]
    pub(crate) fn opaque(self, v: usize) -> usize {
        // SAFETY: this CPU's slot, as above; volatile, so that the compiler does not see
        // through the round trip either.
        unsafe {
            core::ptr::write_volatile(&raw mut (*self.0).scratch[0], v as u64);
            core::ptr::read_volatile(&raw const (*self.0).scratch[0]) as usize
        }
    }

    /// Whether a stage event may be sent now.
    #[inline(always)]
    pub(crate) fn stage_budget(self, settings: &Settings) -> bool {
        // SAFETY: this CPU's slot, as above.
        unsafe { (*self.0).stage_events.spend(&settings.stage_events) }
    }
}

/// How an attempt ended without opening.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Its `seq_timeout` ran out.
    TimedOut,
    /// A knock broke it (knockd's reset), or started it again.
    Reset,
}
