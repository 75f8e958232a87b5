//! knockgate's daemon as a library; the `knockd` binary is a thin shell around it, and tests
//! drive the same code. Arrows run one way: `config` is parsing and the model and imports
//! nothing else of the crate; `kernel`, `observe`, `commands` and `fleet` read its model
//! (`observe` reads the kernel's pins, `commands` and `fleet` log and count through
//! `observe`); `daemon` sits on top.

pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod kernel;
pub mod observe;

#[cfg(test)]
mod layers;

/// The XDP program as built by `build.rs`; tests load exactly these bytes.
pub static KNOCK_EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/knock-ebpf"));

/// Reference programs: an empty `XDP_PASS` program (function `xdp_pass`), the benchmark's
/// baseline, with the benchmark's floors, and `refused`, which every verifier must reject (the
/// test of how a rejection is reported). knockd never loads them.
pub static XDP_PASS_EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-pass"));
