//! From the parsed config to what the XDP program reads: `DoorSpec`s and the port table.

use std::{collections::BTreeMap, net::IpAddr};

use knock_common::{AddrKey, DoorSpec, Family, GATE_CLOSE, GATE_OPEN, Step, port_slot};

use crate::{
    clock::Clock,
    config::{Door, Gate},
};

/// The kernel form of one door.
#[must_use]
pub fn door_spec(door: &Door, epoch: u32) -> DoorSpec {
    let mut spec = DoorSpec::EMPTY;
    spec.epoch = epoch;
    for (slot, knock) in spec.steps.iter_mut().zip(&door.sequence) {
        *slot = Step::new(knock.proto.number(), knock.port);
    }
    // The parser bounds sequences to MAX_STEPS (32), so this never saturates.
    spec.len = u8::try_from(door.sequence.len()).unwrap_or(u8::MAX);
    spec.timeout_ns = u64::try_from(door.seq_timeout.as_nanos()).unwrap_or(u64::MAX);
    spec.flags_set = door.flags_set;
    spec.flags_clear = door.flags_clear;
    match &door.gate {
        Gate::None => {}
        Gate::Open { ttl, .. } => {
            spec.gate_action = GATE_OPEN;
            spec.gate_ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        }
        Gate::Close { .. } => spec.gate_action = GATE_CLOSE,
    }
    for (slot, port) in spec.gate.iter_mut().zip(door.gate.ports()) {
        *slot = Step::new(port.proto.number(), port.port);
    }
    // The parser bounds gates to MAX_GATE_PORTS (8).
    spec.gate_len = u8::try_from(door.gate.ports().len()).unwrap_or(0);
    spec.stealth = u8::from(door.stealth);
    if let Some(target) = door.target {
        let key = addr_key(target);
        spec.target = key.addr;
        spec.target_family = key.family;
    }
    if let Some(secret) = &door.secret {
        spec.secret = 1;
        spec.secret_proto = secret.params.proto;
        spec.len = secret.params.length;
        spec.key_id = secret.key.id();
        spec.gate_by_daemon = u8::from(secret.fleet_claim);
    }
    spec
}

/// The knock masks of `PORTS`: for each (protocol, port) a sequence names, the mask of door
/// slots. A secret door names the first ports of the windows it accepts at `clock`.
#[must_use]
pub fn port_table<'a>(doors: impl IntoIterator<Item = (u8, &'a Door)>, clock: &Clock) -> BTreeMap<u32, u32> {
    let mut table = BTreeMap::new();
    for (i, door) in doors {
        let mut ports: Vec<(u8, u16)> = door.sequence.iter().map(|k| (k.proto.number(), k.port)).collect();
        if let Some(secret) = &door.secret {
            ports.extend(secret.windows(clock).keys.iter().map(|k| (secret.params.proto, k.first)));
        }
        for (proto, port) in ports {
            if let Some(slot) = port_slot(proto, port) {
                *table.entry(slot).or_insert(0) |= 1u32.checked_shl(u32::from(i)).unwrap_or(0);
            }
        }
    }
    table
}

/// The gate masks of `PORTS`: for each (protocol, port) a door opens, the mask of those doors.
/// Ports only closed by some door are not gated by that alone.
#[must_use]
pub fn gate_table<'a>(doors: impl IntoIterator<Item = (u8, &'a Door)>) -> BTreeMap<u32, u32> {
    let mut table = BTreeMap::new();
    for (i, door) in doors {
        if let Gate::Open { ports, .. } = &door.gate {
            for p in ports {
                if let Some(slot) = port_slot(p.proto.number(), p.port) {
                    *table.entry(slot).or_insert(0) |= 1u32.checked_shl(u32::from(i)).unwrap_or(0);
                }
            }
        }
    }
    table
}

#[must_use]
pub fn addr_key(ip: IpAddr) -> AddrKey {
    match ip {
        IpAddr::V4(v4) => AddrKey::v4(v4.octets()),
        IpAddr::V6(v6) => AddrKey::v6(v6.octets()),
    }
}

/// The address an event carries, back as an `IpAddr`; `None` for an unknown family.
#[must_use]
pub fn event_addr(family: u8, addr: [u8; 16]) -> Option<IpAddr> {
    if family == Family::V4 as u8 {
        Some(IpAddr::from([addr[0], addr[1], addr[2], addr[3]]))
    } else if family == Family::V6 as u8 {
        Some(IpAddr::from(addr))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use knock_common::{PROTO_TCP, PROTO_UDP, TcpFlags};

    use super::*;
    use crate::config::Config;

    #[test]
    fn doors_and_port_table() {
        let c = Config::parse(
            Path::new("t"),
            "[a]\nsequence=7000,8000:udp\nseq_timeout=5\ntcpflags=syn,!ack\ntarget=198.18.0.9\n[b]\nsequence=8000:udp,9000\n",
        )
        .unwrap();
        let a = door_spec(&c.doors[0], 3);
        assert_eq!(a.epoch, 3);
        assert_eq!(a.len, 2);
        assert_eq!(a.steps[0], Step::new(PROTO_TCP, 7000));
        assert_eq!(a.steps[1], Step::new(PROTO_UDP, 8000));
        assert_eq!(a.timeout_ns, 5_000_000_000);
        assert_eq!((a.flags_set, a.flags_clear), (TcpFlags::SYN, TcpFlags::ACK));
        assert_eq!(a.target_family, 4);
        assert_eq!(&a.target[..4], &[198, 18, 0, 9]);
        let t = port_table([(0, &c.doors[0]), (1, &c.doors[1])], &Clock::now());
        assert_eq!(t.get(&7000), Some(&0b01));
        assert_eq!(t.get(&(65536 + 8000)), Some(&0b11));
        assert_eq!(t.get(&9000), Some(&0b10));
        assert_eq!(t.get(&8000), None, "TCP 8000 is no knock");
    }

    #[test]
    fn event_addresses_round_trip() {
        for ip in ["198.18.0.2", "2001:db8::2"] {
            let ip: IpAddr = ip.parse().unwrap();
            let k = addr_key(ip);
            assert_eq!(event_addr(k.family, k.addr), Some(ip));
        }
        assert_eq!(event_addr(0, [0; 16]), None);
    }
}
