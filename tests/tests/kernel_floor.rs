//! The kernel floor and how a refused load is reported: the running kernel's probes, a
//! program the verifier must reject, and knockd without the capabilities it needs.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests panic on failure")]

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use knockd_user::{
    XDP_PASS_EBPF,
    kernel::floor::{self, Feature},
    kernel::rejection::{LoadError, load_program},
};
use tests::daemon::bin;

#[test]
fn this_kernel_has_every_feature_knockgate_needs() {
    floor::check().unwrap_or_else(|e| panic!("on {}: {e}", floor::release()));
    assert_eq!(Feature::ALL.len(), 8);
}

#[test]
fn a_verifier_rejection_is_reported_as_one_with_its_log_saved() {
    let logs = tempfile::tempdir().unwrap();
    let mut ebpf = aya::Ebpf::load(XDP_PASS_EBPF).unwrap();
    let err = load_program(&mut ebpf, "refused", logs.path()).expect_err("the verifier must reject `refused`");
    let LoadError::Rejected { errno, .. } = err else { panic!("not reported as a rejection: {err}") };
    // The verifier's errno, EACCES, reads "Permission denied": it is shown by name.
    assert_eq!(errno, nix::errno::Errno::EACCES, "{err}");
    let text = err.to_string();
    let path = logs.path().join("verifier-refused.log");
    assert!(text.starts_with("the kernel's verifier rejected the XDP program refused (EACCES)"), "{text}");
    assert!(!text.contains("Permission denied"), "{text}");
    assert!(text.contains("invalid access to packet"), "the last lines say why:\n{text}");
    assert!(text.contains(&format!("the whole verifier log: {}", path.display())), "{text}");
    assert!(!text.contains("CAP_BPF") && !text.contains("root"), "a rejection blamed on permissions:\n{text}");
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(log.contains("invalid access to packet") && log.lines().count() > 2, "the whole log:\n{log}");
    // The tail is taken from the log, not made up.
    assert!(text.lines().skip(1).take_while(|l| l.starts_with("    ")).all(|l| log.contains(l.trim())), "{text}");
}

#[test]
fn knockd_without_capabilities_says_so_and_blames_no_verifier() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("knockd.conf");
    std::fs::write(&config, "[openSSH]\nsequence = 7000,8000,9000\ncommand = true\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // As `nobody`: a change of user from root drops every capability.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin("knockd"))
        .args(["-i", "lo", "-c"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    assert!(lines[0].starts_with("knockd: the kernel refused the BPF feature probe for"), "{stderr}");
    assert!(lines[0].contains("operation not permitted; knockd needs CAP_BPF and CAP_NET_ADMIN"), "{stderr}");
    assert!(!stderr.contains("verifier"), "{stderr}");
}

#[test]
fn the_verifier_has_headroom_for_every_program() {
    // The verifier gives up at a million processed instructions, and how many it processes
    // moves with the kernel (6.7 and later check a loop's body as if it ran any number of
    // times) and with small changes of the code: each program keeps a quarter of the limit
    // free on every kernel the tests run on.
    let p = knockd_user::kernel::program::KnockProgram::load(knockd_user::kernel::program::Limits::default())
        .unwrap_or_else(|e| panic!("on {}: {e}", floor::release()));
    let counts = p.verified_instructions().unwrap();
    println!("verified instructions on {}: {counts:?}", floor::release());
    for (name, n) in counts {
        assert!(n < 750_000, "{name}: {n} instructions verified on {}", floor::release());
    }
}
