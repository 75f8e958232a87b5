//! What the XDP program tells user space, over the `EVENTS` ring buffer.

/// `KnockEvent::kind` values.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A source completed a door's sequence.
    Open = 1,
    /// A source reached `stage` (1-based) of a door; sent within the stage budget only.
    Stage = 2,
}

impl EventKind {
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Open),
            2 => Some(Self::Stage),
            _ => None,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnockEvent {
    /// When the attempt started (`bpf_ktime_get_ns`), to watch its timeout.
    pub started_ns: u64,
    /// The door's epoch: tells an event of a replaced door from one of the current door.
    pub epoch: u32,
    /// Source address, network order.
    pub addr: [u8; 16],
    /// `EventKind as u8`.
    pub kind: u8,
    /// `Family as u8`.
    pub family: u8,
    /// Door slot.
    pub door: u8,
    /// Stage reached (the sequence length for `Open`).
    pub stage: u8,
}
const _: () = assert!(core::mem::size_of::<KnockEvent>() == 32);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays, size asserted (no implicit padding).
unsafe impl aya::Pod for KnockEvent {}
