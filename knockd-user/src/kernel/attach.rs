//! The XDP link's life: attached once and pinned, adopted by the next daemon and swapped to
//! its program atomically (`bpf_link_update`), attached again when the interface comes back,
//! and removed only by an explicit act (`release`). A program that knockgate did not attach
//! is never replaced.

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
    kernel::error::{KernelError, map_err},
    kernel::netlink,
    kernel::pin::{PINNED_MAPS, PinDir},
    kernel::program::KnockProgram,
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

    /// Attaches to `iface` through the link pinned in `pins` (the interface's directory): a
    /// live pinned link gets this program swapped in (the interface is never without a
    /// program), a dead one is replaced, and with none a new link is made and pinned. Refuses
    /// when the interface has a program that is not the pinned link's.
    pub fn attach(&mut self, iface: &str, pins: &PinDir) -> Result<Attached, KernelError> {
        let link_path = pins.link();
        let ifindex = netlink::ifindex(iface).ok_or_else(|| KernelError::NoInterface(iface.to_owned()))?;
        let on_iface = netlink::xdp_programs(ifindex)
            .map_err(|error| KernelError::Netlink { iface: iface.to_owned(), error })?
            .ok_or_else(|| KernelError::NoInterface(iface.to_owned()))?;
        let mut outcome = Attached::New;
        if link_path.exists() {
            let fd = FdLink::from(PinnedLink::from_pin(&link_path)?);
            let old_program = fd.info()?.program_id();
            if on_iface.contains(&old_program) {
                let link = XdpLink::try_from(fd)?;
                let id = self.xdp_mut()?.attach_to_link(link)?;
                let link = self.xdp_mut()?.take_link(id)?;
                self.keep_link(iface, pins, FdLink::try_from(link)?);
                return Ok(Attached::Swapped { old_program });
            }
            // Dead: its interface is gone. Unpinning releases it.
            drop(fd);
            remove_pin(&link_path)?;
            outcome = Attached::Reattached;
        }
        if let Some(&other) = on_iface.first() {
            return Err(KernelError::Foreign { iface: iface.to_owned(), program: netlink::describe_program(other) });
        }
        self.attach_new(iface, pins)?;
        Ok(outcome)
    }

    fn keep_link(&mut self, iface: &str, pins: &PinDir, fd: FdLink) {
        self.links.retain(|(i, _, _)| i != iface);
        self.links.push((iface.to_owned(), pins.clone(), fd));
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
        self.keep_link(iface, pins, FdLink::from(pinned));
        Ok(())
    }

    /// Whether this program is what `iface` runs now. `None` if the interface is gone.
    pub fn attached_to(&self, iface: &str) -> Result<Option<bool>, KernelError> {
        let Some(ifindex) = netlink::ifindex(iface) else {
            return Ok(None);
        };
        let id = self.program_id()?;
        Ok(netlink::xdp_programs(ifindex)
            .map_err(|error| KernelError::Netlink { iface: iface.to_owned(), error })?
            .map(|ids| ids.contains(&id)))
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
        for (_, pins, _) in &self.links {
            pins.remove()?;
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

fn remove_pin(path: &Path) -> Result<(), KernelError> {
    std::fs::remove_file(path)
        .map_err(|error| KernelError::PinDir(crate::kernel::pin::PinError::Io { path: path.to_path_buf(), error }))
}
