//! Near misses at secret doors, said in the debug log: a knock that began with a window's first
//! port and went on with a port of no window (the kernel counts it as the door's reset). The
//! usual causes are on the client: another window or length, a clock off by more than a
//! window, or a source address the server does not see (NAT).

use std::{collections::HashMap, net::IpAddr};

use super::{Daemon, Watched};

/// Most watched attempts looked up per door and check.
const MAX_LOOKUPS: usize = 64;
/// Most sources named in one log line.
const MAX_NAMED: usize = 8;

/// Each secret door's near misses (slot, epoch) at the last check.
#[derive(Debug, Default)]
pub(super) struct NearMisses {
    seen: HashMap<(u8, u32), u64>,
}

impl Daemon {
    /// Logs the secret doors' near misses since the last check (at debug level; nothing is
    /// read when that level is off), naming the sources whose watched attempt the kernel
    /// dropped meanwhile.
    pub(super) fn check_near_misses(&self, near: &mut NearMisses, watched: &mut HashMap<(IpAddr, u8), Watched>) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let counters = match self.program.door_counters() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("reading the door counters: {e}");
                return;
            }
        };
        for (slot, s) in self.doors.active().filter(|(_, s)| s.door.secret.is_some()) {
            let Some(now) = counters.get(usize::from(slot)).map(|c| c.resets) else { continue };
            let Some(before) = near.seen.insert((slot, s.epoch), now) else { continue };
            if now <= before {
                continue;
            }
            // Watched attempts at this door that the kernel no longer holds broke meanwhile (a
            // bounded look: a flood of near misses costs a few lookups a second, not thousands).
            let broken: Vec<IpAddr> = watched
                .iter()
                .filter(|((_, sl), w)| *sl == slot && w.epoch == s.epoch)
                .take(MAX_LOOKUPS)
                .filter(|((ip, _), w)| {
                    self.program.attempt(*ip, slot).ok().flatten().is_none_or(|a| a.started_ns != w.started_ns)
                })
                .map(|((ip, _), _)| *ip)
                .take(MAX_NAMED)
                .collect();
            for ip in &broken {
                watched.remove(&(*ip, slot));
            }
            let from = if broken.is_empty() {
                String::new()
            } else {
                format!(" (from {})", broken.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            };
            tracing::debug!(
                "door {}: {} near miss(es){from}: a knock began with this window's first port and went on with a port of no window; check the client's source address (behind NAT: knock --source), clock, window and knock_length",
                s.door.name,
                now - before
            );
        }
    }
}
