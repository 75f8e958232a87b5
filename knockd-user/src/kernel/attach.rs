//! The attachment's life: at the hook `Attach` picks (XDP, or TC ingress: `tc`), attached
//! once and pinned, adopted by the next daemon and swapped to its program atomically
//! (`bpf_link_update`), attached again when the interface comes back, and removed only by an
//! explicit act (`release`). A program that knockgate did not attach is never replaced.

use std::path::Path;

use aya::{
    maps::{HashMap, MapData},
    programs::{
        XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use knock_common::{AllowKey, UsedKey, maps};

use crate::{
    config::Attach,
    kernel::error::{KernelError, map_err},
    kernel::hooks::{At, Attached, Attachment, Hooked},
    kernel::netlink,
    kernel::pin::{PINNED_MAPS, PinDir, remove_pin},
    kernel::program::KnockProgram,
    kernel::tc::{cls_bpf_program, detach_tc, tcx_programs},
};

/// The map data behind any kind of map.
fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::ProgramArray(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::RingBuf(d) => Some(d),
        _ => None,
    }
}

/// Whether the XDP link pinned in `pins` is live, holding one of the programs `on_iface` runs.
fn pinned_xdp_runs(pins: &PinDir, on_iface: &[u32]) -> Result<bool, KernelError> {
    if !pins.link().exists() {
        return Ok(false);
    }
    let fd = FdLink::from(PinnedLink::from_pin(pins.link())?);
    Ok(on_iface.contains(&fd.info()?.program_id()))
}

/// Allowances copied from another layout's maps, to reconcile after the swap.
pub struct Carried {
    dir: std::path::PathBuf,
    copied: Vec<(AllowKey, u64)>,
}

impl KnockProgram {
    /// The directory of the interface whose pins the maps were loaded from.
    #[must_use]
    pub fn home(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    /// `BpfDir/IFACE` of the interface whose directory the maps were loaded from.
    #[must_use]
    pub fn pin_root(&self) -> Option<&Path> {
        self.pins.as_ref().map(PinDir::root)
    }

    /// The id of this program in the kernel.
    pub fn program_id(&self) -> Result<u32, KernelError> {
        Ok(self.xdp()?.info()?.id())
    }

    /// Attaches to `iface` at the hook `mode` asks for (`Attach::Auto`: XDP, unless another
    /// program has the interface's XDP hook, then TC ingress), through what knockgate pinned
    /// there before: a live pinned link gets this program swapped in (the interface is never
    /// without a program), a dead one is replaced, and with none a new one is made. Another's
    /// XDP program is never replaced: `Attach::Xdp` refuses such an interface. Once attached
    /// at one hook, knockgate's attachment at the other (a previous run's) is removed.
    pub fn attach(&mut self, iface: &str, pins: &PinDir, mode: Attach) -> Result<(Attached, Hooked), KernelError> {
        let ifindex = netlink::ifindex(iface).ok_or_else(|| KernelError::NoInterface(iface.to_owned()))?;
        let on_iface = netlink::xdp_programs(ifindex)
            .map_err(|error| KernelError::Netlink { iface: iface.to_owned(), error })?
            .ok_or_else(|| KernelError::NoInterface(iface.to_owned()))?;
        let tc = match mode {
            Attach::Xdp => false,
            Attach::Tc => true,
            Attach::Auto => !on_iface.is_empty() && !pinned_xdp_runs(pins, &on_iface)?,
        };
        if tc {
            let done = self.attach_tc(iface, pins)?;
            if pins.link().exists() {
                // A previous run's XDP link: the TC program gates now. Unpinned, it goes.
                remove_pin(&pins.link()).map_err(KernelError::PinDir)?;
            }
            return Ok(done);
        }
        let done = self.attach_xdp(iface, pins, &on_iface)?;
        detach_tc(iface, pins)?;
        Ok((done, Hooked::Xdp))
    }

    fn attach_xdp(&mut self, iface: &str, pins: &PinDir, on_iface: &[u32]) -> Result<Attached, KernelError> {
        let link_path = pins.link();
        let mut outcome = Attached::New;
        if link_path.exists() {
            let fd = FdLink::from(PinnedLink::from_pin(&link_path)?);
            let old_program = fd.info()?.program_id();
            if on_iface.contains(&old_program) {
                let link = XdpLink::try_from(fd)?;
                let id = self.xdp_mut()?.attach_to_link(link)?;
                let link = self.xdp_mut()?.take_link(id)?;
                self.keep(Attachment {
                    iface: iface.to_owned(),
                    pins: pins.clone(),
                    at: At::Xdp(FdLink::try_from(link)?),
                });
                return Ok(Attached::Swapped { old_program });
            }
            // Dead: its interface is gone. Unpinning releases it.
            drop(fd);
            remove_pin(&link_path).map_err(KernelError::PinDir)?;
            outcome = Attached::Reattached;
        }
        if let Some(&other) = on_iface.first() {
            return Err(KernelError::Foreign { iface: iface.to_owned(), program: netlink::describe_program(other) });
        }
        self.attach_new(iface, pins)?;
        Ok(outcome)
    }

    pub(crate) fn keep(&mut self, attachment: Attachment) {
        self.links.retain(|l| l.iface != attachment.iface);
        self.links.push(attachment);
    }

    /// A new link on `iface` (driver mode where the driver has it, else generic), pinned.
    fn attach_new(&mut self, iface: &str, pins: &PinDir) -> Result<(), KernelError> {
        let link_path = pins.link();
        let xdp = self.xdp_mut()?;
        let id = match xdp.attach(iface, XdpMode::Default) {
            Ok(id) => id,
            Err(native) => {
                tracing::debug!("native XDP on {iface} failed ({native}); using generic (skb) mode");
                xdp.attach(iface, XdpMode::Skb)?
            }
        };
        let link = xdp.take_link(id)?;
        let fd = FdLink::try_from(link).map_err(|_| KernelError::NotALink(iface.to_owned()))?;
        let pinned = fd.pin(&link_path).map_err(|error| KernelError::Pin { path: link_path.clone(), error })?;
        self.keep(Attachment { iface: iface.to_owned(), pins: pins.clone(), at: At::Xdp(FdLink::from(pinned)) });
        Ok(())
    }

    /// Where this program runs on `iface`, as attached by `attach`.
    #[must_use]
    pub fn hooked(&self, iface: &str) -> Option<Hooked> {
        self.links.iter().find(|l| l.iface == iface).map(|l| match l.at {
            At::Xdp(_) => Hooked::Xdp,
            At::Tcx(_) => Hooked::Tcx,
            At::ClsBpf { .. } => Hooked::ClsBpf,
        })
    }

    /// Whether this program runs on `iface` where `attach` put it. `None` if the interface
    /// is gone.
    pub fn attached_to(&self, iface: &str) -> Result<Option<bool>, KernelError> {
        let Some(ifindex) = netlink::ifindex(iface) else {
            return Ok(None);
        };
        match self.links.iter().find(|l| l.iface == iface).map(|l| &l.at) {
            None => Ok(Some(false)),
            Some(At::Xdp(_)) => {
                let id = self.program_id()?;
                Ok(netlink::xdp_programs(ifindex)
                    .map_err(|error| KernelError::Netlink { iface: iface.to_owned(), error })?
                    .map(|ids| ids.contains(&id)))
            }
            Some(at) => self.tc_attached(iface, ifindex, at).map(Some),
        }
    }

    /// Pins this program's maps in `pins` too (another interface's directory, so that each
    /// interface's directory holds the whole state it runs on). Maps of another instance
    /// pinned there must have been carried over and removed first.
    pub fn share_maps(&self, pins: &PinDir) -> Result<(), KernelError> {
        let dir = pins.maps();
        std::fs::create_dir_all(&dir)
            .map_err(|error| KernelError::PinDir(crate::kernel::pin::PinError::Io { path: dir.clone(), error }))?;
        for name in PINNED_MAPS {
            let path = dir.join(name);
            if path.exists() {
                continue;
            }
            let map = self.map(name)?;
            let data: &MapData = map_data(map).ok_or(KernelError::MissingMap(name))?;
            data.pin(&path).map_err(|error| KernelError::Pin { path: path.clone(), error })?;
        }
        Ok(())
    }

    /// Whether the maps pinned in `dir` are this program's own (the same kernel objects).
    pub fn owns_maps_in(&self, dir: &Path) -> Result<bool, KernelError> {
        let path = dir.join(maps::ALLOW);
        if !path.exists() {
            return Ok(false);
        }
        let theirs = MapData::from_pin(&path).and_then(|m| m.info()).map_err(map_err(maps::ALLOW))?;
        let ours = map_data(self.map(maps::ALLOW)?)
            .ok_or(KernelError::MissingMap(maps::ALLOW))?
            .info()
            .map_err(map_err(maps::ALLOW))?;
        Ok(theirs.id() == ours.id())
    }

    /// Removes every interface's pins (links and maps) and lets go of the links: the program
    /// leaves every interface. For an exit when no door has a gate.
    pub fn release(&mut self) -> Result<(), KernelError> {
        for l in &self.links {
            if matches!(l.at, At::ClsBpf { .. }) {
                detach_tc(&l.iface, &l.pins)?;
            }
            l.pins.remove()?;
        }
        if let Some(pins) = &self.pins {
            pins.remove()?;
        }
        self.links.clear();
        Ok(())
    }

    /// Copies the allowances of another layout's pinned maps in `dir` into this program's
    /// (before the swap, so that the new program opens for whoever the old one did).
    pub fn carry_allowances(&mut self, dir: &Path) -> Result<Carried, KernelError> {
        let old = old_allow(dir)?;
        let mut copied = Vec::new();
        if let Some(old) = &old {
            let mut new: HashMap<_, AllowKey, u64> =
                HashMap::try_from(self.map_mut(maps::ALLOW)?).map_err(map_err(maps::ALLOW))?;
            for entry in old {
                let (key, until) = entry.map_err(map_err(maps::ALLOW))?;
                new.insert(key, until, 0).map_err(map_err(maps::ALLOW))?;
                copied.push((key, until));
            }
        }
        self.carry_used(dir)?;
        Ok(Carried { dir: dir.to_path_buf(), copied })
    }

    /// Copies the spent single uses of secret sequences from another layout's pinned `USED`
    /// in `dir`, so that a knock replayed across an upgrade still opens nothing. Entries only
    /// ever appear, so copying again after the swap (`settle`) catches those made meanwhile.
    fn carry_used(&mut self, dir: &Path) -> Result<usize, KernelError> {
        let path = dir.join(maps::USED);
        if !path.exists() {
            return Ok(0);
        }
        let data = MapData::from_pin(&path).map_err(map_err(maps::USED))?;
        let info = data.info().map_err(map_err(maps::USED))?;
        if info.key_size() as usize != size_of::<UsedKey>() || info.value_size() as usize != size_of::<u64>() {
            tracing::warn!("{}: spent secret sequences of another shape are not carried over", path.display());
            return Ok(0);
        }
        let old: HashMap<_, UsedKey, u64> =
            HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(map_err(maps::USED))?;
        let mut new: HashMap<_, UsedKey, u64> =
            HashMap::try_from(self.map_mut(maps::USED)?).map_err(map_err(maps::USED))?;
        let mut n = 0;
        for entry in &old {
            let (key, at) = entry.map_err(map_err(maps::USED))?;
            new.insert(key, at, 0).map_err(map_err(maps::USED))?;
            n += 1;
        }
        Ok(n)
    }

    /// After the swap: what the old program did to the allowances between the copy and the
    /// swap is applied here too (a gate close it ran must not be undone by the copy), then the
    /// old maps are unpinned. Returns the allowances carried.
    pub fn settle(&mut self, carried: &Carried) -> Result<usize, KernelError> {
        let old = old_allow(&carried.dir)?;
        let mut new: HashMap<_, AllowKey, u64> =
            HashMap::try_from(self.map_mut(maps::ALLOW)?).map_err(map_err(maps::ALLOW))?;
        for (key, until) in &carried.copied {
            let now_old = old.as_ref().and_then(|m| m.get(key, 0).ok());
            match now_old {
                // Withdrawn (or evicted) by the old program meanwhile: withdrawn here too.
                None => {
                    let _ignored: Result<(), _> = new.remove(key);
                }
                // Extended by a knock meanwhile.
                Some(later) if later > *until => {
                    new.insert(key, later, 0).map_err(map_err(maps::ALLOW))?;
                }
                Some(_) => {}
            }
        }
        self.carry_used(&carried.dir)?;
        PinDir::remove_maps(&carried.dir)?;
        Ok(carried.copied.len())
    }
}

/// The `ALLOW` map pinned in another layout's directory, if it has one of this key and value.
fn old_allow(dir: &Path) -> Result<Option<HashMap<MapData, AllowKey, u64>>, KernelError> {
    let path = dir.join(maps::ALLOW);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).map_err(map_err(maps::ALLOW))?;
    let info = data.info().map_err(map_err(maps::ALLOW))?;
    if info.key_size() as usize != size_of::<AllowKey>() || info.value_size() as usize != size_of::<u64>() {
        tracing::warn!("{}: allowances of another shape are not carried over", path.display());
        return Ok(None);
    }
    let map = aya::maps::Map::LruHashMap(data);
    Ok(Some(HashMap::try_from(map).map_err(map_err(maps::ALLOW))?))
}

/// Where knockgate runs on `iface` now, read from the kernel and the pins in `pins` alone
/// (while knockd runs or after it died: `--status`, the metrics); `None` if nowhere.
#[must_use]
pub fn hooked_now(iface: &str, pins: &PinDir) -> Option<Hooked> {
    let ifindex = netlink::ifindex(iface)?;
    if netlink::xdp_programs(ifindex).ok().flatten().is_some_and(|ids| pinned_xdp_runs(pins, &ids).unwrap_or(false)) {
        return Some(Hooked::Xdp);
    }
    let tcx = || -> Option<u32> {
        let fd = FdLink::from(PinnedLink::from_pin(pins.tcx_link()).ok()?);
        Some(fd.info().ok()?.program_id())
    };
    if let Some(id) = pins.tcx_link().exists().then(tcx).flatten()
        && tcx_programs(iface).is_ok_and(|ids| ids.contains(&id))
    {
        return Some(Hooked::Tcx);
    }
    cls_bpf_program(ifindex).ok().flatten().map(|_| Hooked::ClsBpf)
}
