//! Secret-keyed doors' directives (`secret_file`, `knock_length`, `window`, `protocol`) as
//! the parsers meet them, and their key files.

use std::path::{Path, PathBuf};

use knock_common::secret::{
    DEFAULT_LENGTH, DEFAULT_WINDOW_SECS, MAX_LENGTH, MAX_WINDOW_SECS, MIN_LENGTH,
    derive::{Params, Secret},
};

use crate::config::{Proto, SecretDoor};

/// The secret directives of one door as the parser meets them, in any order.
#[derive(Debug, Default)]
pub struct Draft {
    pub file: Option<(PathBuf, Secret, usize)>,
    pub length: Option<(u8, usize)>,
    pub window: Option<(u32, usize)>,
    pub proto: Option<(Proto, usize)>,
}

impl Draft {
    /// Takes one directive (`key` upper case); false if it is not a secret door's.
    pub fn directive(&mut self, line: usize, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "SECRET_FILE" => {
                let path = PathBuf::from(value);
                if !path.is_absolute() {
                    return Err(format!("secret_file '{value}' is not an absolute path"));
                }
                let key = load_key(&path)?;
                self.file = Some((path, key, line));
            }
            "KNOCK_LENGTH" => self.length = Some((parse_length(value)?, line)),
            "WINDOW" => self.window = Some((parse_window(value)?, line)),
            "PROTOCOL" => self.proto = Some((parse_protocol(value)?, line)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The door, once its section has been read; `Err((line, message))` for options without
    /// `secret_file`.
    pub fn finish(self) -> Result<Option<SecretDoor>, (usize, String)> {
        let Some((path, key, _)) = self.file else {
            let stray = [
                self.length.map(|(_, l)| (l, "knock_length")),
                self.window.map(|(_, l)| (l, "window")),
                self.proto.map(|(_, l)| (l, "protocol")),
            ];
            return match stray.into_iter().flatten().min() {
                Some((line, what)) => Err((line, format!("{what} belongs to a door with secret_file"))),
                None => Ok(None),
            };
        };
        let proto = self.proto.map_or(Proto::Tcp, |(p, _)| p);
        let params = Params {
            length: self.length.map_or(DEFAULT_LENGTH, |(l, _)| l),
            window_secs: self.window.map_or(DEFAULT_WINDOW_SECS, |(w, _)| w),
            proto: proto.number(),
        };
        Ok(Some(SecretDoor { path, key, params, fleet_claim: false }))
    }

    /// The line of `secret_file`, if the door has one.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        self.file.as_ref().map(|(_, _, l)| *l)
    }
}

/// Reads a key file, which must belong to the user knockd runs as.
pub fn load_key(path: &Path) -> Result<Secret, String> {
    Secret::read_file(path, Some(nix::unistd::geteuid().as_raw())).map_err(|e| e.to_string())
}

pub fn parse_length(value: &str) -> Result<u8, String> {
    match value.parse::<u8>() {
        Ok(n) if (MIN_LENGTH..=MAX_LENGTH).contains(&n) => Ok(n),
        _ => Err(format!("knock_length '{value}' is not a whole number from {MIN_LENGTH} to {MAX_LENGTH}")),
    }
}

pub fn parse_window(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_WINDOW_SECS).contains(&n) => Ok(n),
        _ => Err(format!("window '{value}' is not a whole number of seconds from 1 to {MAX_WINDOW_SECS}")),
    }
}

pub fn parse_protocol(value: &str) -> Result<Proto, String> {
    match value.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(format!("protocol '{value}' is neither tcp nor udp")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, check};

    /// A key file in a directory of its own, removed on drop.
    struct KeyDir(PathBuf);

    impl KeyDir {
        fn new(name: &str, hex: &str, mode: u32) -> (Self, PathBuf) {
            use std::os::unix::fs::PermissionsExt as _;
            let dir = std::env::temp_dir().join(format!("knockgate-secret-door-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let key = dir.join("k");
            std::fs::write(&key, hex).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            (Self(dir), key)
        }
    }

    impl Drop for KeyDir {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).expect("remove the key directory");
        }
    }

    #[test]
    fn config_files_with_secret_doors() {
        let (_dir, key) = KeyDir::new("ok", "00112233445566778899aabbccddeeff\n", 0o600);
        let k = key.display();
        let parse = |text: &str| Config::parse(Path::new("t.conf"), text).map_err(|e| e.to_string());
        let c = parse(&format!("[ssh]\nsecret_file = {k}\nwindow = 10\nprotocol = udp\ngate = 22/tcp\n")).unwrap();
        let s = c.doors[0].secret.as_ref().unwrap();
        assert_eq!((s.params.length, s.params.window_secs, s.proto()), (DEFAULT_LENGTH, 10, Proto::Udp));
        assert!(c.doors[0].sequence.is_empty());
        assert_eq!(
            check::summary(&c.doors[0]),
            format!("secret {k}: 4 udp ports, window 10s, 48 bits to guess; seq_timeout 25s; gate 22/tcp for 30s")
        );
        let short = parse(&format!("[ssh]\nsecret_file = {k}\nknock_length = 2\n")).unwrap();
        assert_eq!(
            short.doors[0].secret.as_ref().unwrap().weakness().as_deref(),
            Some("knock_length 2 leaves 16 bits to guess once a window's first port is seen: 4 or more gives 48")
        );
        let t = Config::parse(
            Path::new("t.toml"),
            &format!("[[door]]\nname = \"ssh\"\nsecret_file = \"{k}\"\nknock_length = 6\n"),
        )
        .unwrap();
        assert_eq!(t.doors[0].secret.as_ref().unwrap().params.length, 6);
        assert_eq!(
            parse(&format!("[ssh]\nsequence = 1,2\nsecret_file = {k}\n")).unwrap_err(),
            "t.conf:3: door 'ssh' has both secret_file and sequence"
        );
        assert_eq!(
            parse(&format!("[ssh]\nsecret_file = {k}\nstealth = yes\n")).unwrap_err(),
            "t.conf:2: door 'ssh': stealth is not available for a door with secret_file"
        );
        assert_eq!(
            parse("[ssh]\nknock_length = 4\n").unwrap_err(),
            "t.conf:2: knock_length belongs to a door with secret_file"
        );
        assert_eq!(
            parse(&format!("[ssh]\nsecret_file = {k}\nknock_length = 9\n")).unwrap_err(),
            "t.conf:3: knock_length '9' is not a whole number from 2 to 8"
        );
        let (_short, short) = KeyDir::new("short", "0011223344556677\n", 0o600);
        assert_eq!(
            parse(&format!("[ssh]\nsecret_file = {}\n", short.display())).unwrap_err(),
            format!("t.conf:2: key file {}: a 64-bit key is too short: at least 128 bits are needed", short.display())
        );
        let (_open, open) = KeyDir::new("open", "00112233445566778899aabbccddeeff\n", 0o644);
        assert_eq!(
            parse(&format!("[ssh]\nsecret_file = {}\n", open.display())).unwrap_err(),
            format!(
                "t.conf:2: key file {}: mode 0644 lets other users at the key: make it 0600 (chmod 600)",
                open.display()
            )
        );
    }

    #[test]
    fn directives_are_checked() {
        assert_eq!(parse_length("4"), Ok(4));
        assert!(parse_length("1").unwrap_err().contains("from 2 to 8"));
        assert!(parse_length("9").is_err());
        assert!(parse_window("0").unwrap_err().contains("window '0'"));
        assert_eq!(parse_protocol("UDP"), Ok(Proto::Udp));
        assert!(parse_protocol("icmp").is_err());
        let mut d = Draft::default();
        assert_eq!(d.directive(3, "WINDOW", "10"), Ok(true));
        assert_eq!(d.directive(4, "SEQUENCE", "1"), Ok(false));
        assert_eq!(d.finish(), Err((3, "window belongs to a door with secret_file".to_owned())));
        assert!(Draft::default().directive(1, "SECRET_FILE", "rel/key").unwrap_err().contains("not an absolute path"));
    }
}
