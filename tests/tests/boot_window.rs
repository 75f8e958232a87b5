//! The boot window: knockd started before its interface exists waits for it, attaches while
//! it is still down and unaddressed, and from the first packet the interface accepts, an
//! unknocked SYN to a gated port gets no answer. At XDP, and at TC with
//! `KNOCKGATE_TEST_HOOK=tc` (as `cargo xtask test` runs it too).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use tests::{
    daemon::{bin, wait_for},
    netns::{NetPair, sh},
    scenario::{GATE, Scenario},
    service::{Echo, connect_from, opens},
};

const SERVICE: &str = "198.18.0.1:2222";

#[test]
fn an_interface_made_after_knockd_and_brought_up_under_syns_never_answers_one_unknocked() {
    let mut si_ci = (String::new(), String::new());
    let s = Scenario::start_after(GATE, &[], &[], |net, dir| {
        // The pair goes; it is made again, down and unaddressed, once knockd waits for it.
        sh(&format!("ip -n {} link del {}", net.server, net.server_if));
        let (server, client) = (net.server.clone(), net.client.clone());
        let (si, ci) = (net.server_if.clone(), net.client_if.clone());
        si_ci = (si.clone(), ci.clone());
        let log = dir.join("knockd.log");
        std::thread::spawn(move || {
            // Wide: knockd starts slowly in an emulated guest.
            let waiting = format!("] waiting up to 60s for interface {si} to exist\n");
            wait_for(Duration::from_mins(2), || std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&waiting)));
            sh(&format!("ip link add {si} netns {server} type veth peer name {ci} netns {client}"));
        });
    });
    let (si, ci) = si_ci;
    let (server, client) = (s.net.server.clone(), s.net.client.clone());
    assert!(s.log().contains(&format!("] waiting up to 60s for interface {si} to exist\n")), "{}", s.log());
    let up = sh(&format!("ip -n {server} -o link show {si}"));
    assert!(!String::from_utf8_lossy(&up.stdout).contains(",UP"), "attached while still down");
    let _echo = Echo::start(&server, 2222);
    // The client side first, then the client tries to connect without a break while the
    // server's interface comes up and gets its addresses.
    sh(&format!(
        "ip -n {client} link set lo up && ip -n {client} addr add 198.18.0.2/24 dev {ci} && \
         ip -n {client} addr add 2001:db8::2/64 dev {ci} nodad && ip -n {client} link set {ci} up"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (tries, answered) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let prober = {
        let (stop, tries, answered, client) =
            (Arc::clone(&stop), Arc::clone(&tries), Arc::clone(&answered), client.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                tries.fetch_add(1, Ordering::Relaxed);
                if connect_from(&client, "198.18.0.2", SERVICE, Duration::from_millis(100)).is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    sh(&format!(
        "ip -n {server} link set lo up && ip -n {server} link set {si} up && \
         ip -n {server} addr add 198.18.0.1/24 dev {si} && ip -n {server} addr add 2001:db8::1/64 dev {si} nodad"
    ));
    let addressed = Instant::now();
    let before = tries.load(Ordering::Relaxed);
    while addressed.elapsed() < Duration::from_secs(3) || tries.load(Ordering::Relaxed) < before + 20 {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();
    assert_eq!(
        answered.load(Ordering::Relaxed),
        0,
        "an unknocked SYN was answered ({} tries)",
        tries.load(Ordering::Relaxed)
    );
    // The SYNs did reach the server: a knock opens the same port.
    sh(&s.net.in_client(&format!("{} {} 7000 8000 9000", bin("knock").display(), NetPair::SERVER_V4)));
    assert!(wait_for(Duration::from_secs(10), || opens(&client, "198.18.0.2", SERVICE)), "{}", s.log());
}
