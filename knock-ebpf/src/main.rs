//! The knockgate XDP program: matches TCP/UDP knocks against the doors in `DOORS`, keeps
//! per (source, door) progress in `FIRST_KNOCKS`/`PROGRESS`, reports completed sequences on
//! `EVENTS`, and enforces the in-kernel gate (`PORTS`, `ALLOW`). Three programs: `knockgate`,
//! attached, and `knockgate_doors` and `knockgate_secret`, which it tail-calls for more than one
//! plain door and for secret doors.
//!
//! It never copies a packet to user space and never changes one. It drops new connections to
//! gated ports from sources without an allowance, the knocks of stealth doors, and, while
//! any gate is configured, frames it cannot parse (they could hide a gated port). A frame it
//! cannot parse can never complete a sequence, so nothing fails open.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        clippy::inline_always,
        reason = "in BPF a call costs a frame of the 512-byte stack and the verifier's patience"
    )
)]
#![cfg_attr(
    target_arch = "bpf",
    expect(clippy::needless_pass_by_value, reason = "aya's #[xdp] hands the context over by value")
)]

#[cfg(target_arch = "bpf")]
mod cpu;
#[cfg(target_arch = "bpf")]
mod doors;
#[cfg(target_arch = "bpf")]
mod hook;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
