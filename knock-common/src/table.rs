//! The attempt tables (`PROGRESS`, `FIRST_KNOCKS`): set-associative caches held in BPF arrays.
//!
//! Why not LRU hash maps: every hash-map lookup, insert and delete is a call into the kernel,
//! and on machines with return-stack mitigations each costs 50 to 200 ns, several times the
//! rest of a knock step. An array lookup is inlined by the verifier, and scanning one set of
//! `WAYS` slots takes a few dozen instructions.
//!
//! Each source hashes, keyed with a secret drawn at load time, to one set, where its attempts
//! at every door may sit in any of the `WAYS` slots. A new attempt takes an empty slot, else
//! the one whose attempt started longest ago. Without the secret nobody can aim spoofed
//! sources at a victim's set.
//!
//! CPUs write slots without locks. Every slot carries `check`, keyed on all its fields;
//! a slot whose check does not match its fields counts as empty. A slot half-written by one
//! CPU, or written by two at once, is never read as an attempt: racing knocks can lose
//! progress, but can never pair one source's address with another source's progress.
//!
//! The functions are `#[inline(always)]`: they run in the XDP program, where a call costs a
//! stack frame and its limit is 512 bytes.
#![expect(clippy::inline_always, reason = "the XDP program's hot path; see the module comment")]

use crate::{AddrKey, Attempt};

/// Slots per set.
pub const WAYS: usize = WAYS_U32 as usize;
const WAYS_U32: u32 = 8;

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
/// Separates the check from the set-index hash.
const CHECK_SALT: u64 = 0x243F_6A88_85A3_08D3;
/// Spreads a secret door's PRF block over the check (an odd constant, unlike `MUL`, so a
/// block difference cannot cancel a start-time difference).
const BLOCK_MUL: u64 = 0xC2B2_AE3D_27D4_EB4F;

#[inline(always)]
const fn mix(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(MUL);
    h ^ (h >> 29)
}

/// Sets for a table of (at least) `entries` attempts: a power of two, at least one.
#[must_use]
pub const fn sets_for(entries: u32) -> u32 {
    let sets = entries.div_ceil(WAYS_U32);
    if sets <= 1 { 1 } else { sets.next_power_of_two() }
}

/// A source address with its keyed hash: every door's attempts by one source share a set,
/// so a knock, which every door must see, hashes once and reads one set of each table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceKey {
    words: [u32; 4],
    family: u8,
    hash: u64,
}

impl SourceKey {
    #[must_use]
    #[inline(always)]
    pub fn new(secret: u64, src: &AddrKey) -> Self {
        let Self { words, .. } = Self::with_hash(src, 0);
        let lo = u64::from(words[0]) | u64::from(words[1]) << 32;
        let hi = u64::from(words[2]) | u64::from(words[3]) << 32;
        Self::with_hash(src, mix(mix(mix(secret, lo), hi), u64::from(src.family)))
    }

    /// The set this source's attempts live in, for a table of `mask + 1` sets.
    #[must_use]
    #[inline(always)]
    pub const fn set(&self, mask: u32) -> u32 {
        (self.hash >> 32) as u32 & mask
    }

    /// The keyed hash, to rebuild the key with `with_hash` (8 bytes to carry, not 32).
    #[must_use]
    #[inline(always)]
    pub const fn hash(&self) -> u64 {
        self.hash
    }

    /// The key of `src` whose keyed hash (`hash`) is known.
    #[must_use]
    #[inline(always)]
    pub fn with_hash(src: &AddrKey, hash: u64) -> Self {
        let a = &src.addr;
        let words = [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ];
        Self { words, family: src.family, hash }
    }

    /// The byte `Set::tags` holds for this source's slots: 7 bits of its keyed hash, and the
    /// high bit, so that it is never 0, the tag of an empty slot. Every door's attempt by one
    /// source has the same tag: one compare of a set's tags (`Set::mine`) finds the slots that
    /// may hold this source's attempts, at any door.
    #[must_use]
    #[inline(always)]
    pub const fn tag(&self) -> u8 {
        self.hash.to_le_bytes()[3] | 0x80
    }

    /// This source's key at door slot `door`.
    #[must_use]
    #[inline(always)]
    pub const fn door(&self, door: u8) -> SlotKey {
        SlotKey { words: self.words, family: self.family, door, tag: self.tag(), hash: self.hash }
    }
}

/// Who an attempt belongs to: a source address and a door slot, with the source's keyed hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotKey {
    words: [u32; 4],
    family: u8,
    door: u8,
    /// The byte `Set::tags` holds for this key's slot (`SourceKey::tag`).
    tag: u8,
    hash: u64,
}

impl SlotKey {
    #[must_use]
    #[inline(always)]
    pub fn new(secret: u64, src: &AddrKey, door: u8) -> Self {
        SourceKey::new(secret, src).door(door)
    }

    /// The set this key lives in, for a table of `mask + 1` sets.
    #[must_use]
    #[inline(always)]
    pub const fn set(&self, mask: u32) -> u32 {
        (self.hash >> 32) as u32 & mask
    }

    /// The source's tag (`SourceKey::tag`).
    #[must_use]
    #[inline(always)]
    pub const fn tag(&self) -> u8 {
        self.tag
    }

    /// The source's keyed hash, combined by XOR with the slot's state and start time, the time spread
    /// over all 64 bits by a multiply. Pairing one source's address with state written under
    /// another's key would take guessing the two keyed hashes' XOR; fields torn between two
    /// writes of one key differ from both, so their check matches neither (the product keeps
    /// a start-time difference from cancelling a state difference). Unlike a hash over all
    /// fields, it is not a chain of multiplies behind the source's hash: a knock step computes
    /// it twice, to validate and to store.
    #[inline(always)]
    const fn check(&self, a: &Attempt) -> u64 {
        let (stage, epoch, started_ns) = (a.stage, a.epoch, a.started_ns);
        let state = stage as u64 | (epoch as u64) << 8 | (self.door as u64) << 40 | (a.win as u64) << 48;
        // Never 0, the check of an empty slot.
        (self.hash ^ CHECK_SALT ^ state ^ started_ns.wrapping_mul(MUL) ^ a.block.wrapping_mul(BLOCK_MUL)) | 1
    }
}

/// One attempt in a set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Source address, network-order bytes read as native words.
    pub addr: [u32; 4],
    /// `Family as u8`; 0 for a slot never used.
    pub family: u8,
    pub door: u8,
    pub stage: u8,
    /// `Attempt::win`.
    pub win: u8,
    pub epoch: u32,
    pub started_ns: u64,
    /// `Attempt::block`.
    pub block: u64,
    /// `SlotKey::check` of the fields above; 0 marks an empty slot.
    pub check: u64,
}
const _: () = assert!(core::mem::size_of::<Slot>() == 48);

impl Slot {
    pub const EMPTY: Self =
        Self { addr: [0; 4], family: 0, door: 0, stage: 0, win: 0, epoch: 0, started_ns: 0, block: 0, check: 0 };

    /// The attempt the slot holds (valid only if its check holds).
    #[inline(always)]
    const fn attempt(&self) -> Attempt {
        Attempt {
            stage: self.stage,
            win: self.win,
            epoch: self.epoch,
            started_ns: self.started_ns,
            _pad1: 0,
            block: self.block,
        }
    }

    /// Whether the slot names `key` (a cheap test; `Set::find` then validates it).
    #[inline(always)]
    fn names(&self, key: &SlotKey) -> bool {
        self.addr[0] == key.words[0] && self.family == key.family && self.door == key.door && self.addr == key.words
    }

    /// Stores `attempt` for `key` (`Set::store` also sets the tag).
    #[inline(always)]
    fn store(&mut self, key: &SlotKey, attempt: &Attempt) {
        *self = Self {
            addr: key.words,
            family: key.family,
            door: key.door,
            stage: attempt.stage,
            win: attempt.win,
            epoch: attempt.epoch,
            started_ns: attempt.started_ns,
            block: attempt.block,
            check: key.check(attempt),
        };
    }

    #[inline(always)]
    fn clear(&mut self) {
        self.check = 0;
    }
}

/// One value of the attempt arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Set {
    /// Per slot, the tag of the source whose attempt it holds (0: empty). Read as one word,
    /// they tell which slots are worth comparing (`mine`): proving a source has no attempt,
    /// the common case of a knock, costs a few instructions instead of a scan of every slot,
    /// and the slots it may have tell the doors it may have attempts at (`doors`). A hint
    /// only: `find_in` still validates the slots it picks, so a tag left stale by racing
    /// writers can hide an attempt (a lost step, as any race) but never forge one.
    pub tags: [u8; WAYS],
    pub slots: [Slot; WAYS],
}
const _: () = assert!(WAYS.is_power_of_two() && WAYS == 8, "tags are read as one u64");

/// Slots of a set that may be one source's (`Set::mine`): the high bit of byte i for slot i.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mine(u64);

impl Mine {
    /// Whether no slot may be the source's.
    #[must_use]
    #[inline(always)]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The slot whose byte's high bit is `bit` (a single bit of a `Mine`). The bit is 8i+7; the
/// multiply moves byte (7 - i) of the constant, which is i, to the top (BPF has no
/// count-trailing-zeros instruction).
#[inline(always)]
const fn slot_of(bit: u64) -> usize {
    ((bit >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize & (WAYS - 1)
}

/// `0x01` in every byte.
const LOW_BITS: u64 = 0x0101_0101_0101_0101;
/// `0x80` in every byte.
const HIGH_BITS: u64 = LOW_BITS << 7;

impl Set {
    pub const EMPTY: Self = Self { tags: [0; WAYS], slots: [Slot::EMPTY; WAYS] };

    /// The slots whose tag is `tag` (`SourceKey::tag`): those that may hold that source's
    /// attempts. Each is the high bit of its byte (and, above such a byte, rarely one more:
    /// the classic zero-byte test borrows, which only costs a compare).
    #[must_use]
    #[inline(always)]
    pub fn mine(&self, tag: u8) -> Mine {
        let x = u64::from_le_bytes(self.tags) ^ u64::from(tag).wrapping_mul(LOW_BITS);
        Mine(x.wrapping_sub(LOW_BITS) & !x & HIGH_BITS)
    }

    /// The slot holding `key`'s attempt, and the attempt, if the set has a valid one.
    #[must_use]
    #[inline(always)]
    pub fn find(&self, key: &SlotKey) -> Option<(usize, Attempt)> {
        self.find_in(self.mine(key.tag), key)
    }

    /// `find`, among the slots `mine` (`Set::mine` of the key's tag, read earlier: slots
    /// written since are not looked at, which only the knock that wrote them does).
    #[must_use]
    #[inline(always)]
    pub fn find_in(&self, mine: Mine, key: &SlotKey) -> Option<(usize, Attempt)> {
        let mut candidates = mine.0;
        let mut n = 0;
        while candidates != 0 && n < WAYS {
            let bit = candidates & candidates.wrapping_neg();
            let s = &self.slots[slot_of(bit)];
            if s.names(key) {
                // Each field read once, then validated together against our key: if the slot
                // changed meanwhile, what was read belongs to another key or state, and the
                // check cannot match.
                let attempt = s.attempt();
                if s.check == key.check(&attempt) {
                    return Some((slot_of(bit), attempt));
                }
            }
            candidates ^= bit;
            n += 1;
        }
        None
    }

    /// The door slots (below 32) of the slots `mine`: every door at which the source whose
    /// tag gave `mine` has an attempt in this set that `find_in` would return, and perhaps a
    /// few more (other sources' slots with the same tag, stale slots). A hint: a door that
    /// is missing has no attempt by that source here.
    #[must_use]
    #[inline(always)]
    pub fn doors(&self, mine: Mine) -> u32 {
        let mut candidates = mine.0;
        let mut doors = 0u32;
        let mut n = 0;
        while candidates != 0 && n < WAYS {
            let bit = candidates & candidates.wrapping_neg();
            doors |= 1 << (self.slots[slot_of(bit)].door & 31);
            candidates ^= bit;
            n += 1;
        }
        doors
    }

    /// Stores `attempt` for `key` in slot `i`.
    #[inline(always)]
    pub fn store(&mut self, i: usize, key: &SlotKey, attempt: &Attempt) {
        let i = i & (WAYS - 1);
        self.slots[i].store(key, attempt);
        self.tags[i] = key.tag;
    }

    /// Empties slot `i`.
    #[inline(always)]
    pub fn clear(&mut self, i: usize) {
        let i = i & (WAYS - 1);
        self.slots[i].clear();
        self.tags[i] = 0;
    }

    /// The attempts this set holds whose checks hold under `secret`: (source, door slot,
    /// attempt). For user space (status and metrics); the XDP program uses `find`.
    pub fn live(&self, secret: u64) -> impl Iterator<Item = (AddrKey, u8, Attempt)> + '_ {
        self.slots.iter().filter(|s| s.check != 0).filter_map(move |s| {
            let mut src = AddrKey { addr: [0; 16], family: s.family, _pad0: 0, _pad1: 0 };
            for (bytes, word) in src.addr.chunks_exact_mut(4).zip(s.addr) {
                bytes.copy_from_slice(&word.to_ne_bytes());
            }
            let key = SlotKey::new(secret, &src, s.door);
            let a = s.attempt();
            (key.check(&a) == s.check).then_some((src, s.door, a))
        })
    }

    /// Whether slot `i` holds an attempt (possibly a stale one): storing there evicts it.
    #[must_use]
    #[inline(always)]
    pub const fn occupied(&self, i: usize) -> bool {
        self.slots[i & (WAYS - 1)].check != 0
    }

    /// Where a new attempt goes: an empty slot, else the one whose attempt started first.
    #[must_use]
    #[inline(always)]
    pub fn victim(&self) -> usize {
        let mut best = 0;
        let mut oldest = u64::MAX;
        let mut i = 0;
        while i < WAYS {
            let s = &self.slots[i];
            if s.check == 0 {
                return i;
            }
            if s.started_ns < oldest {
                oldest = s.started_ns;
                best = i;
            }
            i += 1;
        }
        best
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), integers only, no implicit padding (sizes asserted).
    unsafe impl aya::Pod for super::Slot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Set {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const SECRET: u64 = 0x1234_5678_9abc_def0;

    fn key(last: u8, door: u8) -> SlotKey {
        SlotKey::new(SECRET, &AddrKey::v4([198, 18, 0, last]), door)
    }

    #[test]
    fn stores_finds_and_clears() {
        let mut set = Set::EMPTY;
        let k = key(2, 0);
        assert_eq!(set.find(&k), None);
        let a = Attempt::new(2, 1_000, 7);
        let i = set.victim();
        set.store(i, &k, &a);
        assert_eq!(set.find(&k), Some((i, a)));
        assert_eq!(set.find(&key(2, 1)), None, "another door");
        assert_eq!(set.find(&key(3, 0)), None, "another source");
        set.clear(i);
        assert_eq!(set.find(&k), None);
        assert_eq!(set.tags, [0; WAYS]);
    }

    #[test]
    fn live_lists_only_slots_whose_check_holds() {
        let mut set = Set::EMPTY;
        set.store(0, &key(2, 0), &Attempt::new(1, 10, 7));
        set.store(1, &key(3, 4), &Attempt::new(2, 20, 8));
        // A slot written under another secret (or torn) is not listed.
        set.store(2, &SlotKey::new(SECRET ^ 1, &AddrKey::v4([198, 18, 0, 4]), 0), &Attempt::new(1, 30, 7));
        let live: Vec<_> = set.live(SECRET).collect();
        assert_eq!(
            live,
            [
                (AddrKey::v4([198, 18, 0, 2]), 0, Attempt::new(1, 10, 7)),
                (AddrKey::v4([198, 18, 0, 3]), 4, Attempt::new(2, 20, 8))
            ]
        );
    }

    #[test]
    fn finds_in_every_slot_past_same_tags() {
        // Keys whose tags collide: every slot is a candidate, only the right one matches.
        let k = key(2, 0);
        let others: Vec<SlotKey> = (1..=u16::MAX)
            .map(|i| {
                let [hi, lo] = i.to_be_bytes();
                SlotKey::new(SECRET, &AddrKey::v4([198, 19, hi, lo]), 0)
            })
            .filter(|o| o.tag == k.tag)
            .take(WAYS)
            .collect();
        assert_eq!(others.len(), WAYS, "colliding tags among 65,535 sources");
        for at in 0..WAYS {
            let mut set = Set::EMPTY;
            for (i, o) in others.iter().enumerate() {
                set.store(i, o, &Attempt::new(1, 5, 0));
            }
            let a = Attempt::new(3, 9, 1);
            set.store(at, &k, &a);
            assert_eq!(set.find(&k), Some((at, a)), "slot {at}");
            // Tags that are all equal to the key's except one empty slot.
            set.clear(at);
            assert_eq!(set.find(&k), None);
        }
    }

    #[test]
    fn a_stale_tag_hides_an_attempt_but_never_forges_one() {
        let (k, other) = (key(2, 0), key(3, 0));
        let mut set = Set::EMPTY;
        set.store(0, &k, &Attempt::new(2, 1_000, 0));
        // Another CPU's tag write lost the race: the attempt is hidden (a lost step).
        set.tags[0] = other.tag;
        assert_eq!(set.find(&k), None);
        assert_eq!(set.find(&other), None, "a tag alone is no attempt");
    }

    #[test]
    fn a_key_rebuilt_from_its_hash_is_the_same() {
        let src = AddrKey::v4([198, 18, 0, 7]);
        let k = SourceKey::new(SECRET, &src);
        assert_eq!(SourceKey::with_hash(&src, k.hash()), k);
    }

    #[test]
    fn a_sources_doors_are_those_of_its_slots() {
        let src = AddrKey::v4([198, 18, 0, 2]);
        let source = SourceKey::new(SECRET, &src);
        let mut set = Set::EMPTY;
        assert!(set.mine(source.tag()).is_empty());
        assert_eq!(set.doors(set.mine(source.tag())), 0);
        set.store(0, &source.door(3), &Attempt::new(1, 0, 0));
        set.store(5, &source.door(31), &Attempt::new(2, 0, 0));
        assert_eq!(set.doors(set.mine(source.tag())), 1 << 3 | 1 << 31);
        // Other sources' attempts may add doors (a hint), never hide these.
        for last in 3..200 {
            set.store(1, &SourceKey::new(SECRET, &AddrKey::v4([198, 18, 1, last])).door(7), &Attempt::new(1, 0, 0));
            assert_eq!(set.doors(set.mine(source.tag())) & (1 << 3 | 1 << 31), 1 << 3 | 1 << 31);
        }
        // One source's doors share the tag; `find_in` tells them apart.
        let mine = set.mine(source.tag());
        assert_eq!(set.find_in(mine, &source.door(3)).map(|(i, _)| i), Some(0));
        assert_eq!(set.find_in(mine, &source.door(31)).map(|(i, _)| i), Some(5));
        assert_eq!(set.find_in(mine, &source.door(4)), None);
        set.clear(0);
        set.clear(5);
        set.clear(1);
        assert_eq!(set.doors(set.mine(source.tag())), 0);
    }

    #[test]
    fn families_are_apart() {
        let v4 = SlotKey::new(SECRET, &AddrKey::v4([32, 1, 13, 184]), 0);
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[32, 1, 13, 184]);
        let v6 = SlotKey::new(SECRET, &AddrKey::v6(v6), 0);
        let mut set = Set::EMPTY;
        set.store(0, &v4, &Attempt::new(1, 0, 0));
        set.tags[0] = v6.tag;
        assert_eq!(set.find(&v6), None);
    }

    #[test]
    fn a_torn_slot_is_no_attempt() {
        let (victim, attacker) = (key(2, 0), key(66, 0));
        let mut set = Set::EMPTY;
        set.store(0, &victim, &Attempt::new(2, 1_000, 0));
        let mut theirs = Slot::EMPTY;
        theirs.store(&attacker, &Attempt::new(1, 5, 0));
        // Another CPU has written the attacker's address and tag over the victim's slot, not
        // the rest.
        set.slots[0].addr = theirs.addr;
        set.tags[0] = attacker.tag;
        assert_eq!(set.find(&attacker), None);
        set.tags[0] = victim.tag;
        assert_eq!(set.find(&victim), None);
        // The attacker's slot with the victim's progress: the check covers the progress too.
        set.slots[0] = Slot { stage: 2, started_ns: 1_000, ..theirs };
        set.tags[0] = attacker.tag;
        assert_eq!(set.find(&attacker), None);
        // A slot never written is valid for nobody, not even an all-zero key.
        let zero = SlotKey::new(SECRET, &AddrKey::from_words([0; 4], crate::Family::V4), 0);
        let mut fresh = Set::EMPTY;
        fresh.slots[1].family = 4;
        fresh.tags[1] = zero.tag;
        assert_eq!(fresh.find(&zero), None);
    }

    #[test]
    fn the_secret_changes_the_set_and_the_check() {
        let src = AddrKey::v4([198, 18, 0, 2]);
        let (a, b) = (SlotKey::new(1, &src, 0), SlotKey::new(2, &src, 0));
        assert_ne!(a.hash, b.hash);
        let mut set = Set::EMPTY;
        set.store(0, &a, &Attempt::new(1, 0, 0));
        set.tags[0] = b.tag;
        assert_eq!(set.find(&b), None, "a slot written under another secret is not valid");
    }

    #[test]
    fn victims_are_empty_slots_then_the_oldest() {
        let mut set = Set::EMPTY;
        for i in 0..WAYS {
            let t = 100 - u64::try_from(i).unwrap();
            set.store(i, &key(u8::try_from(i).unwrap(), 0), &Attempt::new(1, t, 0));
        }
        assert_eq!(set.victim(), WAYS - 1, "started first");
        set.clear(3);
        assert_eq!(set.victim(), 3);
    }

    #[test]
    fn sets_are_spread_and_sized_in_powers_of_two() {
        assert_eq!(sets_for(0), 1);
        assert_eq!(sets_for(8), 1);
        assert_eq!(sets_for(9), 2);
        assert_eq!(sets_for(65_536), 8_192);
        assert_eq!(sets_for(100_000), 16_384);
        // 4096 sources over 512 sets: no set far above the mean of 8.
        let mut load = [0u32; 512];
        for i in 0..4096u32 {
            let [_, _, hi, lo] = i.to_be_bytes();
            let k = SlotKey::new(SECRET, &AddrKey::v4([198, 18, hi, lo]), 0);
            load[k.set(511) as usize] += 1;
        }
        assert!(load.iter().all(|&n| n < 24), "max {}", load.iter().max().unwrap());
    }

    #[test]
    fn a_source_shares_one_set_but_not_its_slots_across_doors() {
        let (a, b) = (key(2, 0), key(2, 1));
        assert_eq!(a.set(u32::MAX), b.set(u32::MAX));
        assert_eq!(a.tag, b.tag, "a source's doors share its tag");
        let mut set = Set::EMPTY;
        set.store(0, &a, &Attempt::new(1, 0, 0));
        // Door 1's key and tag over door 0's slot: the check covers the door.
        set.slots[0].door = 1;
        set.tags[0] = b.tag;
        assert_eq!(set.find(&b), None);
        assert_eq!(set.find(&a), None);
    }
}
