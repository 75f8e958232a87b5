//! knockd's `One_Time_Sequences` files: one sequence per line; the first valid line not
//! starting with `#` is active; once used, its first byte is overwritten with `#` in place.

use std::{
    fs::OpenOptions,
    io::{Seek as _, SeekFrom, Write as _},
    path::Path,
};

use crate::config::{Knock, values::parse_sequence};

/// A sequence line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// 1-based line number.
    line: usize,
    /// Byte offset of the line's first byte.
    offset: u64,
    sequence: Result<Vec<Knock>, String>,
}

/// Every line that is neither blank nor a comment.
fn entries(text: &str) -> Vec<Entry> {
    let mut offset = 0u64;
    let mut out = Vec::new();
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line = raw.trim();
        if !line.is_empty() && !line.starts_with('#') {
            out.push(Entry { line: i + 1, offset, sequence: parse_sequence(line) });
        }
        offset += raw.len() as u64;
    }
    out
}

fn read(path: &Path) -> Result<String, String> {
    // knockd opens the file read-write at start-up: a file it could not mark is an error now,
    // not after the first knock.
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open one time sequences file {}: {e}", path.display()))?;
    std::fs::read_to_string(path).map_err(|e| format!("cannot read one time sequences file {}: {e}", path.display()))
}

/// At start-up or reload: the active sequence and its line's offset. Every sequence line must
/// be valid (an error names the file and line); no line left is an error, as in knockd.
pub fn load(path: &Path, door: &str) -> Result<(Vec<Knock>, u64), String> {
    let text = read(path)?;
    let all = entries(&text);
    for e in &all {
        if let Err(m) = &e.sequence {
            return Err(format!("{}:{}: {m}", path.display(), e.line));
        }
    }
    all.into_iter()
        .find_map(|e| e.sequence.ok().map(|s| (s, e.offset)))
        .ok_or_else(|| format!("no more sequences left in the one time sequences file for door {door}"))
}

/// After a door opened: marks the used line and returns the next sequence, or `None` when the
/// file has none left. Lines edited into something invalid meanwhile are skipped with a warning.
pub fn advance(path: &Path, used_offset: u64) -> Result<Option<(Vec<Knock>, u64)>, String> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open one time sequences file {}: {e}", path.display()))?;
    file.seek(SeekFrom::Start(used_offset))
        .and_then(|_| file.write_all(b"#"))
        .and_then(|()| file.sync_data())
        .map_err(|e| format!("error while disabling used one time sequence in {}: {e}", path.display()))?;
    drop(file);
    let text = read(path)?;
    Ok(entries(&text).into_iter().find_map(|e| match e.sequence {
        Ok(s) => Some((s, e.offset)),
        Err(m) => {
            tracing::warn!("{}:{}: {m} (skipped)", path.display(), e.line);
            None
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Proto;

    fn tcp(port: u16) -> Knock {
        Knock { port, proto: Proto::Tcp }
    }

    #[test]
    fn use_lines_until_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ots");
        std::fs::write(&path, "# used ones get a #\n\n 7911,7912\n7921,7922:udp\n").unwrap();
        let (seq, off) = load(&path, "d").unwrap();
        assert_eq!(seq, [tcp(7911), tcp(7912)]);
        let (seq2, off2) = advance(&path, off).unwrap().unwrap();
        assert_eq!(seq2, [tcp(7921), Knock { port: 7922, proto: Proto::Udp }]);
        // knockd's in-place mark: the line's first byte (here the leading space) becomes '#'.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# used ones get a #\n\n#7911,7912\n7921,7922:udp\n");
        assert_eq!(advance(&path, off2).unwrap(), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# used ones get a #\n\n#7911,7912\n#921,7922:udp\n");
        assert_eq!(load(&path, "d").unwrap_err(), "no more sequences left in the one time sequences file for door d");
    }

    #[test]
    fn bad_lines_are_errors_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ots");
        std::fs::write(&path, "7911,7912\n7921,abc\n").unwrap();
        assert_eq!(load(&path, "d").unwrap_err(), format!("{}:2: 'abc' in 'abc' is not a port number", path.display()));
        let missing = dir.path().join("none");
        assert!(load(&missing, "d").unwrap_err().starts_with("cannot open one time sequences file"));
    }
}
