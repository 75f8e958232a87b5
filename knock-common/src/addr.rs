//! Address keys. Addresses are network-order bytes; IPv4 fills the first four.

/// Address family tag stored next to an address.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4 = 4,
    V6 = 6,
}

/// Key of `LOCAL_ADDRS`: one address of this host.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: [u8; 16],
    /// `Family as u8`.
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

impl AddrKey {
    #[must_use]
    pub const fn v4(octets: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[0] = octets[0];
        addr[1] = octets[1];
        addr[2] = octets[2];
        addr[3] = octets[3];
        Self { addr, family: Family::V4 as u8, _pad: [0; 3] }
    }

    #[must_use]
    pub const fn v6(octets: [u8; 16]) -> Self {
        Self { addr: octets, family: Family::V6 as u8, _pad: [0; 3] }
    }

    /// True when this key and a door target hold the same address.
    #[must_use]
    pub fn same_addr(&self, family: u8, addr: &[u8; 16]) -> bool {
        self.family == family && self.addr == *addr
    }
}

/// Key of `PROGRESS`: one knocker's attempt at one door.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProgressKey {
    pub addr: [u8; 16],
    pub family: u8,
    /// Door slot in `DOORS`.
    pub door: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<ProgressKey>() == 20);

impl ProgressKey {
    #[must_use]
    pub const fn new(src: &AddrKey, door: u8) -> Self {
        Self { addr: src.addr, family: src.family, door, _pad: [0; 2] }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), only integers and byte arrays, no implicit padding (size asserted).
    unsafe impl aya::Pod for super::AddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProgressKey {}
}
