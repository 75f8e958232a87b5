//! Directive values as both forms spell them (ports, sequences, gate ports, TCP flags, sizes,
//! directories, addresses), each checked with a message that names the value.

use std::{net::SocketAddr, path::PathBuf};

use knock_common::{MAX_GATE_PORTS, MAX_STEPS, TcpFlags};

use crate::config::{Attach, Door, Knock, MAX_MAX_COMMANDS, Proto};

/// Whether a door with `secret_file` is otherwise well formed: no fixed sequence, no stealth.
pub fn secret_door_fits(door: &Door) -> Result<(), String> {
    if !door.sequence.is_empty() {
        let what = if door.one_time.is_some() { "one_time_sequences" } else { "sequence" };
        return Err(format!("door '{}' has both secret_file and {what}", door.name));
    }
    if door.stealth {
        // Its first port changes with every window and may be any port, a real service's too.
        return Err(format!("door '{}': stealth is not available for a door with secret_file", door.name));
    }
    Ok(())
}

/// Applies a `TCPFlags` value (`syn,!ack`; spaces allowed) to a door. knockd semantics:
/// mentions accumulate, and the last mention of a flag wins.
pub fn apply_tcp_flags(door: &mut Door, value: &str) -> Result<(), String> {
    for item in value.split(',') {
        let item = item.trim();
        let (negate, name) = match item.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, item),
        };
        let bit = match name.to_ascii_uppercase().as_str() {
            "FIN" => TcpFlags::FIN,
            "SYN" => TcpFlags::SYN,
            "RST" => TcpFlags::RST,
            "PSH" => TcpFlags::PSH,
            "ACK" => TcpFlags::ACK,
            "URG" => TcpFlags::URG,
            _ => {
                return Err(format!(
                    "unrecognized tcp flag '{item}' (use fin, syn, rst, psh, ack, urg, each optionally with !)"
                ));
            }
        };
        if negate {
            door.flags_set &= !bit;
            door.flags_clear |= bit;
        } else {
            door.flags_clear &= !bit;
            door.flags_set |= bit;
        }
    }
    Ok(())
}

/// The `TCPFlags` value of a door, in the config's own words (`syn,!ack`).
#[must_use]
pub fn tcp_flags_text(door: &Door) -> Vec<String> {
    const NAMES: [(u8, &str); 6] = [
        (TcpFlags::FIN, "fin"),
        (TcpFlags::SYN, "syn"),
        (TcpFlags::RST, "rst"),
        (TcpFlags::PSH, "psh"),
        (TcpFlags::ACK, "ack"),
        (TcpFlags::URG, "urg"),
    ];
    let mut out = Vec::new();
    for (bit, name) in NAMES {
        if door.flags_set & bit != 0 {
            out.push(name.to_owned());
        } else if door.flags_clear & bit != 0 {
            out.push(format!("!{name}"));
        }
    }
    out
}

/// Most entries a kernel table may be given (a 16M-entry LRU table is over 1 GiB).
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

pub fn table_size(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n @ 1..=MAX_TABLE_SIZE) => Ok(n),
        _ => Err(format!("table size '{value}' is not a whole number from 1 to {MAX_TABLE_SIZE}")),
    }
}

pub fn max_commands(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n @ 1..=MAX_MAX_COMMANDS) => Ok(n),
        _ => Err(format!("MaxCommands '{value}' is not a whole number from 1 to {MAX_MAX_COMMANDS}")),
    }
}

/// A directory option: an absolute path (a relative one would depend on where knockd was
/// started, and `-d` changes to `/`).
pub fn absolute_dir(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if path.is_absolute() { Ok(path) } else { Err(format!("directory '{value}' is not an absolute path")) }
}

/// Parses a gate's ports: `22/tcp, 51820/udp` (protocol required, at most `MAX_GATE_PORTS`).
pub fn parse_gate_ports(value: &str) -> Result<Vec<Knock>, String> {
    let ports = value
        .split(',')
        .map(|item| {
            let item = item.trim();
            let Some((port, proto)) = item.split_once('/') else {
                return Err(format!("gate port '{item}' needs a protocol: write e.g. 22/tcp or 51820/udp"));
            };
            parse_knock(&format!("{port}:{proto}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ports.len() > MAX_GATE_PORTS {
        return Err(format!("{} gate ports: at most {MAX_GATE_PORTS} are supported", ports.len()));
    }
    Ok(ports)
}

/// `yes`/`no` (also `true`/`false`, `on`/`off`, `1`/`0`).
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("'{value}' is not yes or no")),
    }
}

/// Parses a comma-separated sequence of `port[:proto]` items (at most `MAX_STEPS`).
pub fn parse_sequence(value: &str) -> Result<Vec<Knock>, String> {
    let steps = value.split(',').map(parse_knock).collect::<Result<Vec<_>, _>>()?;
    if steps.len() > MAX_STEPS {
        return Err(format!("sequence has {} steps: at most {MAX_STEPS} are supported", steps.len()));
    }
    Ok(steps)
}

/// Parses one `port[:proto]` sequence item.
pub fn parse_knock(item: &str) -> Result<Knock, String> {
    let item = item.trim();
    if item.is_empty() {
        return Err("empty step in sequence (a doubled or trailing comma?)".to_owned());
    }
    let (port, proto) = match item.split_once(':') {
        Some((p, proto)) => (p.trim(), Some(proto.trim())),
        None => (item, None),
    };
    let proto = match proto.map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        Some(other) => {
            return Err(format!("unknown protocol '{other}' in '{item}' (use tcp or udp)"));
        }
    };
    let port = match port.parse::<u32>() {
        Ok(p @ 1..=65535) => u16::try_from(p).map_err(|_| format!("port {p} is out of range"))?,
        Ok(p) => return Err(format!("port {p} in '{item}' is out of range 1-65535")),
        Err(_) => return Err(format!("'{port}' in '{item}' is not a port number")),
    };
    Ok(Knock { port, proto })
}

/// `Attach`: `auto`, `xdp` or `tc`.
pub fn parse_attach(value: &str) -> Result<Attach, String> {
    match value.to_ascii_lowercase().as_str() {
        "auto" => Ok(Attach::Auto),
        "xdp" => Ok(Attach::Xdp),
        "tc" => Ok(Attach::Tc),
        _ => Err(format!("attach '{value}' is not auto, xdp or tc")),
    }
}

/// `MetricsAddress`: an address and port.
pub fn parse_address(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| format!("metrics address '{value}' is not an address:port (e.g. 127.0.0.1:9742)"))
}
