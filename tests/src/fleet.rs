//! A fleet on one machine: a three-node NATS cluster (JetStream, nats-server 2.11+) in a
//! namespace of its own, two knockgate nodes A and B, each in its namespace with its own edge
//! interface, and a client namespace joined to both edges. The client's address,
//! `198.18.2.2`, sits on its loopback and is routed to either node, so that both see the same
//! knocker, as behind ECMP or anycast:
//!
//! ```text
//!  client 198.18.2.2 ──kfcaN── kfaN 198.18.0.1  node A  kfanN 198.18.4.1 ──┐
//!                    ──kfcbN── kfbN 198.18.1.1  node B  kfbnN 198.18.5.1 ──┤ NATS 4222-4224
//! ```

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    daemon::{Daemon, bin, wait_for},
    netns::sh,
    pinned::PinnedState,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The client's address, as both nodes see it.
pub const CLIENT: &str = "198.18.2.2";
/// Node A's and node B's edge addresses.
pub const A: &str = "198.18.0.1";
pub const B: &str = "198.18.1.1";
/// The NATS client ports of the cluster's three servers.
pub const NATS_PORTS: [u16; 3] = [4222, 4223, 4224];

/// The namespaces and links; removed on drop.
pub struct FleetNet {
    pub client: String,
    pub a: String,
    pub b: String,
    pub bus: String,
    pub a_if: String,
    pub b_if: String,
}

impl FleetNet {
    #[must_use]
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let net = Self {
            client: format!("kg-fc-{id}"),
            a: format!("kg-fa-{id}"),
            b: format!("kg-fb-{id}"),
            bus: format!("kg-fn-{id}"),
            a_if: format!("kfa{n}"),
            b_if: format!("kfb{n}"),
        };
        let (c, a, b, bus, ai, bi) = (&net.client, &net.a, &net.b, &net.bus, &net.a_if, &net.b_if);
        for ns in [c, a, b, bus] {
            sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        }
        sh(&format!(
            "ip link add {ai} netns {a} type veth peer name kfca{n} netns {c} && \
             ip link add {bi} netns {b} type veth peer name kfcb{n} netns {c} && \
             ip link add kfan{n} netns {a} type veth peer name kfna{n} netns {bus} && \
             ip link add kfbn{n} netns {b} type veth peer name kfnb{n} netns {bus} && \
             ip -n {c} addr add {CLIENT}/32 dev lo && \
             ip -n {c} link set kfca{n} up && ip -n {c} link set kfcb{n} up && \
             ip -n {c} route add {A}/32 dev kfca{n} src {CLIENT} && \
             ip -n {c} route add {B}/32 dev kfcb{n} src {CLIENT} && \
             ip -n {a} addr add {A}/24 dev {ai} && ip -n {a} link set {ai} up && \
             ip -n {a} route add {CLIENT}/32 dev {ai} && \
             ip -n {b} addr add {B}/24 dev {bi} && ip -n {b} link set {bi} up && \
             ip -n {b} route add {CLIENT}/32 dev {bi} && \
             ip -n {a} addr add 198.18.4.1/24 dev kfan{n} && ip -n {a} link set kfan{n} up && \
             ip -n {bus} addr add 198.18.4.254/24 dev kfna{n} && ip -n {bus} link set kfna{n} up && \
             ip -n {b} addr add 198.18.5.1/24 dev kfbn{n} && ip -n {b} link set kfbn{n} up && \
             ip -n {bus} addr add 198.18.5.254/24 dev kfnb{n} && ip -n {bus} link set kfnb{n} up"
        ));
        net
    }

    /// `FleetServers` as node A (`a`) or B sees the cluster.
    #[must_use]
    pub fn servers(&self, a: bool) -> String {
        let host = if a { "198.18.4.254" } else { "198.18.5.254" };
        NATS_PORTS.iter().map(|p| format!("nats://{host}:{p}")).collect::<Vec<_>>().join(", ")
    }
}

impl Default for FleetNet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FleetNet {
    fn drop(&mut self) {
        for ns in [&self.client, &self.a, &self.b, &self.bus] {
            if let Err(e) = Command::new("ip").args(["netns", "del", ns]).status() {
                eprintln!("cleanup: ip netns del {ns}: {e}");
            }
        }
    }
}

/// The nats-server binary: `KNOCKGATE_NATS_SERVER` (as `cargo xtask test` sets it), else the
/// one on the PATH.
#[must_use]
pub fn nats_server() -> PathBuf {
    std::env::var_os("KNOCKGATE_NATS_SERVER").map_or_else(|| PathBuf::from("nats-server"), PathBuf::from)
}

/// A three-server NATS cluster with JetStream in namespace `bus`; each server is killed by
/// its pid on drop.
pub struct NatsCluster {
    bus: String,
    dir: tempfile::TempDir,
    servers: [Option<Child>; 3],
}

impl NatsCluster {
    #[must_use]
    pub fn start(bus: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = Self { bus: bus.to_owned(), dir, servers: [None, None, None] };
        for i in 0..3 {
            cluster.start_server(i);
        }
        cluster
    }

    /// Starts server `i` (again), on its own store: a restarted server keeps its JetStream data.
    pub fn start_server(&mut self, i: usize) {
        let routes: Vec<String> =
            (0..3).filter(|&j| j != i).map(|j| format!("nats://127.0.0.1:{}", 6222 + j)).collect();
        let store = self.dir.path().join(format!("n{i}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{i}.log")))
            .expect("nats log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.bus])
            .arg(nats_server())
            .args(["--name", &format!("kg{i}"), "--addr", "0.0.0.0", "--port", &NATS_PORTS[i].to_string()])
            .args(["--cluster_name", "knockgate-test", "--cluster", &format!("nats://127.0.0.1:{}", 6222 + i)])
            .args(["--routes", &routes.join(","), "--jetstream", "--store_dir"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("nats log"))
            .stderr(log)
            .spawn()
            .expect("spawn nats-server (KNOCKGATE_NATS_SERVER, or nats-server on the PATH)");
        self.servers[i] = Some(child);
    }

    /// One server in namespace `bus` on port 4222, run with the configuration file `conf`
    /// (its own TLS and users, say); killed by its pid on drop.
    #[must_use]
    pub fn single(bus: &str, conf: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("n0.log")).expect("nats log");
        let child = Command::new("ip")
            .args(["netns", "exec", bus])
            .arg(nats_server())
            .arg("--config")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("nats log"))
            .stderr(log)
            .spawn()
            .expect("spawn nats-server (KNOCKGATE_NATS_SERVER, or nats-server on the PATH)");
        Self { bus: bus.to_owned(), dir, servers: [Some(child), None, None] }
    }

    /// Kills server `i` (SIGKILL, by its pid).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// The servers' logs, for a failure's message.
    #[must_use]
    pub fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("n{i}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!("--- nats kg{i}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

/// One knockgate node of the fleet: its daemon, its pinned state and its directory.
pub struct Node {
    pub daemon: Daemon,
    pub state: PinnedState,
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    ns: String,
    iface: String,
}

/// Writes the fleet's key file (mode 0600) in `dir`.
#[must_use]
pub fn key_file(dir: &Path, hex: &str) -> PathBuf {
    key_file_named(dir, "fleet.key", hex)
}

/// Writes `content` to `dir/name`, mode 0600 (as key files must be).
#[must_use]
pub fn key_file_named(dir: &Path, name: &str, content: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, content).expect("key file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// The fleet's key in the tests.
pub const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

impl Node {
    /// Starts knockd in `ns` on `iface` with `doors` (knockd.conf text; `{DIR}` is the node's
    /// directory) and `[options]` lines `options`, in the fleet `servers` as `name`.
    #[must_use]
    pub fn start(ns: &str, iface: &str, name: &str, servers: &str, options: &str, doors: &str) -> Self {
        Self::start_with(ns, iface, name, servers, options, doors, &[])
    }

    /// As `start`, with files (name, content; mode 0600) made in the node's directory first.
    #[must_use]
    pub fn start_with(
        ns: &str,
        iface: &str,
        name: &str,
        servers: &str,
        options: &str,
        doors: &str,
        files: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for (file, content) in files {
            let _path = key_file_named(dir.path(), file, content);
        }
        let key = key_file(dir.path(), KEY);
        let log = dir.path().join("knockd.log");
        let conf = dir.path().join("knockd.conf");
        let text = format!(
            "[options]\n\tlogfile = {}\n\tFleetServers = {servers}\n\tFleetName = {name}\n\tFleetKeyFile = {}\n{options}\n{doors}",
            log.display(),
            key.display()
        );
        std::fs::write(&conf, text.replace("{DIR}", &dir.path().display().to_string())).expect("config");
        let state = PinnedState::new();
        let daemon = Self::launch(ns, iface, &conf, &state, &log);
        Self { daemon, state, dir, conf, ns: ns.to_owned(), iface: iface.to_owned() }
    }

    fn launch(ns: &str, iface: &str, conf: &Path, state: &PinnedState, log: &Path) -> Daemon {
        let mut args = vec!["-i".to_owned(), iface.to_owned(), "-c".to_owned(), conf.display().to_string()];
        args.extend(state.args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start(ns, &bin("knockd"), &args, log)
    }

    /// Starts knockd again on the same config and state.
    pub fn restart(&mut self) {
        let log = self.dir.path().join("knockd.log");
        self.daemon = Self::launch(&self.ns, &self.iface, &self.conf, &self.state, &log);
    }

    #[must_use]
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }

    /// How many whole log lines end with `text` (after the timestamp).
    #[must_use]
    pub fn count(&self, text: &str) -> usize {
        self.log().lines().filter(|l| l.ends_with(&format!("] {text}"))).count()
    }

    /// Waits up to `limit` for a log line ending with `text`.
    #[must_use]
    pub fn logged_within(&self, limit: Duration, text: &str) -> bool {
        wait_for(limit, || self.count(text) > 0)
    }
}
