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

/// A bucket's rate as it spends it, worked out once in user space: in BPF the 64-bit
/// division alone costs more than the rest of a knock step.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    /// Credit one token costs; 0 grants nothing.
    pub cost_ns: u64,
    /// Most credit saved up.
    pub cap_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Rate>() == 16);

impl Rate {
    /// `per_second` tokens a second, at most `burst` (at least one) saved up.
    #[must_use]
    pub const fn new(per_second: u32, burst: u32) -> Self {
        if per_second == 0 {
            return Self { cost_ns: 0, cap_ns: 0 };
        }
        let cost_ns = 1_000_000_000 / per_second as u64;
        let burst = if burst == 0 { 1 } else { burst as u64 };
        Self { cost_ns, cap_ns: cost_ns.saturating_mul(burst) }
    }
}

impl Bucket {
    /// Spends one token if there is one, after crediting the time since the last call.
    pub fn take(&mut self, now_ns: u64, rate: &Rate) -> bool {
        self.refill(now_ns, rate);
        self.spend(rate)
    }

    /// Credits the time since the last refill. The XDP program refills once per clock tick,
    /// when it reads the clock, so that spending costs a compare and a subtraction.
    pub fn refill(&mut self, now_ns: u64, rate: &Rate) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = now_ns;
        self.credit_ns = self.credit_ns.saturating_add(elapsed).min(rate.cap_ns);
    }

    /// Spends one token if the credit holds one (a zero rate never grants one).
    pub fn spend(&mut self, rate: &Rate) -> bool {
        if rate.cost_ns != 0 && self.credit_ns >= rate.cost_ns {
            self.credit_ns -= rate.cost_ns;
            true
        } else {
            false
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), two u64, no padding.
unsafe impl aya::Pod for Bucket {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for Rate {}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_rate() {
        let mut b = Bucket::default();
        let now = 100 * SEC;
        // Starts full after a long idle time: exactly `burst` tokens.
        let granted = (0..10).filter(|_| b.take(now, &Rate::new(4, 3))).count();
        assert_eq!(granted, 3);
        // A quarter second later, one more.
        assert!(b.take(now + SEC / 4, &Rate::new(4, 3)));
        assert!(!b.take(now + SEC / 4, &Rate::new(4, 3)));
    }

    #[test]
    fn zero_rate_never_grants_and_clock_going_back_is_harmless() {
        let mut b = Bucket::default();
        assert!(!b.take(5 * SEC, &Rate::new(0, 10)));
        let mut b = Bucket { credit_ns: 0, last_ns: 10 * SEC };
        assert!(!b.take(SEC, &Rate::new(1, 1)));
        assert!(b.take(2 * SEC, &Rate::new(1, 1)));
    }
}
