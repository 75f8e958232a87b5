//! Shared between the XDP program (`knock-ebpf`), the daemon (`knockd-user`) and the tests.
//!
//! Everything a packet decision depends on lives here as plain functions over plain
//! `#[repr(C)]` data, so the same code runs in the kernel and in host unit tests.
//!
//! Byte order: ports and counters are host order; addresses are network order
//! (`[u8; 16]`, an IPv4 address in the first four bytes and zeros after it).
#![no_std]

#[cfg(any(test, feature = "keys", feature = "fleet", feature = "generate", feature = "files"))]
extern crate std;

pub mod addr;
pub mod budget;
pub mod counters;
pub mod door;
pub mod event;
#[cfg(feature = "files")]
pub mod file_error;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod gate;
#[cfg(feature = "generate")]
pub mod generate;
pub mod knock;
#[cfg(feature = "profile")]
pub mod profile;
pub mod secret;
pub mod table;
pub mod visit;

pub use addr::{AddrKey, Family, LocalAddrs, MAX_LOCAL_ADDRS};
pub use budget::{Bucket, Rate};
pub use counters::{Counter, CpuState, DoorCounters};
pub use door::{DoorSpec, GATE_CLOSE, GATE_NONE, GATE_OPEN, PortDoors, Settings, Step, TcpFlags};
pub use event::{EventKind, KnockEvent};
pub use gate::{AllowKey, gate_passes, is_new_connection};
pub use knock::{Attempt, Knock, Outcome, ends, step};
pub use secret::{DoorWindows, Prf, SecretStep, UsedKey, WindowKey, secret_step};
pub use table::{Mine, Set, Slot, SlotKey, SourceKey, WAYS, sets_for};

/// Version of the layout and meaning of the maps that outlive the daemon (pinned in bpffs,
/// `maps-vN`), and of the contract between the two programs (`knockgate` tail-calls
/// `knockgate_doors` through a pinned table). Bump it with any change to a pinned map's key,
/// value or size, or to what a value means: a daemon finding another version's maps makes its
/// own and carries the allowances over, rather than reading them with the wrong layout.
pub const STATE_VERSION: u32 = 4;

/// Most doors one configuration may hold (the XDP program walks them in a bounded loop).
pub const MAX_DOORS: u32 = 32;
/// Most steps in one sequence; knockd's `SEQ_MAX`.
pub const MAX_STEPS: usize = 32;
/// Most ports one door may gate.
pub const MAX_GATE_PORTS: usize = 8;

/// IANA protocol numbers of the two knock protocols.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// XDP verdicts (`enum xdp_action`); user space has no bindings for them.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Map names, shared so user space, the CLI and tests agree with the program.
/// Each is at most 15 bytes: the kernel keeps only that much of a map's name.
pub mod maps {
    /// `Array<DoorSpec>`, `MAX_DOORS` slots: the configured doors.
    pub const DOORS: &str = "DOORS";
    /// `Array<Settings>`, one slot: slots to walk, event budget, gating and stealth flags.
    pub const SETTINGS: &str = "SETTINGS";
    /// `Array<PortDoors>`, `PORT_SLOTS` slots: for (protocol, port), the doors whose
    /// sequence names it and the doors gating it. All zero for most ports, whose packets
    /// `PORT_BITS` passes before they get here.
    pub const PORTS: &str = "PORTS";
    /// The program's global data, which holds only `PORT_BITS: PortBits`, as aya names it (an
    /// `Array` of one slot): a bit per `PORTS` slot, set for every slot that is not all zero
    /// (and, while the daemon rewrites `PORTS`, for the slots it is changing). A frame to a
    /// port whose bit is clear passes without reading `PORTS`. A global, not a map of its
    /// own: the program reads it with one load, where a map lookup first stores its key on
    /// the stack and loads it back.
    pub const PORT_BITS: &str = ".bss";
    /// `Array<LocalAddrs>`, one slot: the addresses of this host that knocks must be sent to.
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    /// `Array<Set>`: per (source, door) progress past the first knock, in sets of `WAYS`
    /// (`table`). Only a source that knew two steps gets here, so a spoofed flood of first
    /// knocks cannot push these attempts out.
    pub const PROGRESS: &str = "PROGRESS";
    /// `Array<Set>`: attempts at stage 1 (one knock seen).
    pub const FIRST_KNOCKS: &str = "FIRST_KNOCKS";
    /// `RingBuf` of `KnockEvent`.
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuArray<CpuState>`, one slot: clock cache, stage-event budget and counters.
    pub const CPU: &str = "CPU";
    /// `ProgramArray`, slot 0: `knockgate_doors`, for ports that several sequences name; slot
    /// 1: `knockgate_secret`, for secret doors.
    pub const DOOR_WALK: &str = "DOOR_WALK";
    /// `ProgramArray`: `DOOR_WALK` of the TC hook (`knockgate_tc_doors`, `knockgate_tc_secret`).
    pub const DOOR_WALK_TC: &str = "DOOR_WALK_TC";
    /// `LruHashMap<AllowKey, u64>`: (source, gated port) allowed until this `ktime` (ns).
    pub const ALLOW: &str = "ALLOW";
    /// `Array<DoorWindows>`, `MAX_DOORS` slots: the window keys of each secret door.
    pub const WINDOWS: &str = "WINDOWS";
    /// `LruHashMap<UsedKey, u64>`: (source, secret door, window) that has opened, with the
    /// `ktime` it did. A sequence opens once.
    pub const USED: &str = "USED";
}

/// Slots of `PORTS`: one per TCP port, then one per UDP port.
pub const PORT_SLOTS: u32 = 2 * 65536;

/// Index into `PORTS` for a knock protocol and port; `None` for other protocols.
#[must_use]
pub const fn port_slot(proto: u8, port: u16) -> Option<u32> {
    match proto {
        PROTO_TCP => Some(port as u32),
        PROTO_UDP => Some(65536 + port as u32),
        _ => None,
    }
}

/// A bit per `PORTS` slot: the slots that are not all zero (see `maps::PORT_BITS`); then one
/// more word, `SECRET_WORD`.
pub type PortBits = [u64; PORT_BIT_WORDS + 1];
/// The word of `PortBits` after the bits: the mask of secret doors. While it is not zero,
/// every TCP SYN and UDP datagram goes further than the bitmap, since a secret door's later
/// ports are any ports.
pub const SECRET_WORD: usize = PORT_BIT_WORDS;
/// Words of `PortBits`.
pub const PORT_BIT_WORDS: usize = PORT_SLOTS as usize / 64;
const _: () = assert!(PORT_BIT_WORDS.is_power_of_two());

/// The word of `PortBits` that holds `slot`'s bit, and the bit. The index is masked, so it
/// is within the array for any `slot` (the verifier needs no further check).
#[must_use]
#[expect(clippy::inline_always, reason = "every frame's path in the XDP program; BPF calls cost a stack frame each")]
#[inline(always)]
pub const fn port_bit(slot: u32) -> (usize, u64) {
    ((slot >> 6) as usize & (PORT_BIT_WORDS - 1), 1 << (slot & 63))
}

/// Sets `slot`'s bit.
#[inline]
pub fn set_port_bit(bits: &mut PortBits, slot: u32) {
    let (word, bit) = port_bit(slot);
    bits[word] |= bit;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_its_own_bit() {
        let mut bits: std::boxed::Box<PortBits> =
            std::vec![0; PORT_BIT_WORDS + 1].into_boxed_slice().try_into().unwrap();
        for slot in 0..PORT_SLOTS {
            let (word, bit) = port_bit(slot);
            assert_eq!(bits[word] & bit, 0, "slot {slot}");
            set_port_bit(&mut bits, slot);
        }
        assert!(bits[..PORT_BIT_WORDS].iter().all(|&w| w == u64::MAX));
        assert_eq!(bits[SECRET_WORD], 0, "the bits stop before the secret word");
    }

    #[test]
    fn port_slots_do_not_overlap() {
        assert_eq!(port_slot(PROTO_TCP, 0), Some(0));
        assert_eq!(port_slot(PROTO_TCP, 65535), Some(65535));
        assert_eq!(port_slot(PROTO_UDP, 0), Some(65536));
        assert_eq!(port_slot(PROTO_UDP, 65535), Some(PORT_SLOTS - 1));
        assert_eq!(port_slot(1, 7000), None);
    }
}
