//! What an interface's pinned state holds, read from the pins alone (while knockd runs or
//! after it died), changing nothing: the doors, the live allowances, the attempts in progress,
//! the table occupancy and the counters. For `knockd --status` and the metrics.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use knock_common::{AllowKey, Counter, CpuState, DoorCounters, DoorSpec, PROTO_UDP, Set, Settings, maps};
use serde::{Deserialize, Serialize};

use crate::{
    clock::monotonic_ns,
    config::check,
    kernel::{doors::Doors, pin::PinDir, spec::event_addr},
};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("nothing is pinned at {0} (is knockd running there, or has it ever, with this BpfDir?)")]
    NotPinned(String),
    #[error("pinned map {path}: {error}")]
    Map { path: String, error: MapError },
}

/// The door that holds a kernel slot, as the daemon last wrote it to `StateDir/IFACE/doors.json`
/// (the kernel knows doors by slot and epoch only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorLabel {
    pub slot: u8,
    pub epoch: u32,
    pub name: String,
    /// `check::summary` of the door.
    pub summary: String,
    /// A secret-keyed door: its resets are near misses (a knock begun with a window's first
    /// port, gone on with a port of no window). Absent from labels written before it was.
    #[serde(default)]
    pub secret: bool,
    /// The slot's counters when this door took it: what it counts is the rest
    /// (`DoorCounts::since`). Opens, resets, timeouts, then stages 1 to 32.
    pub base: Vec<u64>,
}

/// A door slot's counters as plain numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DoorCounts {
    pub opens: u64,
    pub resets: u64,
    pub timeouts: u64,
    /// `(stage, knocks that brought an attempt to it)`, for the stages reached at all.
    pub stages: Vec<(u8, u64)>,
}

impl DoorCounts {
    /// The slot's counters as a flat list (the `DoorLabel::base` form).
    #[must_use]
    pub fn flat(c: &DoorCounters) -> Vec<u64> {
        let mut v = vec![c.opens, c.resets, c.timeouts];
        v.extend(c.stages);
        v
    }

    /// What a door counted since `base` (`DoorLabel::base`).
    #[must_use]
    pub fn since(c: &DoorCounters, base: &[u64]) -> Self {
        let now = Self::flat(c);
        let d: Vec<u64> =
            now.iter().enumerate().map(|(i, v)| v.saturating_sub(base.get(i).copied().unwrap_or(0))).collect();
        let stages = (1u8..).zip(&d[3..]).filter(|(_, n)| **n > 0).map(|(s, n)| (s, *n)).collect();
        Self { opens: d[0], resets: d[1], timeouts: d[2], stages }
    }
}

/// The labels of the doors in force. A slot's base carries over from `previous` while the
/// same door (by name) holds it; a door new to its slot starts from the slot's counters now.
#[must_use]
pub fn labels(doors: &Doors, counters: &[DoorCounters], previous: &[DoorLabel]) -> Vec<DoorLabel> {
    doors
        .active()
        .map(|(slot, s)| {
            let base = previous.iter().find(|l| l.slot == slot && l.name == s.door.name).map_or_else(
                || counters.get(usize::from(slot)).map(DoorCounts::flat).unwrap_or_default(),
                |l| l.base.clone(),
            );
            DoorLabel {
                slot,
                epoch: s.epoch,
                name: s.door.name.clone(),
                summary: check::summary(&s.door),
                secret: s.door.secret.is_some(),
                base,
            }
        })
        .collect()
}

/// One door as the kernel holds it.
#[derive(Debug, Clone, Serialize)]
pub struct DoorView {
    pub slot: u8,
    /// From the daemon's label; `slot N` when there is none for this slot and epoch.
    pub name: String,
    pub summary: String,
    /// A secret-keyed door (its resets are near misses).
    pub secret: bool,
    pub counts: DoorCounts,
}

/// A live allowance.
#[derive(Debug, Clone, Serialize)]
pub struct Allowance {
    pub source: IpAddr,
    pub port: u16,
    pub proto: &'static str,
    pub seconds_left: f64,
}

/// Attempts in progress at one door and stage.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptCount {
    pub door: String,
    pub stage: u8,
    pub count: u64,
}

/// Slots used and slots in all of one kernel table.
#[derive(Debug, Clone, Serialize)]
pub struct TableUse {
    pub table: &'static str,
    pub used: u64,
    pub capacity: u64,
}

/// An interface's state at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub doors: Vec<DoorView>,
    pub allowances: Vec<Allowance>,
    /// Attempts in progress, per door and stage.
    pub attempts: Vec<AttemptCount>,
    pub tables: Vec<TableUse>,
    /// The program's counters, summed over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
}

fn open(dir: &Path, name: &str) -> Result<MapData, SnapshotError> {
    let path = dir.join(name);
    MapData::from_pin(&path).map_err(|error| SnapshotError::Map { path: path.display().to_string(), error })
}

fn err(dir: &Path, name: &str) -> impl FnOnce(MapError) -> SnapshotError {
    let path = dir.join(name).display().to_string();
    move |error| SnapshotError::Map { path, error }
}

/// Reads the state pinned in `pins` (this build's layout). `labels` name the doors.
pub fn read(pins: &PinDir, labels: &[DoorLabel]) -> Result<Snapshot, SnapshotError> {
    let dir = pins.maps();
    if !dir.join(maps::DOORS).exists() {
        return Err(SnapshotError::NotPinned(dir.display().to_string()));
    }
    let now = monotonic_ns();
    let doors: Array<_, DoorSpec> =
        Array::try_from(Map::Array(open(&dir, maps::DOORS)?)).map_err(err(&dir, maps::DOORS))?;
    let specs: Vec<DoorSpec> = doors.iter().collect::<Result<_, _>>().map_err(err(&dir, maps::DOORS))?;
    let settings: Array<_, Settings> =
        Array::try_from(Map::Array(open(&dir, maps::SETTINGS)?)).map_err(err(&dir, maps::SETTINGS))?;
    let settings = settings.get(&0, 0).map_err(err(&dir, maps::SETTINGS))?;
    let cpu: PerCpuArray<_, CpuState> =
        PerCpuArray::try_from(Map::PerCpuArray(open(&dir, maps::CPU)?)).map_err(err(&dir, maps::CPU))?;
    let per_cpu = cpu.get(&0, 0).map_err(err(&dir, maps::CPU))?;
    let counters =
        Counter::ALL.iter().map(|&c| (c.name(), per_cpu.iter().map(|s| s.counters[c as usize]).sum())).collect();
    let slot_counters = |slot: u8| DoorCounters::sum(per_cpu.iter(), slot);
    let mut views = Vec::new();
    let mut names: BTreeMap<u8, String> = BTreeMap::new();
    for (slot, spec) in (0u8..).zip(&specs).filter(|(_, s)| s.len > 0) {
        let label = labels.iter().find(|l| l.slot == slot && l.epoch == spec.epoch);
        let name = label.map_or_else(|| format!("slot {slot}"), |l| l.name.clone());
        names.insert(slot, name.clone());
        let counts = DoorCounts::since(&slot_counters(slot), label.map_or(&[][..], |l| &l.base));
        views.push(DoorView {
            slot,
            name,
            summary: label.map(|l| l.summary.clone()).unwrap_or_default(),
            secret: label.is_some_and(|l| l.secret),
            counts,
        });
    }

    let allow_data = open(&dir, maps::ALLOW)?;
    let allow_capacity = allow_data.info().map_err(err(&dir, maps::ALLOW))?.max_entries();
    let allow: HashMap<_, AllowKey, u64> =
        HashMap::try_from(Map::LruHashMap(allow_data)).map_err(err(&dir, maps::ALLOW))?;
    let mut allowances = Vec::new();
    for entry in &allow {
        let (key, until) = entry.map_err(err(&dir, maps::ALLOW))?;
        if until <= now {
            continue;
        }
        let Some(source) = event_addr(key.family, key.addr) else { continue };
        #[expect(clippy::cast_precision_loss, reason = "seconds to show")]
        let seconds_left = (until - now) as f64 / 1e9;
        let proto = if key.proto == PROTO_UDP { "udp" } else { "tcp" };
        allowances.push(Allowance { source, port: key.port, proto, seconds_left });
    }
    allowances.sort_by_key(|a| (a.source, a.port));

    let mut attempts: BTreeMap<(u8, u8), u64> = BTreeMap::new();
    let mut tables = Vec::new();
    for (name, table) in [(maps::FIRST_KNOCKS, "first_knocks"), (maps::PROGRESS, "progress")] {
        let sets: Array<_, Set> = Array::try_from(Map::Array(open(&dir, name)?)).map_err(err(&dir, name))?;
        let mut used = 0u64;
        let mut capacity = 0u64;
        for set in sets.iter() {
            let set = set.map_err(err(&dir, name))?;
            capacity += set.tags.len() as u64;
            for (_, slot, a) in set.live(settings.hash_key) {
                let Some(spec) = specs.get(usize::from(slot)) else { continue };
                if spec.len == 0 || a.epoch != spec.epoch || a.expired(spec.timeout_ns, now) {
                    continue;
                }
                used += 1;
                *attempts.entry((slot, a.stage)).or_default() += 1;
            }
        }
        tables.push(TableUse { table, used, capacity });
    }
    tables.push(TableUse { table: "allow", used: allowances.len() as u64, capacity: u64::from(allow_capacity) });
    let attempts = attempts
        .into_iter()
        .map(|((slot, stage), count)| AttemptCount {
            door: names.get(&slot).cloned().unwrap_or_else(|| format!("slot {slot}")),
            stage,
            count,
        })
        .collect();
    Ok(Snapshot { doors: views, allowances, attempts, tables, counters })
}

impl Snapshot {
    /// The human form of `knockd --status`.
    #[must_use]
    pub fn text(&self, iface: &str) -> String {
        let mut l = vec![format!("interface {iface}"), "doors:".to_owned()];
        for d in &self.doors {
            let resets = if d.secret { "near misses" } else { "resets" };
            l.push(format!(
                "  [{}] {}: {} (opens {}, {resets} {}, timeouts {})",
                d.slot, d.name, d.summary, d.counts.opens, d.counts.resets, d.counts.timeouts
            ));
        }
        l.push(format!("allowances: {}", self.allowances.len()));
        l.extend(
            self.allowances
                .iter()
                .map(|a| format!("  {} {}/{} {:.0}s left", a.source, a.port, a.proto, a.seconds_left.ceil())),
        );
        l.push("attempts in progress:".to_owned());
        l.extend(self.attempts.iter().map(|a| format!("  {} stage {}: {}", a.door, a.stage, a.count)));
        l.push("tables:".to_owned());
        l.extend(self.tables.iter().map(|t| format!("  {} {}/{}", t.table, t.used, t.capacity)));
        l.push("counters:".to_owned());
        l.extend(self.counters.iter().map(|(name, v)| format!("  {name} {v}")));
        l.push(String::new());
        l.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn door_counts_since_their_base() {
        let mut c = DoorCounters { opens: 5, resets: 2, timeouts: 1, ..DoorCounters::default() };
        c.stages[0] = 9;
        c.stages[2] = 4;
        let base = DoorCounts::flat(&DoorCounters { opens: 3, ..DoorCounters::default() });
        let d = DoorCounts::since(&c, &base);
        assert_eq!(d, DoorCounts { opens: 2, resets: 2, timeouts: 1, stages: vec![(1, 9), (3, 4)] });
        assert_eq!(DoorCounts::since(&c, &[]).opens, 5, "no base: everything");
    }
}
