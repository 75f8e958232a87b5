//! Section 3: knock-to-open latency.

use std::{
    fs::File,
    io::Read as _,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::netns::{in_netns, sh};

use crate::{
    Opts, percentile,
    rig::{Peer, Rig},
    scrape,
};

/// Trials per latency figure: with 1,000, the p99 is the tenth-worst trial, not (with 200)
/// the second-worst, which a couple of slow wake-ups on a shared 2-vCPU VM decide.
const LATENCY_TRIALS: u32 = 1000;

pub(crate) fn latency(opts: &Opts, peer: Peer) -> Value {
    latency_with(opts, peer, None)
}

/// As `latency`; with `scraped`, knockgate serves metrics and a client scrapes them this far
/// apart throughout (zero: back to back; each scrape reads every kernel table), to show what
/// scrapes cost the event loop.
pub(crate) fn latency_with(opts: &Opts, peer: Peer, scraped: Option<Duration>) -> Value {
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
pub(crate) fn spawn_floor(opts: &Opts) -> Value {
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
pub(crate) fn gate_latency(opts: &Opts) -> Value {
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
