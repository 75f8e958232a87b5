//! Builds the XDP program (`knock-ebpf`) with aya-build: nightly + `rust-src` + bpf-linker.
//! `cargo xtask` installs those first; see README.
//!
//! With `KNOCKGATE_EBPF_STUB=1` an empty object is written instead, so that `cargo check`
//! and `clippy` work on stable without the eBPF toolchain (the binary then cannot load).
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=KNOCKGATE_EBPF_STUB");
    if env::var_os("KNOCKGATE_EBPF_STUB").is_some_and(|v| v == "1") {
        let out = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
        for name in ["knock-ebpf", "xdp-pass"] {
            fs::write(out.join(name), []).context("writing the stub eBPF objects")?;
        }
        return Ok(());
    }
    let metadata = cargo_root()?;
    // aya-build watches the eBPF crate's directory; the program also compiles knock-common.
    println!("cargo:rerun-if-changed={}", metadata.join("knock-common").display());
    let root = metadata.join("knock-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "knock-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}

/// The workspace root: this crate's parent directory.
fn cargo_root() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?);
    dir.parent().map(PathBuf::from).ok_or_else(|| anyhow!("{} has no parent", dir.display()))
}
