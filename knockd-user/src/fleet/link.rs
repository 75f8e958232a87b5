//! The link to the fleet's NATS servers (async-nats, JetStream key-value): it publishes this
//! node's grants (keeping those NATS could not take until it can, unless they expire
//! first), watches every other node's, checks their signature and time, and hands the
//! valid ones to the daemon; and claims secret doors' single uses.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind, Operation, Store},
};
use futures_util::StreamExt as _;
use knock_common::fleet::{GRANT_PREFIX, Grant, Refusal};
use tokio::sync::{mpsc, watch};

use crate::{
    clock::wall_ms,
    config::fleet::Fleet,
    observe::{fleet::FleetStats, log::KnockLog},
};

/// The JetStream key-value bucket of a fleet's grants and claims.
pub const BUCKET: &str = "knockgate";
/// How long a request to JetStream (a publish, a claim) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often unsent grants are retried, and the bucket looked for, while NATS is away.
const RETRY: Duration = Duration::from_millis(500);
/// Longest wait between attempts to reach a NATS server again.
const MOST_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Grants kept for publishing while NATS is away; the oldest go first when full.
const MOST_UNSENT: usize = 65_536;

/// What the daemon sends the link.
#[derive(Debug)]
pub(super) enum Out {
    Publish(Grant),
}

/// The running link's shared state.
pub(super) struct Shared {
    pub(super) fleet: Fleet,
    pub(super) stats: Arc<FleetStats>,
    pub(super) log: Arc<KnockLog>,
    pub(super) connected: Arc<AtomicBool>,
    /// The bucket, once found (or made).
    pub(super) store: watch::Sender<Option<Store>>,
}

/// A refusal's log line, at most one a second per reason (a flood of forged grants must not
/// flood the log); the count is in the metrics either way.
struct Quiet {
    last: [Option<std::time::Instant>; Refusal::ALL.len()],
    held: [u64; Refusal::ALL.len()],
}

impl Quiet {
    fn refuse(&mut self, shared: &Shared, key: &str, grant: Option<&Grant>, why: Refusal) {
        shared.stats.refuse(why);
        let Some(i) = Refusal::ALL.iter().position(|r| *r == why) else { return };
        if self.last[i].is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            self.held[i] += 1;
            return;
        }
        self.last[i] = Some(std::time::Instant::now());
        let what = grant
            .map_or_else(String::new, |g| format!(" ({} of {} for {} by {})", g.action.name(), g.door, g.addr, g.node));
        let more = std::mem::take(&mut self.held[i]);
        let more =
            if more > 0 { format!("; {more} more refused for this reason since the last line") } else { String::new() };
        shared.log.line(&format!("fleet: grant {key}{what} refused: {why}{more}"));
    }
}

/// Connects (in the background: a node starts with NATS away). `connected` follows the
/// connection; `connects` counts the connections made, so that the watch can be made anew on
/// another server at once rather than when its heartbeats are found missing.
async fn connect(
    fleet: &Fleet,
    connected: Arc<AtomicBool>,
    connects: Arc<AtomicU64>,
    log: Arc<KnockLog>,
) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("knockgate {}", fleet.name))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100)
                .saturating_mul(u32::try_from(attempts).unwrap_or(u32::MAX))
                .min(MOST_RECONNECT_DELAY)
        })
        .request_timeout(Some(REQUEST_TIMEOUT))
        .event_callback(move |event| {
            let (connected, connects, log) = (Arc::clone(&connected), Arc::clone(&connects), Arc::clone(&log));
            async move {
                match event {
                    async_nats::Event::Connected => {
                        connected.store(true, Ordering::Relaxed);
                        connects.fetch_add(1, Ordering::Relaxed);
                        log.line("fleet: connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        connected.store(false, Ordering::Relaxed);
                        log.line("fleet: lost NATS; knocks here still open here, and grants wait to be sent");
                    }
                    other => tracing::info!("fleet: NATS: {other}"),
                }
            }
        });
    if let Some(path) = &fleet.credentials {
        options = options.credentials_file(path).await.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &fleet.nkey {
        let seed = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &fleet.ca_file {
        options = options.add_root_certificates(path.clone());
    }
    if fleet.servers.iter().any(|s| s.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> =
        fleet.servers.iter().map(|s| s.parse()).collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(options.connect(servers).await?)
}

/// The fleet's bucket, made if no node has made it yet.
async fn bucket(js: &jetstream::Context, fleet: &Fleet) -> anyhow::Result<Store> {
    if let Ok(store) = js.get_key_value(BUCKET).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: BUCKET.into(),
        description: "knockgate: a fleet's grants and single-use claims".into(),
        history: 1,
        num_replicas: fleet.replicas,
        // Per-key TTL: every grant and claim expires by itself.
        limit_markers: Some(Duration::from_secs(1)),
        ..kv::Config::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another node made it meanwhile.
        Err(e) => js.get_key_value(BUCKET).await.map_err(|_| anyhow::anyhow!("making the bucket {BUCKET}: {e}")),
    }
}

/// Runs the link until the daemon drops its end.
pub(super) async fn run(shared: Arc<Shared>, mut out: mpsc::Receiver<Out>, incoming: mpsc::Sender<Grant>) {
    let connects = Arc::new(AtomicU64::new(0));
    let client =
        match connect(&shared.fleet, Arc::clone(&shared.connected), Arc::clone(&connects), Arc::clone(&shared.log))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                shared.log.line(&format!("fleet: cannot connect to NATS: {e:#}; this node runs alone"));
                return;
            }
        };
    let mut js = jetstream::new(client);
    js.set_timeout(REQUEST_TIMEOUT);
    let mut unsent: VecDeque<Grant> = VecDeque::new();
    let mut quiet = Quiet { last: Default::default(), held: Default::default() };
    let mut retry = tokio::time::interval(RETRY);
    let mut watching: Option<kv::Watch> = None;
    // The last revision seen: a watch made anew goes on from there.
    let mut seen: u64 = 0;
    let mut last_connects = 0;
    loop {
        // Connected again (perhaps to another server): the watch is made anew from there.
        let made = connects.load(Ordering::Relaxed);
        if made != last_connects {
            last_connects = made;
            watching = None;
        }
        if watching.is_none() && shared.connected.load(Ordering::Relaxed) {
            watching = start_watch(&shared, &js, seen).await;
        }
        tokio::select! {
            msg = out.recv() => match msg {
                Some(Out::Publish(g)) => {
                    if unsent.len() >= MOST_UNSENT {
                        unsent.pop_front();
                    }
                    unsent.push_back(g);
                    flush(&shared, &mut unsent).await;
                }
                None => return,
            },
            entry = async { match watching.as_mut() { Some(w) => w.next().await, None => std::future::pending().await } } => {
                match entry {
                    Some(Ok(entry)) => {
                        seen = seen.max(entry.revision);
                        if entry.operation == Operation::Put && entry.key.starts_with(GRANT_PREFIX) {
                            take(&shared, &mut quiet, &entry.key, &entry.value, &incoming).await;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!("fleet: watching grants: {e}");
                        watching = None;
                    }
                    None => watching = None,
                }
            }
            _ = retry.tick() => {
                if shared.store.borrow().is_none() && shared.connected.load(Ordering::Relaxed) {
                    match bucket(&js, &shared.fleet).await {
                        Ok(store) => {
                            shared.log.line(&format!("fleet: bucket {BUCKET} ready; node {}", shared.fleet.name));
                            shared.store.send_replace(Some(store));
                        }
                        Err(e) => tracing::warn!("fleet: {e:#}"),
                    }
                }
                flush(&shared, &mut unsent).await;
            }
        }
        shared.stats.connected.store(u64::from(shared.connected.load(Ordering::Relaxed)), Ordering::Relaxed);
        shared.stats.unsent.store(unsent.len() as u64, Ordering::Relaxed);
    }
}

/// Watches the grants from revision `seen` on (all of them the first time: the grants still
/// live are applied at start-up, and after a partition).
async fn start_watch(shared: &Shared, _js: &jetstream::Context, seen: u64) -> Option<kv::Watch> {
    let store = shared.store.borrow().clone()?;
    let key = format!("{GRANT_PREFIX}>");
    let watch =
        if seen == 0 { store.watch_with_history(&key).await } else { store.watch_from_revision(&key, seen + 1).await };
    match watch {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("fleet: watching grants: {e}");
            None
        }
    }
}

/// Checks a grant read from the bucket and hands a valid one of another node to the daemon.
async fn take(shared: &Shared, quiet: &mut Quiet, key: &str, value: &[u8], incoming: &mpsc::Sender<Grant>) {
    let grant = match Grant::verify(value, &shared.fleet.key) {
        Ok(g) => g,
        Err(why) => return quiet.refuse(shared, key, None, why),
    };
    if grant.node == shared.fleet.name {
        return;
    }
    if let Err(why) = grant.check_time(wall_ms(), shared.fleet.max_skew) {
        return quiet.refuse(shared, key, Some(&grant), why);
    }
    // The daemon checks the door, applies the grant, and counts it.
    if incoming.send(grant).await.is_err() {
        tracing::debug!("fleet: the daemon is gone");
    }
}

/// Publishes what waits, oldest first, dropping what expired meanwhile; stops at the first
/// grant NATS does not take.
async fn flush(shared: &Shared, unsent: &mut VecDeque<Grant>) {
    shared.stats.unsent.store(unsent.len() as u64, Ordering::Relaxed);
    let Some(store) = shared.store.borrow().clone() else { return };
    if !shared.connected.load(Ordering::Relaxed) {
        return;
    }
    while let Some(g) = unsent.front() {
        let now = wall_ms();
        if g.expires_ms <= now {
            shared.log.line(&format!(
                "fleet: grant ({} of {} for {}) expired before NATS could take it",
                g.action.name(),
                g.door,
                g.addr
            ));
            unsent.pop_front();
            continue;
        }
        // The key lives as long as the grant, and a second more (TTLs are whole seconds).
        let ttl = g.remaining(now) + Duration::from_secs(1);
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            store.create_with_ttl(g.key(), g.sign(&shared.fleet.key).into(), ttl),
        )
        .await
        {
            Ok(Ok(_)) => {
                shared.stats.published.fetch_add(1, Ordering::Relaxed);
                unsent.pop_front();
            }
            // Published already (a reply lost on the way back).
            Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => {
                unsent.pop_front();
            }
            Ok(Err(e)) => {
                tracing::warn!("fleet: publishing a grant: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!("fleet: publishing a grant: no answer in {}s", REQUEST_TIMEOUT.as_secs());
                return;
            }
        }
    }
}
