//! Crafted Ethernet frames for `Xdp::test_run` and for injection. The IPv4 header and TCP/UDP
//! checksums are right (the program does not look at them, but a frame injected into a
//! namespace goes on to the kernel's stack, which drops a bad one before any firewall rule).

use std::net::IpAddr;

use knock_common::{PROTO_TCP, PROTO_UDP, TcpFlags};

pub const SYN: u8 = TcpFlags::SYN;
pub const ACK: u8 = TcpFlags::ACK;

/// A frame under construction: L2 header, optional VLAN tags, L3, L4.
#[derive(Clone, Debug)]
pub struct FrameBuilder {
    vlans: Vec<u16>,
    src: IpAddr,
    dst: IpAddr,
    ip_options: usize,
    v6_ext: Vec<u8>,
    /// Fragment offset (8-byte units) and more-fragments flag, IPv4 header or IPv6 header 44.
    frag: (u16, bool),
    l4: L4,
}

#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp { dport: u16, flags: u8 },
    Udp { dport: u16 },
    Other(u8),
}

impl FrameBuilder {
    fn new(src: &str, dst: &str, l4: L4) -> Self {
        Self {
            vlans: Vec::new(),
            src: src.parse().expect("test address"),
            dst: dst.parse().expect("test address"),
            ip_options: 0,
            v6_ext: Vec::new(),
            frag: (0, false),
            l4,
        }
    }

    #[must_use]
    pub fn tcp(src: &str, dst: &str, dport: u16, flags: u8) -> Self {
        Self::new(src, dst, L4::Tcp { dport, flags })
    }

    #[must_use]
    pub fn udp(src: &str, dst: &str, dport: u16) -> Self {
        Self::new(src, dst, L4::Udp { dport })
    }

    #[must_use]
    pub fn proto(src: &str, dst: &str, proto: u8) -> Self {
        Self::new(src, dst, L4::Other(proto))
    }

    /// Adds an 802.1Q tag (the first call gives the outer tag, as 802.1ad).
    #[must_use]
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push(id);
        self
    }

    /// IPv4 options of `words` 4-byte words (NOPs).
    #[must_use]
    pub fn ip_options(mut self, words: usize) -> Self {
        self.ip_options = words;
        self
    }

    /// Marks the datagram a fragment: IPv4 header fields, or an IPv6 fragment header (44) if
    /// one is among the extension headers.
    #[must_use]
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        self.frag = (offset, more);
        self
    }

    /// IPv6 extension headers, by protocol number, in order (8 bytes each).
    #[must_use]
    pub fn v6_ext(mut self, headers: &[u8]) -> Self {
        self.v6_ext.extend_from_slice(headers);
        self
    }

    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        let l3_type: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86DD };
        for (i, id) in self.vlans.iter().enumerate() {
            let tpid: u16 = if i == 0 && self.vlans.len() > 1 { 0x88A8 } else { 0x8100 };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&l3_type.to_be_bytes());
        let mut l4 = self.l4_bytes();
        let proto = match self.l4 {
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp { .. } => PROTO_UDP,
            L4::Other(p) => p,
        };
        // The pseudo-header: addresses, protocol, length.
        let mut pseudo = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => [s.octets(), d.octets()].concat(),
            (s, d) => [ip6(s), ip6(d)].concat(),
        };
        pseudo.extend_from_slice(&u32::try_from(l4.len()).expect("small frame").to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
        let at = match self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp { .. } => Some(6),
            L4::Other(_) => None,
        };
        if let Some(at) = at {
            let sum = checksum(&[pseudo, l4.clone()].concat());
            // UDP sends a computed 0 as all ones (0 means no checksum).
            let sum = if sum == 0 && proto == PROTO_UDP { 0xffff } else { sum };
            l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ihl = 5 + self.ip_options;
                let total = u16::try_from(ihl * 4 + l4.len()).expect("small frame");
                f.push(0x40 | u8::try_from(ihl).expect("ihl"));
                f.push(0);
                f.extend_from_slice(&total.to_be_bytes());
                let frag = if self.frag == (0, false) {
                    0x4000
                } else {
                    (self.frag.0 & 0x1fff) | (u16::from(self.frag.1) << 13)
                };
                f.extend_from_slice(&[0, 1]);
                f.extend_from_slice(&frag.to_be_bytes());
                f.extend_from_slice(&[64, proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend(std::iter::repeat_n(1u8, self.ip_options * 4));
                let header = f.len() - ihl * 4;
                let sum = checksum(&f[header..]);
                f[header + 10..header + 12].copy_from_slice(&sum.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let first = self.v6_ext.first().copied().unwrap_or(proto);
                let payload = u16::try_from(self.v6_ext.len() * 8 + l4.len()).expect("small frame");
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&payload.to_be_bytes());
                f.push(first);
                f.push(64);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                for (i, &kind) in self.v6_ext.iter().enumerate() {
                    let next = self.v6_ext.get(i + 1).copied().unwrap_or(proto);
                    if kind == 44 {
                        // Fragment header: next, reserved, offset << 3 | M, identification.
                        let off = (self.frag.0 << 3) | u16::from(self.frag.1);
                        f.extend_from_slice(&[next, 0]);
                        f.extend_from_slice(&off.to_be_bytes());
                        f.extend_from_slice(&[0, 0, 0, 1]);
                    } else {
                        // 8 bytes: next header, length 0 (8-byte units beyond the first 8), PadN.
                        f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                    }
                }
            }
            _ => panic!("mixed address families"),
        }
        f.extend_from_slice(&l4);
        f
    }

    fn l4_bytes(&self) -> Vec<u8> {
        match self.l4 {
            L4::Tcp { dport, flags } => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&40000u16.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = flags;
                t[14..16].copy_from_slice(&64240u16.to_be_bytes());
                t
            }
            L4::Udp { dport } => {
                let mut u = vec![0u8; 9];
                u[0..2].copy_from_slice(&40000u16.to_be_bytes());
                u[2..4].copy_from_slice(&dport.to_be_bytes());
                u[4..6].copy_from_slice(&9u16.to_be_bytes());
                u
            }
            L4::Other(_) => vec![0u8; 8],
        }
    }
}

/// An IPv6 address's bytes (an IPv4 one mapped, for the mixed families `build` refuses).
fn ip6(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V6(a) => a.octets().to_vec(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets().to_vec(),
    }
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        for f in [
            FrameBuilder::tcp("198.19.12.34", "198.18.0.1", 7000, SYN),
            FrameBuilder::udp("198.18.0.2", "198.18.0.1", 53),
        ] {
            let f = f.build();
            assert_eq!(checksum(&f[14..34]), 0, "IPv4 header");
            let pseudo = [&f[26..34], &[0, f[23]], &u16::try_from(f.len() - 34).unwrap().to_be_bytes()].concat();
            assert_eq!(checksum(&[&pseudo[..], &f[34..]].concat()), 0, "TCP/UDP");
        }
        let f = FrameBuilder::tcp("2001:db8::2", "2001:db8::1", 7000, SYN).build();
        let pseudo = [&f[22..54], &u32::try_from(f.len() - 54).unwrap().to_be_bytes(), &[0, 0, 0, 6]].concat();
        assert_eq!(checksum(&[&pseudo[..], &f[54..]].concat()), 0, "IPv6 TCP");
    }
}
