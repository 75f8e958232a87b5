//! The in-kernel gate: which packets to a gated port are let through.

use crate::{PROTO_TCP, PROTO_UDP, TcpFlags};

/// Key of `ALLOW`: a source allowed to open connections to one gated port.
// Aligned to 4 so that building one on the BPF stack is a few word stores, not a
// byte-wise memset call per field (the layout and size are unchanged).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllowKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub proto: u8,
    /// Host order.
    pub port: u16,
}
const _: () = assert!(core::mem::size_of::<AllowKey>() == 20);

/// A packet that would start a connection: a TCP SYN without ACK, or any UDP datagram.
/// Everything else to a gated port (segments of established connections) passes, so an
/// open connection outlives its allowance.
#[must_use]
pub const fn is_new_connection(proto: u8, tcp_flags: u8) -> bool {
    match proto {
        PROTO_TCP => tcp_flags & TcpFlags::SYN != 0 && tcp_flags & TcpFlags::ACK == 0,
        PROTO_UDP => true,
        _ => false,
    }
}

/// Whether a new connection passes, given the source's allowance (`ktime` it ends at).
#[must_use]
pub const fn gate_passes(allowed_until: Option<u64>, now_ns: u64) -> bool {
    match allowed_until {
        Some(until) => now_ns < until,
        None => false,
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays, size asserted (no implicit padding).
unsafe impl aya::Pod for AllowKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_connections() {
        assert!(is_new_connection(PROTO_TCP, TcpFlags::SYN));
        assert!(is_new_connection(PROTO_TCP, TcpFlags::SYN | TcpFlags::PSH));
        assert!(!is_new_connection(PROTO_TCP, TcpFlags::SYN | TcpFlags::ACK));
        assert!(!is_new_connection(PROTO_TCP, TcpFlags::ACK));
        assert!(!is_new_connection(PROTO_TCP, TcpFlags::RST));
        assert!(is_new_connection(PROTO_UDP, 0));
        assert!(!is_new_connection(1, 0));
    }

    #[test]
    fn allowance_expires() {
        assert!(!gate_passes(None, 5));
        assert!(gate_passes(Some(10), 9));
        assert!(!gate_passes(Some(10), 10));
        assert!(!gate_passes(Some(10), 11));
    }
}
