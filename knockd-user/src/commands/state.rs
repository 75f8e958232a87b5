//! The state directory of one interface, `StateDir/IFACE`: the journal of pending stop
//! commands, and a lock that one process at a time holds (a second daemon on the same
//! interface would take over the pinned link from under the first; `--unload` must not run
//! while a daemon does).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use crate::observe::status::DoorLabel;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("knockd already runs on {iface} (process {holder}, holding {path})")]
    Busy { iface: String, holder: String, path: PathBuf },
}

/// The locked state directory of one interface.
pub struct StateDir {
    dir: PathBuf,
    lock: Flock<File>,
}

impl StateDir {
    /// Makes `root/iface` (mode 0700) and takes its lock, or says who holds it.
    pub fn lock(root: &Path, iface: &str) -> Result<Self, StateError> {
        let dir = root.join(iface);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |error| StateError::Io { path, error }
        };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_err(&dir))?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder).map_err(io_err(&path))?;
                let holder = holder.trim().to_owned();
                return Err(StateError::Busy {
                    iface: iface.to_owned(),
                    holder: if holder.is_empty() { "?".into() } else { holder },
                    path,
                });
            }
        };
        let mut state = Self { dir, lock };
        state.note_pid().map_err(io_err(&path))?;
        Ok(state)
    }

    /// Writes this process's id into the lock file (again after `-d` forks), for the message
    /// another process gets.
    pub fn note_pid(&mut self) -> io::Result<()> {
        self.lock.set_len(0)?;
        self.lock.rewind()?;
        writeln!(self.lock, "{}", std::process::id())
    }

    /// Where the daemon says which door holds which kernel slot.
    #[must_use]
    pub fn doors_file(root: &Path, iface: &str) -> PathBuf {
        root.join(iface).join("doors.json")
    }

    /// The door labels the last daemon wrote for `iface` (none if it wrote none).
    #[must_use]
    pub fn read_labels(root: &Path, iface: &str) -> Vec<DoorLabel> {
        std::fs::read(Self::doors_file(root, iface))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Replaces the door labels, atomically.
    pub fn write_labels(&self, labels: &[DoorLabel]) -> Result<(), StateError> {
        let path = self.dir.join("doors.json");
        let tmp = self.dir.join("doors.json.tmp");
        let text = serde_json::to_vec_pretty(labels)
            .map_err(|e| StateError::Io { path: path.clone(), error: io::Error::other(e) })?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|error| StateError::Io { path, error })
    }

    /// The journal of pending stop commands.
    #[must_use]
    pub fn journal(&self) -> PathBuf {
        self.dir.join("stops.journal")
    }

    /// The directory itself (a fleet keeps its record of applied grants there).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        let first = StateDir::lock(root.path(), "eth0").unwrap();
        let err = StateDir::lock(root.path(), "eth0").err().unwrap().to_string();
        assert!(err.contains(&format!("knockd already runs on eth0 (process {}", std::process::id())), "{err}");
        assert!(StateDir::lock(root.path(), "eth1").is_ok(), "another interface is another lock");
        drop(first);
        assert!(StateDir::lock(root.path(), "eth0").is_ok());
    }
}
