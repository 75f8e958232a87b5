//! What one run of `knock` does, from the command line and, where it names one, a profile
//! (flags override the profile's values).

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, bail};
use knock_common::{
    PROTO_TCP, PROTO_UDP,
    profile::{At, Knocks, Profile},
    secret::derive::{Params, Secret},
};

use crate::{
    args::{Args, DEFAULTS},
    ports::{Proto, parse_port},
    profiles::Search,
    send::{addr_key, local_address_towards, resolve},
};

/// The knock to send.
#[derive(Debug)]
pub(crate) enum Knock {
    Ports(Vec<(u16, Proto)>),
    Secret { secret: Secret, params: Params, source: Option<IpAddr> },
}

/// A command to run once the knock is sent, and where it was written (for its errors).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AfterKnock {
    pub(crate) words: Vec<String>,
    pub(crate) origin: String,
}

/// Where and what to knock at a moment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// The server's address.
    pub(crate) ip: IpAddr,
    pub(crate) hits: Vec<(u16, Proto)>,
    /// The local address to send from (a secret door's, unless `--source` names another).
    pub(crate) bind: Option<IpAddr>,
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) host: String,
    pub(crate) ipv4: bool,
    pub(crate) ipv6: bool,
    pub(crate) knock: Knock,
    pub(crate) delay_ms: u64,
    pub(crate) verbose: bool,
    pub(crate) print: bool,
    pub(crate) command: Option<AfterKnock>,
}

/// `file:line: ` of a profile's value.
fn origin<T>(path: &Path, at: &At<T>) -> String {
    format!("{}:{}", path.display(), at.line)
}

impl Plan {
    /// The run `args` ask for; every argument and the profile are checked before the first
    /// packet leaves.
    pub(crate) fn new(args: &Args) -> anyhow::Result<Self> {
        let search = Search::new(args.profiles.as_deref());
        let profile = match (&args.profile, &args.host) {
            (Some(name), _) => {
                if !args.ports.is_empty() {
                    bail!("--profile {name} holds the knock: ports on the command line go with a HOST, not a profile");
                }
                let found = search.find(name)?;
                Some(found.with_context(|| format!("no profile '{name}' in {}", search.describe()))?)
            }
            (None, Some(host)) if args.ports.is_empty() && !args.no_profile => search.find(host)?,
            _ => None,
        };
        match profile {
            Some((path, p)) => Self::with_profile(args, &path, p),
            None => Self::without_profile(args, &search),
        }
    }

    /// knock 0.8's `knock HOST PORT...`, or `knock --secret-file FILE HOST`.
    fn without_profile(args: &Args, search: &Search) -> anyhow::Result<Self> {
        let host = args.host.clone().context("no HOST given")?;
        let knock = if let Some(file) = &args.secret_file {
            if !args.ports.is_empty() {
                bail!("a secret door's knock (--secret-file) derives its ports: give no PORT");
            }
            secret_knock(args, file, None, &Given::default())?
        } else {
            if secret_flags(args) {
                bail!("--print, --source, --length and --window belong to a secret door's knock (--secret-file)");
            }
            if args.ports.is_empty() && args.no_profile {
                bail!("no PORT given to knock at {host} (--no-profile: '{host}' is a host)");
            }
            if args.ports.is_empty() {
                bail!("no PORT given, and '{host}' is no profile in {}", search.describe());
            }
            sequence(args, &args.ports, None)?
        };
        Ok(Self {
            host,
            ipv4: args.ipv4,
            ipv6: args.ipv6,
            knock,
            delay_ms: args.delay.unwrap_or(0),
            verbose: args.verbose,
            print: args.print,
            command: None,
        })
    }

    /// A profile's knock, with the command line's flags over its values.
    fn with_profile(args: &Args, path: &Path, p: Profile) -> anyhow::Result<Self> {
        let knock = match (&p.knocks, &args.secret_file) {
            (Knocks::Sequence(seq), None) => {
                if secret_flags(args) {
                    bail!(
                        "--print, --source, --length and --window belong to a secret door, and profile '{}' ({}) holds a sequence",
                        p.name,
                        origin(path, seq)
                    );
                }
                sequence(args, &seq.value, Some(&origin(path, seq)))?
            }
            (Knocks::Sequence(seq), Some(_)) => {
                bail!("--secret-file: profile '{}' ({}) holds a sequence, not a secret door", p.name, origin(path, seq))
            }
            (Knocks::Secret { file, length, window, udp, source }, flag) => {
                let given = Given {
                    length: length.as_ref().map(|l| l.value),
                    window: window.as_ref().map(|w| w.value),
                    udp: udp.as_ref().map(|u| u.value),
                    source: source.as_ref().map(|s| s.value),
                };
                match flag {
                    Some(f) => secret_knock(args, f, None, &given)?,
                    None => secret_knock(args, &file.value, Some(&origin(path, file)), &given)?,
                }
            }
        };
        let (ipv4, ipv6) = if args.ipv4 || args.ipv6 {
            (args.ipv4, args.ipv6)
        } else {
            p.ipv4_only.as_ref().map_or((false, false), |a| (a.value, !a.value))
        };
        Ok(Self {
            // With --profile, a HOST after it replaces the profile's.
            host: if args.profile.is_some() { args.host.clone() } else { None }.unwrap_or(p.host.value),
            ipv4,
            ipv6,
            knock,
            delay_ms: args.delay.or(p.delay.map(|d| d.value)).unwrap_or(0),
            verbose: args.verbose || p.verbose,
            print: args.print,
            command: p.command.as_ref().map(|c| AfterKnock { words: c.value.clone(), origin: origin(path, c) }),
        })
    }

    /// The server's address, and for a secret door the ports to knock there at `unix_secs`
    /// and the local address to send them from (`None` with `--source`).
    pub(crate) fn ports(&self, unix_secs: u64) -> anyhow::Result<Target> {
        let ip = resolve(&self.host, self.ipv4, self.ipv6)?;
        let (secret, params, source) = match &self.knock {
            Knock::Ports(hits) => return Ok(Target { ip, hits: hits.clone(), bind: None }),
            Knock::Secret { secret, params, source } => (secret, params, source),
        };
        // Bound to the address the ports are derived for, unless that address is not this
        // host's (`--source`, behind NAT).
        let (source, bind) = if let Some(s) = source {
            (*s, None)
        } else {
            let s = local_address_towards(ip)?;
            (s, Some(s))
        };
        if source.is_ipv4() != ip.is_ipv4() {
            bail!("source {source} and {} ({ip}) are of different address families", self.host);
        }
        let proto = if params.proto == PROTO_UDP { Proto::Udp } else { Proto::Tcp };
        let ports = secret.sequence(params, &addr_key(source), params.window_at(unix_secs));
        Ok(Target { ip, hits: ports.into_iter().map(|p| (p, proto)).collect(), bind })
    }
}

/// Whether a flag of a secret door's knock was given.
fn secret_flags(args: &Args) -> bool {
    args.print || args.source.is_some() || args.length.is_some() || args.window.is_some()
}

/// `e`, prefixed with `origin` (where in a profile file its value is) when it has one.
fn placed(origin: Option<&str>, e: anyhow::Error) -> anyhow::Error {
    match origin {
        Some(o) => anyhow::anyhow!("{o}: {e}"),
        None => e,
    }
}

/// The knock of `ports` (`port[:proto]` or service names; `origin`: where a profile names
/// them), all UDP with `-u`.
fn sequence(args: &Args, ports: &[String], origin: Option<&str>) -> anyhow::Result<Knock> {
    let hits = ports
        .iter()
        .map(|p| {
            let (port, proto) = parse_port(p).map_err(|e| placed(origin, e))?;
            Ok((port, if args.udp { Proto::Udp } else { proto }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Knock::Ports(hits))
}

/// A profile's values for a secret door; `None` where it leaves the client's default.
#[derive(Debug, Default)]
struct Given {
    length: Option<u8>,
    window: Option<u32>,
    udp: Option<bool>,
    source: Option<IpAddr>,
}

/// A secret door's knock from the key in `file` (`origin`: where a profile names it) and the
/// profile's values, the flags over them.
fn secret_knock(args: &Args, file: &Path, origin: Option<&str>, given: &Given) -> anyhow::Result<Knock> {
    // SAFETY: geteuid has no preconditions.
    let secret =
        Secret::read_file(file, Some(unsafe { libc::geteuid() })).map_err(|e| placed(origin, anyhow::Error::new(e)))?;
    let params = Params {
        length: args.length.or(given.length).unwrap_or(DEFAULTS.0),
        window_secs: args.window.or(given.window).unwrap_or(DEFAULTS.1),
        proto: if args.udp || given.udp == Some(true) { PROTO_UDP } else { PROTO_TCP },
    };
    Ok(Knock::Secret { secret, params, source: args.source.or(given.source) })
}
