//! Running a door's commands: `%IP%` substitution, `/bin/sh -c`, and the pending stop
//! commands, one per (door, address), pushed back when the same address knocks again.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, task::JoinSet, time::Instant};

use crate::{config::Door, log::KnockLog};

/// Replaces every `%IP%` with the address. The address is a parsed `IpAddr`, so its text
/// is only digits, dots, colons and hex: nothing a shell would interpret.
#[must_use]
pub fn substitute(cmd: &str, ip: IpAddr) -> String {
    cmd.replace("%IP%", &ip.to_string())
}

/// Runs `cmd` through `/bin/sh -c`, logging like knockd. Returns the exit code if any.
pub async fn run(log: &KnockLog, door: &str, cmd: &str) -> Option<i32> {
    log.line(&format!("{door}: running command: {cmd}"));
    match tokio::process::Command::new("/bin/sh").arg("-c").arg(cmd).status().await {
        Ok(status) => {
            let code = status.code();
            if !status.success() {
                let shown = code.map_or_else(|| format!("{status}"), |c| c.to_string());
                log.line(&format!("{door}: command returned non-zero status code ({shown})"));
            }
            code
        }
        Err(e) => {
            log.line(&format!("error: command fork failed! ({door}: {e})"));
            None
        }
    }
}

type Key = (String, IpAddr);

/// Runs start commands and schedules stop commands without blocking the event loop.
pub struct Doorkeeper {
    log: Arc<KnockLog>,
    /// When each pending stop command is due.
    pending: Arc<Mutex<HashMap<Key, Instant>>>,
    tasks: JoinSet<()>,
    shutdown: watch::Sender<bool>,
}

impl Doorkeeper {
    #[must_use]
    pub fn new(log: Arc<KnockLog>) -> Self {
        Self { log, pending: Arc::default(), tasks: JoinSet::new(), shutdown: watch::Sender::new(false) }
    }

    /// Number of stop commands waiting.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.lock().map_or(0, |p| p.len())
    }

    /// `door` opened for `ip`: run its start command, and schedule its stop command.
    ///
    /// While a stop is pending for the same door and address, the start command is not run
    /// again (no second firewall rule): the stop is pushed back by `cmd_timeout` instead.
    pub fn open(&mut self, door: &Door, ip: IpAddr) {
        // Reap finished tasks so the set does not grow without bound.
        while self.tasks.try_join_next().is_some() {}
        let v6 = ip.is_ipv6();
        // knockd: no start command, nothing runs (not even a stop command).
        let Some(start) = door.start_for(v6) else { return };
        let start = substitute(start, ip);
        let log = Arc::clone(&self.log);
        let name = door.name.clone();
        let Some(stop) = door.stop_for(v6).map(|s| substitute(s, ip)) else {
            self.tasks.spawn(async move {
                run(&log, &name, &start).await;
            });
            return;
        };
        let key: Key = (name.clone(), ip);
        let timeout = door.cmd_timeout;
        {
            let Ok(mut pending) = self.pending.lock() else { return };
            if let Some(due) = pending.get_mut(&key) {
                *due = Instant::now() + timeout;
                self.log.line(&format!("{ip}: {name}: already open, closing postponed by {}s", timeout.as_secs()));
                return;
            }
            pending.insert(key.clone(), Instant::now() + timeout);
        }
        let pending = Arc::clone(&self.pending);
        let mut shutdown = self.shutdown.subscribe();
        self.tasks.spawn(async move {
            run(&log, &name, &start).await;
            // knockd: the stop is due `cmd_timeout` after the start command returns.
            bump(&pending, &key, Instant::now() + timeout);
            // Sleep until the (possibly pushed back) deadline, or until shutdown.
            while let Some(due) = pending.lock().ok().and_then(|p| p.get(&key).copied())
                && Instant::now() < due
                && !*shutdown.borrow()
            {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    _ = shutdown.changed() => {}
                }
            }
            if let Ok(mut p) = pending.lock() {
                p.remove(&key);
            }
            log.line(&format!("{ip}: {name}: command timeout"));
            run(&log, &name, &stop).await;
        });
    }

    /// Runs every pending stop command now and waits for all commands to finish.
    pub async fn shutdown(mut self, limit: Duration) {
        self.shutdown.send_replace(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("commands still running after {}s; leaving them", limit.as_secs());
        }
    }
}

fn bump(pending: &Mutex<HashMap<Key, Instant>>, key: &Key, at_least: Instant) {
    if let Ok(mut p) = pending.lock()
        && let Some(due) = p.get_mut(key)
    {
        *due = (*due).max(at_least);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn ip_substitution_everywhere_and_compressed_v6() {
        let v4: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!(substitute("a %IP% b %IP%", v4), "a 198.18.0.2 b 198.18.0.2");
        let v6: IpAddr = "2001:db8:0:0::2".parse().unwrap();
        assert_eq!(substitute("-s %IP%", v6), "-s 2001:db8::2");
        assert_eq!(substitute("%ip% stays", v4), "%ip% stays", "the token is case-sensitive");
    }

    fn door(dir: &Path, cmd_timeout: u32) -> Door {
        let out = dir.join("out");
        let text = format!(
            "[d]\nsequence = 1\nstart_command = echo start %IP% >> {o}\nstop_command = echo stop %IP% >> {o}\ncmd_timeout = {cmd_timeout}\n",
            o = out.display()
        );
        Config::parse(Path::new("t"), &text).unwrap().doors.remove(0)
    }

    fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("out")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn reopen_while_pending_postpones_instead_of_stacking() {
        let dir = tempfile::tempdir().unwrap();
        let d = door(dir.path(), 1);
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let mut keeper = Doorkeeper::new(Arc::new(KnockLog::stderr_only()));
        keeper.open(&d, ip);
        tokio::time::sleep(Duration::from_millis(600)).await;
        keeper.open(&d, ip);
        assert_eq!(keeper.pending(), 1);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(lines(dir.path()), ["start 198.18.0.2"], "stop was pushed back");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(lines(dir.path()), ["start 198.18.0.2", "stop 198.18.0.2"]);
        assert_eq!(keeper.pending(), 0);
        keeper.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn shutdown_runs_pending_stops() {
        let dir = tempfile::tempdir().unwrap();
        let d = door(dir.path(), 3600);
        let mut keeper = Doorkeeper::new(Arc::new(KnockLog::stderr_only()));
        keeper.open(&d, "198.18.0.2".parse().unwrap());
        keeper.open(&d, "2001:db8::2".parse().unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        keeper.shutdown(Duration::from_secs(5)).await;
        let mut got = lines(dir.path());
        got.sort();
        assert_eq!(got, ["start 198.18.0.2", "start 2001:db8::2", "stop 198.18.0.2", "stop 2001:db8::2"]);
    }
}
