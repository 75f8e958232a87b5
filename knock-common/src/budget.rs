//! A token bucket, kept as nanoseconds of credit so that no multiplication can overflow.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Credit in nanoseconds; one event costs `1e9 / rate` of it.
    pub credit_ns: u64,
    /// When the credit was last topped up.
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Bucket>() == 16);

impl Bucket {
    /// Spends one token if there is one. `rate` tokens per second, at most `burst` saved up.
    /// A rate of zero never grants a token.
    pub fn take(&mut self, now_ns: u64, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return false;
        }
        let cost = 1_000_000_000 / u64::from(rate);
        let cap = cost.saturating_mul(u64::from(burst.max(1)));
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = now_ns;
        self.credit_ns = self.credit_ns.saturating_add(elapsed).min(cap);
        if self.credit_ns >= cost {
            self.credit_ns -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), two u64, no padding.
unsafe impl aya::Pod for Bucket {}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_rate() {
        let mut b = Bucket::default();
        let now = 100 * SEC;
        // Starts full after a long idle time: exactly `burst` tokens.
        let granted = (0..10).filter(|_| b.take(now, 4, 3)).count();
        assert_eq!(granted, 3);
        // A quarter second later, one more.
        assert!(b.take(now + SEC / 4, 4, 3));
        assert!(!b.take(now + SEC / 4, 4, 3));
    }

    #[test]
    fn zero_rate_never_grants_and_clock_going_back_is_harmless() {
        let mut b = Bucket::default();
        assert!(!b.take(5 * SEC, 0, 10));
        let mut b = Bucket { credit_ns: 0, last_ns: 10 * SEC };
        assert!(!b.take(SEC, 1, 1));
        assert!(b.take(2 * SEC, 1, 1));
    }
}
