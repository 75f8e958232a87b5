//! `knock`: the client, compatible with knock 0.8.
//!
//! `knock [-v] [-u] [-d MS] [-4|-6] HOST PORT[:PROTO]...` sends, in argument order, one
//! TCP SYN (a non-blocking connect, then close) or one 1-byte UDP datagram per port.
//!
//! `knock --secret-file FILE [--length N] [--window S] [--source ADDR] [--print] HOST` knocks
//! a secret-keyed door: the ports of the current window for this client's address, derived
//! from the key (`knock_common::secret`). `knock --generate-secret` prints a new key.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket},
    path::PathBuf,
    process::ExitCode,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use knock_common::{
    AddrKey, PROTO_TCP, PROTO_UDP,
    generate::{Generate, generate},
    secret::{
        DEFAULT_LENGTH, DEFAULT_WINDOW_SECS, MAX_LENGTH, MAX_WINDOW_SECS, MIN_LENGTH,
        derive::{GENERATED_KEY_BITS, Params, Secret},
    },
};
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
    /// Knock a secret-keyed door: send this window's ports for this client's address, derived
    /// from the key in FILE (the door's `secret_file`).
    #[arg(long, value_name = "FILE", conflicts_with = "ports")]
    secret_file: Option<PathBuf>,
    /// Ports per knock of the secret door (its `knock_length`).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LENGTH, requires = "secret_file",
          value_parser = clap::value_parser!(u8).range(i64::from(MIN_LENGTH)..=i64::from(MAX_LENGTH)))]
    length: u8,
    /// Seconds a secret door's sequence lives (its `window`).
    #[arg(long, value_name = "S", default_value_t = DEFAULT_WINDOW_SECS, requires = "secret_file",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WINDOW_SECS)))]
    window: u32,
    /// The address the server sees this client knock from (behind NAT, the public one). By
    /// default, the local address the kernel picks to reach HOST.
    #[arg(long, value_name = "ADDR", requires = "secret_file")]
    source: Option<IpAddr>,
    /// Print the secret door's ports (for another client) instead of sending them.
    #[arg(long, requires = "secret_file")]
    print: bool,
    /// Print a new random key (256 bits, hex) for a secret door's `secret_file`, and exit.
    #[arg(long, exclusive = true)]
    generate_secret: bool,
    /// Print a manual page or shell completions from these definitions, and exit (for
    /// packaging).
    #[arg(long, hide = true, value_enum, value_name = "WHAT")]
    generate: Option<Generate>,
    /// Host name or address to knock on.
    #[arg(required_unless_present_any = ["generate", "generate_secret"])]
    host: Option<String>,
    /// Ports to knock, each `port`, `port:tcp` or `port:udp`, or a service name.
    #[arg(required_unless_present_any = ["generate", "generate_secret", "secret_file"], value_name = "PORT[:PROTO]")]
    ports: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(what) = args.generate {
        return match generate(what, <Args as clap::CommandFactory>::command(), "1") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("knock: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let run = if args.generate_secret {
        generate_secret()
    } else if args.secret_file.is_some() {
        knock_secret(&args)
    } else {
        knock(&args)
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knock: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn knock(args: &Args) -> anyhow::Result<()> {
    // Every argument is checked before the first packet leaves.
    if args.print || args.source.is_some() {
        bail!("--print and --source belong to a secret door's knock (--secret-file)");
    }
    let hits = args
        .ports
        .iter()
        .map(|p| parse_port(p).map(|(port, proto)| (port, if args.udp { Proto::Udp } else { proto })))
        .collect::<Result<Vec<_>, _>>()?;
    let host = args.host.as_deref().context("no HOST given")?;
    let ip = resolve(host, args.ipv4, args.ipv6)?;
    send(args, ip, &hits, None);
    Ok(())
}

/// `--generate-secret`: a new key from the kernel's random source, as hex.
fn generate_secret() -> anyhow::Result<()> {
    let mut key = [0u8; GENERATED_KEY_BITS / 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)).context("reading /dev/urandom")?;
    println!("{}", Secret::from_bytes(&key).to_hex());
    Ok(())
}

/// `--secret-file`: this window's ports for this client's address, sent (or printed).
fn knock_secret(args: &Args) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
    let (ip, ports, bind) = secret_ports(args, now)?;
    if args.print {
        println!("{}", ports.iter().map(u16::to_string).collect::<Vec<_>>().join(" "));
        return Ok(());
    }
    let proto = if args.udp { Proto::Udp } else { Proto::Tcp };
    let hits: Vec<(u16, Proto)> = ports.into_iter().map(|p| (p, proto)).collect();
    send(args, ip, &hits, bind);
    Ok(())
}

/// The server's address, the ports to knock there at `unix_secs`, and the local address to
/// send them from (`None` with `--source`).
fn secret_ports(args: &Args, unix_secs: u64) -> anyhow::Result<(IpAddr, Vec<u16>, Option<IpAddr>)> {
    let path = args.secret_file.as_deref().context("no --secret-file given")?;
    // SAFETY: geteuid has no preconditions.
    let secret = Secret::read_file(path, Some(unsafe { libc::geteuid() }))?;
    let host = args.host.as_deref().context("no HOST given")?;
    let ip = resolve(host, args.ipv4, args.ipv6)?;
    // Bound to the address the ports are derived for, unless that address is not this
    // host's (`--source`, behind NAT).
    let (source, bind) = if let Some(s) = args.source {
        (s, None)
    } else {
        let s = local_address_towards(ip)?;
        (s, Some(s))
    };
    if source.is_ipv4() != ip.is_ipv4() {
        bail!("--source {source} and {host} ({ip}) are of different address families");
    }
    let params =
        Params { length: args.length, window_secs: args.window, proto: if args.udp { PROTO_UDP } else { PROTO_TCP } };
    Ok((ip, secret.sequence(&params, &addr_key(source), params.window_at(unix_secs)), bind))
}

fn addr_key(ip: IpAddr) -> AddrKey {
    match ip {
        IpAddr::V4(a) => AddrKey::v4(a.octets()),
        IpAddr::V6(a) => AddrKey::v6(a.octets()),
    }
}

/// The local address the kernel picks to reach `ip` (a UDP socket connected to it sends
/// nothing).
fn local_address_towards(ip: IpAddr) -> anyhow::Result<IpAddr> {
    let any: IpAddr = if ip.is_ipv4() { [0, 0, 0, 0].into() } else { [0u16; 8].into() };
    let s = UdpSocket::bind((any, 0)).context("a UDP socket to find the source address")?;
    s.connect((ip, 9)).with_context(|| format!("no route to {ip}"))?;
    Ok(s.local_addr().context("the source address")?.ip())
}

/// Hits each port in order (with `-d` between), from `bind` if given.
fn send(args: &Args, ip: IpAddr, hits: &[(u16, Proto)], bind: Option<IpAddr>) {
    for (i, &(port, proto)) in hits.iter().enumerate() {
        if i > 0 && args.delay > 0 {
            thread::sleep(Duration::from_millis(args.delay));
        }
        let addr = SocketAddr::new(ip, port);
        if args.verbose {
            println!("hitting {} {addr}", proto.name());
        }
        // Like knock 0.8, send errors do not stop the run: a knock is fire-and-forget.
        if let Err(e) = hit(addr, proto, bind) {
            eprintln!("knock: {} {addr}: {e}", proto.name());
        }
    }
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

    /// A key file of `hex`, mode 0600, removed on drop.
    struct KeyFile(std::path::PathBuf);

    impl KeyFile {
        fn new(name: &str, hex: &str) -> Self {
            use std::os::unix::fs::PermissionsExt as _;
            let path = std::env::temp_dir().join(format!("knock-cli-{}-{name}.key", std::process::id()));
            std::fs::write(&path, hex).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            Self(path)
        }
    }

    impl Drop for KeyFile {
        fn drop(&mut self) {
            std::fs::remove_file(&self.0).unwrap();
        }
    }

    #[test]
    fn print_gives_the_shared_test_vectors() {
        // The same vectors the XDP program's tests open the door with.
        for (i, v) in knock_common::secret::derive::VECTORS.iter().enumerate() {
            let key = KeyFile::new(&format!("v{i}"), v.secret);
            let (length, window) = (v.length.to_string(), v.window_secs.to_string());
            let mut argv = vec!["--secret-file", key.0.to_str().unwrap(), "--length", &length, "--window", &window];
            argv.extend(["--source", v.source, "--print"]);
            if v.udp {
                argv.push("-u");
            }
            argv.push(v.source);
            let (_, ports, bind) = secret_ports(&args(&argv).unwrap(), v.unix_secs).unwrap();
            assert_eq!(ports, v.ports, "vector {i}");
            assert_eq!(bind, None, "--source is not bound to");
        }
    }

    #[test]
    fn secret_command_lines() {
        let a =
            args(&["--secret-file", "/k", "--length", "6", "--window", "10", "--source", "198.18.0.9", "h"]).unwrap();
        assert_eq!((a.length, a.window, a.source), (6, 10, Some("198.18.0.9".parse().unwrap())));
        let a = args(&["--secret-file", "/k", "h"]).unwrap();
        assert_eq!((a.length, a.window), (4, 30), "the doors' defaults");
        assert!(args(&["--secret-file", "/k", "--length", "9", "h"]).is_err(), "length 2..8");
        assert!(args(&["--secret-file", "/k", "--window", "0", "h"]).is_err());
        assert!(args(&["--secret-file", "/k", "h", "7000"]).is_err(), "no ports with a key");
        let e = knock(&args(&["--print", "198.18.0.1", "7000"]).unwrap()).unwrap_err().to_string();
        assert!(e.contains("--print and --source belong to"), "{e}");
        assert!(args(&["--generate-secret"]).is_ok());
        assert!(args(&["--generate-secret", "h"]).is_err());
        assert!(args(&["--secret-file", "/k"]).is_err(), "a HOST");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let key = KeyFile::new("open", "00112233445566778899aabbccddeeff");
        std::fs::set_permissions(&key.0, std::fs::Permissions::from_mode(0o644)).unwrap();
        let a = args(&["--secret-file", key.0.to_str().unwrap(), "--print", "198.18.0.1"]).unwrap();
        let e = knock_secret(&a).unwrap_err().to_string();
        assert!(e.contains("mode 0644 lets other users at the key"), "{e}");
    }

    #[test]
    fn ports_are_checked_before_anything_is_sent() {
        let a = args(&["198.18.0.1", "7000", "70000"]).unwrap();
        let e = knock(&a).unwrap_err().to_string();
        assert_eq!(e, "port '70000' is out of range 1-65535");
    }
}
