//! `PORT[:PROTO]` arguments.

use anyhow::{Context as _, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Parses `7000`, `7000:udp`, `7000:TCP`, or a service name such as `ssh` (from
/// `/etc/services`). Ports outside 1-65535 are refused (knock 0.8 wrapped them).
pub(crate) fn parse_port(arg: &str) -> anyhow::Result<(u16, Proto)> {
    let (port, proto) = match arg.split_once(':') {
        Some((p, proto)) => (p, Some(proto)),
        None => (arg, None),
    };
    let proto = match proto.map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        Some(other) => bail!("unknown protocol '{other}' in '{arg}' (use tcp or udp)"),
    };
    if port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty() {
        return match port.parse::<u32>() {
            Ok(p @ 1..=65535) => Ok((u16::try_from(p).context("port")?, proto)),
            _ => bail!("port '{port}' is out of range 1-65535"),
        };
    }
    let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
    match service_port(&services, port, proto) {
        Some(p) => Ok((p, proto)),
        None => bail!("'{port}' is neither a port number nor a known {} service", proto.name()),
    }
}

/// Looks a service name (or alias) up in `/etc/services` text.
fn service_port(services: &str, name: &str, proto: Proto) -> Option<u16> {
    services.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let service = words.next()?;
        let (port, p) = words.next()?.split_once('/')?;
        let named = service == name || words.any(|alias| alias == name);
        (named && p == proto.name()).then(|| port.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_protocols() {
        assert_eq!(parse_port("7000").unwrap(), (7000, Proto::Tcp));
        assert_eq!(parse_port("7000:udp").unwrap(), (7000, Proto::Udp));
        assert_eq!(parse_port("7000:UDP").unwrap(), (7000, Proto::Udp));
        assert_eq!(parse_port("7000:tcp").unwrap(), (7000, Proto::Tcp));
        assert_eq!(parse_port("65535").unwrap(), (65535, Proto::Tcp));
    }

    #[test]
    fn bad_ports_are_refused_with_the_value() {
        for (arg, want) in [
            ("0", "port '0' is out of range 1-65535"),
            ("70000", "port '70000' is out of range 1-65535"),
            ("7000:icmp", "unknown protocol 'icmp' in '7000:icmp' (use tcp or udp)"),
            ("no-such-service-x", "'no-such-service-x' is neither a port number nor a known tcp service"),
            ("-5", "'-5' is neither a port number nor a known tcp service"),
        ] {
            assert_eq!(parse_port(arg).unwrap_err().to_string(), want, "{arg}");
        }
    }

    #[test]
    fn service_names() {
        let services = "ssh\t\t22/tcp\t\t\t# SSH\nsunrpc\t\t111/udp\t\tportmapper\ndomain 53/udp\n";
        assert_eq!(service_port(services, "ssh", Proto::Tcp), Some(22));
        assert_eq!(service_port(services, "portmapper", Proto::Udp), Some(111));
        assert_eq!(service_port(services, "domain", Proto::Tcp), None);
    }
}
