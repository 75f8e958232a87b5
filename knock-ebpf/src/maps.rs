//! The program's maps (created, pinned and written by the daemon; `knock_common::maps` names
//! them) and the one global it writes whole, `PORT_BITS`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use knock_common::{
    AllowKey, CpuState, DoorSpec, DoorWindows, LocalAddrs, MAX_DOORS, PORT_SLOTS, PortBits, PortDoors, Set, Settings,
    UsedKey,
};

/// Configured doors, written by the daemon. Slot i is door i of the config.
#[map]
pub(crate) static DOORS: Array<DoorSpec> = Array::with_max_entries(MAX_DOORS, 0);

/// One slot: slots to walk, gating and stealth flags, attempt-table sizes and hash key,
/// stage-event budget.
#[map]
pub(crate) static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// (protocol, port) -> the doors whose sequence names it and the doors gating it.
#[map]
pub(crate) static PORTS: Array<PortDoors> = Array::with_max_entries(PORT_SLOTS, 0);

/// A bit per `PORTS` slot that is not all zero: what the common frame reads instead of `PORTS`
/// (see `maps::PORT_BITS`). The only static in `.bss`, which user space writes whole as the
/// one value of an array; `mut`, so that it is not `.rodata`, which is frozen at load.
#[unsafe(no_mangle)]
pub(crate) static mut PORT_BITS: PortBits = [0; knock_common::PORT_BIT_WORDS + 1];

/// This host's addresses on the interface; knocks must be sent to one (or to a door's target).
#[map]
pub(crate) static LOCAL_ADDRS: Array<LocalAddrs> = Array::with_max_entries(1, 0);

/// Per (source, door) progress past stage 1: sets of `WAYS` attempts (see `knock_common::table`).
/// A full set gives up the attempt that started first (nothing fails, nothing opens). The
/// daemon sizes it at load time.
#[map]
pub(crate) static PROGRESS: Array<Set> = Array::with_max_entries(1, 0);

/// Attempts at stage 1. Kept apart so that a flood of spoofed first knocks, which fills
/// this table, cannot push out an attempt that has got further.
#[map]
pub(crate) static FIRST_KNOCKS: Array<Set> = Array::with_max_entries(1, 0);

/// Events for the daemon: completed sequences, and stage progress within a budget.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per-CPU state: clock cache, stage-event budget, counters. Looked up once per packet that
/// gets past the port table.
#[map]
pub(crate) static CPU: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// (source, gated port) -> `ktime` the allowance ends. Only a completed knock inserts here.
/// LRU: when full, the oldest allowance goes (its source must knock again); nothing opens.
#[map]
pub(crate) static ALLOW: LruHashMap<AllowKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Per door slot, the window keys of a secret door (written by the daemon as windows pass).
#[map]
pub(crate) static WINDOWS: Array<DoorWindows> = Array::with_max_entries(MAX_DOORS, 0);

/// (source, secret door, window) that has opened, with the `ktime` it did: single use.
/// Only a completed sequence inserts here, so nobody without the key can push entries out.
#[map]
pub(crate) static USED: LruHashMap<UsedKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// `BPF_NOEXIST`: the update fails if the key is there.
pub(crate) const BPF_NOEXIST: u64 = 1;

/// Slot `WALK_PLAIN`: `knockgate_doors`, which `knockgate` hands a knock to when it visits
/// more than one plain door (`visit`); slot `WALK_SECRET`: `knockgate_secret`, for new
/// packets a secret door may care about.
#[map]
pub(crate) static DOOR_WALK: ProgramArray = ProgramArray::with_max_entries(2, 0);
/// `DOOR_WALK` of the TC hook: its programs, in the same slots (a program array holds
/// programs of one type).
#[map]
pub(crate) static DOOR_WALK_TC: ProgramArray = ProgramArray::with_max_entries(2, 0);
pub(crate) const WALK_PLAIN: u32 = 0;
pub(crate) const WALK_SECRET: u32 = 1;
