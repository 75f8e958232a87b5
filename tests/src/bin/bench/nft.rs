//! What an operator would build instead: port knocking in nftables alone, in the style of the
//! nftables wiki's example ("Port knocking example"): each step adds the source and the next
//! port to a set with an element timeout, the last adds the source to the allowed clients.
//! No daemon and no packet leaves the kernel.

use std::process::Command;

use serde_json::Value;
use tests::{
    inject::{Injector, mac_of},
    netns::{NetPair, sh},
};

/// The ruleset: the knock 7000, 8000, 9000 (5 s a step, as the daemons' `seq_timeout = 5`)
/// opens port 22 for 10 s. As in the wiki, the sets have no `size`, and `ct state` (which
/// makes the namespace track connections) lets established connections stay.
const RULESET: &str = "\
table inet portknock {
\tset clients_ipv4 {
\t\ttype ipv4_addr
\t\tflags timeout
\t}
\tset candidates_ipv4 {
\t\ttype ipv4_addr . inet_service
\t\tflags timeout
\t}
\tchain input {
\t\ttype filter hook input priority -10; policy accept;
\t\tiifname \"lo\" return
\t\ttcp dport 7000 add @candidates_ipv4 { ip saddr . 8000 timeout 5s }
\t\ttcp dport 8000 ip saddr . tcp dport @candidates_ipv4 add @candidates_ipv4 { ip saddr . 9000 timeout 5s }
\t\ttcp dport 9000 ip saddr . tcp dport @candidates_ipv4 add @clients_ipv4 { ip saddr timeout 10s }
\t\ttcp dport 22 ip saddr @clients_ipv4 counter accept
\t\ttcp dport 22 ct state established,related counter accept
\t\ttcp dport 22 counter reject with tcp reset
\t}
}
";

/// The ruleset loaded in a fresh namespace pair, with an injector on the client side.
pub(crate) struct NftKnock {
    pub(crate) inject: Injector,
    pub(crate) net: NetPair,
    _dir: tempfile::TempDir,
}

impl NftKnock {
    pub(crate) fn start() -> Self {
        let net = NetPair::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portknock.nft");
        std::fs::write(&path, RULESET).unwrap();
        sh(&net.in_server(&format!("nft -f {}", path.display())));
        let inject = Injector::new(&net.client, &net.client_if, mac_of(&net.server, &net.server_if));
        Self { inject, net, _dir: dir }
    }

    /// Whether `ip` is an allowed client (its knock opened); if so, removes it, so that the
    /// next knock has to open again.
    pub(crate) fn take_open(&self, ip: &str) -> bool {
        let nft = |verb: &str| {
            Command::new("ip")
                .args(["netns", "exec", &self.net.server, "nft", verb, "element", "inet", "portknock", "clients_ipv4"])
                .arg(format!("{{ {ip} }}"))
                .output()
                .is_ok_and(|o| o.status.success())
        };
        nft("get") && nft("delete")
    }

    /// The number of elements in the set of sources between steps.
    pub(crate) fn candidates(&self) -> usize {
        let out = sh(&self.net.in_server("nft -j list set inet portknock candidates_ipv4"));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|i| i["set"]["elem"].as_array().map(Vec::len)))
            .unwrap_or(0)
    }

    /// A connection-tracking figure of the server namespace: `nf_conntrack_count` (entries)
    /// or `nf_conntrack_max` (the limit).
    pub(crate) fn conntrack(&self, name: &str) -> u64 {
        let out = sh(&self.net.in_server(&format!("cat /proc/sys/net/netfilter/{name}")));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }
}
