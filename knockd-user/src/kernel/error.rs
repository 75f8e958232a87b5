//! The kernel side's error, and the helpers that name a map in it.

use std::path::PathBuf;

use aya::{
    Ebpf,
    maps::MapError,
    programs::{ProgramError, links::LinkError},
};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "the kernel refused to create map {name}: operation not permitted; knockd needs CAP_BPF and \
         CAP_NET_ADMIN (run it as root)"
    )]
    MapNotPermitted { name: String },
    #[error(transparent)]
    Refused(#[from] crate::kernel::rejection::LoadError),
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("map {name}: {error}")]
    Map { name: &'static str, error: MapError },
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the XDP object")]
    MissingProgram(&'static str),
    #[error("the TC program returned {0}, which is neither TC_ACT_SHOT nor TC_ACT_UNSPEC")]
    Verdict(i32),
    #[error("drawing the attempt tables' hash key from /dev/urandom: {0}")]
    Random(std::io::Error),
    #[error("pinned map {name}: {error}")]
    Pinned { name: String, error: MapError },
    #[error(
        "the map pinned at {path} does not match this build ({found}; this build needs {want}): \
         remove the pinned state with `knockd --unload`"
    )]
    PinnedLayout { path: PathBuf, found: String, want: String },
    #[error("XDP link: {0}")]
    Link(#[from] LinkError),
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("asking the kernel what is attached to {iface}: {error}")]
    Netlink { iface: String, error: std::io::Error },
    #[error(
        "interface {iface} already has an XDP program, {program}, that knockgate did not attach; \
         knockd will not replace it (remove it first, e.g. `ip link set dev {iface} xdp off`)"
    )]
    Foreign { iface: String, program: String },
    #[error(
        "interface {iface} already has a TC filter at knockgate's priority 1 and handle 0x4b47, running \
         {program}, that knockgate did not attach; knockd will not replace it"
    )]
    ForeignFilter { iface: String, program: String },
    #[error(
        "the kernel attached the program to {0} without a BPF link (netlink), which cannot be pinned: kernel 5.9 or later is needed"
    )]
    NotALink(String),
    #[error("pinning {path}: {error}")]
    Pin { path: PathBuf, error: aya::pin::PinError },
    #[error(transparent)]
    PinDir(#[from] crate::kernel::pin::PinError),
}

pub(crate) fn map_of<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map, KernelError> {
    ebpf.map_mut(name).ok_or(KernelError::MissingMap(name))
}

pub(crate) fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |error| KernelError::Map { name, error }
}

/// As `map_err`, for a name not known statically.
pub(crate) fn map_err_named(name: &str) -> impl FnOnce(MapError) -> KernelError + '_ {
    move |error| KernelError::Pinned { name: name.to_owned(), error }
}
