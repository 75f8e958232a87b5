//! knockd's log: `[YYYY-MM-DD HH:MM] message` lines in the `LogFile` (local time, minute
//! resolution), the same text to syslog with `UseSyslog`, and everything to stderr
//! through `tracing`.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

/// Where knockd-format lines go.
pub struct KnockLog {
    file: Mutex<Option<(PathBuf, File)>>,
    syslog: bool,
}

impl KnockLog {
    /// A log that writes only to stderr.
    #[must_use]
    pub fn stderr_only() -> Self {
        Self { file: Mutex::new(None), syslog: false }
    }

    /// Opens `path` for appending (created if missing). Like knockd, a file that cannot be
    /// opened is reported and the daemon carries on without it.
    #[must_use]
    pub fn open(path: Option<&Path>, syslog: bool) -> Self {
        let log = Self { file: Mutex::new(None), syslog };
        log.reopen(path);
        if syslog {
            // SAFETY: the ident is a static C string; openlog keeps the pointer.
            unsafe { libc::openlog(c"knockd".as_ptr(), 0, libc::LOG_DAEMON) };
        }
        log
    }

    /// Re-opens the log file, possibly at a new path (SIGHUP). Syslog stays as it was, as in knockd.
    pub fn reopen(&self, path: Option<&Path>) {
        let file = path.and_then(|p| match OpenOptions::new().create(true).append(true).open(p) {
            Ok(f) => Some((p.to_path_buf(), f)),
            Err(e) => {
                tracing::warn!("cannot open logfile {}: {e}", p.display());
                None
            }
        });
        if let Ok(mut guard) = self.file.lock() {
            *guard = file;
        }
    }

    /// Logs one message.
    pub fn line(&self, msg: &str) {
        tracing::info!("{msg}");
        let stamp = chrono::Local::now().format("%Y-%m-%d %H:%M");
        if let Ok(mut guard) = self.file.lock()
            && let Some((path, file)) = guard.as_mut()
            && let Err(e) = writeln!(file, "[{stamp}] {msg}")
        {
            tracing::warn!("writing {}: {e}", path.display());
        }
        if self.syslog
            && let Ok(c) = CString::new(msg.replace('\0', " "))
        {
            // SAFETY: "%s" with one NUL-terminated argument.
            unsafe { libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), c.as_ptr()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_knockd_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knockd.log");
        let log = KnockLog::open(Some(&path), false);
        log.line("198.18.0.2: openSSH: OPEN SESAME");
        log.line("openSSH: running command: echo 198.18.0.2");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "no blank lines: {text:?}");
        for (line, msg) in
            lines.iter().zip(["198.18.0.2: openSSH: OPEN SESAME", "openSSH: running command: echo 198.18.0.2"])
        {
            // [YYYY-MM-DD HH:MM] msg
            assert_eq!(line.len(), 19 + msg.len(), "{line}");
            assert!(line.starts_with('[') && line[17..].starts_with("] "), "{line}");
            assert!(line[1..17].chars().all(|c| c.is_ascii_digit() || "- :".contains(c)), "{line}");
            assert!(line.ends_with(msg));
        }
    }

    #[test]
    fn unwritable_file_is_not_fatal() {
        let log = KnockLog::open(Some(Path::new("/nonexistent/dir/knockd.log")), false);
        log.line("still running");
    }
}
