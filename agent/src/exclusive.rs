//! The repository's exclusive maintenance lock: at most one prune (or index repair) at a time.
//!
//! Backups never take it; they leave shared markers under `locks/` instead (see
//! [`crate::repository::BackupMarker`]). Maintenance takes this one because two prunes that
//! each compact the index from their own reading would delete each other's index objects and
//! packs (see [`crate::prune`]).
//!
//! Object stores have no lock primitive here that all of them share (a conditional replace is
//! missing on the local store), so the lock is made from two properties every store of the
//! agent has: a write is visible to every listing that starts after it returns (S3, Azure, GCS
//! and local disk all list consistently), and each writer picks a random name.
//!
//! 1. Write `exclusive/<random>` (holder, purpose, pid: [`MaintenanceHolder`]).
//! 2. List `exclusive/`. If another lock is there that is not stale, delete ours, wait a random
//!    while and try again (or give up at the deadline with [`Error::Busy`]).
//! 3. Otherwise the lock is ours.
//!
//! Two contenders A and B can never both win: if A's listing (step 2) did not show B's object,
//! B's write returned after A's listing started, so B's listing started after A's write
//! returned and shows A's object: B backs off. Both may back off (then both retry after a
//! random pause). A holder renews `exclusive/<random>.alive` every minute; a lock not renewed
//! for [`EXCLUSIVE_STALE_AFTER`] (store time) belongs to a holder that died and is ignored,
//! then deleted by the next holder. A holder that could not renew for half that time stops
//! before its next change ([`ExclusiveLock::ensure_held`]), well before others would take over.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use kanister_repo::marker::MaintenanceHolder;
use rand::Rng;

use crate::error::{Error, Result};
use crate::repository::{ALIVE_SUFFIX, Repository, hostname, now_secs};
use crate::store::Store;

/// Folder of exclusive maintenance locks.
pub const EXCLUSIVE: &str = "exclusive";
/// A maintenance lock not renewed for this long (store time) is ignored.
pub const EXCLUSIVE_STALE_AFTER: Duration = Duration::from_secs(10 * 60);
/// How often a holder renews its lock.
const RENEW_EVERY: Duration = Duration::from_secs(60);

/// Who holds a maintenance lock, in a sentence.
fn describe(h: &MaintenanceHolder) -> String {
    let since = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(h.since));
    format!("{} by {} pid {} since {since}", h.purpose, h.hostname, h.pid)
}

/// A held maintenance lock. Release it with [`ExclusiveLock::release`]; dropped, it stops
/// renewing and goes stale.
#[derive(Debug)]
pub struct ExclusiveLock {
    store: Store,
    key: String,
    renewed: Arc<Mutex<Instant>>,
    renewer: tokio::task::JoinHandle<()>,
    /// When the lock was taken, on the store's clock.
    pub acquired: SystemTime,
}

impl ExclusiveLock {
    /// Takes the repository's maintenance lock for `purpose`, waiting up to `wait` for another
    /// holder to finish.
    pub async fn acquire(repo: &Repository, purpose: &str, wait: Duration) -> Result<ExclusiveLock> {
        let store = repo.store().clone();
        let deadline = Instant::now() + wait;
        let holder = MaintenanceHolder {
            format: kanister_repo::marker::FORMAT,
            purpose: purpose.into(),
            hostname: hostname(),
            pid: std::process::id(),
            since: now_secs(),
        };
        let body = Bytes::from(holder.encode());
        loop {
            let key = format!("{EXCLUSIVE}/{}", random_name());
            store.put(&key, body.clone()).await?;
            let acquired = store.modified(&key).await?.unwrap_or_else(SystemTime::now);
            let others = live_others(&store, &key, acquired).await?;
            if others.is_empty() {
                let renewed = Arc::new(Mutex::new(Instant::now()));
                let renewer = tokio::spawn(renew(store.clone(), format!("{key}{ALIVE_SUFFIX}"), renewed.clone()));
                let lock = ExclusiveLock { store, key, renewed, renewer, acquired };
                lock.remove_stale().await;
                tracing::debug!(lock = %lock.key, purpose, "maintenance lock taken");
                return Ok(lock);
            }
            store.delete(&key).await?;
            if Instant::now() >= deadline {
                let who: Vec<String> = others.iter().map(|(_, h)| h.clone()).collect();
                return Err(Error::Busy(who.join("; ")));
            }
            let pause = Duration::from_millis(rand::thread_rng().gen_range(200..1500));
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Fails when the lock may have been lost: not renewed for half the time after which others
    /// would ignore it. Call before every change to the repository.
    pub fn ensure_held(&self) -> Result<()> {
        let since = self.renewed.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        if since >= EXCLUSIVE_STALE_AFTER / 2 {
            return Err(Error::LockLost(format!(
                "not renewed for {}",
                humantime::format_duration(Duration::from_secs(since.as_secs()))
            )));
        }
        Ok(())
    }

    /// Renews the lock now and returns the store's time of the renewal: "now" on the clock that
    /// every object time in the repository is on.
    pub async fn store_now(&self) -> Result<SystemTime> {
        self.ensure_held()?;
        let alive = format!("{}{ALIVE_SUFFIX}", self.key);
        self.store.put(&alive, Bytes::from_static(b"{}")).await?;
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(self.store.modified(&alive).await?.unwrap_or_else(SystemTime::now))
    }

    /// Gives the lock up.
    pub async fn release(self) {
        self.renewer.abort();
        for key in [format!("{}{ALIVE_SUFFIX}", self.key), self.key.clone()] {
            if let Err(e) = self.store.delete(&key).await {
                tracing::warn!(lock = %key, error = %e, "cannot remove the maintenance lock; it is ignored once stale");
            }
        }
    }

    /// Deletes locks of holders that died (stale for twice the limit, so a holder that is merely
    /// slow is never robbed of its object).
    async fn remove_stale(&self) {
        let Ok(listed) = self.store.list(EXCLUSIVE).await else { return };
        let now = self.acquired;
        for o in &listed {
            let base = o.key.trim_end_matches(ALIVE_SUFFIX);
            if base == self.key {
                continue;
            }
            let last = listed
                .iter()
                .filter(|x| x.key.trim_end_matches(ALIVE_SUFFIX) == base)
                .map(|x| x.last_modified)
                .max()
                .unwrap_or(o.last_modified);
            if now.duration_since(last).is_ok_and(|age| age >= EXCLUSIVE_STALE_AFTER * 2) {
                let _ = self.store.delete(&o.key).await.inspect_err(|e| tracing::debug!(error = %e, "stale lock"));
            }
        }
    }
}

impl Drop for ExclusiveLock {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

async fn renew(store: Store, alive: String, renewed: Arc<Mutex<Instant>>) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        match store.put(&alive, Bytes::from_static(b"{}")).await {
            Ok(()) => *renewed.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now(),
            Err(e) => tracing::warn!(error = %e, "cannot renew the maintenance lock"),
        }
    }
}

/// Other holders' locks that are not stale at `now`, with a description of each.
async fn live_others(store: &Store, ours: &str, now: SystemTime) -> Result<Vec<(String, String)>> {
    let listed = store.list(EXCLUSIVE).await?;
    let mut out = Vec::new();
    for o in listed.iter().filter(|o| !o.key.ends_with(ALIVE_SUFFIX) && o.key != ours) {
        let alive = format!("{}{ALIVE_SUFFIX}", o.key);
        let last =
            listed.iter().filter(|x| x.key == alive).map(|x| x.last_modified).fold(o.last_modified, SystemTime::max);
        if now.duration_since(last).is_ok_and(|age| age >= EXCLUSIVE_STALE_AFTER) {
            continue;
        }
        let who = match store.get(&o.key).await {
            Ok(b) => MaintenanceHolder::decode(&b).map(|h| describe(&h)).unwrap_or_else(|_| o.key.clone()),
            // Released since the listing: it still counts, the holder may retry.
            Err(_) => o.key.clone(),
        };
        out.push((o.key.clone(), who));
    }
    Ok(out)
}

fn random_name() -> String {
    let mut id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
    hex::encode(id)
}
