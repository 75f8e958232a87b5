//! The program's counters, and the per-CPU state that holds them.

use crate::Bucket;

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
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only u64s (no padding).
unsafe impl aya::Pod for CpuState {}

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
}

impl Counter {
    pub const ALL: [Counter; 12] = [
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
        }
    }
}
