//! `cargo xtask run` with no arguments: knockd on knockd's own example config, in a
//! throwaway pair of network namespaces joined by a veth pair (198.18.0.0/15 only).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

const SERVER_NS: &str = "kg-demo-srv";
const CLIENT_NS: &str = "kg-demo-cli";
const SERVER_IF: &str = "kgdemo-s";
const CLIENT_IF: &str = "kgdemo-c";
const SERVER_IP: &str = "198.18.0.1";
const CLIENT_IP: &str = "198.18.0.2";
const DIR: &str = "/tmp/knockgate-demo";
/// The demo's BPF filesystem, mounted on the host: one that knockd mounted under
/// `ip netns exec` (which gives it a `/sys` of its own) would die with it.
const BPF_DIR: &str = "/tmp/knockgate-demo/bpf";

/// knockd's example (`examples/knockd.conf`), with the log in the demo directory.
fn config() -> String {
    include_str!("../../examples/knockd.conf").replace("/var/log/knockd.log", &format!("{DIR}/knockd.log"))
}

/// Deletes the namespaces (and with them the veth pair) when the demo ends.
struct Namespaces;

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Unmounting the BPF filesystem drops whatever knockd left pinned there.
        if let Err(e) = Command::new("umount").arg(BPF_DIR).stderr(Stdio::null()).status() {
            eprintln!("cleanup: umount {BPF_DIR}: {e}");
        }
        for ns in [SERVER_NS, CLIENT_NS] {
            // A non-zero exit only means the namespace was never made.
            if let Err(e) = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status() {
                eprintln!("cleanup: ip netns del {ns}: {e}");
            }
        }
    }
}

fn sh(script: &str) -> anyhow::Result<()> {
    let status = Command::new("/bin/sh").arg("-c").arg(script).status().context("running /bin/sh")?;
    if !status.success() {
        bail!("`{script}` failed: {status}");
    }
    Ok(())
}

pub(crate) fn run(bins: &Path) -> anyhow::Result<()> {
    // A demo left over from a killed run is removed first.
    drop(Namespaces);
    let _cleanup = Namespaces;
    sh(&format!(
        "set -e
         ip netns add {SERVER_NS}; ip netns add {CLIENT_NS}
         ip link add {SERVER_IF} netns {SERVER_NS} type veth peer name {CLIENT_IF} netns {CLIENT_NS}
         ip -n {SERVER_NS} addr add {SERVER_IP}/24 dev {SERVER_IF}
         ip -n {CLIENT_NS} addr add {CLIENT_IP}/24 dev {CLIENT_IF}
         ip -n {SERVER_NS} link set lo up; ip -n {CLIENT_NS} link set lo up
         ip -n {SERVER_NS} link set {SERVER_IF} up; ip -n {CLIENT_NS} link set {CLIENT_IF} up"
    ))?;
    std::fs::create_dir_all(BPF_DIR).with_context(|| format!("creating {BPF_DIR}"))?;
    sh(&format!("mountpoint -q {BPF_DIR} || mount -t bpf bpf {BPF_DIR}"))?;
    let conf = Path::new(DIR).join("knockd.conf");
    std::fs::write(&conf, config()).with_context(|| format!("writing {}", conf.display()))?;

    let knock = bins.join("knock");
    println!(
        "\nknockgate demo: knockd runs in network namespace {SERVER_NS} ({SERVER_IP}) on {SERVER_IF},\n\
         with knockd's example config {conf}.\n\n\
         In another terminal, knock from the client namespace:\n\
         \x20   sudo ip netns exec {CLIENT_NS} {knock} -v {SERVER_IP} 7000 8000 9000\n\
         See the rule it added:\n\
         \x20   sudo ip netns exec {SERVER_NS} iptables -S INPUT\n\
         Close it again:\n\
         \x20   sudo ip netns exec {CLIENT_NS} {knock} {SERVER_IP} 9000 8000 7000\n\
         The log:  tail -f {DIR}/knockd.log\n\n\
         Ctrl-C stops knockd and removes the namespaces.\n",
        knock = knock.display(),
        conf = conf.display(),
    );
    // Ctrl-C reaches knockd (same process group), which shuts down cleanly; this process
    // only waits for it and then cleans up.
    ctrlc::set_handler(|| {}).context("installing the Ctrl-C handler")?;
    let status = Command::new("ip")
        .args(["netns", "exec", SERVER_NS])
        .arg(bins.join("knockd"))
        .args(["-v", "-i", SERVER_IF, "-c"])
        .arg(&conf)
        .args(["--bpf-dir", BPF_DIR, "--state-dir", &format!("{DIR}/state")])
        .status()
        .context("starting knockd")?;
    println!("knockd exited ({status}); removing the demo namespaces");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_logs_into_its_directory() {
        let config = super::config();
        assert!(config.contains(&format!("logfile = {}/knockd.log", super::DIR)), "{config}");
        assert!(!config.contains("/var/log"));
    }
}
