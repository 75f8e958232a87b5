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

    /// A key from an address as four words of network-order bytes, as read from a packet (an
    /// IPv4 address fills the first word, the rest are zero). Built from words because on BPF
    /// a `[u8; 16]` initialiser costs byte-wise memset calls.
    #[must_use]
    pub const fn from_words(words: [u32; 4], family: Family) -> Self {
        let tail = u32::from_ne_bytes([family as u8, 0, 0, 0]);
        // SAFETY: `AddrKey` is repr(C), 20 bytes with no implicit padding, 4-aligned, and any
        // bit pattern is a valid value: the same memory as five `u32`s.
        unsafe { core::mem::transmute::<[u32; 5], Self>([words[0], words[1], words[2], words[3], tail]) }
    }

    /// True when this key and a door target hold the same address.
    #[must_use]
    pub fn same_addr(&self, family: u8, addr: &[u8; 16]) -> bool {
        self.family == family && self.addr == *addr
    }
}

/// Most addresses of the interface that knocks are matched against; knocks to any further
/// address are not counted (the daemon warns).
pub const MAX_LOCAL_ADDRS: usize = 64;

/// The one slot of `LOCAL_ADDRS`: this host's addresses on the interface. An array scanned in
/// the program, not a hash map: a hash lookup costs more than comparing a few addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalAddrs {
    /// Entries of `addrs` in use.
    pub count: u32,
    pub addrs: [AddrKey; MAX_LOCAL_ADDRS],
}
const _: () = assert!(core::mem::size_of::<LocalAddrs>() == 4 + 20 * MAX_LOCAL_ADDRS);

impl LocalAddrs {
    pub const EMPTY: Self = Self { count: 0, addrs: [AddrKey::from_words([0; 4], Family::V4); MAX_LOCAL_ADDRS] };

    /// Whether `dst` is one of the addresses.
    #[must_use]
    #[expect(clippy::inline_always, reason = "the XDP program's hot path; BPF calls cost a stack frame each")]
    #[inline(always)]
    pub fn contains(&self, dst: &AddrKey) -> bool {
        let mut i = 0;
        // A counted loop the BPF verifier can bound; `count` is never above the capacity.
        while i < MAX_LOCAL_ADDRS {
            if i >= self.count as usize {
                return false;
            }
            if self.addrs[i] == *dst {
                return true;
            }
            i += 1;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_words_match_keys_from_bytes() {
        let v4 = [198, 18, 0, 2];
        assert_eq!(AddrKey::from_words([u32::from_ne_bytes(v4), 0, 0, 0], Family::V4), AddrKey::v4(v4));
        let v6: [u8; 16] = core::array::from_fn(|i| 0x20 + u8::try_from(i).unwrap());
        let words: [u32; 4] =
            core::array::from_fn(|i| u32::from_ne_bytes([v6[4 * i], v6[4 * i + 1], v6[4 * i + 2], v6[4 * i + 3]]));
        assert_eq!(AddrKey::from_words(words, Family::V6), AddrKey::v6(v6));
    }

    #[test]
    fn local_addrs_match_only_the_addresses_in_use() {
        let mut local = LocalAddrs::EMPTY;
        let a = AddrKey::v4([198, 18, 0, 1]);
        let b = AddrKey::v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        local.addrs[0] = a;
        local.addrs[1] = b;
        assert!(!local.contains(&a), "count 0: nothing is local");
        local.count = 2;
        assert!(local.contains(&a) && local.contains(&b));
        // Same bytes, other family: not the same address.
        assert!(!local.contains(&AddrKey { family: Family::V6 as u8, ..a }));
        assert!(!local.contains(&AddrKey::from_words([0; 4], Family::V4)), "unused slots never match");
        local.count = u32::MAX;
        assert!(!local.contains(&AddrKey::v4([198, 18, 0, 9])), "a corrupt count stays in bounds");
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), only integers and byte arrays, no implicit padding (size asserted).
    unsafe impl aya::Pod for super::AddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocalAddrs {}
}
