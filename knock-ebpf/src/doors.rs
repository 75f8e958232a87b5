//! A door's part in a knock: the loops over the doors a knock visits, matching at one door,
//! and carrying out what matching decided (counters, attempt tables, the gate, events).

use aya_ebpf::cty::c_void;
use knock_common::{
    AddrKey, AllowKey, Attempt, Counter, DoorSpec, EventKind, GATE_CLOSE, GATE_OPEN, Knock, KnockEvent, MAX_DOORS,
    MAX_GATE_PORTS, Mine, Outcome, Prf, Set, Settings, SlotKey, SourceKey, UsedKey, WindowKey, ends, secret_step, step,
    visit,
};

use crate::{
    cpu::{Cpu, End},
    maps::{ALLOW, BPF_NOEXIST, DOORS, EVENTS, FIRST_KNOCKS, LOCAL_ADDRS, PROGRESS, SETTINGS, USED, WINDOWS},
};

/// What the matcher needs of a knock packet.
pub(crate) struct Packet {
    pub(crate) src: AddrKey,
    pub(crate) dst: AddrKey,
    pub(crate) knock: Knock,
}

/// A loop's state, in `CpuState::walk`: the packet's part in matching, for the loops of
/// `knockgate_doors` and `knockgate_secret`. Written by `Cpu::hand_over` for the packet at
/// hand. Where BPF programs can be preempted on a CPU (`PREEMPT_RT`), another packet's hand-over
/// could overwrite it meanwhile, and a door be matched with the other packet's fields: as with
/// the per-CPU scratch that `Cpu::opaque` and `Cpu::launder` round-trip through. The gate's
/// check of a packet never reads it: that comes with the packet itself.
pub(crate) struct Walk {
    pkt: Packet,
    now: u64,
    pub(crate) knock_doors: u32,
    /// The secret doors still to visit (`visit::secret_visits`), lowest first.
    pub(crate) left: u32,
    source_hash: u64,
    to_local: u32,
}
const _: () = assert!(size_of::<Walk>() <= 8 * 10 && align_of::<Walk>() <= 8);

impl Cpu {
    /// The hand-over to a loop's body (`Walk`).
    #[inline(always)]
    pub(crate) fn walk(self) -> *mut Walk {
        // SAFETY: a field of this CPU's slot, large and aligned enough (asserted at `Walk`).
        unsafe { (&raw mut (*self.state()).walk).cast() }
    }

    /// Writes what a loop over the doors `left` needs to match `pkt` into this CPU's `Walk`.
    #[inline(always)]
    pub(crate) fn hand_over(
        self,
        pkt: &Packet,
        now: u64,
        knock_doors: u32,
        left: u32,
        source_hash: u64,
        to_local: bool,
    ) {
        // SAFETY: this CPU's slot, as above. Field by field: a whole struct would be built on
        // the stack first.
        unsafe {
            let w = self.walk();
            (*w).pkt.src = pkt.src;
            (*w).pkt.dst = pkt.dst;
            (*w).pkt.knock = pkt.knock;
            (*w).now = now;
            (*w).knock_doors = knock_doors;
            (*w).left = left;
            (*w).source_hash = source_hash;
            (*w).to_local = u32::from(to_local);
        }
    }

    /// `d`, through this CPU's map memory as `opaque` does: what a door's matching decided
    /// reaches the code that carries it out as values the verifier does not know, so that it
    /// checks that code once, not once for every path through the matching.
    #[inline(always)]
    fn launder(self, d: Decision) -> Decision {
        let w0 = u64::from(d.kind)
            | u64::from(d.found) << 8
            | (d.slot as u64 & 0xff) << 16
            | u64::from(d.restarted) << 24
            | u64::from(d.expired) << 25
            | u64::from(d.attempt.stage) << 32
            | u64::from(d.attempt.win) << 40;
        let words =
            [w0, d.attempt.started_ns, u64::from(d.attempt.epoch), d.found_started_ns, d.window, d.attempt.block];
        // SAFETY: this CPU's slot, as above; volatile, so that the compiler keeps the round trip.
        let [w0, started_ns, epoch, found_started_ns, window, block] = unsafe {
            let scratch = &raw mut (*self.state()).scratch;
            core::ptr::write_volatile(scratch, words);
            core::ptr::read_volatile(scratch)
        };
        #[expect(clippy::cast_possible_truncation, reason = "unpacking the fields packed above")]
        Decision {
            kind: w0 as u8,
            found: (w0 >> 8) as u8,
            slot: (w0 >> 16) as usize & 0xff,
            restarted: (w0 >> 24) & 1 != 0,
            expired: (w0 >> 25) & 1 != 0,
            attempt: Attempt {
                started_ns,
                epoch: epoch as u32,
                stage: (w0 >> 32) as u8,
                win: (w0 >> 40) as u8,
                _pad1: 0,
                block,
            },
            found_started_ns,
            window,
        }
    }
}

impl<'a> DoorLoop<'a> {
    /// What every door's matching of `pkt` shares; `None` if the attempt tables are not there.
    #[inline(always)]
    pub(crate) fn new(pkt: &'a Packet, doors: u32, settings: &'a Settings, now: u64, cpu: Cpu) -> Option<Self> {
        // All of a source's attempts share one set of each table: hashed and looked up once.
        let source = SourceKey::new(settings.hash_key, &pkt.src);
        // Checked one at a time: LLVM would otherwise OR the two pointers into one null test,
        // pointer arithmetic the verifier refuses.
        let Some(progress) = PROGRESS.get_ptr_mut(source.set(settings.progress_mask)) else {
            // Masks larger than the tables: a daemon bug. Count it; nothing advances or opens.
            cpu.count(Counter::MapErrors);
            return None;
        };
        let Some(first) = FIRST_KNOCKS.get_ptr_mut(source.set(settings.first_mask)) else {
            cpu.count(Counter::MapErrors);
            return None;
        };
        Some(Self {
            pkt,
            settings,
            to_local: LOCAL_ADDRS.get(0).is_some_and(|l| l.contains(&pkt.dst)),
            now,
            cpu,
            source_hash: source.hash(),
            knock_doors: doors,
            // SAFETY: map value pointers from successful lookups, valid for this program run.
            mine: unsafe { [(*progress).mine(source.tag()), (*first).mine(source.tag())] },
            progress,
            first,
        })
    }

    /// The doors at which the source may have an attempt (`Set::doors` of both its sets).
    #[inline(always)]
    pub(crate) fn attempts(&self) -> u32 {
        // SAFETY: as in `new`.
        let doors = unsafe { (*self.progress).doors(self.mine[0]) | (*self.first).doors(self.mine[1]) };
        opaque_doors(self.cpu, doors)
    }
}

/// `doors` through this CPU's map memory (`Cpu::opaque`): `Set::doors` returns after up to
/// `WAYS` steps, each leaving a value of its own bounds, and without this the verifier would
/// follow every combination of them through all that comes after.
#[inline(always)]
pub(crate) fn opaque_doors(cpu: Cpu, doors: u32) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "reads back the u32 written")]
    let doors = cpu.opaque(doors as usize) as u32;
    doors
}

/// One door of a loop, the lowest left to visit (`Walk::left`); returns 0 to continue. Small:
/// the door's part is a global function, which the verifier checks once, on its own. Kernels
/// from 6.7 on check a loop's body as if it ran any number of times, which, with the door's
/// part inline, took them past a million instructions.
pub(crate) extern "C" fn walk_step<const KIND: u8>(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(cpu) = Cpu::get() else { return 1 };
    // SAFETY: this CPU's `Walk`, written for this packet (see `Walk`).
    let walk = unsafe { &mut *cpu.walk() };
    let left = walk.left;
    if left == 0 {
        return 1;
    }
    walk.left = visit::rest(left);
    let stop = if KIND == SECRET {
        knockgate_secret_door(visit::lowest(left))
    } else {
        knockgate_plain_door(visit::lowest(left))
    };
    // A global function's result is any scalar to the verifier, and a callback returns 0 or 1.
    // LLVM knows the door functions return only those and would drop the test: volatile.
    // SAFETY: a local of this frame.
    i64::from(unsafe { core::ptr::read_volatile(&raw const stop) } != 0)
}

/// A plain door's part in the packet of this CPU's `Walk`; returns 0 to go on. A global
/// function (BTF linkage): scalars in, a scalar out.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn knockgate_plain_door(slot: u32) -> i64 {
    walk_door::<PLAIN>(slot)
}

/// As `knockgate_plain_door`, for a secret door.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn knockgate_secret_door(slot: u32) -> i64 {
    walk_door::<SECRET>(slot)
}

#[inline(always)]
fn walk_door<const KIND: u8>(slot: u32) -> i64 {
    let (Some(cpu), Some(settings)) = (Cpu::get(), SETTINGS.get(0)) else { return 1 };
    // SAFETY: this CPU's `Walk`, written for this packet (see `Walk`).
    let walk = unsafe { &*cpu.walk() };
    let source = SourceKey::with_hash(&walk.pkt.src, walk.source_hash);
    // Checked one at a time, as in `DoorLoop::new`.
    let Some(progress) = PROGRESS.get_ptr_mut(source.set(settings.progress_mask)) else {
        cpu.count(Counter::MapErrors);
        return 1;
    };
    let Some(first) = FIRST_KNOCKS.get_ptr_mut(source.set(settings.first_mask)) else {
        cpu.count(Counter::MapErrors);
        return 1;
    };
    let ctx = DoorLoop {
        pkt: &walk.pkt,
        settings,
        to_local: walk.to_local != 0,
        now: walk.now,
        cpu,
        source_hash: walk.source_hash,
        knock_doors: walk.knock_doors,
        // SAFETY: map value pointers from successful lookups, valid for this program run.
        mine: unsafe { [(*progress).mine(source.tag()), (*first).mine(source.tag())] },
        progress,
        first,
    };
    door::<KIND>(slot & (MAX_DOORS - 1), &ctx)
}

/// The lowest door slot in `doors`, which is not empty (`visit::lowest`), through this CPU's
/// map memory (`Cpu::opaque`): LLVM sees a count of trailing zeros of a non-zero word, knows
/// it is below 32 and drops any mask, while the verifier cannot follow the arithmetic; and
/// whatever slot each path computes, the paths after it are one path to the verifier, which
/// checks the two inline doors once each rather than once per combination of slots.
#[inline(always)]
pub(crate) fn lowest_door(cpu: Cpu, doors: u32) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "a door slot, below 32")]
    let slot = cpu.opaque(visit::lowest(doors) as usize) as u32;
    slot & (MAX_DOORS - 1)
}

/// `door`'s `KIND`s: the doors a body matches.
pub(crate) const PLAIN: u8 = 0;
pub(crate) const SECRET: u8 = 1;

/// What every door's matching of one packet shares.
pub(crate) struct DoorLoop<'a> {
    pkt: &'a Packet,
    settings: &'a Settings,
    pub(crate) to_local: bool,
    now: u64,
    cpu: Cpu,
    /// The source's keyed hash (`SourceKey::hash`): 8 bytes of a frame, not the key's 32.
    pub(crate) source_hash: u64,
    /// The doors whose sequence names the knocked port (`PortDoors::knock`).
    knock_doors: u32,
    /// The slots of `progress` and of `first` that may be this source's (`Set::mine`), read
    /// once for every door the knock visits.
    mine: [Mine; 2],
    /// This source's set in `PROGRESS` and in `FIRST_KNOCKS`.
    progress: *mut Set,
    first: *mut Set,
}

impl DoorLoop<'_> {
    /// This source's key at door slot `index`.
    #[inline(always)]
    fn key(&self, index: u8) -> SlotKey {
        SourceKey::with_hash(&self.pkt.src, self.source_hash).door(index)
    }
}

/// One door's part in a knock, if it is of `KIND`; returns 0 to go on.
#[inline(always)]
pub(crate) fn door<const KIND: u8>(index: u32, ctx: &DoorLoop<'_>) -> i64 {
    let Some(door) = DOORS.get(index) else { return 1 };
    if (door.secret != 0) != (KIND == SECRET) {
        return 0;
    }
    if addressed(door, ctx) {
        #[expect(clippy::cast_possible_truncation, reason = "door slots number MAX_DOORS, fewer than 256")]
        knock_door::<KIND>(door, index as u8, ctx);
    }
    0
}

/// Whether the knock was sent where `door` listens: its `Target`, or an address of this host.
#[inline(always)]
fn addressed(door: &DoorSpec, ctx: &DoorLoop<'_>) -> bool {
    if door.target_family == 0 { ctx.to_local } else { ctx.pkt.dst.same_addr(door.target_family, &door.target) }
}

/// A plain door the knock visits only because the source may have an attempt there: its
/// sequence does not name the port, so all the knock can do is end that attempt
/// (`knock::ends`, which is `step` for such a knock), as `carry_out` ends one.
#[inline(always)]
pub(crate) fn end_attempt(index: u32, ctx: &DoorLoop<'_>) {
    let Some(door) = DOORS.get(index) else { return };
    if door.secret != 0 || !addressed(door, ctx) {
        return;
    }
    #[expect(clippy::cast_possible_truncation, reason = "door slots number MAX_DOORS, fewer than 256")]
    let index = index as u8;
    let key = ctx.key(index);
    // SAFETY: as in `knock_door`.
    let (progress, first) = unsafe { (&mut *ctx.progress, &mut *ctx.first) };
    let (set, i, attempt) = match progress.find_in(ctx.mine[0], &key) {
        Some((i, a)) => (progress, i, a),
        None => match first.find_in(ctx.mine[1], &key) {
            Some((i, a)) => (first, i, a),
            None => return,
        },
    };
    if !ends(door, Some(attempt), ctx.pkt.knock) {
        return;
    }
    set.clear(i);
    let timed_out = attempt.epoch == door.epoch && attempt.expired(door.timeout_ns, ctx.now);
    ctx.cpu.count_end(index, if timed_out { End::TimedOut } else { End::Reset });
}

#[inline(always)]
fn knock_door<const KIND: u8>(door: &DoorSpec, index: u8, ctx: &DoorLoop<'_>) {
    let DoorLoop { pkt, now, cpu, .. } = *ctx;
    let key = ctx.key(index);
    // SAFETY: map value pointers from successful lookups, valid for this program run. Other
    // CPUs may write the same sets: `Set` validates every slot it reads (see its docs).
    let (progress, first) = unsafe { (&mut *ctx.progress, &mut *ctx.first) };
    let found = match progress.find_in(ctx.mine[0], &key) {
        Some((i, a)) => Some((Table::Progress, i, a)),
        None => first.find_in(ctx.mine[1], &key).map(|(i, a)| (Table::First, i, a)),
    };
    // A door whose sequence does not name the port can only lose this source's attempt to the
    // knock: with none, it has nothing to do.
    if found.is_none() && (ctx.knock_doors >> (index & 31)) & 1 == 0 {
        return;
    }
    let current = found.map(|(_, _, a)| a);
    let expired = current.is_some_and(|a| a.epoch == door.epoch && a.expired(door.timeout_ns, now));
    let (outcome, window) = if KIND == PLAIN {
        (step(door, current, pkt.knock, now), 0)
    } else {
        let Some(windows) = WINDOWS.get(u32::from(index)) else { return };
        let s = secret_step(&GlobalPrf, door, windows, current, pkt.knock, &pkt.src, now);
        (s.outcome, s.window)
    };
    let (kind, attempt) = match outcome {
        Outcome::Ignore => (Decision::IGNORE, Attempt::new(0, 0, 0)),
        Outcome::Progress(a) => (Decision::PROGRESS, a),
        Outcome::Open => (Decision::OPEN, Attempt::new(door.len, 0, door.epoch)),
        Outcome::Reset => (Decision::RESET, Attempt::new(0, 0, 0)),
    };
    let d = Decision {
        kind,
        found: match found {
            None => 0,
            Some((Table::First, ..)) => 1,
            Some((Table::Progress, ..)) => 2,
        },
        slot: found.map_or(0, |(_, i, _)| i),
        // A live attempt that did not advance by one was broken, then restarted.
        restarted: current.is_some_and(|c| !expired && c.epoch == door.epoch && attempt.stage != c.stage + 1),
        expired,
        attempt,
        found_started_ns: found.map_or(now, |(_, _, a)| a.started_ns),
        window,
    };
    // The secret door's matching has more paths than the verifier explores twice over; the
    // plain one does not, and is spared the round trip.
    let d = if KIND == SECRET { cpu.launder(d) } else { d };
    carry_out::<KIND>(door, index, ctx, &d);
}

/// What matching decided for one door and one packet (`knock_door`), for `carry_out`.
#[derive(Clone, Copy)]
struct Decision {
    /// `IGNORE`, `PROGRESS`, `OPEN` or `RESET`.
    kind: u8,
    /// Where the source's attempt was: 0 nowhere, 1 `FIRST_KNOCKS`, 2 `PROGRESS`.
    found: u8,
    slot: usize,
    restarted: bool,
    expired: bool,
    /// `PROGRESS`: the attempt to store.
    attempt: Attempt,
    /// When the attempt found started (now if none).
    found_started_ns: u64,
    /// Secret doors: the window of the attempt.
    window: u64,
}

impl Decision {
    const IGNORE: u8 = 0;
    const PROGRESS: u8 = 1;
    const OPEN: u8 = 2;
    const RESET: u8 = 3;

    #[inline(always)]
    fn found(&self) -> Option<(Table, usize)> {
        match self.found {
            1 => Some((Table::First, self.slot)),
            2 => Some((Table::Progress, self.slot)),
            _ => None,
        }
    }
}

/// Carries out a door's `Decision`: counters, the attempt tables, the gate, events.
#[inline(always)]
fn carry_out<const KIND: u8>(door: &DoorSpec, index: u8, ctx: &DoorLoop<'_>, d: &Decision) {
    let DoorLoop { pkt, settings, now, cpu, .. } = *ctx;
    let key = ctx.key(index);
    // SAFETY: as in `knock_door`.
    let (progress, first) = unsafe { (&mut *ctx.progress, &mut *ctx.first) };
    let found = d.found();
    // Counted once, when the knock ends or replaces the expired attempt: one it ignores (its
    // flags do not count) stays, to be counted when a later knock ends it.
    if d.expired && d.kind != Decision::IGNORE {
        cpu.count_end(index, End::TimedOut);
    }
    match d.kind {
        Decision::PROGRESS => {
            let attempt = d.attempt;
            cpu.count(Counter::Steps);
            if d.restarted {
                cpu.count_end(index, End::Reset);
            }
            cpu.count_door(index, |c| c.reached(attempt.stage));
            let target = if attempt.stage <= 1 { Table::First } else { Table::Progress };
            match found {
                // Same table: update the slot in place.
                Some((t, i)) if t == target => pick(t, progress, first).store(i, &key, &attempt),
                _ => {
                    if let Some((t, i)) = found {
                        pick(t, progress, first).clear(i);
                    }
                    let set = pick(target, progress, first);
                    let i = cpu.opaque(set.victim());
                    if set.occupied(i) {
                        cpu.count(if target == Table::First {
                            Counter::FirstKnockEvictions
                        } else {
                            Counter::ProgressEvictions
                        });
                    }
                    set.store(i, &key, &attempt);
                }
            }
            if cpu.stage_budget(settings) {
                emit(pkt, EventKind::Stage, index, &attempt, cpu);
            } else {
                cpu.count(Counter::StagesSuppressed);
            }
        }
        Decision::OPEN => {
            if let Some((t, i)) = found {
                pick(t, progress, first).clear(i);
            }
            if KIND == SECRET && !first_use(pkt, index, door.epoch, d.window, now) {
                // This source has opened with this window's sequence already: a replay.
                cpu.count(Counter::Replays);
                return;
            }
            cpu.count(Counter::Steps);
            cpu.count(Counter::Opens);
            cpu.count_door(index, |c| {
                c.reached(door.len);
                c.opens += 1;
            });
            // The gate opens before user space even hears of the knock, unless the fleet
            // must grant it first.
            if door.gate_by_daemon == 0 {
                gate(door, pkt, now, cpu);
            }
            emit(pkt, EventKind::Open, index, &Attempt::new(door.len, d.found_started_ns, door.epoch), cpu);
        }
        Decision::RESET => {
            if !d.expired {
                cpu.count_end(index, End::Reset);
            }
            if let Some((t, i)) = found {
                pick(t, progress, first).clear(i);
            }
        }
        _ => {}
    }
}

/// The secret doors' PRF, through `knockgate_siphash`.
struct GlobalPrf;

impl Prf for GlobalPrf {
    #[inline(always)]
    fn block(&self, key: &WindowKey, src: &AddrKey, block: u8) -> u64 {
        let [m0, m1, m2] = knock_common::secret::message(src, block);
        knockgate_siphash(key.sip[0], key.sip[1], m0, m1, m2)
    }
}

/// SipHash-2-4 of a 24-byte message. A global function (BTF linkage), which the verifier
/// checks once on its own: inline, its few hundred instructions would be checked again on
/// every path that reaches them. Scalars in, a scalar out, as a global function must.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn knockgate_siphash(k0: u64, k1: u64, m0: u64, m1: u64, m2: u64) -> u64 {
    knock_common::secret::siphash24(k0, k1, m0, m1, m2)
}

/// Spends the single use of (source, secret door, window); false if it was spent. An insert
/// that fails only if the key is there, so two CPUs completing the same sequence at once
/// cannot both open.
#[inline(always)]
fn first_use(pkt: &Packet, door: u8, epoch: u32, window: u64, now: u64) -> bool {
    let key = UsedKey { addr: pkt.src.addr, family: pkt.src.family, door, _pad: 0, epoch, window };
    USED.insert(key, now, BPF_NOEXIST).is_ok()
}

/// Opens (or closes) the door's gated ports for the knocker.
#[inline(always)]
fn gate(door: &DoorSpec, pkt: &Packet, now: u64, cpu: Cpu) {
    for i in 0..MAX_GATE_PORTS {
        let Some(port) = door.gate_at(i) else { break };
        let key = AllowKey { addr: pkt.src.addr, family: pkt.src.family, proto: port.proto, port: port.port };
        let done = match door.gate_action {
            GATE_OPEN => ALLOW.insert(key, now.saturating_add(door.gate_ttl_ns), 0),
            GATE_CLOSE => ALLOW.remove(key).or(Ok(())),
            _ => Ok(()),
        };
        if done.is_err() {
            cpu.count(Counter::MapErrors);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    First,
    Progress,
}

#[inline(always)]
fn pick<'a>(t: Table, progress: &'a mut Set, first: &'a mut Set) -> &'a mut Set {
    match t {
        Table::Progress => progress,
        Table::First => first,
    }
}

#[inline(always)]
fn emit(pkt: &Packet, kind: EventKind, door: u8, attempt: &Attempt, cpu: Cpu) {
    // Written in place in the ring buffer: an event built on the stack would count against
    // the 512-byte stack limit of the knock path.
    let Some(mut entry) = EVENTS.reserve::<KnockEvent>(0) else {
        cpu.count(Counter::EventsLost);
        return;
    };
    entry.write(KnockEvent {
        started_ns: attempt.started_ns,
        epoch: attempt.epoch,
        addr: pkt.src.addr,
        kind: kind as u8,
        family: pkt.src.family,
        door,
        stage: attempt.stage,
    });
    entry.submit(0);
}
