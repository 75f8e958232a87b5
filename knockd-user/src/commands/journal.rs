//! The journal of pending stop commands, `StateDir/IFACE/stops.journal`: one JSON record a
//! line, appended and synced to disk before the start command it answers runs, so that a stop
//! owed survives any end of the process (SIGKILL, a panic, a reboot). Due times are wall-clock
//! milliseconds since the Unix epoch, so they mean the same after a reboot.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// One pending stop command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub door: String,
    pub ip: IpAddr,
    /// When the stop is due, ms since the Unix epoch.
    pub due_ms: u64,
    /// The stop command with `%IP%` already substituted: the rule added is removed with the
    /// command of the config that added it, whatever the config says by then.
    pub stop: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Add { door: String, ip: IpAddr, due_ms: u64, stop: String },
    Due { door: String, ip: IpAddr, due_ms: u64 },
    Done { door: String, ip: IpAddr },
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {error}")]
pub struct JournalError {
    pub path: PathBuf,
    pub error: io::Error,
}

/// What `Journal::open` found.
pub struct Opened {
    pub journal: Journal,
    /// The pending stops it holds.
    pub entries: Vec<Entry>,
    /// What could not be read, one message a line (for the log).
    pub damage: Vec<String>,
}

/// The open journal.
pub struct Journal {
    path: PathBuf,
    out: BufWriter<File>,
    /// Records in the file, for deciding when to compact.
    records: usize,
}

type Key = (String, IpAddr);

impl Journal {
    /// Opens the journal at `path` (made if missing) and returns the pending entries it
    /// holds. Lines that cannot be read (a torn last write, a damaged file) are reported with
    /// the path and line and skipped; the readable entries are kept, the damaged file is kept
    /// beside as `PATH.corrupt` and the journal rewritten without it.
    pub fn open(path: &Path) -> Result<Opened, JournalError> {
        let err = |error| JournalError { path: path.to_path_buf(), error };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(err(e)),
        };
        let (entries, bad) = replay(&text);
        let mut damage: Vec<String> = bad
            .iter()
            .map(|(line, content)| format!("{}:{line}: unreadable journal entry skipped: {content:?}", path.display()))
            .collect();
        if !bad.is_empty() {
            let keep = path.with_extension("journal.corrupt");
            std::fs::copy(path, &keep).map_err(err)?;
            damage.push(format!(
                "{}: {} unreadable line(s), {} entries kept; the damaged file is kept as {}",
                path.display(),
                bad.len(),
                entries.len(),
                keep.display()
            ));
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
        let mut journal = Self { path: path.to_path_buf(), out: BufWriter::new(file), records: 0 };
        journal.compact(&entries)?;
        Ok(Opened { journal, entries, damage })
    }

    /// Appends a new pending stop (written by the next `sync`).
    pub fn add(&mut self, e: &Entry) -> Result<(), JournalError> {
        self.append(&Record::Add { door: e.door.clone(), ip: e.ip, due_ms: e.due_ms, stop: e.stop.clone() })
    }

    /// Records a new due time for a pending stop.
    pub fn due(&mut self, door: &str, ip: IpAddr, due_ms: u64) -> Result<(), JournalError> {
        self.append(&Record::Due { door: door.to_owned(), ip, due_ms })
    }

    /// Records that a pending stop has run (or is no longer owed).
    pub fn done(&mut self, door: &str, ip: IpAddr) -> Result<(), JournalError> {
        self.append(&Record::Done { door: door.to_owned(), ip })
    }

    fn append(&mut self, r: &Record) -> Result<(), JournalError> {
        write_record(&mut self.out, r).map_err(|e| self.err(e))?;
        self.records += 1;
        Ok(())
    }

    /// Writes what was appended and waits until it is on disk.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.out.flush().and_then(|()| self.out.get_ref().sync_data()).map_err(|e| self.err(e))
    }

    /// Whether the file has grown well past the `live` entries it describes.
    #[must_use]
    pub fn wants_compaction(&self, live: usize) -> bool {
        self.records > 1024 && self.records > 4 * live
    }

    /// Replaces the file, atomically, by one holding only `live`.
    pub fn compact<'a>(&mut self, live: impl IntoIterator<Item = &'a Entry>) -> Result<(), JournalError> {
        self.sync()?;
        let tmp = self.path.with_extension("journal.tmp");
        let mut records = 0;
        {
            let file = File::create(&tmp).map_err(|e| self.err(e))?;
            let mut w = BufWriter::new(file);
            for e in live {
                let r = Record::Add { door: e.door.clone(), ip: e.ip, due_ms: e.due_ms, stop: e.stop.clone() };
                write_record(&mut w, &r).map_err(|e| self.err(e))?;
                records += 1;
            }
            w.flush().map_err(|e| self.err(e))?;
            w.get_ref().sync_all().map_err(|e| self.err(e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| self.err(e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| self.err(e))?;
        }
        let file = OpenOptions::new().append(true).open(&self.path).map_err(|e| self.err(e))?;
        self.out = BufWriter::new(file);
        self.records = records;
        Ok(())
    }

    fn err(&self, error: io::Error) -> JournalError {
        JournalError { path: self.path.clone(), error }
    }
}

/// Writes one record as a line.
fn write_record(w: &mut impl io::Write, r: &Record) -> io::Result<()> {
    let line = serde_json::to_string(r).map_err(io::Error::other)?;
    w.write_all(line.as_bytes())?;
    w.write_all(b"\n")
}

/// The entries `text` leaves pending, in the order they were added, and the lines (1-based,
/// with their text) that could not be read.
fn replay(text: &str) -> (Vec<Entry>, Vec<(usize, String)>) {
    let mut pending: HashMap<Key, (usize, Entry)> = HashMap::new();
    let mut bad = Vec::new();
    for (n, line) in (1..).zip(text.split_inclusive('\n')) {
        let Some(body) = line.strip_suffix('\n') else {
            // A last line without its newline is a write that did not finish.
            bad.push((n, line.to_owned()));
            continue;
        };
        if body.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(body) {
            Ok(Record::Add { door, ip, due_ms, stop }) => {
                pending.insert((door.clone(), ip), (n, Entry { door, ip, due_ms, stop }));
            }
            Ok(Record::Due { door, ip, due_ms }) => {
                if let Some((_, e)) = pending.get_mut(&(door, ip)) {
                    e.due_ms = due_ms;
                }
            }
            Ok(Record::Done { door, ip }) => {
                pending.remove(&(door, ip));
            }
            Err(_) => bad.push((n, body.to_owned())),
        }
    }
    let mut entries: Vec<(usize, Entry)> = pending.into_values().collect();
    entries.sort_by_key(|(n, _)| *n);
    (entries.into_iter().map(|(_, e)| e).collect(), bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(door: &str, ip: &str, due_ms: u64) -> Entry {
        Entry { door: door.into(), ip: ip.parse().unwrap(), due_ms, stop: format!("stop {ip}") }
    }

    #[test]
    fn records_replay_to_the_pending_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stops.journal");
        {
            let Opened { journal: mut j, entries, .. } = Journal::open(&path).unwrap();
            assert!(entries.is_empty());
            j.add(&entry("ssh", "198.18.0.2", 100)).unwrap();
            j.add(&entry("ssh", "198.18.0.3", 200)).unwrap();
            j.add(&entry("web", "2001:db8::2", 300)).unwrap();
            j.due("ssh", "198.18.0.2".parse().unwrap(), 150).unwrap();
            j.done("ssh", "198.18.0.3".parse().unwrap()).unwrap();
            j.sync().unwrap();
        }
        let entries = Journal::open(&path).unwrap().entries;
        assert_eq!(entries, [entry("ssh", "198.18.0.2", 150), entry("web", "2001:db8::2", 300)]);
        // Opening compacted the file to the live entries.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    #[test]
    fn damaged_lines_are_skipped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stops.journal");
        let good = serde_json::to_string(&Record::Add {
            door: "ssh".into(),
            ip: "198.18.0.2".parse().unwrap(),
            due_ms: 5,
            stop: "stop 198.18.0.2".into(),
        })
        .unwrap();
        // A garbage line, a good one, and a torn last write.
        std::fs::write(&path, format!("{{\"add\":{{\"door\n{good}\n{{\"done\":{{\"door\":\"ssh\",\"ip\":\"198.1"))
            .unwrap();
        let (entries, bad) = replay(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(bad.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(entries, [entry("ssh", "198.18.0.2", 5)]);
        let opened = Journal::open(&path).unwrap();
        assert_eq!(opened.entries, entries);
        assert!(
            opened.damage[0].ends_with("stops.journal:1: unreadable journal entry skipped: \"{\\\"add\\\":{\\\"door\""),
            "{:?}",
            opened.damage
        );
        assert!(opened.damage[2].contains("2 unreadable line(s), 1 entries kept"), "{:?}", opened.damage);
        assert!(path.with_extension("journal.corrupt").exists(), "the damaged file is kept");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{good}\n"));
    }

    #[test]
    fn compaction_is_wanted_only_past_a_floor() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.journal")).unwrap().journal;
        for i in 0..1100u64 {
            j.due("ssh", "198.18.0.2".parse().unwrap(), i).unwrap();
        }
        assert!(j.wants_compaction(10));
        assert!(!j.wants_compaction(1000));
    }
}
