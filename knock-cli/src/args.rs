//! The command line.

use std::{net::IpAddr, path::PathBuf};

use clap::Parser;
use knock_common::{
    generate::Generate,
    secret::{DEFAULT_LENGTH, DEFAULT_WINDOW_SECS, MAX_LENGTH, MAX_WINDOW_SECS, MIN_LENGTH},
};

/// How `knock` tells a host from a profile, and the profile file's format: in `--help` and
/// in the manual page.
pub(crate) const PROFILES_HELP: &str = "\
Profiles:
  `knock NAME` knocks the door described by the profile NAME: a `[NAME]` table in the file
  given by --profiles, else $XDG_CONFIG_HOME/knockgate/knock.toml (~/.config/...), else
  /etc/knockgate/knock.toml (the first file that has NAME). `knockd --client-profile DOOR`
  prints a door's table, to be appended to that file.

  A HOST followed by ports is always a host: `knock HOST PORT...` is knock 0.8's command and
  reads no profile. A lone argument (no ports) is a profile when a profile file has that name,
  else a host (a secret door's knock with --secret-file); --no-profile makes it a host, and
  --profile NAME makes NAME a profile (then a HOST after it replaces the profile's host).
  Flags on the command line override the profile's values.

  Keys of a profile: host (required); either sequence = [\"7000\", \"8000:udp\", ...] or
  secret_file = \"/abs/key\" with knock_length, window, protocol (\"tcp\" or \"udp\") and
  source; delay (ms); ipv4 = true or ipv6 = true; verbose = true; command = [\"ssh\",
  \"%HOST%\"] (or one string, split into words like a shell but run without one), run once
  the last knock is sent, with %HOST% replaced by the host. A profile file must not be
  writable by others; a key file must not be readable by others.";

/// Port-knock client: hits each PORT of HOST in order, or knocks the door of a profile.
#[derive(Debug, Parser)]
#[command(name = "knock", version, about, after_long_help = PROFILES_HELP)]
pub(crate) struct Args {
    /// Make all port hits use UDP (overrides :tcp on a port, and a profile's protocol).
    #[arg(short = 'u', long)]
    pub(crate) udp: bool,
    /// Wait this many milliseconds between port hits [default: 0]
    #[arg(short = 'd', long, value_name = "MS")]
    pub(crate) delay: Option<u64>,
    /// Force IPv4.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub(crate) ipv4: bool,
    /// Force IPv6.
    #[arg(short = '6', long = "ipv6")]
    pub(crate) ipv6: bool,
    /// Print each hit.
    #[arg(short = 'v', long)]
    pub(crate) verbose: bool,
    /// Knock a secret-keyed door: send this window's ports for this client's address, derived
    /// from the key in FILE (the door's `secret_file`).
    #[arg(long, value_name = "FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// Ports per knock of the secret door (its `knock_length`) [default: 4]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u8).range(i64::from(MIN_LENGTH)..=i64::from(MAX_LENGTH)))]
    pub(crate) length: Option<u8>,
    /// Seconds a secret door's sequence lives (its `window`) [default: 30]
    #[arg(long, value_name = "S",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WINDOW_SECS)))]
    pub(crate) window: Option<u32>,
    /// The address the server sees this client knock from (behind NAT, the public one). By
    /// default, the local address the kernel picks to reach HOST.
    #[arg(long, value_name = "ADDR")]
    pub(crate) source: Option<IpAddr>,
    /// Print the secret door's ports (for another client) instead of sending them.
    #[arg(long)]
    pub(crate) print: bool,
    /// Knock the door of profile NAME (see Profiles below).
    #[arg(long, value_name = "NAME", conflicts_with = "no_profile")]
    pub(crate) profile: Option<String>,
    /// Take a lone argument as a HOST even when a profile has its name.
    #[arg(long)]
    pub(crate) no_profile: bool,
    /// The profile file to read, instead of ~/.config/knockgate/knock.toml and
    /// /etc/knockgate/knock.toml.
    #[arg(long, value_name = "FILE")]
    pub(crate) profiles: Option<PathBuf>,
    /// Print a new random key (256 bits, hex) for a secret door's `secret_file`, and exit.
    #[arg(long, exclusive = true)]
    pub(crate) generate_secret: bool,
    /// Print a manual page or shell completions from these definitions, and exit (for
    /// packaging).
    #[arg(long, hide = true, value_enum, value_name = "WHAT")]
    pub(crate) generate: Option<Generate>,
    /// Host name or address to knock on; alone, the name of a profile.
    #[arg(required_unless_present_any = ["generate", "generate_secret", "profile"], value_name = "HOST|PROFILE")]
    pub(crate) host: Option<String>,
    /// Ports to knock, each `port`, `port:tcp` or `port:udp`, or a service name.
    #[arg(value_name = "PORT[:PROTO]")]
    pub(crate) ports: Vec<String>,
}

/// The client's defaults for a secret door, where neither flags nor profile say.
pub(crate) const DEFAULTS: (u8, u32) = (DEFAULT_LENGTH, DEFAULT_WINDOW_SECS);

pub(crate) fn parse() -> Args {
    Args::parse()
}

#[cfg(test)]
pub(crate) fn try_parse(argv: &[&str]) -> Result<Args, clap::Error> {
    Args::try_parse_from(std::iter::once("knock").chain(argv.iter().copied()))
}
