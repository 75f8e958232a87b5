//! Kernel state that outlives the process: one bpffs directory per interface
//! (`BpfDir/IFACE`), holding the pinned XDP link (`link`) and the pinned maps of this build's
//! state layout (`maps-vN`, `knock_common::STATE_VERSION`).

use std::{
    io,
    path::{Path, PathBuf},
};

use knock_common::{STATE_VERSION, maps};

/// `BpfDir` when the config names none.
pub const DEFAULT_BPF_DIR: &str = "/sys/fs/bpf/knockgate";
/// Where systemd and iproute2 mount the BPF filesystem.
const SYS_BPF: &str = "/sys/fs/bpf";
/// `statfs` type of the BPF filesystem.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// The maps that outlive the process. The tail-call table is one of them: the kernel empties
/// a program array when its last user-space reference goes, and a pin is such a reference,
/// so without it a daemon's death would leave configurations of more than two doors
/// unmatched. The ring buffer and the global data (`PORT_BITS`) are made anew with each load:
/// a restarted daemon does not run the commands of knocks completed while none ran, and the
/// bitmap is rewritten whole from `PORTS` before the new program is swapped in.
pub const PINNED_MAPS: [&str; 12] = [
    maps::DOORS,
    maps::SETTINGS,
    maps::PORTS,
    maps::LOCAL_ADDRS,
    maps::PROGRESS,
    maps::FIRST_KNOCKS,
    maps::CPU,
    maps::ALLOW,
    maps::DOOR_WALK,
    maps::DOOR_WALK_TC,
    maps::WINDOWS,
    maps::USED,
];

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("mounting the BPF filesystem on {path}: {error}")]
    Mount { path: PathBuf, error: nix::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |error| PinError::Io { path: path.to_path_buf(), error }
}

/// The pinned state of one interface.
#[derive(Debug, Clone)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    #[must_use]
    pub fn new(bpf_dir: &Path, iface: &str) -> Self {
        Self { root: bpf_dir.join(iface) }
    }

    /// `BpfDir/IFACE`.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pinned XDP link.
    #[must_use]
    pub fn link(&self) -> PathBuf {
        self.root.join("link")
    }

    /// The pinned TCX link (TC ingress, Linux 6.6+).
    #[must_use]
    pub fn tcx_link(&self) -> PathBuf {
        self.root.join("tcx-link")
    }

    /// This build's map directory.
    #[must_use]
    pub fn maps(&self) -> PathBuf {
        self.root.join(format!("maps-v{STATE_VERSION}"))
    }

    /// The pin of map `name` in this build's map directory.
    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Map directories of other state layouts (left by another build), oldest first.
    #[must_use]
    pub fn other_maps(&self) -> Vec<PathBuf> {
        let current = self.maps();
        let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.strip_prefix("maps-v")?.parse().ok()?;
                Some((version, e.path()))
            })
            .filter(|(_, p)| *p != current)
            .collect();
        dirs.sort();
        dirs.into_iter().map(|(_, p)| p).collect()
    }

    /// Whether anything is pinned for the interface.
    #[must_use]
    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    /// Makes this interface's map directory (`prepare_bpf_dir` readies `BpfDir` itself).
    pub fn make(&self) -> Result<(), PinError> {
        let maps = self.maps();
        std::fs::create_dir_all(&maps).map_err(io_err(&maps))
    }

    /// Removes every pin of the interface (the link's last reference goes with it, which
    /// detaches the program unless a process still holds the link).
    pub fn remove(&self) -> Result<(), PinError> {
        match std::fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&self.root)(e)),
            _ => Ok(()),
        }
    }

    /// Removes one map directory of another layout, after its state was carried over.
    pub fn remove_maps(dir: &Path) -> Result<(), PinError> {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))
    }
}

/// Makes `BpfDir`, once for all interfaces, mounting the BPF filesystem first if it is not on one.
/// Returns what the operator should hear of: a mount made, and a BPF filesystem private
/// to this mount namespace (as under `ip netns exec`, which mounts a fresh `/sys`), whose
/// pins die with the process.
pub fn prepare_bpf_dir(bpf_dir: &Path) -> Result<Vec<String>, PinError> {
    let mut notes = Vec::new();
    // Under /sys/fs/bpf the BPF filesystem goes on /sys/fs/bpf itself (sysfs, mounted
    // afresh by `ip netns exec`, lets nobody make directories below it).
    let mount_at = if bpf_dir.starts_with(SYS_BPF) { Path::new(SYS_BPF) } else { bpf_dir };
    std::fs::create_dir_all(mount_at).map_err(io_err(mount_at))?;
    if !on_bpffs(mount_at) {
        nix::mount::mount(Some("bpf"), mount_at, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|error| PinError::Mount { path: mount_at.to_path_buf(), error })?;
        notes.push(format!("mounted the BPF filesystem on {}", mount_at.display()));
        std::fs::create_dir_all(bpf_dir).map_err(io_err(bpf_dir))?;
    }
    if private_to_mount_namespace(bpf_dir) {
        notes.push(format!(
            "warning: BpfDir {} is on a BPF filesystem private to this mount namespace (as under `ip netns exec`, \
             which mounts its own /sys): the pins die with this process, and with them the gate; point BpfDir at a \
             BPF filesystem mounted on the host",
            bpf_dir.display()
        ));
    }
    Ok(notes)
}

/// Whether `path` is on a BPF filesystem.
fn on_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| {
        #[expect(
            clippy::cast_sign_loss,
            clippy::cast_possible_truncation,
            reason = "f_type is a 32-bit magic in a wider field"
        )]
        let magic = s.filesystem_type().0 as u32;
        magic == BPF_FS_MAGIC
    })
}

/// Whether the filesystem holding `path` is mounted only in this mount namespace: the
/// nearest ancestor process in another mount namespace (the one `ip netns exec` was started
/// from, or init) has no mount of the same device. `false` when no such ancestor can be read.
fn private_to_mount_namespace(path: &Path) -> bool {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let Some(mine) = ns("self") else { return false };
    let mut pid = "self".to_owned();
    let outer = loop {
        let Some(parent) = parent_of(&pid) else { return false };
        match ns(&parent) {
            Some(theirs) if theirs != mine => break parent,
            Some(_) if parent != "1" => pid = parent,
            _ => return false,
        }
    };
    let Ok(own) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let Ok(theirs) = std::fs::read_to_string(format!("/proc/{outer}/mountinfo")) else { return false };
    let Some(device) = mount_device(&own, path) else { return false };
    !theirs.lines().any(|l| l.split(' ').nth(2) == Some(device.as_str()))
}

/// The parent process id of `pid` (field 4 of `/proc/PID/stat`, after the command name).
fn parent_of(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let ppid = after.split_whitespace().nth(1)?;
    (ppid != "0").then(|| ppid.to_owned())
}

/// The `major:minor` of the mount in `mountinfo` whose mount point is the longest prefix of
/// `path`.
fn mount_device(mountinfo: &str, path: &Path) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let device = f.nth(2)?;
            let point = f.nth(1)?;
            path.starts_with(point).then(|| (point.len(), device.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, d)| d)
}

/// Removes one pin (a link's: the link goes once no process holds it).
pub fn remove_pin(path: &Path) -> Result<(), PinError> {
    std::fs::remove_file(path).map_err(|error| PinError::Io { path: path.to_path_buf(), error })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:26 / /sys rw,nosuid shared:7 - sysfs sysfs rw
41 30 0:33 / /sys/fs/bpf rw,nosuid shared:16 - bpf bpf rw,mode=700
";

    #[test]
    fn the_longest_mount_point_wins() {
        assert_eq!(mount_device(MOUNTINFO, Path::new("/sys/fs/bpf/knockgate")).as_deref(), Some("0:33"));
        assert_eq!(mount_device(MOUNTINFO, Path::new("/sys/class")).as_deref(), Some("0:26"));
        assert_eq!(mount_device(MOUNTINFO, Path::new("/var/lib")).as_deref(), Some("0:21"));
        assert_eq!(
            mount_device(MOUNTINFO, Path::new("/sys/fs/bpfx")).as_deref(),
            Some("0:26"),
            "whole components only"
        );
    }

    #[test]
    fn paths_per_interface_and_layout() {
        let d = PinDir::new(Path::new("/sys/fs/bpf/knockgate"), "eth0");
        assert_eq!(d.link(), Path::new("/sys/fs/bpf/knockgate/eth0/link"));
        assert_eq!(d.map("ALLOW"), Path::new(&format!("/sys/fs/bpf/knockgate/eth0/maps-v{STATE_VERSION}/ALLOW")));
    }
}
