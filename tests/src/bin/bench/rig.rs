//! The daemons compared and the rig that runs one in a namespace pair.

use std::path::PathBuf;

use tests::{
    daemon::{Daemon, bin},
    frame::{FrameBuilder, SYN},
    inject::{Injector, mac_of},
    netns::NetPair,
    pinned::PinnedState,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    Knockgate,
    /// knockgate with `--attach tc`: at TC ingress (TCX, or `cls_bpf` below Linux 6.6).
    KnockgateTc,
    Knockd,
}

impl Peer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Peer::Knockgate => "knockgate",
            Peer::KnockgateTc => "knockgate at TC",
            Peer::Knockd => "knockd 0.8",
        }
    }

    pub(crate) fn binary(self) -> PathBuf {
        match self {
            Peer::Knockgate | Peer::KnockgateTc => bin("knockd"),
            Peer::Knockd => PathBuf::from("/usr/sbin/knockd"),
        }
    }
}

/// A daemon in a fresh namespace pair, with an injector on the client side. Fields drop in
/// order: the daemon stops first, then its pins go, then the namespaces.
pub(crate) struct Rig {
    pub(crate) daemon: Daemon,
    pub(crate) inject: Injector,
    pub(crate) state: Option<PinnedState>,
    pub(crate) net: NetPair,
    pub(crate) dir: tempfile::TempDir,
}

impl Rig {
    pub(crate) fn start(peer: Peer, config: &str) -> Self {
        let net = NetPair::new();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("knockd.log");
        let conf = dir.path().join("knockd.conf");
        let text = format!(
            "[options]\n\tlogfile = {}\n{}",
            log.display(),
            config.replace("{DIR}", &dir.path().display().to_string())
        );
        std::fs::write(&conf, text).unwrap();
        let state = (peer != Peer::Knockd).then(PinnedState::new);
        let state_args = state.as_ref().map(PinnedState::args).unwrap_or_default();
        let mut args = vec!["-i", &net.server_if, "-c", conf.to_str().unwrap()];
        if peer == Peer::KnockgateTc {
            args.extend(["--attach", "tc"]);
        }
        args.extend(state_args.iter().map(String::as_str));
        let daemon = Daemon::start(&net.server, &peer.binary(), &args, &log);
        let inject = Injector::new(&net.client, &net.client_if, mac_of(&net.server, &net.server_if));
        Self { daemon, inject, state, net, dir }
    }

    pub(crate) fn syn(&self, src: &str, port: u16) {
        let dst = if src.contains(':') { "2001:db8::1" } else { "198.18.0.1" };
        self.inject.send(&FrameBuilder::tcp(src, dst, port, SYN).build());
    }

    pub(crate) fn count(&self, needle: &str) -> usize {
        self.daemon.log_text().matches(needle).count()
    }
}
