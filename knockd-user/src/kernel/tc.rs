//! The TC attachment's life, for an interface whose XDP hook another program owns: from Linux
//! 6.6 a TCX link, pinned, adopted and swapped like the XDP link; below that a `cls_bpf`
//! filter on the `clsact` qdisc's ingress, which the kernel keeps without a process and
//! which a new program replaces in place (never deleted, then added). Either runs first among
//! the interface's TC programs; what an XDP program in front drops never reaches it.

use aya::{
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    util::KernelVersion,
};

use crate::kernel::{
    error::KernelError,
    hooks::{At, Attached, Attachment, Hooked},
    netlink::{self, TcFilter},
    pin::{PinDir, remove_pin},
    program::{KnockProgram, TC_PROGRAM},
};

/// The priority of knockgate's `cls_bpf` filter: the first to run.
pub const TC_PRIORITY: u16 = 1;
/// Its handle, `KG`.
pub const TC_HANDLE: u32 = 0x4b47;

/// Whether the kernel has TCX (Linux 6.6+); below it, `cls_bpf` on `clsact`.
#[must_use]
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// knockgate's filter among an interface's, if it is there.
fn ours(filters: &[TcFilter]) -> Option<TcFilter> {
    filters.iter().copied().find(|f| f.priority == TC_PRIORITY && f.handle == TC_HANDLE)
}

fn netlink_err(iface: &str) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |error| KernelError::Netlink { iface: iface.to_owned(), error }
}

/// The ids of the programs at `iface`'s TCX ingress.
pub(crate) fn tcx_programs(iface: &str) -> Result<Vec<u32>, KernelError> {
    let (_, programs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress)?;
    Ok(programs.iter().map(aya::programs::ProgramInfo::id).collect())
}

/// The ids of the programs at interface `ifindex`'s TC ingress: its TCX links' (Linux 6.6+)
/// and then its `cls_bpf` filters'; `None` if the interface does not exist.
pub fn ingress_programs(iface: &str, ifindex: u32) -> Result<Option<Vec<u32>>, KernelError> {
    let Some(filters) = netlink::tc_filters(ifindex).map_err(netlink_err(iface))? else { return Ok(None) };
    let mut ids = if has_tcx() { tcx_programs(iface)? } else { Vec::new() };
    ids.extend(filters.iter().map(|f| f.program));
    Ok(Some(ids))
}

impl KnockProgram {
    fn tc(&self) -> Result<&SchedClassifier, KernelError> {
        Ok(self.ebpf.program(TC_PROGRAM).ok_or(KernelError::MissingProgram(TC_PROGRAM))?.try_into()?)
    }

    fn tc_mut(&mut self) -> Result<&mut SchedClassifier, KernelError> {
        Ok(self.ebpf.program_mut(TC_PROGRAM).ok_or(KernelError::MissingProgram(TC_PROGRAM))?.try_into()?)
    }

    /// The id of the TC program in the kernel.
    pub fn tc_program_id(&self) -> Result<u32, KernelError> {
        Ok(self.tc()?.info()?.id())
    }

    /// Attaches the TC program to `iface`'s ingress: TCX where the kernel has it, else a
    /// `cls_bpf` filter. What knockgate attached there before is swapped atomically.
    pub(crate) fn attach_tc(&mut self, iface: &str, pins: &PinDir) -> Result<(Attached, Hooked), KernelError> {
        self.load_tc()?;
        if has_tcx() {
            Ok((self.attach_tcx(iface, pins)?, Hooked::Tcx))
        } else {
            Ok((self.attach_cls_bpf(iface, pins)?, Hooked::ClsBpf))
        }
    }

    fn attach_tcx(&mut self, iface: &str, pins: &PinDir) -> Result<Attached, KernelError> {
        let link_path = pins.tcx_link();
        let mut outcome = Attached::New;
        if link_path.exists() {
            let fd = FdLink::from(PinnedLink::from_pin(&link_path)?);
            let old_program = fd.info()?.program_id();
            if tcx_programs(iface)?.contains(&old_program) {
                let link = SchedClassifierLink::try_from(fd)?;
                let id = self.tc_mut()?.attach_to_link(link)?;
                let fd = FdLink::try_from(self.tc_mut()?.take_link(id)?)?;
                self.keep(Attachment { iface: iface.to_owned(), pins: pins.clone(), at: At::Tcx(fd) });
                return Ok(Attached::Swapped { old_program });
            }
            // Dead: its interface is gone. Unpinning releases it.
            drop(fd);
            remove_pin(&link_path).map_err(KernelError::PinDir)?;
            outcome = Attached::Reattached;
        }
        let options = TcAttachOptions::TcxOrder(LinkOrder::first());
        let id = self.tc_mut()?.attach_with_options(iface, TcAttachType::Ingress, options)?;
        let fd =
            FdLink::try_from(self.tc_mut()?.take_link(id)?).map_err(|_| KernelError::NotALink(iface.to_owned()))?;
        let pinned = fd.pin(&link_path).map_err(|error| KernelError::Pin { path: link_path.clone(), error })?;
        self.keep(Attachment { iface: iface.to_owned(), pins: pins.clone(), at: At::Tcx(FdLink::from(pinned)) });
        Ok(outcome)
    }

    fn attach_cls_bpf(&mut self, iface: &str, pins: &PinDir) -> Result<Attached, KernelError> {
        let ifindex = netlink::ifindex(iface).ok_or_else(|| KernelError::NoInterface(iface.to_owned()))?;
        match tc::qdisc_add_clsact(iface) {
            Ok(()) => {}
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(KernelError::Program(e.into())),
        }
        let filters = netlink::tc_filters(ifindex)
            .map_err(netlink_err(iface))?
            .ok_or_else(|| KernelError::NoInterface(iface.to_owned()))?;
        let handle = TcHandle::from(TC_HANDLE);
        let existing = ours(&filters);
        if let Some(f) = existing
            && netlink::program_name(f.program).as_deref() != Some(TC_PROGRAM)
        {
            return Err(KernelError::ForeignFilter {
                iface: iface.to_owned(),
                program: netlink::describe_program(f.program),
            });
        }
        let (outcome, id) = if let Some(old) = existing {
            // Replaced in place: the filter is never missing.
            let link = SchedClassifierLink::attached(iface, TcAttachType::Ingress, TC_PRIORITY, handle, None)
                .map_err(|_| KernelError::NoInterface(iface.to_owned()))?;
            (Attached::Swapped { old_program: old.program }, self.tc_mut()?.attach_to_link(link)?)
        } else {
            let options = TcAttachOptions::Netlink(NlOptions { priority: TC_PRIORITY, handle, classid: None });
            (Attached::New, self.tc_mut()?.attach_with_options(iface, TcAttachType::Ingress, options)?)
        };
        // The kernel keeps the filter; dropped, aya's handle would remove it.
        std::mem::forget(self.tc_mut()?.take_link(id)?);
        self.keep(Attachment { iface: iface.to_owned(), pins: pins.clone(), at: At::ClsBpf { ifindex } });
        Ok(outcome)
    }

    /// Whether the TC program is what `iface`'s ingress runs through `at`.
    pub(crate) fn tc_attached(&self, iface: &str, ifindex: u32, at: &At) -> Result<bool, KernelError> {
        let id = self.tc_program_id()?;
        match at {
            At::Tcx(_) => Ok(tcx_programs(iface)?.contains(&id)),
            At::ClsBpf { ifindex: was } => Ok(*was == ifindex
                && netlink::tc_filters(ifindex)
                    .map_err(netlink_err(iface))?
                    .and_then(|f| ours(&f))
                    .is_some_and(|f| f.program == id)),
            At::Xdp(_) => Ok(false),
        }
    }
}

/// The id of knockgate's `cls_bpf` program on interface `ifindex`: the filter of its
/// priority and handle, if it runs a program of knockgate's name.
pub fn cls_bpf_program(ifindex: u32) -> std::io::Result<Option<u32>> {
    let filters = netlink::tc_filters(ifindex)?.unwrap_or_default();
    Ok(ours(&filters).map(|f| f.program).filter(|&id| netlink::program_name(id).as_deref() == Some(TC_PROGRAM)))
}

/// Removes knockgate's TC attachment from `iface`, if it has one: the TCX link's pin in
/// `pins` (the link goes with it once no process holds it), and the `cls_bpf` filter of
/// knockgate's priority and handle whose program is knockgate's. Another's filter stays, and
/// so does the `clsact` qdisc, which others' filters may use. Returns whether there was one.
pub fn detach_tc(iface: &str, pins: &PinDir) -> Result<bool, KernelError> {
    let mut found = false;
    if pins.tcx_link().exists() {
        remove_pin(&pins.tcx_link()).map_err(KernelError::PinDir)?;
        found = true;
    }
    let Some(ifindex) = netlink::ifindex(iface) else { return Ok(found) };
    if cls_bpf_program(ifindex).map_err(netlink_err(iface))?.is_some() {
        let link =
            SchedClassifierLink::attached(iface, TcAttachType::Ingress, TC_PRIORITY, TcHandle::from(TC_HANDLE), None)
                .map_err(|_| KernelError::NoInterface(iface.to_owned()))?;
        aya::programs::Link::detach(link)?;
        found = true;
    }
    Ok(found)
}
