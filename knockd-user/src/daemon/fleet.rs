//! The daemon's side of a fleet: this node's opens published as grants, other nodes' grants
//! applied as if the knock had been made here, and a secret door's open held until the
//! fleet grants the knock's single use.

use std::{net::IpAddr, time::Duration};

use knock_common::fleet::{Action, Grant, Refusal, claim_key};
use tokio::sync::mpsc;

use crate::{
    clock::{Clock, monotonic_ns, wall_ms},
    config::{Door, Gate, fleet::SingleUse},
    daemon::Daemon,
    fleet::{FleetLink, applied::Applied},
    observe::fleet::Claim,
};

/// A secret door's open whose single use the fleet has answered for.
#[derive(Debug)]
pub(super) struct Claimed {
    door: Door,
    ip: IpAddr,
    result: Claim,
}

/// What the daemon holds of its fleet.
pub struct FleetSide {
    pub link: FleetLink,
    grants: Option<mpsc::Receiver<Grant>>,
    claims: mpsc::Sender<Claimed>,
    claimed: Option<mpsc::Receiver<Claimed>>,
    /// Grants whose commands ran here.
    applied: Applied,
}

impl FleetSide {
    #[must_use]
    pub fn new(link: FleetLink, grants: mpsc::Receiver<Grant>, applied: Applied) -> Self {
        let (claims, claimed) = mpsc::channel(1024);
        Self { link, grants: Some(grants), claims, claimed: Some(claimed), applied }
    }

    /// The receivers of other nodes' grants and of answered claims, for the event loop.
    pub(super) fn take_receivers(&mut self) -> (mpsc::Receiver<Grant>, mpsc::Receiver<Claimed>) {
        let (_, never_g) = mpsc::channel(1);
        let (_, never_c) = mpsc::channel(1);
        (self.grants.take().unwrap_or(never_g), self.claimed.take().unwrap_or(never_c))
    }

    /// Whether grant `g`'s commands run here: not if they ran already (before a restart too).
    fn first_run(&mut self, g: &Grant, now_ms: u64) -> bool {
        self.applied.first(g.nonce, g.expires_ms, now_ms).unwrap_or_else(|e| {
            // Recorded in memory all the same: a restart may run it again.
            tracing::error!("fleet: recording an applied grant: {e}");
            true
        })
    }
}

/// How long an open of `door` lasts: its gate's allowance, or its command's `cmd_timeout`
/// when a stop command closes it.
fn open_lifetime(door: &Door) -> Option<Duration> {
    let gate = match &door.gate {
        Gate::Open { ttl, .. } => Some(*ttl),
        _ => None,
    };
    let command = (door.stop_command.is_some() || matches!(door.stop_command_6, crate::config::V6Command::Set(_)))
        .then_some(door.cmd_timeout);
    gate.max(command)
}

impl Daemon {
    /// How long this node's grant of an open of `door` lives. A close (`gate_close`, or a
    /// door whose start command is all there is) lives as long as the longest open of any
    /// door, so that no node that starts meanwhile applies an open it would have closed.
    fn grant_lifetime(&self, door: &Door) -> Duration {
        open_lifetime(door).unwrap_or_else(|| {
            self.doors.active().filter_map(|(_, s)| open_lifetime(&s.door)).max().unwrap_or(Duration::from_secs(10))
        })
    }

    /// A reload keeps the running link: new fleet options take effect at a restart.
    pub(super) fn warn_if_fleet_changed(&self, new: Option<&crate::config::fleet::Fleet>) {
        let running = self.fleet.as_ref().map(|f| &*f.link.fleet);
        if new != running {
            self.log.line("the fleet options changed: they take effect when knockd starts again");
        }
    }

    /// Publishes this node's open of `door` for `ip` to the fleet.
    pub(super) fn publish_open(&self, door: &Door, ip: IpAddr) {
        let Some(fleet) = &self.fleet else { return };
        let now = wall_ms();
        let lifetime = u64::try_from(self.grant_lifetime(door).as_millis()).unwrap_or(u64::MAX);
        let mut nonce = [0u8; 16];
        if let Err(e) = getrandom::fill(&mut nonce) {
            tracing::error!("fleet: no random nonce for a grant ({e}); not published");
            return;
        }
        fleet.link.publish(Grant {
            action: if matches!(door.gate, Gate::Close { .. }) { Action::Close } else { Action::Open },
            door: door.name.clone(),
            addr: ip,
            issued_ms: now,
            expires_ms: now.saturating_add(lifetime),
            node: fleet.link.fleet.name.clone(),
            nonce,
        });
    }

    /// Writes `door`'s gate for `ip` (the kernel left it to the daemon, or the grant is
    /// another node's), the allowance ending at `until_ns` (`CLOCK_MONOTONIC`).
    fn write_gate(&mut self, door: &Door, ip: IpAddr, until_ns: u64) {
        let done = match &door.gate {
            Gate::None => Ok(()),
            Gate::Open { ports, .. } => self.program.allow(ip, ports, until_ns),
            Gate::Close { ports } => self.program.withdraw(ip, ports),
        };
        if let Err(e) = done {
            self.log.line(&format!("{ip}: {}: the gate could not be written: {e}", door.name));
        }
    }

    /// A fleet's secret door was opened here: claims the knock's single use across the fleet
    /// (the key every node derives for this door, address and window) before opening.
    pub(super) fn claim_first(&mut self, slot: u8, epoch: u32, door: &Door, ip: IpAddr) {
        let (Some(fleet), Some(secret)) = (&self.fleet, &door.secret) else { return };
        let w = secret.window(&Clock::now());
        let window = match self.program.spent_window(ip, slot, epoch, w.saturating_sub(2)..=w.saturating_add(2)) {
            Ok(Some(window)) => window,
            Ok(None) => w,
            Err(e) => {
                tracing::warn!("fleet: reading the window {ip} opened {} with: {e}", door.name);
                w
            }
        };
        // The sequence is accepted during three windows; the claim outlives them.
        let ttl = Duration::from_secs(u64::from(secret.params.window_secs) * 3) + fleet.link.fleet.max_skew;
        let (link, claims, door) = (fleet.link.clone(), fleet.claims.clone(), door.clone());
        tokio::spawn(async move {
            let result = link.claim(claim_key(&door.name, ip, window), ttl).await;
            if claims.send(Claimed { door, ip, result }).await.is_err() {
                tracing::debug!("fleet: the daemon is gone");
            }
        });
    }

    /// The fleet has answered a secret door's claim: open, or refuse.
    pub(super) fn on_claimed(&mut self, done: Claimed) {
        let Claimed { door, ip, result } = done;
        let policy = self.fleet.as_ref().map_or(SingleUse::Strict, |f| f.link.fleet.single_use);
        match (result, policy) {
            (Claim::Claimed, _) => {}
            (Claim::Replay, _) => {
                self.log.line(&format!(
                    "{ip}: {}: replayed knock refused: a node of the fleet has opened with this knock",
                    door.name
                ));
                return;
            }
            (Claim::Unreachable, SingleUse::Strict) => {
                self.log.line(&format!(
                    "{ip}: {}: open refused: the fleet cannot be reached to claim the knock's single use (FleetSingleUse = strict)",
                    door.name
                ));
                return;
            }
            (Claim::Unreachable, SingleUse::Local) => self.log.line(&format!(
                "{ip}: {}: the fleet cannot be reached; opening on this node's single use (FleetSingleUse = local)",
                door.name
            )),
        }
        self.log.line(&format!("{ip}: {}: OPEN SESAME", door.name));
        let ttl = match &door.gate {
            Gate::Open { ttl, .. } => u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX),
            _ => 0,
        };
        self.write_gate(&door, ip, monotonic_ns().saturating_add(ttl));
        self.log_gate(&door, ip);
        self.keeper.open(&door, ip);
        self.publish_open(&door, ip);
    }

    /// Another node's grant, its signature and time checked by the link: applied as if the
    /// knock had been made here, if this node has its door.
    pub(super) fn on_grant(&mut self, grant: &Grant) {
        let Some(fleet) = &self.fleet else { return };
        let stats = std::sync::Arc::clone(&fleet.link.stats);
        let Some(door) = self.doors.active().map(|(_, s)| &s.door).find(|d| d.name == grant.door).cloned() else {
            stats.refuse(Refusal::UnknownDoor);
            self.log.line(&format!(
                "fleet: grant of {} for {} by {} refused: {}",
                grant.door,
                grant.addr,
                grant.node,
                Refusal::UnknownDoor
            ));
            return;
        };
        let now = wall_ms();
        // It may have waited in the queue: checked again.
        if let Err(why) = grant.check_time(now, fleet.link.fleet.max_skew) {
            stats.refuse(why);
            return;
        }
        #[expect(clippy::cast_precision_loss, reason = "ms of delay, far below 2^52")]
        stats.delay.observe(now.saturating_sub(grant.issued_ms) as f64 / 1000.0);
        // No longer than this node would grant for the door itself: a grant signed with a
        // far expiry opens no more than a knock here would.
        let most = self.grant_lifetime(&door) + fleet.link.fleet.max_skew;
        let remaining = grant.remaining(now).min(most);
        let ip = grant.addr;
        self.log.line(&format!("{ip}: {}: OPEN SESAME (granted by node {})", door.name, grant.node));
        let until = monotonic_ns().saturating_add(u64::try_from(remaining.as_nanos()).unwrap_or(u64::MAX));
        self.write_gate(&door, ip, until);
        self.log_gate(&door, ip);
        let runs = door.start_for(ip.is_ipv6()).is_some();
        if runs && self.fleet.as_mut().is_some_and(|f| f.first_run(grant, now)) {
            self.keeper.open_for(&door, ip, remaining);
        }
        stats.applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
