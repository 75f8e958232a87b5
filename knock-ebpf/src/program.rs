//! The XDP entry points and the packet path: parse, the port table, the knock doors a
//! packet visits, stealth and the gate.

use aya_ebpf::{
    bindings::xdp_action,
    cty::c_void,
    helpers::bpf_loop,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use knock_common::{
    AllowKey, Counter, Knock, PortDoors, SECRET_WORD, Set, Settings, SourceKey, XDP_DROP, XDP_PASS, gate_passes,
    is_new_connection, port_bit, port_slot, visit,
};

use crate::{
    cpu::Cpu,
    doors::{DoorLoop, PLAIN, Packet, SECRET, door, end_attempt, lowest_door, opaque_doors, walk_step},
    hook::{Hook, tc_pull_headers, tc_verdict},
    maps::{ALLOW, FIRST_KNOCKS, LOCAL_ADDRS, PORT_BITS, PORTS, PROGRESS, SETTINGS, WALK_PLAIN, WALK_SECRET},
    parse::{self, Parsed, Skip},
};

const _: () = assert!(XDP_PASS == xdp_action::XDP_PASS && XDP_DROP == xdp_action::XDP_DROP);

/// The program attached to the interface. A knock visits the doors naming its port and the
/// doors at which its source has an attempt (`knock_common::visit`): one is matched inline,
/// more by `knockgate_doors`.
#[xdp]
// Inline into the entry aya's macro wraps it in: a BPF call costs every frame a call and a
// return (dear under return-stack mitigations), and LLVM stops inlining a body this large.
#[inline(always)]
fn knockgate(ctx: XdpContext) -> u32 {
    run::<_, false>(&ctx)
}

/// Reached only by tail call from `knockgate`: walks the doors a knock visits in a
/// `bpf_loop`. Its callback costs a call and a return, dear under return-stack mitigations,
/// and a program holding both the loop and the inline path would exceed the 512-byte stack.
#[xdp]
// Inline into the entry aya's macro wraps it in: a BPF call costs every frame a call and a
// return (dear under return-stack mitigations), and LLVM stops inlining a body this large.
#[inline(always)]
fn knockgate_doors(ctx: XdpContext) -> u32 {
    run::<_, true>(&ctx)
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

/// `knockgate` at TC ingress, for an interface where another program owns XDP: the same
/// matching and gate, behind what that program passes.
#[classifier]
#[inline(always)]
fn knockgate_tc(ctx: TcContext) -> i32 {
    tc_pull_headers(&ctx);
    tc_verdict(run::<_, false>(&ctx))
}

/// `knockgate_doors` at TC ingress (tail-called through `DOOR_WALK_TC`).
#[classifier]
#[inline(always)]
fn knockgate_tc_doors(ctx: TcContext) -> i32 {
    tc_verdict(run::<_, true>(&ctx))
}

/// `knockgate_secret` at TC ingress (tail-called through `DOOR_WALK_TC`).
#[classifier]
#[inline(always)]
fn knockgate_tc_secret(ctx: TcContext) -> i32 {
    tc_verdict(secret_walk(&ctx))
}

#[inline(always)]
fn secret_walk(ctx: &impl Hook) -> u32 {
    // What `knockgate` parsed is in this CPU's `Walk`: this program's frame stays small.
    // Whether the packet is a new connection to a gated port comes with the packet itself
    // (`Hook::mark_gated`), never from per-CPU memory, which another packet could have written
    // meanwhile where BPF programs can be preempted (PREEMPT_RT).
    let gated = ctx.take_gated_mark();
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
    ctx.walk(WALK_PLAIN);
    // Only with an empty program array: plain doors are not matched, and the gate drops.
    cpu.count(Counter::MapErrors);
    if gated { XDP_DROP } else { XDP_PASS }
}

#[inline(always)]
fn run<H: Hook, const ALL_DOORS: bool>(ctx: &H) -> u32 {
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
                on_packet::<H, ALL_DOORS, true>(ctx, parsed, doors, settings)
            } else if doors.knock | doors.gate != 0 {
                on_packet::<H, ALL_DOORS, false>(ctx, parsed, doors, settings)
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
/// The verdict for a parsed TCP/UDP packet: knock matching, then stealth and the gate.
#[inline(always)]
fn on_packet<H: Hook, const ALL_DOORS: bool, const SECRETS: bool>(
    ctx: &H,
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
    let secret = secret_visits != 0 && (!gated || ctx.mark_gated());
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
        ctx.walk(WALK_SECRET);
        // Only with an empty program array, never after a successful load: the knock is
        // not matched, but stealth and the gate still apply.
        cpu.count(Counter::MapErrors);
        walk = false;
    }
    let mut verdict = XDP_PASS;
    if walk {
        knock_doors::<H, ALL_DOORS>(ctx, &Packet { src, dst, knock }, doors, settings, now, cpu);
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

/// Matches a knock against the plain doors it visits (`visit::plain_visits`): the doors
/// naming the port may advance, the others' attempts by this source are reset. One door
/// inline; more by tail call to `knockgate_doors`, which walks them in a loop.
#[inline(always)]
fn knock_doors<H: Hook, const ALL_DOORS: bool>(
    hook: &H,
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
        hook.walk(WALK_PLAIN);
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

/// The doors at which the source may have an attempt, from the tags of its sets; all doors
/// if a set is missing (unreachable: the daemon sizes the masks to the tables).
#[inline(always)]
fn attempt_doors(source: &SourceKey, settings: &Settings) -> u32 {
    let doors = |set: Option<&Set>| set.map_or(u32::MAX, |s| s.doors(s.mine(source.tag())));
    let attempts = doors(PROGRESS.get(source.set(settings.progress_mask)))
        | doors(FIRST_KNOCKS.get(source.set(settings.first_mask)));
    Cpu::get().map_or(u32::MAX, |cpu| opaque_doors(cpu, attempts))
}
