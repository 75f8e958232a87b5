//! The kernel floor: the BPF features knockgate needs, probed at start.
//!
//! Probes, not version strings: distributions backport features to older version numbers
//! (and could leave one out of a newer one). Each probe asks the running kernel, through
//! aya's feature probes, to create a map of the type or to load a two-instruction XDP program
//! that calls the helper. A kernel that lacks one of them is refused in one line that names
//! what is missing, before anything is loaded, pinned or attached.

use aya::{
    maps::MapType,
    programs::{ProgramError, ProgramType},
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

/// A kernel feature knockgate needs, and the Linux release that brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// XDP programs.
    Xdp,
    /// Per-CPU arrays: counters, the clock cache, the loops' hand-over.
    PerCpuArray,
    /// Program arrays: the tail calls to `knockgate_doors` and `knockgate_secret`.
    ProgramArray,
    /// LRU hash maps: the gate's allowances and the secret doors' used sequences.
    LruHash,
    /// `bpf_xdp_adjust_meta`: the gated mark handed to `knockgate_secret` with the packet.
    XdpMeta,
    /// `bpf_jiffies64`: the clock cache's tick.
    Jiffies64,
    /// The BPF ring buffer: completed sequences reach the daemon on it.
    RingBuf,
    /// `bpf_loop`: the walks over several doors, which the verifier checks once.
    Loop,
}

impl Feature {
    /// Every feature probed, oldest first.
    pub const ALL: [Self; 8] = [
        Self::ProgramArray,
        Self::PerCpuArray,
        Self::Xdp,
        Self::LruHash,
        Self::XdpMeta,
        Self::Jiffies64,
        Self::RingBuf,
        Self::Loop,
    ];

    /// What an operator would search for.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "XDP programs",
            Self::PerCpuArray => "per-CPU array maps",
            Self::ProgramArray => "program arrays (tail calls)",
            Self::LruHash => "LRU hash maps",
            Self::XdpMeta => "bpf_xdp_adjust_meta (XDP metadata)",
            Self::Jiffies64 => "bpf_jiffies64",
            Self::RingBuf => "the BPF ring buffer",
            Self::Loop => "bpf_loop",
        }
    }

    /// The mainline release that brought it.
    #[must_use]
    pub const fn since(self) -> &'static str {
        match self {
            Self::ProgramArray => "4.2",
            Self::PerCpuArray => "4.6",
            Self::Xdp => "4.8",
            Self::LruHash => "4.10",
            Self::XdpMeta => "4.15",
            Self::Jiffies64 => "5.5",
            Self::RingBuf => "5.8",
            Self::Loop => "5.17",
        }
    }

    /// Asks the running kernel.
    fn probe(self) -> Result<bool, ProbeError> {
        let helper = |h: BpfHelper| is_helper_supported(ProgramType::Xdp, h).map_err(|e| ProbeError::new(self, e));
        let map = |m: MapType| is_map_supported(m).map_err(|e| ProbeError::new(self, ProgramError::SyscallError(e)));
        match self {
            Self::Xdp => is_program_supported(ProgramType::Xdp).map_err(|e| ProbeError::new(self, e)),
            Self::PerCpuArray => map(MapType::PerCpuArray),
            Self::ProgramArray => map(MapType::ProgramArray),
            Self::LruHash => map(MapType::LruHash),
            Self::RingBuf => map(MapType::RingBuf),
            Self::XdpMeta => helper(BpfHelper::BPF_FUNC_xdp_adjust_meta),
            Self::Jiffies64 => helper(BpfHelper::BPF_FUNC_jiffies64),
            Self::Loop => helper(BpfHelper::BPF_FUNC_loop),
        }
    }
}

/// A probe that could not tell.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the kernel refused the BPF feature probe for {}: operation not permitted; knockd needs \
         CAP_BPF and CAP_NET_ADMIN (run it as root)", .0.name()
    )]
    NotPermitted(Feature),
    #[error("probing the kernel for {}: {error}", .feature.name())]
    Failed { feature: Feature, error: ProgramError },
}

impl ProbeError {
    fn new(feature: Feature, error: ProgramError) -> Self {
        let errno = match &error {
            ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
            ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
            _ => None,
        };
        if errno == Some(libc::EPERM) { Self::NotPermitted(feature) } else { Self::Failed { feature, error } }
    }
}

/// The line that refuses a kernel lacking `missing` (in `Feature::ALL`'s order), if any.
#[must_use]
pub fn refusal(release: &str, missing: &[Feature]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let what: Vec<String> = missing.iter().map(|f| format!("{} (Linux {}+)", f.name(), f.since())).collect();
    Some(format!("this kernel ({release}) lacks {}; knockgate cannot run here", what.join(", ")))
}

/// Why knockd will not start on this kernel.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// `refusal`'s line.
    #[error("{0}")]
    Below(String),
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

/// Probes every feature; the refusal names all that are missing.
pub fn check() -> Result<(), FloorError> {
    let mut missing = Vec::new();
    for feature in Feature::ALL {
        if !feature.probe()? {
            missing.push(feature);
        }
    }
    match refusal(&release(), &missing) {
        Some(line) => Err(FloorError::Below(line)),
        None => Ok(()),
    }
}

/// The running kernel's release (`uname -r`).
#[must_use]
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "unknown".to_owned(), |r| r.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_with_everything_is_not_refused() {
        assert_eq!(refusal("6.1.0-57-amd64", &[]), None);
    }

    #[test]
    fn ubuntu_22_04_is_refused_for_bpf_loop() {
        assert_eq!(
            refusal("5.15.0-91-generic", &[Feature::Loop]).as_deref(),
            Some("this kernel (5.15.0-91-generic) lacks bpf_loop (Linux 5.17+); knockgate cannot run here")
        );
    }

    #[test]
    fn every_missing_feature_is_named_oldest_first() {
        // What a 5.4 kernel lacks.
        let missing: Vec<Feature> = Feature::ALL
            .into_iter()
            .filter(|f| matches!(f, Feature::Jiffies64 | Feature::RingBuf | Feature::Loop))
            .collect();
        assert_eq!(
            refusal("5.4.0-150-generic", &missing).as_deref(),
            Some(
                "this kernel (5.4.0-150-generic) lacks bpf_jiffies64 (Linux 5.5+), the BPF ring buffer (Linux 5.8+), \
                 bpf_loop (Linux 5.17+); knockgate cannot run here"
            )
        );
    }

    #[test]
    fn each_feature_names_itself_and_its_release() {
        for f in Feature::ALL {
            let line = refusal("x", &[f]).unwrap_or_default();
            assert!(line.contains(f.name()) && line.contains(&format!("Linux {}+", f.since())), "{line}");
        }
    }

    #[test]
    fn features_are_listed_oldest_first() {
        let version = |f: Feature| -> (u32, u32) {
            let (a, b) = f.since().split_once('.').unwrap_or_default();
            (a.parse().unwrap_or_default(), b.parse().unwrap_or_default())
        };
        assert!(Feature::ALL.windows(2).all(|w| version(w[0]) <= version(w[1])));
    }

    #[test]
    fn eperm_is_a_missing_capability_and_other_errors_are_not() {
        let syscall = |errno| {
            ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_prog_load",
                io_error: std::io::Error::from_raw_os_error(errno),
            })
        };
        let e = ProbeError::new(Feature::Loop, syscall(libc::EPERM));
        assert!(matches!(e, ProbeError::NotPermitted(Feature::Loop)));
        assert!(e.to_string().contains("needs CAP_BPF and CAP_NET_ADMIN"), "{e}");
        let e = ProbeError::new(Feature::RingBuf, syscall(libc::ENOMEM));
        assert!(matches!(e, ProbeError::Failed { feature: Feature::RingBuf, .. }));
        assert!(!e.to_string().contains("CAP_BPF"), "{e}");
    }
}
