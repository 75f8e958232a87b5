//! Secret-keyed doors in user space: their config directives, and the window keys the daemon
//! installs in the kernel as time passes (the secret itself never goes there; see
//! `knock_common::secret`).

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use knock_common::{
    DoorWindows, WindowKey,
    secret::{
        DEFAULT_LENGTH, DEFAULT_WINDOW_SECS, MAX_LENGTH, MAX_WINDOW_SECS, MIN_LENGTH, WINDOWS,
        derive::{Params, Secret},
    },
};

use crate::config::Proto;

/// A door whose sequence is derived from a key (`secret_file`), per window and source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDoor {
    pub path: PathBuf,
    pub key: Secret,
    pub params: Params,
}

/// The two clocks a window key ties together: wall-clock time, which says which window it is
/// (client and server agree on it), and `CLOCK_MONOTONIC` (the kernel's `ktime`), in which
/// the kernel's deadlines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub unix_ns: u128,
    pub mono_ns: u64,
}

impl Clock {
    #[must_use]
    pub fn now() -> Self {
        let unix_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Self { unix_ns, mono_ns: crate::observe::status::monotonic_ns() }
    }

    /// `CLOCK_MONOTONIC` at wall-clock second `unix_secs` (0 if that is before boot).
    fn mono_at(&self, unix_secs: u64) -> u64 {
        let at = u128::from(unix_secs) * 1_000_000_000;
        let mono = u128::from(self.mono_ns);
        let t = if at >= self.unix_ns { mono + (at - self.unix_ns) } else { mono.saturating_sub(self.unix_ns - at) };
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    fn unix_secs(&self) -> u64 {
        u64::try_from(self.unix_ns / 1_000_000_000).unwrap_or(u64::MAX)
    }
}

impl SecretDoor {
    /// The window it is at `clock`.
    #[must_use]
    pub fn window(&self, clock: &Clock) -> u64 {
        self.params.window_at(clock.unix_secs())
    }

    /// The kernel's keys at `clock`: windows w-1 to w+2, window x accepted from the start of
    /// window x-1 to the end of window x+1.
    #[must_use]
    pub fn windows(&self, clock: &Clock) -> DoorWindows {
        let w = self.window(clock);
        let secs = u64::from(self.params.window_secs);
        let mut out = DoorWindows::default();
        for x in w.saturating_sub(1)..=w.saturating_add(2) {
            let key = WindowKey {
                live: 1,
                not_before_ns: clock.mono_at(x.saturating_sub(1).saturating_mul(secs)),
                not_after_ns: clock.mono_at(x.saturating_add(2).saturating_mul(secs)),
                ..self.key.window_key(&self.params, x)
            };
            out.keys[usize::try_from(x % WINDOWS as u64).unwrap_or(0)] = key;
        }
        out
    }

    /// How long until the next window starts.
    #[must_use]
    pub fn until_next_window(&self, clock: &Clock) -> Duration {
        let secs = u128::from(self.params.window_secs);
        let next = (clock.unix_ns / 1_000_000_000 / secs + 1) * secs * 1_000_000_000;
        Duration::from_nanos(u64::try_from(next - clock.unix_ns).unwrap_or(u64::MAX))
    }

    /// What a guesser who saw this window's first port must find, in bits.
    #[must_use]
    pub fn guess_bits(&self) -> f64 {
        self.params.guess_bits()
    }

    /// A warning for a knock short enough to brute-force (under 48 bits), if it is.
    #[must_use]
    pub fn weakness(&self) -> Option<String> {
        (self.params.length < DEFAULT_LENGTH).then(|| {
            format!(
                "knock_length {} leaves {:.0} bits to guess once a window's first port is seen: {DEFAULT_LENGTH} or more gives 48",
                self.params.length,
                self.guess_bits()
            )
        })
    }

    #[must_use]
    pub fn proto(&self) -> Proto {
        if self.params.proto == knock_common::PROTO_UDP { Proto::Udp } else { Proto::Tcp }
    }
}

/// What the secret doors' keys in the kernel were made for: each door's window, and the wall
/// clock's offset from `CLOCK_MONOTONIC` (the kernel's deadlines are written in the latter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    pub windows: Vec<u64>,
    pub offset_ns: i128,
}

impl Installed {
    /// Wall-clock steps smaller than this leave the kernel's deadlines as they are.
    const CLOCK_STEP_NS: i128 = 500_000_000;

    #[must_use]
    pub fn at<'a>(doors: impl IntoIterator<Item = &'a SecretDoor>, clock: &Clock) -> Self {
        let windows = doors.into_iter().map(|d| d.window(clock)).collect();
        let unix = i128::try_from(clock.unix_ns).unwrap_or(i128::MAX);
        Self { windows, offset_ns: unix - i128::from(clock.mono_ns) }
    }

    /// Whether keys installed for `self` are out of date for `now`: a door has moved on to
    /// another window, or the wall clock has been stepped.
    #[must_use]
    pub fn stale(&self, now: &Self) -> bool {
        self.windows != now.windows
            || (!now.windows.is_empty() && (self.offset_ns - now.offset_ns).abs() >= Self::CLOCK_STEP_NS)
    }
}

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
        Ok(Some(SecretDoor { path, key, params }))
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
    use knock_common::PROTO_TCP;

    use super::*;

    fn door(window_secs: u32) -> SecretDoor {
        SecretDoor {
            path: PathBuf::from("/k"),
            key: Secret::from_bytes(&[3; 32]),
            params: Params { length: 4, window_secs, proto: PROTO_TCP },
        }
    }

    #[test]
    fn keys_cover_the_windows_around_now_with_kernel_deadlines() {
        let d = door(30);
        // 10 s into window 1000 (unix 30,010 s); CLOCK_MONOTONIC reads 500 s.
        let clock = Clock { unix_ns: 30_010 * 1_000_000_000, mono_ns: 500_000_000_000 };
        assert_eq!(d.window(&clock), 1000);
        let w = d.windows(&clock);
        let mono = |unix_secs: i64| u64::try_from(500_000_000_000 + (unix_secs - 30_010) * 1_000_000_000).unwrap();
        for x in [999u64, 1000, 1001, 1002] {
            let k = &w.keys[usize::try_from(x % 4).unwrap()];
            assert_eq!((k.window, k.live), (x, 1));
            assert_eq!(k.first, d.key.window_key(&d.params, x).first);
            // Accepted from the start of window x - 1 to the end of window x + 1.
            let x = i64::try_from(x).unwrap();
            assert_eq!((k.not_before_ns, k.not_after_ns), (mono((x - 1) * 30), mono((x + 2) * 30)));
        }
        // Now (window 1000): w-1, w and w+1, not w+2.
        let now = mono(30_010);
        let live: Vec<u64> = w.keys.iter().filter(|k| k.live_at(now)).map(|k| k.window).collect();
        assert_eq!(live.len(), 3);
        assert!(!live.contains(&1002));
        // 20 s on, with the daemon late (the keys still those of window 1000): 1000, 1001 and 1002.
        let late: Vec<u64> = w.keys.iter().filter(|k| k.live_at(mono(30_030))).map(|k| k.window).collect();
        assert_eq!(late, [1000, 1001, 1002]);
        assert_eq!(d.until_next_window(&clock), Duration::from_secs(20));
        // Moving to the next window replaces only the key of window 999.
        let later = d.windows(&Clock { unix_ns: 30_030 * 1_000_000_000, mono_ns: 520_000_000_000 });
        assert_eq!(later.keys[usize::try_from(1000 % 4).unwrap()], w.keys[usize::try_from(1000 % 4).unwrap()]);
        assert_eq!(later.keys[usize::try_from(1003 % 4).unwrap()].window, 1003);
    }

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
        use crate::config::Config;
        let (_dir, key) = KeyDir::new("ok", "00112233445566778899aabbccddeeff\n", 0o600);
        let k = key.display();
        let parse = |text: &str| Config::parse(Path::new("t.conf"), text).map_err(|e| e.to_string());
        let c = parse(&format!("[ssh]\nsecret_file = {k}\nwindow = 10\nprotocol = udp\ngate = 22/tcp\n")).unwrap();
        let s = c.doors[0].secret.as_ref().unwrap();
        assert_eq!((s.params.length, s.params.window_secs, s.proto()), (DEFAULT_LENGTH, 10, Proto::Udp));
        assert!(c.doors[0].sequence.is_empty());
        assert_eq!(
            crate::config::check::summary(&c.doors[0]),
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
    fn keys_are_stale_at_a_new_window_or_a_stepped_clock_only() {
        let d = door(30);
        let at = |unix_ms: u128, mono_ms: u64| {
            Installed::at([&d], &Clock { unix_ns: unix_ms * 1_000_000, mono_ns: mono_ms * 1_000_000 })
        };
        let installed = at(30_010_000, 500_000);
        assert!(!installed.stale(&at(30_010_250, 500_250)), "time passing");
        assert!(!installed.stale(&at(30_019_999, 509_999)), "the same window");
        assert!(installed.stale(&at(30_030_000, 520_000)), "the next window");
        assert!(installed.stale(&at(30_012_000, 501_000)), "the wall clock stepped 1 s");
        assert!(!installed.stale(&at(30_010_100, 500_000)), "100 ms of jitter");
        assert!(!Installed::default().stale(&Installed::at([], &Clock::now())), "no secret door");
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
