//! Running doors' commands within bounds. At most `MaxCommands` children run at once; the
//! rest wait in a bounded queue, stop commands ahead of start commands. A start command whose
//! door has a stop command is journaled (`journal`) and synced before it runs, so the stop it
//! owes survives any end of the process. A start that finds the queue full is shed (logged,
//! counted, and owed no stop); a stop owed is never dropped.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{sync::mpsc, task::JoinSet};

use crate::{
    commands::command::{run, substitute},
    commands::journal::{Entry, Journal},
    config::Door,
    observe::{log::KnockLog, metrics::CommandStats},
};

/// `MaxCommands` when the config names none.
pub const DEFAULT_MAX_COMMANDS: u32 = 64;
/// Start commands that may wait for a free slot, per slot.
const QUEUE_PER_SLOT: usize = 16;
/// Most stop commands owed at once; past it new starts are shed (memory stays bounded
/// whatever the rate of opens times `cmd_timeout`).
pub const MAX_PENDING_STOPS: usize = 65_536;
/// Opens the event loop may hand over before the keeper has taken them.
const INBOX: usize = 4096;
/// The longest the keeper sleeps between looks at the wall clock (due times are wall-clock,
/// and the clock may be set).
const CLOCK_LOOK: Duration = Duration::from_secs(1);

/// An open to act on, with the door's commands substituted.
#[derive(Debug, Clone)]
struct Open {
    door: String,
    ip: IpAddr,
    start: String,
    stop: Option<String>,
    timeout: Duration,
}

enum Msg {
    Open(Open),
    Shutdown,
}

/// The handle the event loop holds.
pub struct Keeper {
    inbox: mpsc::Sender<Msg>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<CommandStats>,
    log: Arc<KnockLog>,
}

impl Keeper {
    /// Starts the keeper with the entries read back from `journal` (each runs at its due
    /// time, at once if overdue).
    #[must_use]
    pub fn start(log: Arc<KnockLog>, journal: Journal, entries: Vec<Entry>, max_commands: u32) -> Self {
        let stats = Arc::new(CommandStats::default());
        let (inbox, rx) = mpsc::channel(INBOX);
        let max_running = usize::try_from(max_commands.max(1)).unwrap_or(usize::MAX);
        let mut inner = Inner {
            log: Arc::clone(&log),
            journal,
            stats: Arc::clone(&stats),
            max_running,
            max_queued: max_running.saturating_mul(QUEUE_PER_SLOT),
            pending: HashMap::new(),
            heap: BinaryHeap::new(),
            stops: VecDeque::new(),
            starts: VecDeque::new(),
            unsynced: Vec::new(),
            running: JoinSet::new(),
            shutting_down: false,
        };
        if !entries.is_empty() {
            let now = now_ms();
            let overdue = entries.iter().filter(|e| e.due_ms <= now).count();
            log.line(&format!("{} pending stop command(s) in the journal, {overdue} overdue", entries.len()));
        }
        for e in entries {
            inner.adopt(e);
        }
        let task = tokio::spawn(inner.serve(rx));
        Self { inbox, task, stats, log }
    }

    /// `door` opened for `ip`: run its start command (within the bounds) and owe its stop.
    /// While a stop is owed for the same door and address, the start is not run again (no
    /// second firewall rule): the stop is pushed back by `cmd_timeout` instead.
    pub fn open(&self, door: &Door, ip: IpAddr) {
        let v6 = ip.is_ipv6();
        // knockd: no start command, nothing runs (not even a stop command).
        let Some(start) = door.start_for(v6) else {
            return;
        };
        let open = Open {
            door: door.name.clone(),
            ip,
            start: substitute(start, ip),
            stop: door.stop_for(v6).map(|s| substitute(s, ip)),
            timeout: door.cmd_timeout,
        };
        if self.inbox.try_send(Msg::Open(open)).is_err() {
            self.stats.shed.fetch_add(1, Ordering::Relaxed);
            self.log.line(&format!("{ip}: {}: start command shed: the command queue is full", door.name));
        }
    }

    #[must_use]
    pub fn stats(&self) -> &Arc<CommandStats> {
        &self.stats
    }

    /// Runs every owed stop command now (queued starts are dropped) and waits up to `limit`
    /// for all commands to finish. Stops that did not run stay in the journal.
    pub async fn shutdown(self, limit: Duration) {
        if self.inbox.send(Msg::Shutdown).await.is_err() {
            return;
        }
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!(
                "commands still running after {}s; the stops not yet run stay in the journal",
                limit.as_secs()
            );
        }
    }
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

struct Inner {
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

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Inner {
    async fn serve(mut self, mut rx: mpsc::Receiver<Msg>) {
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
    fn adopt(&mut self, e: Entry) {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn door(dir: &Path, cmd_timeout: u32, start_extra: &str) -> Door {
        let out = dir.join("out");
        let text = format!(
            "[d]\nsequence = 1\nstart_command = {start_extra}echo start %IP% >> {o}\nstop_command = echo stop %IP% >> {o}\ncmd_timeout = {cmd_timeout}\n",
            o = out.display()
        );
        Config::parse(Path::new("t"), &text).unwrap().doors.remove(0)
    }

    fn lines(dir: &Path) -> Vec<String> {
        let mut l: Vec<String> =
            std::fs::read_to_string(dir.join("out")).unwrap_or_default().lines().map(str::to_owned).collect();
        l.sort();
        l
    }

    fn keeper(dir: &Path, max: u32) -> Keeper {
        let opened = Journal::open(&dir.join("stops.journal")).unwrap();
        Keeper::start(Arc::new(KnockLog::stderr_only()), opened.journal, opened.entries, max)
    }

    #[tokio::test]
    async fn reopen_while_pending_postpones_instead_of_stacking() {
        let dir = tempfile::tempdir().unwrap();
        let d = door(dir.path(), 1, "");
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let k = keeper(dir.path(), 4);
        k.open(&d, ip);
        tokio::time::sleep(Duration::from_millis(600)).await;
        k.open(&d, ip);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(lines(dir.path()), ["start 198.18.0.2"], "stop was pushed back");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(lines(dir.path()), ["start 198.18.0.2", "stop 198.18.0.2"]);
        assert_eq!(k.stats().pending.load(Ordering::Relaxed), 0);
        k.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn shutdown_runs_pending_stops() {
        let dir = tempfile::tempdir().unwrap();
        let d = door(dir.path(), 3600, "");
        let k = keeper(dir.path(), 4);
        k.open(&d, "198.18.0.2".parse().unwrap());
        k.open(&d, "2001:db8::2".parse().unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        k.shutdown(Duration::from_secs(5)).await;
        assert_eq!(lines(dir.path()), ["start 198.18.0.2", "start 2001:db8::2", "stop 198.18.0.2", "stop 2001:db8::2"]);
        let left = Journal::open(&dir.path().join("stops.journal")).unwrap().entries;
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn an_owed_stop_outlives_the_keeper_and_runs_when_overdue() {
        let dir = tempfile::tempdir().unwrap();
        let d = door(dir.path(), 1, "");
        {
            let k = keeper(dir.path(), 4);
            k.open(&d, "198.18.0.2".parse().unwrap());
            tokio::time::sleep(Duration::from_millis(300)).await;
            // As a SIGKILL would: the task ends with nothing run at exit.
            k.task.abort();
        }
        assert_eq!(lines(dir.path()), ["start 198.18.0.2"]);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let k = keeper(dir.path(), 4);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(lines(dir.path()), ["start 198.18.0.2", "stop 198.18.0.2"], "the overdue stop ran at start-up");
        // A knock now is a new open (the old stop is done).
        k.shutdown(Duration::from_secs(5)).await;
        assert_eq!(lines(dir.path()).len(), 2);
    }

    #[tokio::test]
    async fn children_stay_within_the_bound_and_excess_starts_are_shed() {
        let dir = tempfile::tempdir().unwrap();
        // Each start records how many starts are alive with it.
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let extra = format!(
            "touch {r}/$$; ls {r} | wc -l >> {c}; sleep 0.05; rm {r}/$$; ",
            r = run.display(),
            c = dir.path().join("conc").display()
        );
        let d = door(dir.path(), 3600, &extra);
        let k = keeper(dir.path(), 3);
        let stats = Arc::clone(k.stats());
        // 3 slots and 48 queue places: 100 opens in one batch, of which 48 run, 52 are shed.
        for i in 0..100u8 {
            k.open(&d, IpAddr::from([198, 18, 1, i]));
        }
        // 16 rounds of 3 starts of 50 ms each.
        assert!(wait_until(Duration::from_secs(10), || lines(dir.path()).len() == 48).await, "{:?}", lines(dir.path()));
        k.shutdown(Duration::from_secs(20)).await;
        let conc: Vec<u32> = std::fs::read_to_string(dir.path().join("conc"))
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert!(conc.iter().all(|&n| n <= 3), "more than 3 at once: {conc:?}");
        let out = lines(dir.path());
        let starts = out.iter().filter(|l| l.starts_with("start")).count();
        let stops = out.iter().filter(|l| l.starts_with("stop")).count();
        assert_eq!(starts, 48, "{out:?}");
        assert_eq!(stops, starts, "every start that ran got its stop");
        assert_eq!(stats.shed.load(Ordering::Relaxed), 52);
        assert_eq!(stats.most_running.load(Ordering::Relaxed), 3);
    }

    async fn wait_until(limit: Duration, f: impl Fn() -> bool) -> bool {
        let end = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < end {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        f()
    }

    #[tokio::test]
    async fn stops_go_ahead_of_starts() {
        let dir = tempfile::tempdir().unwrap();
        let d = door(dir.path(), 0, "sleep 0.2; ");
        let k = keeper(dir.path(), 1);
        // The first start runs; the second waits. The first's stop (cmd_timeout 0) is queued
        // when the first start ends, ahead of the waiting start.
        k.open(&d, "198.18.0.2".parse().unwrap());
        k.open(&d, "198.18.0.3".parse().unwrap());
        tokio::time::sleep(Duration::from_secs(1)).await;
        k.shutdown(Duration::from_secs(10)).await;
        let order = std::fs::read_to_string(dir.path().join("out")).unwrap();
        assert_eq!(order, "start 198.18.0.2\nstop 198.18.0.2\nstart 198.18.0.3\nstop 198.18.0.3\n");
    }
}
