//! The in-kernel gate end to end: no firewall rule at all, a real TCP service in the server
//! namespace, real connections from the client namespace, IPv4 and IPv6.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{io::ErrorKind, time::Duration};

use tests::{
    daemon::bin,
    scenario::Scenario,
    service::{Echo, connect, echo_ok},
};

const GATE: &str = "
[ssh]
\tsequence = 7000,8000,9000
\tseq_timeout = 5
\ttcpflags = syn,!ack
\tgate = 2222/tcp
\tgate_timeout = 2
[stealthy]
\tsequence = 7100,7200
\tstealth = yes
";

fn gate_round(s: &Scenario, server: &str, knock_args: &str) {
    let target = if server.contains(':') { format!("[{server}]:2222") } else { format!("{server}:2222") };
    let before = connect(&s.net.client, &target);
    assert!(
        matches!(&before, Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock),
        "before the knock the SYN must vanish (timeout), got {before:?}"
    );
    let knock = bin("knock");
    tests::netns::sh(&s.net.in_client(&format!("{} {knock_args} {server} 7000 8000 9000", knock.display())));
    let mut conn = connect(&s.net.client, &target).expect("connect after the knock");
    assert!(echo_ok(&mut conn));
    // Past gate_timeout (2 s): the open connection lives on, a new one is refused entry.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(echo_ok(&mut conn), "established connection cut at expiry");
    let after = connect(&s.net.client, &target);
    assert!(after.is_err(), "new connection after expiry: {after:?}");
}

#[test]
fn gate_ipv4_without_any_firewall_rule() {
    let s = Scenario::start(GATE);
    let _echo = Echo::start(&s.net.server, 2222);
    let rules = tests::netns::sh(&s.net.in_server("iptables -S INPUT")).stdout;
    assert_eq!(String::from_utf8_lossy(&rules).trim(), "-P INPUT ACCEPT", "no firewall rule is involved");
    gate_round(&s, "198.18.0.1", "-4");
    assert!(s.logged("198.18.0.2: ssh: gate open for 2s: 2222/tcp"), "{}", s.log());
}

#[test]
fn gate_ipv6() {
    let s = Scenario::start(GATE);
    let _echo = Echo::start(&s.net.server, 2222);
    gate_round(&s, "2001:db8::1", "-6");
}

#[test]
fn stealth_knocks_get_no_answer() {
    let s = Scenario::start(GATE);
    // Nothing listens on 7000 or 7100: a normal knock port answers RST (refused) ...
    let plain = connect(&s.net.client, "198.18.0.1:7000");
    assert!(matches!(&plain, Err(e) if e.kind() == ErrorKind::ConnectionRefused), "{plain:?}");
    // ... a stealth door's port answers nothing at all.
    let hidden = connect(&s.net.client, "198.18.0.1:7100");
    assert!(
        matches!(&hidden, Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock),
        "{hidden:?}"
    );
    tests::netns::sh(&s.net.in_client(&format!("{} 198.18.0.1 7100 7200", bin("knock").display())));
    assert!(s.logged("198.18.0.2: stealthy: OPEN SESAME"), "{}", s.log());
}
