//! The doors in force, by kernel slot. A door keeps its slot and epoch across a reload when
//! it matches knocks exactly as before, so attempts in progress survive the reload; any
//! other change gives the slot a new epoch, which voids its attempts in the kernel.

use knock_common::{DoorSpec, MAX_DOORS};

use crate::{
    config::{Door, Knock},
    kernel::spec::door_spec,
};

#[derive(Debug, Clone)]
pub struct Slot {
    pub door: Door,
    pub epoch: u32,
    /// False once a one-time sequences file is used up.
    pub enabled: bool,
}

#[derive(Debug, Default)]
pub struct Doors {
    slots: Vec<Option<Slot>>,
    last_epoch: u32,
}

impl Doors {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn next_epoch(&mut self) -> u32 {
        self.last_epoch = self.last_epoch.wrapping_add(1).max(1);
        self.last_epoch
    }

    /// Puts `doors` in force. Returns how many doors kept their attempts.
    pub fn install(&mut self, doors: Vec<Door>) -> usize {
        let mut old: Vec<Option<Slot>> = std::mem::take(&mut self.slots);
        let mut placed: Vec<Option<Slot>> = vec![None; old.len().max(doors.len())];
        let mut fresh = Vec::new();
        let mut kept = 0;
        for door in doors {
            let same = old.iter().position(|s| s.as_ref().is_some_and(|s| s.enabled && s.door.same_matching(&door)));
            match same {
                Some(i) => {
                    let epoch = old[i].take().map_or(0, |s| s.epoch);
                    placed[i] = Some(Slot { door, epoch, enabled: true });
                    kept += 1;
                }
                None => fresh.push(door),
            }
        }
        self.place_fresh(placed, fresh);
        kept
    }

    /// As `install`, for a restarted daemon's first config: a door whose spec matches the one
    /// the kernel holds in a slot (`pinned`, as the previous daemon left them) takes that slot
    /// and its epoch, so its attempts in progress carry over. Returns how many did.
    pub fn install_adopting(&mut self, doors: Vec<Door>, pinned: &[DoorSpec]) -> usize {
        self.last_epoch = pinned.iter().map(|s| s.epoch).max().unwrap_or(0).max(self.last_epoch);
        let mut placed: Vec<Option<Slot>> = vec![None; pinned.len().max(doors.len())];
        let mut fresh = Vec::new();
        let mut kept = 0;
        for door in doors {
            let same = pinned
                .iter()
                .enumerate()
                .position(|(i, spec)| spec.len > 0 && placed[i].is_none() && door_spec(&door, spec.epoch) == *spec);
            match same {
                Some(i) => {
                    placed[i] = Some(Slot { door, epoch: pinned[i].epoch, enabled: true });
                    kept += 1;
                }
                None => fresh.push(door),
            }
        }
        self.place_fresh(placed, fresh);
        kept
    }

    /// Gives each of `fresh` a new epoch and the first free slot, and puts the result in force.
    fn place_fresh(&mut self, mut placed: Vec<Option<Slot>>, fresh: Vec<Door>) {
        for door in fresh {
            let epoch = self.next_epoch();
            let slot = Slot { door, epoch, enabled: true };
            match placed.iter().position(Option::is_none) {
                Some(i) => placed[i] = Some(slot),
                None => placed.push(Some(slot)),
            }
        }
        while placed.last().is_some_and(Option::is_none) {
            placed.pop();
        }
        self.slots = placed;
    }

    /// The door of a kernel event, if that slot still holds the door of that epoch.
    #[must_use]
    pub fn get(&self, slot: u8, epoch: u32) -> Option<&Slot> {
        self.slots.get(usize::from(slot))?.as_ref().filter(|s| s.epoch == epoch && s.enabled)
    }

    /// A one-time door moves on to its next sequence (a new epoch).
    pub fn set_sequence(&mut self, slot: u8, sequence: Vec<Knock>, offset: u64) {
        let epoch = self.next_epoch();
        if let Some(Some(s)) = self.slots.get_mut(usize::from(slot)) {
            s.door.sequence = sequence;
            if let Some(ot) = s.door.one_time.as_mut() {
                ot.offset = offset;
            }
            s.epoch = epoch;
        }
    }

    /// A door stops matching (its one-time sequences are used up).
    pub fn disable(&mut self, slot: u8) {
        if let Some(Some(s)) = self.slots.get_mut(usize::from(slot)) {
            s.enabled = false;
        }
    }

    /// Kernel specs for every slot up to `MAX_DOORS` (unused and disabled slots empty).
    #[must_use]
    pub fn specs(&self) -> Vec<DoorSpec> {
        (0..MAX_DOORS as usize)
            .map(|i| match self.slots.get(i) {
                Some(Some(s)) if s.enabled => door_spec(&s.door, s.epoch),
                _ => DoorSpec::EMPTY,
            })
            .collect()
    }

    /// Slots the XDP program must walk.
    #[must_use]
    pub fn slot_count(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(MAX_DOORS).min(MAX_DOORS)
    }

    /// Enabled doors with their slots.
    pub fn active(&self) -> impl Iterator<Item = (u8, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((u8::try_from(i).ok()?, s.as_ref().filter(|s| s.enabled)?)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn doors(text: &str) -> Vec<Door> {
        Config::parse(Path::new("t"), text).unwrap().doors
    }

    #[test]
    fn unchanged_doors_keep_slot_and_epoch() {
        let mut d = Doors::new();
        d.install(doors("[a]\nsequence=1,2\n[b]\nsequence=3,4\n[c]\nsequence=5\n"));
        let before: Vec<(u8, u32, String)> = d.active().map(|(i, s)| (i, s.epoch, s.door.name.clone())).collect();
        // b's command changes (kept), a's sequence changes (new epoch), c goes, e comes.
        let kept = d.install(doors("[e]\nsequence=9\n[b]\nsequence=3,4\ncommand=x\n[a]\nsequence=1,7\n"));
        assert_eq!(kept, 1);
        let after: Vec<(u8, u32, String)> = d.active().map(|(i, s)| (i, s.epoch, s.door.name.clone())).collect();
        let b_before = before.iter().find(|x| x.2 == "b").unwrap();
        let b_after = after.iter().find(|x| x.2 == "b").unwrap();
        assert_eq!((b_before.0, b_before.1), (b_after.0, b_after.1));
        let a_after = after.iter().find(|x| x.2 == "a").unwrap();
        assert!(before.iter().all(|x| x.1 != a_after.1), "a changed: new epoch");
        assert_eq!(after.len(), 3);
        assert_eq!(d.specs().iter().filter(|s| s.len > 0).count(), 3);
        assert!(d.get(b_after.0, b_after.1).is_some());
        assert!(d.get(b_after.0, b_after.1 + 100).is_none(), "stale epoch");
    }

    #[test]
    fn a_restart_keeps_the_slots_and_epochs_of_doors_that_match_the_kernel() {
        let mut before = Doors::new();
        before.install(doors("[a]\nsequence=1,2\n[b]\nsequence=3,4\n[c]\nsequence=5\n"));
        let pinned = before.specs();
        // A new process: b unchanged (its command may differ), a changed, c gone, e new.
        let mut after = Doors::new();
        let kept = after
            .install_adopting(doors("[e]\nsequence=9\n[b]\nsequence=3,4\ncommand=x\n[a]\nsequence=1,7\n"), &pinned);
        assert_eq!(kept, 1);
        let slot_of =
            |d: &Doors, name: &str| d.active().find(|(_, s)| s.door.name == name).map(|(i, s)| (i, s.epoch)).unwrap();
        assert_eq!(slot_of(&after, "b"), slot_of(&before, "b"));
        let old_epochs: Vec<u32> = pinned.iter().map(|s| s.epoch).collect();
        for name in ["a", "e"] {
            assert!(!old_epochs.contains(&slot_of(&after, name).1), "{name} gets an epoch never used");
        }
        assert_eq!(after.active().count(), 3);
    }

    #[test]
    fn disabled_doors_leave_the_kernel_table() {
        let mut d = Doors::new();
        d.install(doors("[a]\nsequence=1\n[b]\nsequence=2\n"));
        d.disable(0);
        assert_eq!(d.specs()[0].len, 0);
        assert_eq!(d.specs()[1].len, 1);
        assert_eq!(d.active().count(), 1);
        assert_eq!(d.slot_count(), 2);
    }
}
