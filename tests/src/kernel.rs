//! The shipped program loaded for `BPF_PROG_TEST_RUN` (at the hook `hook` names), with a config applied as the
//! daemon applies it, and the server's test addresses as its local addresses.

use std::path::Path;

use knock_common::Counter;
use knockd_user::{
    config::Config,
    kernel::doors::Doors,
    kernel::hooks::{Hook, Hooked},
    kernel::program::{KnockProgram, Limits},
};

/// The hook the suites run the program at: TC ingress with `KNOCKGATE_TEST_HOOK=tc`
/// (`BPF_PROG_TEST_RUN` there, and knockd started with `--attach tc` by `Scenario`; `cargo
/// xtask test` runs those suites at both hooks), XDP otherwise.
#[must_use]
pub fn hook() -> Hook {
    match std::env::var("KNOCKGATE_TEST_HOOK").as_deref() {
        Ok("tc") => Hook::Tc,
        Ok("xdp") | Err(_) => Hook::Xdp,
        Ok(other) => panic!("KNOCKGATE_TEST_HOOK={other}: xdp or tc"),
    }
}

/// `198.18.0.1` and `2001:db8::1`: the addresses knocks are sent to.
pub const SERVER_ADDRS: [&str; 2] = ["198.18.0.1", "2001:db8::1"];

/// Where knockd's TC attachment goes on this kernel: TCX from Linux 6.6, `cls_bpf` below.
#[must_use]
pub fn tc_hooked() -> Hooked {
    if knockd_user::kernel::tc::has_tcx() { Hooked::Tcx } else { Hooked::ClsBpf }
}

/// Whether `BPF_PROG_TEST_RUN` takes `frame` at `hook()`: at TC the kernel builds an skb of
/// it, and refuses an IPv4 or IPv6 frame cut short within its fixed IP header. Real ingress
/// can deliver one to TC; the XDP run of the same parse covers those frames.
#[must_use]
pub fn test_runs(frame: &[u8]) -> bool {
    if hook() == Hook::Xdp {
        return true;
    }
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.len() >= 14 + 20,
        Some([0x86, 0xdd]) => frame.len() >= 14 + 40,
        Some(_) => true,
        None => false,
    }
}

/// Loads the program with `limits` and applies the knockd.conf text `config`.
#[must_use]
pub fn program_with(config: &str, limits: Limits) -> (KnockProgram, Doors) {
    let config = Config::parse(Path::new("test.conf"), config).expect("config");
    let mut p = KnockProgram::load(limits).expect("load the XDP program");
    if hook() == Hook::Tc {
        p.load_tc().expect("load the TC programs");
    }
    let mut doors = Doors::new();
    doors.install(config.doors);
    p.apply(&doors).expect("apply the config");
    let addrs: Vec<_> = SERVER_ADDRS.iter().map(|a| a.parse().expect("address")).collect();
    p.set_local_addrs(&addrs).expect("local addresses");
    (p, doors)
}

/// As `program_with`, with the default table sizes.
#[must_use]
pub fn program(config: &str) -> KnockProgram {
    program_with(config, Limits::default()).0
}

/// A counter summed over CPUs.
#[must_use]
pub fn counter(p: &KnockProgram, c: Counter) -> u64 {
    p.counters().expect("counters").into_iter().find(|(k, _)| *k == c).map_or(0, |(_, v)| v)
}
