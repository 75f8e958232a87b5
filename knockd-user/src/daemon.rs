//! The event loop: ring-buffer events to log lines and commands; signals; address refresh.

use std::{net::IpAddr, sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use knock_common::{EventKind, KnockEvent};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{command::Doorkeeper, config::Config, kernel::KnockProgram, log::KnockLog, spec::event_addr};

/// How often the interface's addresses are re-read (knocks must be sent to one of them).
const ADDR_REFRESH: Duration = Duration::from_secs(2);
/// How long shutdown waits for commands (pending stops included) to finish.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// Everything the loop needs.
pub struct Daemon {
    pub program: KnockProgram,
    pub config: Config,
    pub generation: u32,
    pub interface: String,
    pub ipv4_only: bool,
    pub log: Arc<KnockLog>,
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

impl Daemon {
    /// Serves until SIGINT or SIGTERM, then runs pending stop commands and returns.
    pub async fn run(mut self, events: RingBuf<MapData>) -> anyhow::Result<()> {
        // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long
        // as it lives, which is as long as the AsyncFd that owns it.
        let mut events = unsafe { AsyncFd::register(events) }.map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut refresh = tokio::time::interval(ADDR_REFRESH);
        let mut keeper = Doorkeeper::new(Arc::clone(&self.log));
        let mut addrs = Vec::new();
        loop {
            tokio::select! {
                guard = events.readable_mut() => {
                    let mut guard = guard?;
                    while let Some(item) = guard.get_inner_mut().next() {
                        if let Some(ev) = parse_event(&item) {
                            self.on_event(&mut keeper, &ev);
                        }
                    }
                    guard.clear_ready();
                }
                _ = refresh.tick() => {
                    match interface_addrs(&self.interface, self.ipv4_only) {
                        Ok(now) if now != addrs => {
                            tracing::info!("addresses of {}: {now:?}", self.interface);
                            self.program.set_local_addrs(&now)?;
                            addrs = now;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("reading addresses of {}: {e}", self.interface),
                    }
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        if keeper.pending() > 0 {
            tracing::info!("running {} pending stop command(s) before exit", keeper.pending());
        }
        keeper.shutdown(SHUTDOWN_LIMIT).await;
        match self.program.counters() {
            Ok(counters) => {
                let text: Vec<String> = counters.iter().map(|(c, v)| format!("{}={v}", c.name())).collect();
                tracing::info!("counters: {}", text.join(" "));
            }
            Err(e) => tracing::warn!("reading counters: {e}"),
        }
        self.program.detach()?;
        self.log.line("shutting down");
        Ok(())
    }

    fn on_event(&self, keeper: &mut Doorkeeper, ev: &KnockEvent) {
        if ev.generation != self.generation {
            tracing::debug!("event from an earlier configuration ignored");
            return;
        }
        let (Some(door), Some(ip)) = (self.config.doors.get(usize::from(ev.door)), event_addr(ev.family, ev.addr)) else {
            tracing::warn!("malformed event ignored: {ev:?}");
            return;
        };
        match EventKind::from_u8(ev.kind) {
            Some(EventKind::Stage) => self.log.line(&format!("{ip}: {}: Stage {}", door.name, ev.stage)),
            Some(EventKind::Open) => {
                self.log.line(&format!("{ip}: {}: OPEN SESAME", door.name));
                keeper.open(door, ip);
            }
            None => tracing::warn!("unknown event kind {}", ev.kind),
        }
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
