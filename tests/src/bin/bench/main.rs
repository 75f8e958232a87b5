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
    fmt::Write as _,
    fs::File,
    io::Read as _,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use knock_common::{
    XDP_DROP, XDP_PASS,
    secret::derive::{Params, Secret},
};
use knockd_user::{
    XDP_PASS_EBPF,
    kernel::{KnockProgram, Limits},
};
use serde_json::{Value, json};
use tests::{
    daemon::{Daemon, bin, wait_for},
    frame::{ACK, FrameBuilder, SYN},
    inject::{Injector, mac_of},
    kernel::program_with,
    netns::{NetPair, in_netns, sh},
    pinned::PinnedState,
};

mod scrape;

struct Opts {
    smoke: bool,
    out: PathBuf,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut opts = Opts { smoke: false, out: PathBuf::from("bench-out") };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => opts.smoke = true,
            "--out" => opts.out = PathBuf::from(args.next().expect("--out DIR")),
            // Diagnostics: one flood run against knockgate at RATE packets/s (0: unpaced).
            "--flood-only" => {
                let rate = args.next().and_then(|r| r.parse().ok()).unwrap_or(0);
                println!("{}", flood(&opts, Peer::Knockgate, rate, false));
                return;
            }
            // Diagnostics: knockgate's command latency and the spawn floor alone.
            "--latency-only" => {
                println!("{}\n{}", latency(&opts, Peer::Knockgate), spawn_floor(&opts));
                return;
            }
            // Diagnostics: the per-packet table alone.
            "--per-packet-only" => {
                println!("{}", serde_json::to_string_pretty(&per_packet(&opts)).unwrap());
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
        flood(&opts, Peer::Knockgate, 0, false),
        flood(&opts, Peer::Knockd, 0, false),
        flood(&opts, Peer::Knockgate, 0, true),
        flood(&opts, Peer::Knockgate, paced, false),
        flood(&opts, Peer::Knockd, paced, false),
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
    });
    std::fs::write(opts.out.join("results.json"), serde_json::to_string_pretty(&results).unwrap()).unwrap();
    let report = report(&results);
    std::fs::write(opts.out.join("BENCHMARKS.md"), &report).unwrap();
    println!("{}", summary(&results));
}

// ---------------------------------------------------------------- helpers

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() - 1) as f64 * p).round();
    v[i as usize]
}

/// The reference programs (`knock-ebpf/src/pass.rs`): the empty `xdp_pass`, and the floors
/// `port_floor` and `knock_floor`.
fn reference_programs() -> aya::Ebpf {
    let mut ebpf = aya::Ebpf::load(XDP_PASS_EBPF).unwrap();
    for name in ["xdp_pass", "port_floor", "knock_floor"] {
        let prog: &mut aya::programs::Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load().unwrap();
    }
    ebpf
}

/// Runs reference program `name` `repeat` times on `frame`: the verdict and the kernel's mean
/// time per run. Whole nanoseconds, but the wall time of the call is no better: with
/// `repeat > 1` the kernel swaps the program into the XDP dispatcher and out again around the
/// runs, which costs milliseconds of waiting.
fn reference_run(ebpf: &aya::Ebpf, name: &str, frame: &[u8], repeat: u32) -> (u32, f64) {
    use aya::programs::TestRun as _;
    let prog: &aya::programs::Xdp = ebpf.program(name).unwrap().try_into().unwrap();
    let r =
        prog.test_run(aya::programs::TestRunOptions { data_in: Some(frame), repeat, ..Default::default() }).unwrap();
    (r.return_value, r.duration.as_nanos() as f64)
}

/// A program measured in the per-packet table.
#[derive(Clone, Copy)]
enum Measured<'a> {
    Knockgate(&'a KnockProgram),
    /// A reference program, by name.
    Reference(&'static str),
}

impl Measured<'_> {
    fn run(self, references: &aya::Ebpf, frame: &[u8], repeat: u32) -> (u32, f64) {
        match self {
            Measured::Knockgate(p) => {
                let (verdict, d) = p.test_run_timed(frame, repeat).unwrap();
                (verdict, d.as_nanos() as f64)
            }
            Measured::Reference(name) => reference_run(references, name, frame, repeat),
        }
    }
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after ')' they are at 11 and 12.
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Knockgate,
    Knockd,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Knockgate => "knockgate",
            Peer::Knockd => "knockd 0.8",
        }
    }

    fn binary(self) -> PathBuf {
        match self {
            Peer::Knockgate => bin("knockd"),
            Peer::Knockd => PathBuf::from("/usr/sbin/knockd"),
        }
    }
}

/// A daemon in a fresh namespace pair, with an injector on the client side. Fields drop in
/// order: the daemon stops first, then its pins go, then the namespaces.
struct Rig {
    daemon: Daemon,
    inject: Injector,
    state: Option<PinnedState>,
    net: NetPair,
    dir: tempfile::TempDir,
}

impl Rig {
    fn start(peer: Peer, config: &str) -> Self {
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
        let state = (peer == Peer::Knockgate).then(PinnedState::new);
        let state_args = state.as_ref().map(PinnedState::args).unwrap_or_default();
        let mut args = vec!["-i", &net.server_if, "-c", conf.to_str().unwrap()];
        args.extend(state_args.iter().map(String::as_str));
        let daemon = Daemon::start(&net.server, &peer.binary(), &args, &log);
        let inject = Injector::new(&net.client, &net.client_if, mac_of(&net.server, &net.server_if));
        Self { daemon, inject, state, net, dir }
    }

    fn syn(&self, src: &str, port: u16) {
        let dst = if src.contains(':') { "2001:db8::1" } else { "198.18.0.1" };
        self.inject.send(&FrameBuilder::tcp(src, dst, port, SYN).build());
    }

    fn count(&self, needle: &str) -> usize {
        self.daemon.log_text().matches(needle).count()
    }
}

// ---------------------------------------------------------------- 1. per-packet cost

/// Secret and plain doors set up so that one frame, repeated, takes the same path each time.
struct RepeatDoors {
    /// `c`'s first knock is in: the first port again is the step just matched.
    secret: KnockProgram,
    plain: KnockProgram,
    /// `seq_timeout = 0`: every attempt has expired by the next frame, so each is a first knock.
    secret_first: KnockProgram,
    plain_first: KnockProgram,
    /// The secret doors' first port in this window.
    first_port: u16,
    _keys: tempfile::TempDir,
}

/// The secret door's later steps differ, so no frame repeats as an advancing step: the rows
/// compare the step just matched (a retransmission) and a first knock, which both kinds of
/// door take.
fn repeat_doors(c: &str, s: &str) -> RepeatDoors {
    let keys = tempfile::tempdir().unwrap();
    let secret = Secret::from_bytes(&[7; 32]);
    let key = keys.path().join("bench.key");
    std::fs::write(&key, secret.to_hex()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let secret_door = |timeout: u32| {
        program_with(
            &format!(
                "[s]\nsecret_file = {}\nwindow = 86400\nseq_timeout = {timeout}\ntcpflags = syn\ngate = 22/tcp\n",
                key.display()
            ),
            Limits::default(),
        )
        .0
    };
    let plain_door = |timeout: u32| {
        program_with(
            &format!("[p]\nsequence = 7200,7300\nseq_timeout = {timeout}\ntcpflags = syn\n"),
            Limits::default(),
        )
        .0
    };
    let params = Params { length: 4, window_secs: 86_400, proto: knock_common::PROTO_TCP };
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let first_port = secret.window_key(&params, params.window_at(unix)).first;
    let doors = RepeatDoors {
        secret: secret_door(3600),
        plain: plain_door(3600),
        secret_first: secret_door(0),
        plain_first: plain_door(0),
        first_port,
        _keys: keys,
    };
    doors.secret.test_run(&FrameBuilder::tcp(c, s, first_port, SYN).build()).unwrap();
    doors.plain.test_run(&FrameBuilder::tcp(c, s, 7200, SYN).build()).unwrap();
    doors
}

fn per_packet(opts: &Opts) -> Value {
    let (rounds, repeat) = if opts.smoke { (3, 2_000) } else { (31, 100_000) };
    let adv = vec!["7000"; 32].join(",");
    let config = format!(
        "[adv]\nsequence = {adv}\nseq_timeout = 3600\ntcpflags = syn\n[one]\nsequence = 7100\ntcpflags = syn\ngate = 22/tcp\ngate_timeout = 3600\n"
    );
    let (p, _) = program_with(&config, Limits::default());
    // One door and two: a knock visits the doors naming its port and those where its source
    // has an attempt (`by_doors` has the cost against the number of doors).
    let (single, _) =
        program_with(&format!("[adv]\nsequence = {adv}\nseq_timeout = 3600\ntcpflags = syn\n"), Limits::default());
    let references = reference_programs();
    let (c, s) = ("198.18.0.2", "198.18.0.1");
    let r = repeat_doors(c, s);
    let mut arp = FrameBuilder::tcp(c, s, 80, SYN).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, u32, Measured<'_>)> = vec![
        ("non-IP frame (ARP)", arp, XDP_PASS, Measured::Knockgate(&p)),
        ("UDP to a non-knock port", FrameBuilder::udp(c, s, 53).build(), XDP_PASS, Measured::Knockgate(&p)),
        ("TCP ACK", FrameBuilder::tcp(c, s, 443, ACK).build(), XDP_PASS, Measured::Knockgate(&p)),
        ("SYN to a non-knock port", FrameBuilder::tcp(c, s, 443, SYN).build(), XDP_PASS, Measured::Knockgate(&p)),
        (
            "SYN that advances a knock (two doors)",
            FrameBuilder::tcp(c, s, 7000, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&p),
        ),
        (
            "SYN that advances a knock (one door)",
            FrameBuilder::tcp(c, s, 7000, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&single),
        ),
        (
            "SYN that completes a knock (opens the gate)",
            FrameBuilder::tcp("198.18.0.9", s, 7100, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&p),
        ),
        (
            "IPv6 SYN, 3 extension headers",
            FrameBuilder::tcp("2001:db8::2", "2001:db8::1", 443, SYN).v6_ext(&[0, 43, 60]).build(),
            XDP_PASS,
            Measured::Knockgate(&p),
        ),
        ("gated SYN dropped", FrameBuilder::tcp("198.18.0.3", s, 22, SYN).build(), XDP_DROP, Measured::Knockgate(&p)),
        (
            "SYN to a non-knock port, a secret door configured",
            FrameBuilder::tcp("198.18.0.7", s, 443, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&r.secret),
        ),
        (
            "secret door: the step just matched, again",
            FrameBuilder::tcp(c, s, r.first_port, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&r.secret),
        ),
        (
            "plain door: the step just matched, again",
            FrameBuilder::tcp(c, s, 7200, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&r.plain),
        ),
        (
            "secret door: a first knock (window key, PRF, attempt stored)",
            FrameBuilder::tcp(c, s, r.first_port, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&r.secret_first),
        ),
        (
            "plain door: a first knock (attempt stored)",
            FrameBuilder::tcp(c, s, 7200, SYN).build(),
            XDP_PASS,
            Measured::Knockgate(&r.plain_first),
        ),
        // What any port-knocking filter costs at least (see knock-ebpf/src/pass.rs).
        (
            "floor: the port of a SYN to a non-knock port read and compared",
            FrameBuilder::tcp(c, s, 443, SYN).build(),
            XDP_PASS,
            Measured::Reference("port_floor"),
        ),
        (
            "floor: a knock as one read and write of the source's entry",
            FrameBuilder::tcp(c, s, 7000, SYN).build(),
            XDP_PASS,
            Measured::Reference("knock_floor"),
        ),
    ];
    let rows = measure(&cases, &references, rounds, repeat);
    json!({ "runs": rounds, "repeat": repeat, "rows": rows, "by_doors": by_doors(&references, rounds, repeat) })
}

/// Door counts of the cost-against-doors table.
const DOOR_COUNTS: [u32; 4] = [1, 2, 8, 32];

/// `n` doors of three ports each, the last of them `last` instead; `timeout` for all.
fn doors_config(n: u32, last: &str, timeout: u32) -> String {
    let mut config = String::new();
    for i in 0..n - 1 {
        let p = 10_000 + i * 10;
        writeln!(config, "[d{i}]\nsequence = {p},{},{}\nseq_timeout = {timeout}\ntcpflags = syn", p + 1, p + 2)
            .unwrap();
    }
    writeln!(config, "[last]\nsequence = {last}\nseq_timeout = {timeout}\ntcpflags = syn").unwrap();
    config
}

/// The knock step against the number of doors: the knock hits the last door, so a walk over
/// every door would pass all the others first.
fn by_doors(references: &aya::Ebpf, rounds: u32, repeat: u32) -> Vec<Value> {
    let (c, s) = ("198.18.0.2", "198.18.0.1");
    // The last door's sequence is one port 32 times: each repeat of it is a later step (one
    // in 32 completes the sequence). With `seq_timeout = 0` every repeat is a first knock.
    let adv = vec!["7000"; 32].join(",");
    let mut rows = Vec::new();
    for n in DOOR_COUNTS {
        let (later, _) = program_with(&doors_config(n, &adv, 3600), Limits::default());
        let (first, _) = program_with(&doors_config(n, "7000,7001", 0), Limits::default());
        let syn = |port| FrameBuilder::tcp(c, s, port, SYN).build();
        let cases: Vec<(&str, Vec<u8>, u32, Measured<'_>)> = vec![
            ("first knock", syn(7000), XDP_PASS, Measured::Knockgate(&first)),
            ("later step", syn(7000), XDP_PASS, Measured::Knockgate(&later)),
            ("SYN to another port", syn(443), XDP_PASS, Measured::Knockgate(&later)),
        ];
        for mut row in measure(&cases, references, rounds, repeat) {
            row["doors"] = json!(n);
            rows.push(row);
        }
    }
    rows
}

/// Times each case against the empty program, in `rounds` rounds of `repeat` runs: a row each.
fn measure(
    cases: &[(&str, Vec<u8>, u32, Measured<'_>)],
    references: &aya::Ebpf,
    rounds: u32,
    repeat: u32,
) -> Vec<Value> {
    // One CPU for the whole table, so that both programs run on the same core and caches.
    let _pinned = pin_to_current_cpu();
    // Rounds interleave the cases and the two programs, so a slow spell of this shared
    // machine hits both sides of a ratio; each ratio is taken within one round.
    let mut samples = vec![(Vec::new(), Vec::new(), Vec::new(), Vec::new()); cases.len()];
    for _ in 0..rounds {
        for ((name, frame, want, p), (k, e, r, a)) in cases.iter().zip(&mut samples) {
            let (_, before) = reference_run(references, "xdp_pass", frame, repeat);
            let (verdict, kn) = p.run(references, frame, repeat);
            let (_, after) = reference_run(references, "xdp_pass", frame, repeat);
            assert_eq!(verdict, *want, "{name}");
            let en = f64::midpoint(before, after);
            k.push(kn);
            e.push(en);
            r.push(if en > 0.0 { kn / en } else { 0.0 });
            a.push(kn - en);
        }
    }
    let rows: Vec<Value> = cases
        .iter()
        .zip(&mut samples)
        .map(|((name, ..), (k, e, r, a))| {
            json!({
                "case": name,
                "knockgate_ns": median(k),
                "empty_ns": median(e),
                "added_ns": median(a),
                "ratio": median(r),
                "ratio_q1": percentile(r, 0.25),
                "ratio_q3": percentile(r, 0.75),
            })
        })
        .collect();
    rows
}

/// Pins this thread to the CPU it runs on until the guard drops (then the old set of CPUs
/// applies again: daemons and senders started later must not inherit one CPU).
fn pin_to_current_cpu() -> impl Drop {
    struct Restore(libc::cpu_set_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: a cpu_set_t read by sched_getaffinity.
            unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const self.0) };
        }
    }
    // SAFETY: plain libc calls on zeroed cpu_set_t values.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut old);
        let cpu = usize::try_from(libc::sched_getcpu()).unwrap_or(0);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
        Restore(old)
    }
}

// ---------------------------------------------------------------- 4. scale

fn scale(opts: &Opts) -> Value {
    let (sizes, runs, repeat): (&[u32], usize, u32) =
        if opts.smoke { (&[1_000], 3, 2_000) } else { (&[1_000, 100_000, 1_000_000], 21, 200_000) };
    let adv = vec!["7000"; 32].join(",");
    let references = reference_programs();
    let _pinned = pin_to_current_cpu();
    let mut rows = Vec::new();
    for &n in sizes {
        let limits = Limits { progress_entries: n, first_knock_entries: n, ..Limits::default() };
        let (mut p, doors) = program_with(&format!("[adv]\nsequence = {adv}\nseq_timeout = 3600\n"), limits);
        let epoch = doors.active().next().unwrap().1.epoch;
        let fill = Instant::now();
        p.fill_attempts(n, epoch, 0).unwrap();
        let fill_s = fill.elapsed().as_secs_f64();
        // A source in the middle of the table knocks its next step.
        let src = format!("2001:db8:ffff::{:x}:{:x}", (n / 2) >> 16, (n / 2) & 0xffff);
        let step = FrameBuilder::tcp(&src, "2001:db8::1", 7000, SYN).build();
        let other = FrameBuilder::tcp("198.18.0.2", "198.18.0.1", 443, SYN).build();
        // Each run also times the empty program, so that the rows compare as ratios: this VM's
        // speed drifts between rows more than the table size moves the cost.
        let (mut ks, mut os, mut kr, mut or) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (_, empty) = reference_run(&references, "xdp_pass", &step, repeat);
            let (_, k) = Measured::Knockgate(&p).run(&references, &step, repeat);
            let (_, o) = Measured::Knockgate(&p).run(&references, &other, repeat);
            ks.push(k);
            os.push(o);
            kr.push(k / empty.max(1.0));
            or.push(o / empty.max(1.0));
        }
        let memory = KnockProgram::map_memory();
        let tables: u64 = memory.iter().filter(|(m, _)| m == "PROGRESS" || m == "FIRST_KNOCKS").map(|(_, b)| b).sum();
        rows.push(json!({
            "sources": n,
            "knock_step_ns": median(&mut ks),
            "non_knock_syn_ns": median(&mut os),
            "knock_step_ratio": median(&mut kr),
            "non_knock_syn_ratio": median(&mut or),
            "attempt_tables_bytes": tables,
            "fill_seconds": fill_s,
        }));
    }
    json!({ "runs": runs, "repeat": repeat, "rows": rows })
}

/// knockd's CPU per packet with N attempts pending (its cleanup walks them all per packet).
fn knockd_scale(opts: &Opts) -> Value {
    let (sizes, probe): (&[usize], usize) = if opts.smoke { (&[100], 50) } else { (&[1_000, 100_000], 500) };
    let mut rows = Vec::new();
    for &n in sizes {
        let rig = Rig::start(Peer::Knockd, "[k]\n\tsequence = 7000,8000,9000\n\tseq_timeout = 3600\n");
        let pid = rig.daemon.pid().unwrap();
        let fill = Instant::now();
        let limit = Duration::from_secs(if opts.smoke { 30 } else { 600 });
        // Inject in batches and let knockd catch up, so its capture buffer never overflows.
        let mut sent = 0usize;
        while sent < n && fill.elapsed() < limit {
            let batch = 500.min(n - sent);
            for i in sent..sent + batch {
                rig.syn(&format!("2001:db8:1::{:x}:{:x}", i >> 16, i & 0xffff), 7000);
            }
            sent += batch;
            wait_for(limit.saturating_sub(fill.elapsed()), || rig.count(": k: Stage 1") >= sent * 99 / 100);
        }
        let pending = rig.count(": k: Stage 1");
        let before = cpu_seconds(pid);
        for i in 0..probe {
            rig.syn(&format!("2001:db8:2::{:x}", i + 1), 7000);
            std::thread::sleep(Duration::from_micros(200));
        }
        wait_for(Duration::from_mins(2), || rig.count(": k: Stage 1") >= pending + probe);
        let handled = rig.count(": k: Stage 1") - pending;
        let cpu = cpu_seconds(pid) - before;
        rows.push(json!({
            "pending_attempts": pending,
            "probe_packets": handled,
            "cpu_us_per_packet": if handled > 0 { cpu * 1e6 / handled as f64 } else { 0.0 },
            "fill_seconds": fill.elapsed().as_secs_f64(),
        }));
    }
    json!({ "rows": rows })
}

// ---------------------------------------------------------------- 2. flood resilience

/// The paced flood: a rate the receiving side of the veth absorbs without dropping frames
/// on this machine, so that every knock reaches the daemon.
const PACED_PPS: u64 = 150_000;

/// A flood at `rate` packets/s (0: as fast as the sender can). With `stealth` the door has
/// `stealth = yes` (knockgate only): XDP drops the knocks, so the kernel does not answer each
/// spoofed SYN with a reset, work that otherwise competes with the sender for the CPUs.
fn flood(opts: &Opts, peer: Peer, rate: u64, stealth: bool) -> Value {
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

// ---------------------------------------------------------------- 3. latency

/// Trials per latency figure: with 1,000, the p99 is the tenth-worst trial, not (with 200)
/// the second-worst, which a couple of slow wake-ups on a shared 2-vCPU VM decide.
const LATENCY_TRIALS: u32 = 1000;

fn latency(opts: &Opts, peer: Peer) -> Value {
    latency_with(opts, peer, None)
}

/// As `latency`; with `scraped`, knockgate serves metrics and a client scrapes them this far
/// apart throughout (zero: back to back; each scrape reads every kernel table), to show what
/// scrapes cost the event loop.
fn latency_with(opts: &Opts, peer: Peer, scraped: Option<Duration>) -> Value {
    let trials = if opts.smoke { 5 } else { LATENCY_TRIALS };
    let metrics = if scraped.is_some() { "\tMetricsAddress = 127.0.0.1:9742\n" } else { "" };
    let rig = Rig::start(
        peer,
        &format!(
            "{metrics}[openSSH]\n\tsequence = 7000,8000,9000\n\tseq_timeout = 5\n\ttcpflags = syn\n\tcommand = echo x > {{DIR}}/fifo\n"
        ),
    );
    if scraped.is_some()
        && let Some(state) = &rig.state
    {
        // Scrapes read the daemon's tables full, as on a host under a flood.
        scrape::fill(&state.bpf_dir, &rig.net.server_if, opts.smoke);
    }
    let scraper = scraped.map(|every| scrape::Scraper::start(&rig.net.server, "127.0.0.1:9742", every));
    let mut pipe = fifo(&rig.dir.path().join("fifo"));
    let mut timings = Timings::default();
    for i in 0..trials {
        let src = format!("198.18.{}.{}", 2 + i / 250, 1 + i % 250);
        rig.syn(&src, 7000);
        rig.syn(&src, 8000);
        std::thread::sleep(Duration::from_millis(2));
        let t0 = Instant::now();
        rig.syn(&src, 9000);
        timings.record(t0, fifo_written(&mut pipe));
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut v = timings.json(trials);
    v["daemon"] = json!(peer.name());
    if let (Some(scraper), Some(every)) = (scraper, scraped) {
        let how = if every.is_zero() { "back to back".to_owned() } else { format!("every {} ms", every.as_millis()) };
        v["daemon"] = json!(format!("{} (scraped {how})", peer.name()));
        v["scrapes"] = json!(scraper.finish());
    }
    v
}

/// The floor under every command latency on this machine: the time from asking for
/// `/bin/sh -c 'echo x > FIFO'` to reading its output, measured as `latency` measures the
/// daemons (which both run their commands through `/bin/sh -c`), with no knock and no daemon.
fn spawn_floor(opts: &Opts) -> Value {
    let trials = if opts.smoke { 5 } else { LATENCY_TRIALS };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fifo");
    let mut pipe = fifo(&path);
    let script = format!("echo x > {}", path.display());
    let mut timings = Timings::default();
    for _ in 0..trials {
        let t0 = Instant::now();
        let mut child = std::process::Command::new("/bin/sh").arg("-c").arg(&script).spawn().unwrap();
        timings.record(t0, fifo_written(&mut pipe));
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    timings.json(trials)
}

/// Latency samples (ms since each trial's start) and the trials that timed out.
#[derive(Default)]
struct Timings {
    samples: Vec<f64>,
    missed: u32,
}

impl Timings {
    fn record(&mut self, t0: Instant, arrived: bool) {
        if arrived {
            self.samples.push(t0.elapsed().as_secs_f64() * 1e3);
        } else {
            self.missed += 1;
        }
    }

    fn json(mut self, trials: u32) -> Value {
        json!({
            "trials": trials,
            "missed": self.missed,
            "p50_ms": percentile(&mut self.samples, 0.5),
            "p99_ms": percentile(&mut self.samples, 0.99),
        })
    }
}

/// Makes a FIFO at `path` for a measured command to write `x` into, and opens it read-write,
/// so that opening never blocks and the pipe never reports end of file.
fn fifo(path: &Path) -> File {
    sh(&format!("mkfifo {}", path.display()));
    std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap()
}

/// Whether the command's "x\n" arrived within 2 s; reads it.
fn fifo_written(pipe: &mut File) -> bool {
    if !readable(pipe, Duration::from_secs(2)) {
        return false;
    }
    let mut buf = [0u8; 2];
    pipe.read_exact(&mut buf).unwrap();
    true
}

fn readable(f: &File, limit: Duration) -> bool {
    let mut pfd = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&raw mut pfd, 1, ms) == 1 }
}

/// From the last knock leaving the client to a connection to the gated port being accepted.
fn gate_latency(opts: &Opts) -> Value {
    let trials = if opts.smoke { 5 } else { LATENCY_TRIALS };
    let rig = Rig::start(
        Peer::Knockgate,
        "[open]\n\tsequence = 7000,8000,9000\n\tgate = 2222/tcp\n\tgate_timeout = 3600\n[close]\n\tsequence = 9000,8000,7000\n\tgate_close = 2222/tcp\n",
    );
    let listener = in_netns(&rig.net.server, || TcpListener::bind("0.0.0.0:2222").unwrap());
    std::thread::spawn(move || while listener.accept().is_ok() {});
    let addr: SocketAddr = "198.18.0.1:2222".parse().unwrap();
    let mut timings = Timings::default();
    for _ in 0..trials {
        let sock = in_netns(&rig.net.client, || {
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap()
        });
        rig.syn("198.18.0.2", 7000);
        rig.syn("198.18.0.2", 8000);
        std::thread::sleep(Duration::from_millis(2));
        let t0 = Instant::now();
        rig.syn("198.18.0.2", 9000);
        timings.record(t0, sock.connect_timeout(&addr.into(), Duration::from_secs(2)).is_ok());
        drop(sock);
        for port in [9000, 8000, 7000] {
            rig.syn("198.18.0.2", port);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    timings.json(trials)
}

// ---------------------------------------------------------------- report

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn summary(r: &Value) -> String {
    let mut s = String::new();
    let rows = r["per_packet"]["rows"].as_array().cloned().unwrap_or_default();
    let worst_other = rows.iter().take(4).map(|x| f(&x["ratio"])).fold(0.0, f64::max);
    let ratio = |is: &dyn Fn(&str) -> bool| {
        rows.iter().find(|x| x["case"].as_str().is_some_and(is)).map_or(0.0, |x| f(&x["ratio"]))
    };
    let step = |doors: &str| ratio(&|c| c.contains("advances") && c.contains(doors));
    let floor = |what: &str| ratio(&|c| c.starts_with("floor") && c.contains(what));
    let again = |door: &str| ratio(&|c| c.starts_with(door) && c.contains("just matched"));
    let first = |door: &str| ratio(&|c| c.starts_with(door) && c.contains("a first knock"));
    writeln!(
        s,
        "per-packet: non-knock traffic <= {worst_other:.2}x the empty program, a knock step {:.2}x (one door), {:.2}x (two doors); floors {:.2}x (port), {:.2}x (knock)",
        step("one door"),
        step("two doors"),
        floor("port"),
        floor("knock as")
    )
    .unwrap();
    writeln!(
        s,
        "per-packet: secret door: a step {:.2}x the empty program, {:.2}x a plain door's same step; a first knock {:.2}x, {:.2}x a plain door's; a SYN to another port with a secret door {:.2}x",
        again("secret"),
        again("secret") / again("plain").max(f64::MIN_POSITIVE),
        first("secret"),
        first("secret") / first("plain").max(f64::MIN_POSITIVE),
        ratio(&|c| c.contains("a secret door configured"))
    )
    .unwrap();
    for fl in r["flood"].as_array().cloned().unwrap_or_default() {
        writeln!(
            s,
            "flood: {}{}: {}/{} opens, daemon {:.2}% of a core, flood {:.0} pps ({}), {} frames dropped by the veth",
            fl["daemon"].as_str().unwrap_or(""),
            if fl["stealth"].as_bool() == Some(true) { " (stealth)" } else { "" },
            fl["opened"],
            fl["knocks"],
            f(&fl["daemon_cpu_percent"]),
            f(&fl["flood_pps"]),
            if fl["paced_pps"].as_u64() == Some(0) { "as fast as possible" } else { "paced" },
            fl["veth_dropped"]
        )
        .unwrap();
    }
    for l in r["latency"].as_array().cloned().unwrap_or_default() {
        writeln!(
            s,
            "latency: {}: p50 {:.2} ms, p99 {:.2} ms",
            l["daemon"].as_str().unwrap_or(""),
            f(&l["p50_ms"]),
            f(&l["p99_ms"])
        )
        .unwrap();
    }
    let g = &r["gate_latency"];
    writeln!(s, "gate latency: p50 {:.3} ms, p99 {:.3} ms", f(&g["p50_ms"]), f(&g["p99_ms"])).unwrap();
    let g = &r["spawn_floor"];
    writeln!(s, "spawn floor: p50 {:.3} ms, p99 {:.3} ms", f(&g["p50_ms"]), f(&g["p99_ms"])).unwrap();
    let g = &r["scrape"];
    writeln!(s, "metrics scrape: full tables p50 {:.1} ms, max {:.1} ms", f(&g["full_p50_ms"]), f(&g["full_max_ms"]))
        .unwrap();
    s
}

/// A `measure` row's cells: frame, program ns, empty program ns, added ns, ratio (quartiles).
fn cost_cells(row: &Value) -> String {
    format!(
        "{} | {:.1} | {:.1} | {:.1} | {:.2}x ({:.2}-{:.2})",
        row["case"].as_str().unwrap_or(""),
        f(&row["knockgate_ns"]),
        f(&row["empty_ns"]),
        f(&row["added_ns"]),
        f(&row["ratio"]),
        f(&row["ratio_q1"]),
        f(&row["ratio_q3"])
    )
}

#[expect(clippy::too_many_lines, reason = "the report's prose, written in the order it reads")]
fn report(r: &Value) -> String {
    let mut s = String::new();
    writeln!(s, "# knockgate benchmarks\n").unwrap();
    writeln!(
        s,
        "Produced by `cargo xtask bench` (this file, `results.json` and the plots in `bench/`), kernel {}, {} CPUs, in {:.0} s. \
         Every figure is a median (or percentile) of repeated runs; every comparison is taken in the same run. \
         The machine is a shared 2-core VM: absolute numbers move from run to run, the ratios much less.\n",
        r["kernel"].as_str().unwrap_or("?"),
        r["cpus"],
        f(&r["seconds"])
    ).unwrap();
    writeln!(s, "## 1. Per-packet cost of the XDP program (`BPF_PROG_TEST_RUN`)\n").unwrap();
    writeln!(
        s,
        "{} rounds of {} repetitions per frame, the shipped program timed between two runs of an empty `XDP_PASS` program \
         loaded in the same run, all on one CPU; the ratio is the median of the rounds' ratios (in brackets, the middle half \
         of them), the ns columns are medians; \"added ns\" is the median of the rounds' differences from the empty program, \
         the figure that carries over between machines, where the empty program's own cost does not. The kernel reports \
         whole nanoseconds per run. Targets: non-knock traffic ≤ 1.3x the empty program, a knock step ≤ 3x.\n\n\
         The two floor rows are reference programs (`knock-ebpf/src/pass.rs`) that do the least any port-knocking filter \
         must: read a frame's port and compare it with a knock port; and, for a knock, also read and write one \
         per-source entry, with no check that the entry is the source's, no timeout, no flood-proof second table and no \
         event. What knockgate adds above them is its parser (VLAN tags, IPv6 extension headers, fragments), the gate, \
         and the attempt tables' safeguards.\n\n\
         The secret-door rows (`secret_file`, one door) compare with a plain door of two steps measured the same way. \
         A secret door's later ports differ from step to step, so no repeated frame advances its attempt: the rows time \
         the step just matched sent again (the attempt found, its window key checked, the port compared), and a first \
         knock (with `seq_timeout = 0`, every attempt has expired by the next frame), which computes the SipHash block \
         of the later ports and stores the attempt. A secret door's packets go from `knockgate` to `knockgate_secret` by \
         tail call. Target: a secret door's step ≤ 2x a plain door's. The SYN to another port comes from a source with \
         no attempt: with a secret door configured, every SYN and UDP datagram looks at its source's attempt sets.\n",
        r["per_packet"]["runs"], r["per_packet"]["repeat"]
    ).unwrap();
    writeln!(s, "| frame | program ns | empty program ns | added ns | ratio |\n|---|---:|---:|---:|---:|").unwrap();
    for row in r["per_packet"]["rows"].as_array().cloned().unwrap_or_default() {
        writeln!(s, "| {} |", cost_cells(&row)).unwrap();
    }
    writeln!(s, "\n![per-packet cost](bench/per_packet.png)\n").unwrap();
    writeln!(s, "### Cost against the number of doors\n").unwrap();
    writeln!(s, "N doors of three ports each; the knock hits the last door, whose sequence is one port 32 times (each repeat a later step, one in 32 completing), or, with `seq_timeout = 0`, two ports (each repeat a first knock). A knock visits only the doors naming its port and the doors where its source has an attempt (`knock_common::visit`). Measured as the table above.\n").unwrap();
    writeln!(s, "| doors | frame | program ns | empty program ns | added ns | ratio |\n|---:|---|---:|---:|---:|---:|")
        .unwrap();
    for row in r["per_packet"]["by_doors"].as_array().cloned().unwrap_or_default() {
        writeln!(s, "| {} | {} |", row["doors"], cost_cells(&row)).unwrap();
    }
    writeln!(s).unwrap();
    writeln!(s, "## 2. Flood resilience\n").unwrap();
    writeln!(
        s,
        "A spoofed SYN flood at the first knock port (130,816 sources, all of 198.18.0.0/15 but the test subnet, in random order, sent with `sendmmsg` on an `AF_PACKET` socket \
         from the client namespace, as fast as one core can) while the legitimate client runs `knock -d 10 SERVER 7000 8000 9000` \
         repeatedly. Daemon CPU is user+system time of the daemon process over the window. Target: every knock opens, under 2% of a core.\n\n\
         Each daemon faces the flood twice: as fast as the sender can, and paced to a rate the receiving side of the veth \
         absorbs here without dropping frames. With an XDP program attached, a veth queues frames for it in a ring of 256; \
         when the receiving side falls behind, the ring overflows and the veth drops frames before XDP sees them (last \
         column), legitimate knocks among them, which then cannot open. A real NIC's receive ring does the same at its own \
         limit. Without XDP (knockd's runs) the veth hands frames straight to the kernel's backlog queue, where losses are \
         not counted here. The drops come in bursts while the knock client starts and runs, so a knock is lost far more \
         often than the share of dropped frames suggests. Sender and receiver share this machine's two CPUs, and most of the receiving work \
         is the kernel's, not the daemon's: each spoofed SYN that XDP passes is answered with a TCP reset. With \
         `stealth = yes`, knockgate drops the knocks in XDP, and that work goes.\n"
    ).unwrap();
    writeln!(s, "| daemon | flood | legitimate opens | daemon CPU (% of a core) | flood rate (packets/s) | frames dropped by the veth |\n|---|---|---:|---:|---:|---:|").unwrap();
    for fl in r["flood"].as_array().cloned().unwrap_or_default() {
        let how = if fl["paced_pps"].as_u64() == Some(0) {
            "as fast as possible".to_owned()
        } else {
            format!("paced to {}", fl["paced_pps"])
        };
        writeln!(
            s,
            "| {}{} | {how} | {} of {} | {:.2}% | {:.0} | {} |",
            fl["daemon"].as_str().unwrap_or(""),
            if fl["stealth"].as_bool() == Some(true) { ", `stealth = yes`" } else { "" },
            fl["opened"],
            fl["knocks"],
            f(&fl["daemon_cpu_percent"]),
            f(&fl["flood_pps"]),
            fl["veth_dropped"]
        )
        .unwrap();
    }
    writeln!(s, "\n![flood](bench/flood.png)\n").unwrap();
    writeln!(s, "## 3. Knock-to-open latency\n").unwrap();
    writeln!(
        s,
        "From the last knock frame leaving the client to the start command running (`echo x > fifo`, timed by the benchmark reading the FIFO), \
         and, for the gate, to a TCP connection to the gated port being established. Targets: p99 under 5 ms for commands, under 1 ms for the gate. \
         Both daemons run commands through `/bin/sh -c`; the floor row is the benchmark spawning that command itself, timed the same way, \
         with no knock and no daemon: on a VM, the tail of process start-up is the machine's.\n"
    ).unwrap();
    writeln!(s, "| path | trials | missed | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|").unwrap();
    for l in r["latency"].as_array().cloned().unwrap_or_default() {
        writeln!(
            s,
            "| {} command | {} | {} | {:.3} | {:.3} |",
            l["daemon"].as_str().unwrap_or(""),
            l["trials"],
            l["missed"],
            f(&l["p50_ms"]),
            f(&l["p99_ms"])
        )
        .unwrap();
    }
    let g = &r["gate_latency"];
    writeln!(
        s,
        "| knockgate gate (connection accepted) | {} | {} | {:.3} | {:.3} |",
        g["trials"],
        g["missed"],
        f(&g["p50_ms"]),
        f(&g["p99_ms"])
    )
    .unwrap();
    let g = &r["spawn_floor"];
    writeln!(
        s,
        "| floor: the command spawned directly, no knock, no daemon | {} | {} | {:.3} | {:.3} |",
        g["trials"],
        g["missed"],
        f(&g["p50_ms"]),
        f(&g["p99_ms"])
    )
    .unwrap();
    writeln!(s, "\n![latency](bench/latency.png)\n").unwrap();
    report_scale(&mut s, r);
    scrape::report(&mut s, r);
    s
}

/// Section 4 of the report.
fn report_scale(s: &mut String, r: &Value) {
    writeln!(s, "## 4. Scale\n").unwrap();
    writeln!(s, "knockgate: the attempt tables (`PROGRESS` + `FIRST_KNOCKS`, each sized to the row) filled with N tracked sources; per-packet cost of a knock step from a tracked source and of a SYN to a non-knock port (medians of {} runs on one CPU, each also timing the empty program: the ratios compare across rows, the ns less so, as this VM's speed drifts), and the tables' kernel memory (`memlock`).\n", r["scale"]["runs"]).unwrap();
    writeln!(s, "| tracked sources | knock step ns | knock step ratio | non-knock SYN ns | non-knock SYN ratio | attempt tables memory |\n|---:|---:|---:|---:|---:|---:|").unwrap();
    for row in r["scale"]["rows"].as_array().cloned().unwrap_or_default() {
        writeln!(
            s,
            "| {} | {:.1} | {:.2}x | {:.1} | {:.2}x | {:.1} MiB |",
            row["sources"],
            f(&row["knock_step_ns"]),
            f(&row["knock_step_ratio"]),
            f(&row["non_knock_syn_ns"]),
            f(&row["non_knock_syn_ratio"]),
            f(&row["attempt_tables_bytes"]) / 1_048_576.0
        )
        .unwrap();
    }
    writeln!(s, "\nknockd 0.8: CPU per packet (a spoofed first knock) with N attempts pending; its per-packet cleanup walks every attempt.\n").unwrap();
    writeln!(s, "| pending attempts | packets measured | knockd CPU µs per packet |\n|---:|---:|---:|").unwrap();
    for row in r["knockd_scale"]["rows"].as_array().cloned().unwrap_or_default() {
        writeln!(s, "| {} | {} | {:.1} |", row["pending_attempts"], row["probe_packets"], f(&row["cpu_us_per_packet"]))
            .unwrap();
    }
    writeln!(s, "\n![scale](bench/scale.png)").unwrap();
}
