//! The event loop: ring-buffer events to log lines and commands, sequence timeouts, one-time
//! sequences, SIGHUP reloads, address refresh, the interface's comings and goings, and a
//! SIGINT/SIGTERM shutdown that leaves a gate shut.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use knock_common::{EventKind, KnockEvent};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

mod fleet;
mod near_miss;

pub use fleet::FleetSide;

use crate::{
    clock::{Clock, monotonic_ns},
    commands::keeper::Keeper,
    commands::state::StateDir,
    config::one_time,
    config::{Attach, Config, Gate, Knock},
    kernel::doors::Doors,
    kernel::hooks::{Attached, Hooked},
    kernel::pin::PinDir,
    kernel::program::KnockProgram,
    kernel::spec::event_addr,
    kernel::windows::Installed,
    observe::log::KnockLog,
    observe::status::{self, DoorLabel},
};

/// How often the interface's addresses are re-read (knocks must be sent to one of them).
const ADDR_REFRESH: Duration = Duration::from_secs(2);
/// How often watched attempts are checked for their timeout.
const TIMEOUT_CHECK: Duration = Duration::from_millis(200);
/// Most attempts watched for a timeout at once (stage events are rate-limited anyway).
const MAX_WATCHED: usize = 16_384;
/// How often the daemon checks that its program is what the interface runs (the interface
/// may be deleted and made again, or its driver reloaded).
const LINK_CHECK: Duration = Duration::from_millis(500);
/// How often the secret doors' windows are checked. The kernel holds the next window's key
/// already and drops an old one at its deadline by itself, so a late check costs nothing.
const WINDOW_CHECK: Duration = Duration::from_millis(250);
/// How often secret doors' near misses are looked for (only while debug logging is on).
const NEAR_MISS_CHECK: Duration = Duration::from_secs(1);

/// Everything the loop needs.
pub struct Daemon {
    pub program: KnockProgram,
    pub doors: Doors,
    pub config_path: PathBuf,
    /// `-g`: used when the config has no `LogFile` (the config wins, as in knockd).
    pub logfile_flag: Option<PathBuf>,
    /// The interfaces served, each with its pinned state's directory.
    pub interfaces: Vec<(String, PinDir)>,
    /// The hook asked for (`Attach`, `--attach`), for attaching again.
    pub attach: Attach,
    pub ipv4_only: bool,
    /// The interface's addresses already written to `LOCAL_ADDRS` at start-up.
    pub addrs: Vec<IpAddr>,
    pub log: Arc<KnockLog>,
    /// Removed at exit (written with `-d`).
    pub pidfile: Option<PathBuf>,
    /// Runs the doors' commands.
    pub keeper: Keeper,
    /// Held for the daemon's life: no second process works on these interfaces meanwhile.
    pub states: Vec<StateDir>,
    /// Which door holds which kernel slot (for the metrics, and written for `--status`).
    pub labels: Arc<Mutex<Vec<DoorLabel>>>,
    /// The fleet this node is in (`FleetServers`).
    pub fleet: Option<FleetSide>,
}

/// An attempt whose timeout the daemon logs when it happens.
#[derive(Debug, Clone, Copy)]
struct Watched {
    epoch: u32,
    started_ns: u64,
    due_ns: u64,
}

/// The addresses of `iface` (IPv6 included unless `ipv4_only`), link-local ones too, as knockd.
pub fn interface_addrs(iface: &str, ipv4_only: bool) -> Result<Vec<IpAddr>, nix::Error> {
    let mut addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()?
        .filter(|ifa| ifa.interface_name == iface)
        .filter_map(|ifa| {
            let a = ifa.address?;
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else if ipv4_only {
                None
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

/// Tells systemd, when it asked (`NOTIFY_SOCKET`); otherwise does nothing.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!("sd_notify: {e}");
    }
}

/// Half of systemd's `WatchdogSec`, when it set one (`WATCHDOG_USEC`).
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec)
        .then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(10)))
}

impl Daemon {
    /// Serves until SIGINT or SIGTERM, then runs pending stop commands (waiting up to
    /// `shutdown_limit`) and returns. The program leaves the interface only when no door has
    /// a gate; otherwise it stays, pinned, and keeps the gate shut.
    pub async fn run(mut self, events: RingBuf<MapData>, shutdown_limit: Duration) -> anyhow::Result<()> {
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long
        // as it lives, which is as long as the AsyncFd that owns it.
        let mut events =
            unsafe { AsyncFd::register(events) }.map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        // Only now: a SIGTERM sent as soon as this line appears must find the handler.
        self.log.line(&format!("starting up, listening on {}", self.names().join(", ")));
        // systemd (Type=notify): ready once the program is attached, which it is by now; and
        // a watchdog fed from this loop, so that a loop that hangs gets knockd restarted.
        notify(&[sd_notify::NotifyState::Ready]);
        let mut watchdog = watchdog_interval().map(tokio::time::interval);
        let mut refresh = tokio::time::interval(ADDR_REFRESH);
        let mut timeouts = tokio::time::interval(TIMEOUT_CHECK);
        let mut link_check = tokio::time::interval(LINK_CHECK);
        // Secret doors' keys follow the windows (and a stepped wall clock).
        let mut window_check = tokio::time::interval(WINDOW_CHECK);
        let mut near_miss_check = tokio::time::interval(NEAR_MISS_CHECK);
        let mut near_misses = near_miss::NearMisses::default();
        let mut windows = self.installed_now();
        // Whether each interface was there at the last check (a change is logged once).
        let mut present = vec![true; self.interfaces.len()];
        let mut watched: HashMap<(IpAddr, u8), Watched> = HashMap::new();
        let mut addrs = std::mem::take(&mut self.addrs);
        let (mut grants, mut claimed) = self.fleet.as_mut().map(FleetSide::take_receivers).unzip();
        loop {
            tokio::select! {
                Some(grant) = recv(grants.as_mut()) => self.on_grant(&grant),
                Some(done) = recv(claimed.as_mut()) => self.on_claimed(done),
                guard = events.readable_mut() => {
                    let mut guard = guard?;
                    let mut batch = Vec::new();
                    while let Some(item) = guard.get_inner_mut().next() {
                        batch.extend(parse_event(&item));
                    }
                    guard.clear_ready();
                    self.on_events(&mut watched, &batch);
                }
                _ = timeouts.tick() => {
                    if let Err(e) = self.check_timeouts(&mut watched) {
                        tracing::error!("checking sequence timeouts: {e:#}");
                    }
                }
                _ = refresh.tick() => {
                    let now = self.local_addrs();
                    if now != addrs {
                        tracing::info!("addresses of {}: {now:?}", self.names().join(", "));
                        match self.program.set_local_addrs(&now) {
                            Ok(()) => addrs = now,
                            Err(e) => tracing::error!("updating local addresses: {e}"),
                        }
                    }
                }
                _ = window_check.tick() => self.follow_windows(&mut windows),
                _ = near_miss_check.tick() => self.check_near_misses(&mut near_misses, &mut watched),
                _ = link_check.tick() => {
                    for (i, was) in present.iter_mut().enumerate() {
                        *was = self.check_link(i, *was);
                    }
                }
                _ = sighup.recv() => {
                    notify(&[sd_notify::NotifyState::Reloading]);
                    if let Err(e) = self.reload() {
                        tracing::error!("reload: {e:#}");
                    }
                    notify(&[sd_notify::NotifyState::Ready]);
                }
                Some(_) = async { match watchdog.as_mut() { Some(w) => Some(w.tick().await), None => None } } => {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        notify(&[sd_notify::NotifyState::Stopping]);
        self.keeper.shutdown(shutdown_limit).await;
        match self.program.counters() {
            Ok(counters) => {
                let text: Vec<String> = counters.iter().map(|(c, v)| format!("{}={v}", c.name())).collect();
                tracing::info!("counters: {}", text.join(" "));
            }
            Err(e) => tracing::warn!("reading counters: {e}"),
        }
        if self.doors.active().any(|(_, s)| matches!(s.door.gate, Gate::Open { .. })) {
            for (iface, pins) in &self.interfaces {
                let at = match self.program.hooked(iface) {
                    Some(Hooked::Xdp) | None => "XDP",
                    Some(_) => "TC",
                };
                self.log.line(&format!(
                    "the gate stays shut: the {at} program stays on {iface}, pinned in {}; `knockd --unload -i {iface}` removes it",
                    pins.root().display()
                ));
            }
        } else {
            self.program.release()?;
        }
        self.log.line("shutting down");
        if let Some(p) = &self.pidfile
            && let Err(e) = std::fs::remove_file(p)
        {
            tracing::warn!("removing pidfile {}: {e}", p.display());
        }
        Ok(())
    }

    /// Installs the secret doors' keys anew when those in the kernel are out of date.
    fn follow_windows(&mut self, installed: &mut Installed) {
        let now = self.installed_now();
        if installed.stale(&now) {
            match self.program.apply(&self.doors) {
                Ok(()) => *installed = now,
                Err(e) => tracing::error!("installing the secret doors' window keys: {e}"),
            }
        }
    }

    /// What keys installed now would be made for.
    fn installed_now(&self) -> Installed {
        Installed::at(self.doors.active().filter_map(|(_, s)| s.door.secret.as_ref()), &Clock::now())
    }

    /// Labels the doors in force anew (after they changed) and writes them for `--status`.
    fn relabel(&mut self) {
        let counters = match self.program.door_counters() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reading the door counters: {e}");
                Vec::new()
            }
        };
        let Ok(mut labels) = self.labels.lock() else { return };
        *labels = status::labels(&self.doors, &counters, &labels);
        for state in &self.states {
            if let Err(e) = state.write_labels(&labels) {
                tracing::warn!("{e}");
            }
        }
    }

    fn names(&self) -> Vec<&str> {
        self.interfaces.iter().map(|(i, _)| i.as_str()).collect()
    }

    /// The addresses of every interface served, each once (an interface that cannot be read
    /// now adds none).
    fn local_addrs(&self) -> Vec<IpAddr> {
        let mut all = Vec::new();
        for (iface, _) in &self.interfaces {
            match interface_addrs(iface, self.ipv4_only) {
                Ok(a) => all.extend(a),
                Err(e) => tracing::warn!("reading addresses of {iface}: {e}"),
            }
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Keeps the program on interface `i`: attaches again when the interface is back (made
    /// anew, or its driver reloaded). Returns whether the interface is there.
    fn check_link(&mut self, i: usize, was_present: bool) -> bool {
        let Some((iface, pins)) = self.interfaces.get(i).cloned() else { return false };
        match self.program.attached_to(&iface) {
            Ok(Some(true)) => true,
            Ok(None) => {
                if was_present {
                    self.log.line(&format!("interface {iface} is gone; waiting for it to come back"));
                }
                false
            }
            Ok(Some(false)) => match self.program.attach(&iface, &pins, self.attach) {
                Ok((how, hooked)) => {
                    let how = if how == Attached::New { "attached" } else { "attached again" };
                    self.log.line(&format!("interface {iface} is back: {how} ({})", hooked.name()));
                    true
                }
                Err(e) => {
                    if was_present {
                        tracing::error!("attaching to {iface} again: {e}");
                    }
                    false
                }
            },
            Err(e) => {
                tracing::warn!("checking the program on {iface}: {e}");
                was_present
            }
        }
    }

    fn on_events(&mut self, watched: &mut HashMap<(IpAddr, u8), Watched>, batch: &[KnockEvent]) {
        for ev in batch {
            if let Err(e) = self.on_event(watched, ev) {
                tracing::error!("handling {ev:?}: {e:#}");
            }
        }
    }

    fn on_event(&mut self, watched: &mut HashMap<(IpAddr, u8), Watched>, ev: &KnockEvent) -> anyhow::Result<()> {
        let Some(ip) = event_addr(ev.family, ev.addr) else {
            tracing::warn!("malformed event ignored: {ev:?}");
            return Ok(());
        };
        // An event of a door since replaced (reload, one-time sequence used) is void.
        let Some(slot) = self.doors.get(ev.door, ev.epoch) else {
            tracing::debug!("event for a replaced door ignored: {ev:?}");
            return Ok(());
        };
        let door = slot.door.clone();
        match EventKind::from_u8(ev.kind) {
            Some(EventKind::Stage) => {
                self.log.line(&format!("{ip}: {}: Stage {}", door.name, ev.stage));
                let timeout = u64::try_from(door.seq_timeout.as_nanos()).unwrap_or(u64::MAX);
                let w = Watched {
                    epoch: ev.epoch,
                    started_ns: ev.started_ns,
                    due_ns: ev.started_ns.saturating_add(timeout),
                };
                if watched.len() < MAX_WATCHED || watched.contains_key(&(ip, ev.door)) {
                    watched.insert((ip, ev.door), w);
                }
            }
            Some(EventKind::Open) => {
                watched.remove(&(ip, ev.door));
                // A fleet's secret door: the kernel has left the gate to the daemon, which
                // opens it once the fleet grants the knock's single use.
                if door.secret.as_ref().is_some_and(|s| s.fleet_claim) && self.fleet.is_some() {
                    self.claim_first(ev.door, ev.epoch, &door, ip);
                    return Ok(());
                }
                self.log.line(&format!("{ip}: {}: OPEN SESAME", door.name));
                // The XDP program has already changed the gate; this only says so.
                self.log_gate(&door, ip);
                self.keeper.open(&door, ip);
                self.publish_open(&door, ip);
                if let Some(ot) = &door.one_time {
                    match one_time::advance(&ot.path, ot.offset) {
                        Ok(Some((sequence, offset))) => self.doors.set_sequence(ev.door, sequence, offset),
                        Ok(None) => {
                            self.log.line(&format!(
                                "no more sequences left in the one time sequences file for door {} --> disabling the door",
                                door.name
                            ));
                            self.doors.disable(ev.door);
                        }
                        Err(e) => {
                            self.log.line(&format!(
                                "error while disabling used one time sequence for door {} --> disabling the door ({e})",
                                door.name
                            ));
                            self.doors.disable(ev.door);
                        }
                    }
                    self.program.apply(&self.doors)?;
                    self.relabel();
                    self.relabel();
                }
            }
            None => tracing::warn!("unknown event kind {}", ev.kind),
        }
        Ok(())
    }

    /// Logs `sequence timeout` for watched attempts whose window has closed, when it closes
    /// (knockd logs it only when the next packet arrives, possibly hours later).
    fn check_timeouts(&mut self, watched: &mut HashMap<(IpAddr, u8), Watched>) -> anyhow::Result<()> {
        let now = monotonic_ns();
        let due: Vec<((IpAddr, u8), Watched)> =
            watched.iter().filter(|(_, w)| w.due_ns <= now).map(|(k, w)| (*k, *w)).collect();
        for ((ip, slot), w) in due {
            watched.remove(&(ip, slot));
            let Some(door) = self.doors.get(slot, w.epoch).map(|s| s.door.clone()) else {
                continue;
            };
            match self.program.attempt(ip, slot)? {
                Some(a) if a.epoch == w.epoch && a.started_ns == w.started_ns => {
                    self.log.line(&format!("{ip}: {}: sequence timeout (stage {})", door.name, a.stage));
                    self.program.forget_attempt(ip, slot)?;
                }
                Some(a) if a.epoch == w.epoch => {
                    // Restarted meanwhile: watch the new attempt.
                    let timeout = u64::try_from(door.seq_timeout.as_nanos()).unwrap_or(u64::MAX);
                    watched.insert(
                        (ip, slot),
                        Watched {
                            epoch: a.epoch,
                            started_ns: a.started_ns,
                            due_ns: a.started_ns.saturating_add(timeout),
                        },
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// SIGHUP: a valid new config replaces the old one (attempts at unchanged doors are kept);
    /// an invalid one is logged and the running config stays in force.
    fn reload(&mut self) -> anyhow::Result<()> {
        self.log.line("re-reading config file");
        match Config::load(&self.config_path) {
            Ok(config) => {
                let named = config.options.interfaces();
                if !named.is_empty() && named.iter().map(String::as_str).collect::<Vec<_>>() != self.names() {
                    tracing::warn!(
                        "Interface = {} in the reloaded config is ignored: knockd stays on {}",
                        named.join(", "),
                        self.names().join(", ")
                    );
                }
                self.warn_if_fleet_changed(config.options.fleet.as_ref());
                let kept = self.doors.install(config.doors);
                self.program.apply(&self.doors)?;
                self.log.reopen(config.options.log_file.as_deref().or(self.logfile_flag.as_deref()));
                self.log.line(&format!("config reloaded: {} door(s), {kept} unchanged", self.doors.active().count()));
            }
            Err(e) => self.log.line(&format!("error: {e} --> keeping the running configuration")),
        }
        Ok(())
    }
}

impl Daemon {
    /// The log line of what an open did to the door's gate.
    fn log_gate(&self, door: &crate::config::Door, ip: IpAddr) {
        match &door.gate {
            Gate::None => {}
            Gate::Open { ports, ttl } => {
                self.log.line(&format!("{ip}: {}: gate open for {}s: {}", door.name, ttl.as_secs(), gate_ports(ports)));
            }
            Gate::Close { ports } => {
                self.log.line(&format!("{ip}: {}: gate closed: {}", door.name, gate_ports(ports)));
            }
        }
    }
}

fn gate_ports(ports: &[Knock]) -> String {
    ports.iter().map(|k| format!("{}/{}", k.port, k.proto.name())).collect::<Vec<_>>().join(", ")
}

/// The next message of an optional receiver; never, without one.
async fn recv<T>(rx: Option<&mut tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn parse_event(bytes: &[u8]) -> Option<KnockEvent> {
    if bytes.len() < size_of::<KnockEvent>() {
        tracing::warn!("short event of {} bytes ignored", bytes.len());
        return None;
    }
    // SAFETY: KnockEvent is repr(C) plain data of exactly this many bytes, any bit pattern
    // valid; read_unaligned because the ring buffer gives no alignment guarantee for T.
    Some(unsafe { bytes.as_ptr().cast::<KnockEvent>().read_unaligned() })
}
