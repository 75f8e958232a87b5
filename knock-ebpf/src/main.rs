//! The knockgate XDP program: matches TCP/UDP knocks against the doors in `DOORS`, keeps
//! per (source, door) progress in `PROGRESS`, and reports completed sequences on `EVENTS`.
//!
//! It never copies a packet to user space and never drops or changes one: every frame
//! gets `XDP_PASS`. A frame it cannot parse is counted and passed; it can never complete
//! a sequence, so nothing fails open.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

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
