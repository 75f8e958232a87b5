//! Kernel state for a daemon under test. `ip netns exec` gives the daemon a `/sys` of its own,
//! so a BPF filesystem mounted there would die with it: the tests mount one on the host,
//! outside `/sys`, and give each daemon a directory of it and a state directory of its own,
//! both removed on drop (removing the pins detaches what a daemon left attached).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::{Map, MapData, PerCpuArray};
use knock_common::{Counter, CpuState, STATE_VERSION, maps};

use crate::netns::{in_netns, sh};

/// The ids of the XDP programs on `iface` in namespace `ns` (empty: nothing attached).
#[must_use]
pub fn xdp_ids(ns: &str, iface: &str) -> Vec<u32> {
    in_netns(ns, || {
        let Some(index) = knockd_user::kernel::netlink::ifindex(iface) else {
            return Vec::new();
        };
        knockd_user::kernel::netlink::xdp_programs(index).expect("rtnetlink").unwrap_or_default()
    })
}

/// Where the tests mount their BPF filesystem.
pub const TEST_BPFFS: &str = "/run/knockgate-test/bpf";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A `BpfDir` and a `StateDir` for one daemon (or for several in turn: a restart).
pub struct PinnedState {
    pub bpf_dir: PathBuf,
    pub state_dir: tempfile::TempDir,
}

/// Mounts the tests' BPF filesystem on `TEST_BPFFS`, if it is not there yet.
pub fn mount_test_bpffs() {
    sh(&format!("mountpoint -q {TEST_BPFFS} || {{ mkdir -p {TEST_BPFFS} && mount -t bpf bpf {TEST_BPFFS}; }}"));
}

impl PinnedState {
    #[must_use]
    pub fn new() -> Self {
        mount_test_bpffs();
        let bpf_dir =
            Path::new(TEST_BPFFS).join(format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        Self { bpf_dir, state_dir: tempfile::tempdir().expect("tempdir") }
    }

    /// The knockd arguments that point it at these directories.
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        vec![
            "--bpf-dir".into(),
            self.bpf_dir.display().to_string(),
            "--state-dir".into(),
            self.state_dir.path().display().to_string(),
        ]
    }

    /// `BpfDir/IFACE`.
    #[must_use]
    pub fn pins(&self, iface: &str) -> PathBuf {
        self.bpf_dir.join(iface)
    }

    /// This build's pinned map directory of `iface`.
    #[must_use]
    pub fn maps(&self, iface: &str) -> PathBuf {
        self.pins(iface).join(format!("maps-v{STATE_VERSION}"))
    }

    /// A counter of the pinned per-CPU state of `iface`, summed over CPUs: read from the pins
    /// alone, as any tool could while no daemon runs.
    #[must_use]
    pub fn counter(&self, iface: &str, c: Counter) -> u64 {
        let data = MapData::from_pin(self.maps(iface).join(maps::CPU)).expect("pinned CPU map");
        let map: PerCpuArray<MapData, CpuState> = PerCpuArray::try_from(Map::PerCpuArray(data)).expect("per-CPU array");
        map.get(&0, 0).expect("CPU state").iter().map(|s| s.counters[c as usize]).sum()
    }

    /// The journal of pending stops of `iface`.
    #[must_use]
    pub fn journal(&self, iface: &str) -> PathBuf {
        self.state_dir.path().join(iface).join("stops.journal")
    }
}

impl Default for PinnedState {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinnedState {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.bpf_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cleanup: removing {}: {e}", self.bpf_dir.display());
        }
    }
}
