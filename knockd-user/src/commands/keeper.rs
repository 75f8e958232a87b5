//! Running doors' commands within bounds. At most `MaxCommands` children run at once; the
//! rest wait in a bounded queue, stop commands ahead of start commands. A start command whose
//! door has a stop command is journaled (`journal`) and synced before it runs, so the stop it
//! owes survives any end of the process. A start that finds the queue full is shed (logged,
//! counted, and owed no stop); a stop owed is never dropped.

use std::{net::IpAddr, sync::Arc, sync::atomic::Ordering, time::Duration};

use tokio::sync::mpsc;

use crate::{
    commands::{
        command::substitute,
        journal::{Entry, Journal},
        task::{Msg, Open, Task, now_ms},
    },
    config::Door,
    observe::{log::KnockLog, metrics::CommandStats},
};

/// `MaxCommands` when the config names none.
pub const DEFAULT_MAX_COMMANDS: u32 = 64;
/// Opens the event loop may hand over before the keeper has taken them.
const INBOX: usize = 4096;

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
        let mut inner = Task::new(Arc::clone(&log), journal, Arc::clone(&stats), max_commands);
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
        self.open_for(door, ip, door.cmd_timeout);
    }

    /// As `open`, with the stop command due `timeout` after the start (a fleet's grant: when
    /// the grant ends) rather than the door's `cmd_timeout`.
    pub fn open_for(&self, door: &Door, ip: IpAddr, timeout: std::time::Duration) {
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
            timeout,
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
