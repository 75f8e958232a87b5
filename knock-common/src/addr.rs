//! Address keys. Addresses are network-order bytes; IPv4 fills the first four.

/// Address family tag stored next to an address.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4 = 4,
    V6 = 6,
}

/// Key of `LOCAL_ADDRS`: one address of this host.
// Aligned to 4 so that building one on the BPF stack is a few word stores, not a
// byte-wise memset call per field (the layout and size are unchanged).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: [u8; 16],
    /// `Family as u8`.
    pub family: u8,
    // Padding as integers, not byte arrays: zeroing `[u8; N]` at an odd offset makes LLVM
    // emit a byte-wise memset call in BPF on every packet.
    pub _pad0: u8,
    pub _pad1: u16,
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

impl AddrKey {
    #[must_use]
    pub const fn v4(octets: [u8; 4]) -> Self {
        let mut key = Self { addr: [0; 16], family: Family::V4 as u8, _pad0: 0, _pad1: 0 };
        key.addr[0] = octets[0];
        key.addr[1] = octets[1];
        key.addr[2] = octets[2];
        key.addr[3] = octets[3];
        key
    }

    #[must_use]
    pub const fn v6(octets: [u8; 16]) -> Self {
        Self { addr: octets, family: Family::V6 as u8, _pad0: 0, _pad1: 0 }
    }

    /// True when this key and a door target hold the same address.
    #[must_use]
    pub fn same_addr(&self, family: u8, addr: &[u8; 16]) -> bool {
        self.family == family && self.addr == *addr
    }
}

/// Key of `PROGRESS`: one knocker's attempt at one door.
// Aligned to 4 so that building one on the BPF stack is a few word stores, not a
// byte-wise memset call per field (the layout and size are unchanged).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProgressKey {
    pub addr: [u8; 16],
    pub family: u8,
    /// Door slot in `DOORS`.
    pub door: u8,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ProgressKey>() == 20);

impl ProgressKey {
    #[must_use]
    pub const fn new(src: &AddrKey, door: u8) -> Self {
        Self { addr: src.addr, family: src.family, door, _pad: 0 }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), only integers and byte arrays, no implicit padding (size asserted).
    unsafe impl aya::Pod for super::AddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProgressKey {}
}
