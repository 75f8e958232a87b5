//! The Debian package `cargo xtask deb` builds (`KNOCKGATE_DEB`, set by `cargo xtask test`):
//! its files and control fields, lintian, the systemd unit (verify, the exposure score), the
//! manual pages, the packaged binaries run from an extracted root, and `sd_notify`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use tests::{
    daemon::{ChildGuard, bin},
    netns::NetPair,
    pinned::PinnedState,
};

/// Most the unit's `systemd-analyze security` exposure may be.
const MAX_EXPOSURE: f64 = 4.0;

fn deb() -> PathBuf {
    let path = std::env::var_os("KNOCKGATE_DEB")
        .map(PathBuf::from)
        .expect("KNOCKGATE_DEB: run the tests with `cargo xtask test`");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package extracted into a temporary root.
fn extracted() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(root.path()));
    root
}

#[test]
fn the_package_holds_the_files_and_takes_the_place_of_knockd() {
    let deb = deb();
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("knockgate_{}", env!("CARGO_PKG_VERSION")))
            && deb.extension().is_some_and(|e| e == "deb"),
        "{name}"
    );
    let info = text(&run(Command::new("dpkg-deb").arg("-I").arg(&deb)));
    for field in ["Package: knockgate", "Conflicts: knockd", "Replaces: knockd", "Provides: knockd", "Section: net"] {
        assert!(info.contains(field), "no `{field}` in:\n{info}");
    }
    let files = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for path in [
        "./usr/sbin/knockd",
        "./usr/bin/knock",
        "./etc/knockd.conf",
        "./etc/logrotate.d/knockd",
        "./usr/lib/systemd/system/knockd.service",
        "./usr/share/man/man8/knockd.8.gz",
        "./usr/share/man/man1/knock.1.gz",
        "./usr/share/bash-completion/completions/knockd",
        "./usr/share/bash-completion/completions/knock",
        "./usr/share/zsh/vendor-completions/_knockd",
        "./usr/share/fish/vendor_completions.d/knockd.fish",
        "./usr/share/doc/knockgate/copyright",
        "./usr/share/doc/knockgate/changelog.Debian.gz",
    ] {
        assert!(files.lines().any(|l| l.ends_with(&format!(" {path}"))), "{path} is not in the package:\n{files}");
    }
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(control.path()));
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert!(conffiles.lines().any(|l| l == "/etc/knockd.conf"), "{conffiles}");
    // The maintainer scripts enable the unit, and start nothing (an upgrade restarts a
    // running service, which swaps the program in on the pinned link).
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    assert!(postinst.contains("deb-systemd-helper enable knockd.service"), "{postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    assert!(postinst.contains("install -d -m 0700 /var/lib/knockgate"), "the state directory: {postinst}");
}

#[test]
fn lintian_reports_no_error() {
    let out = Command::new("lintian").arg("--fail-on").arg("error").arg(deb()).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lintian:\n{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!report.lines().any(|l| l.starts_with("E:")), "{report}");
}

#[test]
fn the_unit_verifies_and_its_exposure_is_low() {
    let root = extracted();
    let unit = root.path().join("usr/lib/systemd/system/knockd.service");
    // In place before the network is configured (the boot window): ordered before
    // network-pre.target, and after nothing of the network.
    let content = std::fs::read_to_string(&unit).unwrap();
    let lines: Vec<&str> = content.lines().collect();
    for want in ["Before=network-pre.target", "Wants=network-pre.target", "Type=notify"] {
        assert!(lines.contains(&want), "no {want} in the unit:\n{content}");
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("After=") && l.contains("network")),
        "the unit waits for the network:\n{content}"
    );
    // Against the host's units and binaries, with the package's manual pages for man:knockd(8).
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", root.path().join("usr/share/man"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(format!("--root={}", root.path().display()))
        .arg("knockd.service"));
    let report = text(&out);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for knockd.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    eprintln!("knockd.service exposure: {score}");
    assert!(score <= MAX_EXPOSURE, "exposure {score} > {MAX_EXPOSURE}:\n{report}");
}

#[test]
fn the_manual_pages_render() {
    let root = extracted();
    for (page, want) in [
        ("usr/share/man/man8/knockd.8.gz", "--metrics-address"),
        ("usr/share/man/man8/knockd.8.gz", "--client-profile"),
        ("usr/share/man/man1/knock.1.gz", "--delay"),
        ("usr/share/man/man1/knock.1.gz", "--profiles"),
        // The profile file's format, in a section of its own.
        ("usr/share/man/man1/knock.1.gz", "PROFILES"),
        ("usr/share/man/man1/knock.1.gz", "secret_file"),
    ] {
        let out = run(Command::new("man")
            .arg("-l")
            .arg(root.path().join(page))
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0"));
        // Bold and underline come as overstrikes (`c\x08c`): keep the last of each pair.
        let mut rendered = String::new();
        for c in text(&out).chars() {
            if c == '\x08' {
                rendered.pop();
            } else {
                rendered.push(c);
            }
        }
        assert!(rendered.contains(want), "{page} lacks {want}:\n{rendered}");
        assert!(rendered.contains("SYNOPSIS"), "{rendered}");
    }
}

#[test]
fn the_packaged_knockd_runs_from_an_extracted_root() {
    let root = extracted();
    let knockd = root.path().join("usr/sbin/knockd");
    let version = text(&run(Command::new(&knockd).arg("--version")));
    assert_eq!(version.trim(), format!("knockd {}", env!("CARGO_PKG_VERSION")));
    // The shipped config is valid and opens nothing.
    let check = text(&run(Command::new(&knockd).arg("--check").arg("-c").arg(root.path().join("etc/knockd.conf"))));
    assert!(check.ends_with("the configuration is valid (0 door(s))\n"), "{check}");
    let knock = text(&run(Command::new(root.path().join("usr/bin/knock")).arg("--version")));
    assert_eq!(knock.trim(), format!("knock {}", env!("CARGO_PKG_VERSION")));
}

/// Datagrams received on `socket` until `until` holds of them all or `limit` passes.
fn notifications(socket: &UnixDatagram, limit: Duration, until: impl Fn(&[String]) -> bool) -> Vec<String> {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end && !until(&got) {
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn sd_notify_ready_once_attached_then_the_watchdog_from_the_loop() {
    let net = NetPair::new();
    let state = PinnedState::new();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&sock_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let conf = dir.path().join("knockd.conf");
    std::fs::write(
        &conf,
        format!(
            "[options]\n\tlogfile = {}\n[d]\n\tsequence = 7000\n\tgate = 2222/tcp\n",
            dir.path().join("log").display()
        ),
    )
    .unwrap();
    // As systemd starts it: WATCHDOG_PID names knockd itself (sh's pid, kept by both execs).
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec ip netns exec "$@""#)
        .arg("sh")
        .arg(&net.server)
        .arg(bin("knockd"))
        .args(["-i", &net.server_if, "-c"])
        .arg(&conf)
        .args(state.args())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard::new(child);
    let got =
        notifications(&socket, Duration::from_secs(20), |g| g.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3);
    let ready = got.iter().position(|m| m.contains("READY=1"));
    assert!(ready.is_some(), "no READY=1: {got:?}");
    assert!(tests::pinned::xdp_ids(&net.server, &net.server_if).len() == 1, "READY=1 came with the program attached");
    let watchdogs = got.iter().skip(ready.unwrap_or(0)).filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(watchdogs >= 3, "the watchdog is fed every 100 ms: {got:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap_or(0)).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = notifications(&socket, Duration::from_secs(10), |g| g.iter().any(|m| m.contains("STOPPING=1")));
    assert!(stopping.iter().any(|m| m.contains("STOPPING=1")), "{stopping:?}");
    assert!(child.take().unwrap().wait().unwrap().success());
}

/// The capabilities `knockd.service` leaves (its `CapabilityBoundingSet=`).
fn unit_capabilities() -> Vec<String> {
    let unit = include_str!("../../packaging/knockd.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet= in the unit");
    line.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase()).collect()
}

#[test]
fn knockd_works_with_only_the_units_capabilities() {
    // systemd is not PID 1 here: setpriv drops every capability the unit does not leave.
    let caps: Vec<String> = unit_capabilities().iter().map(|c| format!("+{c}")).collect();
    let bounding = format!("-all,{}", caps.join(","));
    let net = NetPair::new();
    let state = PinnedState::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("knockd.log");
    let conf = dir.path().join("knockd.conf");
    std::fs::write(
        &conf,
        format!(
            "[options]\n\tlogfile = {}\n[ssh]\n\tsequence = 7000,8000\n\tgate = 2222/tcp\n\tstart_command = /usr/sbin/nft list tables\n",
            log.display()
        ),
    )
    .unwrap();
    let setpriv = format!("setpriv --bounding-set={bounding} --inh-caps=-all");
    let state_args = state.args();
    let mut args: Vec<&str> = setpriv.split(' ').collect();
    let knockd = bin("knockd");
    args.push(knockd.to_str().unwrap());
    args.extend(["-i", &net.server_if, "-c", conf.to_str().unwrap()]);
    args.extend(state_args.iter().map(String::as_str));
    let mut daemon = tests::daemon::Daemon::start(&net.server, Path::new("/usr/bin/env"), &args, &log);
    let inject =
        tests::inject::Injector::new(&net.client, &net.client_if, tests::inject::mac_of(&net.server, &net.server_if));
    for port in [7000, 8000] {
        inject.send(&tests::frame::FrameBuilder::tcp("198.18.0.2", "198.18.0.1", port, tests::frame::SYN).build());
    }
    assert!(
        tests::daemon::wait_for(Duration::from_secs(5), || daemon
            .log_text()
            .contains("ssh: running command: /usr/sbin/nft list tables")),
        "{}",
        daemon.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !daemon.log_text().contains("non-zero status"),
        "the command ran with the unit's capabilities: {}",
        daemon.log_text()
    );
    assert_eq!(tests::pinned::xdp_ids(&net.server, &net.server_if).len(), 1);
    daemon.stop();
}
