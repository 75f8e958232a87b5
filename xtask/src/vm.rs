//! The privileged tests on other kernels. Each kernel is booted in QEMU by virtme-ng (`vng`),
//! with this machine's root file system shared read-only, and runs the test binaries built
//! here, through `cargo xtask guest` (`guest`), inside the VM.
//!
//! QEMU runs without KVM: a nested KVM guest on these machines hangs at boot. Emulated, the
//! guest is several times slower than the host; the tests allow for that in their waits.

use std::{
    io::BufRead as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Debian 12 (bookworm)'s kernel packages: `linux-image-6.1.0-N-amd64`. Not `-cloud-amd64`,
/// which lacks the 9p module that virtme-ng shares the root file system with.
const DEBIAN_12_KERNEL: &str = "linux-image-6.1.0-";
const DEBIAN_12_FLAVOUR: &str = "-amd64";

/// The guest's size: what the tests need, well within the host's.
const GUEST_CPUS: &str = "2";
const GUEST_MEMORY: &str = "4G";
/// How many times slower than the host the guest starts knockd (`tests::daemon::pace`): the
/// verifier, emulated, took 4 s for the three programs on 6.1 where this host took 0.35 s.
const GUEST_PACE: &str = "10";
/// A guest still running after this is stopped, and the run fails (the QEMU pass took
/// 32 minutes on 6.1 here in December 2026).
const GUEST_LIMIT: Duration = Duration::from_mins(75);
/// The guest runner's first line comes within seconds of QEMU starting (a bare boot of 6.1
/// takes 15-18 s here). A guest that has not begun by this time hung at boot: it is stopped
/// and the run fails then, not at `GUEST_LIMIT`.
const BOOT_LIMIT: Duration = Duration::from_mins(4);
/// How the guest runner (`guest`) begins: the guest has booted.
const GUEST_BANNER: &str = "guest: Linux ";

/// What a guest runs: `Kernel` tests skip the ones that measure load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Everything that loads or attaches a program; not the load measurements.
    Kernel,
    /// Everything, the open storm and the benchmark's smoke run included.
    All,
}

/// Tests that measure load rather than what the kernel accepts: left out of `Scope::Kernel`.
/// `cargo test` filters: the open storm (3,000 opens at once).
const LOAD_TESTS: &[&str] = &["an_open_storm_stays_within_max_commands_and_every_start_gets_its_stop"];

/// A kernel to boot.
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    pub(crate) image: PathBuf,
    /// For messages: the release the image is named for, else the image's path.
    pub(crate) label: String,
}

impl Kernel {
    pub(crate) fn from_image(image: &Path) -> anyhow::Result<Self> {
        let image = std::path::absolute(image).with_context(|| format!("kernel image {}", image.display()))?;
        if !image.is_file() {
            bail!("kernel image {} does not exist", image.display());
        }
        let name = image.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let label = name.strip_prefix("vmlinuz-").map_or_else(|| image.display().to_string(), str::to_owned);
        Ok(Self { image, label })
    }
}

/// Debian 12's kernel, the newest `linux-image-6.1.0-N-amd64` that apt offers, installed
/// (as root, with apt) if it is not yet.
pub(crate) fn debian_12() -> anyhow::Result<Kernel> {
    // Fresh package lists: "the newest apt offers" means today's archive.
    crate::cmd("apt-get", &["update", "-qq"])?;
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", &format!("^{}[0-9]+{}$", regex_escape(DEBIAN_12_KERNEL), DEBIAN_12_FLAVOUR)])
        .output()
        .context("apt-cache search")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let package = newest_debian_12(&listing).with_context(|| {
        format!("apt offers no {DEBIAN_12_KERNEL}N{DEBIAN_12_FLAVOUR} package (is Debian 12's archive in its sources?)")
    })?;
    let release = package.trim_start_matches("linux-image-").to_owned();
    let image = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    if !image.exists() || !Path::new("/lib/modules").join(&release).exists() {
        eprintln!("xtask: installing {package} (the kernel the tests boot in QEMU)");
        // No initramfs: virtme-ng boots the image directly, and this machine does not boot it.
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", &package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("INITRD", "No")
            .status()
            .context("apt-get install")?;
        if !status.success() {
            bail!("`apt-get install {package}` failed: {status}");
        }
    }
    Kernel::from_image(&image)
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

/// The package of the highest N in `apt-cache search` output.
fn newest_debian_12(listing: &str) -> Option<String> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| {
            let n = p.strip_prefix(DEBIAN_12_KERNEL)?.strip_suffix(DEBIAN_12_FLAVOUR)?;
            Some((n.parse::<u32>().ok()?, p.to_owned()))
        })
        .max()
        .map(|(_, p)| p)
}

/// The test binaries of the `tests` package, built (debug) for the guest to run.
pub(crate) fn test_binaries() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let out = Command::new(env!("CARGO"))
        .args(["test", "--package", "tests", "--no-run", "--message-format=json"])
        .current_dir(crate::root())
        .stderr(Stdio::inherit())
        .output()
        .context("building the test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str()) else { continue };
        // The benchmark binary's own unit tests are the host's; its smoke run is `Scope::All`'s.
        if name != "bench" {
            bins.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    bins.sort();
    Ok(bins)
}

/// Runs the privileged tests on `kernel` in QEMU; fails naming the kernel.
pub(crate) fn suite(kernel: &Kernel, scope: Scope, bins: &Path, deb: &Path) -> anyhow::Result<()> {
    let tests = test_binaries()?;
    let xtask = std::env::current_exe().context("locating xtask")?;
    let mut guest = vec![xtask.display().to_string(), "guest".into()];
    guest.extend(["--kernel-label".into(), kernel.label.clone()]);
    guest.extend(["--bin-dir".into(), bins.display().to_string(), "--deb".into(), deb.display().to_string()]);
    guest.extend(["--nats-server".into(), crate::prereq::nats_server()?.display().to_string()]);
    if scope == Scope::Kernel {
        for skip in LOAD_TESTS {
            guest.extend(["--skip".into(), (*skip).to_owned()]);
        }
    } else {
        guest.push("--bench-smoke".into());
    }
    guest.push("--".into());
    guest.extend(tests.iter().map(|(_, exe)| exe.display().to_string()));
    // The command goes to the guest in a file (the guest shares this root file system).
    // virtme-ng puts `--exec` on the kernel's command line, base64, with `init=` after it; x86
    // keeps 2048 bytes of that line and cuts the rest, so once the paths of a clone in a deeper
    // directory and one more test binary made it 2,188 bytes, `init=` was cut off and the
    // guest hung at boot, silent, until the run's limit.
    let script = crate::target_dir()?.join("qemu").join(format!("guest-{}.sh", kernel.label));
    let dir = script.parent().context("the guest script's directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let exec = guest.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
    std::fs::write(&script, format!("exec {exec}\n")).with_context(|| format!("writing {}", script.display()))?;
    eprintln!("xtask: booting {} in QEMU (no KVM) for the privileged tests", kernel.image.display());
    let started = Instant::now();
    let status = boot_and_run(kernel, &format!("sh {}", shell_quote(&script.display().to_string())))?;
    let took = started.elapsed().as_secs();
    if !status.success() {
        bail!("privileged tests failed on kernel {} (QEMU, {took} s): see the guest's summary above", kernel.label);
    }
    println!("xtask: privileged tests on kernel {}: ok ({took} s in QEMU)", kernel.label);
    Ok(())
}

/// Boots `kernel` to run `exec`, passing the guest's output on, and says how it ended. Fails
/// if the guest has not begun (`GUEST_BANNER`) within `BOOT_LIMIT`, or is still running at
/// `GUEST_LIMIT`; either way QEMU is stopped.
fn boot_and_run(kernel: &Kernel, exec: &str) -> anyhow::Result<ExitStatus> {
    let started = Instant::now();
    let mut child = Command::new("vng")
        .arg("--run")
        .arg(&kernel.image)
        .args(["--user", "root", "--disable-kvm", "--cpus", GUEST_CPUS, "--memory", GUEST_MEMORY])
        .args(["--cwd", &crate::root().join("tests").display().to_string()])
        .args(["--exec", exec])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its own process group, so that a guest past its time is stopped with QEMU.
        .process_group(0)
        .spawn()
        .context("starting vng (virtme-ng)")?;
    let booted = Arc::new(AtomicBool::new(false));
    let stdout = child.stdout.take().context("vng's standard output")?;
    let passer = {
        let booted = Arc::clone(&booted);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line);
                if line.starts_with(GUEST_BANNER) {
                    booted.store(true, Ordering::Relaxed);
                }
                println!("{line}");
            }
        })
    };
    let ended = loop {
        if let Some(status) = child.try_wait().context("waiting for vng")? {
            break status;
        }
        if started.elapsed() > GUEST_LIMIT {
            stop(&mut child)?;
            bail!(
                "privileged tests on kernel {}: still running after {} minutes, stopped",
                kernel.label,
                GUEST_LIMIT.as_secs() / 60
            );
        }
        if !booted.load(Ordering::Relaxed) && started.elapsed() > BOOT_LIMIT {
            stop(&mut child)?;
            bail!(
                "kernel {}: the guest had not begun {} s after QEMU started: it hung at boot, stopped (no test ran)",
                kernel.label,
                BOOT_LIMIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    // The pipe closes with vng: everything the guest said has been passed on.
    passer.join().map_err(|_| anyhow::anyhow!("passing on the guest's output failed"))?;
    Ok(ended)
}

/// Stops vng and its QEMU (its process group), and reaps it.
fn stop(child: &mut Child) -> anyhow::Result<()> {
    let pgid = i32::try_from(child.id()).context("vng's pid")?;
    // SAFETY: a signal to the process group of a child this process started.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    // Reaped; how it ended is the kill's doing.
    child.wait().context("waiting for the stopped vng")?;
    Ok(())
}

/// `'...'`, for the guest's shell.
fn shell_quote(s: &str) -> String {
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-=:+,".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The suites that run the program at the hook `KNOCKGATE_TEST_HOOK` names (through
/// `BPF_PROG_TEST_RUN`, or knockd with `--attach tc`): run at XDP, then again at TC ingress.
pub(crate) const HOOK_SUITES: [&str; 6] =
    ["xdp_test_run", "xdp_gate", "xdp_secret", "conformance", "e2e_gate", "boot_window"];

/// What `cargo xtask guest` is told.
pub(crate) struct GuestPlan {
    pub(crate) kernel_label: String,
    pub(crate) bin_dir: PathBuf,
    pub(crate) deb: PathBuf,
    pub(crate) nats_server: PathBuf,
    pub(crate) skip: Vec<String>,
    pub(crate) bench_smoke: bool,
    pub(crate) tests: Vec<PathBuf>,
}

/// Inside the guest: mounts the BPF file system, runs each test binary one test at a time,
/// and sums up, naming the kernel. Fails if any failed.
pub(crate) fn guest(plan: &GuestPlan) -> anyhow::Result<()> {
    let release = crate::host_kernel();
    if !is_bpffs("/sys/fs/bpf") {
        crate::cmd("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
    }
    println!("guest: Linux {release} ({}), {} test binaries", plan.kernel_label, plan.tests.len());
    let mut failed = Vec::new();
    let runs = plan.tests.iter().flat_map(|exe| {
        let hooks: &[&str] = if HOOK_SUITES.contains(&test_name(exe).as_str()) { &["xdp", "tc"] } else { &["xdp"] };
        hooks.iter().map(move |hook| (exe, *hook))
    });
    for (exe, hook) in runs {
        let name = if hook == "tc" { format!("{} (TC)", test_name(exe)) } else { test_name(exe) };
        println!("guest [{release}]: {name}");
        let started = Instant::now();
        let mut run = Command::new(exe);
        run.arg("--test-threads=1");
        for skip in &plan.skip {
            run.args(["--skip", skip]);
        }
        let ok = run
            .env("KNOCKGATE_BIN_DIR", &plan.bin_dir)
            .env("KNOCKGATE_DEB", &plan.deb)
            .env("KNOCKGATE_NATS_SERVER", &plan.nats_server)
            .env("KNOCKGATE_TEST_PACE", GUEST_PACE)
            .env("KNOCKGATE_TEST_HOOK", hook)
            .status()
            .with_context(|| format!("running {}", exe.display()))?
            .success();
        println!(
            "guest [{release}]: {name}: {} in {} s",
            if ok { "ok" } else { "FAILED" },
            started.elapsed().as_secs()
        );
        if !ok {
            failed.push(name);
        }
    }
    if plan.bench_smoke {
        let out = std::env::temp_dir().join("bench-smoke");
        let ok = Command::new(plan.bin_dir.join("bench"))
            .arg("--out")
            .arg(&out)
            .arg("--smoke")
            .env("KNOCKGATE_BIN_DIR", &plan.bin_dir)
            .status()
            .context("running the benchmark")?
            .success();
        if !ok {
            failed.push("bench --smoke".into());
        }
    }
    if failed.is_empty() {
        println!("guest: every privileged test passed on Linux {release}");
        Ok(())
    } else {
        bail!("on Linux {release} ({}) these failed: {}", plan.kernel_label, failed.join(", "))
    }
}

/// `lifecycle` for `.../deps/lifecycle-0123abcd`.
fn test_name(exe: &Path) -> String {
    let file = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    file.rsplit_once('-').map_or(file, |(name, _)| name).to_owned()
}

fn is_bpffs(dir: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(dir) && l.contains(" bpf ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_debian_12_kernel_is_picked_by_number_not_by_text() {
        let listing = "linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)\n\
                       linux-image-6.1.0-57-amd64 - Linux 6.1 for 64-bit PCs (signed)\n\
                       linux-image-6.1.0-100-cloud-amd64 - Linux 6.1 for cloud\n\
                       linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)\n";
        assert_eq!(newest_debian_12(listing).as_deref(), Some("linux-image-6.1.0-57-amd64"));
        assert_eq!(newest_debian_12(""), None);
    }

    #[test]
    fn test_binaries_are_named_without_their_hash() {
        assert_eq!(test_name(Path::new("/t/debug/deps/lifecycle-5988c9f1de67032b")), "lifecycle");
        assert_eq!(test_name(Path::new("/t/debug/deps/xdp_test_run-f5250e99")), "xdp_test_run");
    }

    #[test]
    fn arguments_reach_the_guest_shell_whole() {
        assert_eq!(shell_quote("/work/main/target/debug/xtask"), "/work/main/target/debug/xtask");
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
    }
}
