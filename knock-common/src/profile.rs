//! The client's profiles (`knock NAME`): the file `knock.toml`, one `[NAME]` table per door,
//! read by `knock` and written by `knockd --client-profile`, so that both sides of a door
//! speak one format.
//!
//! ```toml
//! [ssh-edge]
//! host = "edge.example.net"
//! sequence = ["7000", "8000:udp", "9000"]
//! delay = 200                      # ms between knocks
//! command = ["ssh", "%HOST%"]      # run once the knock is sent (no shell)
//!
//! [db]
//! host = "198.18.0.1"
//! secret_file = "/home/me/.config/knockgate/db.key"
//! knock_length = 6
//! window = 6
//! protocol = "udp"
//! source = "203.0.113.7"           # the address the server sees (behind NAT)
//! ipv4 = true
//! ```
//!
//! Parsing checks the file's shape and every value that needs no system lookup; ports (which
//! may be service names) and key files are the client's to check, with the line given here.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    string::{String, ToString as _},
    vec::Vec,
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    file_error::{FileError, line_of},
    secret::{MAX_LENGTH, MAX_WINDOW_SECS, MIN_LENGTH},
};

/// A value and the 1-based line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At<T> {
    pub value: T,
    pub line: usize,
}

/// The knock a profile sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Knocks {
    /// `sequence`: `port`, `port:tcp`, `port:udp` or a service name, in order.
    Sequence(At<Vec<String>>),
    /// A secret door's parameters; `None` where the profile leaves the client's default.
    Secret {
        file: At<PathBuf>,
        length: Option<At<u8>>,
        window: Option<At<u32>>,
        udp: Option<At<bool>>,
        source: Option<At<IpAddr>>,
    },
}

/// One `[NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// Line of the `[NAME]` header.
    pub line: usize,
    pub host: At<String>,
    pub knocks: Knocks,
    /// Milliseconds between knocks.
    pub delay: Option<At<u64>>,
    /// `Some(true)`: IPv4 only (`-4`); `Some(false)`: IPv6 only (`-6`).
    pub ipv4_only: Option<At<bool>>,
    pub verbose: bool,
    /// Run once the last knock is sent, without a shell; `%HOST%` becomes the host.
    pub command: Option<At<Vec<String>>>,
}

/// A profile file's tables, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profiles {
    pub path: PathBuf,
    pub tables: BTreeMap<String, Profile>,
}

/// What is wrong with a profile file, as `file:line: message`.
pub type ProfileError = FileError;

/// A table as TOML has it, each value with its place.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    host: Option<Spanned<String>>,
    sequence: Option<Spanned<Vec<String>>>,
    delay: Option<Spanned<i64>>,
    ipv4: Option<Spanned<bool>>,
    ipv6: Option<Spanned<bool>>,
    verbose: Option<bool>,
    command: Option<Spanned<Command>>,
    secret_file: Option<Spanned<String>>,
    knock_length: Option<Spanned<i64>>,
    window: Option<Spanned<i64>>,
    protocol: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
}

/// `command = "ssh %HOST%"` (split into words as a POSIX shell would, but run without one) or
/// `command = ["ssh", "%HOST%"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Command {
    Line(String),
    Words(Vec<String>),
}

/// One table's place in the file, for lines and errors.
struct Place<'a> {
    path: &'a Path,
    text: &'a str,
    name: &'a str,
}

impl Place<'_> {
    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    fn err(&self, offset: usize, message: String) -> ProfileError {
        FileError::at(self.path, self.text, offset, message)
    }

    fn at<T, U>(&self, v: &Spanned<T>, value: U) -> At<U> {
        At { value, line: self.line(v.span().start) }
    }
}

impl Profiles {
    /// Parses a profile file's text.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ProfileError> {
        let raw: BTreeMap<String, Spanned<Raw>> = toml::from_str(text).map_err(|e| {
            FileError::from_toml(path, text, &e, |m| {
                // A key outside any table meets the profiles' map.
                m.replace("expected struct Raw", "expected a profile's [NAME] table").replace(
                    "data did not match any variant of untagged enum Command",
                    "command is neither a string nor an array of strings",
                )
            })
        })?;
        let mut tables = BTreeMap::new();
        for (name, raw) in raw {
            let place = Place { path, text, name: &name };
            let line = header_line(text, &name, raw.span().start);
            let profile = place.profile(line, raw.into_inner())?;
            tables.insert(name, profile);
        }
        Ok(Self { path: path.to_path_buf(), tables })
    }

    /// Reads and parses a profile file.
    pub fn read(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError::whole(path, e.to_string()))?;
        Self::parse(path, &text)
    }
}

/// The line of the `[name]` header at or before `offset` (TOML's span of a table may start at
/// its header or at its first key).
fn header_line(text: &str, name: &str, offset: usize) -> usize {
    let end = text.get(offset..).and_then(|t| t.find('\n')).map_or(text.len(), |n| offset + n);
    let before = text.get(..end).unwrap_or_default();
    let found = before.match_indices('[').rev().find(|(i, _)| {
        let key = before.get(i + 1..).unwrap_or_default().split(']').next().unwrap_or_default().trim();
        key == name || key.trim_matches('"') == name || key.trim_matches('\'') == name
    });
    line_of(text, found.map_or(offset, |(i, _)| i))
}

impl Place<'_> {
    fn profile(&self, line: usize, raw: Raw) -> Result<Profile, ProfileError> {
        let name = self.name;
        let header_err = |message: String| FileError::on_line(self.path, line, message);
        let host = raw.host.as_ref().ok_or_else(|| header_err(std::format!("profile '{name}' has no host")))?;
        if host.get_ref().trim().is_empty() {
            return Err(self.err(host.span().start, std::format!("profile '{name}': host is empty")));
        }
        let host = self.at(host, host.get_ref().clone());
        let delay = match &raw.delay {
            Some(d) => Some(self.at(
                d,
                u64::try_from(*d.get_ref()).map_err(|_| {
                    self.err(
                        d.span().start,
                        std::format!("delay '{}' is not a whole number of milliseconds", d.get_ref()),
                    )
                })?,
            )),
            None => None,
        };
        let ipv4_only = match (&raw.ipv4, &raw.ipv6) {
            (Some(a), Some(b)) if *a.get_ref() && *b.get_ref() => {
                return Err(
                    self.err(b.span().start, std::format!("profile '{name}': ipv4 and ipv6 cannot both be true"))
                );
            }
            (Some(a), _) if *a.get_ref() => Some(self.at(a, true)),
            (_, Some(b)) if *b.get_ref() => Some(self.at(b, false)),
            _ => None,
        };
        let command = raw.command.as_ref().map(|c| self.command(c)).transpose()?;
        let verbose = raw.verbose.unwrap_or(false);
        let knocks = self
            .knocks(raw)?
            .ok_or_else(|| header_err(std::format!("profile '{name}' has neither a sequence nor a secret_file")))?;
        Ok(Profile { name: name.to_string(), line, host, knocks, delay, ipv4_only, verbose, command })
    }

    fn command(&self, c: &Spanned<Command>) -> Result<At<Vec<String>>, ProfileError> {
        let words = match c.get_ref() {
            Command::Words(w) => w.clone(),
            Command::Line(l) => shell_words::split(l)
                .map_err(|e| self.err(c.span().start, std::format!("command '{l}' cannot be split into words: {e}")))?,
        };
        if words.first().is_none_or(String::is_empty) {
            return Err(self.err(c.span().start, std::format!("profile '{}': command is empty", self.name)));
        }
        Ok(self.at(c, words))
    }

    /// The sequence, or the secret door; `None` for neither.
    fn knocks(&self, raw: Raw) -> Result<Option<Knocks>, ProfileError> {
        let name = self.name;
        let Some(file) = raw.secret_file else {
            let stray = [
                raw.knock_length.as_ref().map(|v| (v.span().start, "knock_length")),
                raw.window.as_ref().map(|v| (v.span().start, "window")),
                raw.protocol.as_ref().map(|v| (v.span().start, "protocol")),
                raw.source.as_ref().map(|v| (v.span().start, "source")),
            ];
            if let Some((at, key)) = stray.into_iter().flatten().min() {
                return Err(self.err(at, std::format!("profile '{name}': {key} belongs to a profile with secret_file")));
            }
            return match raw.sequence {
                Some(s) if s.get_ref().is_empty() => {
                    Err(self.err(s.span().start, std::format!("profile '{name}': sequence is empty")))
                }
                Some(s) => Ok(Some(Knocks::Sequence(self.at(&s, s.get_ref().clone())))),
                None => Ok(None),
            };
        };
        if let Some(s) = raw.sequence {
            return Err(self.err(s.span().start, std::format!("profile '{name}' has both secret_file and sequence")));
        }
        let path = PathBuf::from(file.get_ref());
        if !path.is_absolute() {
            return Err(
                self.err(file.span().start, std::format!("secret_file '{}' is not an absolute path", file.get_ref()))
            );
        }
        let length = raw.knock_length.map(|v| match u8::try_from(*v.get_ref()) {
            Ok(n) if (MIN_LENGTH..=MAX_LENGTH).contains(&n) => Ok(self.at(&v, n)),
            _ => Err(self.err(
                v.span().start,
                std::format!("knock_length '{}' is not a whole number from {MIN_LENGTH} to {MAX_LENGTH}", v.get_ref()),
            )),
        });
        let window = raw.window.map(|v| match u32::try_from(*v.get_ref()) {
            Ok(n) if (1..=MAX_WINDOW_SECS).contains(&n) => Ok(self.at(&v, n)),
            _ => Err(self.err(
                v.span().start,
                std::format!("window '{}' is not a whole number of seconds from 1 to {MAX_WINDOW_SECS}", v.get_ref()),
            )),
        });
        let udp = raw.protocol.map(|p| match p.get_ref().to_ascii_lowercase().as_str() {
            "tcp" => Ok(self.at(&p, false)),
            "udp" => Ok(self.at(&p, true)),
            _ => Err(self.err(p.span().start, std::format!("protocol '{}' is neither tcp nor udp", p.get_ref()))),
        });
        let source = raw.source.map(|s| match s.get_ref().parse::<IpAddr>() {
            Ok(a) => Ok(self.at(&s, a)),
            Err(_) => Err(self.err(s.span().start, std::format!("source '{}' is not an IP address", s.get_ref()))),
        });
        Ok(Some(Knocks::Secret {
            file: self.at(&file, path),
            length: length.transpose()?,
            window: window.transpose()?,
            udp: udp.transpose()?,
            source: source.transpose()?,
        }))
    }
}

/// What `knockd --client-profile` writes for a door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Door {
    /// Each step `port:tcp` or `port:udp`.
    Sequence(Vec<String>),
    Secret {
        file: PathBuf,
        length: u8,
        window: u32,
        udp: bool,
    },
}

/// One `[name]` table for `door`, knocked at `host`, after `comment` lines (each written as
/// `# ...`). Every value is written, defaults included, so that the profile does not depend
/// on the client's defaults.
pub fn render(name: &str, host: &str, door: &Door, comment: &[String]) -> Result<String, toml::ser::Error> {
    let mut table = toml::Table::new();
    table.insert("host".into(), host.into());
    match door {
        Door::Sequence(steps) => {
            table.insert("sequence".into(), toml::Value::Array(steps.iter().map(|s| s.as_str().into()).collect()));
        }
        Door::Secret { file, length, window, udp } => {
            table.insert("secret_file".into(), file.display().to_string().into());
            table.insert("knock_length".into(), i64::from(*length).into());
            table.insert("window".into(), i64::from(*window).into());
            table.insert("protocol".into(), if *udp { "udp" } else { "tcp" }.into());
        }
    }
    let mut outer = toml::Table::new();
    outer.insert(name.to_string(), toml::Value::Table(table));
    let mut text = String::new();
    for c in comment {
        text.push_str("# ");
        text.push_str(c);
        text.push('\n');
    }
    text.push_str(&toml::to_string(&outer)?);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::vec;

    use super::*;

    fn parse(text: &str) -> Result<Profiles, String> {
        Profiles::parse(Path::new("knock.toml"), text).map_err(|e| e.to_string())
    }

    fn at<T>(value: T, line: usize) -> At<T> {
        At { value, line }
    }

    #[test]
    fn every_key() {
        let p = parse(concat!(
            "# my doors\n",
            "[ssh-edge]\n",
            "host = \"edge.example.net\"\n",
            "sequence = [\"7000\", \"8000:udp\", \"ssh\"]\n",
            "delay = 200\n",
            "ipv6 = true\n",
            "verbose = true\n",
            "command = \"ssh -p 22 '%HOST%'\"\n",
            "\n",
            "[\"db door\"]\n",
            "host = \"198.18.0.1\"\n",
            "secret_file = \"/home/me/db.key\"\n",
            "knock_length = 6\n",
            "window = 6\n",
            "protocol = \"UDP\"\n",
            "source = \"2001:db8::7\"\n",
            "ipv4 = true\n",
            "command = [\"ssh\", \"%HOST%\"]\n",
        ))
        .unwrap();
        let ssh = &p.tables["ssh-edge"];
        assert_eq!(ssh.line, 2);
        assert_eq!(ssh.host, at("edge.example.net".to_string(), 3));
        assert_eq!(ssh.knocks, Knocks::Sequence(at(vec!["7000".into(), "8000:udp".into(), "ssh".into()], 4)));
        assert_eq!(ssh.delay, Some(at(200, 5)));
        assert_eq!(ssh.ipv4_only, Some(at(false, 6)));
        assert!(ssh.verbose);
        assert_eq!(ssh.command, Some(at(vec!["ssh".into(), "-p".into(), "22".into(), "%HOST%".into()], 8)));
        let db = &p.tables["db door"];
        assert_eq!(db.line, 10);
        assert_eq!(
            db.knocks,
            Knocks::Secret {
                file: at(PathBuf::from("/home/me/db.key"), 12),
                length: Some(at(6, 13)),
                window: Some(at(6, 14)),
                udp: Some(at(true, 15)),
                source: Some(at("2001:db8::7".parse().unwrap(), 16)),
            }
        );
        assert_eq!(db.ipv4_only, Some(at(true, 17)));
        assert!(!db.verbose && db.delay.is_none());
        assert_eq!(db.command.as_ref().unwrap().value, ["ssh", "%HOST%"]);
        let bare = parse("[a]\nhost = \"h\"\nsecret_file = \"/k\"\n").unwrap();
        assert_eq!(
            bare.tables["a"].knocks,
            Knocks::Secret { file: at("/k".into(), 3), length: None, window: None, udp: None, source: None },
            "the client's defaults where the profile says nothing"
        );
    }

    #[test]
    fn errors_name_the_file_and_line() {
        for (text, want) in [
            ("[a]\nhost = \"h\"\nsequence = [\"1\"]\nwindw = 6\n", "knock.toml:4: unknown field `windw`"),
            ("[a]\nsequence = [\"1\"]\n", "knock.toml:1: profile 'a' has no host"),
            ("\n[a]\nhost = \"h\"\n", "knock.toml:2: profile 'a' has neither a sequence nor a secret_file"),
            ("[a]\nhost = \"h\"\nsequence = []\n", "knock.toml:3: profile 'a': sequence is empty"),
            ("[a]\nhost = \"\"\nsequence = [\"1\"]\n", "knock.toml:2: profile 'a': host is empty"),
            ("[a]\nhost = \"h\"\nsequence = [\"1\"]\ndelay = -5\n", "knock.toml:4: delay '-5' is not a whole number"),
            (
                "[a]\nhost = \"h\"\nsequence = [\"1\"]\nipv4 = true\nipv6 = true\n",
                "knock.toml:5: profile 'a': ipv4 and ipv6",
            ),
            (
                "[a]\nhost = \"h\"\nsequence = [\"1\"]\nwindow = 6\n",
                "knock.toml:4: profile 'a': window belongs to a profile with secret_file",
            ),
            ("[a]\nhost = \"h\"\nsecret_file = \"k\"\n", "knock.toml:3: secret_file 'k' is not an absolute path"),
            ("[a]\nhost = \"h\"\nsecret_file = \"/k\"\nsequence = [\"1\"]\n", "knock.toml:4: profile 'a' has both"),
            (
                "[a]\nhost = \"h\"\nsecret_file = \"/k\"\nknock_length = 9\n",
                "knock.toml:4: knock_length '9' is not a whole number from 2 to 8",
            ),
            ("[a]\nhost = \"h\"\nsecret_file = \"/k\"\nwindow = 0\n", "knock.toml:4: window '0' is not"),
            (
                "[a]\nhost = \"h\"\nsecret_file = \"/k\"\nprotocol = \"icmp\"\n",
                "knock.toml:4: protocol 'icmp' is neither tcp nor udp",
            ),
            (
                "[a]\nhost = \"h\"\nsecret_file = \"/k\"\nsource = \"nat\"\n",
                "knock.toml:4: source 'nat' is not an IP address",
            ),
            (
                "[a]\nhost = \"h\"\nsequence = [\"1\"]\ncommand = \"ssh 'x\"\n",
                "knock.toml:4: command 'ssh 'x' cannot be split",
            ),
            ("[a]\nhost = \"h\"\nsequence = [\"1\"]\ncommand = []\n", "knock.toml:4: profile 'a': command is empty"),
            ("host = \"h\"\n", "knock.toml:1: invalid type: string \"h\", expected a profile's [NAME] table"),
            ("[a]\nhost = \"h\"\nsequence = [\"1\"]\n[a]\n", "knock.toml:4: "),
            ("[a]\nhost = 5\n", "knock.toml:2: invalid type"),
            (
                "[a]\nhost = \"h\"\nsequence = [\"1\"]\ncommand = 5\n",
                "knock.toml:4: command is neither a string nor an array of strings",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_rendered_profile_parses_back() {
        let secret = Door::Secret { file: "/etc/knockgate/db.key".into(), length: 6, window: 6, udp: true };
        let text = render("db door", "198.18.0.1", &secret, &["from knockd".into()]).unwrap();
        assert!(text.starts_with("# from knockd\n[\"db door\"]\n"), "{text}");
        let p = parse(&text).unwrap();
        let db = &p.tables["db door"];
        assert_eq!(db.host.value, "198.18.0.1");
        let Knocks::Secret { file, length, window, udp, source } = &db.knocks else { panic!("{db:?}") };
        assert_eq!(
            (
                &file.value,
                length.as_ref().map(|l| l.value),
                window.as_ref().map(|w| w.value),
                udp.as_ref().map(|u| u.value)
            ),
            (&PathBuf::from("/etc/knockgate/db.key"), Some(6), Some(6), Some(true))
        );
        assert!(source.is_none());
        let plain = Door::Sequence(vec!["7000:tcp".into(), "8000:udp".into()]);
        let text = render("ssh", "edge", &plain, &[]).unwrap();
        // Appended to a file of other profiles, it is one more table.
        let both = std::format!("[other]\nhost = \"x\"\nsequence = [\"1\"]\n\n{text}delay = 250\n");
        let p = parse(&both).unwrap();
        let ssh = &p.tables["ssh"];
        assert_eq!(ssh.knocks, Knocks::Sequence(at(vec!["7000:tcp".into(), "8000:udp".into()], 7)));
        assert_eq!(ssh.delay.as_ref().map(|d| d.value), Some(250));
        assert_eq!(ssh.line, 5);
    }
}
