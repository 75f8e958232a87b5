//! Sending a knock: one name resolution, then one TCP SYN or UDP datagram per port.

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use knock_common::AddrKey;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::ports::Proto;

/// Hits each port in order (with `delay_ms` between), from `bind` if given.
pub(crate) fn send(ip: IpAddr, hits: &[(u16, Proto)], bind: Option<IpAddr>, delay_ms: u64, verbose: bool) {
    for (i, &(port, proto)) in hits.iter().enumerate() {
        if i > 0 && delay_ms > 0 {
            thread::sleep(Duration::from_millis(delay_ms));
        }
        let addr = SocketAddr::new(ip, port);
        if verbose {
            println!("hitting {} {addr}", proto.name());
        }
        // Like knock 0.8, send errors do not stop the run: a knock is fire-and-forget.
        if let Err(e) = hit(addr, proto, bind) {
            eprintln!("knock: {} {addr}: {e}", proto.name());
        }
    }
}

/// One name resolution for the whole run, so every knock goes to the same address.
pub(crate) fn resolve(host: &str, v4: bool, v6: bool) -> anyhow::Result<IpAddr> {
    let candidates = (host, 0).to_socket_addrs().with_context(|| format!("Failed to resolve hostname '{host}'"))?;
    for a in candidates {
        let ip = a.ip();
        if (v4 && !ip.is_ipv4()) || (v6 && !ip.is_ipv6()) {
            continue;
        }
        return Ok(ip);
    }
    let family = if v4 {
        "IPv4 "
    } else if v6 {
        "IPv6 "
    } else {
        ""
    };
    bail!("Failed to resolve hostname '{host}': no {family}address")
}

pub(crate) fn addr_key(ip: IpAddr) -> AddrKey {
    match ip {
        IpAddr::V4(a) => AddrKey::v4(a.octets()),
        IpAddr::V6(a) => AddrKey::v6(a.octets()),
    }
}

/// The local address the kernel picks to reach `ip` (a UDP socket connected to it sends
/// nothing).
pub(crate) fn local_address_towards(ip: IpAddr) -> anyhow::Result<IpAddr> {
    let any: IpAddr = if ip.is_ipv4() { [0, 0, 0, 0].into() } else { [0u16; 8].into() };
    let s = UdpSocket::bind((any, 0)).context("a UDP socket to find the source address")?;
    s.connect((ip, 9)).with_context(|| format!("no route to {ip}"))?;
    Ok(s.local_addr().context("the source address")?.ip())
}

fn hit(addr: SocketAddr, proto: Proto, bind: Option<IpAddr>) -> std::io::Result<()> {
    let domain = Domain::for_address(addr);
    let bound = |s: Socket| -> std::io::Result<Socket> {
        if let Some(ip) = bind {
            s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
        }
        Ok(s)
    };
    match proto {
        Proto::Tcp => {
            let s = bound(Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?)?;
            s.set_nonblocking(true)?;
            match s.connect(&SockAddr::from(addr)) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(e),
            }
            // Dropping the socket closes it: the kernel has sent exactly one SYN.
        }
        Proto::Udp => {
            let s = bound(Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?)?;
            s.send_to(&[0u8], &SockAddr::from(addr)).map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_respects_the_family() {
        assert_eq!(resolve("198.18.0.1", false, false).unwrap(), "198.18.0.1".parse::<IpAddr>().unwrap());
        assert!(resolve("198.18.0.1", false, true).is_err());
        assert_eq!(resolve("::1", false, true).unwrap(), "::1".parse::<IpAddr>().unwrap());
    }
}
