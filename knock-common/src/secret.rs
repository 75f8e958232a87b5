//! Secret-keyed doors: knock sequences bound to the knocker's address and to a window of time.
//!
//! For window `w` (`unix_time / window_secs`) user space derives a window key from the door's
//! secret with HMAC-SHA256 (`derive`, behind the `keys` feature): the first port of the
//! window, the same for every source, and a 128-bit `SipHash` key. The later ports of a source's
//! sequence are SipHash-2-4 of its address and a block number under that key, four 16-bit
//! ports a block (`Prf`). The XDP
//! program holds window keys only, never the secret: `DoorWindows` in the `WINDOWS` map holds
//! the keys of windows w-1, w and w+1, each with the `ktime` at which the kernel stops
//! accepting it, so that a dead daemon leaves nothing open for longer.
//!
//! Matching (`secret_step`): a first knock is a TCP SYN or UDP datagram to a window's first
//! port; after it, every new packet (SYN or UDP of the door's protocol) the source sends to the
//! host must be the next port of its sequence, or the attempt is reset. A wrong guess
//! therefore ends the attempt, so ports cannot be guessed one at a time. A completed
//! sequence opens once: the `USED` table remembers (source, door, window).
#![expect(clippy::inline_always, reason = "the XDP program's knock path; BPF calls cost a stack frame each")]

use crate::{AddrKey, Attempt, DoorSpec, Knock, Outcome};

/// Window keys held per door: windows w-1, w, w+1 and w+2. The kernel accepts a window from
/// the start of the window before it to the end of the window after it (`not_before_ns`,
/// `not_after_ns`), so at any moment exactly w-1, w and w+1, however late the daemon moves on:
/// w+2's key is there before its time comes.
pub const WINDOWS: usize = 4;

/// Ports of one secret knock, the first included.
pub const MIN_LENGTH: u8 = 2;
pub const MAX_LENGTH: u8 = 8;
pub const DEFAULT_LENGTH: u8 = 4;
/// Seconds a window lasts, by default.
pub const DEFAULT_WINDOW_SECS: u32 = 30;
/// Longest window, in seconds (a day).
pub const MAX_WINDOW_SECS: u32 = 86_400;

/// One window's key, as the kernel holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowKey {
    /// `SipHash` key of the later ports.
    pub sip: [u64; 2],
    /// The window number (`unix_time / window_secs`).
    pub window: u64,
    /// `ktime` (ns) from which the kernel accepts this window.
    pub not_before_ns: u64,
    /// `ktime` (ns) from which the kernel no longer accepts this window.
    pub not_after_ns: u64,
    /// The first port of every source's sequence in this window.
    pub first: u16,
    /// 1 when the key is set.
    pub live: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<WindowKey>() == 48);

impl WindowKey {
    /// Whether the kernel accepts this window at `now_ns`.
    #[must_use]
    #[inline(always)]
    pub const fn live_at(&self, now_ns: u64) -> bool {
        self.live != 0 && self.not_before_ns <= now_ns && now_ns < self.not_after_ns
    }
}

/// One slot of the `WINDOWS` array (per door slot): window `w`'s key sits at `w % WINDOWS`, so
/// moving to the next window rewrites one key, and the one it replaces has already expired.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoorWindows {
    pub keys: [WindowKey; WINDOWS],
}

impl DoorWindows {
    /// The key of the window an attempt names (`tag`), if it is live at `now_ns`.
    #[must_use]
    #[inline(always)]
    pub fn key(&self, tag: u8, now_ns: u64) -> Option<&WindowKey> {
        let k = &self.keys[usize::from(tag) & (WINDOWS - 1)];
        (window_tag(k.window) == tag && k.live_at(now_ns)).then_some(k)
    }

    /// The live key whose first port this is (of two that share one, the first in slot order).
    #[must_use]
    #[inline(always)]
    pub fn first(&self, port: u16, now_ns: u64) -> Option<&WindowKey> {
        self.keys.iter().find(|k| k.first == port && k.live_at(now_ns))
    }
}

/// What an attempt keeps of its window (`Attempt::win`): the low 8 bits of its number. The
/// low 2 are its key's slot; the rest tell it from the later windows whose keys take that slot.
#[must_use]
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "the low 8 bits, as documented")]
pub const fn window_tag(window: u64) -> u8 {
    window as u8
}
const _: () = assert!(WINDOWS == 4, "a window's slot is the low 2 bits of its tag");

/// Key of the `USED` table: a (source, door, window) whose sequence has opened once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub door: u8,
    pub _pad: u16,
    /// The door's epoch: a door replaced within a window starts afresh.
    pub epoch: u32,
    pub window: u64,
}
const _: () = assert!(core::mem::size_of::<UsedKey>() == 32);

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    sip_round(v);
    sip_round(v);
    v[0] ^= m;
}

/// SipHash-2-4 (64-bit output) of a 24-byte message given as three little-endian words.
/// Written out for the fixed length, so that the BPF verifier sees straight-line code; the
/// tests check it against the `siphasher` crate.
#[must_use]
#[inline(always)]
pub fn siphash24(k0: u64, k1: u64, m0: u64, m1: u64, m2: u64) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    compress(&mut v, m0);
    compress(&mut v, m1);
    compress(&mut v, m2);
    compress(&mut v, 24 << 56);
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// A port from 16 bits of key material (port 0 cannot be knocked: it becomes 1).
#[must_use]
#[inline(always)]
pub const fn port_of(bits: u16) -> u16 {
    if bits == 0 { 1 } else { bits }
}

/// The keyed PRF of the later ports: block `b` of a source's ports is
/// `SipHash-2-4(window key, address bytes || family || b || 0^6)`, four 16-bit ports. The XDP
/// program computes it in a function of its own, which the verifier checks once.
pub trait Prf {
    fn block(&self, key: &WindowKey, src: &AddrKey, block: u8) -> u64;
}

/// The PRF as plain code (user space, and tests).
pub struct Inline;

impl Prf for Inline {
    #[inline(always)]
    fn block(&self, key: &WindowKey, src: &AddrKey, block: u8) -> u64 {
        let [m0, m1, m2] = message(src, block);
        siphash24(key.sip[0], key.sip[1], m0, m1, m2)
    }
}

/// The PRF's message words for `src` and a block.
#[must_use]
#[inline(always)]
pub fn message(src: &AddrKey, block: u8) -> [u64; 3] {
    let a = &src.addr;
    let w = |i: usize| u64::from(u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]));
    [w(0) | w(4) << 32, w(8) | w(12) << 32, u64::from(src.family) | u64::from(block) << 8]
}

/// Step `step`'s port (1..8) from its block of PRF output.
#[must_use]
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "16 bits of the block are the port")]
pub const fn port_in(block: u64, step: u8) -> u16 {
    port_of((block >> ((step.wrapping_sub(1) as u32 & 3) * 16)) as u16)
}

/// The block holding step `step`'s port.
#[must_use]
#[inline(always)]
pub const fn block_of(step: u8) -> u8 {
    step.wrapping_sub(1) / 4
}

/// Step `step`'s port for `src` (1..8), the PRF computed once.
#[must_use]
pub fn later_port(prf: &impl Prf, key: &WindowKey, src: &AddrKey, step: u8) -> u16 {
    port_in(prf.block(key, src, block_of(step)), step)
}

/// What a knock did to a secret door: the outcome, and the window it belongs to (for `Open`,
/// the window whose single use it spends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretStep {
    pub outcome: Outcome,
    pub window: u64,
}

/// Applies one new packet from `src` to its attempt at a secret door (`door.secret != 0`).
/// `knock` is any TCP SYN or UDP datagram the source sent to the host, not only to listed
/// ports; the caller has checked the destination address.
#[must_use]
#[inline(always)]
pub fn secret_step(
    prf: &impl Prf,
    door: &DoorSpec,
    windows: &DoorWindows,
    current: Option<Attempt>,
    knock: Knock,
    src: &AddrKey,
    now_ns: u64,
) -> SecretStep {
    let ignore = SecretStep { outcome: Outcome::Ignore, window: 0 };
    if door.len < MIN_LENGTH || knock.proto != door.secret_proto || !door.accepts_flags(knock.proto, knock.tcp_flags) {
        return ignore;
    }
    let live = match current {
        Some(a) if a.epoch == door.epoch && !a.expired(door.timeout_ns, now_ns) && a.stage > 0 => {
            windows.key(a.win, now_ns).map(|k| (a, k))
        }
        _ => None,
    };
    if let Some((a, key)) = live {
        // The attempt carries the PRF block of its next step: computed at the first knock,
        // and again only where the steps cross into the next block.
        let block = a.block;
        if knock.port == port_in(block, a.stage) {
            let next = a.stage + 1;
            let outcome = if next >= door.len {
                Outcome::Open
            } else {
                let block =
                    if block_of(next) == block_of(a.stage) { block } else { prf.block(key, src, block_of(next)) };
                Outcome::Progress(Attempt { stage: next, block, ..a })
            };
            return SecretStep { outcome, window: key.window };
        }
        // A retransmission of the step just matched.
        let previous = if a.stage == 1 {
            key.first
        } else if block_of(a.stage - 1) == block_of(a.stage) {
            port_in(block, a.stage - 1)
        } else {
            port_in(prf.block(key, src, block_of(a.stage - 1)), a.stage - 1)
        };
        if knock.port == previous {
            return ignore;
        }
    }
    // No live attempt, or this packet broke it: it may be a first knock.
    if let Some(key) = windows.first(knock.port, now_ns) {
        let attempt = Attempt {
            started_ns: now_ns,
            epoch: door.epoch,
            stage: 1,
            win: window_tag(key.window),
            _pad1: 0,
            block: prf.block(key, src, 0),
        };
        return SecretStep { outcome: Outcome::Progress(attempt), window: key.window };
    }
    if current.is_some() { SecretStep { outcome: Outcome::Reset, window: 0 } } else { ignore }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), integers only, no implicit padding (sizes asserted).
    unsafe impl aya::Pod for super::WindowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DoorWindows {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UsedKey {}
}

#[cfg(feature = "keys")]
pub mod derive;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PROTO_TCP, PROTO_UDP, TcpFlags};

    const SEC: u64 = 1_000_000_000;

    fn door(len: u8) -> DoorSpec {
        let mut d = DoorSpec::EMPTY;
        d.len = len;
        d.secret = 1;
        d.secret_proto = PROTO_TCP;
        d.timeout_ns = 10 * SEC;
        d.flags_set = TcpFlags::SYN;
        d.flags_clear = TcpFlags::ACK;
        d.epoch = 5;
        d
    }

    fn key(window: u64, first: u16, seed: u64) -> WindowKey {
        WindowKey {
            sip: [seed, !seed],
            window,
            not_before_ns: 0,
            not_after_ns: 100 * SEC,
            first,
            live: 1,
            _pad: [0; 5],
        }
    }

    fn slot(window: u64) -> usize {
        usize::try_from(window).unwrap() % WINDOWS
    }

    fn windows() -> DoorWindows {
        let mut w = DoorWindows::default();
        for (window, first) in [(9u64, 1111u16), (10, 2222), (11, 3333)] {
            w.keys[slot(window)] = key(window, first, window * 77);
        }
        w
    }

    fn syn(port: u16) -> Knock {
        Knock { proto: PROTO_TCP, port, tcp_flags: TcpFlags::SYN }
    }

    /// Runs packets through `secret_step`, keeping the attempt as the XDP program does.
    fn run(d: &DoorSpec, w: &DoorWindows, src: &AddrKey, ports: &[u16]) -> std::vec::Vec<Outcome> {
        let mut cur = None;
        ports
            .iter()
            .map(|&p| {
                let s = secret_step(&Inline, d, w, cur, syn(p), src, SEC);
                match s.outcome {
                    Outcome::Progress(a) => cur = Some(a),
                    Outcome::Open | Outcome::Reset => cur = None,
                    Outcome::Ignore => {}
                }
                s.outcome
            })
            .collect()
    }

    fn sequence(w: &WindowKey, src: &AddrKey, len: u8) -> std::vec::Vec<u16> {
        core::iter::once(w.first).chain((1..len).map(|s| later_port(&Inline, w, src, s))).collect()
    }

    #[test]
    fn siphash_is_siphash_2_4() {
        use core::hash::Hasher as _;
        for seed in [0u64, 1, 0xdead_beef, u64::MAX] {
            let (k0, k1) = (seed, seed.rotate_left(17) ^ 0x0123_4567);
            let m = [seed ^ 0x1111, seed.wrapping_mul(3), 6];
            let mut bytes = [0u8; 24];
            for (chunk, word) in bytes.chunks_exact_mut(8).zip(m) {
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            let mut h = siphasher::sip::SipHasher24::new_with_keys(k0, k1);
            h.write(&bytes);
            assert_eq!(siphash24(k0, k1, m[0], m[1], m[2]), h.finish(), "seed {seed:#x}");
        }
    }

    #[test]
    fn the_derived_sequence_opens_for_its_source_only() {
        let (d, w) = (door(4), windows());
        let (me, other) = (AddrKey::v4([198, 18, 0, 2]), AddrKey::v4([198, 18, 0, 3]));
        let seq = sequence(&w.keys[slot(10)], &me, 4);
        assert_eq!(seq[0], 2222);
        let out = run(&d, &w, &me, &seq);
        assert_eq!(out[3], Outcome::Open);
        assert!(out[..3].iter().all(|o| matches!(o, Outcome::Progress(_))));
        // The same ports from another source: the first knock starts an attempt, the second
        // resets it (a wrong port), and nothing opens.
        let theirs = run(&d, &w, &other, &seq);
        assert!(!theirs.contains(&Outcome::Open), "{theirs:?}");
        assert_eq!(theirs[1], Outcome::Reset);
    }

    #[test]
    fn any_wrong_port_resets_and_a_retransmission_does_not() {
        let (d, w) = (door(4), windows());
        let me = AddrKey::v4([198, 18, 0, 2]);
        let seq = sequence(&w.keys[slot(11)], &me, 4);
        let wrong = seq[2].wrapping_add(1).max(1);
        let out = run(&d, &w, &me, &[seq[0], seq[1], wrong, seq[2], seq[3]]);
        assert_eq!(out[2], Outcome::Reset);
        assert!(!out.contains(&Outcome::Open));
        let out = run(&d, &w, &me, &[seq[0], seq[0], seq[1], seq[1], seq[2], seq[3]]);
        assert_eq!(out[1], Outcome::Ignore);
        assert_eq!(out[3], Outcome::Ignore);
        assert_eq!(out[5], Outcome::Open);
    }

    #[test]
    fn other_protocols_flags_and_windows_do_not_count() {
        let (d, w) = (door(3), windows());
        let me = AddrKey::v4([198, 18, 0, 2]);
        let seq = sequence(&w.keys[slot(9)], &me, 3);
        let key9 = &w.keys[slot(9)];
        let base = Attempt {
            started_ns: SEC,
            epoch: 5,
            stage: 1,
            win: window_tag(9),
            _pad1: 0,
            block: Inline.block(key9, &me, 0),
        };
        let cur = Some(base);
        let udp = Knock { proto: PROTO_UDP, port: 1, tcp_flags: 0 };
        assert_eq!(secret_step(&Inline, &d, &w, cur, udp, &me, SEC).outcome, Outcome::Ignore, "UDP for a TCP door");
        let ack = Knock { tcp_flags: TcpFlags::SYN | TcpFlags::ACK, ..syn(1) };
        assert_eq!(secret_step(&Inline, &d, &w, cur, ack, &me, SEC).outcome, Outcome::Ignore, "SYN-ACK");
        assert_eq!(
            secret_step(&Inline, &d, &w, cur, syn(seq[1]), &me, SEC).outcome,
            Outcome::Progress(Attempt { stage: 2, ..base })
        );
        // The window's key has expired: the attempt is dead, the packet resets it.
        assert_eq!(secret_step(&Inline, &d, &w, cur, syn(seq[1]), &me, 100 * SEC).outcome, Outcome::Reset);
        // A first port of a window no longer held starts nothing.
        assert_eq!(secret_step(&Inline, &d, &w, None, syn(1111), &me, 100 * SEC).outcome, Outcome::Ignore);
        // An attempt of another epoch or past its timeout is void.
        let old = Some(Attempt { epoch: 4, ..base });
        assert_eq!(secret_step(&Inline, &d, &w, old, syn(seq[1]), &me, SEC).outcome, Outcome::Reset);
        let late = secret_step(&Inline, &d, &w, cur, syn(seq[1]), &me, 11 * SEC + 1);
        assert_eq!(late.outcome, Outcome::Reset);
    }

    #[test]
    fn window_tags_tell_a_slot_s_windows_apart() {
        let w = windows();
        assert_eq!(w.key(window_tag(10), SEC).map(|k| k.window), Some(10));
        assert_eq!(w.key(window_tag(14), SEC), None, "window 14 shares 10's slot, not its tag");
        assert_eq!(w.key(window_tag(12), SEC), None, "slot 0 holds no key");
        assert!((0..600u64).all(|x| usize::from(window_tag(x)) & (WINDOWS - 1) == slot(x)));
    }

    #[test]
    fn later_ports_take_16_bits_each_and_never_0() {
        let blocks = [0x4444_3333_2222_1111u64, 0x0000_7777_6666_5555];
        let ports: std::vec::Vec<u16> = (1..=8).map(|s| port_in(blocks[usize::from(block_of(s))], s)).collect();
        assert_eq!(ports, [0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666, 0x7777, 1]);
    }

    #[test]
    fn a_step_after_a_block_boundary_finds_its_retransmission() {
        let (d, w) = (door(8), windows());
        let me = AddrKey::v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let seq = sequence(&w.keys[slot(10)], &me, 8);
        let mut knocks: std::vec::Vec<u16> = seq[..5].to_vec();
        knocks.push(seq[4]);
        knocks.extend_from_slice(&seq[5..]);
        let out = run(&d, &w, &me, &knocks);
        assert_eq!(out[5], Outcome::Ignore, "step 4 again, from block 0, while block 1 is next");
        assert_eq!(out.last(), Some(&Outcome::Open));
    }
}
