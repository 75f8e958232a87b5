//! The client knows its doors: `knockd --client-profile` writes a door's profile, and `knock
//! NAME` opens the door from it alone (a secret door with its own window and length; a plain
//! door with UDP steps and a delay, then the profile's command, once). A secret door's near
//! misses are counted and logged, and random traffic does not move the count.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use knock_common::{
    AddrKey, PROTO_TCP,
    secret::derive::{Params, Secret},
};
use tests::{
    daemon::{bin, wait_for},
    netns::sh,
    scenario::Scenario,
    service::{Echo, connect, echo_ok, http_get},
};

const SERVER: &str = "198.18.0.1";
const METRICS: &str = "127.0.0.1:9744";

/// A new key file (mode 0600) in `dir`.
fn key_in(dir: &Path) -> PathBuf {
    let key = dir.join("door.key");
    let out = Command::new(bin("knock")).arg("--generate-secret").output().unwrap();
    assert!(out.status.success());
    std::fs::write(&key, &out.stdout).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    key
}

/// `knockd --client-profile DOOR --host SERVER` on the scenario's config.
fn server_profile(s: &Scenario, door: &str) -> String {
    let out = Command::new(bin("knockd"))
        .args(["-c", s.conf.to_str().unwrap(), "--client-profile", door, "--host", SERVER])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A profile file holding another profile and then `profile` (as appended to a user's file).
fn profile_file(s: &Scenario, profile: &str) -> PathBuf {
    let path = s.dir.path().join("knock.toml");
    std::fs::write(&path, format!("[other]\nhost = \"198.18.0.9\"\nsequence = [\"1\"]\n\n{profile}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn gate_open(s: &Scenario) -> bool {
    connect(&s.net.client, &format!("{SERVER}:2222")).is_ok_and(|mut c| echo_ok(&mut c))
}

/// Runs `knock ARGS` in the client namespace; panics unless it succeeds.
fn knock(s: &Scenario, args: &str) {
    let cmd = s.net.in_client(&format!("{} {args}", bin("knock").display()));
    let out = sh(&cmd);
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_servers_profile_opens_a_secret_door_with_its_own_window_and_length() {
    let keys = tempfile::tempdir().unwrap();
    let key = key_in(keys.path());
    let s = Scenario::start(&format!(
        "[ssh]\n\tsecret_file = {}\n\twindow = 6\n\tknock_length = 6\n\ttcpflags = syn\n\tgate = 2222/tcp\n\tgate_timeout = 60\n",
        key.display()
    ));
    let _echo = Echo::start(&s.net.server, 2222);
    let profile = server_profile(&s, "ssh");
    for want in [
        "[ssh]\n",
        "host = \"198.18.0.1\"\n",
        &format!("secret_file = \"{}\"\n", key.display()),
        "knock_length = 6\n",
        "window = 6\n",
        "protocol = \"tcp\"\n",
    ] {
        assert!(profile.contains(want), "{want:?} in:\n{profile}");
    }
    let hex = std::fs::read_to_string(&key).unwrap();
    assert!(!profile.contains(hex.trim()), "never the key");

    // The client's defaults (window 30, length 4) derive other ports: nothing opens.
    knock(&s, &format!("--secret-file {} {SERVER}", key.display()));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!gate_open(&s), "the default window and length open nothing");

    let file = profile_file(&s, &profile);
    knock(&s, &format!("--profiles {} ssh", file.display()));
    assert!(s.logged("198.18.0.2: ssh: OPEN SESAME"), "{}", s.log());
    assert!(gate_open(&s), "the profile opens the gate");
}

#[test]
fn a_plain_door_s_profile_sends_udp_steps_with_a_delay_then_runs_its_command_once() {
    let s = Scenario::start(
        "[ssh]\n\tsequence = 7000:udp,8000:tcp,9000:udp\n\tseq_timeout = 20\n\ttcpflags = syn\n\tgate = 2222/tcp\n\tgate_timeout = 60\n",
    );
    let _echo = Echo::start(&s.net.server, 2222);
    let profile = server_profile(&s, "ssh");
    assert!(profile.contains("sequence = [\"7000:udp\", \"8000:tcp\", \"9000:udp\"]\n"), "{profile}");
    // The command runs after the last knock: it reaches the gated port, which only the whole
    // sequence opens; it notes when it ran, and that it ran.
    let ran = s.dir.path().join("ran");
    let script = format!(
        "date +%s.%N >> {ran}; echo knockgate | socat -t 3 - TCP:$0:2222,connect-timeout=5 >> {ran}",
        ran = ran.display()
    );
    let extra = format!("delay = 400\ncommand = [\"sh\", \"-c\", {script:?}, \"%HOST%\"]\n");
    let file = profile_file(&s, &format!("{profile}{extra}"));
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    knock(&s, &format!("--profiles {} ssh", file.display()));
    assert!(s.logged("198.18.0.2: ssh: OPEN SESAME"), "{}", s.log());
    let out = std::fs::read_to_string(&ran).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "the command ran once, after the door opened: {out:?}");
    assert_eq!(lines[1], "knockgate", "it reached the gated port at %HOST%");
    let ran_at: f64 = lines[0].parse().unwrap();
    eprintln!("the profile's command ran {:.3} s after knock started (two delays of 0.4 s)", ran_at - started);
    assert!(ran_at - started >= 0.8, "two delays of 400 ms before the command: {:.3} s", ran_at - started);
    for stage in 1..=2 {
        assert_eq!(s.count(&format!("198.18.0.2: ssh: Stage {stage}")), 1, "{}", s.log());
    }
}

/// The scenario's metric `name` for door `ssh`.
fn metric(s: &Scenario, name: &str) -> Option<u64> {
    let text = http_get(&s.net.server, METRICS, "/metrics").unwrap();
    let want = format!("{name}_total{{door=\"ssh\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&want)).map(|v| v.parse().unwrap())
}

#[test]
fn a_knock_with_the_wrong_window_is_a_near_miss_and_random_traffic_is_not() {
    let keys = tempfile::tempdir().unwrap();
    let key = key_in(keys.path());
    let s = Scenario::start_with(
        &format!("[ssh]\n\tsecret_file = {}\n\twindow = 30\n\ttcpflags = syn\n\tgate = 2222/tcp\n", key.display()),
        &["-D", "--metrics-address", METRICS],
    );
    let secret = Secret::from_hex(&std::fs::read_to_string(&key).unwrap()).unwrap();
    let params = Params { length: 4, window_secs: 30, proto: PROTO_TCP };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let window = params.window_at(now);
    // Random SYNs from 400 sources to random ports, none a first port of the windows the
    // kernel holds.
    let firsts: Vec<u16> = (window - 1..=window + 2).map(|w| secret.window_key(&params, w).first).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..400u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = u16::try_from(x % 65_000).unwrap() + 1;
        if firsts.contains(&port) {
            continue;
        }
        let src = format!("198.19.{}.{}", i / 200, i % 200 + 1);
        s.syns(&src, &[port, port.wrapping_add(1).max(1)]);
    }
    assert!(wait_for(Duration::from_secs(5), || metric(&s, "knockgate_near_misses").is_some()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&s, "knockgate_near_misses"), Some(0), "random traffic is no near miss");

    // This window's first port, then the later ports of another window: a near miss.
    let me = AddrKey::v4([198, 18, 0, 2]);
    let mut ports = vec![secret.window_key(&params, window).first];
    ports.extend_from_slice(&secret.sequence(&params, &me, window + 7)[1..]);
    s.syns("198.18.0.2", &ports);
    assert!(
        wait_for(Duration::from_secs(5), || metric(&s, "knockgate_near_misses") == Some(1)),
        "{:?}",
        metric(&s, "knockgate_near_misses")
    );
    assert_eq!(metric(&s, "knockgate_opens"), Some(0));
    let logged = || {
        s.stderr().contains("door ssh: 1 near miss(es) (from 198.18.0.2): a knock began with this window's first port")
    };
    assert!(wait_for(Duration::from_secs(5), logged), "the debug log names the door: {}", s.stderr());
}
