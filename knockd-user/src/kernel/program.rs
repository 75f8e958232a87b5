//! Loading the XDP program and keeping its maps in step with the configuration.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, ProgramArray, RingBuf},
    programs::{ProgramError, Xdp},
};
use knock_common::{
    AddrKey, AllowKey, Attempt, Counter, CpuState, DoorSpec, DoorWindows, LocalAddrs, MAX_DOORS, MAX_LOCAL_ADDRS,
    PORT_SLOTS, PortBits, PortDoors, Rate, Set, Settings, SlotKey, UsedKey, WAYS, maps, port_bit, sets_for,
};

use crate::{
    KNOCK_EBPF,
    clock::Clock,
    config::{Gate, Knock},
    kernel::doors::Doors,
    kernel::error::{KernelError, map_err, map_err_named, map_of},
    kernel::hooks::Attachment,
    kernel::pin::{PINNED_MAPS, PinDir},
    kernel::ports::{port_doors, sync_ports, write_port_bits},
    kernel::rejection::load_program,
    kernel::spec::{addr_key, gate_table, port_table},
};

/// Name of the XDP function in the object.
pub const PROGRAM: &str = "knockgate";
/// The programs `knockgate` tail-calls, by their slot in `DOOR_WALK`: for ports that several
/// sequences name, and for new packets while secret doors exist.
const WALK_PROGRAMS: [&str; 2] = ["knockgate_doors", "knockgate_secret"];
/// `knockgate` at TC ingress, for an interface where another program owns XDP.
pub const TC_PROGRAM: &str = "knockgate_tc";
/// The programs `knockgate_tc` tail-calls, by their slot in `DOOR_WALK_TC`.
const TC_WALK_PROGRAMS: [&str; 2] = ["knockgate_tc_doors", "knockgate_tc_secret"];

/// Sizes and budgets fixed at load time.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries of the per (source, door) table of attempts past their first knock (rounded
    /// up to whole sets: `sets_for`).
    pub progress_entries: u32,
    /// Entries of the table of attempts at their first knock (what a spoofed flood fills).
    pub first_knock_entries: u32,
    /// Entries of the table of gate allowances (source, port).
    pub allow_entries: u32,
    /// Stage events per second and CPU sent to user space (the rest are only counted).
    pub stage_rate: u32,
    pub stage_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        // The first-knock table is what a spoofed flood fills: a knocker's first step survives
        // about (entries / flood rate) seconds of distinct spoofed sources, ~0.5 s at 500k pps.
        Self {
            progress_entries: 65536,
            first_knock_entries: 262_144,
            allow_entries: 65536,
            stage_rate: 10,
            stage_burst: 20,
        }
    }
}

/// The loaded program and its maps.
pub struct KnockProgram {
    pub(crate) ebpf: Ebpf,
    limits: Limits,
    /// Secret key of the attempt tables' hash.
    hash_key: u64,
    /// What `PORTS` holds now, so updates write only the slots that change.
    ports: BTreeMap<u32, PortDoors>,
    /// The secret doors `PORT_BITS` holds now.
    secret_mask: u32,
    /// The pinned state this program uses, if any (`load_pinned`).
    pub(crate) pins: Option<PinDir>,
    /// Whether `load_pinned` found this build's maps pinned and reused them.
    reused: bool,
    /// What is attached, one per interface (`attach`).
    pub(crate) links: Vec<Attachment>,
    /// Where a verifier's log goes should it reject a program loaded later (`load_tc`).
    logs: PathBuf,
    /// Whether `load_tc` has loaded the TC programs.
    tc_loaded: bool,
}

/// Attempts per set of the attempt tables.
const WAYS_U32: u32 = {
    assert!(WAYS <= 64);
    #[expect(clippy::cast_possible_truncation, reason = "checked just above")]
    let ways = WAYS as u32;
    ways
};

/// Expected key size, value size and (for fixed-size maps) entries of a pinned map.
fn pinned_shape(name: &str) -> (usize, usize, Option<u32>) {
    let array = size_of::<u32>();
    match name {
        maps::DOORS => (array, size_of::<DoorSpec>(), Some(MAX_DOORS)),
        maps::SETTINGS => (array, size_of::<Settings>(), Some(1)),
        maps::PORTS => (array, size_of::<PortDoors>(), Some(PORT_SLOTS)),
        maps::LOCAL_ADDRS => (array, size_of::<LocalAddrs>(), Some(1)),
        maps::PROGRESS | maps::FIRST_KNOCKS => (array, size_of::<Set>(), None),
        maps::CPU => (array, size_of::<CpuState>(), Some(1)),
        maps::ALLOW => (size_of::<AllowKey>(), size_of::<u64>(), None),
        maps::WINDOWS => (array, size_of::<DoorWindows>(), Some(MAX_DOORS)),
        maps::USED => (size_of::<UsedKey>(), size_of::<u64>(), None),
        maps::DOOR_WALK | maps::DOOR_WALK_TC => (array, array, Some(2)),
        _ => (0, 0, None),
    }
}

/// Loads the programs `names` and puts them in the program array `table`, by slot.
fn load_walk(ebpf: &mut Ebpf, table: &'static str, names: [&'static str; 2], logs: &Path) -> Result<(), KernelError> {
    let mut fds = Vec::new();
    for name in names {
        load_program(ebpf, name, logs)?;
        let fd = ebpf.program(name).ok_or(KernelError::MissingProgram(name))?.fd()?;
        fds.push(fd.try_clone().map_err(|e| KernelError::Program(ProgramError::from(e)))?);
    }
    let mut array = ProgramArray::try_from(map_of(ebpf, table)?).map_err(map_err(table))?;
    for (slot, fd) in (0u32..).zip(&fds) {
        array.set(slot, fd, 0).map_err(map_err(table))?;
    }
    Ok(())
}

impl KnockProgram {
    /// Loads the program into the kernel (verifier included) with maps of its own; nothing
    /// is attached yet. For tests and benchmarks: the daemon uses `load_pinned`.
    pub fn load(limits: Limits) -> Result<Self, KernelError> {
        Self::load_with(limits, None, &crate::kernel::rejection::scratch_logs())
    }

    /// Loads the program with its state in `pins`: maps of this build's layout pinned there
    /// are reused (their table sizes win over `limits`, as a reload would leave them), the
    /// others are made and pinned. Nothing is attached yet (`attach`). Should the verifier
    /// reject a program, its log is written to `logs`.
    pub fn load_pinned(mut limits: Limits, pins: &PinDir, logs: &Path) -> Result<Self, KernelError> {
        let mut reused = false;
        for name in PINNED_MAPS {
            let path = pins.map(name);
            if !path.exists() {
                continue;
            }
            let info = MapData::from_pin(&path).and_then(|m| m.info()).map_err(map_err_named(name))?;
            let (key, value, entries) = pinned_shape(name);
            let shape = (info.key_size() as usize, info.value_size() as usize);
            if shape != (key, value) || entries.is_some_and(|n| n != info.max_entries()) {
                return Err(KernelError::PinnedLayout {
                    path,
                    found: format!("key {} B, value {} B, {} entries", shape.0, shape.1, info.max_entries()),
                    want: format!(
                        "key {key} B, value {value} B{}",
                        entries.map_or(String::new(), |n| format!(", {n} entries"))
                    ),
                });
            }
            reused = true;
            let sized = |configured: u32, pinned: u32, what: &str| {
                if configured != pinned {
                    tracing::warn!(
                        "{what} = {configured} in the config, but the pinned table has {pinned}: kept until `knockd --unload`"
                    );
                }
                pinned
            };
            match name {
                maps::PROGRESS => {
                    limits.progress_entries =
                        sized(sets_for(limits.progress_entries), info.max_entries(), "AttemptTableSize sets")
                            .saturating_mul(WAYS_U32);
                }
                maps::FIRST_KNOCKS => {
                    limits.first_knock_entries =
                        sized(sets_for(limits.first_knock_entries), info.max_entries(), "FirstKnockTableSize sets")
                            .saturating_mul(WAYS_U32);
                }
                maps::ALLOW => limits.allow_entries = sized(limits.allow_entries, info.max_entries(), "AllowTableSize"),
                _ => {}
            }
        }
        let mut program = Self::load_with(limits, Some(pins), logs)?;
        program.reused = reused;
        if reused {
            program.adopt_kernel_state()?;
        }
        Ok(program)
    }

    fn load_with(limits: Limits, pins: Option<&PinDir>, logs: &Path) -> Result<Self, KernelError> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::PROGRESS, sets_for(limits.progress_entries))
            .map_max_entries(maps::FIRST_KNOCKS, sets_for(limits.first_knock_entries))
            .map_max_entries(maps::ALLOW, limits.allow_entries);
        let paths: Vec<(&str, PathBuf)> =
            pins.map(|p| PINNED_MAPS.iter().map(|&n| (n, p.map(n))).collect()).unwrap_or_default();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(KNOCK_EBPF).map_err(|e| match e {
            aya::EbpfError::MapError(MapError::CreateError { name, io_error })
                if io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                KernelError::MapNotPermitted { name }
            }
            e => KernelError::Load(e),
        })?;
        load_program(&mut ebpf, PROGRAM, logs)?;
        load_walk(&mut ebpf, maps::DOOR_WALK, WALK_PROGRAMS, logs)?;
        let mut key = [0u8; 8];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)).map_err(KernelError::Random)?;
        Ok(Self {
            ebpf,
            limits,
            hash_key: u64::from_ne_bytes(key),
            ports: BTreeMap::new(),
            secret_mask: 0,
            pins: pins.cloned(),
            reused: false,
            links: Vec::new(),
            logs: logs.to_path_buf(),
            tc_loaded: false,
        })
    }

    /// Loads the TC programs (`knockgate_tc` and the programs it tail-calls) and fills their
    /// table, if not done yet: only an interface that another XDP program owns needs them.
    pub fn load_tc(&mut self) -> Result<(), KernelError> {
        if !self.tc_loaded {
            load_program(&mut self.ebpf, TC_PROGRAM, &self.logs)?;
            load_walk(&mut self.ebpf, maps::DOOR_WALK_TC, TC_WALK_PROGRAMS, &self.logs)?;
            self.tc_loaded = true;
        }
        Ok(())
    }

    /// Takes over the state in reused maps: the attempt tables' hash key (the attempts were
    /// stored under it) and what `PORTS` holds (so the next `apply` clears what the old
    /// config set there and the bitmap covers it).
    fn adopt_kernel_state(&mut self) -> Result<(), KernelError> {
        let settings: Array<_, Settings> =
            Array::try_from(self.map(maps::SETTINGS)?).map_err(map_err(maps::SETTINGS))?;
        let pinned = settings.get(&0, 0).map_err(map_err(maps::SETTINGS))?;
        if pinned.hash_key != 0 {
            self.hash_key = pinned.hash_key;
        }
        self.secret_mask = pinned.secret_mask;
        let ports: Array<_, PortDoors> = Array::try_from(self.map(maps::PORTS)?).map_err(map_err(maps::PORTS))?;
        let mut have = BTreeMap::new();
        for (slot, doors) in (0u32..).zip(ports.iter()) {
            let doors = doors.map_err(map_err(maps::PORTS))?;
            if doors != PortDoors::default() {
                have.insert(slot, doors);
            }
        }
        self.ports = have;
        Ok(())
    }

    /// Whether `load_pinned` reused this build's pinned maps (a restart), rather than making
    /// them (a first start, or another layout's state to carry over).
    #[must_use]
    pub fn reused_state(&self) -> bool {
        self.reused
    }

    /// The door specs the kernel holds, by slot (for a restart to keep the attempts of doors
    /// that match as before).
    pub fn kernel_doors(&self) -> Result<Vec<DoorSpec>, KernelError> {
        let map: Array<_, DoorSpec> = Array::try_from(self.map(maps::DOORS)?).map_err(map_err(maps::DOORS))?;
        map.iter().map(|d| d.map_err(map_err(maps::DOORS))).collect()
    }

    pub(crate) fn xdp(&self) -> Result<&Xdp, KernelError> {
        Ok(self.ebpf.program(PROGRAM).ok_or(KernelError::MissingProgram(PROGRAM))?.try_into()?)
    }

    pub(crate) fn xdp_mut(&mut self) -> Result<&mut Xdp, KernelError> {
        Ok(self.ebpf.program_mut(PROGRAM).ok_or(KernelError::MissingProgram(PROGRAM))?.try_into()?)
    }

    pub(crate) fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, KernelError> {
        map_of(&mut self.ebpf, name)
    }

    pub(crate) fn map(&self, name: &'static str) -> Result<&aya::maps::Map, KernelError> {
        self.ebpf.map(name).ok_or(KernelError::MissingMap(name))
    }

    /// Writes the doors in force into the maps, with the secret doors' keys of this moment.
    pub fn apply(&mut self, doors: &Doors) -> Result<(), KernelError> {
        self.apply_at(doors, &Clock::now())
    }

    /// As `apply`, with the secret doors' windows of `clock`.
    pub fn apply_at(&mut self, doors: &Doors, clock: &Clock) -> Result<(), KernelError> {
        let specs = doors.specs();
        let active = || doors.active().map(|(i, s)| (i, &s.door));
        let ports = port_table(active(), clock);
        let secret_mask = doors
            .active()
            .filter(|(_, s)| s.door.secret.is_some())
            .fold(0u32, |m, (i, _)| m | 1u32.checked_shl(u32::from(i)).unwrap_or(0));
        // The keys first: a first port listed before its key is live would only be ignored.
        {
            let mut map: Array<_, DoorWindows> =
                Array::try_from(self.map_mut(maps::WINDOWS)?).map_err(map_err(maps::WINDOWS))?;
            for i in 0..MAX_DOORS {
                let windows = doors
                    .active()
                    .find(|(slot, _)| u32::from(*slot) == i)
                    .and_then(|(_, s)| s.door.secret.as_ref())
                    .map_or_else(DoorWindows::default, |secret| secret.windows(clock));
                map.set(i, windows, 0).map_err(map_err(maps::WINDOWS))?;
            }
        }
        let gates = gate_table(active());
        let stealth_mask = doors
            .active()
            .filter(|(_, s)| s.door.stealth)
            .fold(0u32, |m, (i, _)| m | 1u32.checked_shl(u32::from(i)).unwrap_or(0));
        let [(_, progress_mask), (_, first_mask)] = self.tables();
        let settings = Settings {
            slots: doors.slot_count(),
            gating: u32::from(doors.active().any(|(_, s)| matches!(s.door.gate, Gate::Open { .. }))),
            stealth_mask,
            progress_mask,
            first_mask,
            secret_mask,
            _pad: [0; 2],
            stage_events: Rate::new(self.limits.stage_rate, self.limits.stage_burst),
            hash_key: self.hash_key,
        };
        // Gates first, so a port is gated before the door that opens it can be knocked.
        let knocking: BTreeMap<u32, u32> =
            self.ports.iter().filter(|(_, d)| d.knock != 0).map(|(&slot, d)| (slot, d.knock)).collect();
        let staged = port_doors(&knocking, &gates);
        let wanted = port_doors(&ports, &gates);
        // `PORT_BITS` lets a frame skip `PORTS` when its slot's bit is clear, so a bit is
        // set before its slot is written and cleared only after: first the union of every
        // state `PORTS` passes through, at the end the final one. The bitmap is written whole
        // and a frame may read it half-written, but each write only adds bits or only removes
        // them, so whatever mix a frame reads still covers the `PORTS` in force.
        let old_secret = self.secret_mask;
        write_port_bits(&mut self.ebpf, [&self.ports, &staged, &wanted], old_secret | secret_mask)?;
        sync_ports(&mut self.ebpf, &mut self.ports, staged)?;
        {
            let mut map: Array<_, DoorSpec> =
                Array::try_from(self.map_mut(maps::DOORS)?).map_err(map_err(maps::DOORS))?;
            for (i, spec) in (0u32..).zip(&specs) {
                map.set(i, spec, 0).map_err(map_err(maps::DOORS))?;
            }
        }
        sync_ports(&mut self.ebpf, &mut self.ports, wanted)?;
        write_port_bits(&mut self.ebpf, [&self.ports], secret_mask)?;
        self.secret_mask = secret_mask;
        let mut s: Array<_, Settings> =
            Array::try_from(self.map_mut(maps::SETTINGS)?).map_err(map_err(maps::SETTINGS))?;
        s.set(0, settings, 0).map_err(map_err(maps::SETTINGS))
    }

    /// When a source's allowance for a gated port ends (`ktime` ns), if it has one.
    pub fn allowed_until(&self, src: IpAddr, port: Knock) -> Result<Option<u64>, KernelError> {
        let map: HashMap<_, AllowKey, u64> = HashMap::try_from(self.map(maps::ALLOW)?).map_err(map_err(maps::ALLOW))?;
        let a = addr_key(src);
        let key = AllowKey { addr: a.addr, family: a.family, proto: port.proto.number(), port: port.port };
        match map.get(&key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(maps::ALLOW)(e)),
        }
    }

    /// Kernel memory of each of this process's BPF maps (`memlock` in `/proc/self/fdinfo`).
    #[must_use]
    pub fn map_memory() -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
            return out;
        };
        for entry in dir.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let field =
                |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok());
            if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
                let name = u32::try_from(id)
                    .ok()
                    .and_then(|id| aya::maps::MapInfo::from_id(id).ok())
                    .and_then(|i| i.name_as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("map {id}"));
                if !out.iter().any(|(n, _)| *n == name) {
                    out.push((name, bytes));
                }
            }
        }
        out.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        out
    }

    /// Makes `LOCAL_ADDRS` hold exactly `addrs` (at most `MAX_LOCAL_ADDRS`: knocks to any
    /// further address are not counted, which the daemon logs as a warning).
    pub fn set_local_addrs(&mut self, addrs: &[IpAddr]) -> Result<(), KernelError> {
        let mut local = LocalAddrs::EMPTY;
        for (slot, &ip) in local.addrs.iter_mut().zip(addrs) {
            *slot = addr_key(ip);
        }
        local.count = u32::try_from(addrs.len().min(MAX_LOCAL_ADDRS)).unwrap_or(0);
        if addrs.len() > MAX_LOCAL_ADDRS {
            tracing::warn!(
                "the interface has {} addresses; knocks count only when sent to the first {MAX_LOCAL_ADDRS}, not to {:?}",
                addrs.len(),
                &addrs[MAX_LOCAL_ADDRS..]
            );
        }
        let mut map: Array<_, LocalAddrs> =
            Array::try_from(self.map_mut(maps::LOCAL_ADDRS)?).map_err(map_err(maps::LOCAL_ADDRS))?;
        map.set(0, local, 0).map_err(map_err(maps::LOCAL_ADDRS))
    }

    /// Fills the allowance table with `n` synthetic allowances for port 22/tcp (sources
    /// `2001:db8:fffe::/48`, never sent to), an hour from now: for scrape benchmarks.
    pub fn fill_allowances(&mut self, n: u32) -> Result<(), KernelError> {
        let until = crate::clock::monotonic_ns().saturating_add(3_600_000_000_000);
        let mut map: HashMap<_, AllowKey, u64> =
            HashMap::try_from(self.map_mut(maps::ALLOW)?).map_err(map_err(maps::ALLOW))?;
        for i in 0..n {
            let mut addr = [0u8; 16];
            addr[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0xff, 0xfe]);
            addr[12..].copy_from_slice(&i.to_be_bytes());
            let a = AddrKey::v6(addr);
            let key = AllowKey { addr: a.addr, family: a.family, proto: knock_common::PROTO_TCP, port: 22 };
            map.insert(key, until, 0).map_err(map_err(maps::ALLOW))?;
        }
        Ok(())
    }

    /// Fills the attempt tables with `n` synthetic attempts at door slot 0 (sources
    /// `2001:db8:ffff::/48`, never sent to), half past their first knock, begun at
    /// `started_ns`: for the scale and scrape benchmarks.
    pub fn fill_attempts(&mut self, n: u32, epoch: u32, started_ns: u64) -> Result<(), KernelError> {
        for ((name, mask), stage) in self.tables().into_iter().zip([2, 1]) {
            let mut sets = vec![Set::EMPTY; mask as usize + 1];
            for i in (0..n).filter(|i| (i % 2 == 0) == (stage == 2)) {
                let mut addr = [0u8; 16];
                addr[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff]);
                addr[12..].copy_from_slice(&i.to_be_bytes());
                let key = SlotKey::new(self.hash_key, &AddrKey::v6(addr), 0);
                let set = &mut sets[key.set(mask) as usize];
                let way = set.victim();
                set.store(way, &key, &Attempt::new(stage, started_ns, epoch));
            }
            let mut map: Array<_, Set> = Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for (i, set) in (0u32..).zip(&sets) {
                map.set(i, set, 0).map_err(map_err(name))?;
            }
        }
        Ok(())
    }

    /// Takes the event ring buffer out (once) for the event loop.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        let map = self.ebpf.take_map(maps::EVENTS).ok_or(KernelError::MissingMap(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(map_err(maps::EVENTS))
    }

    /// The counters summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, KernelError> {
        let map: PerCpuArray<_, CpuState> = PerCpuArray::try_from(self.map(maps::CPU)?).map_err(map_err(maps::CPU))?;
        let per_cpu = map.get(&0, 0).map_err(map_err(maps::CPU))?;
        Ok(Counter::ALL.iter().map(|&c| (c, per_cpu.iter().map(|s| s.counters[c as usize]).sum())).collect())
    }

    /// Each door slot's counters, summed over CPUs.
    pub fn door_counters(&self) -> Result<Vec<knock_common::DoorCounters>, KernelError> {
        let map: PerCpuArray<_, CpuState> = PerCpuArray::try_from(self.map(maps::CPU)?).map_err(map_err(maps::CPU))?;
        let per_cpu = map.get(&0, 0).map_err(map_err(maps::CPU))?;
        Ok((0..MAX_DOORS)
            .map(|slot| knock_common::DoorCounters::sum(per_cpu.iter(), u8::try_from(slot).unwrap_or(0)))
            .collect())
    }

    /// The port slots the kernel's `PORTS` holds something for, and those its `PORT_BITS`
    /// marks, read back from the maps: for tests, which check that the two agree.
    pub fn port_slots(&self) -> Result<(Vec<u32>, Vec<u32>), KernelError> {
        let ports: Array<_, PortDoors> = Array::try_from(self.map(maps::PORTS)?).map_err(map_err(maps::PORTS))?;
        let mut listed = Vec::new();
        for (slot, doors) in (0..).zip(ports.iter()) {
            if doors.map_err(map_err(maps::PORTS))? != PortDoors::default() {
                listed.push(slot);
            }
        }
        let bits: Array<_, PortBits> = Array::try_from(self.map(maps::PORT_BITS)?).map_err(map_err(maps::PORT_BITS))?;
        let bits = bits.get(&0, 0).map_err(map_err(maps::PORT_BITS))?;
        let marked = (0..PORT_SLOTS)
            .filter(|&slot| {
                let (word, bit) = port_bit(slot);
                bits[word] & bit != 0
            })
            .collect();
        Ok((listed, marked))
    }

    /// The attempt tables, each with its set mask (sets minus one), in the order
    /// `PROGRESS`, `FIRST_KNOCKS`.
    fn tables(&self) -> [(&'static str, u32); 2] {
        [
            (maps::PROGRESS, sets_for(self.limits.progress_entries) - 1),
            (maps::FIRST_KNOCKS, sets_for(self.limits.first_knock_entries) - 1),
        ]
    }

    /// One source's attempt at door slot `door`, if the kernel holds one.
    pub fn attempt(&self, src: IpAddr, door: u8) -> Result<Option<Attempt>, KernelError> {
        let key = SlotKey::new(self.hash_key, &addr_key(src), door);
        for (name, mask) in self.tables() {
            let map: Array<_, Set> = Array::try_from(self.map(name)?).map_err(map_err(name))?;
            if let Some((_, a)) = map.get(&key.set(mask), 0).map_err(map_err(name))?.find(&key) {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    /// Removes a source's attempt at door slot `door` (after its timeout was logged). The set
    /// is written back whole: a knock landing in the same set at that instant may lose its
    /// step, as with any race on a set; nothing can open because of it.
    pub fn forget_attempt(&mut self, src: IpAddr, door: u8) -> Result<(), KernelError> {
        let key = SlotKey::new(self.hash_key, &addr_key(src), door);
        for (name, mask) in self.tables() {
            let mut map: Array<_, Set> = Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            let mut set = map.get(&key.set(mask), 0).map_err(map_err(name))?;
            if let Some((i, _)) = set.find(&key) {
                set.clear(i);
                map.set(key.set(mask), set, 0).map_err(map_err(name))?;
            }
        }
        Ok(())
    }

    /// The sizes and budgets the program was loaded with.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many instructions the verifier processed for each program (its limit is a
    /// million): the headroom a change of the code or of the kernel has left.
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>, KernelError> {
        let mut counts = Vec::new();
        for name in std::iter::once(PROGRAM).chain(WALK_PROGRAMS) {
            let prog: &Xdp = self.ebpf.program(name).ok_or(KernelError::MissingProgram(name))?.try_into()?;
            counts.push((name, prog.info()?.verified_instruction_count().unwrap_or(0)));
        }
        Ok(counts)
    }
}
