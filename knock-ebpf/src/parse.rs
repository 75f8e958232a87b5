//! Frame parsing: Ethernet (up to two VLAN tags), IPv4 (IHL honoured), IPv6 (extension
//! headers walked, bounded), then the TCP or UDP destination port.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use knock_common::{AddrKey, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// VLAN tags followed (802.1ad outer + 802.1Q inner).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up.
pub(crate) const MAX_EXT_HEADERS: usize = 6;
/// Bytes of a VLAN tag: TCI then the next ethertype.
const VLAN_LEN: usize = 4;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// Why a frame was not parsed to the end.
pub(crate) enum Skip {
    /// Not TCP or UDP (other protocol, non-IP), or a non-first fragment, whose datagram
    /// cannot be reassembled without the first fragment, which carries the ports: pass it.
    NotKnock,
    /// Truncated or malformed where we needed to read, or a header chain deeper than we
    /// follow: it could hide a port, so it is dropped while any gate is configured.
    Malformed,
}

/// A TCP or UDP packet, parsed as far as its ports. Addresses are read only for the packets
/// that need them (`addresses`): building address keys is most of the cost of a packet.
pub(crate) struct Parsed {
    /// Offset of the IP header.
    pub(crate) l3: usize,
    pub(crate) v6: bool,
    pub(crate) proto: u8,
    pub(crate) dport: u16,
    pub(crate) tcp_flags: u8,
    /// The first fragment of a fragmented datagram: never a knock, but gated like any packet.
    pub(crate) fragment: bool,
}

/// What the matcher needs of a knock packet.
pub(crate) struct Packet {
    pub(crate) src: AddrKey,
    pub(crate) dst: AddrKey,
    pub(crate) proto: u8,
    pub(crate) dport: u16,
    pub(crate) tcp_flags: u8,
    pub(crate) fragment: bool,
}

/// Source and destination of a parsed packet.
#[inline(always)]
pub(crate) fn addresses(ctx: &XdpContext, p: &Parsed) -> Result<Packet, Skip> {
    let (src, dst) = if p.v6 {
        let ip = ptr_at::<Ipv6Hdr>(ctx, p.l3)?;
        // SAFETY: ptr_at checked the whole fixed header; all fields are byte arrays.
        let ip = unsafe { &*ip };
        (AddrKey::v6(ip.src_addr), AddrKey::v6(ip.dst_addr))
    } else {
        let ip = ptr_at::<Ipv4Hdr>(ctx, p.l3)?;
        // SAFETY: as above.
        let ip = unsafe { &*ip };
        (AddrKey::v4(ip.src_addr), AddrKey::v4(ip.dst_addr))
    };
    Ok(Packet { src, dst, proto: p.proto, dport: p.dport, tcp_flags: p.tcp_flags, fragment: p.fragment })
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Skip> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Skip::Malformed);
    }
    Ok((start + offset) as *const T)
}

/// The first two bytes of an extension header: next header and length.
/// (Two bytes, not one: for a one-byte read LLVM rewrites the bound check into a form
/// the verifier draws no packet range from.)
#[inline(always)]
fn read_pair(ctx: &XdpContext, offset: usize) -> Result<[u8; 2], Skip> {
    // SAFETY: ptr_at checked both bytes; [u8; 2] has alignment 1.
    Ok(unsafe { *ptr_at::<[u8; 2]>(ctx, offset)? })
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Result<u16, Skip> {
    // SAFETY: ptr_at checked both bytes; [u8; 2] has alignment 1.
    Ok(u16::from_be_bytes(unsafe { *ptr_at::<[u8; 2]>(ctx, offset)? }))
}

#[inline(always)]
pub(crate) fn parse(ctx: &XdpContext) -> Result<Parsed, Skip> {
    let mut off = EthHdr::LEN;
    // The ethertype sits in the last two bytes of the Ethernet header, or of each VLAN tag.
    let mut ether_type = read_be16(ctx, off - 2)?;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        off += VLAN_LEN;
        ether_type = read_be16(ctx, off - 2)?;
    }
    match ether_type {
        ETH_P_IPV4 => parse_v4(ctx, off),
        ETH_P_IPV6 => parse_v6(ctx, off),
        // A third VLAN tag: a stack deeper than we follow.
        ETH_P_8021Q | ETH_P_8021AD => Err(Skip::Malformed),
        _ => Err(Skip::NotKnock),
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, off: usize) -> Result<Parsed, Skip> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, off)?;
    // SAFETY: ptr_at checked the whole fixed header; all fields are byte arrays.
    let ip = unsafe { &*ip };
    let ihl = usize::from(ip.ihl());
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Skip::Malformed);
    }
    // A non-first fragment has no L4 header; the first one (offset 0) carries the ports.
    if ip.frag_offset() != 0 {
        return Err(Skip::NotKnock);
    }
    let fragment = ip.frag_flags() & 0x1 != 0;
    let (dport, tcp_flags) = parse_l4(ctx, off + ihl, ip.proto)?;
    Ok(Parsed { l3: off, v6: false, proto: ip.proto, dport, tcp_flags, fragment })
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, off: usize) -> Result<Parsed, Skip> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, off)?;
    // SAFETY: ptr_at checked the whole fixed header; all fields are byte arrays.
    let ip = unsafe { &*ip };
    let mut next = ip.next_hdr;
    let mut l4 = off + Ipv6Hdr::LEN;
    let mut fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let [nh, len] = read_pair(ctx, l4)?;
                next = nh;
                l4 += (usize::from(len) + 1) * 8;
            }
            IPPROTO_AH => {
                let [nh, len] = read_pair(ctx, l4)?;
                next = nh;
                l4 += (usize::from(len) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                // next header, reserved, then offset (13 bits) and flags.
                let [nh, _] = read_pair(ctx, l4)?;
                let offset = read_be16(ctx, l4 + 2)? >> 3;
                if offset != 0 {
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
    let (dport, tcp_flags) = parse_l4(ctx, l4, next)?;
    Ok(Parsed { l3: off, v6: true, proto: next, dport, tcp_flags, fragment })
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, off: usize, proto: u8) -> Result<(u16, u8), Skip> {
    // Keeps the offset provably small for the verifier (headers before L4 are < 1 KiB).
    if off > 1024 {
        return Err(Skip::Malformed);
    }
    match proto {
        PROTO_TCP => {
            let tcp = ptr_at::<TcpHdr>(ctx, off)?;
            // SAFETY: ptr_at checked the whole fixed header.
            let tcp = unsafe { &*tcp };
            let flags = (tcp.fin() | tcp.syn() << 1 | tcp.rst() << 2 | tcp.psh() << 3 | tcp.ack() << 4 | tcp.urg() << 5) as u8;
            Ok((u16::from_be_bytes(tcp.dest), flags))
        }
        PROTO_UDP => {
            let udp = ptr_at::<UdpHdr>(ctx, off)?;
            // SAFETY: ptr_at checked the whole header.
            Ok((unsafe { (*udp).dst_port() }, 0))
        }
        _ => Err(Skip::NotKnock),
    }
}
