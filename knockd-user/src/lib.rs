//! knockgate's daemon as a library: configuration, the kernel side, commands and logging.
//! The `knockd` binary is a thin shell around it; tests drive the same code.

pub mod attach;
pub mod check;
pub mod command;
pub mod config;
pub mod daemon;
pub mod doors;
pub mod floor;
pub mod journal;
pub mod keeper;
pub mod kernel;
pub mod log;
pub mod metrics;
pub mod netlink;
pub mod one_time;
pub mod pin;
pub mod rejection;
pub mod secret_door;
pub mod snapshot;
pub mod spec;
pub mod state;
pub mod toml_form;

/// The XDP program as built by `build.rs`; tests load exactly these bytes.
pub static KNOCK_EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/knock-ebpf"));

/// Reference programs: an empty `XDP_PASS` program (function `xdp_pass`), the benchmark's
/// baseline, with the benchmark's floors, and `refused`, which every verifier must reject (the
/// test of how a rejection is reported). knockd never loads them.
pub static XDP_PASS_EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-pass"));
