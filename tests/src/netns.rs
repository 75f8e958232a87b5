//! Throwaway network namespaces joined by a veth pair, removed on drop.
//!
//! Addresses come from the benchmarking range `198.18.0.0/15` and `2001:db8::/32` only.

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output if it fails.
#[expect(clippy::must_use_candidate, reason = "most callers only need the success check")]
pub fn sh(cmd: &str) -> Output {
    let out = Command::new("/bin/sh").arg("-c").arg(cmd).output().expect("spawn /bin/sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two namespaces, `server` and `client`, joined by veth `kgs<N>` / `kgc<N>`.
/// Server `198.18.0.1` / `2001:db8::1`, client `198.18.0.2` / `2001:db8::2`.
pub struct NetPair {
    pub server: String,
    pub client: String,
    pub server_if: String,
    pub client_if: String,
}

impl NetPair {
    pub const SERVER_V4: &'static str = "198.18.0.1";
    pub const CLIENT_V4: &'static str = "198.18.0.2";
    pub const SERVER_V6: &'static str = "2001:db8::1";
    pub const CLIENT_V6: &'static str = "2001:db8::2";

    #[must_use]
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let pair = Self {
            server: format!("kg-srv-{id}"),
            client: format!("kg-cli-{id}"),
            server_if: format!("kgs{n}"),
            client_if: format!("kgc{n}"),
        };
        let (s, c, si, ci) = (&pair.server, &pair.client, &pair.server_if, &pair.client_if);
        sh(&format!("ip netns add {s} && ip netns add {c}"));
        sh(&format!(
            "ip link add {si} netns {s} type veth peer name {ci} netns {c} && \
             ip -n {s} link set lo up && ip -n {c} link set lo up && \
             ip -n {s} addr add {sv4}/24 dev {si} && ip -n {c} addr add {cv4}/24 dev {ci} && \
             ip -n {s} addr add {sv6}/64 dev {si} nodad && ip -n {c} addr add {cv6}/64 dev {ci} nodad && \
             ip -n {s} link set {si} up && ip -n {c} link set {ci} up",
            sv4 = Self::SERVER_V4,
            cv4 = Self::CLIENT_V4,
            sv6 = Self::SERVER_V6,
            cv6 = Self::CLIENT_V6,
        ));
        pair
    }

    /// A shell command line that runs `cmd` inside the server namespace.
    #[must_use]
    pub fn in_server(&self, cmd: &str) -> String {
        format!("ip netns exec {} {cmd}", self.server)
    }

    /// A shell command line that runs `cmd` inside the client namespace.
    #[must_use]
    pub fn in_client(&self, cmd: &str) -> String {
        format!("ip netns exec {} {cmd}", self.client)
    }
}

impl Default for NetPair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the pair.
        for ns in [&self.server, &self.client] {
            if let Err(e) = Command::new("ip").args(["netns", "del", ns]).status() {
                eprintln!("cleanup: ip netns del {ns}: {e}");
            }
        }
    }
}

/// Runs `f` on a thread that has joined network namespace `ns`. Sockets made there stay in
/// that namespace and can be used from any thread afterwards.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let netns = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("netns thread")
    })
}
