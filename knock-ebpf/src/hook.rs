//! The two hooks the same matching runs at: XDP, and TC ingress (TCX or `cls_bpf`), where
//! another XDP program owns the interface. What differs between them is here: where a
//! packet's bytes are, how a gated packet is marked for `knockgate_secret`, the table of
//! programs to tail-call, and the verdicts.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::{TcContext, XdpContext},
};
use knock_common::XDP_DROP;

use crate::maps::{DOOR_WALK, DOOR_WALK_TC};

/// The word a gated packet is marked with for `knockgate_secret`.
const GATED_MARK: u32 = u32::from_be_bytes(*b"kgGt");

/// A packet at one of the hooks.
pub(crate) trait Hook {
    /// The address of the frame's first byte (its Ethernet header).
    fn start(&self) -> usize;
    /// One past the last byte that may be read directly.
    fn end(&self) -> usize;
    /// Marks the packet as a new connection to a gated port, for `knockgate_secret`; false if
    /// it cannot be marked (the packet must then not go there).
    fn mark_gated(&self) -> bool;
    /// Whether `mark_gated` marked this packet; the mark is removed.
    fn take_gated_mark(&self) -> bool;
    /// Tail-calls this hook's program in slot `slot` of its walk table; returns only if that
    /// failed.
    fn walk(&self, slot: u32);
}

impl Hook for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    /// In the packet's XDP metadata; false if the driver keeps none.
    #[inline(always)]
    fn mark_gated(&self) -> bool {
        // SAFETY: the context's own helper; the metadata word is bounds-checked before the write.
        unsafe {
            if aya_ebpf::helpers::bpf_xdp_adjust_meta(self.ctx, -4) != 0 {
                return false;
            }
            let (meta, data) = (self.metadata(), self.data());
            if meta + 4 > data {
                return false;
            }
            *(meta as *mut u32) = GATED_MARK;
        }
        true
    }

    #[inline(always)]
    fn take_gated_mark(&self) -> bool {
        let (meta, data) = (self.metadata(), self.data());
        // SAFETY: bounds-checked; metadata only ever holds what this program wrote.
        let marked = meta + 4 <= data && unsafe { *(meta as *const u32) } == GATED_MARK;
        if marked {
            // SAFETY: the context's own helper, giving back the word `mark_gated` took.
            unsafe { aya_ebpf::helpers::bpf_xdp_adjust_meta(self.ctx, 4) };
        }
        marked
    }

    #[inline(always)]
    fn walk(&self, slot: u32) {
        // SAFETY: this program's context; on success this does not return.
        unsafe { DOOR_WALK.tail_call(self, slot) };
    }
}

/// The first bytes of a packet that must be in the skb's linear part for `parse` to read them
/// directly: Ethernet, two VLAN tags, IPv6 and its extension headers, TCP.
pub(crate) const TC_HEADERS: u32 = 256;

impl Hook for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    /// In the skb's control buffer, which tail calls keep; always possible.
    #[inline(always)]
    fn mark_gated(&self) -> bool {
        // SAFETY: `cb` is this program's to write (sched_cls); the pointer is the context's.
        unsafe { (*self.skb.skb).cb[0] = GATED_MARK };
        true
    }

    #[inline(always)]
    fn take_gated_mark(&self) -> bool {
        // SAFETY: as in `mark_gated`.
        unsafe {
            let marked = (*self.skb.skb).cb[0] == GATED_MARK;
            (*self.skb.skb).cb[0] = 0;
            marked
        }
    }

    #[inline(always)]
    fn walk(&self, slot: u32) {
        // SAFETY: this program's context; on success this does not return.
        unsafe { DOOR_WALK_TC.tail_call(self, slot) };
    }
}

/// A TC verdict for an XDP one: drop, or let the next filter and the stack have it
/// (`TC_ACT_UNSPEC`, which TCX reads as `TCX_NEXT`): a pass never skips another's filter.
#[inline(always)]
pub(crate) fn tc_verdict(xdp: u32) -> i32 {
    if xdp == XDP_DROP { TC_ACT_SHOT } else { TC_ACT_UNSPEC }
}

/// Makes the first `TC_HEADERS` bytes of the packet (or all of a shorter one) readable
/// directly: an skb may hold its headers outside its linear part. Where that fails, `parse`
/// finds the frame cut short, which the gate drops.
#[inline(always)]
pub(crate) fn tc_pull_headers(ctx: &TcContext) {
    let want = ctx.len().min(TC_HEADERS);
    #[expect(clippy::cast_possible_truncation, reason = "a linear part is far below 4 GiB")]
    let linear = (ctx.data_end() - ctx.data()) as u32;
    // On failure nothing is to be done: see above.
    if linear < want && ctx.pull_data(want).is_err() {}
}
