//! A door as the XDP program sees it.

use crate::{MAX_GATE_PORTS, MAX_STEPS, PROTO_TCP, Rate};

/// TCP flag bits as they sit in byte 13 of the TCP header.
pub struct TcpFlags;

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// One knock of a sequence.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Destination port, host order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Step>() == 4);

impl Step {
    #[must_use]
    pub const fn new(proto: u8, port: u16) -> Self {
        Self { port, proto, _pad: 0 }
    }
}

/// One slot of the `DOORS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorSpec {
    /// The whole sequence must arrive within this many nanoseconds of its first knock.
    pub timeout_ns: u64,
    /// With `target_family != 0`: knocks count only when sent to this address.
    pub target: [u8; 16],
    /// Number of steps; 0 marks an unused or disabled slot.
    pub len: u8,
    /// 0: knocks must go to one of the host's addresses; 4 or 6: to `target`.
    pub target_family: u8,
    /// TCP flags that must be set for a TCP knock to count.
    pub flags_set: u8,
    /// TCP flags that must be clear for a TCP knock to count.
    pub flags_clear: u8,
    pub steps: [Step; MAX_STEPS],
    /// Changes whenever this slot gets a different door or sequence (reload, one-time
    /// sequence used up): attempts made under another epoch are void.
    pub epoch: u32,
    /// How long a gate opening lasts.
    pub gate_ttl_ns: u64,
    /// Ports this door's completion opens (`gate_action == GATE_OPEN`) or closes.
    pub gate: [Step; MAX_GATE_PORTS],
    pub gate_len: u8,
    /// `GATE_NONE`, `GATE_OPEN` or `GATE_CLOSE`.
    pub gate_action: u8,
    /// 1: knock packets for this door are dropped (no RST or ICMP answers them).
    pub stealth: u8,
    /// 1: a secret-keyed door (`secret`): `steps` is unused, `len` is the knock length, and
    /// the ports come from the door's keys in `WINDOWS`.
    pub secret: u8,
    /// A secret door's knock protocol, `PROTO_TCP` or `PROTO_UDP`.
    pub secret_proto: u8,
    /// 1: a completed knock leaves the gate to the daemon, which opens it once the fleet has
    /// granted the knock's single use (a fleet's secret door); the kernel still spends the
    /// knock's single use and reports the open.
    pub gate_by_daemon: u8,
    pub _pad: [u8; 2],
    /// A secret door's key fingerprint (`Secret::id`): the kernel ignores it, but a new key
    /// makes a new door.
    pub key_id: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<DoorSpec>() == 216);

/// `DoorSpec::gate_action` values.
pub const GATE_NONE: u8 = 0;
pub const GATE_OPEN: u8 = 1;
pub const GATE_CLOSE: u8 = 2;
const _: () = assert!(MAX_STEPS.is_power_of_two() && MAX_GATE_PORTS.is_power_of_two());

impl DoorSpec {
    /// An unused slot.
    pub const EMPTY: Self = Self {
        timeout_ns: 0,
        target: [0; 16],
        len: 0,
        target_family: 0,
        flags_set: 0,
        flags_clear: 0,
        steps: [Step { port: 0, proto: 0, _pad: 0 }; MAX_STEPS],
        epoch: 0,
        gate_ttl_ns: 0,
        gate: [Step { port: 0, proto: 0, _pad: 0 }; MAX_GATE_PORTS],
        gate_len: 0,
        gate_action: GATE_NONE,
        stealth: 0,
        secret: 0,
        secret_proto: 0,
        gate_by_daemon: 0,
        _pad: [0; 2],
        key_id: 0,
        _pad2: 0,
    };

    /// knockd's `flags_match`: every listed flag set, every `!`-listed flag clear.
    #[must_use]
    pub const fn flags_match(&self, tcp_flags: u8) -> bool {
        tcp_flags & self.flags_set == self.flags_set && tcp_flags & self.flags_clear == 0
    }

    /// Step `i`, if the sequence has one.
    #[must_use]
    pub fn step_at(&self, i: u8) -> Option<Step> {
        // User space never writes `len > MAX_STEPS`. The index is masked rather than
        // compared with MAX_STEPS: a compare lets LLVM drop the bound on the register it
        // actually indexes with, and the BPF verifier then rejects the load. With the mask,
        // even a corrupt `len` can only select a wrong step, never read out of bounds.
        if i >= self.len {
            return None;
        }
        Some(self.steps[usize::from(i) & (MAX_STEPS - 1)])
    }

    /// Gate port `i`, if the door has one (masked index: see `step_at`).
    #[must_use]
    pub fn gate_at(&self, i: usize) -> Option<Step> {
        if i >= usize::from(self.gate_len) {
            return None;
        }
        Some(self.gate[i & (MAX_GATE_PORTS - 1)])
    }

    /// Whether a knock of this protocol passes the door's flag filter (UDP always does).
    #[must_use]
    pub const fn accepts_flags(&self, proto: u8, tcp_flags: u8) -> bool {
        proto != PROTO_TCP || self.flags_match(tcp_flags)
    }
}

/// One slot of the `PORTS` array: which door slots a (protocol, port) matters to. Aligned
/// to 8 so that the XDP program tests both masks with one load.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortDoors {
    /// Doors whose sequence names this port.
    pub knock: u32,
    /// Doors whose completion opens this port (it is gated).
    pub gate: u32,
}
const _: () = assert!(core::mem::size_of::<PortDoors>() == 8);

/// The one slot of the `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Slots of `DOORS` to walk, from 0 (unused slots within have `len == 0`).
    pub slots: u32,
    /// Non-zero when some door gates a port: frames that cannot be parsed are then dropped.
    pub gating: u32,
    /// Door slots whose knock packets are dropped (stealth).
    pub stealth_mask: u32,
    /// Sets in `PROGRESS`, minus one (the count is a power of two).
    pub progress_mask: u32,
    /// Sets in `FIRST_KNOCKS`, minus one.
    pub first_mask: u32,
    /// Door slots that are secret doors.
    pub secret_mask: u32,
    pub _pad: [u32; 2],
    /// Stage events per CPU (knock steps reported to user space).
    pub stage_events: Rate,
    /// Secret key of the attempt tables' hash (`SlotKey`), drawn at load time.
    pub hash_key: u64,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 56);

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), integers and byte arrays only, size asserted (no implicit padding).
    unsafe impl aya::Pod for super::Step {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DoorSpec {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortDoors {}
}
