//! Prometheus metrics at `/metrics` (`MetricsAddress` or `--metrics-address`), in the
//! Prometheus text format, encoded by prometheus-client. The server runs on a thread of its
//! own and reads the kernel state from the pins at scrape time (per-CPU counters summed there),
//! so a scrape, however large the tables, never waits on the event loop nor it on a scrape.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use knock_common::fleet::Refusal;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, prometheus_text},
    metrics::histogram::{Histogram, exponential_buckets},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    kernel::netlink,
    kernel::{attach::hooked_now, hooks::Hooked, pin::PinDir},
    observe::{
        fleet::{Claim, FleetStats},
        status::{self, DoorLabel},
    },
};

/// What the command keeper (`commands::keeper`) counts, for the metrics.
#[derive(Debug)]
pub struct CommandStats {
    /// Commands run to completion, by kind (`KINDS`) and result (ok, failed).
    pub by_kind: [[AtomicU64; 2]; 3],
    /// How long commands ran, in seconds.
    pub durations: Histogram,
    /// Start commands shed because the queue (or the table of owed stops) was full.
    pub shed: AtomicU64,
    /// Stop commands owed now.
    pub pending: AtomicU64,
    /// Children running now, and the most seen at once.
    pub running: AtomicU64,
    pub most_running: AtomicU64,
}

impl Default for CommandStats {
    fn default() -> Self {
        Self {
            by_kind: Default::default(),
            // 1 ms to about 16 s.
            durations: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            shed: AtomicU64::default(),
            pending: AtomicU64::default(),
            running: AtomicU64::default(),
            most_running: AtomicU64::default(),
        }
    }
}

/// The names of the kinds `CommandStats::by_kind` counts.
pub const KINDS: [&str; 3] = ["plain", "start", "stop"];

/// What the metrics are read from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The directory the shared maps are pinned in.
    pub pins: PinDir,
    pub interfaces: Vec<String>,
    pub labels: Arc<Mutex<Vec<DoorLabel>>>,
    pub keeper: Arc<CommandStats>,
    /// The fleet's link, when the node is in one.
    pub fleet: Option<Arc<FleetStats>>,
}

/// The scrape-time collector of everything but the command-duration histogram.
#[derive(Debug)]
struct Kernel(Source);

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in values {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&[(&str, &str)], f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in values {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

#[expect(clippy::cast_precision_loss, reason = "gauges are floats")]
fn f(v: u64) -> f64 {
    v as f64
}

/// Where the program runs on each interface: `knockgate_xdp_attached` (the XDP hook's mode,
/// whoever's program it is) and `knockgate_attached` (knockgate's own hook).
fn attachments(e: &mut DescriptorEncoder, s: &Source) -> Result<(), std::fmt::Error> {
    let modes: Vec<(String, &str)> = s
        .interfaces
        .iter()
        .map(|i| {
            let mode = netlink::ifindex(i)
                .and_then(|x| netlink::xdp_state(x).ok().flatten())
                .map_or("none", |st| if st.programs.is_empty() { "none" } else { st.mode });
            (i.clone(), mode)
        })
        .collect();
    let mode_rows: Vec<[(&str, &str); 2]> =
        modes.iter().map(|(i, m)| [("interface", i.as_str()), ("mode", *m)]).collect();
    let rows: Vec<(&[(&str, &str)], f64)> =
        mode_rows.iter().map(|r| (&r[..], if r[1].1 == "none" { 0.0 } else { 1.0 })).collect();
    gauge(e, "knockgate_xdp_attached", "1 while the program is attached to the interface, in this mode.", &rows)?;

    let hooks: Vec<(String, &str)> = s
        .interfaces
        .iter()
        .map(|i| {
            let pins = PinDir::new(s.pins.root().parent().unwrap_or(s.pins.root()), i);
            (i.clone(), hooked_now(i, &pins).map_or("none", Hooked::name))
        })
        .collect();
    let hook_rows: Vec<[(&str, &str); 2]> =
        hooks.iter().map(|(i, h)| [("interface", i.as_str()), ("hook", *h)]).collect();
    let rows: Vec<(&[(&str, &str)], f64)> =
        hook_rows.iter().map(|r| (&r[..], if r[1].1 == "none" { 0.0 } else { 1.0 })).collect();
    gauge(
        e,
        "knockgate_attached",
        "1 while the program runs on the interface at this hook: xdp, tcx, or tc (cls_bpf); 0 with hook none.",
        &rows,
    )?;

    Ok(())
}

impl Collector for Kernel {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let began = Instant::now();
        let s = &self.0;
        gauge(
            &mut e,
            "knockgate_build_info",
            "The running build (value 1).",
            &[(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)],
        )?;
        attachments(&mut e, s)?;
        if let Some(fleet) = &s.fleet {
            self::fleet(&mut e, fleet)?;
        }

        let labels = s.labels.lock().map(|l| l.clone()).unwrap_or_default();
        let snap = match status::read(&s.pins, &labels) {
            Ok(snap) => snap,
            Err(err) => {
                tracing::warn!("metrics: {err}");
                return self.commands(&mut e);
            }
        };
        doors(&mut e, &snap)?;
        let c = |name: &str| snap.counters.get(name).copied().unwrap_or(0);
        for (metric, counter_name, help) in [
            ("knockgate_knock_packets", "knock_packets", "Packets to a knock port."),
            ("knockgate_knock_steps", "knock_steps", "Knocks that started or advanced an attempt."),
            (
                "knockgate_gate_drops",
                "gate_drops",
                "New connections to a gated port dropped (no allowance, or unparseable).",
            ),
            ("knockgate_gate_passes", "gate_passes", "New connections to a gated port let through by an allowance."),
            ("knockgate_stealth_drops", "stealth_drops", "Knock packets of stealth doors dropped."),
            ("knockgate_parse_errors", "parse_errors", "Frames that could not be parsed as far as the program needed."),
            ("knockgate_events_lost", "events_lost", "Events lost because the ring buffer was full."),
            ("knockgate_stage_events_suppressed", "stage_events_suppressed", "Stage events not sent (rate limit)."),
            ("knockgate_map_errors", "map_errors", "Failed kernel table updates."),
            (
                "knockgate_replays_refused",
                "replays_refused",
                "Secret-door knocks completed again by an address that had opened with that window's sequence.",
            ),
        ] {
            counter(&mut e, metric, help, &[(&[], c(counter_name))])?;
        }
        counter(
            &mut e,
            "knockgate_attempt_evictions",
            "Attempts that took the slot of another in a full set, per table.",
            &[
                (&[("table", "first_knocks")], c("first_knock_evictions")),
                (&[("table", "progress")], c("progress_evictions")),
            ],
        )?;
        let used: Vec<[(&str, &str); 1]> = snap.tables.iter().map(|t| [("table", t.table)]).collect();
        let rows: Vec<(&[(&str, &str)], f64)> =
            used.iter().zip(&snap.tables).map(|(l, t)| (&l[..], f(t.used))).collect();
        gauge(&mut e, "knockgate_table_entries", "Live entries of a kernel table (attempts, allowances).", &rows)?;
        let rows: Vec<(&[(&str, &str)], f64)> =
            used.iter().zip(&snap.tables).map(|(l, t)| (&l[..], f(t.capacity))).collect();
        gauge(&mut e, "knockgate_table_capacity", "Entries a kernel table holds.", &rows)?;
        gauge(
            &mut e,
            "knockgate_allowances",
            "Live gate allowances (source, port).",
            &[(&[], f(snap.allowances.len() as u64))],
        )?;
        let attempt_names: Vec<(String, String, u64)> =
            snap.attempts.iter().map(|a| (a.door.clone(), a.stage.to_string(), a.count)).collect();
        let attempt_rows: Vec<[(&str, &str); 2]> =
            attempt_names.iter().map(|(d, st, _)| [("door", d.as_str()), ("stage", st.as_str())]).collect();
        let rows: Vec<(&[(&str, &str)], f64)> =
            attempt_rows.iter().zip(&attempt_names).map(|(l, (_, _, n))| (&l[..], f(*n))).collect();
        gauge(&mut e, "knockgate_attempts", "Attempts in progress, per door and stage reached.", &rows)?;
        self.commands(&mut e)?;
        gauge(
            &mut e,
            "knockgate_scrape_read_seconds",
            "Time this scrape took to read the kernel state.",
            &[(&[], began.elapsed().as_secs_f64())],
        )
    }
}

/// The per-door counters.
fn doors(e: &mut DescriptorEncoder, snap: &status::Snapshot) -> Result<(), std::fmt::Error> {
    let doors: Vec<[(&str, &str); 1]> = snap.doors.iter().map(|d| [("door", d.name.as_str())]).collect();
    let per_door = |pick: fn(&status::DoorCounts) -> u64| -> Vec<(&[(&str, &str)], u64)> {
        doors.iter().zip(&snap.doors).map(|(l, d)| (&l[..], pick(&d.counts))).collect()
    };
    counter(e, "knockgate_opens", "Knock sequences completed, per door.", &per_door(|c| c.opens))?;
    counter(e, "knockgate_resets", "Attempts broken by a wrong knock, per door.", &per_door(|c| c.resets))?;
    counter(e, "knockgate_timeouts", "Attempts found past their seq_timeout, per door.", &per_door(|c| c.timeouts))?;
    let near: Vec<(&[(&str, &str)], u64)> =
        doors.iter().zip(&snap.doors).filter(|(_, d)| d.secret).map(|(l, d)| (&l[..], d.counts.resets)).collect();
    counter(
        e,
        "knockgate_near_misses",
        "Secret doors' knocks begun with a window's first port and gone on with a port of no window (check the client's window, length, clock and source address), per door; the same count as its resets.",
        &near,
    )?;
    let stage_names: Vec<(String, String, u64)> = snap
        .doors
        .iter()
        .flat_map(|d| d.counts.stages.iter().map(move |(st, n)| (d.name.clone(), st.to_string(), *n)))
        .collect();
    let stage_rows: Vec<[(&str, &str); 2]> =
        stage_names.iter().map(|(d, st, _)| [("door", d.as_str()), ("stage", st.as_str())]).collect();
    let rows: Vec<(&[(&str, &str)], u64)> =
        stage_rows.iter().zip(&stage_names).map(|(l, (_, _, n))| (&l[..], *n)).collect();
    counter(e, "knockgate_stage_reached", "Knocks that brought an attempt to this stage, per door.", &rows)?;

    Ok(())
}

impl Kernel {
    fn commands(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let k = &self.0.keeper;
        let rows: Vec<[(&str, &str); 2]> = KINDS
            .iter()
            .flat_map(|kind| [[("kind", *kind), ("result", "ok")], [("kind", *kind), ("result", "failed")]])
            .collect();
        let values: Vec<(&[(&str, &str)], u64)> =
            rows.iter().enumerate().map(|(i, l)| (&l[..], k.by_kind[i / 2][i % 2].load(Ordering::Relaxed))).collect();
        counter(e, "knockgate_commands", "Commands run to completion, by kind and result.", &values)?;
        counter(
            e,
            "knockgate_commands_shed",
            "Start commands shed: the queue was full.",
            &[(&[], k.shed.load(Ordering::Relaxed))],
        )?;
        gauge(e, "knockgate_commands_pending", "Stop commands owed.", &[(&[], f(k.pending.load(Ordering::Relaxed)))])?;
        gauge(e, "knockgate_commands_running", "Commands running now.", &[(&[], f(k.running.load(Ordering::Relaxed)))])
    }
}

/// The fleet's metrics but the delay histogram (registered on its own).
fn fleet(e: &mut DescriptorEncoder, s: &FleetStats) -> Result<(), std::fmt::Error> {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    gauge(
        e,
        "knockgate_fleet_connected",
        "1 while a NATS server of the fleet is reached.",
        &[(&[], f(load(&s.connected)))],
    )?;
    counter(
        e,
        "knockgate_fleet_grants_published",
        "Grants of this node's opens published to the fleet.",
        &[(&[], load(&s.published))],
    )?;
    gauge(
        e,
        "knockgate_fleet_grants_unsent",
        "Grants waiting for NATS to be published.",
        &[(&[], f(load(&s.unsent)))],
    )?;
    counter(e, "knockgate_fleet_grants_applied", "Other nodes' grants applied here.", &[(&[], load(&s.applied))])?;
    let reasons: Vec<[(&str, &str); 1]> = Refusal::ALL.iter().map(|r| [("reason", r.name())]).collect();
    let rows: Vec<(&[(&str, &str)], u64)> = reasons.iter().zip(&s.refused).map(|(l, v)| (&l[..], load(v))).collect();
    counter(e, "knockgate_fleet_grants_refused", "Grants refused, by reason.", &rows)?;
    let results: Vec<[(&str, &str); 1]> = Claim::ALL.iter().map(|c| [("result", c.name())]).collect();
    let rows: Vec<(&[(&str, &str)], u64)> = results.iter().zip(&s.claims).map(|(l, v)| (&l[..], load(v))).collect();
    counter(e, "knockgate_fleet_claims", "Secret doors' single-use claims across the fleet, by result.", &rows)
}

/// The registry of everything `/metrics` shows.
#[must_use]
pub fn registry(source: Source) -> Registry {
    let mut registry = Registry::default();
    registry.register("knockgate_command_duration_seconds", "How long commands ran.", source.keeper.durations.clone());
    if let Some(fleet) = &source.fleet {
        registry.register(
            "knockgate_fleet_replication_delay_seconds",
            "From a grant's issue on its node to its being applied here.",
            fleet.delay.clone(),
        );
    }
    registry.register_collector(Box::new(Kernel(source)));
    registry
}

/// The text `/metrics` serves.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// Serves `/metrics` on `listener` from a thread of its own, for as long as the process runs.
pub fn serve(listener: std::net::TcpListener, source: Source) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let registry = Arc::new(registry(source));
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => return tracing::error!("metrics: {e}"),
        };
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return tracing::error!("metrics: {e}"),
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let registry = Arc::clone(&registry);
                tokio::spawn(async move {
                    let service = service_fn(move |req| respond(req, Arc::clone(&registry)));
                    if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                        tracing::debug!("metrics connection: {e}");
                    }
                });
            }
        });
    })?;
    Ok(())
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status, kind: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = kind.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "knockgate serves /metrics\n".into()));
    }
    // The kernel state is read here, off the event loop's thread.
    Ok(match tokio::task::spawn_blocking(move || render(&registry)).await {
        Ok(Ok(text)) => reply(StatusCode::OK, prometheus_text::CONTENT_TYPE, text),
        _ => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding the metrics failed\n".into()),
    })
}
