//! Backup markers (`locks/`): a running backup says so, and renews it, so that `prune` waits
//! for it. The marker's format is [`kanister_repo::marker::BackupLock`].

use std::time::{Duration, SystemTime};

use bytes::Bytes;
pub use kanister_repo::marker::{BackupLock, ProcessIdentity};

use super::{LOCKS, Open, Repository};
use crate::error::{Error, Result};

/// What this machine's `/proc` tells about a [`ProcessIdentity`].
pub trait LocalProcess: Sized {
    /// This process (none where `/proc` is not Linux's).
    fn current() -> Option<Self>;
    /// Whether this process has certainly ended: it ran in this very boot and pid namespace,
    /// and its pid is gone or belongs to a process started at another time. Anything
    /// uncertain (another host, another container, an unreadable `/proc`) counts as alive.
    fn has_ended(&self) -> bool;
}

impl LocalProcess for ProcessIdentity {
    fn current() -> Option<ProcessIdentity> {
        let pid = std::process::id();
        Some(ProcessIdentity {
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_string(),
            pid_ns: std::fs::read_link("/proc/self/ns/pid").ok()?.to_string_lossy().into_owned(),
            pid,
            start_ticks: start_ticks(pid)?,
        })
    }

    fn has_ended(&self) -> bool {
        let Some(me) = ProcessIdentity::current() else { return false };
        if me.boot_id != self.boot_id || me.pid_ns != self.pid_ns {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            Ok(_) => start_ticks(self.pid).is_some_and(|t| t != self.start_ticks),
        }
    }
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Suffix of a marker's renewal object.
pub const ALIVE_SUFFIX: &str = ".alive";

/// A backup marker as listed.
#[derive(Debug, Clone)]
pub struct LockInfo {
    /// Its key.
    pub key: String,
    /// When the backup started (store time).
    pub started: SystemTime,
    /// When it last renewed its marker (store time).
    pub alive: SystemTime,
    /// The backup's process is known to have ended (it ran on this host and is gone): its
    /// marker is stale at once.
    pub ended: bool,
}

impl LockInfo {
    /// Whether the backup may still be running, by this machine's clock.
    pub fn is_live(&self) -> bool {
        self.is_live_at(SystemTime::now())
    }

    /// Whether the backup may still be running at `now` (a store time, see
    /// [`crate::exclusive::ExclusiveLock::store_now`]).
    pub fn is_live_at(&self, now: SystemTime) -> bool {
        !self.ended && now.duration_since(self.alive).map_or(true, |age| age < LOCK_STALE_AFTER)
    }
}

/// The marker of a running backup: written at its start, renewed while it runs, removed at
/// its end. `prune` waits for backups that started before it set packs aside.
#[derive(Debug)]
pub struct BackupMarker {
    key: String,
    renewer: tokio::task::JoinHandle<()>,
    renewed: std::sync::Arc<std::sync::Mutex<std::time::Instant>>,
}

impl BackupMarker {
    /// Writes the marker and starts renewing it.
    pub async fn start(repo: &Repository, hostname: &str) -> Result<Self> {
        let lock = BackupLock {
            format: kanister_repo::marker::FORMAT,
            started: now_secs(),
            refreshed: now_secs(),
            hostname: hostname.to_string(),
            pid: std::process::id(),
            process: ProcessIdentity::current(),
        };
        let key = repo.write_lock(&lock).await?;
        let (store, alive) = (repo.store().clone(), format!("{key}{ALIVE_SUFFIX}"));
        let renewed = std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        let last = renewed.clone();
        let renewer = tokio::spawn(async move {
            let mut lock = lock;
            let mut tick = tokio::time::interval(LOCK_REFRESH_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                lock.refreshed = now_secs();
                // Renewal rewrites `<key>.alive`: markers are the one kind of object that changes.
                let body = Bytes::from(lock.encode());
                match store.put(&alive, body).await {
                    Ok(()) => *last.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now(),
                    Err(e) => tracing::warn!(error = %e, "cannot renew the backup marker"),
                }
            }
        });
        Ok(BackupMarker { key, renewer, renewed })
    }

    /// Fails when the marker went unrenewed for so long that a prune may have taken it for a
    /// dead backup's and deleted packs this backup deduplicated against (the process was
    /// paused, or the store unreachable). Called right before the snapshot is written: a
    /// backup that fails here writes no snapshot, so nothing points at what may be gone.
    pub fn ensure_alive(&self) -> Result<()> {
        let since = self.renewed.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        if since + LOCK_REFRESH_EVERY >= LOCK_STALE_AFTER {
            return Err(Error::LockLost(format!(
                "the backup marker {} was not renewed for {}; no snapshot was written, run the backup again",
                self.key,
                humantime::format_duration(Duration::from_secs(since.as_secs()))
            )));
        }
        Ok(())
    }

    /// Stops renewing and removes the marker (best effort: a marker left behind goes stale).
    pub async fn finish(mut self, repo: &Repository) {
        self.renewer.abort();
        let _ = (&mut self.renewer).await;
        let _ = repo.store().delete(&format!("{}{ALIVE_SUFFIX}", self.key)).await;
        if let Err(e) = repo.store().delete(&self.key).await {
            tracing::warn!(error = %e, marker = %self.key, "cannot remove the backup marker; prune treats it as stale after 30 minutes");
        }
    }
}

impl Drop for BackupMarker {
    /// A backup dropped without `finish` (cancelled) stops renewing its marker, which then goes
    /// stale instead of holding `prune` back forever.
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// A lock older than this without renewal belongs to a process that died.
pub const LOCK_STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a running backup renews its lock.
pub const LOCK_REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Repository<Open> {
    /// Writes a backup marker; returns its key. The marker itself is written once, so the
    /// store's time of writing it says when the backup started; renewals go to `<key>.alive`.
    pub async fn write_lock(&self, lock: &BackupLock) -> Result<String> {
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let key = format!("{LOCKS}/{}", hex::encode(id));
        self.store.put(&key, Bytes::from(lock.encode())).await?;
        Ok(key)
    }

    /// Reads every backup marker: its key, when it was written and last renewed (store time),
    /// and whether its process is known to have ended.
    pub async fn locks(&self) -> Result<Vec<LockInfo>> {
        let listed = self.store.list(LOCKS).await?;
        let mut out: Vec<LockInfo> = Vec::new();
        for o in listed.iter().filter(|o| !o.key.ends_with(ALIVE_SUFFIX)) {
            // A marker that cannot be read (removed since the listing, or not ours to parse)
            // tells nothing about its process: it counts by its times alone.
            let ended = match self.store.get(&o.key).await {
                Ok(b) => BackupLock::decode(&b).ok().and_then(|l| l.process).is_some_and(|p| p.has_ended()),
                Err(_) => false,
            };
            out.push(LockInfo { key: o.key.clone(), started: o.last_modified, alive: o.last_modified, ended });
        }
        for o in listed.iter().filter(|o| o.key.ends_with(ALIVE_SUFFIX)) {
            let base = o.key.trim_end_matches(ALIVE_SUFFIX);
            if let Some(l) = out.iter_mut().find(|l| l.key == base) {
                l.alive = l.alive.max(o.last_modified);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_exited_has_ended_and_a_running_one_has_not() {
        let me = ProcessIdentity::current().expect("Linux /proc");
        assert!(!me.has_ended(), "this process counts as ended");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let it = ProcessIdentity { pid: child.id(), start_ticks: start_ticks(child.id()).unwrap(), ..me.clone() };
        assert!(!it.has_ended(), "a running child counts as ended");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(it.has_ended(), "a killed child still counts as running");
        // The same pid with another start time is another process: the marker's has ended.
        let reused = ProcessIdentity { start_ticks: me.start_ticks + 1, ..me.clone() };
        assert!(reused.has_ended());
        // Another boot or another pid namespace: nothing can be known, so it is alive.
        assert!(!ProcessIdentity { boot_id: "other".into(), ..it.clone() }.has_ended());
        assert!(!ProcessIdentity { pid_ns: "pid:[1]".into(), ..it }.has_ended());
    }
}
