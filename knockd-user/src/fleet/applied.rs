//! The grants whose commands this node has run, kept in `StateDir/IFACE/fleet-applied` until
//! they expire: a node that starts again is handed every live grant, and must not run a
//! start command twice (`iptables -A` twice, then one `-D`, would leave a rule behind).
//! Gate allowances need no record: writing one again changes nothing.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

/// The file's name in the state directory.
pub const FILE: &str = "fleet-applied";
/// Records between two sweeps of the expired ones.
const SWEEP_EVERY: usize = 1024;

#[derive(Debug)]
pub struct Applied {
    /// The file and its handle; `None` kept in memory only (the file could not be kept).
    file: Option<(PathBuf, File)>,
    /// Nonce to expiry (ms since the Unix epoch).
    seen: HashMap<[u8; 16], u64>,
    recorded: usize,
}

fn parse(line: &str) -> Option<([u8; 16], u64)> {
    let (nonce, expires) = line.split_once(' ')?;
    if nonce.len() != 32 {
        return None;
    }
    let mut n = [0u8; 16];
    for (i, b) in n.iter_mut().enumerate() {
        *b = u8::from_str_radix(nonce.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some((n, expires.parse().ok()?))
}

fn line(nonce: &[u8; 16], expires_ms: u64) -> String {
    let mut text = nonce.iter().fold(String::new(), |mut s, b| {
        // Writing to a String cannot fail.
        let _infallible: std::fmt::Result = write!(s, "{b:02x}");
        s
    });
    let _infallible: std::fmt::Result = writeln!(text, " {expires_ms}");
    text
}

/// Writes `seen` to `path` whole (through a new file renamed over it) and opens it to append.
fn rewrite(path: &Path, seen: &HashMap<[u8; 16], u64>) -> io::Result<File> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, seen.iter().map(|(n, e)| line(n, *e)).collect::<String>())?;
    std::fs::rename(&tmp, path)?;
    OpenOptions::new().append(true).open(path)
}

impl Applied {
    /// Reads the record in `dir`, keeping what has not expired at `now_ms`, and rewrites it so.
    pub fn open(dir: &Path, now_ms: u64) -> io::Result<Self> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let seen: HashMap<[u8; 16], u64> = text.lines().filter_map(parse).filter(|(_, e)| *e > now_ms).collect();
        let file = rewrite(&path, &seen)?;
        Ok(Self { file: Some((path, file)), seen, recorded: 0 })
    }

    /// A record kept in memory only: a restart forgets it.
    #[must_use]
    pub fn in_memory() -> Self {
        Self { file: None, seen: HashMap::new(), recorded: 0 }
    }

    /// Records grant `nonce` (until `expires_ms`); false if it was recorded already. Every
    /// `SWEEP_EVERY` records, the expired ones go.
    pub fn first(&mut self, nonce: [u8; 16], expires_ms: u64, now_ms: u64) -> io::Result<bool> {
        if self.seen.contains_key(&nonce) {
            return Ok(false);
        }
        self.seen.insert(nonce, expires_ms);
        self.recorded += 1;
        if self.recorded.is_multiple_of(SWEEP_EVERY) {
            self.seen.retain(|_, e| *e > now_ms);
            if let Some((path, file)) = &mut self.file {
                *file = rewrite(path, &self.seen)?;
            }
        } else if let Some((_, file)) = &mut self.file {
            file.write_all(line(&nonce, expires_ms).as_bytes())?;
            file.sync_data()?;
        }
        Ok(true)
    }

    /// Grants recorded and not yet swept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_runs_once_across_restarts_and_expired_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Applied::open(dir.path(), 1_000).unwrap();
        assert!(a.first([1; 16], 5_000, 1_000).unwrap());
        assert!(!a.first([1; 16], 5_000, 1_000).unwrap());
        assert!(a.first([2; 16], 2_000, 1_000).unwrap());
        drop(a);
        let mut again = Applied::open(dir.path(), 3_000).unwrap();
        assert!(!again.first([1; 16], 5_000, 3_000).unwrap(), "kept across a restart");
        assert!(again.first([2; 16], 2_000, 3_000).unwrap(), "expired, and forgotten");
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn expired_records_are_swept_as_they_accumulate() {
        let mut a = Applied::in_memory();
        for i in 0..SWEEP_EVERY - 1 {
            let nonce: [u8; 16] = u128::try_from(i).unwrap().to_be_bytes();
            assert!(a.first(nonce, 10, 5).unwrap());
        }
        assert_eq!(a.len(), SWEEP_EVERY - 1);
        assert!(a.first([0xff; 16], 100, 50).unwrap());
        assert_eq!(a.len(), 1, "the expired ones went at the sweep");
    }
}
