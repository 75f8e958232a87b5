//! A fleet of nodes sharing their opens through NATS JetStream (`FleetServers`): the handle
//! the daemon holds (`FleetLink`), which publishes this node's grants, hands over other
//! nodes' valid ones, and claims secret doors' single uses; and the record of the grants
//! whose commands this node has run (`applied`).

pub mod applied;
mod link;

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use async_nats::jetstream::kv::CreateErrorKind;
use knock_common::fleet::Grant;
use tokio::sync::{mpsc, watch};

use crate::{
    config::fleet::Fleet,
    observe::{
        fleet::{Claim, FleetStats},
        log::KnockLog,
    },
};

pub use link::{BUCKET, REQUEST_TIMEOUT};

/// Grants waiting for the link; past this many, the newest is dropped and logged.
const QUEUE: usize = 4096;

/// The daemon's end of the link.
#[derive(Clone)]
pub struct FleetLink {
    out: mpsc::Sender<link::Out>,
    store: watch::Receiver<Option<async_nats::jetstream::kv::Store>>,
    connected: Arc<AtomicBool>,
    pub stats: Arc<FleetStats>,
    pub fleet: Arc<Fleet>,
    log: Arc<KnockLog>,
}

impl FleetLink {
    /// Starts the link on the current Tokio runtime; the receiver yields other nodes' grants
    /// whose signature and time are good.
    #[must_use]
    pub fn start(fleet: &Fleet, log: Arc<KnockLog>) -> (Self, mpsc::Receiver<Grant>) {
        let (out, out_rx) = mpsc::channel(QUEUE);
        let (incoming_tx, incoming) = mpsc::channel(QUEUE);
        let (store_tx, store) = watch::channel(None);
        let connected = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FleetStats::default());
        let shared = Arc::new(link::Shared {
            fleet: fleet.clone(),
            stats: Arc::clone(&stats),
            log: Arc::clone(&log),
            connected: Arc::clone(&connected),
            store: store_tx,
        });
        tokio::spawn(link::run(shared, out_rx, incoming_tx));
        (Self { out, store, connected, stats, fleet: Arc::new(fleet.clone()), log }, incoming)
    }

    /// Publishes `grant` now, or as soon as NATS can take it.
    pub fn publish(&self, grant: Grant) {
        if self.out.try_send(link::Out::Publish(grant)).is_err() {
            self.log.line("fleet: a grant was dropped: the queue to NATS is full");
        }
    }

    /// Claims the single use `key` names for `ttl`: `Claimed` if no node had, `Replay` if
    /// one had, `Unreachable` if NATS could not say within `REQUEST_TIMEOUT`.
    pub async fn claim(&self, key: String, ttl: Duration) -> Claim {
        let store = self.store.borrow().clone();
        let result = match store {
            Some(store) if self.connected.load(std::sync::atomic::Ordering::Relaxed) => {
                let node = self.fleet.name.clone().into_bytes().into();
                match tokio::time::timeout(REQUEST_TIMEOUT, store.create_with_ttl(key, node, ttl)).await {
                    Ok(Ok(_)) => Claim::Claimed,
                    Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => Claim::Replay,
                    Ok(Err(e)) => {
                        tracing::warn!("fleet: claiming a single use: {e}");
                        Claim::Unreachable
                    }
                    Err(_) => Claim::Unreachable,
                }
            }
            _ => Claim::Unreachable,
        };
        self.stats.claim(result);
        result
    }
}
