//! Where the program runs: the hooks (XDP, TC ingress), how `attach` found an interface,
//! and what holds an attachment.

use aya::programs::links::FdLink;

use crate::kernel::pin::PinDir;

/// Where the program runs: at XDP, or at TC ingress (where another program owns XDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

/// Where the program runs on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hooked {
    Xdp,
    /// TC ingress through TCX (Linux 6.6+).
    Tcx,
    /// TC ingress through a `cls_bpf` filter on `clsact`.
    ClsBpf,
}

impl Hooked {
    /// As `--status` and the metrics name it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Hooked::Xdp => "xdp",
            Hooked::Tcx => "tcx",
            Hooked::ClsBpf => "tc",
        }
    }
}

/// How `attach` found the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// Nothing was attached: a new link, now pinned.
    New,
    /// The pinned link was live: its program (this id) was replaced by this one, atomically.
    Swapped { old_program: u32 },
    /// A link was pinned but dead (the interface was re-created, or its driver reloaded,
    /// since): a new link replaces it.
    Reattached,
}

/// What knockgate attached to one interface.
pub(crate) struct Attachment {
    pub(crate) iface: String,
    pub(crate) pins: PinDir,
    pub(crate) at: At,
}

/// An attachment's hook, with what holds it.
pub(crate) enum At {
    /// The XDP link, pinned in the interface's directory (held open for the daemon's life).
    Xdp(#[expect(dead_code, reason = "held, not read")] FdLink),
    /// The TCX link, pinned in the interface's directory.
    Tcx(#[expect(dead_code, reason = "held, not read")] FdLink),
    /// A `cls_bpf` filter on `clsact` ingress, kept by the kernel (nothing to hold), on the
    /// interface that had this index.
    ClsBpf { ifindex: u32 },
}
