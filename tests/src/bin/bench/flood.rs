//! Section 2: legitimate knocks under a spoofed SYN flood.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    daemon::{bin, wait_for},
    frame::{FrameBuilder, SYN},
    inject::{Injector, mac_of},
    netns::{NetPair, sh},
};

use crate::{
    Opts, cpu_seconds,
    nft::NftKnock,
    rig::{Peer, Rig},
    ticks_per_second,
};

/// The paced flood: a rate the receiving side of the veth absorbs without dropping frames
/// on this machine, so that every knock reaches the daemon.
pub(crate) const PACED_PPS: u64 = 150_000;

/// What faces the flood: a daemon, or the nftables-only ruleset (`nft`).
#[derive(Clone, Copy)]
pub(crate) enum Defender {
    Daemon(Peer),
    Nftables,
}

/// A defender set up in its namespace pair.
enum Server {
    Daemon(Rig),
    Nft(NftKnock),
}

impl Server {
    fn net(&self) -> &NetPair {
        match self {
            Server::Daemon(rig) => &rig.net,
            Server::Nft(nft) => &nft.net,
        }
    }

    fn inject(&self) -> &Injector {
        match self {
            Server::Daemon(rig) => &rig.inject,
            Server::Nft(nft) => &nft.inject,
        }
    }

    /// The client's opens so far (the nftables set forgets each open once seen).
    fn opens(&self, seen: &mut usize) -> usize {
        match self {
            Server::Daemon(rig) => rig.count("198.18.0.2: openSSH: OPEN SESAME"),
            Server::Nft(nft) => {
                *seen += usize::from(nft.take_open("198.18.0.2"));
                *seen
            }
        }
    }
}

/// Softirq and system time of all CPUs, in seconds (`/proc/stat`): the kernel's receive work,
/// where the nftables ruleset does all of its work, and XDP too.
fn kernel_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let hz = ticks_per_second();
    // user nice system idle iowait irq softirq
    (cpu.get(6).copied().unwrap_or(0.0) / hz, cpu.get(2).copied().unwrap_or(0.0) / hz)
}

/// Spoofed first knocks from every address of 198.18.0.0/15 but the test subnet
/// 198.18.0.0/24 (130,816 sources), in a shuffled order, ready for `inject`.
fn spoofed_first_knocks(inject: &Injector) -> Vec<Vec<u8>> {
    let mut sources: Vec<u32> = (256u32..131_072).collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    for i in (1..sources.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        sources.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    sources
        .iter()
        .map(|i| {
            let src = format!("{}.{}.{}.{}", 198, 18 + (i >> 16), (i >> 8) & 0xff, i & 0xff);
            inject.prepare(&FrameBuilder::tcp(&src, "198.18.0.1", 7000, SYN).build())
        })
        .collect()
}

/// A flood at `rate` packets/s (0: as fast as the sender can). With `stealth` the door has
/// `stealth = yes` (knockgate only): XDP drops the knocks, so the kernel does not answer each
/// spoofed SYN with a reset, work that otherwise competes with the sender for the CPUs.
pub(crate) fn flood(opts: &Opts, defender: Defender, rate: u64, stealth: bool) -> Value {
    let (knocks, max_secs) = if opts.smoke { (2, 3.0) } else { (8, 20.0) };
    let stealth_line = if stealth { "\tstealth = yes\n" } else { "" };
    let server = match defender {
        Defender::Daemon(peer) => Server::Daemon(Rig::start(
            peer,
            &format!("[openSSH]\n\tsequence = 7000,8000,9000\n\tseq_timeout = 5\n\ttcpflags = syn\n{stealth_line}"),
        )),
        Defender::Nftables => Server::Nft(NftKnock::start()),
    };
    let pid = match &server {
        Server::Daemon(rig) => rig.daemon.pid(),
        Server::Nft(_) => None,
    };
    let net = server.net();
    let frames = spoofed_first_knocks(server.inject());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        let inject = Injector::new(&net.client, &net.client_if, mac_of(&net.server, &net.server_if));
        // A bound only: the knocks' loop stops the flood, and a defender whose knocks all
        // fail takes max_secs and its own reads (the nftables set's listing) on top.
        let limit = Duration::from_secs_f64(max_secs + 30.0);
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut i = 0;
            let mut total = 0u64;
            while !stop.load(Ordering::Relaxed) && t.elapsed() < limit {
                let batch = &frames[i..i + 64];
                let n = inject.send_batch(batch) as u64;
                total += n;
                sent.fetch_add(n, Ordering::Relaxed);
                i = (i + 64) % (frames.len() - 64);
                if rate > 0 {
                    // Sleep off any lead over the target rate.
                    let due = Duration::from_secs_f64(total as f64 / rate as f64);
                    if let Some(ahead) = due.checked_sub(t.elapsed()) {
                        std::thread::sleep(ahead);
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let daemon_cpu = || pid.map_or(0.0, cpu_seconds);
    let (cpu0, kernel0, sent0, t0) = (daemon_cpu(), kernel_seconds(), sent.load(Ordering::Relaxed), Instant::now());
    let knock = bin("knock");
    let (mut opened, mut seen) = (0, 0);
    let mut tables = Value::Null;
    for _ in 0..knocks {
        let before = server.opens(&mut seen);
        sh(&net.in_client(&format!("{} -d 10 198.18.0.1 7000 8000 9000", knock.display())));
        if wait_for(Duration::from_secs_f64(max_secs / f64::from(knocks)), || server.opens(&mut seen) > before) {
            opened += 1;
        }
        // What the ruleset's tables hold with the flood running (at the end it may be over).
        if let (Server::Nft(nft), true) = (&server, tables.is_null()) {
            tables = json!({
                "candidates": nft.candidates(),
                "conntrack": nft.conntrack("nf_conntrack_count"),
                "conntrack_max": nft.conntrack("nf_conntrack_max"),
            });
        }
    }
    // A window of at least 5 s (1 s in smoke runs): CPU time is counted in 10 ms ticks.
    let window = Duration::from_secs(if opts.smoke { 1 } else { 5 });
    if let Some(rest) = window.checked_sub(t0.elapsed()) {
        std::thread::sleep(rest);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu, packets) = (daemon_cpu() - cpu0, sent.load(Ordering::Relaxed) - sent0);
    let kernel = kernel_seconds();
    let (softirq, system) = (kernel.0 - kernel0.0, kernel.1 - kernel0.1);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    // Frames the server's veth dropped (ring full): a knock lost there never reaches any daemon.
    let dropped = |ns: &str, dev: &str, dir: &str| {
        let stats = sh(&format!("ip -n {ns} -s -j link show dev {dev}")).stdout;
        serde_json::from_slice::<Value>(&stats).ok().and_then(|v| v[0]["stats64"][dir]["dropped"].as_u64()).unwrap_or(0)
    };
    let veth_dropped = dropped(&net.server, &net.server_if, "rx") + dropped(&net.client, &net.client_if, "tx");
    json!({
        "veth_dropped": veth_dropped,
        "paced_pps": rate,
        "stealth": stealth,
        "daemon": match defender {
            Defender::Daemon(peer) => peer.name(),
            Defender::Nftables => "nftables sets (no daemon)",
        },
        "knocks": knocks,
        "opened": opened,
        "seconds": elapsed,
        "flood_pps": packets as f64 / elapsed,
        "daemon_cpu_seconds": cpu,
        "daemon_cpu_percent": 100.0 * cpu / elapsed,
        "softirq_cpu_percent": 100.0 * softirq / elapsed,
        "system_cpu_percent": 100.0 * system / elapsed,
        "tables": tables,
    })
}
