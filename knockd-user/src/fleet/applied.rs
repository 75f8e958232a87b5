//! The grants whose commands this node has run, kept in `StateDir/IFACE/fleet-applied` until
//! they expire: a node that starts again is handed every live grant, and must not run a
//! start command twice (`iptables -A` twice, then one `-D`, would leave a rule behind).
//! Gate allowances need no record: writing one again changes nothing.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

/// The file's name in the state directory.
pub const FILE: &str = "fleet-applied";

#[derive(Debug)]
pub struct Applied {
    path: PathBuf,
    file: File,
    /// Nonce to expiry (ms since the Unix epoch).
    seen: HashMap<[u8; 16], u64>,
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
    use std::fmt::Write as _;
    let mut text = nonce.iter().fold(String::new(), |mut s, b| {
        // Writing to a String cannot fail.
        let _infallible: std::fmt::Result = write!(s, "{b:02x}");
        s
    });
    let _infallible: std::fmt::Result = writeln!(text, " {expires_ms}");
    text
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
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, seen.iter().map(|(n, e)| line(n, *e)).collect::<String>())?;
        std::fs::rename(&tmp, &path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(Self { path, file, seen })
    }

    /// Records grant `nonce` (until `expires_ms`); false if it was recorded already.
    pub fn first(&mut self, nonce: [u8; 16], expires_ms: u64) -> io::Result<bool> {
        if self.seen.contains_key(&nonce) {
            return Ok(false);
        }
        self.file.write_all(line(&nonce, expires_ms).as_bytes())?;
        self.file.sync_data()?;
        self.seen.insert(nonce, expires_ms);
        Ok(true)
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_runs_once_across_restarts_and_expired_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Applied::open(dir.path(), 1_000).unwrap();
        assert!(a.first([1; 16], 5_000).unwrap());
        assert!(!a.first([1; 16], 5_000).unwrap());
        assert!(a.first([2; 16], 2_000).unwrap());
        drop(a);
        let mut again = Applied::open(dir.path(), 3_000).unwrap();
        assert!(!again.first([1; 16], 5_000).unwrap(), "kept across a restart");
        assert!(again.first([2; 16], 2_000).unwrap(), "expired, and forgotten");
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
