//! Frame parsing: Ethernet (up to two VLAN tags), IPv4 (IHL honoured), IPv6 (extension
//! headers walked, bounded), then the TCP or UDP destination port.
//!
//! This runs for every frame on the interface, so it reads each field it needs with one load
//! and compares in network order. Every 16-bit field read here sits at an even offset (all
//! header lengths are even), and frame data starts 2-aligned at either hook.

#![expect(clippy::cast_ptr_alignment, reason = "16-bit fields at even offsets of 2-aligned frame data; see above")]

use core::mem::size_of;

use knock_common::{AddrKey, Family, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::hook::Hook;

/// Ethertypes as they read from the frame with a native (little-endian) 16-bit load.
const ETH_P_IPV4: u16 = 0x0800_u16.to_be();
const ETH_P_IPV6: u16 = 0x86DD_u16.to_be();
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();
const ETH_P_8021AD: u16 = 0x88A8_u16.to_be();
/// IPv4 fragment offset bits, and the more-fragments flag, as read with a native load.
const IPV4_FRAG_OFFSET: u16 = 0x1FFF_u16.to_be();
const IPV4_MORE_FRAGS: u16 = 0x2000_u16.to_be();
/// Bytes of a VLAN tag: TCI then the next ethertype.
const VLAN_LEN: usize = 4;
/// IPv6 extension headers walked before giving up.
pub(crate) const MAX_EXT_HEADERS: usize = 6;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// Why a frame was not parsed to the end.
pub(crate) enum Skip {
    /// Not TCP or UDP (other protocol, non-IP), a non-first fragment, whose datagram
    /// cannot be reassembled without the first fragment, which carries the ports, or a port
    /// that no door names or gates: pass it.
    NotKnock,
    /// Truncated or malformed where we needed to read, or a header chain deeper than we
    /// follow: it could hide a port, so it is dropped while any gate is configured.
    Malformed,
}

/// A TCP or UDP packet, parsed as far as its ports. Addresses are read only for the packets
/// that need them (`addresses`).
///
/// One packed word, not a struct of fields: it stays in one register across the port-table
/// lookup, which is a call to LLVM (it clobbers five registers) though the verifier inlines
/// it. As several fields they were spilled to the stack on every frame, or parsed again.
#[derive(Clone, Copy)]
pub(crate) struct Parsed(u64);

#[expect(clippy::cast_possible_truncation, reason = "unpacking the fields of the packed word")]
impl Parsed {
    const PROTO: u32 = 16;
    const FLAGS: u32 = 24;
    const FRAGMENT: u64 = 1 << 32;
    const V6: u64 = 1 << 33;
    /// The top byte: a right shift alone leaves a value below 256 that every verifier bounds.
    /// Lower down (bits 40..48 and a mask), LLVM drops the mask it can prove redundant, and
    /// Linux 6.1's verifier, seeing a 24-bit offset, refuses the packet access it guards.
    const L3: u32 = 56;

    #[inline(always)]
    fn new(l3: usize, v6: bool, proto: u8, dport: u16, tcp_flags: u8, fragment: bool) -> Self {
        Self(
            u64::from(dport)
                | u64::from(proto) << Self::PROTO
                | u64::from(tcp_flags) << Self::FLAGS
                | if fragment { Self::FRAGMENT } else { 0 }
                | if v6 { Self::V6 } else { 0 }
                // The IP header starts within two VLAN tags of the frame start.
                | (l3 as u64) << Self::L3,
        )
    }

    /// Destination port, host order.
    #[inline(always)]
    pub(crate) const fn dport(self) -> u16 {
        self.0 as u16
    }

    #[inline(always)]
    pub(crate) const fn proto(self) -> u8 {
        (self.0 >> Self::PROTO) as u8
    }

    /// TCP flags (0 for UDP).
    #[inline(always)]
    pub(crate) const fn tcp_flags(self) -> u8 {
        (self.0 >> Self::FLAGS) as u8
    }

    /// The first fragment of a fragmented datagram: never a knock, but gated like any packet.
    #[inline(always)]
    pub(crate) const fn fragment(self) -> bool {
        self.0 & Self::FRAGMENT != 0
    }

    #[inline(always)]
    const fn v6(self) -> bool {
        self.0 & Self::V6 != 0
    }

    /// Offset of the IP header.
    #[inline(always)]
    const fn l3(self) -> usize {
        (self.0 >> Self::L3) as usize
    }
}

/// Source and destination address of a parsed packet.
#[inline(always)]
pub(crate) fn addresses(ctx: &impl Hook, p: Parsed) -> Result<(AddrKey, AddrKey), Skip> {
    if p.v6() {
        // SAFETY: `ptr_at` checked the whole fixed header.
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, p.l3())? };
        Ok((key(Family::V6, &ip.src_addr), key(Family::V6, &ip.dst_addr)))
    } else {
        // SAFETY: as above.
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, p.l3())? };
        Ok((key(Family::V4, &ip.src_addr), key(Family::V4, &ip.dst_addr)))
    }
}

/// An address key built from 16-bit loads: the address sits at an even offset (see the module
/// comment), and a 32-bit read of it, not 4-aligned, would make LLVM load it byte by byte.
#[inline(always)]
fn key<const N: usize>(family: Family, addr: &[u8; N]) -> AddrKey {
    let halves = addr.as_ptr().cast::<u16>();
    let mut words = [0u32; 4];
    for (i, w) in words.iter_mut().enumerate().take(N / 4) {
        // SAFETY: `i * 4 + 4 <= N`; 2-aligned as above.
        let (a, b) = unsafe { (u32::from(*halves.add(i * 2)), u32::from(*halves.add(i * 2 + 1))) };
        // The bytes in memory order, as `u32::from_ne_bytes` would read them.
        *w = if cfg!(target_endian = "little") { a | b << 16 } else { a << 16 | b };
    }
    AddrKey::from_words(words, family)
}

#[inline(always)]
fn ptr_at<T>(ctx: &impl Hook, offset: usize) -> Result<*const T, Skip> {
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + size_of::<T>() > end {
        return Err(Skip::Malformed);
    }
    Ok((start + offset) as *const T)
}

/// A 16-bit field, as stored (network order). Two bytes, not one: for a one-byte read LLVM
/// rewrites the bound check into a form the verifier draws no packet range from.
#[inline(always)]
fn raw16(ctx: &impl Hook, offset: usize) -> Result<u16, Skip> {
    // SAFETY: `ptr_at` checked both bytes; the offset is even (see the module comment).
    Ok(unsafe { *ptr_at::<u16>(ctx, offset)? })
}

/// `parse` for the most common frame, untagged IPv4 (the ethertype already read), the shortest
/// way: without IP options, not a later fragment, with a whole TCP or UDP header, all at
/// constant offsets. `None` for any other frame, which `parse_v4` then reads in full; for
/// the frames this accepts, it would return the same.
#[inline(always)]
fn plain_v4(ctx: &impl Hook, listed: impl Fn(u8, u16, u8) -> bool) -> Option<Result<Parsed, Skip>> {
    const IP: usize = EthHdr::LEN;
    const L4: usize = IP + Ipv4Hdr::LEN;
    let (start, end) = (ctx.start(), ctx.end());
    if start + L4 + UdpHdr::LEN > end {
        return None;
    }
    let p = start as *const u8;
    // SAFETY: the bytes up to the end of a UDP header were checked above; every 16-bit field
    // is at an even offset (see the module comment).
    let (vihl, frags, proto, dport) =
        unsafe { (*p.add(IP), *p.add(IP + 6).cast::<u16>(), *p.add(IP + 9), *p.add(L4 + 2).cast::<u16>()) };
    // Version 4, header length 5 words.
    if vihl != 0x45 || frags & IPV4_FRAG_OFFSET != 0 {
        return None;
    }
    let tcp_flags = match proto {
        PROTO_TCP if start + L4 + TcpHdr::LEN <= end => {
            // SAFETY: the whole TCP header was checked just above; the flags are at 13.
            unsafe { *p.add(L4 + 13) & 0x3f }
        }
        PROTO_UDP => 0,
        // Other protocols, and a TCP header cut short: `parse` says which it is.
        _ => return None,
    };
    let dport = u16::from_be(dport);
    if !listed(proto, dport, tcp_flags) {
        return Some(Err(Skip::NotKnock));
    }
    Some(Ok(Parsed::new(IP, false, proto, dport, tcp_flags, frags & IPV4_MORE_FRAGS != 0)))
}

#[inline(always)]
pub(crate) fn parse(ctx: &impl Hook, listed: impl Fn(u8, u16, u8) -> bool + Copy) -> Result<Parsed, Skip> {
    // Only packets to a port some door names or gates (or, with secret doors, every new
    // packet) go further than this.
    let listed_only = |parsed: Parsed| {
        if listed(parsed.proto(), parsed.dport(), parsed.tcp_flags()) { Ok(parsed) } else { Err(Skip::NotKnock) }
    };
    // The ethertype sits in the last two bytes of the Ethernet header, or of each VLAN tag.
    let mut off = EthHdr::LEN;
    let mut ether_type = raw16(ctx, off - 2)?;
    // Untagged IPv4 first: the most common frame takes the shortest path.
    if ether_type == ETH_P_IPV4 {
        if let Some(parsed) = plain_v4(ctx, listed) {
            return parsed;
        }
        return parse_v4(ctx, EthHdr::LEN).and_then(listed_only);
    }
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        off += VLAN_LEN;
        ether_type = raw16(ctx, off - 2)?;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            off += VLAN_LEN;
            ether_type = raw16(ctx, off - 2)?;
        }
    }
    match ether_type {
        ETH_P_IPV4 => parse_v4(ctx, off).and_then(listed_only),
        ETH_P_IPV6 => parse_v6(ctx, off).and_then(listed_only),
        // A third VLAN tag: a stack deeper than we follow.
        ETH_P_8021Q | ETH_P_8021AD => Err(Skip::Malformed),
        _ => Err(Skip::NotKnock),
    }
}

#[inline(always)]
fn parse_v4(ctx: &impl Hook, off: usize) -> Result<Parsed, Skip> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, off)?;
    // SAFETY: `ptr_at` checked the whole fixed header; `frags` is at an even offset.
    let (vihl, frags, proto) = unsafe { ((*ip).vihl, *(&raw const (*ip).frags).cast::<u16>(), (*ip).proto) };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Skip::Malformed);
    }
    // A non-first fragment has no L4 header; the first one (offset 0) carries the ports.
    if frags & IPV4_FRAG_OFFSET != 0 {
        return Err(Skip::NotKnock);
    }
    let (dport, tcp_flags) = parse_l4(ctx, off + ihl, proto)?;
    Ok(Parsed::new(off, false, proto, dport, tcp_flags, frags & IPV4_MORE_FRAGS != 0))
}

#[inline(always)]
fn parse_v6(ctx: &impl Hook, off: usize) -> Result<Parsed, Skip> {
    // SAFETY: `ptr_at` checked the whole fixed header.
    let mut next = unsafe { (*ptr_at::<Ipv6Hdr>(ctx, off)?).next_hdr };
    let mut l4 = off + Ipv6Hdr::LEN;
    let mut fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let [nh, len] = raw16(ctx, l4)?.to_ne_bytes();
                next = nh;
                l4 += (usize::from(len) + 1) * 8;
            }
            IPPROTO_AH => {
                let [nh, len] = raw16(ctx, l4)?.to_ne_bytes();
                next = nh;
                l4 += (usize::from(len) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                // next header, reserved, then offset (13 bits) and flags.
                let [nh, _] = raw16(ctx, l4)?.to_ne_bytes();
                if u16::from_be(raw16(ctx, l4 + 2)?) >> 3 != 0 {
                    return Err(Skip::NotKnock);
                }
                fragment = true;
                next = nh;
                l4 += 8;
            }
            _ => break,
        }
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        // Still an extension header after MAX_EXT_HEADERS is a chain we do not follow.
        return match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => Err(Skip::Malformed),
            _ => Err(Skip::NotKnock),
        };
    }
    // Keeps the offset provably small for the verifier (headers before L4 are < 1 KiB).
    if l4 > 1024 {
        return Err(Skip::Malformed);
    }
    let (dport, tcp_flags) = parse_l4(ctx, l4, next)?;
    Ok(Parsed::new(off, true, next, dport, tcp_flags, fragment))
}

/// Destination port (host order) and TCP flags (0 for UDP).
#[inline(always)]
fn parse_l4(ctx: &impl Hook, off: usize, proto: u8) -> Result<(u16, u8), Skip> {
    match proto {
        PROTO_TCP => {
            let tcp = ptr_at::<TcpHdr>(ctx, off)?.cast::<u8>();
            // SAFETY: `ptr_at` checked the whole fixed header: the port at 2, the flags at 13.
            let (dport, flags) = unsafe { (*tcp.add(2).cast::<u16>(), *tcp.add(13)) };
            Ok((u16::from_be(dport), flags & 0x3f))
        }
        PROTO_UDP => {
            let udp = ptr_at::<UdpHdr>(ctx, off)?.cast::<u8>();
            // SAFETY: `ptr_at` checked the whole header.
            Ok((u16::from_be(unsafe { *udp.add(2).cast::<u16>() }), 0))
        }
        _ => Err(Skip::NotKnock),
    }
}
