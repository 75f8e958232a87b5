//! Maps and the XDP entry point.

use aya_ebpf::{
    bindings::xdp_action,
    cty::c_void,
    helpers::{bpf_ktime_get_ns, bpf_loop},
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use knock_common::{
    AllowKey, Attempt, Bucket, Counter, DoorSpec, EventKind, GATE_CLOSE, GATE_OPEN, Knock, KnockEvent, MAX_DOORS,
    MAX_GATE_PORTS, Outcome, PORT_SLOTS, ProgressKey, Settings, XDP_DROP, XDP_PASS, gate_passes, is_new_connection,
    port_slot, step,
};

use crate::parse::{self, Packet, Parsed, Skip};

const _: () = assert!(XDP_PASS == xdp_action::XDP_PASS && XDP_DROP == xdp_action::XDP_DROP);

/// Configured doors, written by the daemon. Slot i is door i of the config.
#[map]
static DOORS: Array<DoorSpec> = Array::with_max_entries(MAX_DOORS, 0);

/// One slot: slots to walk, stage-event budget, gating and stealth flags.
#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// (protocol, port) -> mask of doors whose sequence names it; 0 = not a knock port.
#[map]
static PORT_DOORS: Array<u32> = Array::with_max_entries(PORT_SLOTS, 0);

/// This host's addresses on the interface; knocks must be sent to one (or to a door's target).
#[map]
static LOCAL_ADDRS: HashMap<knock_common::AddrKey, u8> = HashMap::with_max_entries(256, 0);

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

/// (protocol, port) -> mask of doors gating it; 0 = not gated.
#[map]
static GATE_PORTS: Array<u32> = Array::with_max_entries(PORT_SLOTS, 0);

/// (source, gated port) -> `ktime` the allowance ends. Only a completed knock inserts here.
/// LRU: when full, the oldest allowance goes (its source must knock again); nothing opens.
#[map]
static ALLOW: LruHashMap<AllowKey, u64> = LruHashMap::with_max_entries(65536, 0);

#[xdp]
fn knockgate(ctx: XdpContext) -> u32 {
    count(Counter::Packets);
    let settings = SETTINGS.get(0);
    match parse::parse(&ctx) {
        Ok(parsed) => on_packet(&ctx, &parsed, settings),
        Err(Skip::Malformed) => {
            count(Counter::ParseErrors);
            // It could be aimed at a gated port: never let it bypass the gate.
            if settings.is_some_and(|s| s.gating != 0) {
                count(Counter::GateDrops);
                XDP_DROP
            } else {
                XDP_PASS
            }
        }
        Err(Skip::NotKnock) => XDP_PASS,
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
fn on_packet(ctx: &XdpContext, parsed: &Parsed, settings: Option<&Settings>) -> u32 {
    let Some(slot) = port_slot(parsed.proto, parsed.dport) else { return XDP_PASS };
    let doors = PORT_DOORS.get(slot).copied().unwrap_or(0);
    let gated = GATE_PORTS.get(slot).is_some_and(|&g| g != 0) && is_new_connection(parsed.proto, parsed.tcp_flags);
    // The common case: a port that is neither a knock port nor gated costs two array reads.
    if doors == 0 && !gated {
        return XDP_PASS;
    }
    let Ok(pkt) = parse::addresses(ctx, parsed) else {
        // Already read once during parsing; unreachable, but never let it bypass a gate.
        return if gated { XDP_DROP } else { XDP_PASS };
    };
    let pkt = &pkt;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut verdict = XDP_PASS;
    if let Some(settings) = settings
        && doors != 0
        && !pkt.fragment
    {
        knock(pkt, settings, now);
        if doors & settings.stealth_mask != 0 {
            count(Counter::StealthDrops);
            verdict = XDP_DROP;
        }
    }
    if gated {
        let key = AllowKey { addr: pkt.src.addr, family: pkt.src.family, proto: pkt.proto, port: pkt.dport };
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

/// Matches a knock against every door.
#[inline(always)]
fn knock(pkt: &Packet, settings: &Settings, now: u64) {
    let mut ctx = DoorLoop {
        pkt,
        settings,
        // SAFETY: the value is only tested for presence.
        to_local: unsafe { LOCAL_ADDRS.get(&pkt.dst) }.is_some(),
        knock: Knock { proto: pkt.proto, port: pkt.dport, tcp_flags: pkt.tcp_flags },
        now,
    };
    // bpf_loop (kernel 5.17+) has the verifier check the body once instead of once per door.
    // SAFETY: `door_step` matches the callback ABI and `ctx` outlives the call.
    unsafe {
        bpf_loop(
            settings.slots.min(MAX_DOORS),
            door_step as *mut c_void,
            core::ptr::from_mut(&mut ctx).cast(),
            0,
        );
    }
}

/// State shared with the `bpf_loop` body.
struct DoorLoop<'a> {
    pkt: &'a Packet,
    settings: &'a Settings,
    to_local: bool,
    knock: Knock,
    now: u64,
}

/// One door of the loop; returns 0 to continue.
extern "C" fn door_step(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `on_packet` gave it.
    let ctx = unsafe { &*(ctx as *const DoorLoop<'_>) };
    let Some(door) = DOORS.get(index) else { return 1 };
    let addressed = if door.target_family == 0 {
        ctx.to_local
    } else {
        ctx.pkt.dst.same_addr(door.target_family, &door.target)
    };
    if addressed {
        knock_door(door, index as u8, ctx.settings, ctx.pkt, ctx.knock, ctx.now);
    }
    0
}

#[inline(always)]
fn knock_door(door: &DoorSpec, index: u8, settings: &Settings, pkt: &Packet, knock: Knock, now: u64) {
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
    match step(door, current, knock, now) {
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
