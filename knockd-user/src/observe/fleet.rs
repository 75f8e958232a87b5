//! What a fleet's link (`fleet`) counts, for the metrics: whether NATS is reached,
//! grants published, applied and refused (by reason), single-use claims (by result), grants
//! waiting to be published, and how long grants took from their issue to being applied here.

use std::sync::atomic::{AtomicU64, Ordering};

use knock_common::fleet::Refusal;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// The results of a secret door's single-use claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This node claimed it: the open goes ahead.
    Claimed,
    /// Another node (or this one) had: a replay, refused.
    Replay,
    /// NATS could not be asked; `FleetSingleUse` decides.
    Unreachable,
}

impl Claim {
    pub const ALL: [Claim; 3] = [Claim::Claimed, Claim::Replay, Claim::Unreachable];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Claim::Claimed => "claimed",
            Claim::Replay => "replay",
            Claim::Unreachable => "unreachable",
        }
    }
}

#[derive(Debug)]
pub struct FleetStats {
    /// 1 while connected to a NATS server.
    pub connected: AtomicU64,
    pub published: AtomicU64,
    /// Grants waiting to be published (NATS unreachable).
    pub unsent: AtomicU64,
    pub applied: AtomicU64,
    /// By `Refusal::ALL`'s order.
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// By `Claim::ALL`'s order.
    pub claims: [AtomicU64; Claim::ALL.len()],
    /// Seconds from a grant's issue on its node to its being applied here.
    pub delay: Histogram,
}

impl Default for FleetStats {
    fn default() -> Self {
        Self {
            connected: AtomicU64::default(),
            published: AtomicU64::default(),
            unsent: AtomicU64::default(),
            applied: AtomicU64::default(),
            refused: Default::default(),
            claims: Default::default(),
            // 0.5 ms to about 8 s.
            delay: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
        }
    }
}

impl FleetStats {
    pub fn refuse(&self, why: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|r| *r == why) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn claim(&self, result: Claim) {
        if let Some(i) = Claim::ALL.iter().position(|c| *c == result) {
            self.claims[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Grants refused for `why` so far.
    #[must_use]
    pub fn refused(&self, why: Refusal) -> u64 {
        Refusal::ALL.iter().position(|r| *r == why).map_or(0, |i| self.refused[i].load(Ordering::Relaxed))
    }
}
