//! Secret-keyed doors end to end: the project's client opens the gate of a real TCP service,
//! and a knock recorded with tcpdump, replayed from another address, from the same address,
//! or two windows later, opens nothing; a client clock a window off still opens.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use knock_common::Counter;
use tests::{
    daemon::{ChildGuard, bin, pace, wait_for},
    netns::sh,
    scenario::Scenario,
    service::{Echo, connect, echo_ok},
};

const SERVER: &str = "198.18.0.1";
/// Seconds per window: short, so that "two windows later" comes soon, and longer than a
/// restart of knockd takes (`pace`), so that a replay after one is within a window.
fn window() -> u64 {
    3 * pace()
}

/// A scenario whose one door is secret-keyed and gates 2222/tcp, with an echo service there.
struct Secret {
    s: Scenario,
    key: PathBuf,
    _keys: tempfile::TempDir,
    _echo: Echo,
}

impl Secret {
    fn start() -> Self {
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("ssh.key");
        let out = Command::new(bin("knock")).arg("--generate-secret").output().unwrap();
        assert!(out.status.success());
        std::fs::write(&key, &out.stdout).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = format!(
            "[ssh]\n\tsecret_file = {}\n\twindow = {}\n\tseq_timeout = 5\n\ttcpflags = syn\n\tgate = 2222/tcp\n\tgate_timeout = 60\n",
            key.display(),
            window()
        );
        let s = Scenario::start(&config);
        let echo = Echo::start(&s.net.server, 2222);
        Self { s, key, _keys: keys, _echo: echo }
    }

    /// Runs the client in the client namespace, under `faketime` when `skew` is given.
    fn knock(&self, skew: Option<&str>) {
        let knock =
            format!("{} --secret-file {} --window {} {SERVER}", bin("knock").display(), self.key.display(), window());
        let cmd = match skew {
            Some(offset) => format!("faketime -f {offset} {knock}"),
            None => knock,
        };
        let out = sh(&self.s.net.in_client(&cmd));
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn counter(&self, c: Counter) -> u64 {
        self.s.state.counter(&self.s.net.server_if, c)
    }

    fn gate_open(&self) -> bool {
        connect(&self.s.net.client, &format!("{SERVER}:2222")).is_ok_and(|mut c| echo_ok(&mut c))
    }
}

/// tcpdump in the client namespace, writing the SYNs it sees to a file; stopped on drop.
struct Capture {
    guard: ChildGuard,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &str, iface: &str, dir: &Path) -> Self {
        let file = dir.join("knock.pcap");
        let log = dir.join("tcpdump.log");
        let child = Command::new("ip")
            // As root (-Z): the file is in the scenario's private directory.
            .args(["netns", "exec", ns, "tcpdump", "-Z", "root", "--immediate-mode", "-n", "-U", "-i", iface, "-w"])
            .arg(&file)
            .arg("tcp[tcpflags] & tcp-syn != 0 and not port 2222")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump)");
        let guard = ChildGuard::new(child);
        assert!(
            wait_for(Duration::from_secs(5), || std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("listening on"))),
            "tcpdump did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Self { guard, file }
    }

    /// Waits for `n` frames, stops tcpdump (SIGINT) and returns the Ethernet frames it wrote.
    fn frames(mut self, n: usize) -> Vec<Vec<u8>> {
        let written = || std::fs::read(&self.file).map_or(0, |b| pcap_frames(&b).len());
        wait_for(Duration::from_secs(3), || written() >= n);
        let mut child = self.guard.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        child.wait().unwrap();
        pcap_frames(&std::fs::read(&self.file).unwrap())
    }
}

/// The frames of a classic pcap file (microsecond, little-endian, as tcpdump writes here).
fn pcap_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    if bytes.len() < 24 {
        return Vec::new();
    }
    assert_eq!(&bytes[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "pcap magic");
    assert_eq!(u32::from_le_bytes(bytes[20..24].try_into().unwrap()), 1, "Ethernet frames");
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = usize::try_from(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap())).unwrap();
        if at + 16 + len > bytes.len() {
            break;
        }
        frames.push(bytes[at + 16..at + 16 + len].to_vec());
        at += 16 + len;
    }
    frames
}

/// The Internet checksum of `data`, seeded with `sum`.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    for pair in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap()
}

/// `frame` (Ethernet, IPv4, TCP) sent from `src` instead, both checksums made right again: a
/// replay by someone who owns that address.
fn from_address(frame: &[u8], src: [u8; 4]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[26..30].copy_from_slice(&src);
    f[24..26].copy_from_slice(&[0, 0]);
    let ip = checksum(0, &f[14..14 + ihl]);
    f[24..26].copy_from_slice(&ip.to_be_bytes());
    let l4 = 14 + ihl;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let tcp_len = total - ihl;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&u16::try_from(tcp_len).unwrap().to_be_bytes());
    let seed: u32 = pseudo.chunks(2).map(|p| u32::from(u16::from_be_bytes([p[0], p[1]]))).sum();
    let tcp = checksum(seed, &f[l4..l4 + tcp_len]);
    f[l4 + 16..l4 + 18].copy_from_slice(&tcp.to_be_bytes());
    f
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn a_recorded_knock_opens_nothing_replayed_elsewhere_again_after_a_restart_or_two_windows_later() {
    let mut t = Secret::start();
    assert!(!t.gate_open(), "shut before the knock");
    let capture = Capture::start(&t.s.net.client, &t.s.net.client_if, t.s.dir.path());
    t.knock(None);
    // The window the knock was made in, or the one after it if the knock straddled a window's
    // end (the client's start-up takes long in an emulated guest): "two windows later" counts
    // from the later.
    let window = unix_now() / self::window();
    assert!(t.s.logged("198.18.0.2: ssh: OPEN SESAME"), "{}", t.s.log());
    assert!(t.gate_open(), "the project's client opens the gate");
    let knock = capture.frames(4);
    assert_eq!(knock.len(), 4, "four SYNs, knock_length 4: {knock:?}");
    assert_eq!(t.counter(Counter::Opens), 1);

    // From another address: the ports are bound to the knocker's.
    for f in &knock {
        t.s.inject.send(&from_address(f, [198, 18, 0, 3]));
    }
    // From the knocker's address, in the same window: used once already.
    for f in &knock {
        t.s.inject.send(f);
    }
    assert!(
        wait_for(Duration::from_secs(2), || t.counter(Counter::Replays) == 1),
        "the replay is matched, and refused"
    );
    assert_eq!(t.counter(Counter::Opens), 1, "neither replay opens");
    assert!(t.s.not_logged("198.18.0.3: ssh: OPEN SESAME"));

    // A restart keeps the spent uses (the pinned `USED`): the replay is refused again.
    t.s.daemon.stop();
    t.s.restart(&[]);
    for f in &knock {
        t.s.inject.send(f);
    }
    assert!(wait_for(Duration::from_secs(2), || t.counter(Counter::Replays) == 2), "refused after a restart too");
    assert_eq!(t.counter(Counter::Opens), 1);

    // Two windows later: the window's keys are gone, the capture is no knock at all.
    let secs = self::window();
    assert!(wait_for(Duration::from_secs(4 * secs), || unix_now() / secs >= window + 2));
    std::thread::sleep(Duration::from_millis(500));
    for f in &knock {
        t.s.inject.send(f);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(t.counter(Counter::Replays), 2, "not even matched");
    assert_eq!(t.counter(Counter::Opens), 1);
    assert_eq!(t.s.count("198.18.0.2: ssh: OPEN SESAME"), 1, "{}", t.s.log());
}

#[test]
fn a_client_clock_a_window_off_still_opens() {
    let t = Secret::start();
    // A window ahead, then a window behind: each its own window, so each opens.
    let window = window();
    t.knock(Some(&format!("+{window}s")));
    assert!(wait_for(Duration::from_secs(2), || t.counter(Counter::Opens) == 1), "{}", t.s.log());
    assert!(t.gate_open());
    t.knock(Some(&format!("-{window}s")));
    assert!(wait_for(Duration::from_secs(2), || t.counter(Counter::Opens) == 2), "{}", t.s.log());
    // Two windows off is refused.
    t.knock(Some(&format!("+{}s", 2 * window + 1)));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(t.counter(Counter::Opens), 2, "two windows ahead opens nothing");
}
