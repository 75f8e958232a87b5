//! Maps and the XDP entry point.

use aya_ebpf::{
    bindings::xdp_action,
    cty::c_void,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_loop},
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use knock_common::{
    AddrKey, AllowKey, Attempt, Bucket, Counter, DoorSpec, EventKind, GATE_CLOSE, GATE_OPEN, Knock, KnockEvent,
    LocalAddrs, MAX_DOORS, MAX_GATE_PORTS, Outcome, PORT_SLOTS, PortDoors, ProgressKey, Settings, XDP_DROP, XDP_PASS,
    gate_passes, is_new_connection, port_slot, step,
};

use crate::parse::{self, Parsed, Skip};

const _: () = assert!(XDP_PASS == xdp_action::XDP_PASS && XDP_DROP == xdp_action::XDP_DROP);

/// Configured doors, written by the daemon. Slot i is door i of the config.
#[map]
static DOORS: Array<DoorSpec> = Array::with_max_entries(MAX_DOORS, 0);

/// One slot: slots to walk, stage-event budget, gating and stealth flags.
#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// (protocol, port) -> the doors whose sequence names it and the doors gating it.
#[map]
static PORTS: Array<PortDoors> = Array::with_max_entries(PORT_SLOTS, 0);

/// This host's addresses on the interface; knocks must be sent to one (or to a door's target).
#[map]
static LOCAL_ADDRS: Array<LocalAddrs> = Array::with_max_entries(1, 0);

/// Per (source, door) progress past stage 1. LRU: when full, the least recently used attempt
/// is evicted (nothing fails, nothing opens). The daemon may resize it at load time.
#[map]
static PROGRESS: LruHashMap<ProgressKey, Attempt> = LruHashMap::with_max_entries(65536, 0);

/// Attempts at stage 1. Kept apart so that a flood of spoofed first knocks, which fills
/// this table, cannot evict an attempt that has got further.
#[map]
static FIRST_KNOCKS: LruHashMap<ProgressKey, Attempt> = LruHashMap::with_max_entries(65536, 0);

/// Events for the daemon: completed sequences, and stage progress within a budget.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per-CPU counters indexed by `Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Per-CPU token bucket for stage events, so a flood of first knocks cannot flood user space.
#[map]
static STAGE_BUDGET: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU clock cache: `[jiffies, ktime]` of the last `ktime` read on this CPU.
#[map]
static CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// (source, gated port) -> `ktime` the allowance ends. Only a completed knock inserts here.
/// LRU: when full, the oldest allowance goes (its source must knock again); nothing opens.
#[map]
static ALLOW: LruHashMap<AllowKey, u64> = LruHashMap::with_max_entries(65536, 0);

#[xdp]
fn knockgate(ctx: XdpContext) -> u32 {
    match parse::parse(&ctx) {
        Ok(parsed) => {
            // The common case, a port that is neither a knock port nor gated, ends at this one
            // array read. Nothing of the parse is kept across it (that would spill registers
            // to the stack on every frame): the rare packets that go on are parsed again.
            let Some(slot) = port_slot(parsed.proto, parsed.dport) else { return XDP_PASS };
            match PORTS.get(slot) {
                Some(&PortDoors { knock: 0, gate: 0 }) | None => XDP_PASS,
                Some(&doors) => match parse::parse(&ctx) {
                    Ok(parsed) => on_packet(&ctx, &parsed, doors),
                    // Unreachable (parsed once already), but never let it bypass a gate.
                    Err(_) => XDP_DROP,
                },
            }
        }
        Err(Skip::Malformed) => {
            count(Counter::ParseErrors);
            // It could be aimed at a gated port: never let it bypass the gate.
            if SETTINGS.get(0).is_none_or(|s| s.gating != 0) {
                count(Counter::GateDrops);
                XDP_DROP
            } else {
                XDP_PASS
            }
        }
        Err(Skip::NotKnock) => XDP_PASS,
    }
}

/// `bpf_ktime_get_ns()` read at most once per kernel tick and CPU: up to one tick old (4 ms
/// at HZ=250), which knock and gate timeouts, counted in seconds, do not notice. Reading
/// the clock costs more than the rest of a knock step; `jiffies` is a plain load.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helpers without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    match CLOCK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        Some(c) => unsafe {
            if (*c)[0] != jiffies {
                *c = [jiffies, bpf_ktime_get_ns()];
            }
            (*c)[1]
        },
        // SAFETY: as above.
        None => unsafe { bpf_ktime_get_ns() },
    }
}

#[inline(always)]
fn count(c: Counter) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *v += 1 };
    }
}

/// The verdict for a parsed TCP/UDP packet: knock matching, then stealth and the gate.
#[inline(always)]
fn on_packet(ctx: &XdpContext, parsed: &Parsed, PortDoors { knock: doors, gate }: PortDoors) -> u32 {
    let gated = gate != 0 && is_new_connection(parsed.proto, parsed.tcp_flags);
    if doors == 0 && !gated {
        return XDP_PASS;
    }
    let Ok((src, dst)) = parse::addresses(ctx, parsed) else {
        // Already read once during parsing; unreachable, but never let it bypass a gate.
        return if gated { XDP_DROP } else { XDP_PASS };
    };
    let now = now_ns();
    let mut verdict = XDP_PASS;
    if doors != 0
        && !parsed.fragment
        && let Some(settings) = SETTINGS.get(0)
    {
        count(Counter::KnockPackets);
        let knock = Knock { proto: parsed.proto, port: parsed.dport, tcp_flags: parsed.tcp_flags };
        knock_doors(&Packet { src, dst, knock }, doors, settings, now);
        if doors & settings.stealth_mask != 0 {
            count(Counter::StealthDrops);
            verdict = XDP_DROP;
        }
    }
    if gated {
        let key = AllowKey { addr: src.addr, family: src.family, proto: parsed.proto, port: parsed.dport };
        // SAFETY: copied out at once.
        let until = unsafe { ALLOW.get(&key) }.copied();
        if gate_passes(until, now) {
            count(Counter::GatePasses);
        } else {
            count(Counter::GateDrops);
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

/// Matches a knock against the doors whose sequence names its port (`doors`, a slot mask).
#[inline(always)]
fn knock_doors(pkt: &Packet, doors: u32, settings: &Settings, now: u64) {
    let mut ctx = DoorLoop {
        pkt,
        settings,
        doors,
        to_local: LOCAL_ADDRS.get(0).is_some_and(|l| l.contains(&pkt.dst)),
        now,
    };
    // Only up to the highest door that names the port.
    let slots = (u32::BITS - doors.leading_zeros()).min(settings.slots).min(MAX_DOORS);
    // bpf_loop (kernel 5.17+) has the verifier check the body once instead of once per door.
    // SAFETY: `door_step` matches the callback ABI and `ctx` outlives the call.
    unsafe {
        bpf_loop(slots, door_step as *mut c_void, core::ptr::from_mut(&mut ctx).cast(), 0);
    }
}

/// State shared with the `bpf_loop` body.
struct DoorLoop<'a> {
    pkt: &'a Packet,
    settings: &'a Settings,
    doors: u32,
    to_local: bool,
    now: u64,
}

/// One door of the loop; returns 0 to continue.
extern "C" fn door_step(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `knock_doors` gave it.
    let ctx = unsafe { &*(ctx as *const DoorLoop<'_>) };
    if ctx.doors & (1 << (index & (MAX_DOORS - 1))) == 0 {
        return 0;
    }
    let Some(door) = DOORS.get(index) else { return 1 };
    let addressed = if door.target_family == 0 {
        ctx.to_local
    } else {
        ctx.pkt.dst.same_addr(door.target_family, &door.target)
    };
    if addressed {
        knock_door(door, index as u8, ctx.settings, ctx.pkt, ctx.now);
    }
    0
}

#[inline(always)]
fn knock_door(door: &DoorSpec, index: u8, settings: &Settings, pkt: &Packet, now: u64) {
    let key = ProgressKey::new(&pkt.src, index);
    let (slot, table) = match PROGRESS.get_ptr_mut(&key) {
        Some(p) => (Some(p), Table::Progress),
        None => (FIRST_KNOCKS.get_ptr_mut(&key), Table::First),
    };
    // SAFETY: a map value pointer from a successful lookup, valid for this program run.
    let current = slot.map(|p| unsafe { *p });
    let expired = current.is_some_and(|a| a.epoch == door.epoch && a.expired(door.timeout_ns, now));
    if expired {
        count(Counter::Timeouts);
    }
    match step(door, current, pkt.knock, now) {
        Outcome::Ignore => {}
        Outcome::Progress(attempt) => {
            count(Counter::Steps);
            // A live attempt that did not advance by one was broken, then restarted.
            if current.is_some_and(|c| !expired && c.epoch == door.epoch && attempt.stage != c.stage + 1) {
                count(Counter::Resets);
            }
            let target = if attempt.stage <= 1 { Table::First } else { Table::Progress };
            match slot {
                // Same table: update the value in place, far cheaper than an LRU re-insert.
                // Two CPUs racing on one source's attempt can only lose a step.
                // SAFETY: as above.
                Some(p) if table == target => unsafe { *p = attempt },
                _ => {
                    if current.is_some() {
                        forget(table, &key);
                    }
                    // A failed update only loses progress; it can never open anything.
                    let stored = match target {
                        Table::First => FIRST_KNOCKS.insert(&key, &attempt, 0),
                        Table::Progress => PROGRESS.insert(&key, &attempt, 0),
                    };
                    if stored.is_err() {
                        count(Counter::MapErrors);
                    }
                }
            }
            if stage_budget(settings, now) {
                emit(pkt, EventKind::Stage, index, &attempt);
            } else {
                count(Counter::StagesSuppressed);
            }
        }
        Outcome::Open => {
            count(Counter::Steps);
            count(Counter::Opens);
            let started_ns = match current {
                Some(a) => {
                    forget(table, &key);
                    a.started_ns
                }
                None => now,
            };
            // The gate opens before user space even hears of the knock.
            gate(door, pkt, now);
            emit(pkt, EventKind::Open, index, &Attempt::new(door.len, started_ns, door.epoch));
        }
        Outcome::Reset => {
            if !expired {
                count(Counter::Resets);
            }
            forget(table, &key);
        }
    }
}

/// Opens (or closes) the door's gated ports for the knocker.
#[inline(always)]
fn gate(door: &DoorSpec, pkt: &Packet, now: u64) {
    for i in 0..MAX_GATE_PORTS {
        let Some(port) = door.gate_at(i) else { break };
        let key = AllowKey { addr: pkt.src.addr, family: pkt.src.family, proto: port.proto, port: port.port };
        let done = match door.gate_action {
            GATE_OPEN => ALLOW.insert(&key, &now.saturating_add(door.gate_ttl_ns), 0),
            GATE_CLOSE => ALLOW.remove(&key).or(Ok(())),
            _ => Ok(()),
        };
        if done.is_err() {
            count(Counter::MapErrors);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    First,
    Progress,
}

/// Removes an attempt; a failure (evicted meanwhile) is only counted.
#[inline(always)]
fn forget(table: Table, key: &ProgressKey) {
    let removed = match table {
        Table::First => FIRST_KNOCKS.remove(key),
        Table::Progress => PROGRESS.remove(key),
    };
    if removed.is_err() {
        count(Counter::MapErrors);
    }
}

#[inline(always)]
fn stage_budget(settings: &Settings, now: u64) -> bool {
    match STAGE_BUDGET.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        Some(b) => unsafe { (*b).take(now, settings.stage_rate, settings.stage_burst) },
        None => false,
    }
}

#[inline(always)]
fn emit(pkt: &Packet, kind: EventKind, door: u8, attempt: &Attempt) {
    let event = KnockEvent {
        started_ns: attempt.started_ns,
        epoch: attempt.epoch,
        addr: pkt.src.addr,
        kind: kind as u8,
        family: pkt.src.family,
        door,
        stage: attempt.stage,
    };
    if EVENTS.output::<KnockEvent>(&event, 0).is_err() {
        count(Counter::EventsLost);
    }
}
