//! Every way knockd can end leaves the gate shut: SIGKILL, SIGTERM, a restart, an upgrade, an
//! interface made anew. The XDP link and maps are pinned (on a host bpffs of the test's own),
//! so the kernel keeps enforcing while no daemon runs, and the next daemon adopts the state.
//! The restarts under fire and the interface made anew are run at TC ingress too (TCX, or
//! `cls_bpf` below Linux 6.6), where the pins and the swaps differ.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use knock_common::{Counter, STATE_VERSION};
use knockd_user::kernel::{
    hooks::{Hook, Hooked},
    netlink, tc,
};
use tests::{
    daemon::{bin, pace, wait_for},
    netns::{NetPair, in_netns, sh},
    pinned::{PinnedState, xdp_ids},
    scenario::{GATE, Scenario},
    service::{self, Echo, connect_from},
};

const SERVICE: &str = "198.18.0.1:2222";

/// Extra client addresses: sources that knock (spoofed frames) and connect (real sockets).
fn add_client_addrs(s: &Scenario, last_octets: &[u8]) {
    for n in last_octets {
        sh(&format!("ip -n {} addr add 198.18.0.{n}/24 dev {}", s.net.client, s.net.client_if));
    }
}

fn opens(s: &Scenario, src: &str) -> bool {
    service::opens(&s.net.client, src, SERVICE)
}

fn shut_out(s: &Scenario, src: &str) -> bool {
    service::shut_out(&s.net.client, src, SERVICE)
}

/// knockd's arguments that put it at `hook`.
fn attach_args(hook: Hook) -> [&'static str; 2] {
    ["--attach", if hook == Hook::Tc { "tc" } else { "xdp" }]
}

/// The ids of the programs at `hook` on interface `index` (named `iface`), as the kernel
/// reports them now.
fn programs_at(hook: Hook, iface: &str, index: u32) -> Vec<u32> {
    match hook {
        Hook::Xdp => netlink::xdp_programs(index).expect("rtnetlink"),
        Hook::Tc => tc::ingress_programs(iface, index).expect("TC programs"),
    }
    .unwrap_or_default()
}

#[test]
fn the_gate_outlives_a_sigkill_and_a_restart_adopts_it() {
    let mut s = Scenario::start(GATE);
    add_client_addrs(&s, &[3, 4, 5]);
    let _echo = Echo::start(&s.net.server, 2222);
    let iface = s.net.server_if.clone();
    sh(&s.net.in_client(&format!("{} 198.18.0.1 7000 8000 9000", bin("knock").display())));
    assert!(opens(&s, "198.18.0.2"), "the knocker is let in; log:\n{}", s.log());
    assert!(!s.log().contains("warning: BpfDir"), "the host's bpffs is not private to the daemon: {}", s.log());
    // .3 is half way through its knock when knockd dies.
    s.syns("198.18.0.3", &[7000, 8000]);
    assert!(s.logged("198.18.0.3: ssh: Stage 2"), "{}", s.log());
    let program = xdp_ids(&s.net.server, &iface);

    s.daemon.kill();
    assert_eq!(xdp_ids(&s.net.server, &iface), program, "the program stays attached after SIGKILL");
    assert!(shut_out(&s, "198.18.0.5"), "a source that never knocked stays out while no daemon runs");
    assert!(opens(&s, "198.18.0.2"), "the knocker keeps its allowance while no daemon runs");
    // A knock completed while no daemon runs still opens the gate (its commands cannot run).
    s.syns("198.18.0.4", &[7000, 8000, 9000]);
    assert!(opens(&s, "198.18.0.4"), "a knock with no daemon running opens");
    let opens_before = s.state.counter(&iface, Counter::Opens);
    assert_eq!(opens_before, 2, "the kernel counted both opens");

    s.restart(&[]);
    assert!(s.log().contains(&format!("took over {iface} from the pinned program {}", program[0])), "{}", s.log());
    assert!(s.log().contains("3 door(s) keep their attempts"), "{}", s.log());
    assert_ne!(xdp_ids(&s.net.server, &iface), program, "the restart swapped in its own program");
    // Attempts, allowances and counters carried over.
    s.syns("198.18.0.3", &[9000]);
    assert!(
        s.logged("198.18.0.3: ssh: OPEN SESAME"),
        "the attempt begun before the SIGKILL completes; log:\n{}",
        s.log()
    );
    assert!(opens(&s, "198.18.0.3"));
    assert!(opens(&s, "198.18.0.2") && opens(&s, "198.18.0.4"), "allowances survive the restart");
    assert!(shut_out(&s, "198.18.0.5"));
    assert_eq!(s.state.counter(&iface, Counter::Opens), opens_before + 1, "counters carry over");
}

/// Whether an unknocked source ever got in, and whether the interface was ever without a
/// program, while the daemon is restarted and upgraded.
struct UnderFire {
    stop: Arc<AtomicBool>,
    tries: Arc<AtomicU64>,
    let_in: Arc<AtomicU64>,
    bare: Arc<AtomicU64>,
    checks: Arc<AtomicU64>,
    programs: Arc<std::sync::Mutex<Vec<u32>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UnderFire {
    fn start(s: &Scenario, hook: Hook) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tries, let_in, bare) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let programs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let checks = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        // Four connecting threads, so that a SYN is in flight nearly all the time.
        for _ in 0..4 {
            let (stop, tries, let_in, client) =
                (Arc::clone(&stop), Arc::clone(&tries), Arc::clone(&let_in), s.net.client.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    tries.fetch_add(1, Ordering::Relaxed);
                    if connect_from(&client, "198.18.0.3", SERVICE, Duration::from_millis(100)).is_ok() {
                        let_in.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        {
            let (stop, bare, checks, programs, server, iface) = (
                Arc::clone(&stop),
                Arc::clone(&bare),
                Arc::clone(&checks),
                Arc::clone(&programs),
                s.net.server.clone(),
                s.net.server_if.clone(),
            );
            threads.push(std::thread::spawn(move || {
                in_netns(&server, || {
                    let index = netlink::ifindex(&iface).expect("interface");
                    while !stop.load(Ordering::Relaxed) {
                        let ids = programs_at(hook, &iface, index);
                        checks.fetch_add(1, Ordering::Relaxed);
                        match ids.as_slice() {
                            [] => {
                                bare.fetch_add(1, Ordering::Relaxed);
                            }
                            [id] => {
                                let mut seen = programs.lock().unwrap();
                                if seen.last() != Some(id) {
                                    seen.push(*id);
                                }
                            }
                            more => panic!("several programs at once: {more:?}"),
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
            }));
        }
        Self { stop, tries, let_in, bare, checks, programs, threads }
    }

    /// Stops the threads; returns (connection tries, let in, checks of the interface, checks
    /// that found no program, programs seen in turn).
    fn finish(self) -> (u64, u64, u64, u64, Vec<u32>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let programs = self.programs.lock().unwrap().clone();
        (
            self.tries.load(Ordering::Relaxed),
            self.let_in.load(Ordering::Relaxed),
            self.checks.load(Ordering::Relaxed),
            self.bare.load(Ordering::Relaxed),
            programs,
        )
    }
}

#[test]
fn restarts_and_an_upgrade_under_fire_never_let_an_unknocked_source_in() {
    under_fire(Hook::Xdp);
}

#[test]
fn at_tc_restarts_and_an_upgrade_under_fire_never_let_an_unknocked_source_in() {
    under_fire(Hook::Tc);
}

fn under_fire(hook: Hook) {
    let attach = attach_args(hook);
    let mut s = Scenario::start_with(GATE, &attach);
    add_client_addrs(&s, &[3]);
    let _echo = Echo::start(&s.net.server, 2222);
    let iface = s.net.server_if.clone();
    sh(&s.net.in_client(&format!("{} 198.18.0.1 7000 8000 9000", bin("knock").display())));
    assert!(opens(&s, "198.18.0.2"));
    let fire = UnderFire::start(&s, hook);
    std::thread::sleep(Duration::from_millis(300));

    // SIGTERM: with a gate the program stays, and the log says how to remove it.
    s.daemon.stop();
    let at = if hook == Hook::Tc { "TC" } else { "XDP" };
    assert!(s.log().contains(&format!("the gate stays shut: the {at} program stays on {iface}")), "{}", s.log());
    assert!(s.log().contains(&format!("`knockd --unload -i {iface}` removes it")));
    std::thread::sleep(Duration::from_millis(300));
    s.restart(&attach);
    std::thread::sleep(Duration::from_millis(300));

    // SIGKILL, then a restart.
    s.daemon.kill();
    std::thread::sleep(Duration::from_millis(300));
    s.restart(&attach);
    std::thread::sleep(Duration::from_millis(300));

    // An upgrade to a build of another state layout: its maps are made anew, the allowances
    // carried over, the program swapped on the pinned link. (The old layout is played by this
    // build's maps, renamed.)
    s.daemon.kill();
    let old = s.state.pins(&iface).join(format!("maps-v{}", STATE_VERSION - 1));
    std::fs::rename(s.state.maps(&iface), &old).unwrap();
    s.restart(&attach);
    assert!(s.log().contains("carried 1 allowance(s) over from another build's state"), "{}", s.log());
    assert!(!old.exists(), "the old layout's maps are unpinned once carried over");
    std::thread::sleep(Duration::from_millis(300));

    let (tries, let_in, checks, bare, programs) = fire.finish();
    eprintln!(
        "under fire: {tries} connection attempts, {let_in} let in; {bare} of {checks} checks found no program; programs in turn {programs:?}"
    );
    assert!(tries > 80, "the unknocked source tried {tries} times");
    assert_eq!(let_in, 0, "an unknocked source got in {let_in} of {tries} times");
    assert_eq!(bare, 0, "the interface was without a program {bare} times");
    assert_eq!(programs.len(), 4, "a program per daemon, each swapped in on the pinned link: {programs:?}");
    if hook == Hook::Tc {
        assert!(xdp_ids(&s.net.server, &iface).is_empty(), "nothing at XDP");
    }
    assert!(opens(&s, "198.18.0.2"), "the knocker's allowance came through the upgrade");
}

/// A door whose commands write `start IP TIME` and `stop IP TIME` to `{DIR}/cmds`.
const COMMANDS: &str = "
[cmd]
\tsequence = 7000,8000,9000
\tseq_timeout = 30
\ttcpflags = syn
\tstart_command = echo start %IP% $(date +%s.%N) >> {DIR}/cmds
\tcmd_timeout = {CMD_TIMEOUT}
\tstop_command = echo stop %IP% $(date +%s.%N) >> {DIR}/cmds
";

/// `COMMANDS`' `cmd_timeout`: 3 s, longer than a restart of knockd takes (`pace`).
fn cmd_timeout() -> u64 {
    3 * pace()
}

fn commands_config() -> String {
    COMMANDS.replace("{CMD_TIMEOUT}", &cmd_timeout().to_string())
}

/// The `cmds` lines: (word, address, seconds).
fn commands(s: &Scenario) -> Vec<(String, String, f64)> {
    std::fs::read_to_string(s.dir.path().join("cmds"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].parse().unwrap())
        })
        .collect()
}

fn count(s: &Scenario, word: &str) -> usize {
    commands(s).iter().filter(|c| c.0 == word).count()
}

#[test]
fn after_a_sigkill_and_a_restart_the_stop_runs_on_time_once() {
    let mut s = Scenario::start(&commands_config());
    s.syns("198.18.0.2", &[7000, 8000, 9000]);
    assert!(wait_for(Duration::from_secs(5), || count(&s, "start") == 1), "{}", s.log());
    s.daemon.kill();
    s.restart(&[]);
    assert!(s.log().contains("1 pending stop command(s) in the journal, 0 overdue"), "{}", s.log());
    let timeout = cmd_timeout();
    assert!(wait_for(Duration::from_secs(timeout + 3), || count(&s, "stop") == 1), "{}", s.log());
    std::thread::sleep(Duration::from_secs(1));
    let c = commands(&s);
    assert_eq!(c.len(), 2, "once: {c:?}");
    let waited = c[1].2 - c[0].2;
    #[expect(clippy::cast_precision_loss, reason = "a few seconds")]
    let due = timeout as f64;
    // The journal keeps due times in whole milliseconds, and the two times come from two
    // processes, which in an emulated guest may run on vCPUs whose clocks differ by a few ms
    // (seen: 30.00 s for a 30 s cmd_timeout, a hair under): 10 ms of slack below.
    assert!(
        (due - 0.01..due + 1.5).contains(&waited),
        "the stop ran {waited:.3} s after the start (cmd_timeout {timeout})"
    );
}

#[test]
fn a_stop_that_fell_due_while_no_daemon_ran_runs_at_start_up() {
    let mut s = Scenario::start(&commands_config());
    s.syns("198.18.0.2", &[7000, 8000, 9000]);
    assert!(wait_for(Duration::from_secs(5), || count(&s, "start") == 1), "{}", s.log());
    s.daemon.kill();
    std::thread::sleep(Duration::from_millis(cmd_timeout() * 1000 + 500));
    assert_eq!(count(&s, "stop"), 0);
    s.restart(&[]);
    // From the moment it is up: how long its start-up took (the verifier) is not the point.
    let up = Instant::now();
    assert!(s.log().contains("1 pending stop command(s) in the journal, 1 overdue"), "{}", s.log());
    assert!(wait_for(Duration::from_secs(2), || count(&s, "stop") == 1), "{}", s.log());
    assert!(up.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_re_knock_after_a_restart_adds_no_second_rule() {
    let mut s = Scenario::start(
        "
[ssh]
\tsequence = 7000,8000,9000
\tseq_timeout = 30
\ttcpflags = syn
\tstart_command = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
\tcmd_timeout = 60
\tstop_command = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
",
    );
    let rules = |s: &Scenario| {
        String::from_utf8_lossy(&sh(&s.net.in_server("iptables -S INPUT")).stdout).matches("-s 198.18.0.2/32").count()
    };
    s.syns("198.18.0.2", &[7000, 8000, 9000]);
    assert!(wait_for(Duration::from_secs(5), || rules(&s) == 1), "{}", s.log());
    s.daemon.kill();
    s.restart(&[]);
    s.syns("198.18.0.2", &[7000, 8000, 9000]);
    assert!(s.logged("198.18.0.2: ssh: already open, closing postponed by 60s"), "{}", s.log());
    assert_eq!(rules(&s), 1, "one rule after the re-knock");
    // SIGTERM runs the stop that the first daemon journaled.
    s.daemon.stop();
    assert_eq!(rules(&s), 0, "{}", s.log());
}

#[test]
fn a_corrupt_journal_is_reported_and_its_readable_entries_kept() {
    let mut s = Scenario::start(&commands_config());
    s.daemon.stop();
    let journal = s.state.journal(&s.net.server_if);
    let out = s.dir.path().join("cmds");
    let good = format!(
        "{{\"add\":{{\"door\":\"cmd\",\"ip\":\"198.18.0.9\",\"due_ms\":1,\"stop\":\"echo stop 198.18.0.9 0 >> {}\"}}}}",
        out.display()
    );
    std::fs::write(&journal, format!("garbage\n{good}\n{{\"done\":{{\"do")).unwrap();
    s.restart(&[]);
    let log = s.log();
    assert!(
        log.contains(&format!("error: {}:1: unreadable journal entry skipped: \"garbage\"", journal.display())),
        "{log}"
    );
    assert!(log.contains(&format!("error: {}:3: unreadable journal entry skipped", journal.display())), "{log}");
    assert!(log.contains("2 unreadable line(s), 1 entries kept"), "{log}");
    assert!(
        wait_for(Duration::from_secs(3), || count(&s, "stop") == 1),
        "the readable entry's stop ran; log:\n{}",
        s.log()
    );
}

#[test]
fn unload_runs_the_journaled_stops_and_leaves_no_pin_and_no_program() {
    let mut s = Scenario::start(&format!("{GATE}{}", commands_config().replace("7000,8000,9000", "7100,7200")));
    let iface = s.net.server_if.clone();
    s.syns("198.18.0.2", &[7100, 7200]);
    assert!(wait_for(Duration::from_secs(5), || count(&s, "start") == 1), "{}", s.log());
    s.daemon.kill();
    assert!(!xdp_ids(&s.net.server, &iface).is_empty());
    let mut args = vec!["--unload".to_owned(), "-i".into(), iface.clone(), "-c".into(), s.conf.display().to_string()];
    args.extend(s.state.args());
    let out =
        Command::new("ip").args(["netns", "exec", &s.net.server]).arg(bin("knockd")).args(&args).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(count(&s, "stop"), 1, "the pending stop ran");
    assert!(s.log().contains(&format!("unloaded: knockgate removed from {iface}")), "{}", s.log());
    assert!(!s.state.pins(&iface).exists(), "no pin is left");
    assert!(xdp_ids(&s.net.server, &iface).is_empty(), "no program is left");
}

#[test]
fn an_open_storm_stays_within_max_commands_and_every_start_gets_its_stop() {
    let record = "touch {DIR}/run/$$; ls {DIR}/run | wc -l >> {DIR}/conc; rm {DIR}/run/$$;";
    let s = Scenario::start_full(
        &format!(
            "\tMaxCommands = 8
[storm]
\tsequence = 7500
\tseq_timeout = 5
\ttcpflags = syn
\tstart_command = {record} echo start %IP% 0 >> {{DIR}}/cmds
\tcmd_timeout = 1
\tstop_command = {record} echo stop %IP% 0 >> {{DIR}}/cmds
"
        ),
        &[],
        &[],
    );
    std::fs::create_dir(s.dir.path().join("run")).unwrap();
    // 3,000 spoofed sources complete the one-step door within about a second.
    let started = Instant::now();
    for i in 0..3000u32 {
        let src = format!("198.19.{}.{}", i / 250, i % 250 + 1);
        s.syns(&src, &[7500]);
        if i % 300 == 299 {
            std::thread::sleep(Duration::from_millis(90));
        }
    }
    let sent_in = started.elapsed();
    let settled = || {
        let log = s.log();
        let opened = log.matches(": storm: OPEN SESAME\n").count();
        let shed = log.matches(": storm: start command shed").count();
        opened == 3000 && count(&s, "start") + shed == opened && count(&s, "stop") == count(&s, "start")
    };
    assert!(
        wait_for(Duration::from_secs(90), settled),
        "starts {} stops {}; log tail:\n{}",
        count(&s, "start"),
        count(&s, "stop"),
        s.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let conc: Vec<usize> = std::fs::read_to_string(s.dir.path().join("conc"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let most = conc.iter().max().copied().unwrap_or(0);
    let starts = count(&s, "start");
    eprintln!(
        "storm: 3000 opens sent in {sent_in:?}; {starts} starts ran, {} shed; at most {most} commands at once",
        3000 - starts
    );
    assert!(most <= 8, "{most} commands ran at once (MaxCommands 8)");
    assert!(starts > 0 && starts < 3000, "some ran, the rest were shed: {starts}");
}

#[test]
fn an_interface_made_anew_gets_the_program_again() {
    made_anew(Hook::Xdp);
}

#[test]
fn at_tc_an_interface_made_anew_gets_the_program_again() {
    made_anew(Hook::Tc);
}

fn made_anew(hook: Hook) {
    let s = Scenario::start_with(GATE, &attach_args(hook));
    let _echo = Echo::start(&s.net.server, 2222);
    let (server, client, si, ci) = (&s.net.server, &s.net.client, &s.net.server_if, &s.net.client_if);
    sh(&format!("ip -n {server} link del {si}"));
    assert!(s.logged(&format!("interface {si} is gone; waiting for it to come back")), "{}", s.log());
    sh(&format!(
        "ip link add {si} netns {server} type veth peer name {ci} netns {client} && \
         ip -n {server} addr add 198.18.0.1/24 dev {si} && ip -n {client} addr add 198.18.0.2/24 dev {ci} && \
         ip -n {server} link set {si} up && ip -n {client} link set {ci} up"
    ));
    // The XDP link and the TCX link are pinned, and found dead: attached again. A `cls_bpf`
    // filter went with the interface, and is added anew.
    let hooked = if hook == Hook::Tc { tests::kernel::tc_hooked() } else { Hooked::Xdp };
    let how = if hooked == Hooked::ClsBpf { "attached" } else { "attached again" };
    assert!(s.logged(&format!("interface {si} is back: {how} ({})", hooked.name())), "{}", s.log());
    let index = in_netns(server, || netlink::ifindex(si)).expect("the new interface");
    assert_eq!(in_netns(server, || programs_at(hook, si, index)).len(), 1, "the program is on the new interface");
    assert!(shut_out(&s, "198.18.0.2"), "the gate holds on the new interface");
    sh(&s.net.in_client(&format!("{} 198.18.0.1 7000 8000 9000", bin("knock").display())));
    assert!(opens(&s, "198.18.0.2"), "knocks work on the new interface; log:\n{}", s.log());
}

#[test]
fn with_attach_xdp_a_foreign_xdp_program_is_refused_by_name() {
    let net = NetPair::new();
    let state = PinnedState::new();
    let iface = net.server_if.clone();
    // Another program (the benchmark's empty one) is attached first, by someone else.
    let other = in_netns(&net.server, || {
        let mut ebpf = aya::Ebpf::load(knockd_user::XDP_PASS_EBPF).unwrap();
        let prog: &mut aya::programs::Xdp = ebpf.program_mut("xdp_pass").unwrap().try_into().unwrap();
        prog.load().unwrap();
        prog.attach(&iface, aya::programs::XdpMode::Skb).unwrap();
        ebpf
    });
    let ids = xdp_ids(&net.server, &iface);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("knockd.conf");
    std::fs::write(&conf, GATE).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &net.server])
        .arg(bin("knockd"))
        .args(["-i", &iface, "--attach", "xdp", "-c"])
        .arg(&conf)
        .args(state.args())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "interface {iface} already has an XDP program, id {} (name \"xdp_pass\"), that knockgate did not attach",
            ids[0]
        )),
        "{err}"
    );
    assert_eq!(xdp_ids(&net.server, &iface), ids, "the other program is left as it was");
    assert!(!state.pins(&iface).exists(), "nothing is left pinned");
    drop(other);
}

#[test]
fn nftables_elements_with_their_own_timeout_close_even_when_knockd_dies() {
    let mut s = Scenario::start(
        "
[ssh]
\tsequence = 7000,8000,9000
\tseq_timeout = 30
\ttcpflags = syn
\tstart_command = /usr/sbin/nft add element inet knock allowed { %IP% timeout 3s }
",
    );
    sh(&s.net.in_server(
        "nft -f - <<'EOF'
table inet knock {
  set allowed { type ipv4_addr; flags timeout; }
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 2222 ip saddr @allowed accept
    tcp dport 2222 drop
  }
}
EOF",
    ));
    let _echo = Echo::start(&s.net.server, 2222);
    assert!(shut_out(&s, "198.18.0.2"));
    sh(&s.net.in_client(&format!("{} 198.18.0.1 7000 8000 9000", bin("knock").display())));
    assert!(wait_for(Duration::from_secs(3), || opens(&s, "198.18.0.2")), "{}", s.log());
    s.daemon.kill();
    std::thread::sleep(Duration::from_millis(3500));
    assert!(shut_out(&s, "198.18.0.2"), "the element expired with no daemon to remove it");
    sh(&s.net.in_server("nft delete table inet knock"));
}

#[test]
fn an_allowance_expires_on_time_with_no_daemon_running() {
    let mut s = Scenario::start(&GATE.replace("gate_timeout = 120", "gate_timeout = 2"));
    let _echo = Echo::start(&s.net.server, 2222);
    sh(&s.net.in_client(&format!("{} 198.18.0.1 7000 8000 9000", bin("knock").display())));
    assert!(opens(&s, "198.18.0.2"), "{}", s.log());
    s.daemon.kill();
    assert!(opens(&s, "198.18.0.2"), "allowed while it lasts");
    std::thread::sleep(Duration::from_millis(2200));
    assert!(shut_out(&s, "198.18.0.2"), "the kernel ends the allowance on time, with no daemon");
}

#[test]
fn a_bpf_filesystem_private_to_the_daemon_is_warned_about() {
    let net = NetPair::new();
    let state = PinnedState::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("knockd.log");
    let conf = dir.path().join("knockd.conf");
    std::fs::write(&conf, format!("[options]\n\tlogfile = {}\n[d]\n\tsequence = 7000\n", log.display())).unwrap();
    // The default BpfDir, /sys/fs/bpf/knockgate: under `ip netns exec` its /sys is private.
    let state_dir = state.state_dir.path().display().to_string();
    let mut daemon = tests::daemon::Daemon::start(
        &net.server,
        &bin("knockd"),
        &["-i", &net.server_if, "-c", conf.to_str().unwrap(), "--state-dir", &state_dir],
        &log,
    );
    let text = daemon.log_text();
    assert!(
        text.contains(
            "warning: BpfDir /sys/fs/bpf/knockgate is on a BPF filesystem private to this mount namespace (as under \
             `ip netns exec`"
        ),
        "{text}"
    );
    daemon.stop();
}
