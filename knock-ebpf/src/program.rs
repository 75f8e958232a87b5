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
    AddrKey, AllowKey, Attempt, Counter, CpuState, DoorCounters, DoorSpec, DoorWindows, EventKind, GATE_CLOSE,
    GATE_OPEN, Knock, KnockEvent, LocalAddrs, MAX_DOORS, MAX_GATE_PORTS, Mine, Outcome, PORT_SLOTS, PortBits,
    PortDoors, Prf, SECRET_WORD, Set, Settings, SlotKey, SourceKey, UsedKey, WindowKey, XDP_DROP, XDP_PASS, ends,
    gate_passes, is_new_connection, port_bit, port_slot, secret_step, step, visit,
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
static mut PORT_BITS: PortBits = [0; knock_common::PORT_BIT_WORDS + 1];

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

/// Per door slot, the window keys of a secret door (written by the daemon as windows pass).
#[map]
static WINDOWS: Array<DoorWindows> = Array::with_max_entries(MAX_DOORS, 0);

/// (source, secret door, window) that has opened, with the `ktime` it did: single use.
/// Only a completed sequence inserts here, so nobody without the key can push entries out.
#[map]
static USED: LruHashMap<UsedKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// `BPF_NOEXIST`: the update fails if the key is there.
const BPF_NOEXIST: u64 = 1;

/// Slot `WALK_PLAIN`: `knockgate_doors`, which `knockgate` hands a knock to when it visits
/// more than one plain door (`visit`); slot `WALK_SECRET`: `knockgate_secret`, for new
/// packets a secret door may care about.
#[map]
static DOOR_WALK: ProgramArray = ProgramArray::with_max_entries(2, 0);
const WALK_PLAIN: u32 = 0;
const WALK_SECRET: u32 = 1;

/// The program attached to the interface. A knock visits the doors naming its port and the
/// doors at which its source has an attempt (`knock_common::visit`): one is matched inline,
/// more by `knockgate_doors`.
#[xdp]
// Inline into the entry aya's macro wraps it in: a BPF call costs every frame a call and a
// return (dear under return-stack mitigations), and LLVM stops inlining a body this large.
#[inline(always)]
fn knockgate(ctx: XdpContext) -> u32 {
    run::<false>(&ctx)
}

/// Reached only by tail call from `knockgate`: walks the doors a knock visits in a
/// `bpf_loop`. Its callback costs a call and a return, dear under return-stack mitigations,
/// and a program holding both the loop and the inline path would exceed the 512-byte stack.
#[xdp]
// Inline into the entry aya's macro wraps it in: a BPF call costs every frame a call and a
// return (dear under return-stack mitigations), and LLVM stops inlining a body this large.
#[inline(always)]
fn knockgate_doors(ctx: XdpContext) -> u32 {
    run::<true>(&ctx)
}

/// Reached only by tail call from `knockgate`, while secret doors exist: matches the secret
/// doors, then hands the packet to `knockgate_doors` for the plain doors, stealth and the gate.
/// A program of its own: with the plain doors' loop and the verdict in the same program, the
/// stack of the two would exceed 512 bytes.
#[xdp]
// Inline into the entry aya's macro wraps it in: a BPF call costs every frame a call and a
// return (dear under return-stack mitigations), and LLVM stops inlining a body this large.
#[inline(always)]
fn knockgate_secret(ctx: XdpContext) -> u32 {
    secret_walk(&ctx)
}

#[inline(always)]
fn secret_walk(ctx: &XdpContext) -> u32 {
    // What `knockgate` parsed is in this CPU's `Walk`: this program's frame stays small.
    // Whether the packet is a new connection to a gated port comes with the packet itself
    // (`mark_gated`), never from per-CPU memory, which another packet could have written
    // meanwhile where BPF programs can be preempted (PREEMPT_RT).
    let gated = take_gated_mark(ctx);
    let (Some(cpu), Some(settings)) = (Cpu::get(), SETTINGS.get(0)) else { return XDP_DROP };
    // SAFETY: the loop reads the hand-over, which `knockgate` wrote on this CPU for this
    // packet; should another packet's overwrite it, only the matching of that packet runs
    // twice (its own fields), and what reaches the gate is decided above and below.
    // SAFETY: the callback matches the callback ABI; it takes no context.
    unsafe {
        let visits = (*cpu.walk()).left;
        bpf_loop(visit::count(visits), walk_step::<SECRET> as *mut c_void, core::ptr::null_mut(), 0);
    }
    // SAFETY: as above.
    let doors = unsafe { (*cpu.walk()).knock_doors };
    // Plain doors, stealth and the gate are `knockgate_doors`' (secret doors are never stealth).
    if doors & !settings.secret_mask == 0 && !gated {
        return XDP_PASS;
    }
    // SAFETY: `ctx` is this program's context; on success this does not return.
    unsafe { DOOR_WALK.tail_call(ctx, WALK_PLAIN) };
    // Only with an empty program array: plain doors are not matched, and the gate drops.
    cpu.count(Counter::MapErrors);
    if gated { XDP_DROP } else { XDP_PASS }
}

#[inline(always)]
fn run<const ALL_DOORS: bool>(ctx: &XdpContext) -> u32 {
    // The common case, a port that is neither a knock port nor gated, ends in `parse` at
    // the `PORT_BITS` test.
    match parse::parse(ctx, port_listed) {
        Ok(parsed) => {
            let Some(slot) = port_slot(parsed.proto(), parsed.dport()) else { return XDP_PASS };
            let doors = PORTS.get(slot).copied().unwrap_or_default();
            let Some(settings) = SETTINGS.get(0) else {
                // Unreachable (slot 0 of an array), but never let it bypass a gate.
                return if doors.gate != 0 { XDP_DROP } else { XDP_PASS };
            };
            // Two versions: with no secret door (`knockgate_doors` never handles one), the
            // path is compiled without the secret doors' work and its registers.
            if !ALL_DOORS && settings.secret_mask != 0 {
                // A secret door's later step (any port) reaches here with nothing in `PORTS`.
                on_packet::<ALL_DOORS, true>(ctx, parsed, doors, settings)
            } else if doors.knock | doors.gate != 0 {
                on_packet::<ALL_DOORS, false>(ctx, parsed, doors, settings)
            } else {
                XDP_PASS
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

/// Whether the packet goes past the bitmap: `PORTS` may hold something for (protocol, port)
/// (its bit in `PORT_BITS` is set), or secret doors exist and it is a TCP SYN or a UDP
/// datagram (a secret door's later ports are any ports).
#[inline(always)]
fn port_listed(proto: u8, port: u16, tcp_flags: u8) -> bool {
    let Some(slot) = port_slot(proto, port) else { return false };
    let (word, bit) = port_bit(slot);
    let bits = (&raw const PORT_BITS).cast::<u64>();
    // SAFETY: `port_bit` masks the word index into the array, and `SECRET_WORD` is its last
    // word. Volatile: user space writes the array, which the compiler would otherwise take
    // for all zeros.
    unsafe {
        core::ptr::read_volatile(bits.add(word)) & bit != 0
            || (core::ptr::read_volatile(bits.add(SECRET_WORD)) != 0 && is_new_connection(proto, tcp_flags))
    }
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

    /// `v`, as a value the verifier no longer knows: it goes through this CPU's map memory,
    /// whose contents the verifier does not track. Where a function returns one of several
    /// constants (a slot index), the paths that follow are then one path to the verifier,
    /// not one per constant.
    #[inline(always)]
    #[expect(clippy::cast_possible_truncation, reason = "it reads back the usize written")]
    fn opaque(self, v: usize) -> usize {
        // SAFETY: this CPU's slot, as above; volatile, so that the compiler does not see
        // through the round trip either.
        unsafe {
            core::ptr::write_volatile(&raw mut (*self.0).scratch[0], v as u64);
            core::ptr::read_volatile(&raw const (*self.0).scratch[0]) as usize
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
            let scratch = &raw mut (*self.0).scratch;
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

    /// The hand-over to a loop's body (`Walk`).
    #[inline(always)]
    fn walk(self) -> *mut Walk {
        // SAFETY: a field of this CPU's slot, large and aligned enough (asserted at `Walk`).
        unsafe { (&raw mut (*self.0).walk).cast() }
    }

    /// Writes what a loop over the doors `left` needs to match `pkt` into this CPU's `Walk`.
    #[inline(always)]
    fn hand_over(self, pkt: &Packet, now: u64, knock_doors: u32, left: u32, source_hash: u64, to_local: bool) {
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

    /// Whether a stage event may be sent now.
    #[inline(always)]
    fn stage_budget(self, settings: &Settings) -> bool {
        // SAFETY: this CPU's slot, as above.
        unsafe { (*self.0).stage_events.spend(&settings.stage_events) }
    }
}

/// The verdict for a parsed TCP/UDP packet: knock matching, then stealth and the gate.
#[inline(always)]
fn on_packet<const ALL_DOORS: bool, const SECRETS: bool>(
    ctx: &XdpContext,
    parsed: Parsed,
    PortDoors { knock: doors, gate }: PortDoors,
    settings: &Settings,
) -> u32 {
    let new = is_new_connection(parsed.proto(), parsed.tcp_flags());
    let gated = gate != 0 && new;
    let Some(cpu) = Cpu::get() else {
        // Unreachable (slot 0 of an array), but never let it bypass a gate.
        return if gated { XDP_DROP } else { XDP_PASS };
    };
    // A knock port: the doors naming it and the doors where the source has an attempt see the
    // packet (a knock at any door's port resets another door's attempt, knockd's rule). Any
    // other new packet: the secret doors where the source has an attempt, which it steps or
    // resets.
    let probe = SECRETS && doors == 0 && new;
    if doors == 0 && !probe && !gated {
        return XDP_PASS;
    }
    // Plain doors react to their knock ports only (`knockgate_doors` walks nothing else).
    let mut walk = !parsed.fragment() && doors != 0;
    let Ok((src, dst)) = parse::addresses(ctx, parsed) else {
        // Already read once during parsing; unreachable, but never let it bypass a gate.
        return if gated { XDP_DROP } else { XDP_PASS };
    };
    let knock = Knock { proto: parsed.proto(), port: parsed.dport(), tcp_flags: parsed.tcp_flags() };
    // One plain door is matched inline; more by `knockgate_doors`, and secret doors by
    // `knockgate_secret` (each a loop whose body the verifier checks once: two doors inline
    // with both kinds of matching are more paths than it will explore). A packet goes to
    // `knockgate_secret` when a secret door may care: the port is a secret door's first port,
    // or the source may have an attempt at one (its sets' tags say so; a hint that errs only
    // towards going). A gated packet goes there only marked as gated in its own metadata;
    // a driver without XDP metadata leaves secret doors unstepped by packets to gated ports.
    let secret_visits = if SECRETS && !parsed.fragment() {
        let attempts = if new { attempt_doors(&SourceKey::new(settings.hash_key, &src), settings) } else { 0 };
        visit::secret_visits(doors, attempts, settings.secret_mask, settings.slots)
    } else {
        0
    };
    let secret = secret_visits != 0 && (!gated || mark_gated(ctx));
    if !secret && !walk && !gated {
        // A new packet from a source no secret door has an attempt of.
        return XDP_PASS;
    }
    let now = cpu.now_ns(settings);
    if !ALL_DOORS && secret {
        // `knockgate_secret` reads it back for this packet.
        let to_local = LOCAL_ADDRS.get(0).is_some_and(|l| l.contains(&dst));
        let source_hash = SourceKey::new(settings.hash_key, &src).hash();
        cpu.hand_over(&Packet { src, dst, knock }, now, doors, secret_visits, source_hash, to_local);
        // SAFETY: `ctx` is this program's context; on success this does not return.
        unsafe { DOOR_WALK.tail_call(ctx, WALK_SECRET) };
        // Only with an empty program array, never after a successful load: the knock is
        // not matched, but stealth and the gate still apply.
        cpu.count(Counter::MapErrors);
        walk = false;
    }
    let mut verdict = XDP_PASS;
    if walk {
        knock_doors::<ALL_DOORS>(ctx, &Packet { src, dst, knock }, doors, settings, now, cpu);
    }
    if doors & settings.stealth_mask != 0 && !parsed.fragment() {
        cpu.count(Counter::StealthDrops);
        verdict = XDP_DROP;
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

/// Matches a knock against the plain doors it visits (`visit::plain_visits`): the doors
/// naming the port may advance, the others' attempts by this source are reset. One door
/// inline; more by tail call to `knockgate_doors`, which walks them in a loop.
#[inline(always)]
fn knock_doors<const ALL_DOORS: bool>(
    xdp: &XdpContext,
    pkt: &Packet,
    doors: u32,
    settings: &Settings,
    now: u64,
    cpu: Cpu,
) {
    let Some(ctx) = DoorLoop::new(pkt, doors, settings, now, cpu) else { return };
    let visits = visit::plain_visits(doors, ctx.attempts(), !settings.secret_mask, settings.slots);
    // Inline: one door naming the port, and one door where the source may have an attempt
    // that the knock can only end (`end_attempt`). Two doors matched in full inline are more
    // paths than the verifier explores: it follows each path through the first into the second.
    let (named, others) = (visits & doors, visits & !doors);
    if !ALL_DOORS && visit::rest(named) | visit::rest(others) != 0 {
        // SAFETY: `xdp` is this program's context; on success this does not return.
        unsafe { DOOR_WALK.tail_call(xdp, WALK_PLAIN) };
        // Only with an empty program array, never after a successful load: the knock is
        // not matched, but stealth and the gate still apply.
        cpu.count(Counter::MapErrors);
        return;
    }
    if doors != 0 {
        cpu.count(Counter::KnockPackets);
    }
    if !ALL_DOORS {
        if others != 0 {
            end_attempt(lowest_door(cpu, others), &ctx);
        }
        if named != 0 {
            door::<PLAIN>(lowest_door(cpu, named), &ctx);
        }
        return;
    }
    // The loop's state goes to this CPU's `Walk`, not to this frame: with the loop body's
    // frame and its door's, it would exceed the 512 bytes of stack that Linux 6.1's verifier
    // allows the three together.
    cpu.hand_over(pkt, now, doors, visits, ctx.source_hash, ctx.to_local);
    // bpf_loop (kernel 5.17+) has the verifier check the body once instead of once per door.
    // SAFETY: the callback matches the callback ABI; it takes no context.
    unsafe { bpf_loop(visit::count(visits), walk_step::<PLAIN> as *mut c_void, core::ptr::null_mut(), 0) };
}

impl<'a> DoorLoop<'a> {
    /// What every door's matching of `pkt` shares; `None` if the attempt tables are not there.
    #[inline(always)]
    fn new(pkt: &'a Packet, doors: u32, settings: &'a Settings, now: u64, cpu: Cpu) -> Option<Self> {
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
    fn attempts(&self) -> u32 {
        // SAFETY: as in `new`.
        let doors = unsafe { (*self.progress).doors(self.mine[0]) | (*self.first).doors(self.mine[1]) };
        opaque_doors(self.cpu, doors)
    }
}

/// The metadata word `mark_gated` puts before a gated packet for `knockgate_secret`.
const GATED_MARK: u32 = u32::from_be_bytes(*b"kgGt");

/// Marks the packet, in its XDP metadata, as a new connection to a gated port; false if the
/// driver keeps no metadata.
#[inline(always)]
fn mark_gated(ctx: &XdpContext) -> bool {
    // SAFETY: the context's own helper; the metadata word is bounds-checked before the write.
    unsafe {
        if aya_ebpf::helpers::bpf_xdp_adjust_meta(ctx.ctx, -4) != 0 {
            return false;
        }
        let (meta, data) = (ctx.metadata(), ctx.data());
        if meta + 4 > data {
            return false;
        }
        *(meta as *mut u32) = GATED_MARK;
    }
    true
}

/// Whether `mark_gated` marked this packet; the mark is removed.
#[inline(always)]
fn take_gated_mark(ctx: &XdpContext) -> bool {
    let (meta, data) = (ctx.metadata(), ctx.data());
    // SAFETY: bounds-checked; metadata only ever holds what this program wrote.
    let marked = meta + 4 <= data && unsafe { *(meta as *const u32) } == GATED_MARK;
    if marked {
        // SAFETY: the context's own helper, giving back the word `mark_gated` took.
        unsafe { aya_ebpf::helpers::bpf_xdp_adjust_meta(ctx.ctx, 4) };
    }
    marked
}

/// A loop's state, in `CpuState::walk`: the packet's part in matching, for the loops of
/// `knockgate_doors` and `knockgate_secret`. Written by `Cpu::hand_over` for the packet at
/// hand. Where BPF programs can be preempted on a CPU (`PREEMPT_RT`), another packet's hand-over
/// could overwrite it meanwhile, and a door be matched with the other packet's fields: as with
/// the per-CPU scratch that `Cpu::opaque` and `Cpu::launder` round-trip through. The gate's
/// check of a packet never reads it: that comes with the packet itself.
struct Walk {
    pkt: Packet,
    now: u64,
    knock_doors: u32,
    /// The secret doors still to visit (`visit::secret_visits`), lowest first.
    left: u32,
    source_hash: u64,
    to_local: u32,
}
const _: () = assert!(size_of::<Walk>() <= 8 * 10 && align_of::<Walk>() <= 8);

/// The doors at which the source may have an attempt, from the tags of its sets; all doors
/// if a set is missing (unreachable: the daemon sizes the masks to the tables).
#[inline(always)]
fn attempt_doors(source: &SourceKey, settings: &Settings) -> u32 {
    let doors = |set: Option<&Set>| set.map_or(u32::MAX, |s| s.doors(s.mine(source.tag())));
    let attempts = doors(PROGRESS.get(source.set(settings.progress_mask)))
        | doors(FIRST_KNOCKS.get(source.set(settings.first_mask)));
    Cpu::get().map_or(u32::MAX, |cpu| opaque_doors(cpu, attempts))
}

/// `doors` through this CPU's map memory (`Cpu::opaque`): `Set::doors` returns after up to
/// `WAYS` steps, each leaving a value of its own bounds, and without this the verifier would
/// follow every combination of them through all that comes after.
#[inline(always)]
fn opaque_doors(cpu: Cpu, doors: u32) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "reads back the u32 written")]
    let doors = cpu.opaque(doors as usize) as u32;
    doors
}

/// One door of a loop, the lowest left to visit (`Walk::left`); returns 0 to continue. Small:
/// the door's part is a global function, which the verifier checks once, on its own. Kernels
/// from 6.7 on check a loop's body as if it ran any number of times, which, with the door's
/// part inline, took them past a million instructions.
extern "C" fn walk_step<const KIND: u8>(_index: u32, _ctx: *mut c_void) -> i64 {
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
fn lowest_door(cpu: Cpu, doors: u32) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "a door slot, below 32")]
    let slot = cpu.opaque(visit::lowest(doors) as usize) as u32;
    slot & (MAX_DOORS - 1)
}

/// `door`'s `KIND`s: the doors a body matches.
const PLAIN: u8 = 0;
const SECRET: u8 = 1;

/// What every door's matching of one packet shares.
struct DoorLoop<'a> {
    pkt: &'a Packet,
    settings: &'a Settings,
    to_local: bool,
    now: u64,
    cpu: Cpu,
    /// The source's keyed hash (`SourceKey::hash`): 8 bytes of a frame, not the key's 32.
    source_hash: u64,
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
fn door<const KIND: u8>(index: u32, ctx: &DoorLoop<'_>) -> i64 {
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
fn end_attempt(index: u32, ctx: &DoorLoop<'_>) {
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
    if attempt.epoch == door.epoch && attempt.expired(door.timeout_ns, ctx.now) {
        ctx.cpu.count(Counter::Timeouts);
        ctx.cpu.count_door(index, |c| c.timeouts += 1);
    } else {
        ctx.cpu.count(Counter::Resets);
        ctx.cpu.count_door(index, |c| c.resets += 1);
    }
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
        cpu.count(Counter::Timeouts);
        cpu.count_door(index, |c| c.timeouts += 1);
    }
    match d.kind {
        Decision::PROGRESS => {
            let attempt = d.attempt;
            cpu.count(Counter::Steps);
            if d.restarted {
                cpu.count(Counter::Resets);
                cpu.count_door(index, |c| c.resets += 1);
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
            // The gate opens before user space even hears of the knock.
            gate(door, pkt, now, cpu);
            emit(pkt, EventKind::Open, index, &Attempt::new(door.len, d.found_started_ns, door.epoch), cpu);
        }
        Decision::RESET => {
            if !d.expired {
                cpu.count(Counter::Resets);
                cpu.count_door(index, |c| c.resets += 1);
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
