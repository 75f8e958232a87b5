//! `cargo xtask run|test|bench`: the project's two commands, each of which first makes sure
//! its prerequisites are there (installing them as root on Debian/Ubuntu, otherwise
//! printing the exact commands).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod demo;
mod prereq;
mod vm;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run knockd. Without arguments: a demo in two throwaway network namespaces.
    Run {
        /// Arguments for knockd, e.g. `-- -i eth0 -c /etc/knockd.conf`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: host unit tests, clippy, then the privileged kernel and netns tests on
    /// this kernel, then again on Debian 12's kernel (6.1) booted in QEMU.
    Test {
        /// Also run the privileged tests with a release build (what production loads).
        #[arg(long)]
        release: bool,
        /// Boot this kernel image for the second pass instead of Debian 12's (repeat it for
        /// several), e.g. `--kernel /boot/vmlinuz-$(uname -r)` to check the kernel you run.
        #[arg(long = "kernel", value_name = "IMAGE")]
        kernels: Vec<PathBuf>,
        /// Run everything on every kernel: the open storm and the benchmark's smoke run too,
        /// which the QEMU pass otherwise leaves to the host.
        #[arg(long)]
        all_kernels: bool,
    },
    /// Benchmark against knockd 0.8: writes BENCHMARKS.md and bench/ (results.json, plots).
    Bench,
    /// Build the Debian package: `target/debian/knockgate_VERSION_ARCH.deb` (cargo-deb).
    Deb,
    /// Inside a QEMU guest (`cargo xtask test` starts it): run the given test binaries.
    #[command(hide = true)]
    Guest {
        #[arg(long)]
        kernel_label: String,
        #[arg(long)]
        bin_dir: PathBuf,
        #[arg(long)]
        deb: PathBuf,
        #[arg(long)]
        nats_server: PathBuf,
        /// A test to leave out (a `cargo test` filter); repeatable.
        #[arg(long)]
        skip: Vec<String>,
        #[arg(long)]
        bench_smoke: bool,
        #[arg(last = true)]
        tests: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run { args } => run(&args),
        Cmd::Test { release, kernels, all_kernels } => test(release, &kernels, all_kernels),
        Cmd::Bench => bench(),
        Cmd::Deb => deb().map(|path| println!("built {}", path.display())),
        Cmd::Guest { kernel_label, bin_dir, deb, nats_server, skip, bench_smoke, tests } => {
            vm::guest(&vm::GuestPlan { kernel_label, bin_dir, deb, nats_server, skip, bench_smoke, tests })
        }
    }
}

/// The workspace root (xtask's parent directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The running kernel's release (`uname -r`): the host's, or in `cargo xtask guest` the guest's.
fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "unknown".into(), |r| r.trim().to_owned())
}

/// Runs a command in the workspace root, failing with its command line.
fn cmd(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status =
        Command::new(program).args(args).current_dir(root()).status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR` and config).
fn target_dir() -> anyhow::Result<PathBuf> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root())
        .output()
        .context("cargo metadata")?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata output")?;
    meta["target_directory"].as_str().map(PathBuf::from).context("no target_directory in cargo metadata")
}

/// Builds `knockd` and `knock`; returns the directory holding them.
fn build_bins(release: bool) -> anyhow::Result<PathBuf> {
    let mut args = vec!["build", "--package", "knockd-user", "--package", "knock-cli"];
    if release {
        args.push("--release");
    }
    cmd(env!("CARGO"), &args)?;
    Ok(target_dir()?.join(if release { "release" } else { "debug" }))
}

fn run(args: &[String]) -> anyhow::Result<()> {
    prereq::ensure(prereq::Need::Run)?;
    let bins = build_bins(false)?;
    prereq::require_root("knockd loads an XDP program")?;
    if args.is_empty() {
        return demo::run(&bins);
    }
    let status = Command::new(bins.join("knockd")).args(args).status().context("starting knockd")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Clippy on the XDP programs, for the BPF target: nightly, as aya-build compiles them
/// (`knockd-user/build.rs`), with the architecture cfg it passes.
fn clippy_ebpf() -> anyhow::Result<()> {
    let target_dir = target_dir()?.join("ebpf-clippy");
    let status = Command::new("rustup")
        .args(["run", "nightly", "cargo", "clippy", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--bins"])
        .args(["--", "-D", "warnings"])
        .current_dir(root().join("knock-ebpf"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH))
        .status()
        .context("running clippy on knock-ebpf")?;
    if !status.success() {
        bail!("clippy found problems in knock-ebpf (BPF target)");
    }
    Ok(())
}

/// How long `cargo xtask test` fuzzes the config parsers.
const FUZZ_SECONDS: u32 = 30;

/// Fuzzes the config parsers for a bounded time (libFuzzer, nightly). New inputs go to a
/// scratch corpus, so the checked-in seeds stay as they are.
fn fuzz(seconds: u32) -> anyhow::Result<()> {
    let corpus = target_dir()?.join("fuzz-corpus-config");
    std::fs::create_dir_all(&corpus).context("creating the fuzz corpus directory")?;
    let corpus = corpus.to_str().context("non-UTF-8 target directory")?.to_owned();
    let limit = format!("-max_total_time={seconds}");
    let status = Command::new("rustup")
        .args(["run", "nightly", "cargo", "fuzz", "run", "config", &corpus, "fuzz/seeds/config", "--", &limit])
        .current_dir(root())
        // The parser needs no eBPF object: skip building it under sanitizer flags.
        .env("KNOCKGATE_EBPF_STUB", "1")
        .status()
        .context("running cargo fuzz")?;
    if !status.success() {
        bail!("fuzzing the config parsers found a failure (see fuzz/artifacts/config)");
    }
    Ok(())
}

/// Builds the bench binary and runs it; `smoke` runs every part at tiny sizes.
fn run_bench(release: bool, out: &Path, smoke: bool) -> anyhow::Result<()> {
    let bins = build_bins(release)?;
    let mut args = vec!["build", "--package", "tests", "--bin", "bench"];
    if release {
        args.push("--release");
    }
    cmd(env!("CARGO"), &args)?;
    let mut bench = Command::new(bins.join("bench"));
    bench
        .arg("--out")
        .arg(out)
        .env("KNOCKGATE_BIN_DIR", &bins)
        .env("KNOCKGATE_NATS_SERVER", prereq::nats_server()?)
        .current_dir(root());
    if smoke {
        bench.arg("--smoke");
    }
    if !bench.status().context("running the benchmark")?.success() {
        bail!("the benchmark failed");
    }
    let results = out.join("results.json");
    let plot = root().join("xtask/plot.py");
    let status = Command::new("python3").arg(plot).arg(&results).arg(out).status().context("running xtask/plot.py")?;
    if !status.success() {
        bail!("plotting failed");
    }
    Ok(())
}

fn bench() -> anyhow::Result<()> {
    prereq::ensure(prereq::Need::Bench)?;
    prereq::require_root("the benchmark loads XDP programs and makes network namespaces")?;
    let out = root().join("bench");
    run_bench(true, &out, false)?;
    std::fs::copy(out.join("BENCHMARKS.md"), root().join("BENCHMARKS.md")).context("copying BENCHMARKS.md")?;
    std::fs::remove_file(out.join("BENCHMARKS.md")).context("tidying bench/")?;
    println!("wrote BENCHMARKS.md and bench/ (results.json, plots)");
    Ok(())
}

/// Builds the release binaries, their manual pages and completions (generated from the clap
/// definitions by the binaries themselves, so that they cannot drift from `--help`), and the
/// package; returns its path.
fn deb() -> anyhow::Result<PathBuf> {
    prereq::ensure(prereq::Need::Deb)?;
    let bins = build_bins(true)?;
    // cargo-deb reads assets relative to knockd-user/: `../packaging/generated` (git ignores it).
    let assets = root().join("packaging/generated");
    let completions = assets.join("completions");
    std::fs::create_dir_all(&completions).with_context(|| format!("creating {}", completions.display()))?;
    let generate = |bin: &str, what: &str, to: &Path| -> anyhow::Result<()> {
        let out = Command::new(bins.join(bin))
            .args(["--generate", what])
            .output()
            .with_context(|| format!("running {bin}"))?;
        if !out.status.success() {
            bail!("`{bin} --generate {what}` failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(to, out.stdout).with_context(|| format!("writing {}", to.display()))
    };
    for (bin, section) in [("knockd", "8"), ("knock", "1")] {
        let page = assets.join(format!("{bin}.{section}"));
        generate(bin, "man", &page)?;
        cmd("gzip", &["-9nf", page.to_str().context("non-UTF-8 path")?])?;
        generate(bin, "bash", &completions.join(format!("{bin}.bash")))?;
        generate(bin, "zsh", &completions.join(format!("_{bin}")))?;
        generate(bin, "fish", &completions.join(format!("{bin}.fish")))?;
    }
    let out_dir = target_dir()?.join("debian");
    let out_arg = out_dir.to_str().context("non-UTF-8 target directory")?.to_owned();
    cmd(env!("CARGO"), &["deb", "--package", "knockd-user", "--no-build", "--output", &out_arg])?;
    let version = env!("CARGO_PKG_VERSION");
    let deb = std::fs::read_dir(&out_dir)
        .with_context(|| format!("reading {}", out_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("knockgate_{version}"))
                    && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("deb"))
            })
        })
        .context("cargo deb made no knockgate package")?;
    Ok(deb)
}

fn test(release: bool, kernels: &[PathBuf], all_kernels: bool) -> anyhow::Result<()> {
    prereq::ensure(prereq::Need::Test)?;
    // The kernels of the second pass, checked (and Debian 12's installed) before anything runs.
    let guests = if kernels.is_empty() {
        prereq::require_root("installing Debian 12's kernel for the QEMU pass")?;
        vec![vm::debian_12()?]
    } else {
        kernels.iter().map(|k| vm::Kernel::from_image(k)).collect::<anyhow::Result<Vec<_>>>()?
    };
    cmd(env!("CARGO"), &["fmt", "--all", "--check"])?;
    // Host tests: no root, stable toolchain.
    cmd(env!("CARGO"), &["test", "--workspace", "--exclude", "tests", "--exclude", "knock-ebpf"])?;
    cmd(env!("CARGO"), &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    clippy_ebpf()?;
    fuzz(FUZZ_SECONDS)?;
    prereq::require_root("the kernel and network-namespace tests load XDP programs")?;
    let mut profiles = vec![false];
    if release {
        profiles.push(true);
    }
    // The package, checked by tests/tests/package.rs.
    let deb = deb()?;
    for release in profiles {
        let bins = build_bins(release)?;
        let mut args = vec!["test", "--package", "tests"];
        if release {
            args.push("--release");
        }
        args.extend(["--", "--test-threads=1"]);
        let status = Command::new(env!("CARGO"))
            .args(&args)
            .current_dir(root())
            .env("KNOCKGATE_BIN_DIR", &bins)
            .env("KNOCKGATE_DEB", &deb)
            .env("KNOCKGATE_NATS_SERVER", prereq::nats_server()?)
            .status()
            .context("running the privileged tests")?;
        if !status.success() {
            bail!(
                "privileged tests failed on kernel {} (this machine's; {})",
                host_kernel(),
                if release { "release" } else { "debug" }
            );
        }
    }
    // The hook's suites once more with the program at TC ingress (`tests::kernel::hook`).
    let mut args = vec!["test", "--package", "tests"];
    for suite in vm::HOOK_SUITES {
        args.extend(["--test", suite]);
    }
    args.extend(["--", "--test-threads=1"]);
    let status = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(root())
        .env("KNOCKGATE_TEST_HOOK", "tc")
        .env("KNOCKGATE_BIN_DIR", build_bins(false)?)
        .status()
        .context("running the kernel suites at TC")?;
    if !status.success() {
        bail!("the kernel suites failed at TC ingress on kernel {} (this machine's)", host_kernel());
    }
    // The benchmark at tiny sizes, so that it cannot rot.
    run_bench(false, &target_dir()?.join("bench-smoke"), true)?;
    println!("bench smoke: ok");
    // The same tests on the other kernels, in QEMU (debug build: the XDP object is the same).
    let bins = build_bins(false)?;
    let scope = if all_kernels { vm::Scope::All } else { vm::Scope::Kernel };
    for kernel in &guests {
        vm::suite(kernel, scope, &bins, &deb)?;
    }
    Ok(())
}
