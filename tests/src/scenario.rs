//! A knockd under test: a namespace pair, a config in a temporary directory, the daemon
//! running in the server namespace, and an injector for spoofed frames from the client side.

use std::{path::PathBuf, time::Duration};

use crate::{
    daemon::{Daemon, bin, wait_for},
    frame::FrameBuilder,
    inject::{Injector, mac_of},
    netns::NetPair,
    pinned::PinnedState,
};

/// Fields drop in order: the daemon stops first, then its pins go, then the namespaces.
pub struct Scenario {
    pub daemon: Daemon,
    pub inject: Injector,
    pub state: PinnedState,
    pub net: NetPair,
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
}

/// A gated door (SSH's port as 2222) and two more, so that knocks go through the tail-called
/// door walk.
pub const GATE: &str = "
[ssh]
\tsequence = 7000,8000,9000
\tseq_timeout = 30
\ttcpflags = syn
\tgate = 2222/tcp
\tgate_timeout = 120
[other]
\tsequence = 6001,6002
[third]
\tsequence = 6101,6102
";

/// The server's IPv4 address, for frames.
pub const SERVER: &str = NetPair::SERVER_V4;

impl Scenario {
    /// `config` may use `{DIR}` for the scenario's directory; the log is `{DIR}/knockd.log`.
    #[must_use]
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// As `start`, with extra knockd arguments and files (name, content) made in `{DIR}` first.
    #[must_use]
    pub fn start_with(config: &str, extra: &[&str]) -> Self {
        Self::start_full(config, extra, &[])
    }

    /// As `start`, with extra knockd arguments and files (name, content) made in `{DIR}` first.
    #[must_use]
    pub fn start_full(config: &str, extra: &[&str], files: &[(&str, &str)]) -> Self {
        Self::start_after(config, extra, files, |_, _| {})
    }

    /// As `start_full`, with `setup` done on the namespaces before knockd starts (another
    /// program on the server's interface, say); it is given the scenario's directory too.
    #[must_use]
    pub fn start_after(
        config: &str,
        extra: &[&str],
        files: &[(&str, &str)],
        setup: impl FnOnce(&NetPair, &std::path::Path),
    ) -> Self {
        let net = NetPair::new();
        let dir = tempfile::tempdir().expect("tempdir");
        setup(&net, dir.path());
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write file");
        }
        let conf = dir.path().join("knockd.conf");
        let text = format!("[options]\n\tlogfile = {{DIR}}/knockd.log\n{config}");
        std::fs::write(&conf, text.replace("{DIR}", &dir.path().display().to_string())).expect("write config");
        let state = PinnedState::new();
        let daemon = Self::launch(&net, &state, &conf, extra, &dir.path().join("knockd.log"));
        let inject = Injector::new(&net.client, &net.client_if, mac_of(&net.server, &net.server_if));
        Self { daemon, inject, state, net, dir, conf }
    }

    fn launch(
        net: &NetPair,
        state: &PinnedState,
        conf: &std::path::Path,
        extra: &[&str],
        log: &std::path::Path,
    ) -> Daemon {
        let state_args = state.args();
        let mut args = vec!["-i", net.server_if.as_str(), "-c", conf.to_str().expect("utf-8 path")];
        // `KNOCKGATE_TEST_HOOK=tc`: the suite runs with knockd at TC ingress.
        if crate::kernel::hook() == knockd_user::kernel::hooks::Hook::Tc {
            args.extend(["--attach", "tc"]);
        }
        args.extend(state_args.iter().map(String::as_str));
        args.extend_from_slice(extra);
        // Its standard error (the tracing log, `-D`'s debug lines) goes to `{DIR}/stderr.log`.
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log.with_file_name("stderr.log"))
            .expect("stderr.log");
        Daemon::start_to(&net.server, &bin("knockd"), &args, log, stderr.into())
    }

    /// What knockd wrote to its standard error (its tracing log).
    #[must_use]
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Starts knockd again on the same config and state (after the last one ended).
    pub fn restart(&mut self, extra: &[&str]) {
        let log = self.dir.path().join("knockd.log");
        self.daemon = Self::launch(&self.net, &self.state, &self.conf, extra, &log);
    }

    /// Replaces the config file (same `{DIR}` rule) without signalling.
    pub fn rewrite_config(&self, config: &str) {
        let text = format!("[options]\n\tlogfile = {{DIR}}/knockd.log\n{config}");
        std::fs::write(&self.conf, text.replace("{DIR}", &self.dir.path().display().to_string()))
            .expect("write config");
    }

    /// TCP SYNs from `src` to the server, in order.
    pub fn syns(&self, src: &str, ports: &[u16]) {
        for &p in ports {
            self.inject.send(&FrameBuilder::tcp(src, SERVER, p, crate::frame::SYN).build());
        }
    }

    pub fn frame(&self, frame: &FrameBuilder) {
        self.inject.send(&frame.build());
    }

    #[must_use]
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }

    /// Waits until the log holds `line` (as a whole message), up to 5 s.
    #[must_use]
    pub fn logged(&self, line: &str) -> bool {
        let want = format!("] {line}\n");
        wait_for(Duration::from_secs(5), || self.log().contains(&want))
    }

    /// Counts whole log messages equal to `line`.
    #[must_use]
    pub fn count(&self, line: &str) -> usize {
        let want = format!("] {line}\n");
        self.log().matches(&want).count()
    }

    /// Waits a little for events in flight, then says whether `line` was never logged.
    #[must_use]
    pub fn not_logged(&self, line: &str) -> bool {
        std::thread::sleep(Duration::from_millis(400));
        self.count(line) == 0
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        self.daemon.signal(sig);
    }
}
