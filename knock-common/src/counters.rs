//! The program's counters, and the per-CPU state that holds them.

use crate::{Bucket, MAX_DOORS, MAX_STEPS};

/// The one slot of the per-CPU `CPU` array: everything the program keeps per CPU, so that
/// a packet looks it up once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuState {
    /// `jiffies` when `now_ns` was read.
    pub jiffies: u64,
    /// `bpf_ktime_get_ns()`, read at most once per tick.
    pub now_ns: u64,
    /// Budget of stage events sent to user space.
    pub stage_events: Bucket,
    /// Indexed by `Counter`.
    pub counters: [u64; Counter::LEN],
    /// Per door slot.
    pub doors: [DoorCounters; MAX_DOORS as usize],
    /// Scratch words of the XDP program (`Cpu::opaque`, `Cpu::launder`).
    pub scratch: [u64; 6],
    /// The XDP program's hand-over to a loop body (its `Walk`, for the loops of
    /// `knockgate_doors` and `knockgate_secret`).
    pub walk: [u64; 10],
}

/// One door slot's counters (its door may change with a reload: user space labels them with
/// the door in the slot when it reads them, and a slot's counters only ever grow).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoorCounters {
    pub opens: u64,
    pub resets: u64,
    pub timeouts: u64,
    /// `stages[n]`: knocks that brought an attempt to stage `n + 1`.
    pub stages: [u64; MAX_STEPS],
}

impl CpuState {
    /// This door slot's counters; the index is masked into range (the verifier needs no
    /// further check).
    #[must_use]
    #[expect(clippy::inline_always, reason = "the XDP program's knock path; BPF calls cost a stack frame each")]
    #[inline(always)]
    pub fn door_mut(&mut self, slot: u8) -> &mut DoorCounters {
        &mut self.doors[usize::from(slot) & (MAX_DOORS as usize - 1)]
    }
}

impl DoorCounters {
    /// Counts a knock that brought an attempt to `stage` (1-based).
    #[expect(clippy::inline_always, reason = "the XDP program's knock path")]
    #[inline(always)]
    pub fn reached(&mut self, stage: u8) {
        self.stages[usize::from(stage.wrapping_sub(1)) & (MAX_STEPS - 1)] += 1;
    }

    /// Door slot `slot`'s counters summed over CPUs (user space reads one `CpuState` per CPU).
    #[must_use]
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a CpuState>, slot: u8) -> Self {
        let mut sum = Self::default();
        for s in per_cpu {
            let d = &s.doors[usize::from(slot) % MAX_DOORS as usize];
            sum.opens += d.opens;
            sum.resets += d.resets;
            sum.timeouts += d.timeouts;
            for (a, b) in sum.stages.iter_mut().zip(d.stages) {
                *a += b;
            }
        }
        sum
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only u64s (no padding).
unsafe impl aya::Pod for CpuState {}
const _: () = assert!(size_of::<DoorCounters>() == 8 * (3 + MAX_STEPS) && MAX_DOORS.is_power_of_two());

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets to a knock port (frames to other ports are not counted: that would cost
    /// every frame a counter update).
    KnockPackets = 0,
    /// Knocks that started or advanced an attempt.
    Steps,
    /// Attempts reset by a wrong sequence port.
    Resets,
    /// Attempts found expired when their source knocked again.
    Timeouts,
    /// Completed sequences.
    Opens,
    /// Frames that could not be parsed as far as the program needed.
    ParseErrors,
    /// Events lost because the ring buffer was full.
    EventsLost,
    /// Stage events not sent because their budget was spent.
    StagesSuppressed,
    /// Failed updates of the progress table (progress lost; nothing opens).
    MapErrors,
    /// New connections to a gated port dropped (no allowance, or frame not parseable).
    GateDrops,
    /// New connections to a gated port let through by an allowance.
    GatePasses,
    /// Knock packets of stealth doors dropped.
    StealthDrops,
    /// New first knocks that took the slot of another attempt (its set was full).
    FirstKnockEvictions,
    /// Attempts past their first knock that took the slot of another (its set was full).
    ProgressEvictions,
    /// Completed secret sequences refused because that (source, door, window) had opened.
    Replays,
}

impl Counter {
    pub const ALL: [Counter; 15] = [
        Counter::KnockPackets,
        Counter::Steps,
        Counter::Resets,
        Counter::Timeouts,
        Counter::Opens,
        Counter::ParseErrors,
        Counter::EventsLost,
        Counter::StagesSuppressed,
        Counter::MapErrors,
        Counter::GateDrops,
        Counter::GatePasses,
        Counter::StealthDrops,
        Counter::FirstKnockEvictions,
        Counter::ProgressEvictions,
        Counter::Replays,
    ];

    /// Number of counters.
    pub const LEN: usize = Self::ALL.len();

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Counter::KnockPackets => "knock_packets",
            Counter::Steps => "knock_steps",
            Counter::Resets => "resets",
            Counter::Timeouts => "timeouts",
            Counter::Opens => "opens",
            Counter::ParseErrors => "parse_errors",
            Counter::EventsLost => "events_lost",
            Counter::StagesSuppressed => "stage_events_suppressed",
            Counter::MapErrors => "map_errors",
            Counter::GateDrops => "gate_drops",
            Counter::GatePasses => "gate_passes",
            Counter::StealthDrops => "stealth_drops",
            Counter::FirstKnockEvictions => "first_knock_evictions",
            Counter::ProgressEvictions => "progress_evictions",
            Counter::Replays => "replays_refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_door_sums_over_cpus() {
        let mut cpus = std::vec![CpuState::default(); 2];
        cpus[0].door_mut(3).opens = 2;
        cpus[1].door_mut(3).opens = 5;
        cpus[1].door_mut(3).reached(2);
        cpus[0].door_mut(4).resets = 9;
        let s = DoorCounters::sum(&cpus, 3);
        assert_eq!((s.opens, s.resets, s.stages[1]), (7, 0, 1));
    }
}
