//! `knock`: the client, compatible with knock 0.8.
//!
//! `knock [-v] [-u] [-d MS] [-4|-6] HOST PORT[:PROTO]...` sends, in argument order, one
//! TCP SYN (a non-blocking connect, then close) or one 1-byte UDP datagram per port.

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    process::ExitCode,
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

mod ports;

use ports::{Proto, parse_port};

/// Port-knock client: hits each PORT of HOST in order.
#[derive(Debug, Parser)]
#[command(name = "knock", version, about)]
struct Args {
    /// Make all port hits use UDP (overrides :tcp on a port).
    #[arg(short = 'u', long)]
    udp: bool,
    /// Wait this many milliseconds between port hits.
    #[arg(short = 'd', long, value_name = "MS", default_value_t = 0)]
    delay: u64,
    /// Force IPv4.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    ipv4: bool,
    /// Force IPv6.
    #[arg(short = '6', long = "ipv6")]
    ipv6: bool,
    /// Print each hit.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Print a manual page or shell completions from these definitions, and exit (for
    /// packaging).
    #[arg(long, hide = true, value_enum, value_name = "WHAT")]
    generate: Option<Generate>,
    /// Host name or address to knock on.
    #[arg(required_unless_present = "generate")]
    host: Option<String>,
    /// Ports to knock, each `port`, `port:tcp` or `port:udp`, or a service name.
    #[arg(required_unless_present = "generate", value_name = "PORT[:PROTO]")]
    ports: Vec<String>,
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Generate {
    Man,
    Bash,
    Zsh,
    Fish,
}

/// `--generate`: the manual page `knock(1)`, or completions, on stdout.
fn generate(what: Generate) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    let mut cmd = Args::command();
    let out = &mut std::io::stdout();
    let shell = match what {
        Generate::Man => return clap_mangen::Man::new(cmd).section("1").render(out),
        Generate::Bash => clap_complete::Shell::Bash,
        Generate::Zsh => clap_complete::Shell::Zsh,
        Generate::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "knock", out);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(what) = args.generate {
        return match generate(what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("knock: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match knock(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knock: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn knock(args: &Args) -> anyhow::Result<()> {
    // Every argument is checked before the first packet leaves.
    let hits = args
        .ports
        .iter()
        .map(|p| parse_port(p).map(|(port, proto)| (port, if args.udp { Proto::Udp } else { proto })))
        .collect::<Result<Vec<_>, _>>()?;
    let host = args.host.as_deref().context("no HOST given")?;
    let ip = resolve(host, args.ipv4, args.ipv6)?;
    for (i, &(port, proto)) in hits.iter().enumerate() {
        if i > 0 && args.delay > 0 {
            thread::sleep(Duration::from_millis(args.delay));
        }
        let addr = SocketAddr::new(ip, port);
        if args.verbose {
            println!("hitting {} {addr}", proto.name());
        }
        // Like knock 0.8, send errors do not stop the run: a knock is fire-and-forget.
        if let Err(e) = hit(addr, proto) {
            eprintln!("knock: {} {addr}: {e}", proto.name());
        }
    }
    Ok(())
}

/// One name resolution for the whole run, so every knock goes to the same address.
fn resolve(host: &str, v4: bool, v6: bool) -> anyhow::Result<IpAddr> {
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

fn hit(addr: SocketAddr, proto: Proto) -> std::io::Result<()> {
    let domain = Domain::for_address(addr);
    match proto {
        Proto::Tcp => {
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
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
            let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
            s.send_to(&[0u8], &SockAddr::from(addr)).map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("knock").chain(argv.iter().copied()))
    }

    #[test]
    fn knock_0_8_command_lines() {
        let a = args(&["-v", "198.18.0.1", "7000", "8000", "9000"]).unwrap();
        assert!(a.verbose && !a.udp && a.delay == 0);
        assert_eq!(a.host.as_deref(), Some("198.18.0.1"));
        assert_eq!(a.ports, ["7000", "8000", "9000"]);
        let a = args(&["-u", "-d", "200", "-6", "host", "1:tcp"]).unwrap();
        assert!(a.udp && a.ipv6 && !a.ipv4);
        assert_eq!(a.delay, 200);
        let a = args(&["--udp", "--delay", "5", "--ipv4", "--verbose", "h", "1"]).unwrap();
        assert!(a.udp && a.ipv4 && a.verbose);
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert!(args(&["host"]).is_err(), "no port");
        assert!(args(&["-4", "-6", "host", "1"]).is_err());
        assert!(args(&["-d", "-1", "host", "1"]).is_err(), "negative delay");
        assert!(args(&["-x", "host", "1"]).is_err());
    }

    #[test]
    fn resolution_respects_the_family() {
        assert_eq!(resolve("198.18.0.1", false, false).unwrap(), "198.18.0.1".parse::<IpAddr>().unwrap());
        assert!(resolve("198.18.0.1", false, true).is_err());
        assert_eq!(resolve("::1", false, true).unwrap(), "::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ports_are_checked_before_anything_is_sent() {
        let a = args(&["198.18.0.1", "7000", "70000"]).unwrap();
        let e = knock(&a).unwrap_err().to_string();
        assert_eq!(e, "port '70000' is out of range 1-65535");
    }
}
