//! `cargo xtask bench`: knockgate against knockd 0.8 (Debian), measured in one run.
//! Writes `results.json` and `BENCHMARKS.md` into the output directory and prints a summary.
//! `--smoke` runs every part at tiny sizes (part of `cargo xtask test`, so it cannot rot).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark run panics on failure")]
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::many_single_char_names,
    reason = "figures for a report"
)]

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::json;
use tests::netns::sh;

mod fleet;
mod flood;
mod latency;
mod nft;
mod per_packet;
mod report;
mod rig;
mod scale;
mod scrape;

use flood::{Defender, PACED_PPS, flood};
use latency::{gate_latency, latency, latency_with, spawn_floor};
use per_packet::per_packet;
use report::{report, summary};
use rig::Peer;
use scale::{knockd_scale, scale};

pub(crate) struct Opts {
    pub(crate) smoke: bool,
    pub(crate) out: PathBuf,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut opts = Opts { smoke: false, out: PathBuf::from("bench-out") };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => opts.smoke = true,
            "--out" => opts.out = PathBuf::from(args.next().expect("--out DIR")),
            // Diagnostics: one flood run at RATE packets/s (0: unpaced) against knockgate, or
            // with `nft` after it against the nftables ruleset, with `tc` against knockgate at TC.
            "--flood-only" => {
                let rate = args.next().and_then(|r| r.parse().ok()).unwrap_or(0);
                let defender = match args.next().as_deref() {
                    Some("nft") => Defender::Nftables,
                    Some("tc") => Defender::Daemon(Peer::KnockgateTc),
                    _ => Defender::Daemon(Peer::Knockgate),
                };
                println!("{}", flood(&opts, defender, rate, false));
                return;
            }
            // Diagnostics: knockgate's command latency and the spawn floor alone.
            "--latency-only" => {
                println!("{}\n{}", latency(&opts, Peer::Knockgate), spawn_floor(&opts));
                return;
            }
            // Diagnostics: the fleet's replication latency alone.
            "--fleet-only" => {
                println!("{}", fleet::fleet(&opts));
                return;
            }
            // Diagnostics: the per-packet table alone.
            "--per-packet-only" => {
                println!("{}", serde_json::to_string_pretty(&per_packet(&opts)).unwrap());
                return;
            }
            // Writes DIR/BENCHMARKS.md again from DIR/results.json (after a change to the report).
            "--report-from" => {
                let dir = PathBuf::from(args.next().expect("--report-from DIR"));
                let results: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
                std::fs::write(dir.join("BENCHMARKS.md"), report(&results)).unwrap();
                return;
            }
            other => panic!("unknown argument {other}; use [--smoke] [--out DIR]"),
        }
    }
    std::fs::create_dir_all(&opts.out).unwrap();
    let started = Instant::now();
    let per_packet = per_packet(&opts);
    let scale = scale(&opts);
    let knockd_scale = knockd_scale(&opts);
    let paced = if opts.smoke { 20_000 } else { PACED_PPS };
    let flood = [
        flood(&opts, Defender::Daemon(Peer::Knockgate), 0, false),
        flood(&opts, Defender::Daemon(Peer::Knockd), 0, false),
        flood(&opts, Defender::Nftables, 0, false),
        flood(&opts, Defender::Daemon(Peer::Knockgate), 0, true),
        flood(&opts, Defender::Daemon(Peer::KnockgateTc), 0, false),
        flood(&opts, Defender::Daemon(Peer::Knockgate), paced, false),
        flood(&opts, Defender::Daemon(Peer::KnockgateTc), paced, false),
        flood(&opts, Defender::Daemon(Peer::Knockd), paced, false),
        flood(&opts, Defender::Nftables, paced, false),
    ];
    let latency = [
        latency(&opts, Peer::Knockgate),
        latency_with(&opts, Peer::Knockgate, Some(Duration::from_secs(1))),
        latency_with(&opts, Peer::Knockgate, Some(Duration::ZERO)),
        latency(&opts, Peer::Knockd),
    ];
    let scrape = scrape::scrape_time(opts.smoke);
    let gate_latency = gate_latency(&opts);
    let spawn_floor = spawn_floor(&opts);
    let fleet = fleet::fleet(&opts);
    let results = json!({
        "smoke": opts.smoke,
        "kernel": String::from_utf8_lossy(&sh("uname -r").stdout).trim(),
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "seconds": started.elapsed().as_secs_f64(),
        "per_packet": per_packet,
        "scale": scale,
        "knockd_scale": knockd_scale,
        "flood": flood,
        "latency": latency,
        "gate_latency": gate_latency,
        "spawn_floor": spawn_floor,
        "scrape": scrape,
        "fleet": fleet,
    });
    std::fs::write(opts.out.join("results.json"), serde_json::to_string_pretty(&results).unwrap()).unwrap();
    let report = report(&results);
    std::fs::write(opts.out.join("BENCHMARKS.md"), &report).unwrap();
    println!("{}", summary(&results));
}

// ---------------------------------------------------------------- helpers

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() - 1) as f64 * p).round();
    v[i as usize]
}

/// CPU seconds (user + system) a process has used.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after ')' they are at 11 and 12.
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum());
    ticks / ticks_per_second()
}

/// The clock ticks per second that `/proc`'s CPU times count in.
pub(crate) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}
