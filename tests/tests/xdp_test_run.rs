//! The shipped XDP program in the kernel, driven with crafted frames through
//! `BPF_PROG_TEST_RUN` (needs root: `CAP_BPF` and `CAP_NET_ADMIN`). The program uses
//! `bpf_loop` (kernel 5.17+); the machine runs 6.18.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{fmt::Write as _, net::IpAddr};

use knock_common::{Counter, XDP_PASS};
use knockd_user::kernel::program::KnockProgram;
use tests::{
    frame::{ACK, FrameBuilder, SYN},
    kernel::{counter, hook, program, test_runs},
};

const SERVER: &str = "198.18.0.1";
const CLIENT: &str = "198.18.0.2";
const OTHER: &str = "198.18.0.3";

const CONFIG: &str = "\
[openSSH]
sequence = 7000,8000,9000
seq_timeout = 5
command = true
tcpflags = syn,!ack
[udp]
sequence = 7100:udp,7200:udp
seq_timeout = 5
command = true
[short]
sequence = 7301,7302
seq_timeout = 1
command = true
tcpflags = syn
";

fn stage(p: &KnockProgram, src: &str, door: u8) -> Option<u8> {
    let ip: IpAddr = src.parse().unwrap();
    p.attempt(ip, door).expect("read PROGRESS").map(|a| a.stage)
}

fn syn(p: &KnockProgram, src: &str, port: u16) {
    run(p, &FrameBuilder::tcp(src, SERVER, port, SYN).build());
}

fn run(p: &KnockProgram, frame: &[u8]) {
    assert_eq!(p.test_run(hook(), frame).expect("test_run"), XDP_PASS, "knockgate never drops in observe mode");
}

#[test]
fn sequence_advances_and_opens() {
    let p = program(CONFIG);
    syn(&p, CLIENT, 7000);
    assert_eq!(stage(&p, CLIENT, 0), Some(1));
    syn(&p, CLIENT, 8000);
    assert_eq!(stage(&p, CLIENT, 0), Some(2));
    syn(&p, CLIENT, 9000);
    assert_eq!(stage(&p, CLIENT, 0), None, "a completed attempt is removed");
    assert_eq!(counter(&p, Counter::Opens), 1);
}

#[test]
fn wrong_sequence_port_resets_and_non_sequence_port_is_ignored() {
    let p = program(CONFIG);
    syn(&p, CLIENT, 7000);
    syn(&p, CLIENT, 22);
    syn(&p, CLIENT, 8001);
    assert_eq!(stage(&p, CLIENT, 0), Some(1), "ports in no sequence are ignored");
    syn(&p, CLIENT, 9000);
    assert_eq!(stage(&p, CLIENT, 0), None, "a sequence port out of order resets");
    assert_eq!(counter(&p, Counter::Resets), 1);
    assert_eq!(counter(&p, Counter::Opens), 0);
}

#[test]
fn flags_mismatch_is_ignored() {
    let p = program(CONFIG);
    syn(&p, CLIENT, 7000);
    run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 9000, ACK).build());
    run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 9000, SYN | ACK).build());
    assert_eq!(stage(&p, CLIENT, 0), Some(1));
    run(&p, &FrameBuilder::tcp(OTHER, SERVER, 7000, ACK).build());
    assert_eq!(stage(&p, OTHER, 0), None, "a first knock with the wrong flags starts nothing");
}

#[test]
fn udp_steps() {
    let p = program(CONFIG);
    run(&p, &FrameBuilder::udp(CLIENT, SERVER, 7100).build());
    assert_eq!(stage(&p, CLIENT, 1), Some(1));
    run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 7200, SYN).build());
    assert_eq!(stage(&p, CLIENT, 1), Some(1), "TCP to a UDP step's port is no knock");
    run(&p, &FrameBuilder::udp(CLIENT, SERVER, 7200).build());
    assert_eq!(stage(&p, CLIENT, 1), None);
    assert_eq!(counter(&p, Counter::Opens), 1);
}

#[test]
fn sources_are_independent() {
    let p = program(CONFIG);
    syn(&p, CLIENT, 7000);
    syn(&p, OTHER, 7000);
    syn(&p, OTHER, 9000);
    syn(&p, CLIENT, 8000);
    assert_eq!(stage(&p, CLIENT, 0), Some(2));
    assert_eq!(stage(&p, OTHER, 0), None);
}

#[test]
fn knocks_to_other_hosts_do_not_count() {
    let p = program(CONFIG);
    run(&p, &FrameBuilder::tcp(CLIENT, "198.18.0.77", 7000, SYN).build());
    assert_eq!(stage(&p, CLIENT, 0), None);
}

#[test]
fn a_knock_at_another_doors_port_resets() {
    // knockd's rule (reference §2.4, "7001 7201 7002 7003 fails"): 7201 is B's port, so it
    // breaks A's attempt, though A's sequence does not name it.
    let p = program("[a]\nsequence = 7001,7002,7003\n[b]\nsequence = 7201,7202\n");
    syn(&p, CLIENT, 7001);
    syn(&p, CLIENT, 7201);
    assert_eq!(stage(&p, CLIENT, 0), None, "a reset");
    assert_eq!(stage(&p, CLIENT, 1), Some(1), "the resetting knock starts b (knockgate's fix)");
    syn(&p, CLIENT, 7002);
    syn(&p, CLIENT, 7003);
    assert_eq!(counter(&p, Counter::Opens), 0);
    // With more than two doors `knockgate` hands knocks to `knockgate_doors` (tail call);
    // a port in two sequences advances both, and resets the third door's attempt.
    let p = program("[a]\nsequence = 7000,8000\n[b]\nsequence = 7000,9000,9100\n[c]\nsequence = 7500,7501\n");
    syn(&p, CLIENT, 7500);
    assert_eq!(stage(&p, CLIENT, 2), Some(1));
    syn(&p, CLIENT, 7000);
    assert_eq!((stage(&p, CLIENT, 0), stage(&p, CLIENT, 1)), (Some(1), Some(1)));
    assert_eq!(stage(&p, CLIENT, 2), None, "c reset by a port of a and b");
    syn(&p, CLIENT, 9000);
    assert_eq!((stage(&p, CLIENT, 0), stage(&p, CLIENT, 1)), (None, Some(2)));
    syn(&p, CLIENT, 9100);
    assert_eq!(counter(&p, Counter::Opens), 1);
    assert_eq!(counter(&p, Counter::MapErrors), 0, "the tail call to knockgate_doors was taken");
}

#[test]
fn with_32_doors_a_knock_at_door_31_resets_door_0_and_nothing_else() {
    // A knock visits only the doors naming its port and the doors where its source has an
    // attempt (`knock_common::visit`); knockd's reset rule must hold across all 32 slots.
    let mut config = String::new();
    for i in 0..32 {
        let port = 10_000 + i * 10;
        writeln!(config, "[d{i}]\nsequence = {port},{},{}", port + 1, port + 2).unwrap();
    }
    let p = program(&config);
    syn(&p, CLIENT, 10_000);
    syn(&p, OTHER, 10_000);
    syn(&p, OTHER, 10_001);
    assert_eq!(stage(&p, CLIENT, 0), Some(1));
    // Door 31's second port: door 31 has no attempt to advance, so it ignores the knock,
    // and it is a door's port, so this source's attempt at door 0 is reset.
    syn(&p, CLIENT, 10_311);
    assert_eq!((stage(&p, CLIENT, 0), stage(&p, CLIENT, 31)), (None, None));
    assert_eq!(stage(&p, OTHER, 0), Some(2), "another source's attempt is untouched");
    // Door 31's first port starts door 31 and resets door 0 again; then door 31 opens.
    syn(&p, CLIENT, 10_000);
    syn(&p, CLIENT, 10_310);
    assert_eq!((stage(&p, CLIENT, 0), stage(&p, CLIENT, 31)), (None, Some(1)));
    syn(&p, CLIENT, 10_311);
    syn(&p, CLIENT, 10_312);
    assert_eq!(counter(&p, Counter::Opens), 1);
    assert_eq!(counter(&p, Counter::Resets), 2);
    syn(&p, OTHER, 10_002);
    assert_eq!(counter(&p, Counter::Opens), 2, "the other source opens door 0");
    assert_eq!(counter(&p, Counter::MapErrors), 0);
}

#[test]
fn a_knock_at_another_doors_port_ends_an_attempt_unless_its_flags_do_not_count() {
    // The door knocked has no attempt and the other door's attempt can only end: both are
    // matched inline (`end_attempt` for the other door), and knockd's rules hold there too.
    let p = program(
        "[a]\nsequence = 7000,7001,7002\nseq_timeout = 1\ntcpflags = syn\n[b]\nsequence = 8000,8001\nseq_timeout = 5\n",
    );
    syn(&p, CLIENT, 7000);
    run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 8001, ACK).build());
    assert_eq!(stage(&p, CLIENT, 0), Some(1), "an ACK fails door a's flags: ignored there");
    syn(&p, CLIENT, 8001);
    assert_eq!(stage(&p, CLIENT, 0), None);
    assert_eq!(counter(&p, Counter::Resets), 1);
    // An attempt past its timeout ends as a timeout, not a reset.
    syn(&p, CLIENT, 7000);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    syn(&p, CLIENT, 8001);
    assert_eq!(stage(&p, CLIENT, 0), None);
    assert_eq!((counter(&p, Counter::Resets), counter(&p, Counter::Timeouts)), (1, 1));
    let doors = p.door_counters().unwrap();
    assert_eq!((doors[0].resets, doors[0].timeouts), (1, 1));
}

#[test]
fn a_knock_ending_attempts_at_two_other_doors_goes_to_knockgate_doors() {
    // Doors a and b share their first port, so one source has attempts at both: more doors
    // than `knockgate` matches inline, so `knockgate_doors` visits all three.
    let p = program("[a]\nsequence = 7000,7001,7002\n[b]\nsequence = 7000,8001,8002\n[c]\nsequence = 9000,9001\n");
    syn(&p, CLIENT, 7000);
    syn(&p, OTHER, 7000);
    assert_eq!((stage(&p, CLIENT, 0), stage(&p, CLIENT, 1)), (Some(1), Some(1)));
    syn(&p, CLIENT, 9001);
    assert_eq!((stage(&p, CLIENT, 0), stage(&p, CLIENT, 1), stage(&p, CLIENT, 2)), (None, None, None));
    assert_eq!((stage(&p, OTHER, 0), stage(&p, OTHER, 1)), (Some(1), Some(1)), "another source's attempts stay");
    assert_eq!(counter(&p, Counter::Resets), 2);
    assert_eq!(counter(&p, Counter::MapErrors), 0, "the tail call to knockgate_doors was taken");
    syn(&p, OTHER, 8001);
    syn(&p, OTHER, 8002);
    assert_eq!(counter(&p, Counter::Opens), 1, "door b opens for the other source");
}

#[test]
fn an_expired_attempt_counts_one_timeout_however_many_knocks_pass_it_by() {
    // Two other doors' attempts, so `knockgate_doors` matches: an ACK fails their flags and
    // leaves them; the SYN after it ends them, each counted once as a timeout.
    let p = program(
        "[a]\nsequence = 7000,7001,7002\nseq_timeout = 1\ntcpflags = syn\n[b]\nsequence = 7000,8001,8002\nseq_timeout = 1\ntcpflags = syn\n[c]\nsequence = 9000,9001\n",
    );
    syn(&p, CLIENT, 7000);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for _ in 0..3 {
        run(&p, &FrameBuilder::tcp(CLIENT, SERVER, 9001, ACK).build());
    }
    assert_eq!(counter(&p, Counter::Timeouts), 0, "ignored knocks leave the expired attempts uncounted");
    syn(&p, CLIENT, 9001);
    assert_eq!((stage(&p, CLIENT, 0), stage(&p, CLIENT, 1)), (None, None));
    assert_eq!((counter(&p, Counter::Timeouts), counter(&p, Counter::Resets)), (2, 0));
}

#[test]
fn local_addresses_are_replaced_and_capped() {
    let mut p = program(CONFIG);
    // 70 addresses: 198.18.1.0 ..= 198.18.1.69; only the first MAX_LOCAL_ADDRS count.
    let addrs: Vec<IpAddr> = (0..70u8).map(|i| IpAddr::from([198, 18, 1, i])).collect();
    p.set_local_addrs(&addrs).unwrap();
    let last_counted = format!("198.18.1.{}", knock_common::MAX_LOCAL_ADDRS - 1);
    let first_ignored = format!("198.18.1.{}", knock_common::MAX_LOCAL_ADDRS);
    run(&p, &FrameBuilder::tcp(CLIENT, &last_counted, 7000, SYN).build());
    assert_eq!(stage(&p, CLIENT, 0), Some(1));
    run(&p, &FrameBuilder::tcp(OTHER, &first_ignored, 7000, SYN).build());
    assert_eq!(stage(&p, OTHER, 0), None, "beyond the table: not counted (fail closed)");
    // The old server address was replaced: knocks to it no longer count.
    syn(&p, "198.18.0.4", 7000);
    assert_eq!(stage(&p, "198.18.0.4", 0), None);
    p.set_local_addrs(&[SERVER.parse().unwrap()]).unwrap();
    syn(&p, "198.18.0.4", 7000);
    assert_eq!(stage(&p, "198.18.0.4", 0), Some(1));
}

#[test]
fn timeout_from_first_knock() {
    let p = program(CONFIG);
    syn(&p, CLIENT, 7301);
    assert_eq!(stage(&p, CLIENT, 2), Some(1));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    syn(&p, CLIENT, 7302);
    assert_eq!(counter(&p, Counter::Opens), 0, "seq_timeout = 1 s has passed");
    assert_eq!(counter(&p, Counter::Timeouts), 1);
}

#[test]
fn ipv6_and_vlan_knocks() {
    let p = program(CONFIG);
    let c6 = "2001:db8::2";
    for port in [7000, 8000, 9000] {
        run(&p, &FrameBuilder::tcp(c6, "2001:db8::1", port, SYN).v6_ext(&[0, 60]).build());
    }
    for port in [7000, 8000, 9000] {
        run(&p, &FrameBuilder::tcp(CLIENT, SERVER, port, SYN).vlan(10).vlan(20).build());
    }
    assert_eq!(counter(&p, Counter::Opens), 2);
}

#[test]
fn short_and_odd_frames_pass_untouched() {
    let p = program(CONFIG);
    let full = FrameBuilder::tcp(CLIENT, SERVER, 7000, SYN).ip_options(3).build();
    // Every truncation from the minimum test-run size (14 bytes) up to the last byte.
    for len in (14..full.len()).filter(|&len| test_runs(&full[..len])) {
        run(&p, &full[..len]);
    }
    assert_eq!(stage(&p, CLIENT, 0), None, "a truncated knock never counts");
    run(&p, &full);
    assert_eq!(stage(&p, CLIENT, 0), Some(1), "IPv4 options are skipped by IHL");
    // Non-IP, and other IP protocols.
    let mut arp = full.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    run(&p, &arp);
    run(&p, &FrameBuilder::proto(OTHER, SERVER, 1).build());
    assert!(counter(&p, Counter::ParseErrors) > 0);
}
