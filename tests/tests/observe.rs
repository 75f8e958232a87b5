//! Running it in production: Prometheus metrics scraped by a real Prometheus server, live
//! status from the pins, `--check`, several interfaces in one daemon, logs without colour.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use tests::{
    daemon::{ChildGuard, Daemon, bin, wait_for},
    frame::{FrameBuilder, SYN},
    inject::{Injector, mac_of},
    netns::{NetPair, sh},
    pinned::{PinnedState, xdp_ids},
    scenario::Scenario,
    service::{Echo, connect_from, echo_ok, http_get},
};

const METRICS: &str = "127.0.0.1:9742";

const GATE: &str = "
\tMetricsAddress = 127.0.0.1:9742
[ssh]
\tsequence = 7000,8000,9000
\tseq_timeout = 20
\ttcpflags = syn
\tgate = 2222/tcp
\tgate_timeout = 60
[cmd]
\tsequence = 7100,7200
\tstart_command = true
\tcmd_timeout = 30
\tstop_command = true
";

#[test]
fn a_real_prometheus_scrapes_the_opens() {
    let s = Scenario::start(GATE);
    let dir = s.dir.path();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: knockgate\n    static_configs:\n      - targets: ['{METRICS}']\n"),
    )
    .unwrap();
    let prometheus = Command::new("ip")
        .args(["netns", "exec", &s.net.server, "/usr/bin/prometheus"])
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _prometheus = ChildGuard::new(prometheus);
    s.syns("198.18.0.2", &[7000, 8000, 9000]);
    assert!(s.logged("198.18.0.2: ssh: OPEN SESAME"), "{}", s.log());
    let query =
        |q: &str| http_get(&s.net.server, "127.0.0.1:9090", &format!("/api/v1/query?query={q}")).unwrap_or_default();
    assert!(
        // Wide: Prometheus starts slowly in an emulated guest.
        wait_for(Duration::from_mins(2), || {
            let r = query("knockgate_opens_total");
            r.contains(r#""door":"ssh""#) && r.contains(r#""1"]"#)
        }),
        "Prometheus never saw the open: {}",
        query("knockgate_opens_total")
    );
    let up = query("up");
    assert!(up.contains(r#""job":"knockgate""#) && up.contains(r#""1"]"#), "the target is up: {up}");
}

#[test]
fn promtool_finds_a_scrape_clean_and_no_label_names_a_source() {
    let s = Scenario::start(GATE);
    s.syns("198.18.0.2", &[7000, 8000, 9000]);
    s.syns("198.18.0.2", &[7100, 7200]);
    s.syns("198.18.0.3", &[7000]);
    assert!(s.logged("198.18.0.2: cmd: OPEN SESAME"), "{}", s.log());
    // The start command is counted once it has run: its duration is encoded early in a
    // scrape, its count late, and in an emulated guest a scrape takes long enough for the
    // command to end in between. Scraped until a whole scrape has it.
    let mut text = String::new();
    wait_for(Duration::from_secs(30), || {
        text = http_get(&s.net.server, METRICS, "/metrics").unwrap();
        text.contains("knockgate_command_duration_seconds_count 1")
    });
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "promtool had remarks: {out:?}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("knockgate_"), "{line}");
        assert!(!line.contains("198.18."), "a source address as a label: {line}");
    }
    for want in [
        r#"knockgate_opens_total{door="ssh"} 1"#,
        r#"knockgate_opens_total{door="cmd"} 1"#,
        r#"knockgate_stage_reached_total{door="ssh",stage="1"} 2"#,
        r#"knockgate_attempts{door="ssh",stage="1"} 1"#,
        r#"knockgate_commands_total{kind="start",result="ok"} 1"#,
        "knockgate_commands_pending 1",
        "knockgate_allowances 1",
        "knockgate_build_info{version=",
        "knockgate_command_duration_seconds_count 1",
    ] {
        assert!(text.contains(want), "no {want} in:\n{text}");
    }
    assert!(text.contains(&format!(r#"knockgate_xdp_attached{{interface="{}",mode="#, s.net.server_if)), "{text}");
    let hook = match tests::kernel::hook() {
        knockd_user::kernel::hooks::Hook::Xdp => "xdp",
        knockd_user::kernel::hooks::Hook::Tc => tests::kernel::tc_hooked().name(),
    };
    assert!(
        text.contains(&format!(r#"knockgate_attached{{interface="{}",hook="{hook}"}} 1"#, s.net.server_if)),
        "{text}"
    );
}

fn status(s: &Scenario, json: bool) -> String {
    let mut args =
        vec!["--status".to_owned(), "-i".into(), s.net.server_if.clone(), "-c".into(), s.conf.display().to_string()];
    args.extend(s.state.args());
    if json {
        args.push("--json".into());
    }
    let out = Command::new(bin("knockd")).args(&args).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn status_reads_the_pins_live_after_a_sigkill_and_with_full_tables() {
    let mut s = Scenario::start(&format!("\tAttemptTableSize = 64\n\tFirstKnockTableSize = 64\n{GATE}"));
    s.syns("198.18.0.2", &[7000, 8000, 9000]);
    s.syns("198.18.0.3", &[7000, 8000]);
    assert!(s.logged("198.18.0.3: ssh: Stage 2"), "{}", s.log());
    let text = status(&s, false);
    assert!(text.contains("  198.18.0.2 2222/tcp "), "{text}");
    assert!(text.contains("  ssh stage 2: 1"), "{text}");
    assert!(text.contains("[0] ssh: sequence 7000/tcp,8000/tcp,9000/tcp"), "{text}");
    let live: serde_json::Value = serde_json::from_str(&status(&s, true)).unwrap();
    assert_eq!(live["allowances"][0]["source"], "198.18.0.2");
    assert_eq!(live["doors"][0]["counts"]["opens"], 1);

    s.daemon.kill();
    let dead: serde_json::Value = serde_json::from_str(&status(&s, true)).unwrap();
    assert_eq!(dead["allowances"][0]["source"], "198.18.0.2", "the same after a SIGKILL: {dead}");
    assert_eq!(dead["attempts"], live["attempts"]);

    // Full tables: 500 spoofed first knocks into 64 places.
    for i in 0..500u32 {
        s.syns(&format!("198.19.{}.{}", i / 250, i % 250 + 1), &[7000]);
    }
    std::thread::sleep(Duration::from_millis(300));
    let full: serde_json::Value = serde_json::from_str(&status(&s, true)).unwrap();
    let first = full["tables"].as_array().unwrap().iter().find(|t| t["table"] == "first_knocks").unwrap().clone();
    assert_eq!(first["capacity"], 64);
    assert_eq!(first["used"], 64, "{full}");
    assert!(full["counters"]["first_knock_evictions"].as_u64().unwrap() >= 436, "{full}");
    assert!(status(&s, false).contains("  first_knocks 64/64"));
}

#[test]
fn check_notes_the_doors_a_client_cannot_open_from_a_profile() {
    let dir = tempfile::tempdir().unwrap();
    let sequences = dir.path().join("sequences");
    std::fs::write(&sequences, "7000,8000,9000\n7100,8100,9100\n").unwrap();
    let conf = dir.path().join("knockd.conf");
    std::fs::write(
        &conf,
        format!("[plain]\n\tsequence = 7000,8000\n[ot]\n\tone_time_sequences = {}\n", sequences.display()),
    )
    .unwrap();
    let out = Command::new(bin("knockd")).args(["--check", "-c"]).arg(&conf).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let notes: Vec<&str> = text.lines().filter(|l| l.contains(": note: ")).collect();
    assert_eq!(
        notes,
        [format!(
            "ot: note: a client cannot open it from a profile alone: its sequences are One_Time_Sequences ({}): each opens once, so a profile cannot hold one",
            sequences.display()
        )],
        "{text}"
    );
    let out =
        Command::new(bin("knockd")).args(["--client-profile", "ot", "--host", "h", "-c"]).arg(&conf).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("knockd: door 'ot' cannot be opened from a profile"),
        "{out:?}"
    );
}

#[test]
fn check_says_what_each_door_does_or_where_the_config_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.conf");
    std::fs::write(&good, include_str!("../../examples/knockd.conf")).unwrap();
    let out = Command::new(bin("knockd")).args(["--check", "-c"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "openSSH: sequence 7000/tcp,8000/tcp,9000/tcp; seq_timeout 5s; tcpflags syn; command\n\
             closeSSH: sequence 9000/tcp,8000/tcp,7000/tcp; seq_timeout 5s; tcpflags syn; command\n\
             {}: the configuration is valid (2 door(s))\n",
            good.display()
        )
    );
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "[d]\n\tsequence = 7000\n\tgate = 22/icmp\n").unwrap();
    let out = Command::new(bin("knockd")).args(["--check", "-c"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:", bad.display())), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn one_daemon_serves_two_interfaces_with_shared_state() {
    let net = NetPair::new();
    // A second link between the same two namespaces: 198.18.1.0/24.
    let (si2, ci2) = (format!("{}b", net.server_if), format!("{}b", net.client_if));
    sh(&format!(
        "ip link add {si2} netns {s} type veth peer name {ci2} netns {c} && \
         ip -n {s} addr add 198.18.1.1/24 dev {si2} && ip -n {c} addr add 198.18.1.2/24 dev {ci2} && \
         ip -n {s} link set {si2} up && ip -n {c} link set {ci2} up",
        s = net.server,
        c = net.client
    ));
    let state = PinnedState::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("knockd.log");
    let conf = dir.path().join("knockd.conf");
    std::fs::write(
        &conf,
        format!("[options]\n\tlogfile = {}\n\tInterface = {}, {si2}\n{GATE}", log.display(), net.server_if),
    )
    .unwrap();
    let state_args = state.args();
    let mut args = vec!["-c", conf.to_str().unwrap()];
    args.extend(state_args.iter().map(String::as_str));
    let mut daemon = Daemon::start(&net.server, &bin("knockd"), &args, &log);
    let text = daemon.log_text();
    assert!(text.contains(&format!("listening on {}, {si2}", net.server_if)), "{text}");
    let _echo = Echo::start(&net.server, 2222);
    // Each interface is attached and pinned on its own, the same program on both.
    let (a, b) = (xdp_ids(&net.server, &net.server_if), xdp_ids(&net.server, &si2));
    assert!(!a.is_empty() && a == b, "{a:?} {b:?}");
    assert!(state.pins(&net.server_if).join("link").exists() && state.pins(&si2).join("link").exists());

    // The gate holds on both before any knock.
    for (src, dst) in [("198.18.0.2", "198.18.0.1:2222"), ("198.18.1.2", "198.18.1.1:2222")] {
        assert!(connect_from(&net.client, src, dst, Duration::from_millis(500)).is_err(), "{dst} open before a knock");
    }
    // One source's knock split over the two links counts.
    let on_a = Injector::new(&net.client, &net.client_if, mac_of(&net.server, &net.server_if));
    let on_b = Injector::new(&net.client, &ci2, mac_of(&net.server, &si2));
    on_a.send(&FrameBuilder::tcp("198.18.0.2", "198.18.0.1", 7000, SYN).build());
    on_b.send(&FrameBuilder::tcp("198.18.0.2", "198.18.1.1", 8000, SYN).build());
    on_b.send(&FrameBuilder::tcp("198.18.0.2", "198.18.1.1", 9000, SYN).build());
    assert!(
        wait_for(Duration::from_secs(5), || daemon.log_text().contains("198.18.0.2: ssh: OPEN SESAME")),
        "{}",
        daemon.log_text()
    );
    let mut c = connect_from(&net.client, "198.18.0.2", "198.18.0.1:2222", Duration::from_millis(700)).unwrap();
    assert!(echo_ok(&mut c));
    // The other link's address still has no allowance; a knock there opens it.
    assert!(connect_from(&net.client, "198.18.1.2", "198.18.1.1:2222", Duration::from_millis(500)).is_err());
    sh(&net.in_client(&format!("{} 198.18.1.1 7000 8000 9000", bin("knock").display())));
    let mut c = connect_from(&net.client, "198.18.1.2", "198.18.1.1:2222", Duration::from_millis(700)).unwrap();
    assert!(echo_ok(&mut c));
    // Reported on its own, each.
    let metrics = http_get(&net.server, METRICS, "/metrics").unwrap();
    for iface in [&net.server_if, &si2] {
        assert!(metrics.contains(&format!(r#"knockgate_xdp_attached{{interface="{iface}",mode="#)), "{metrics}");
        let out = Command::new(bin("knockd"))
            .args(["--status", "--json", "-i", iface, "-c", conf.to_str().unwrap()])
            .args(&state_args)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["allowances"].as_array().unwrap().len(), 2, "{v}");
    }
    daemon.stop();
}

#[test]
fn the_readmes_alert_rules_are_valid() {
    let rules = include_str!("../../examples/alerts.yml");
    assert!(include_str!("../../README.md").contains(rules), "README and examples/alerts.yml differ");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/alerts.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("knockd"))
        .args(["--unload", "-v", "-i", "kgnone0", "-c", "/nonexistent/knockd.conf", "--bpf-dir"])
        .arg(dir.path().join("bpf"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("using the default directories"), "{err}");
    assert!(!err.contains('\x1b'), "ANSI codes in: {err:?}");
}
