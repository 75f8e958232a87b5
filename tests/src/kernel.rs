//! The shipped XDP program loaded for `BPF_PROG_TEST_RUN`, with a config applied as the
//! daemon applies it, and the server's test addresses as its local addresses.

use std::path::Path;

use knock_common::Counter;
use knockd_user::{
    config::Config,
    kernel::doors::Doors,
    kernel::program::{KnockProgram, Limits},
};

/// `198.18.0.1` and `2001:db8::1`: the addresses knocks are sent to.
pub const SERVER_ADDRS: [&str; 2] = ["198.18.0.1", "2001:db8::1"];

/// Loads the program with `limits` and applies the knockd.conf text `config`.
#[must_use]
pub fn program_with(config: &str, limits: Limits) -> (KnockProgram, Doors) {
    let config = Config::parse(Path::new("test.conf"), config).expect("config");
    let mut p = KnockProgram::load(limits).expect("load the XDP program");
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
