//! What a metrics scrape costs: the time to read every kernel table with the tables full,
//! and (with `latency_with`) the command latency while a client scrapes back to back.

use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use knockd_user::{
    config::Config,
    kernel::doors::Doors,
    kernel::pin::PinDir,
    kernel::program::{KnockProgram, Limits},
    observe::metrics::CommandStats,
    observe::metrics::{self, Source},
};
use serde_json::{Value, json};
use tests::{pinned::PinnedState, service::http_get};

/// Scrapes `/metrics` at `addr` in namespace `ns`, `every` apart (zero: back to back), until
/// `finish`.
pub(crate) struct Scraper {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Scraper {
    pub(crate) fn start(ns: &str, addr: &str, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (s, c, ns, addr) = (Arc::clone(&stop), Arc::clone(&count), ns.to_owned(), addr.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if http_get(&ns, &addr, "/metrics").is_ok() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        });
        Self { stop, count, thread }
    }

    /// Stops; returns how many scrapes were served.
    pub(crate) fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.count.load(Ordering::Relaxed)
    }
}

/// Fills a running daemon's tables (pinned in `bpf_dir/iface`) with live synthetic attempts
/// and allowances, through a second load of the program on the same pins (which reuses the
/// maps and their hash key).
pub(crate) fn fill(bpf_dir: &std::path::Path, iface: &str, smoke: bool) {
    let pins = PinDir::new(bpf_dir, iface);
    let limits = Limits::default();
    let mut p = KnockProgram::load_pinned(limits, &pins, &knockd_user::kernel::rejection::scratch_logs()).unwrap();
    let epoch = p.kernel_doors().unwrap().first().map_or(0, |d| d.epoch);
    let n = if smoke { 1000 } else { 2 * limits.first_knock_entries };
    p.fill_attempts(n, epoch, knockd_user::clock::monotonic_ns()).unwrap();
    p.fill_allowances(if smoke { 1000 } else { limits.allow_entries }).unwrap();
}

/// Milliseconds a `/metrics` render takes (every kernel table read from its pins), with the
/// default table sizes empty and full.
pub(crate) fn scrape_time(smoke: bool) -> Value {
    let runs = if smoke { 2 } else { 20 };
    let state = PinnedState::new();
    let pins = PinDir::new(&state.bpf_dir, "bench0");
    knockd_user::kernel::pin::prepare_bpf_dir(&state.bpf_dir).unwrap();
    pins.make().unwrap();
    let limits = Limits::default();
    let mut p = KnockProgram::load_pinned(limits, &pins, &knockd_user::kernel::rejection::scratch_logs()).unwrap();
    // A door whose attempts last an hour, so that the filled tables hold live attempts.
    let config =
        Config::parse(std::path::Path::new("bench.conf"), "[ssh]\nsequence = 7000,8000,9000\nseq_timeout = 3600\n")
            .unwrap();
    let mut doors = Doors::new();
    doors.install(config.doors);
    p.apply(&doors).unwrap();
    let labels = Arc::new(Mutex::new(knockd_user::observe::status::labels(&doors, &p.door_counters().unwrap(), &[])));
    let source = Source {
        pins: pins.clone(),
        interfaces: Vec::new(),
        labels,
        keeper: Arc::new(CommandStats::default()),
        fleet: None,
    };
    let registry = metrics::registry(source);
    let time = |runs: u32| {
        let mut ms: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let text = metrics::render(&registry).unwrap();
                assert!(text.contains("knockgate_table_capacity"));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        (ms[ms.len() / 2], ms[ms.len() - 1])
    };
    let (empty_p50, empty_max) = time(runs);
    // Half the attempts go to each table: twice the larger table fills both.
    let full = if smoke { 1000 } else { 2 * limits.first_knock_entries };
    let epoch = doors.active().next().map_or(0, |(_, s)| s.epoch);
    p.fill_attempts(full, epoch, knockd_user::clock::monotonic_ns()).unwrap();
    p.fill_allowances(if smoke { 1000 } else { limits.allow_entries }).unwrap();
    let (full_p50, full_max) = time(runs);
    let used: Vec<u64> =
        knockd_user::observe::status::read(&pins, &[]).unwrap().tables.iter().map(|t| t.used).collect();
    drop(p);
    json!({
        "runs": runs,
        "attempt_entries": limits.first_knock_entries + limits.progress_entries,
        "allow_entries": limits.allow_entries,
        "filled": !smoke,
        "empty_p50_ms": empty_p50,
        "empty_max_ms": empty_max,
        "full_p50_ms": full_p50,
        "full_max_ms": full_max,
        "full_used": used,
    })
}

/// The scrape section of BENCHMARKS.md.
pub(crate) fn report(s: &mut String, r: &Value) {
    let g = &r["scrape"];
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let _ignored: std::fmt::Result = writeln!(
        s,
        "\n## Metrics scrape\n\n\
         A `/metrics` render reads every kernel table from its pins (the attempt tables' {} entries, each slot's keyed check \
         validated, and the {} allowances), off the event loop's thread. Median and worst of {} renders: empty tables \
         {:.1} / {:.1} ms; full tables {:.1} / {:.1} ms (live entries read: {}). The command-latency table above has rows with \
         a client scraping once a second (an aggressive Prometheus interval) and back to back (a stress: the scrapes then \
         keep one of the two CPUs busy) throughout.\n",
        g["attempt_entries"],
        g["allow_entries"],
        g["runs"],
        f(&g["empty_p50_ms"]),
        f(&g["empty_max_ms"]),
        f(&g["full_p50_ms"]),
        f(&g["full_max_ms"]),
        g["full_used"],
    );
}
