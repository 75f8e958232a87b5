//! Maps and the XDP entry point.

use aya_ebpf::{
    bindings::xdp_action,
    cty::c_void,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_loop},
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::XdpContext,
};
use knock_common::{
    AddrKey, AllowKey, Attempt, Counter, CpuState, DoorCounters, DoorSpec, EventKind, GATE_CLOSE, GATE_OPEN, Knock,
    KnockEvent, LocalAddrs, MAX_DOORS, MAX_GATE_PORTS, Outcome, PORT_SLOTS, PortBits, PortDoors, Set, Settings,
    SourceKey, XDP_DROP, XDP_PASS, gate_passes, is_new_connection, port_bit, port_slot, step,
};

use crate::parse::{self, Parsed, Skip};

const _: () = assert!(XDP_PASS == xdp_action::XDP_PASS && XDP_DROP == xdp_action::XDP_DROP);

/// Configured doors, written by the daemon. Slot i is door i of the config.
#[map]
static DOORS: Array<DoorSpec> = Array::with_max_entries(MAX_DOORS, 0);

/// One slot: slots to walk, gating and stealth flags, attempt-table sizes and hash key,
/// stage-event budget.
#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// (protocol, port) -> the doors whose sequence names it and the doors gating it.
#[map]
static PORTS: Array<PortDoors> = Array::with_max_entries(PORT_SLOTS, 0);

/// A bit per `PORTS` slot that is not all zero: what the common frame reads instead of `PORTS`
/// (see `maps::PORT_BITS`). The only static in `.bss`, which user space writes whole as the
/// one value of an array; `mut`, so that it is not `.rodata`, which is frozen at load.
#[unsafe(no_mangle)]
static mut PORT_BITS: PortBits = [0; knock_common::PORT_BIT_WORDS];

/// This host's addresses on the interface; knocks must be sent to one (or to a door's target).
#[map]
static LOCAL_ADDRS: Array<LocalAddrs> = Array::with_max_entries(1, 0);

/// Per (source, door) progress past stage 1: sets of `WAYS` attempts (see `knock_common::table`).
/// A full set gives up the attempt that started first (nothing fails, nothing opens). The
/// daemon sizes it at load time.
#[map]
static PROGRESS: Array<Set> = Array::with_max_entries(1, 0);

/// Attempts at stage 1. Kept apart so that a flood of spoofed first knocks, which fills
/// this table, cannot push out an attempt that has got further.
#[map]
static FIRST_KNOCKS: Array<Set> = Array::with_max_entries(1, 0);

/// Events for the daemon: completed sequences, and stage progress within a budget.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per-CPU state: clock cache, stage-event budget, counters. Looked up once per packet that
/// gets past the port table.
#[map]
static CPU: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// (source, gated port) -> `ktime` the allowance ends. Only a completed knock inserts here.
/// LRU: when full, the oldest allowance goes (its source must knock again); nothing opens.
#[map]
static ALLOW: LruHashMap<AllowKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Configurations of up to this many doors are matched inline by `knockgate`.
const INLINE_DOORS: u32 = 2;
const _: () = assert!(INLINE_DOORS == 2, "knock_doors matches doors 0 and 1 inline");

/// Slot 0: `knockgate_doors`, which `knockgate` hands knocks to when there are several doors.
#[map]
static DOOR_WALK: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The program attached to the interface. With up to two doors it matches knocks inline;
/// with more it hands knocks to `knockgate_doors` (every door must see every knock: a knock at
/// any door's port resets another door's attempt, as in knockd).
#[xdp]
fn knockgate(ctx: XdpContext) -> u32 {
    run::<false>(&ctx)
}

/// Reached only by tail call from `knockgate`: walks every door in a `bpf_loop`. Its
/// callback costs a call and a return, dear under return-stack mitigations, and a program
/// holding both the loop and the inline path would exceed the 512-byte stack.
#[xdp]
fn knockgate_doors(ctx: XdpContext) -> u32 {
    run::<true>(&ctx)
}

#[inline(always)]
fn run<const ALL_DOORS: bool>(ctx: &XdpContext) -> u32 {
    // The common case, a port that is neither a knock port nor gated, ends in `parse` at
    // the `PORT_BITS` test.
    match parse::parse(ctx, port_listed) {
        Ok(parsed) => {
            let Some(slot) = port_slot(parsed.proto(), parsed.dport()) else { return XDP_PASS };
            match PORTS.get(slot) {
                Some(&doors) if doors.knock | doors.gate != 0 => on_packet::<ALL_DOORS>(ctx, parsed, doors),
                _ => XDP_PASS,
            }
        }
        Err(Skip::Malformed) => {
            // It could be aimed at a gated port: never let it bypass the gate.
            let gating = SETTINGS.get(0).is_none_or(|s| s.gating != 0);
            if let Some(cpu) = Cpu::get() {
                cpu.count(Counter::ParseErrors);
                if gating {
                    cpu.count(Counter::GateDrops);
                }
            }
            if gating { XDP_DROP } else { XDP_PASS }
        }
        Err(Skip::NotKnock) => XDP_PASS,
    }
}

/// Whether `PORTS` may hold something for (protocol, port): its bit in `PORT_BITS` is set.
#[inline(always)]
fn port_listed(proto: u8, port: u16) -> bool {
    let Some(slot) = port_slot(proto, port) else { return false };
    let (word, bit) = port_bit(slot);
    // SAFETY: `port_bit` masks the word index into the array. Volatile: user space writes
    // the array, which the compiler would otherwise take for all zeros.
    unsafe { core::ptr::read_volatile((&raw const PORT_BITS).cast::<u64>().add(word)) & bit != 0 }
}

/// This CPU's `CpuState`.
#[derive(Clone, Copy)]
struct Cpu(*mut CpuState);

impl Cpu {
    #[inline(always)]
    fn get() -> Option<Self> {
        CPU.get_ptr_mut(0).map(Self)
    }

    /// Counts `f` of door slot `slot`.
    #[inline(always)]
    fn count_door(self, slot: u8, f: impl FnOnce(&mut DoorCounters)) {
        // SAFETY: as in `count`.
        f(unsafe { (*self.0).door_mut(slot) });
    }

    #[inline(always)]
    fn count(self, c: Counter) {
        // SAFETY: this CPU's slot; nothing else touches it while the program runs here.
        if let Some(v) = unsafe { (*self.0).counters.get_mut(c as usize) } {
            *v += 1;
        }
    }

    /// `bpf_ktime_get_ns()` read at most once per kernel tick: up to one tick old (4 ms at
    /// HZ=250), which knock and gate timeouts, counted in seconds, do not notice. Reading the
    /// clock costs more than the rest of a knock step; `jiffies` is a plain load. The
    /// stage-event budget is topped up at the same time.
    #[inline(always)]
    fn now_ns(self, settings: &Settings) -> u64 {
        // SAFETY: helpers without arguments; this CPU's slot, as above.
        unsafe {
            let jiffies = bpf_jiffies64();
            if (*self.0).jiffies != jiffies {
                let now = bpf_ktime_get_ns();
                (*self.0).jiffies = jiffies;
                (*self.0).now_ns = now;
                (*self.0).stage_events.refill(now, &settings.stage_events);
            }
            (*self.0).now_ns
        }
    }

    /// Whether a stage event may be sent now.
    #[inline(always)]
    fn stage_budget(self, settings: &Settings) -> bool {
        // SAFETY: this CPU's slot, as above.
        unsafe { (*self.0).stage_events.spend(&settings.stage_events) }
    }
}

/// The verdict for a parsed TCP/UDP packet: knock matching, then stealth and the gate.
#[inline(always)]
fn on_packet<const ALL_DOORS: bool>(
    ctx: &XdpContext,
    parsed: Parsed,
    PortDoors { knock: doors, gate }: PortDoors,
) -> u32 {
    let gated = gate != 0 && is_new_connection(parsed.proto(), parsed.tcp_flags());
    if doors == 0 && !gated {
        return XDP_PASS;
    }
    let (Some(cpu), Some(settings)) = (Cpu::get(), SETTINGS.get(0)) else {
        // Unreachable (slot 0 of arrays), but never let it bypass a gate.
        return if gated { XDP_DROP } else { XDP_PASS };
    };
    let mut walk = true;
    // Every door sees every knock: a knock at any door's port resets another door's attempt
    // (knockd's rule). Up to `INLINE_DOORS` doors are matched inline, more by `knockgate_doors`.
    if !ALL_DOORS && settings.slots > INLINE_DOORS && doors != 0 && !parsed.fragment() {
        // SAFETY: `ctx` is this program's context; on success this does not return.
        unsafe { DOOR_WALK.tail_call(ctx, 0) };
        // Only with an empty program array, never after a successful load: the knock is
        // not matched, but stealth and the gate still apply.
        cpu.count(Counter::MapErrors);
        walk = false;
    }
    let Ok((src, dst)) = parse::addresses(ctx, parsed) else {
        // Already read once during parsing; unreachable, but never let it bypass a gate.
        return if gated { XDP_DROP } else { XDP_PASS };
    };
    let now = cpu.now_ns(settings);
    let mut verdict = XDP_PASS;
    if doors != 0 && !parsed.fragment() {
        if walk {
            cpu.count(Counter::KnockPackets);
            let knock = Knock { proto: parsed.proto(), port: parsed.dport(), tcp_flags: parsed.tcp_flags() };
            knock_doors::<ALL_DOORS>(&Packet { src, dst, knock }, doors, settings, now, cpu);
        }
        if doors & settings.stealth_mask != 0 {
            cpu.count(Counter::StealthDrops);
            verdict = XDP_DROP;
        }
    }
    if gated {
        let key = AllowKey { addr: src.addr, family: src.family, proto: parsed.proto(), port: parsed.dport() };
        // SAFETY: copied out at once.
        let until = unsafe { ALLOW.get(key) }.copied();
        if gate_passes(until, now) {
            cpu.count(Counter::GatePasses);
        } else {
            cpu.count(Counter::GateDrops);
            verdict = XDP_DROP;
        }
    }
    verdict
}

/// What the matcher needs of a knock packet.
struct Packet {
    src: AddrKey,
    dst: AddrKey,
    knock: Knock,
}

/// Matches a knock against every door: the doors whose sequence names the port may advance,
/// the others' attempts by this source are reset.
#[inline(always)]
fn knock_doors<const ALL_DOORS: bool>(pkt: &Packet, doors: u32, settings: &Settings, now: u64, cpu: Cpu) {
    // All of a source's attempts share one set of each table: hashed and looked up once.
    let source = SourceKey::new(settings.hash_key, &pkt.src);
    // Checked one at a time: LLVM would otherwise OR the two pointers into one null test,
    // pointer arithmetic the verifier refuses.
    let Some(progress) = PROGRESS.get_ptr_mut(source.set(settings.progress_mask)) else {
        // Masks larger than the tables: a daemon bug. Count it; nothing advances or opens.
        cpu.count(Counter::MapErrors);
        return;
    };
    let Some(first) = FIRST_KNOCKS.get_ptr_mut(source.set(settings.first_mask)) else {
        cpu.count(Counter::MapErrors);
        return;
    };
    let mut ctx = DoorLoop {
        pkt,
        settings,
        to_local: LOCAL_ADDRS.get(0).is_some_and(|l| l.contains(&pkt.dst)),
        now,
        cpu,
        source,
        knock_doors: doors,
        progress,
        first,
    };
    if !ALL_DOORS {
        // At most `INLINE_DOORS` doors (more went to `knockgate_doors`).
        door(0, &ctx);
        if settings.slots > 1 {
            door(1, &ctx);
        }
        return;
    }
    // bpf_loop (kernel 5.17+) has the verifier check the body once instead of once per door.
    // SAFETY: `door_step` matches the callback ABI and `ctx` outlives the call.
    unsafe {
        bpf_loop(settings.slots.min(MAX_DOORS), door_step as *mut c_void, core::ptr::from_mut(&mut ctx).cast(), 0);
    }
}

/// State shared with the `bpf_loop` body.
struct DoorLoop<'a> {
    pkt: &'a Packet,
    settings: &'a Settings,
    to_local: bool,
    now: u64,
    cpu: Cpu,
    source: SourceKey,
    /// The doors whose sequence names the knocked port (`PortDoors::knock`).
    knock_doors: u32,
    /// This source's set in `PROGRESS` and in `FIRST_KNOCKS`.
    progress: *mut Set,
    first: *mut Set,
}

/// One door of the loop; returns 0 to continue.
extern "C" fn door_step(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `knock_doors` gave it.
    door(index, unsafe { &*(ctx as *const DoorLoop<'_>) })
}

/// One door's part in a knock; returns 0 to go on.
#[inline(always)]
fn door(index: u32, ctx: &DoorLoop<'_>) -> i64 {
    let Some(door) = DOORS.get(index) else { return 1 };
    let addressed =
        if door.target_family == 0 { ctx.to_local } else { ctx.pkt.dst.same_addr(door.target_family, &door.target) };
    if addressed {
        #[expect(clippy::cast_possible_truncation, reason = "door slots number MAX_DOORS, fewer than 256")]
        knock_door(door, index as u8, ctx);
    }
    0
}

#[inline(always)]
fn knock_door(door: &DoorSpec, index: u8, ctx: &DoorLoop<'_>) {
    let DoorLoop { pkt, settings, now, cpu, .. } = *ctx;
    let key = ctx.source.door(index);
    // SAFETY: map value pointers from successful lookups, valid for this program run. Other
    // CPUs may write the same sets: `Set` validates every slot it reads (see its docs).
    let (progress, first) = unsafe { (&mut *ctx.progress, &mut *ctx.first) };
    let found = match progress.find(&key) {
        Some((i, a)) => Some((Table::Progress, i, a)),
        None => first.find(&key).map(|(i, a)| (Table::First, i, a)),
    };
    // A door whose sequence does not name the port can only lose this source's attempt to the
    // knock: with none, it has nothing to do.
    if found.is_none() && (ctx.knock_doors >> (index & 31)) & 1 == 0 {
        return;
    }
    let current = found.map(|(_, _, a)| a);
    let expired = current.is_some_and(|a| a.epoch == door.epoch && a.expired(door.timeout_ns, now));
    if expired {
        cpu.count(Counter::Timeouts);
        cpu.count_door(index, |d| d.timeouts += 1);
    }
    match step(door, current, pkt.knock, now) {
        Outcome::Ignore => {}
        Outcome::Progress(attempt) => {
            cpu.count(Counter::Steps);
            // A live attempt that did not advance by one was broken, then restarted.
            if current.is_some_and(|c| !expired && c.epoch == door.epoch && attempt.stage != c.stage + 1) {
                cpu.count(Counter::Resets);
                cpu.count_door(index, |d| d.resets += 1);
            }
            cpu.count_door(index, |d| d.reached(attempt.stage));
            let target = if attempt.stage <= 1 { Table::First } else { Table::Progress };
            match found {
                // Same table: update the slot in place.
                Some((t, i, _)) if t == target => pick(t, progress, first).store(i, &key, &attempt),
                _ => {
                    if let Some((t, i, _)) = found {
                        pick(t, progress, first).clear(i);
                    }
                    let set = pick(target, progress, first);
                    let i = set.victim();
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
        Outcome::Open => {
            cpu.count(Counter::Steps);
            cpu.count(Counter::Opens);
            cpu.count_door(index, |d| {
                d.reached(door.len);
                d.opens += 1;
            });
            let started_ns = match found {
                Some((t, i, a)) => {
                    pick(t, progress, first).clear(i);
                    a.started_ns
                }
                None => now,
            };
            // The gate opens before user space even hears of the knock.
            gate(door, pkt, now, cpu);
            emit(pkt, EventKind::Open, index, &Attempt::new(door.len, started_ns, door.epoch), cpu);
        }
        Outcome::Reset => {
            if !expired {
                cpu.count(Counter::Resets);
                cpu.count_door(index, |d| d.resets += 1);
            }
            if let Some((t, i, _)) = found {
                pick(t, progress, first).clear(i);
            }
        }
    }
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
