//! Conformance: knockd's matching rules (with its defects fixed, see README) checked on a
//! running daemon with crafted frames from spoofed sources, one case per rule.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::time::Duration;

use nix::sys::signal::Signal;
use tests::{
    daemon::wait_for,
    frame::{ACK, FrameBuilder, SYN},
    scenario::{SERVER, Scenario},
};

const SSH: &str = "
[ssh]
\tsequence = 7000,8000,9000
\tseq_timeout = 5
\ttcpflags = syn
";

#[test]
fn advance_opens() {
    let s = Scenario::start(SSH);
    s.syns("198.18.1.1", &[7000, 8000, 9000]);
    assert!(s.logged("198.18.1.1: ssh: OPEN SESAME"), "{}", s.log());
}

#[test]
fn wrong_sequence_port_resets() {
    let s = Scenario::start(SSH);
    s.syns("198.18.1.2", &[7000, 9000, 8000, 9000]);
    assert!(s.not_logged("198.18.1.2: ssh: OPEN SESAME"), "{}", s.log());
}

#[test]
fn reset_packet_is_a_first_knock() {
    let s = Scenario::start(SSH);
    s.syns("198.18.1.3", &[7000, 8000, 7000, 8000, 9000]);
    assert!(s.logged("198.18.1.3: ssh: OPEN SESAME"), "{}", s.log());
}

#[test]
fn duplicate_knocks_are_tolerated() {
    let s = Scenario::start(SSH);
    s.syns("198.18.1.4", &[7000, 7000, 8000, 8000, 8000, 9000]);
    assert!(s.logged("198.18.1.4: ssh: OPEN SESAME"), "{}", s.log());
    assert_eq!(s.count("198.18.1.4: ssh: OPEN SESAME"), 1);
}

#[test]
fn flags_mismatch_is_ignored() {
    let s = Scenario::start(SSH);
    s.syns("198.18.1.5", &[7000]);
    s.frame(&FrameBuilder::tcp("198.18.1.5", SERVER, 9000, ACK));
    s.syns("198.18.1.5", &[8000, 9000]);
    assert!(s.logged("198.18.1.5: ssh: OPEN SESAME"), "{}", s.log());
    // An ACK as a first knock starts nothing.
    for p in [7000, 8000, 9000] {
        s.frame(&FrameBuilder::tcp("198.18.1.6", SERVER, p, ACK));
    }
    assert!(s.not_logged("198.18.1.6: ssh: Stage 1"));
}

#[test]
fn udp_steps() {
    let s = Scenario::start("[u]\n\tsequence = 7100:udp,7200:udp,7300:tcp\n\tseq_timeout = 5\n");
    s.frame(&FrameBuilder::udp("198.18.1.7", SERVER, 7100));
    s.frame(&FrameBuilder::udp("198.18.1.7", SERVER, 7200));
    s.frame(&FrameBuilder::tcp("198.18.1.7", SERVER, 7300, SYN));
    assert!(s.logged("198.18.1.7: u: OPEN SESAME"), "{}", s.log());
}

#[test]
fn shared_prefixes_all_open() {
    let s = Scenario::start("[p1]\n\tsequence = 7301,7302\n[p2]\n\tsequence = 7301,7302,7303\n");
    s.syns("198.18.1.8", &[7301, 7302, 7303]);
    assert!(s.logged("198.18.1.8: p1: OPEN SESAME"), "{}", s.log());
    assert!(s.logged("198.18.1.8: p2: OPEN SESAME"), "{}", s.log());
}

#[test]
fn a_thousand_interleaved_knockers() {
    let s = Scenario::start(SSH);
    let sources: Vec<String> = (0..1000).map(|i| format!("198.18.{}.{}", 20 + i / 250, 1 + i % 250)).collect();
    for port in [7000, 8000, 9000] {
        for src in &sources {
            s.syns(src, &[port]);
        }
    }
    assert!(
        wait_for(Duration::from_secs(10), || s.log().matches(": ssh: OPEN SESAME\n").count() == 1000),
        "opens: {}",
        s.log().matches(": ssh: OPEN SESAME\n").count()
    );
}

#[test]
fn spoofed_first_knock_flood_never_erases_a_legitimate_attempt() {
    // A small first-knock table, flooded many times over between the legitimate 2nd and 3rd knock.
    let s = Scenario::start(&format!("\tFirstKnockTableSize = 1024\n{SSH}"));
    s.syns("198.18.1.9", &[7000, 8000]);
    for i in 0u32..20_000 {
        let src = format!("198.19.{}.{}", (i >> 8) & 0xff, i & 0xff);
        s.syns(&src, &[7000]);
    }
    s.syns("198.18.1.9", &[9000]);
    assert!(s.logged("198.18.1.9: ssh: OPEN SESAME"), "{}", s.log());
    // Stage lines were rate-limited: far fewer than the 20,000 first knocks.
    assert!(s.log().matches(": ssh: Stage 1\n").count() < 2_000);
}

#[test]
fn target_door_counts_only_knocks_to_its_address() {
    let s = Scenario::start("[t]\n\tsequence = 7400,7401\n\ttarget = 198.18.0.77\n[local]\n\tsequence = 7400,7401\n");
    for p in [7400, 7401] {
        s.frame(&FrameBuilder::tcp("198.18.1.10", "198.18.0.77", p, SYN));
    }
    assert!(s.logged("198.18.1.10: t: OPEN SESAME"), "{}", s.log());
    assert!(s.not_logged("198.18.1.10: local: OPEN SESAME"), "198.18.0.77 is not the server's address");
    s.syns("198.18.1.11", &[7400, 7401]);
    assert!(s.logged("198.18.1.11: local: OPEN SESAME"));
    assert!(s.not_logged("198.18.1.11: t: OPEN SESAME"));
}

#[test]
fn ipv6_with_extension_headers() {
    let s = Scenario::start(&format!("{SSH}\tcommand = echo %IP% >> {{DIR}}/v6\n"));
    for p in [7000, 8000, 9000] {
        s.frame(&FrameBuilder::tcp("2001:db8::99", "2001:db8::1", p, SYN).v6_ext(&[0, 60]));
    }
    assert!(s.logged("2001:db8::99: ssh: OPEN SESAME"), "{}", s.log());
    let out = s.dir.path().join("v6");
    assert!(wait_for(Duration::from_secs(5), || std::fs::read_to_string(&out).is_ok_and(|t| t == "2001:db8::99\n")));
}

#[test]
fn vlan_tagged_knocks() {
    let s = Scenario::start(SSH);
    for p in [7000, 8000, 9000] {
        s.frame(&FrameBuilder::tcp("198.18.1.12", SERVER, p, SYN).vlan(42));
    }
    assert!(s.logged("198.18.1.12: ssh: OPEN SESAME"), "{}", s.log());
    for p in [7000, 8000, 9000] {
        s.frame(&FrameBuilder::tcp("198.18.1.13", SERVER, p, SYN).vlan(100).vlan(42));
    }
    assert!(s.logged("198.18.1.13: ssh: OPEN SESAME"), "QinQ; {}", s.log());
}

#[test]
fn timeout_is_logged_when_it_happens() {
    let s = Scenario::start("[slow]\n\tsequence = 7500,7501,7502\n\tseq_timeout = 1\n");
    s.syns("198.18.1.14", &[7500, 7501]);
    // No further packet: the line must come from the timeout itself.
    assert!(s.logged("198.18.1.14: slow: sequence timeout (stage 2)"), "{}", s.log());
    s.syns("198.18.1.14", &[7502]);
    assert!(s.not_logged("198.18.1.14: slow: OPEN SESAME"));
    // And the daemon still serves a knock made in time.
    s.syns("198.18.1.14", &[7500, 7501, 7502]);
    assert!(s.logged("198.18.1.14: slow: OPEN SESAME"), "{}", s.log());
}

#[test]
fn one_time_sequences_through_exhaustion() {
    let s = Scenario::start_full(
        &format!("[ots]\n\tone_time_sequences = {{DIR}}/ots\n{SSH}"),
        &[],
        &[("ots", "7601,7602\n 7611,7612\n")],
    );
    s.syns("198.18.1.15", &[7601, 7602]);
    assert!(s.logged("198.18.1.15: ots: OPEN SESAME"), "{}", s.log());
    // Used: the same sequence no longer opens.
    s.syns("198.18.1.16", &[7601, 7602]);
    assert!(s.not_logged("198.18.1.16: ots: OPEN SESAME"));
    // The next line is in force, for IPv6 too.
    for p in [7611, 7612] {
        s.frame(&FrameBuilder::tcp("2001:db8::16", "2001:db8::1", p, SYN));
    }
    assert!(s.logged("2001:db8::16: ots: OPEN SESAME"), "{}", s.log());
    assert!(s.logged("no more sequences left in the one time sequences file for door ots --> disabling the door"));
    assert_eq!(std::fs::read_to_string(s.dir.path().join("ots")).unwrap(), "#601,7602\n#7611,7612\n");
    // The daemon keeps serving the other doors.
    s.syns("198.18.1.17", &[7000, 8000, 9000]);
    assert!(s.logged("198.18.1.17: ssh: OPEN SESAME"), "{}", s.log());
}

#[test]
fn reload_good_keeps_unchanged_attempts_and_bad_is_refused() {
    let s = Scenario::start(&format!("{SSH}[old]\n\tsequence = 7700,7701\n"));
    s.syns("198.18.1.18", &[7000, 8000]);
    s.rewrite_config(&format!("{SSH}[new]\n\tsequence = 7800,7801\n"));
    s.signal(Signal::SIGHUP);
    assert!(s.logged("config reloaded: 2 door(s), 1 unchanged"), "{}", s.log());
    s.syns("198.18.1.18", &[9000]);
    assert!(s.logged("198.18.1.18: ssh: OPEN SESAME"), "attempt kept across reload; {}", s.log());
    s.syns("198.18.1.19", &[7800, 7801]);
    assert!(s.logged("198.18.1.19: new: OPEN SESAME"));
    s.syns("198.18.1.19", &[7700, 7701]);
    assert!(s.not_logged("198.18.1.19: old: OPEN SESAME"));
    // A bad config is refused and the running one stays in force.
    s.rewrite_config("[broken]\n\tsequence = 7000,99999\n");
    s.signal(Signal::SIGHUP);
    let conf = s.conf.display().to_string();
    assert!(
        s.logged(&format!(
            "error: {conf}:4: port 99999 in '99999' is out of range 1-65535 --> keeping the running configuration"
        )),
        "{}",
        s.log()
    );
    s.syns("198.18.1.20", &[7800, 7801]);
    assert!(s.logged("198.18.1.20: new: OPEN SESAME"));
}

#[test]
fn sigterm_runs_pending_stop_commands() {
    let mut s = Scenario::start(
        "[oc]\n\tsequence = 7900\n\tstart_command = echo start %IP% >> {DIR}/cmds\n\tcmd_timeout = 3600\n\tstop_command = echo stop %IP% >> {DIR}/cmds\n",
    );
    s.syns("198.18.1.21", &[7900]);
    let cmds = s.dir.path().join("cmds");
    assert!(wait_for(Duration::from_secs(5), || std::fs::read_to_string(&cmds).is_ok_and(|t| t.contains("start"))));
    let status = s.daemon.stop().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(std::fs::read_to_string(&cmds).unwrap(), "start 198.18.1.21\nstop 198.18.1.21\n");
}

#[test]
fn interface_address_changes_are_followed() {
    let s = Scenario::start(SSH);
    let extra = "198.18.0.50";
    for p in [7000, 8000, 9000] {
        s.frame(&FrameBuilder::tcp("198.18.1.22", extra, p, SYN));
    }
    assert!(s.not_logged("198.18.1.22: ssh: OPEN SESAME"), "not yet an address of the host");
    tests::netns::sh(&format!("ip -n {} addr add {extra}/32 dev {}", s.net.server, s.net.server_if));
    // Addresses are re-read every 2 s.
    std::thread::sleep(Duration::from_millis(2500));
    for p in [7000, 8000, 9000] {
        s.frame(&FrameBuilder::tcp("198.18.1.22", extra, p, SYN));
    }
    assert!(s.logged("198.18.1.22: ssh: OPEN SESAME"), "{}", s.log());
}
