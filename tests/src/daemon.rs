//! A `knockd` process in a namespace, stopped on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// Directory of the binaries under test: `KNOCKGATE_BIN_DIR` (set by `cargo xtask test`),
/// else `target/debug`.
#[must_use]
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("KNOCKGATE_BIN_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"), PathBuf::from);
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run the tests with `cargo xtask test`", path.display());
    path
}

/// How many times slower than a host this machine runs knockd's start-up (the verifier's
/// work above all): `KNOCKGATE_TEST_PACE`, which `cargo xtask test` sets for a kernel booted
/// in QEMU without KVM; 1 elsewhere. Configured times that a restart must fit in are
/// multiplied by it; the tolerances a test asserts are not.
#[must_use]
pub fn pace() -> u64 {
    std::env::var("KNOCKGATE_TEST_PACE").ok().and_then(|p| p.parse().ok()).filter(|&p| p >= 1).unwrap_or(1)
}

/// Polls `f` every 50 ms until it returns true or `limit` passes.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running daemon; SIGTERM and wait on drop.
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `program args...` inside namespace `ns` and waits until `log` says it listens
    /// (in what it writes from now on: a restart appends to the same log).
    #[must_use]
    pub fn start(ns: &str, program: &Path, args: &[&str], log: &Path) -> Self {
        Self::start_to(ns, program, args, log, Stdio::inherit())
    }

    /// As `start`, its standard error (the tracing log: `-D`'s debug lines) to `stderr`.
    #[must_use]
    pub fn start_to(ns: &str, program: &Path, args: &[&str], log: &Path, stderr: Stdio) -> Self {
        let before = std::fs::metadata(log).map_or(0, |m| m.len());
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn daemon");
        let mut d = Self { child: Some(child), log: log.to_path_buf() };
        let fresh = |d: &Self| {
            let text = std::fs::read(&d.log).unwrap_or_default();
            String::from_utf8_lossy(text.get(usize::try_from(before).unwrap_or(0)..).unwrap_or_default()).into_owned()
        };
        let mut exited = None;
        // Wide: in an emulated guest the verifier alone takes tens of seconds. A daemon that
        // exits (a bad config, say) ends the wait at once.
        let up = wait_for(Duration::from_mins(2), || {
            exited = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            exited.is_some() || fresh(&d).contains("listening on")
        });
        assert!(
            up && exited.is_none(),
            "daemon did not start{}; log:\n{}",
            exited.map_or_else(String::new, |s| format!(" (it exited: {s})")),
            d.log_text()
        );
        d
    }

    /// SIGKILL, as the OOM killer or a crash would end it, and wait for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// The daemon's process id while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            nix::sys::signal::kill(pid, sig).expect("kill");
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
            return child.wait().ok();
        }
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().ok();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A process a test started, killed by its pid on drop unless the test took it back.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    #[must_use]
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The process id, while it is guarded.
    #[must_use]
    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// Takes the process back, to wait for it.
    pub fn take(&mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}
