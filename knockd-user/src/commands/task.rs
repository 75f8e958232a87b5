//! The command keeper's task: opens queued within bounds (stops ahead of starts), children
//! run at most `MaxCommands` at once, owed stops kept by due time and journaled.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinSet};

use crate::{
    commands::{
        command::run,
        journal::{Entry, Journal},
    },
    observe::{log::KnockLog, metrics::CommandStats},
};

/// Start commands that may wait for a free slot, per slot.
const QUEUE_PER_SLOT: usize = 16;
/// Most stop commands owed at once; past it new starts are shed (memory stays bounded
/// whatever the rate of opens times `cmd_timeout`).
pub const MAX_PENDING_STOPS: usize = 65_536;
/// The longest the keeper sleeps between looks at the wall clock (due times are wall-clock,
/// and the clock may be set).
const CLOCK_LOOK: Duration = Duration::from_secs(1);

/// An open to act on, with the door's commands substituted.
#[derive(Debug, Clone)]
pub(super) struct Open {
    pub(super) door: String,
    pub(super) ip: IpAddr,
    pub(super) start: String,
    pub(super) stop: Option<String>,
    pub(super) timeout: Duration,
}

pub(super) enum Msg {
    Open(Open),
    Shutdown,
}

/// Where an owed stop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The start command waits for a slot (or for the journal sync).
    Queued,
    /// The start command runs.
    Starting,
    /// Waiting for the due time.
    Open,
    /// The stop command waits for a slot or runs.
    Stopping,
}

#[derive(Debug)]
struct Pending {
    due_ms: u64,
    stop: String,
    timeout: Duration,
    state: State,
    /// A knock that came while the stop ran: started again once the stop is done.
    reopen: Option<Open>,
}

type Key = (String, IpAddr);

#[derive(Debug)]
enum Kind {
    /// A door without a stop command.
    Plain,
    Start,
    Stop,
}

#[derive(Debug)]
struct Job {
    kind: Kind,
    door: String,
    ip: IpAddr,
    cmd: String,
}

/// The keeper's task, which owns everything below.
pub(super) struct Task {
    log: Arc<KnockLog>,
    journal: Journal,
    stats: Arc<CommandStats>,
    max_running: usize,
    max_queued: usize,
    pending: HashMap<Key, Pending>,
    /// Due times of `Open` entries; stale ones (pushed back since) are skipped when popped.
    heap: BinaryHeap<Reverse<(u64, Key)>>,
    stops: VecDeque<Job>,
    starts: VecDeque<Job>,
    /// Starts journaled but not yet synced.
    unsynced: Vec<Job>,
    running: JoinSet<(Job, bool)>,
    shutting_down: bool,
}

pub(super) fn now_ms() -> u64 {
    crate::clock::wall_ms()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Task {
    /// A task with nothing owed yet (`adopt` gives it the journal's entries).
    pub(super) fn new(log: Arc<KnockLog>, journal: Journal, stats: Arc<CommandStats>, max_commands: u32) -> Self {
        let max_running = usize::try_from(max_commands.max(1)).unwrap_or(usize::MAX);
        Self {
            log,
            journal,
            stats,
            max_running,
            max_queued: max_running.saturating_mul(QUEUE_PER_SLOT),
            pending: HashMap::new(),
            heap: BinaryHeap::new(),
            stops: VecDeque::new(),
            starts: VecDeque::new(),
            unsynced: Vec::new(),
            running: JoinSet::new(),
            shutting_down: false,
        }
    }

    /// Runs until shut down: takes the opens sent on `rx`, runs what is due.
    pub(super) async fn serve(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                msg = rx.recv(), if !self.shutting_down => {
                    let mut next = msg;
                    // Take every open waiting, so that one sync covers the whole batch.
                    loop {
                        match next {
                            Some(Msg::Open(o)) => self.open(o),
                            Some(Msg::Shutdown) | None => {
                                self.begin_shutdown();
                                break;
                            }
                        }
                        match rx.try_recv() {
                            Ok(m) => next = Some(m),
                            Err(_) => break,
                        }
                    }
                    self.sync();
                }
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    match done {
                        Ok((job, ok)) => self.finished(job, ok),
                        Err(e) => tracing::error!("a command task failed: {e}"),
                    }
                    self.sync();
                }
                () = tokio::time::sleep(wake) => {}
            }
            // Due stops are queued before anything is dispatched, so they go ahead of starts.
            self.fire_due();
            self.dispatch();
            self.stats.pending.store(self.pending.len() as u64, Ordering::Relaxed);
            if self.journal.wants_compaction(self.pending.len()) {
                let live = self.live_entries();
                if let Err(e) = self.journal.compact(&live) {
                    tracing::error!("compacting the journal: {e}");
                }
            }
            if self.shutting_down && self.running.is_empty() && self.stops.is_empty() {
                break;
            }
        }
        self.sync();
    }

    /// Takes an entry read back from the journal.
    pub(super) fn adopt(&mut self, e: Entry) {
        let key = (e.door, e.ip);
        self.heap.push(Reverse((e.due_ms, key.clone())));
        let p = Pending { due_ms: e.due_ms, stop: e.stop, timeout: Duration::ZERO, state: State::Open, reopen: None };
        self.pending.insert(key, p);
    }

    fn shed(&self, o: &Open, why: &str) {
        self.stats.shed.fetch_add(1, Ordering::Relaxed);
        self.log.line(&format!("{}: {}: start command shed: {why}", o.ip, o.door));
    }

    fn open(&mut self, o: Open) {
        let job = Job { kind: Kind::Start, door: o.door.clone(), ip: o.ip, cmd: o.start.clone() };
        let Some(stop) = o.stop.clone() else {
            if self.starts.len() + self.unsynced.len() >= self.max_queued {
                self.shed(&o, &format!("{} commands waiting", self.max_queued));
            } else {
                self.starts.push_back(Job { kind: Kind::Plain, ..job });
            }
            return;
        };
        let key = (o.door.clone(), o.ip);
        if let Some(p) = self.pending.get_mut(&key) {
            if p.state == State::Stopping {
                self.log.line(&format!("{}: {}: closing under way; opening again after it", o.ip, o.door));
                p.reopen = Some(o);
                return;
            }
            p.due_ms = p.due_ms.max(now_ms().saturating_add(ms(o.timeout)));
            p.timeout = o.timeout;
            let due = p.due_ms;
            self.log.line(&format!(
                "{}: {}: already open, closing postponed by {}s",
                o.ip,
                o.door,
                o.timeout.as_secs()
            ));
            if p.state == State::Open {
                self.heap.push(Reverse((due, key)));
            }
            if let Err(e) = self.journal.due(&o.door, o.ip, due) {
                tracing::error!("journal: {e}");
            }
            return;
        }
        if self.pending.len() >= MAX_PENDING_STOPS {
            self.shed(&o, &format!("{MAX_PENDING_STOPS} stop commands owed"));
            return;
        }
        if self.starts.len() + self.unsynced.len() >= self.max_queued {
            self.shed(&o, &format!("{} commands waiting", self.max_queued));
            return;
        }
        let due_ms = now_ms().saturating_add(ms(o.timeout));
        let entry = Entry { door: o.door.clone(), ip: o.ip, due_ms, stop: stop.clone() };
        if let Err(e) = self.journal.add(&entry) {
            // No start without its stop on disk.
            self.shed(&o, &format!("journal: {e}"));
            return;
        }
        self.pending.insert(key, Pending { due_ms, stop, timeout: o.timeout, state: State::Queued, reopen: None });
        self.unsynced.push(job);
    }

    /// Makes the journal durable; only then may the starts it covers run.
    fn sync(&mut self) {
        match self.journal.sync() {
            Ok(()) => self.starts.extend(self.unsynced.drain(..)),
            Err(e) => {
                for job in std::mem::take(&mut self.unsynced) {
                    self.pending.remove(&(job.door.clone(), job.ip));
                    self.stats.shed.fetch_add(1, Ordering::Relaxed);
                    self.log.line(&format!("{}: {}: start command shed: journal: {e}", job.ip, job.door));
                }
            }
        }
    }

    /// Starts queued commands while slots are free, stops first.
    fn dispatch(&mut self) {
        while self.running.len() < self.max_running {
            let Some(job) = self.stops.pop_front().or_else(|| self.starts.pop_front()) else {
                break;
            };
            if matches!(job.kind, Kind::Start)
                && let Some(p) = self.pending.get_mut(&(job.door.clone(), job.ip))
            {
                p.state = State::Starting;
            }
            let log = Arc::clone(&self.log);
            let stats = Arc::clone(&self.stats);
            self.running.spawn(async move {
                let began = std::time::Instant::now();
                let code = run(&log, &job.door, &job.cmd).await;
                stats.durations.observe(began.elapsed().as_secs_f64());
                (job, code == Some(0))
            });
            let running = self.running.len() as u64;
            self.stats.running.store(running, Ordering::Relaxed);
            self.stats.most_running.fetch_max(running, Ordering::Relaxed);
        }
    }

    fn finished(&mut self, job: Job, ok: bool) {
        let kind = match job.kind {
            Kind::Plain => 0,
            Kind::Start => 1,
            Kind::Stop => 2,
        };
        self.stats.by_kind[kind][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        self.stats.running.store(self.running.len() as u64, Ordering::Relaxed);
        let key = (job.door, job.ip);
        match job.kind {
            Kind::Plain => {}
            Kind::Start => {
                let Some(p) = self.pending.get_mut(&key) else {
                    return;
                };
                // knockd: the stop is due `cmd_timeout` after the start command returns.
                p.due_ms = p.due_ms.max(now_ms().saturating_add(ms(p.timeout)));
                p.state = State::Open;
                let due = p.due_ms;
                if self.shutting_down {
                    self.stop_now(&key);
                } else {
                    self.heap.push(Reverse((due, key.clone())));
                    if let Err(e) = self.journal.due(&key.0, key.1, due) {
                        tracing::error!("journal: {e}");
                    }
                }
            }
            Kind::Stop => {
                let reopen = self.pending.remove(&key).and_then(|p| p.reopen);
                if let Err(e) = self.journal.done(&key.0, key.1) {
                    tracing::error!("journal: {e}");
                }
                if let Some(o) = reopen
                    && !self.shutting_down
                {
                    self.open(o);
                }
            }
        }
    }

    /// Queues the stop of an `Open` entry.
    fn stop_now(&mut self, key: &Key) {
        let Some(p) = self.pending.get_mut(key) else {
            return;
        };
        if p.state != State::Open {
            return;
        }
        p.state = State::Stopping;
        self.log.line(&format!("{}: {}: command timeout", key.1, key.0));
        self.stops.push_back(Job { kind: Kind::Stop, door: key.0.clone(), ip: key.1, cmd: p.stop.clone() });
    }

    fn fire_due(&mut self) {
        let now = now_ms();
        while let Some(Reverse((due, _))) = self.heap.peek()
            && *due <= now
        {
            let Some(Reverse((due, key))) = self.heap.pop() else {
                break;
            };
            if self.pending.get(&key).is_some_and(|p| p.state == State::Open && p.due_ms == due) {
                self.stop_now(&key);
            }
        }
        // Drop stale due times, so that pushing back cannot grow the heap without bound.
        if self.heap.len() > 2 * self.pending.len() + 1024 {
            let pending = &self.pending;
            self.heap.retain(|Reverse((due, key))| {
                pending.get(key).is_some_and(|p| p.state == State::Open && p.due_ms == *due)
            });
        }
    }

    fn next_wake(&self) -> Duration {
        let now = now_ms();
        self.heap
            .peek()
            .map_or(CLOCK_LOOK, |Reverse((due, _))| Duration::from_millis(due.saturating_sub(now)).min(CLOCK_LOOK))
    }

    /// Shutdown: queued starts are dropped (they owe nothing), every owed stop runs now.
    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        self.sync();
        for job in std::mem::take(&mut self.starts) {
            let key = (job.door, job.ip);
            if self.pending.get(&key).is_some_and(|p| p.state == State::Queued) {
                self.pending.remove(&key);
                if let Err(e) = self.journal.done(&key.0, key.1) {
                    tracing::error!("journal: {e}");
                }
            }
        }
        let open: Vec<Key> =
            self.pending.iter().filter(|(_, p)| p.state == State::Open).map(|(k, _)| k.clone()).collect();
        if !open.is_empty() {
            self.log.line(&format!("running {} pending stop command(s) before exit", open.len()));
        }
        for key in open {
            self.stop_now(&key);
        }
    }

    fn live_entries(&self) -> Vec<Entry> {
        self.pending
            .iter()
            .map(|((door, ip), p)| Entry { door: door.clone(), ip: *ip, due_ms: p.due_ms, stop: p.stop.clone() })
            .collect()
    }
}
