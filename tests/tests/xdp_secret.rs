//! Secret-keyed doors in the kernel (`BPF_PROG_TEST_RUN`): the shared test vectors open the
//! door for their source only, once per window, within windows w-1..w+1, and random guesses
//! open nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use knock_common::{
    AddrKey, Counter, XDP_DROP, XDP_PASS,
    secret::derive::{Params, Secret, VECTORS, Vector},
};
use knockd_user::{
    clock::Clock,
    clock::monotonic_ns,
    config::{Config, Knock, Proto},
    kernel::doors::Doors,
    kernel::hooks::Hook,
    kernel::program::{KnockProgram, Limits},
};
use tests::{
    frame::{FrameBuilder, SYN},
    kernel::{SERVER_ADDRS, counter, hook},
};

/// A key file of the vector's secret, mode 0600, removed on drop.
struct KeyFile(PathBuf);

impl KeyFile {
    fn new(v: &Vector, name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("knockgate-xdp-secret-{}-{name}.key", std::process::id()));
        std::fs::write(&path, format!("{}\n", v.secret)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self(path)
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).expect("remove the key file");
    }
}

/// The clock of `v.unix_secs`, as the daemon would see it right now.
fn clock_at(unix_secs: u64) -> Clock {
    Clock { unix_ns: u128::from(unix_secs) * 1_000_000_000, mono_ns: monotonic_ns() }
}

/// The program with one secret door (`v`'s key and parameters) gating 22/tcp, its windows
/// installed as of `unix_secs`.
fn program(v: &Vector, key: &KeyFile, unix_secs: u64) -> (KnockProgram, Doors) {
    let proto = if v.udp { "udp" } else { "tcp" };
    let text = format!(
        "[s]\nsecret_file = {}\nknock_length = {}\nwindow = {}\nprotocol = {proto}\nseq_timeout = 10\ngate = 22/tcp\ngate_timeout = 600\n",
        key.0.display(),
        v.length,
        v.window_secs
    );
    let config = Config::parse(std::path::Path::new("t.conf"), &text).expect("config");
    let mut p = KnockProgram::load(Limits::default()).expect("load the XDP program");
    if hook() == Hook::Tc {
        p.load_tc().expect("load the TC programs");
    }
    let mut doors = Doors::new();
    doors.install(config.doors);
    p.apply_at(&doors, &clock_at(unix_secs)).expect("apply");
    let addrs: Vec<_> = SERVER_ADDRS.iter().map(|a| a.parse().unwrap()).collect();
    p.set_local_addrs(&addrs).unwrap();
    (p, doors)
}

fn server_for(src: &str) -> &'static str {
    if src.contains(':') { SERVER_ADDRS[1] } else { SERVER_ADDRS[0] }
}

fn hit(p: &KnockProgram, v: &Vector, src: &str, port: u16) -> u32 {
    let f = if v.udp {
        FrameBuilder::udp(src, server_for(src), port)
    } else {
        FrameBuilder::tcp(src, server_for(src), port, SYN)
    };
    p.test_run(hook(), &f.build()).expect("test_run")
}

fn knock(p: &KnockProgram, v: &Vector, src: &str, ports: &[u16]) {
    for &port in ports {
        hit(p, v, src, port);
    }
}

fn open_for(p: &KnockProgram, src: &str) -> bool {
    p.allowed_until(src.parse().unwrap(), Knock { port: 22, proto: Proto::Tcp }).unwrap().is_some()
}

fn ssh(p: &KnockProgram, src: &str) -> u32 {
    p.test_run(hook(), &FrameBuilder::tcp(src, server_for(src), 22, SYN).build()).unwrap()
}

#[test]
fn the_shared_vectors_open_for_their_source_and_not_for_another() {
    for (i, v) in VECTORS.iter().enumerate() {
        let key = KeyFile::new(v, &format!("v{i}"));
        let (p, _doors) = program(v, &key, v.unix_secs);
        let other = if v.source.contains(':') { "2001:db8::99" } else { "198.18.0.99" };
        knock(&p, v, other, v.ports);
        assert!(!open_for(&p, other), "vector {i}: another source's replay opens nothing");
        assert_eq!(ssh(&p, other), XDP_DROP);
        knock(&p, v, v.source, v.ports);
        assert!(open_for(&p, v.source), "vector {i}: the vector's ports open the door for its source");
        assert_eq!(ssh(&p, v.source), XDP_PASS, "vector {i}: through both programs, the gate lets it in");
        assert_eq!(ssh(&p, other), XDP_DROP, "vector {i}: and only it");
        assert_eq!(counter(&p, Counter::Opens), 1, "vector {i}");
    }
}

#[test]
fn a_window_s_sequence_opens_once() {
    let v = &VECTORS[0];
    let key = KeyFile::new(v, "once");
    let (p, _doors) = program(v, &key, v.unix_secs);
    knock(&p, v, v.source, v.ports);
    assert!(open_for(&p, v.source));
    knock(&p, v, v.source, v.ports);
    assert_eq!(counter(&p, Counter::Replays), 1);
    assert_eq!(counter(&p, Counter::Opens), 1);
}

#[test]
fn windows_w_minus_1_and_w_plus_1_are_accepted_and_w_minus_2_is_not() {
    let v = &VECTORS[0];
    let (secret, params): (Secret, Params) = (v.secret(), v.params());
    let key = KeyFile::new(v, "skew");
    let w = params.window_at(v.unix_secs);
    let src = v.source_key();
    for (offset, opens) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
        let (p, _doors) = program(v, &key, v.unix_secs);
        let ports = secret.sequence(&params, &src, w.checked_add_signed(offset).unwrap());
        knock(&p, v, v.source, &ports);
        assert_eq!(open_for(&p, v.source), opens, "window w{offset:+}");
    }
}

#[test]
fn a_wrong_port_in_between_resets_the_attempt() {
    let v = &VECTORS[0];
    let key = KeyFile::new(v, "reset");
    let (p, _doors) = program(v, &key, v.unix_secs);
    let wrong = v.ports[2].wrapping_add(1).max(1);
    knock(&p, v, v.source, &[v.ports[0], v.ports[1], wrong, v.ports[2], v.ports[3]]);
    assert!(!open_for(&p, v.source), "any other port between the steps ends the attempt");
    // A retransmitted SYN of the step just matched does not.
    knock(&p, v, v.source, &[v.ports[0], v.ports[1], v.ports[1], v.ports[2], v.ports[3]]);
    assert!(open_for(&p, v.source));
}

#[test]
fn a_hundred_thousand_random_guesses_from_random_sources_open_nothing() {
    let v = &VECTORS[0];
    let key = KeyFile::new(v, "guess");
    let (p, _doors) = program(v, &key, v.unix_secs);
    // xorshift: reproducible.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..100_000 {
        let r = next().to_le_bytes();
        let src = format!("198.18.{}.{}", r[0] % 200 + 10, r[1]);
        // The window's first port (any observer sees it), then three guessed ports.
        let guess = |i: usize| u16::from_le_bytes([r[i], r[i + 1]]);
        let guesses = [v.ports[0], guess(2), guess(4), guess(6)];
        knock(&p, v, &src, &guesses);
    }
    assert_eq!(counter(&p, Counter::Opens), 0);
    assert_eq!(hit(&p, v, "198.18.250.1", 22), XDP_DROP, "the gate is still shut");
}

#[test]
fn a_window_s_key_lapses_in_the_kernel_with_no_daemon_to_remove_it() {
    let v = &VECTORS[0];
    let key = KeyFile::new(v, "lapse");
    let params = v.params();
    let window = u64::from(params.window_secs);
    let w = params.window_at(v.unix_secs);
    // Installed 1 s before window w ends: window w-1 is accepted for 1 s more, then never.
    let installed_at = (w + 1) * window - 1;
    let (p, _doors) = program(v, &key, installed_at);
    let early = "198.18.0.5";
    let for_early = v.secret().sequence(&params, &AddrKey::v4([198, 18, 0, 5]), w - 1);
    knock(&p, v, early, &for_early);
    assert!(open_for(&p, early), "window w-1 is accepted in time");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let old = v.secret().sequence(&params, &v.source_key(), w - 1);
    knock(&p, v, v.source, &old);
    assert!(!open_for(&p, v.source), "window w-1's key has lapsed, though nothing removed it");
    let current = v.secret().sequence(&params, &v.source_key(), w);
    knock(&p, v, v.source, &current);
    assert!(open_for(&p, v.source), "window w is still accepted");
}
