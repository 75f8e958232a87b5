//! Which doors a knock visits.
//!
//! knockd's rule: a knock at any door's port resets the knocker's attempt at every other
//! door. Only two kinds of door can be changed by a knock: the doors whose sequence names the
//! port (they may start or advance) and the doors at which the source has an attempt (the
//! knock may reset it). Every other door ignores the knock, so a knock visits just those,
//! and what it costs depends on them, not on how many doors there are. The first set is
//! `PortDoors::knock`; the second comes from the tags of the source's sets (`Set::doors`),
//! which the knock reads anyway.
//!
//! BPF has no count-trailing-zeros or population-count instruction: both are arithmetic here.
#![expect(clippy::inline_always, reason = "the XDP program's hot path; BPF calls cost a stack frame each")]

/// The doors among the first `slots` of `doors`: slots past the configuration hold nothing.
#[must_use]
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "the low 32 bits are the mask; from 32 slots up, all ones")]
pub const fn within(doors: u32, slots: u32) -> u32 {
    // `slots` is at most `MAX_DOORS` (32); from 32 up the mask is all ones.
    doors & ((1u64 << (slots & 63)) - 1) as u32
}

/// The plain doors (`plain`) a knock visits: none if the port is no plain door's knock port
/// (knockd sees no other packets); else the plain doors naming the port (`named`) and those
/// at which the source may have an attempt (`attempts`), among the first `slots`.
#[must_use]
#[inline(always)]
pub const fn plain_visits(named: u32, attempts: u32, plain: u32, slots: u32) -> u32 {
    if named & plain == 0 { 0 } else { within((named | attempts) & plain, slots) }
}

/// The secret doors (`secret`) a new packet visits: those naming the port as their first
/// port, and those at which the source may have an attempt, whatever the port (after the
/// first port, every new packet from the source steps or ends a secret door's attempt).
#[must_use]
#[inline(always)]
pub const fn secret_visits(named: u32, attempts: u32, secret: u32, slots: u32) -> u32 {
    within((named | attempts) & secret, slots)
}

/// The number of doors in `doors`.
#[must_use]
#[inline(always)]
pub const fn count(doors: u32) -> u32 {
    let x = doors - ((doors >> 1) & 0x5555_5555);
    let x = (x & 0x3333_3333) + ((x >> 2) & 0x3333_3333);
    let x = (x + (x >> 4)) & 0x0f0f_0f0f;
    x.wrapping_mul(0x0101_0101) >> 24
}

/// The lowest door slot in `doors`; 32 if there is none (no door has that slot).
#[must_use]
#[inline(always)]
pub const fn lowest(doors: u32) -> u32 {
    // The bits below the lowest one, counted.
    count((doors & doors.wrapping_neg()).wrapping_sub(1))
}

/// `doors` without its lowest door.
#[must_use]
#[inline(always)]
pub const fn rest(doors: u32) -> u32 {
    doors & doors.wrapping_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_lowest_agree_with_the_instructions() {
        let mut x = 0x9E37_79B9_u32;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            for doors in [x, x & 0x8000_0001, x >> (x & 31), 0, u32::MAX, 1 << 31, 1] {
                assert_eq!(count(doors), doors.count_ones(), "{doors:#x}");
                assert_eq!(lowest(doors), doors.trailing_zeros(), "{doors:#x}");
                assert_eq!(rest(doors), doors & !(1u32.checked_shl(doors.trailing_zeros()).unwrap_or(0)));
            }
        }
    }

    #[test]
    fn visits_are_the_named_doors_and_the_attempts_within_the_configuration() {
        let plain = u32::MAX;
        assert_eq!(plain_visits(1 << 31, 1, plain, 32), 1 << 31 | 1);
        assert_eq!(plain_visits(1 << 2, 1 << 9, plain, 8), 1 << 2, "slot 9 is past 8 doors");
        assert_eq!(plain_visits(u32::MAX, 0, plain, 0), 0);
        assert_eq!(plain_visits(u32::MAX, 0, plain, 1), 1);
        assert_eq!(plain_visits(u32::MAX, u32::MAX, plain, 31), u32::MAX >> 1);
        assert_eq!(plain_visits(0, 1 << 4, plain, 32), 0, "a port no door names resets nothing");
        // A secret door's first port is no plain door's knock port.
        let secret = 1 << 3;
        assert_eq!(plain_visits(secret, 1 << 4, !secret, 32), 0);
        assert_eq!(plain_visits(secret | 1, 1 << 4 | secret, !secret, 32), 1 | 1 << 4);
        assert_eq!(secret_visits(0, secret | 1, secret, 32), secret, "any port, with an attempt");
        assert_eq!(secret_visits(secret | 1, 0, secret, 32), secret);
        assert_eq!(secret_visits(0, 1, secret, 32), 0);
    }

    #[test]
    fn walking_the_lowest_door_visits_each_once_in_order() {
        let doors = 1 << 0 | 1 << 5 | 1 << 31;
        let mut left = doors;
        let mut seen = std::vec::Vec::new();
        for _ in 0..count(doors) {
            seen.push(lowest(left));
            left = rest(left);
        }
        assert_eq!(seen, [0, 5, 31]);
        assert_eq!(left, 0);
        assert_eq!(lowest(0), 32);
    }
}
