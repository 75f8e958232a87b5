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
    netns::sh,
};

use crate::{
    Opts, cpu_seconds,
    rig::{Peer, Rig},
};

/// The paced flood: a rate the receiving side of the veth absorbs without dropping frames
/// on this machine, so that every knock reaches the daemon.
pub(crate) const PACED_PPS: u64 = 150_000;

/// A flood at `rate` packets/s (0: as fast as the sender can). With `stealth` the door has
/// `stealth = yes` (knockgate only): XDP drops the knocks, so the kernel does not answer each
/// spoofed SYN with a reset, work that otherwise competes with the sender for the CPUs.
pub(crate) fn flood(opts: &Opts, peer: Peer, rate: u64, stealth: bool) -> Value {
    let (knocks, max_secs) = if opts.smoke { (2, 3.0) } else { (8, 20.0) };
    let stealth_line = if stealth { "\tstealth = yes\n" } else { "" };
    let rig = Rig::start(
        peer,
        &format!("[openSSH]\n\tsequence = 7000,8000,9000\n\tseq_timeout = 5\n\ttcpflags = syn\n{stealth_line}"),
    );
    let pid = rig.daemon.pid().unwrap();
    // Spoofed first knocks from every address of 198.18.0.0/15 but the test subnet
    // 198.18.0.0/24 (130,816 sources), in a shuffled order.
    let mut sources: Vec<u32> = (256u32..131_072).collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    for i in (1..sources.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        sources.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let frames: Vec<Vec<u8>> = sources
        .iter()
        .map(|i| {
            let src = format!("{}.{}.{}.{}", 198, 18 + (i >> 16), (i >> 8) & 0xff, i & 0xff);
            rig.inject.prepare(&FrameBuilder::tcp(&src, "198.18.0.1", 7000, SYN).build())
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        let inject = Injector::new(&rig.net.client, &rig.net.client_if, mac_of(&rig.net.server, &rig.net.server_if));
        let limit = Duration::from_secs_f64(max_secs + 5.0);
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
    let (cpu0, sent0, t0) = (cpu_seconds(pid), sent.load(Ordering::Relaxed), Instant::now());
    let knock = bin("knock");
    let mut opened = 0;
    for _ in 0..knocks {
        let before = rig.count("198.18.0.2: openSSH: OPEN SESAME");
        sh(&rig.net.in_client(&format!("{} -d 10 198.18.0.1 7000 8000 9000", knock.display())));
        if wait_for(Duration::from_secs_f64(max_secs / f64::from(knocks)), || {
            rig.count("198.18.0.2: openSSH: OPEN SESAME") > before
        }) {
            opened += 1;
        }
    }
    // A window of at least 5 s (1 s in smoke runs): CPU time is counted in 10 ms ticks.
    let window = Duration::from_secs(if opts.smoke { 1 } else { 5 });
    if let Some(rest) = window.checked_sub(t0.elapsed()) {
        std::thread::sleep(rest);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu, packets) = (cpu_seconds(pid) - cpu0, sent.load(Ordering::Relaxed) - sent0);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    // Frames the server's veth dropped (ring full): a knock lost there never reaches any daemon.
    let stats = String::from_utf8_lossy(
        &sh(&format!("ip -n {} -s -j link show dev {}", rig.net.server, rig.net.server_if)).stdout,
    )
    .into_owned();
    let rx_dropped =
        serde_json::from_str::<Value>(&stats).ok().and_then(|v| v[0]["stats64"]["rx"]["dropped"].as_u64()).unwrap_or(0);
    let stats = String::from_utf8_lossy(
        &sh(&format!("ip -n {} -s -j link show dev {}", rig.net.client, rig.net.client_if)).stdout,
    )
    .into_owned();
    let tx_dropped =
        serde_json::from_str::<Value>(&stats).ok().and_then(|v| v[0]["stats64"]["tx"]["dropped"].as_u64()).unwrap_or(0);
    json!({
        "veth_dropped": rx_dropped + tx_dropped,
        "paced_pps": rate,
        "stealth": stealth,
        "daemon": peer.name(),
        "knocks": knocks,
        "opened": opened,
        "seconds": elapsed,
        "flood_pps": packets as f64 / elapsed,
        "daemon_cpu_seconds": cpu,
        "daemon_cpu_percent": 100.0 * cpu / elapsed,
    })
}
