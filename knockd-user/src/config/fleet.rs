//! `[options]` of a fleet (`FleetServers`, `FleetName`, `FleetKeyFile` and the rest) as the
//! parsers meet them, in any order, and the fleet they make once the section has been read.

use std::{path::PathBuf, time::Duration};

use knock_common::{fleet::valid_name, secret::derive::Secret};

use crate::config::secret::load_key;

/// How far ahead of a node's clock a grant may have been issued, unless `FleetMaxSkew` says.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(5);
/// Most `FleetMaxSkew` accepted: clocks further apart than this are not synced.
pub const MAX_MAX_SKEW_SECS: u64 = 300;

/// `FleetSingleUse`: what a secret door's open does when its single use cannot be claimed
/// across the fleet (NATS unreachable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SingleUse {
    /// The open is refused, logged and counted.
    #[default]
    Strict,
    /// The open is honoured on this node's single use alone.
    Local,
}

impl SingleUse {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            SingleUse::Strict => "strict",
            SingleUse::Local => "local",
        }
    }
}

/// A fleet: where its NATS servers are, who this node is, and the key grants are signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// `nats://` or `tls://` URLs.
    pub servers: Vec<String>,
    /// This node's name; the hostname unless `FleetName` says.
    pub name: String,
    pub key_file: PathBuf,
    pub key: Secret,
    pub single_use: SingleUse,
    /// NATS's own authentication: a credentials file (JWT and NKey seed), or an NKey seed file.
    pub credentials: Option<PathBuf>,
    pub nkey: Option<PathBuf>,
    /// The CA that signed the servers' certificates, for `tls://` servers of a private CA.
    pub ca_file: Option<PathBuf>,
    pub max_skew: Duration,
    /// Copies JetStream keeps of the fleet's bucket: 3 when several servers are named, else 1.
    pub replicas: usize,
}

/// The fleet options read so far, each with its line.
#[derive(Debug, Default)]
pub struct Draft {
    servers: Option<(Vec<String>, usize)>,
    name: Option<(String, usize)>,
    key: Option<(PathBuf, Secret, usize)>,
    single_use: Option<(SingleUse, usize)>,
    credentials: Option<(PathBuf, usize)>,
    nkey: Option<(PathBuf, usize)>,
    ca_file: Option<(PathBuf, usize)>,
    max_skew: Option<(Duration, usize)>,
    replicas: Option<(usize, usize)>,
}

fn absolute_file(what: &str, value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if !path.is_absolute() {
        return Err(format!("{what} '{value}' is not an absolute path"));
    }
    if !path.is_file() {
        return Err(format!("{what} '{value}' is not a file"));
    }
    Ok(path)
}

/// `nats://host:port, tls://host:port`: at least one, each of those schemes.
pub fn parse_servers(value: &str) -> Result<Vec<String>, String> {
    let servers: Vec<String> =
        value.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if servers.is_empty() {
        return Err("fleetservers names no server".into());
    }
    for s in &servers {
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!("fleet server '{s}' is not a nats:// or tls:// URL"));
        };
        if !matches!(scheme, "nats" | "tls") || rest.is_empty() || rest.contains('/') {
            return Err(format!("fleet server '{s}' is not a nats:// or tls:// URL"));
        }
    }
    Ok(servers)
}

impl Draft {
    /// Takes one option (`key` upper case); false if it is not a fleet's.
    pub fn option(&mut self, line: usize, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "FLEETSERVERS" => self.servers = Some((parse_servers(value)?, line)),
            "FLEETNAME" => {
                if !valid_name(value) || value.contains(char::is_whitespace) {
                    return Err(format!("fleetname '{}' is empty or has white space", value.escape_debug()));
                }
                self.name = Some((value.to_owned(), line));
            }
            "FLEETKEYFILE" => {
                let path = PathBuf::from(value);
                if !path.is_absolute() {
                    return Err(format!("fleetkeyfile '{value}' is not an absolute path"));
                }
                let key = load_key(&path)?;
                self.key = Some((path, key, line));
            }
            "FLEETSINGLEUSE" => {
                let policy = match value.to_ascii_lowercase().as_str() {
                    "strict" => SingleUse::Strict,
                    "local" => SingleUse::Local,
                    _ => return Err(format!("fleetsingleuse '{value}' is not strict or local")),
                };
                self.single_use = Some((policy, line));
            }
            "FLEETCREDENTIALS" => self.credentials = Some((absolute_file("fleetcredentials", value)?, line)),
            "FLEETNKEY" => self.nkey = Some((absolute_file("fleetnkey", value)?, line)),
            "FLEETCAFILE" => self.ca_file = Some((absolute_file("fleetcafile", value)?, line)),
            "FLEETMAXSKEW" => match value.parse::<u64>() {
                Ok(s) if (1..=MAX_MAX_SKEW_SECS).contains(&s) => {
                    self.max_skew = Some((Duration::from_secs(s), line));
                }
                _ => {
                    return Err(format!(
                        "fleetmaxskew '{value}' is not a whole number of seconds from 1 to {MAX_MAX_SKEW_SECS}"
                    ));
                }
            },
            "FLEETREPLICAS" => match value.parse::<usize>() {
                Ok(n) if (1..=5).contains(&n) => self.replicas = Some((n, line)),
                _ => return Err(format!("fleetreplicas '{value}' is not a whole number from 1 to 5")),
            },
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The fleet, once `[options]` has been read; `Err((line, message))` for fleet options
    /// without `FleetServers`, or `FleetServers` without its key.
    pub fn finish(self, hostname: impl FnOnce() -> Option<String>) -> Result<Option<Fleet>, (usize, String)> {
        let Some((servers, servers_line)) = self.servers else {
            let stray = [
                self.name.map(|(_, l)| (l, "fleetname")),
                self.key.map(|(_, _, l)| (l, "fleetkeyfile")),
                self.single_use.map(|(_, l)| (l, "fleetsingleuse")),
                self.credentials.map(|(_, l)| (l, "fleetcredentials")),
                self.nkey.map(|(_, l)| (l, "fleetnkey")),
                self.ca_file.map(|(_, l)| (l, "fleetcafile")),
                self.max_skew.map(|(_, l)| (l, "fleetmaxskew")),
                self.replicas.map(|(_, l)| (l, "fleetreplicas")),
            ];
            return match stray.into_iter().flatten().min() {
                Some((line, what)) => Err((line, format!("{what} belongs with fleetservers"))),
                None => Ok(None),
            };
        };
        let Some((key_file, key, _)) = self.key else {
            return Err((
                servers_line,
                "fleetservers needs fleetkeyfile: the key the fleet's grants are signed with".into(),
            ));
        };
        if let (Some((_, a)), Some((_, b))) = (&self.credentials, &self.nkey) {
            return Err(((*a).max(*b), "fleetcredentials and fleetnkey are two ways to authenticate: give one".into()));
        }
        let name = match self.name {
            Some((name, _)) => name,
            None => hostname()
                .filter(|h| valid_name(h))
                .ok_or((servers_line, "this host has no usable hostname: name the node with fleetname".to_owned()))?,
        };
        let replicas = self.replicas.map_or(if servers.len() > 1 { 3 } else { 1 }, |(n, _)| n);
        Ok(Some(Fleet {
            servers,
            name,
            key_file,
            key,
            single_use: self.single_use.map_or(SingleUse::Strict, |(p, _)| p),
            credentials: self.credentials.map(|(p, _)| p),
            nkey: self.nkey.map(|(p, _)| p),
            ca_file: self.ca_file.map(|(p, _)| p),
            max_skew: self.max_skew.map_or(DEFAULT_MAX_SKEW, |(d, _)| d),
            replicas,
        }))
    }
}

/// This host's name, the default `FleetName`.
#[must_use]
pub fn hostname() -> Option<String> {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers() {
        assert_eq!(
            parse_servers("nats://10.0.0.5:4222, tls://10.0.0.6:4222").unwrap(),
            ["nats://10.0.0.5:4222", "tls://10.0.0.6:4222"]
        );
        assert_eq!(parse_servers("http://x").unwrap_err(), "fleet server 'http://x' is not a nats:// or tls:// URL");
        assert_eq!(parse_servers("10.0.0.5").unwrap_err(), "fleet server '10.0.0.5' is not a nats:// or tls:// URL");
        assert!(parse_servers(" , ").is_err());
    }

    fn key(dir: &std::path::Path, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("fleet.key");
        std::fs::write(&path, "00112233445566778899aabbccddeeff").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn both_forms_read_a_fleet_and_the_toml_dump_reads_back() {
        use crate::config::Config;
        let dir = tempfile::tempdir().unwrap();
        let key = key(dir.path(), 0o600);
        let text = format!(
            "[options]\n\tFleetServers = nats://10.0.0.5:4222, tls://10.0.0.6:4222\n\tFleetName = edge-a\n\
             \tFleetKeyFile = {}\n\tFleetSingleUse = local\n\tFleetMaxSkew = 3\n[ssh]\n\tsequence = 1,2,3\n",
            key.display()
        );
        let c = Config::parse(std::path::Path::new("knockd.conf"), &text).unwrap();
        let f = c.options.fleet.clone().unwrap();
        assert_eq!(f.servers, ["nats://10.0.0.5:4222", "tls://10.0.0.6:4222"]);
        assert_eq!(
            (f.name.as_str(), f.single_use, f.max_skew, f.replicas),
            ("edge-a", SingleUse::Local, Duration::from_secs(3), 3)
        );
        let toml = crate::config::toml_form::dump(&c).unwrap();
        let again = Config::parse(std::path::Path::new("knockd.toml"), &toml).unwrap();
        assert_eq!(again.options.fleet, c.options.fleet, "{toml}");
        // The default name is the hostname.
        let unnamed = text.replace("\tFleetName = edge-a\n", "");
        let c = Config::parse(std::path::Path::new("knockd.conf"), &unnamed).unwrap();
        assert_eq!(c.options.fleet.unwrap().name, hostname().unwrap());
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_naming_the_file_and_the_line() {
        use crate::config::Config;
        let dir = tempfile::tempdir().unwrap();
        let key = key(dir.path(), 0o644);
        let text = format!("[options]\n\tFleetServers = nats://127.0.0.1:4222\n\tFleetKeyFile = {}\n", key.display());
        let e = Config::parse(std::path::Path::new("knockd.conf"), &text).unwrap_err().to_string();
        assert!(e.starts_with(&format!("knockd.conf:3: key file {}: mode 0644", key.display())), "{e}");
        let missing = "[options]\n\tFleetServers = nats://127.0.0.1:4222\n";
        let e = Config::parse(std::path::Path::new("knockd.conf"), missing).unwrap_err().to_string();
        assert_eq!(e, "knockd.conf:2: fleetservers needs fleetkeyfile: the key the fleet's grants are signed with");
    }

    #[test]
    fn stray_options_and_a_missing_key_name_their_line() {
        let mut d = Draft::default();
        assert!(d.option(3, "FLEETSINGLEUSE", "local").unwrap());
        assert!(!d.option(4, "ATTACH", "tc").unwrap());
        assert_eq!(d.finish(|| None).unwrap_err(), (3, "fleetsingleuse belongs with fleetservers".into()));
        let mut d = Draft::default();
        d.option(7, "FLEETSERVERS", "nats://127.0.0.1:4222").unwrap();
        assert_eq!(d.finish(|| None).unwrap_err().0, 7);
        assert_eq!(Draft::default().finish(|| None).unwrap(), None, "no fleet: nothing changes");
        assert_eq!(
            Draft::default().option(1, "FLEETSINGLEUSE", "loose").unwrap_err(),
            "fleetsingleuse 'loose' is not strict or local"
        );
        assert!(Draft::default().option(1, "FLEETNAME", "edge a").is_err());
        assert!(Draft::default().option(1, "FLEETMAXSKEW", "0").is_err());
        assert!(Draft::default().option(1, "FLEETKEYFILE", "fleet.key").is_err());
    }
}
