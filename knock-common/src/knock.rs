//! The knock state machine: what one packet does to one source's attempt at one door.
//!
//! Rules (knockd 0.8's, with its defects fixed; see README "Compatibility"):
//! - the expected next step advances the attempt; the last step opens the door;
//! - a repeat of the step just matched (a retransmitted SYN) is ignored, unless the
//!   sequence expects that port next;
//! - any other knock port resets the attempt, and the same packet then counts as a
//!   first knock;
//! - a TCP knock whose flags fail the door's `TCPFlags` is ignored;
//! - the whole sequence must arrive within `timeout_ns` of the first knock;
//! - packets to ports in no sequence never reach this function (the caller filters them).

use crate::{DoorSpec, Step};

/// Per (source, door) progress, the value of `PROGRESS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// `bpf_ktime_get_ns()` of the first knock.
    pub started_ns: u64,
    /// The door's epoch when the attempt started.
    pub epoch: u32,
    /// Steps matched so far (1 after the first knock).
    pub stage: u8,
    /// Secret doors: the low byte of the window the attempt knocks in (0 for other doors).
    pub win: u8,
    pub _pad1: u16,
    /// Secret doors: the block of PRF output that holds the next step's port, computed once
    /// per block rather than once per step (0 for other doors).
    pub block: u64,
}
const _: () = assert!(core::mem::size_of::<Attempt>() == 24);

impl Attempt {
    #[must_use]
    pub const fn new(stage: u8, started_ns: u64, epoch: u32) -> Self {
        Self { started_ns, epoch, stage, win: 0, _pad1: 0, block: 0 }
    }

    /// Whether the attempt's window has closed at `now_ns` (knockd: `now - start >= timeout`).
    #[must_use]
    pub const fn expired(&self, timeout_ns: u64, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.started_ns) >= timeout_ns
    }
}

/// One packet to a knock port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knock {
    pub proto: u8,
    pub port: u16,
    /// TCP flags byte; ignored for UDP.
    pub tcp_flags: u8,
}

impl Knock {
    const fn is(self, step: Step) -> bool {
        self.port == step.port && self.proto == step.proto
    }
}

/// What to do with the attempt after a knock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Leave the stored attempt (if any) as it is.
    Ignore,
    /// Store this attempt (a new one, or an advanced one).
    Progress(Attempt),
    /// The sequence is complete: remove the attempt and open the door.
    Open,
    /// Remove the attempt: a wrong knock, or an expired one that this knock does not restart.
    Reset,
}

/// Applies one knock to a source's attempt at `door`.
#[must_use]
// Out of line, BPF would pass `current` through the stack, which the verifier refuses.
#[expect(clippy::inline_always, reason = "the XDP program's hot path; see above")]
#[inline(always)]
pub fn step(door: &DoorSpec, current: Option<Attempt>, knock: Knock, now_ns: u64) -> Outcome {
    if door.len == 0 || !door.accepts_flags(knock.proto, knock.tcp_flags) {
        return Outcome::Ignore;
    }
    // An attempt from another epoch belongs to a door that is gone or changed.
    let live = match current {
        Some(a) if a.epoch == door.epoch && !a.expired(door.timeout_ns, now_ns) => Some(a),
        _ => None,
    };
    if let Some(a) = live {
        if door.step_at(a.stage).is_some_and(|s| knock.is(s)) {
            let next = a.stage + 1;
            return if next >= door.len {
                Outcome::Open
            } else {
                Outcome::Progress(Attempt::new(next, a.started_ns, door.epoch))
            };
        }
        if a.stage > 0 && door.step_at(a.stage - 1).is_some_and(|s| knock.is(s)) {
            return Outcome::Ignore;
        }
    }
    // No live attempt, or this knock broke it: it may still be a first knock.
    if door.step_at(0).is_some_and(|s| knock.is(s)) {
        return if door.len == 1 { Outcome::Open } else { Outcome::Progress(Attempt::new(1, now_ns, door.epoch)) };
    }
    if current.is_some() { Outcome::Reset } else { Outcome::Ignore }
}

/// What a knock at a port that `door`'s sequence does not name does to the source's attempt
/// there (`current`): ends it, or leaves it. `step` decides the same for such a knock (a test
/// checks), but it cannot start or advance anything, and this is all of it that the XDP
/// program needs when it visits a door only to end an attempt (`visit`).
#[must_use]
#[expect(clippy::inline_always, reason = "the XDP program's hot path")]
#[inline(always)]
pub const fn ends(door: &DoorSpec, current: Option<Attempt>, knock: Knock) -> bool {
    door.len != 0 && current.is_some() && door.accepts_flags(knock.proto, knock.tcp_flags)
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays, size asserted (no implicit padding).
unsafe impl aya::Pod for Attempt {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    use crate::{MAX_STEPS, PROTO_TCP, PROTO_UDP, TcpFlags};

    const SEC: u64 = 1_000_000_000;
    const SYN: u8 = TcpFlags::SYN;

    fn door(steps: &[(u8, u16)], timeout_s: u64, set: u8, clear: u8) -> DoorSpec {
        let mut d = DoorSpec::EMPTY;
        for (i, &(proto, port)) in steps.iter().enumerate() {
            d.steps[i] = Step::new(proto, port);
        }
        d.len = u8::try_from(steps.len()).unwrap();
        d.timeout_ns = timeout_s * SEC;
        d.flags_set = set;
        d.flags_clear = clear;
        d
    }

    fn tcp(port: u16) -> Knock {
        Knock { proto: PROTO_TCP, port, tcp_flags: SYN }
    }

    fn udp(port: u16) -> Knock {
        Knock { proto: PROTO_UDP, port, tcp_flags: 0 }
    }

    /// Runs knocks at the given times and returns the outcomes, storing progress like XDP does.
    fn run(d: &DoorSpec, knocks: &[(Knock, u64)]) -> Vec<Outcome> {
        let mut cur = None;
        knocks
            .iter()
            .map(|&(k, t)| {
                let o = step(d, cur, k, t);
                match o {
                    Outcome::Progress(a) => cur = Some(a),
                    Outcome::Open | Outcome::Reset => cur = None,
                    Outcome::Ignore => {}
                }
                o
            })
            .collect()
    }

    #[test]
    fn a_knock_at_a_port_the_door_does_not_name_only_ends_an_attempt_as_step_would() {
        let mut x = 0x2545_F491_u32;
        let mut next = |n: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % n
        };
        let ports = [7000, 7001, 7002, 8000];
        for _ in 0..20_000 {
            let len = next(4) as usize;
            let steps: Vec<(u8, u16)> =
                (0..len).map(|_| (if next(2) == 0 { PROTO_TCP } else { PROTO_UDP }, ports[next(4) as usize])).collect();
            let d = door(&steps, 5, if next(2) == 0 { SYN } else { 0 }, 0);
            let proto = if next(2) == 0 { PROTO_TCP } else { PROTO_UDP };
            let knock =
                Knock { proto, port: ports[next(4) as usize], tcp_flags: if next(2) == 0 { SYN } else { 0x10 } };
            if steps.iter().any(|&(pr, po)| pr == knock.proto && po == knock.port) {
                continue;
            }
            let stage = u8::try_from(next(4)).unwrap();
            let current = (next(3) != 0).then(|| Attempt::new(stage, u64::from(next(3)) * 3 * SEC, next(2)));
            let now = u64::from(next(4)) * 3 * SEC;
            let outcome = step(&d, current, knock, now);
            assert!(matches!(outcome, Outcome::Reset | Outcome::Ignore), "{d:?} {current:?} {knock:?}: {outcome:?}");
            assert_eq!(outcome == Outcome::Reset, ends(&d, current, knock), "{d:?} {current:?} {knock:?}");
        }
    }

    fn ssh() -> DoorSpec {
        door(&[(PROTO_TCP, 7000), (PROTO_TCP, 8000), (PROTO_TCP, 9000)], 5, SYN, 0)
    }

    #[test]
    fn advances_then_opens() {
        let out = run(&ssh(), &[(tcp(7000), SEC), (tcp(8000), 2 * SEC), (tcp(9000), 3 * SEC)]);
        assert_eq!(
            out,
            [Outcome::Progress(Attempt::new(1, SEC, 0)), Outcome::Progress(Attempt::new(2, SEC, 0)), Outcome::Open]
        );
    }

    #[test]
    fn wrong_order_never_opens() {
        let out = run(&ssh(), &[(tcp(9000), 0), (tcp(8000), 1), (tcp(7000), 2)]);
        assert_eq!(out[0], Outcome::Ignore);
        assert_eq!(out[1], Outcome::Ignore);
        assert_eq!(out[2], Outcome::Progress(Attempt::new(1, 2, 0)));
    }

    #[test]
    fn wrong_sequence_port_resets() {
        let out = run(&ssh(), &[(tcp(7000), 0), (tcp(9000), 1), (tcp(8000), 2)]);
        assert_eq!(out[1], Outcome::Reset);
        assert_eq!(out[2], Outcome::Ignore);
    }

    #[test]
    fn reset_packet_counts_as_first_knock() {
        // 7000 8000 7000 8000 9000: the second 7000 breaks stage 2 and starts over.
        let d = ssh();
        let out = run(&d, &[(tcp(7000), 0), (tcp(8000), 1), (tcp(7000), 2), (tcp(8000), 3), (tcp(9000), 4)]);
        assert_eq!(out[2], Outcome::Progress(Attempt::new(1, 2, 0)));
        assert_eq!(out[4], Outcome::Open);
    }

    #[test]
    fn duplicate_of_last_step_is_tolerated() {
        let d = ssh();
        let out = run(&d, &[(tcp(7000), 0), (tcp(7000), 1), (tcp(8000), 2), (tcp(8000), 3), (tcp(9000), 4)]);
        assert_eq!(out[1], Outcome::Ignore);
        assert_eq!(out[3], Outcome::Ignore);
        assert_eq!(out[4], Outcome::Open);
    }

    #[test]
    fn repeat_expected_by_the_sequence_advances() {
        let d = door(&[(PROTO_TCP, 1000), (PROTO_TCP, 1000), (PROTO_TCP, 2000)], 5, SYN, 0);
        let out = run(&d, &[(tcp(1000), 0), (tcp(1000), 1), (tcp(2000), 2)]);
        assert_eq!(out[1], Outcome::Progress(Attempt::new(2, 0, 0)));
        assert_eq!(out[2], Outcome::Open);
    }

    #[test]
    fn timeout_is_measured_from_the_first_knock_in_nanoseconds() {
        let d = ssh();
        // 4.999999999 s after the first knock: still in time.
        let ok = run(&d, &[(tcp(7000), SEC), (tcp(8000), 3 * SEC), (tcp(9000), 6 * SEC - 1)]);
        assert_eq!(ok[2], Outcome::Open);
        // Exactly 5 s: knockd's `>=`, expired; 9000 is no first knock, so the attempt goes.
        let late = run(&d, &[(tcp(7000), SEC), (tcp(8000), 3 * SEC), (tcp(9000), 6 * SEC)]);
        assert_eq!(late[2], Outcome::Reset);
    }

    #[test]
    fn expired_attempt_restarts_on_a_first_knock() {
        let d = ssh();
        let out = run(&d, &[(tcp(7000), 0), (tcp(7000), 10 * SEC)]);
        assert_eq!(out[1], Outcome::Progress(Attempt::new(1, 10 * SEC, 0)));
    }

    #[test]
    fn zero_timeout_opens_only_one_step_doors() {
        let d = door(&[(PROTO_TCP, 7000), (PROTO_TCP, 8000)], 0, 0, 0);
        let out = run(&d, &[(tcp(7000), 0), (tcp(8000), 0)]);
        assert_ne!(out[1], Outcome::Open);
        let one = door(&[(PROTO_TCP, 7000)], 0, 0, 0);
        assert_eq!(run(&one, &[(tcp(7000), 0)]), [Outcome::Open]);
    }

    #[test]
    fn flags_mismatch_is_ignored_and_does_not_reset() {
        let d = door(&[(PROTO_TCP, 7000), (PROTO_TCP, 8000), (PROTO_TCP, 9000)], 5, SYN, TcpFlags::ACK);
        let ack = Knock { proto: PROTO_TCP, port: 9000, tcp_flags: TcpFlags::ACK };
        let synack = Knock { proto: PROTO_TCP, port: 8000, tcp_flags: SYN | TcpFlags::ACK };
        let out = run(&d, &[(tcp(7000), 0), (ack, 1), (synack, 2), (tcp(8000), 3), (tcp(9000), 4)]);
        assert_eq!(out[1], Outcome::Ignore);
        assert_eq!(out[2], Outcome::Ignore);
        assert_eq!(out[4], Outcome::Open);
        // A first knock with the wrong flags starts nothing.
        assert_eq!(step(&d, None, ack, 0), Outcome::Ignore);
    }

    #[test]
    fn flag_semantics_match_knockd() {
        let d = door(&[(PROTO_TCP, 1)], 5, SYN, 0);
        assert!(d.flags_match(SYN));
        assert!(d.flags_match(SYN | TcpFlags::ACK), "unlisted bits are don't-care");
        assert!(!d.flags_match(TcpFlags::ACK));
        let none = door(&[(PROTO_TCP, 1)], 5, 0, 0);
        assert!(none.flags_match(TcpFlags::RST | TcpFlags::ACK));
    }

    #[test]
    fn udp_steps_match_protocol_and_skip_flags() {
        let d = door(&[(PROTO_UDP, 7000), (PROTO_TCP, 7000), (PROTO_UDP, 9000)], 5, SYN, 0);
        let out = run(&d, &[(udp(7000), 0), (tcp(7000), 1), (udp(9000), 2)]);
        assert_eq!(out[2], Outcome::Open);
        // TCP to a UDP step's port is a different knock.
        assert_eq!(step(&d, None, tcp(7000), 0), Outcome::Ignore);
    }

    #[test]
    fn a_full_32_step_sequence_opens() {
        let steps: Vec<(u8, u16)> = (1000..).take(MAX_STEPS).map(|p| (PROTO_TCP, p)).collect();
        let d = door(&steps, 60, SYN, 0);
        let knocks: Vec<_> = steps.iter().map(|&(_, p)| (tcp(p), 1)).collect();
        let out = run(&d, &knocks);
        assert_eq!(out[MAX_STEPS - 1], Outcome::Open);
        assert!(out[..MAX_STEPS - 1].iter().all(|o| matches!(o, Outcome::Progress(_))));
    }

    #[test]
    fn attempts_of_another_epoch_are_void() {
        let mut d = ssh();
        d.epoch = 7;
        let old = Attempt::new(2, 0, 6);
        // The old attempt at stage 2 does not let 9000 open the new door.
        assert_eq!(step(&d, Some(old), tcp(9000), 1), Outcome::Reset);
        // A first knock starts over under the new epoch.
        assert_eq!(step(&d, Some(old), tcp(7000), 1), Outcome::Progress(Attempt::new(1, 1, 7)));
    }

    #[test]
    fn empty_slot_ignores_everything() {
        assert_eq!(step(&DoorSpec::EMPTY, None, tcp(0), 0), Outcome::Ignore);
    }

    #[test]
    fn corrupt_stage_beyond_the_sequence_resets_instead_of_indexing() {
        let d = ssh();
        let bogus = Attempt::new(200, 0, 0);
        assert_eq!(step(&d, Some(bogus), tcp(8000), 1), Outcome::Reset);
    }
}
