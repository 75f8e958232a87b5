//! Reference programs that `cargo xtask bench` measures the knockgate program against, in the
//! same run:
//! - `xdp_pass` passes every frame and does nothing else: the baseline of the ratios;
//! - `tc_pass` is the same at TC ingress (on to the next filter): the baseline at TC;
//! - `port_floor` and `knock_floor` do the least any port-knocking filter must do, for a
//!   frame to another port and for a knock. They show how much of a ratio is the task's own
//!   floor on the machine at hand, rather than knockgate's design.
//!
//! The floors handle untagged IPv4 without options only, and match one fixed port; they are
//! never attached.
//!
//! And `refused`, which no verifier accepts: the kernel tests load it to check how knockd
//! reports a rejection.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![cfg_attr(
    target_arch = "bpf",
    expect(clippy::inline_always, reason = "the floors inline their parse, as knockgate does")
)]
#![cfg_attr(
    target_arch = "bpf",
    expect(clippy::needless_pass_by_value, reason = "aya's #[xdp] hands the context over by value")
)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{TC_ACT_UNSPEC, xdp_action},
        macros::{classifier, map, xdp},
        maps::Array,
        programs::{TcContext, XdpContext},
    };

    /// The one knock port of the floors.
    const PORT: u16 = 7000;
    /// Ethernet, IPv4 without options, then the L4 ports.
    const L4: usize = 14 + 20;

    #[xdp]
    fn xdp_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// `xdp_pass` at TC ingress: on to the next filter, as knockgate passes there.
    #[classifier]
    fn tc_pass(_ctx: TcContext) -> i32 {
        TC_ACT_UNSPEC
    }

    /// The destination port, for untagged TCP or UDP over IPv4 without options.
    #[inline(always)]
    fn dport(ctx: &XdpContext) -> Option<u16> {
        let (start, end) = (ctx.data(), ctx.data_end());
        if start + L4 + 4 > end {
            return None;
        }
        // SAFETY: the 38 bytes read here were checked above.
        #[expect(clippy::cast_ptr_alignment, reason = "16-bit fields at even offsets; XDP frame data starts 2-aligned")]
        unsafe {
            let p = start as *const u8;
            let ipv4 = *p.add(12).cast::<u16>() == 0x0800_u16.to_be() && *p.add(14) == 0x45;
            let proto = *p.add(23);
            (ipv4 && (proto == 6 || proto == 17)).then(|| u16::from_be(*p.add(L4 + 2).cast::<u16>()))
        }
    }

    /// Reads the port and compares it with the knock port: what every frame costs at least.
    #[xdp]
    fn port_floor(ctx: XdpContext) -> u32 {
        // DROP only so that the comparison is not optimised away; the benchmark sends this
        // program frames to other ports.
        if dport(&ctx) == Some(PORT) { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
    }

    /// Per-source knock progress for `knock_floor`, indexed by a hash of the source address.
    #[map]
    static FLOOR: Array<u64> = Array::with_max_entries(1 << 16, 0);

    /// A knock's least work: the port, then one read and one write of the source's progress
    /// (no check that the entry is the source's, no timeout, no second table, no event).
    #[xdp]
    fn knock_floor(ctx: XdpContext) -> u32 {
        if dport(&ctx) != Some(PORT) {
            return xdp_action::XDP_PASS;
        }
        // SAFETY: `dport` checked the frame up to the ports, past the source address at 26
        // (read as two 16-bit halves: it is 2-aligned).
        let src = unsafe {
            let p = ctx.data() as *const u16;
            u64::from(*p.add(13)) | u64::from(*p.add(14)) << 16
        };
        let slot = (src.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u32;
        if let Some(progress) = FLOOR.get_ptr_mut(slot) {
            // SAFETY: a value of this map, valid for the run.
            unsafe { *progress = (*progress).wrapping_add(1) };
        }
        xdp_action::XDP_PASS
    }

    /// Reads the frame's first byte without a bounds check: every verifier must reject it.
    /// The test of how knockd reports a rejection loads it; nothing attaches it.
    #[xdp]
    fn refused(ctx: XdpContext) -> u32 {
        // SAFETY: never runs: the verifier refuses the unchecked packet access, which is its
        // purpose. The read is volatile so that it is not optimised away.
        let first = unsafe { core::ptr::read_volatile(ctx.data() as *const u8) };
        if first == 0 { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}
