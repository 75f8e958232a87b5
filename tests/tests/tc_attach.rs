//! knockgate next to another XDP program: with `Attach = auto` (the default) it comes up at TC
//! ingress (TCX from Linux 6.6, `cls_bpf` on `clsact` below) behind a bare foreign program and
//! behind xdp-filter (libxdp's dispatcher); the gate holds, knocks open it, a SIGKILL leaves
//! it shut, the foreign program can go, and `--unload` removes only knockgate's part.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{process::Command, time::Duration};

use knockd_user::kernel::{attach::hooked_now, hooks::Hooked, pin::PinDir};
use tests::{
    daemon::{bin, wait_for},
    kernel::tc_hooked,
    netns::{NetPair, in_netns, sh},
    pinned::{TEST_BPFFS, mount_test_bpffs, xdp_ids},
    scenario::{GATE, Scenario},
    service::{Echo, opens, shut_out},
};

const SERVICE: &str = "198.18.0.1:2222";
const SERVICE6: &str = "[2001:db8::1]:2222";

/// The hook this kernel's TC attachment takes.
fn tc_hook() -> (Hooked, &'static str) {
    let hooked = tc_hooked();
    (hooked, hooked.name())
}

fn hooked(s: &Scenario) -> Option<Hooked> {
    let pins = PinDir::new(&s.state.bpf_dir, &s.net.server_if);
    in_netns(&s.net.server, || hooked_now(&s.net.server_if, &pins))
}

/// `knock ARGS 7000 8000 9000` from the client (`ARGS`: options, then the host).
fn knock(s: &Scenario, args: &str) {
    sh(&s.net.in_client(&format!("{} {args} 7000 8000 9000", bin("knock").display())));
}

/// The benchmark's empty program, attached by someone else (a bare XDP program, in generic
/// mode, as `ip link set dev IFACE xdpgeneric obj ...` would).
fn foreign(net: &NetPair) -> aya::Ebpf {
    in_netns(&net.server, || {
        let mut ebpf = aya::Ebpf::load(knockd_user::XDP_PASS_EBPF).unwrap();
        let prog: &mut aya::programs::Xdp = ebpf.program_mut("xdp_pass").unwrap().try_into().unwrap();
        prog.load().unwrap();
        prog.attach(&net.server_if, aya::programs::XdpMode::Skb).unwrap();
        ebpf
    })
}

#[test]
fn behind_a_foreign_xdp_program_the_gate_runs_at_tc_and_outlives_a_sigkill_and_the_program() {
    let mut other = None;
    let mut s = Scenario::start_after(GATE, &[], &[], |net, _| other = Some(foreign(net)));
    let (hook, name) = tc_hook();
    let iface = s.net.server_if.clone();
    let line = format!("] attached to {iface} at {name} (another program has its XDP hook); pinned in ");
    assert!(s.log().contains(&line), "{}", s.log());
    let theirs = xdp_ids(&s.net.server, &iface);
    assert_eq!(theirs.len(), 1, "the foreign program keeps the XDP hook");
    assert_eq!(hooked(&s), Some(hook));
    let _echo = Echo::start(&s.net.server, 2222);
    let client = NetPair::CLIENT_V4;
    assert!(shut_out(&s.net.client, client, SERVICE), "gated before the knock");
    assert!(shut_out(&s.net.client, NetPair::CLIENT_V6, SERVICE6), "gated for IPv6 too");
    knock(&s, NetPair::SERVER_V4);
    assert!(wait_for(Duration::from_secs(5), || opens(&s.net.client, client, SERVICE)), "{}", s.log());
    assert!(shut_out(&s.net.client, NetPair::CLIENT_V6, SERVICE6), "the IPv6 source did not knock");
    knock(&s, &format!("-6 {}", NetPair::SERVER_V6));
    assert!(wait_for(Duration::from_secs(5), || opens(&s.net.client, NetPair::CLIENT_V6, SERVICE6)), "{}", s.log());

    // SIGKILL: the TC program stays and gates on its own.
    sh(&format!("ip -n {} addr add 198.18.0.3/24 dev {}", s.net.client, s.net.client_if));
    s.daemon.kill();
    assert!(shut_out(&s.net.client, "198.18.0.3", SERVICE), "the gate holds with no daemon");
    assert!(opens(&s.net.client, client, SERVICE), "and its allowances");
    // The foreign program goes: knockgate still enforces, at TC.
    drop(other.take());
    assert!(xdp_ids(&s.net.server, &iface).is_empty());
    assert!(shut_out(&s.net.client, "198.18.0.3", SERVICE), "the gate holds without the program in front");
    assert_eq!(hooked(&s), Some(hook));

    // A restart adopts the TC attachment (the interface has no XDP program now, but knockgate's
    // own TC attachment is there: auto keeps XDP for a free interface, and the TC one goes).
    s.restart(&[]);
    assert!(wait_for(Duration::from_secs(10), || hooked(&s) == Some(Hooked::Xdp)), "{}", s.log());
    assert!(shut_out(&s.net.client, "198.18.0.3", SERVICE), "the gate held through the move to XDP");
    assert!(opens(&s.net.client, client, SERVICE), "the allowance carried on");
    s.daemon.stop();

    // `--unload` takes knockgate away, and nothing else.
    let out = Command::new("ip")
        .args(["netns", "exec", &s.net.server])
        .arg(bin("knockd"))
        .args(["--unload", "-i", &iface, "-c"])
        .arg(&s.conf)
        .args(s.state.args())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(hooked(&s), None);
    assert!(opens(&s.net.client, "198.18.0.3", SERVICE), "unloaded: the port is plain again");
}

/// xdp-filter (xdp-tools, libxdp's dispatcher) on the server's interface, dropping one source;
/// unloaded on drop. Its state goes on the tests' bpffs: `ip netns exec` mounts a /sys of its
/// own, whose bpffs would go (and with its pins, the filter) when the command ends.
struct XdpFilter {
    server: String,
    iface: String,
}

impl XdpFilter {
    fn run(server: &str, args: &str) {
        sh(&format!("ip netns exec {server} env LIBXDP_BPFFS={TEST_BPFFS} xdp-filter {args}"));
    }

    fn load(net: &NetPair, drop_source: &str) -> Self {
        mount_test_bpffs();
        Self::run(&net.server, &format!("load -m skb {}", net.server_if));
        Self::run(&net.server, &format!("ip {drop_source} -m src"));
        Self { server: net.server.clone(), iface: net.server_if.clone() }
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        // Not `sh`: no panic in a drop. Should the unload fail (the namespace gone), its pins go.
        let unload = format!(
            "ip netns exec {} env LIBXDP_BPFFS={TEST_BPFFS} xdp-filter unload {}; rm -rf {TEST_BPFFS}/xdp",
            self.server, self.iface
        );
        if let Err(e) = Command::new("/bin/sh").arg("-c").arg(&unload).status() {
            eprintln!("{unload}: {e}");
        }
    }
}

#[test]
fn behind_xdp_filter_what_it_drops_never_reaches_the_knock_tables() {
    let mut filter = None;
    let s = Scenario::start_after(GATE, &[], &[], |net, _| filter = Some(XdpFilter::load(net, "198.18.0.3")));
    let (hook, name) = tc_hook();
    let iface = s.net.server_if.clone();
    let line = format!("] attached to {iface} at {name} (another program has its XDP hook); pinned in ");
    assert!(s.log().contains(&line), "{}", s.log());
    assert_eq!(hooked(&s), Some(hook));
    let _echo = Echo::start(&s.net.server, 2222);
    sh(&format!("ip -n {} addr add 198.18.0.3/24 dev {}", s.net.client, s.net.client_if));
    assert!(shut_out(&s.net.client, NetPair::CLIENT_V4, SERVICE));
    knock(&s, NetPair::SERVER_V4);
    assert!(wait_for(Duration::from_secs(5), || opens(&s.net.client, NetPair::CLIENT_V4, SERVICE)), "{}", s.log());
    assert!(s.logged("198.18.0.2: ssh: OPEN SESAME"), "{}", s.log());
    // xdp-filter drops 198.18.0.3: its knocks never reach knockgate, and nothing opens.
    s.syns("198.18.0.3", &[7000, 8000, 9000]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!s.log().contains("198.18.0.3"), "{}", s.log());
    assert!(!opens(&s.net.client, "198.18.0.3", SERVICE));
    drop(filter);
}
