//! End to end: knockd in one network namespace, real clients in another, joined by a veth
//! pair (198.18.0.0/15), real iptables in the server namespace.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{path::Path, process::Command, time::Duration};

use tests::{
    daemon::{Daemon, bin, wait_for},
    netns::{NetPair, sh},
    pinned::PinnedState,
};

const RULE: &str = "-A INPUT -s 198.18.0.2/32 -p tcp -m tcp --dport 22 -j ACCEPT";
const SYN_RULE: &str = "-A INPUT -s 198.18.0.2/32 -p tcp -m tcp --dport 22 --tcp-flags FIN,SYN,RST,ACK SYN -j ACCEPT";

/// knockd's own example (`examples/knockd.conf`), verbatim apart from the log path.
fn knockd_example(log: &Path) -> String {
    let example = include_str!("../../examples/knockd.conf");
    assert!(example.contains(LOG), "the example logs to {LOG}");
    example.replace(LOG, &log.display().to_string())
}

/// The log path in knockd's example.
const LOG: &str = "/var/log/knockd.log";

/// Fields drop in order: the daemon stops first, then its pins go, then the namespaces.
struct Setup {
    daemon: Daemon,
    _state: Option<PinnedState>,
    net: NetPair,
    _dir: tempfile::TempDir,
}

fn setup(config: impl FnOnce(&Path) -> String) -> Setup {
    setup_daemon(&bin("knockd"), config)
}

/// Runs `knockd` (ours or Debian's) with the config in the server namespace.
fn setup_daemon(knockd: &Path, config: impl FnOnce(&Path) -> String) -> Setup {
    let net = NetPair::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("knockd.log");
    let conf = dir.path().join("knockd.conf");
    std::fs::write(&conf, config(&log)).unwrap();
    // knockgate's pins and journal go to directories of the test's own.
    let state = (knockd == bin("knockd")).then(PinnedState::new);
    let state_args = state.as_ref().map(PinnedState::args).unwrap_or_default();
    let mut args = vec!["-i", &net.server_if, "-c", conf.to_str().unwrap()];
    args.extend(state_args.iter().map(String::as_str));
    let daemon = Daemon::start(&net.server, knockd, &args, &log);
    Setup { daemon, _state: state, net, _dir: dir }
}

impl Setup {
    fn rules(&self) -> String {
        String::from_utf8(sh(&self.net.in_server("iptables -S INPUT")).stdout).unwrap()
    }

    fn knock(&self, client: &Path, args: &str) {
        sh(&self.net.in_client(&format!("{} {args}", client.display())));
    }

    fn wait_rule(&self, rule: &str, present: bool, limit: Duration) -> bool {
        wait_for(limit, || self.rules().contains(rule) == present)
    }
}

#[test]
fn project_knock_opens_and_closes() {
    let s = setup(knockd_example);
    let knock = bin("knock");
    assert!(!s.rules().contains(RULE));
    s.knock(&knock, "-v 198.18.0.1 7000 8000 9000");
    assert!(s.wait_rule(RULE, true, Duration::from_secs(5)), "door did not open; log:\n{}", s.daemon.log_text());
    s.knock(&knock, "198.18.0.1 9000 8000 7000");
    assert!(s.wait_rule(RULE, false, Duration::from_secs(5)), "door did not close; log:\n{}", s.daemon.log_text());
    let log = s.daemon.log_text();
    for want in [
        "] 198.18.0.2: openSSH: Stage 1\n",
        "] 198.18.0.2: openSSH: OPEN SESAME\n",
        "] openSSH: running command: /sbin/iptables -A INPUT -s 198.18.0.2 -p tcp --dport 22 -j ACCEPT\n",
        "] 198.18.0.2: closeSSH: OPEN SESAME\n",
        "] closeSSH: running command: /sbin/iptables -D INPUT -s 198.18.0.2 -p tcp --dport 22 -j ACCEPT\n",
    ] {
        assert!(log.contains(want), "log lacks {want:?}:\n{log}");
    }
}

#[test]
fn debian_knock_opens_and_closes() {
    let s = setup(knockd_example);
    let knock = Path::new("/usr/bin/knock");
    assert!(knock.exists(), "Debian's knock client (package knockd) is missing: run `cargo xtask test`");
    s.knock(knock, "-v 198.18.0.1 7000 8000 9000");
    assert!(s.wait_rule(RULE, true, Duration::from_secs(5)), "door did not open; log:\n{}", s.daemon.log_text());
    s.knock(knock, "198.18.0.1 9000 8000 7000");
    assert!(s.wait_rule(RULE, false, Duration::from_secs(5)), "door did not close; log:\n{}", s.daemon.log_text());
}

#[test]
fn project_knock_opens_and_closes_debian_knockd() {
    let knockd = Path::new("/usr/sbin/knockd");
    assert!(knockd.exists(), "Debian's knockd (package knockd) is missing: run `cargo xtask test`");
    // The same config file, run by the reference daemon.
    let s = setup_daemon(knockd, knockd_example);
    let knock = bin("knock");
    s.knock(&knock, "-v 198.18.0.1 7000 8000 9000");
    assert!(
        s.wait_rule(RULE, true, Duration::from_secs(5)),
        "Debian knockd did not open; log:\n{}",
        s.daemon.log_text()
    );
    s.knock(&knock, "198.18.0.1 9000 8000 7000");
    assert!(
        s.wait_rule(RULE, false, Duration::from_secs(5)),
        "Debian knockd did not close; log:\n{}",
        s.daemon.log_text()
    );
}

#[test]
fn wrong_order_opens_nothing() {
    let s = setup(knockd_example);
    let knock = bin("knock");
    s.knock(&knock, "198.18.0.1 7000 9000 8000");
    std::thread::sleep(Duration::from_millis(800));
    assert!(!s.rules().contains(RULE));
    assert!(!s.daemon.log_text().contains("OPEN SESAME"), "{}", s.daemon.log_text());
}

#[test]
fn start_command_then_stop_after_cmd_timeout() {
    let s = setup(|log| {
        format!(
            "[options]
\tlogfile = {}
[openclose]
\tsequence = 7000,8000,9000
\tseq_timeout = 5
\ttcpflags = syn
\tstart_command = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --syn --dport 22 -j ACCEPT
\tcmd_timeout = 2
\tstop_command = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --syn --dport 22 -j ACCEPT
",
            log.display()
        )
    });
    s.knock(&bin("knock"), "-d 20 198.18.0.1 7000 8000 9000");
    assert!(s.wait_rule(SYN_RULE, true, Duration::from_secs(2)), "no rule; log:\n{}", s.daemon.log_text());
    std::thread::sleep(Duration::from_secs(1));
    assert!(s.rules().contains(SYN_RULE), "closed before cmd_timeout");
    assert!(
        s.wait_rule(SYN_RULE, false, Duration::from_secs(4)),
        "not closed after cmd_timeout:\n{}",
        s.daemon.log_text()
    );
    assert!(s.daemon.log_text().contains("] 198.18.0.2: openclose: command timeout\n"));
}

#[test]
fn ipv6_udp_knock_and_clean_shutdown() {
    let mut s = setup(|log| {
        format!(
            "[options]
\tlogfile = {log}
[v6]
\tsequence = 7100:udp,7200,7300:udp
\tseq_timeout = 5
\tcommand = echo opened %IP% >> {log}.cmd
",
            log = log.display()
        )
    });
    s.knock(&bin("knock"), "-6 2001:db8::1 7100:udp 7200 7300:udp");
    let cmd_out = s.daemon.log.with_extension("log.cmd");
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(&cmd_out)
            .is_ok_and(|t| t == "opened 2001:db8::2\n")),
        "no v6 open; log:\n{}",
        s.daemon.log_text()
    );
    let status = s.daemon.stop().expect("daemon status");
    assert!(status.success(), "knockd exited with {status}");
    let link = Command::new("ip").args(["-n", &s.net.server, "link", "show", &s.net.server_if]).output().unwrap();
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "XDP still attached after SIGTERM");
    assert!(s.daemon.log_text().ends_with("shutting down\n"));
}

#[test]
fn bad_config_fails_before_attaching() {
    let net = NetPair::new();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    std::fs::write(&conf, "[d]\nsequence = 7000,70000\n").unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &net.server])
        .arg(bin("knockd"))
        .args(["-i", &net.server_if, "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2: port 70000 in '70000' is out of range 1-65535", conf.display())), "{err}");
    let link = Command::new("ip").args(["-n", &net.server, "link", "show", &net.server_if]).output().unwrap();
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"));
}

#[test]
fn background_mode_writes_and_removes_the_pidfile() {
    let net = NetPair::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("knockd.log");
    let pid = dir.path().join("knockd.pid");
    let conf = dir.path().join("knockd.conf");
    std::fs::write(&conf, format!("[options]\nlogfile = {}\n[d]\nsequence = 7000\n", log.display())).unwrap();
    // -d returns at once, leaving the daemon running in the background.
    let state = PinnedState::new();
    let status = Command::new("ip")
        .args(["netns", "exec", &net.server])
        .arg(bin("knockd"))
        .args(["-d", "-i", &net.server_if, "-c"])
        .arg(&conf)
        .arg("-p")
        .arg(&pid)
        .args(state.args())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_for(Duration::from_secs(10), || { std::fs::read_to_string(&pid).is_ok_and(|t| t.ends_with('\n')) }));
    let text = std::fs::read_to_string(&pid).unwrap();
    let daemon = nix::unistd::Pid::from_raw(text.trim().parse().unwrap());
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("listening on"))
    }));
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(wait_for(Duration::from_secs(10), || !pid.exists()), "pidfile not removed");
    assert!(std::fs::read_to_string(&log).unwrap().ends_with("shutting down\n"));
}
