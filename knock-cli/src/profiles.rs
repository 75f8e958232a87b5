//! Where `knock NAME` finds its profile: `--profiles FILE`, else the user's
//! `$XDG_CONFIG_HOME/knockgate/knock.toml` (`~/.config/...`), else `/etc/knockgate/knock.toml`.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::bail;
use knock_common::profile::{Profile, Profiles};

/// The system-wide profile file.
pub(crate) const SYSTEM_FILE: &str = "/etc/knockgate/knock.toml";

/// The files searched, in order, when `--profiles` names none.
pub(crate) fn default_files() -> Vec<PathBuf> {
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    user.map(|dir| dir.join("knockgate/knock.toml")).into_iter().chain([PathBuf::from(SYSTEM_FILE)]).collect()
}

/// Where profiles are looked for: one file named by `--profiles` (it must exist), or the
/// default files (those that exist).
pub(crate) struct Search {
    files: Vec<PathBuf>,
    named: bool,
}

impl Search {
    pub(crate) fn new(named: Option<&Path>) -> Self {
        match named {
            Some(p) => Self { files: vec![p.to_path_buf()], named: true },
            None => Self { files: default_files(), named: false },
        }
    }

    /// Profile `name` and its file, from the first file that has it; `Ok(None)` if none has.
    /// Every file read is checked whole: an error in it is an error even for another profile.
    pub(crate) fn find(&self, name: &str) -> anyhow::Result<Option<(PathBuf, Profile)>> {
        for path in &self.files {
            if !self.named && !path.exists() {
                continue;
            }
            check_owner_and_mode(path)?;
            let mut profiles = Profiles::read(path)?;
            if let Some(p) = profiles.tables.remove(name) {
                return Ok(Some((path.clone(), p)));
            }
        }
        Ok(None)
    }

    /// The files searched, for an error that found nothing.
    pub(crate) fn describe(&self) -> String {
        self.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// A profile names a command to run: its file must belong to this user (or root) and be
/// writable by no one else, as ssh holds `~/.ssh/config`.
fn check_owner_and_mode(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        bail!(
            "{}: owned by uid {}, neither this user ({me}) nor root: a profile names a command to run",
            path.display(),
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        bail!(
            "{}: mode {mode:04o} lets other users change it, and a profile names a command to run: chmod go-w {}",
            path.display(),
            path.display()
        );
    }
    Ok(())
}
