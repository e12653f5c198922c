//! Removing packs no snapshot needs, safely next to running backups and other prunes.
//!
//! # The garbage-collection protocol
//!
//! **Invariant.** A blob reachable from a snapshot that exists, or from one a running backup
//! will write, is never deleted, and no index ever names a pack that was deleted.
//!
//! ## The objects and who writes them
//!
//! | object | written by | deleted by |
//! |---|---|---|
//! | `locks/<id>` (+ `.alive`) | a backup, first thing; renewed every 5 min | the backup at its end; prune once stale (30 min unrenewed) |
//! | `data/..` packs | backups | prune (phase 2), only while holding `exclusive/` |
//! | `index/<id>` | backups (after their packs landed); prune (compaction) | the backup that superseded its interim ones; prune (compaction) |
//! | `snapshots/<id>` | a backup, last, after its index and before removing its marker | `forget` |
//! | `prune/<id>` marks | prune (phase 1) | prune (phase 2) |
//! | `exclusive/<id>` | prune, `repo repair-index` ([`crate::exclusive`]) | its holder |
//!
//! A backup: (W1) writes its marker; (W2) reads the index and the prune marks, and leaves the
//! packs a mark names out of deduplication (also when re-indexing packs in no index); (W3)
//! uploads packs, then indexes naming them; (W4) checks its marker was renewed in time
//! ([`crate::repository::BackupMarker::ensure_alive`]), writes its snapshot; (W5) removes its
//! marker. Times are the store's: object modification times, in whole seconds.
//!
//! A prune, holding the exclusive lock taken at store time `T0`:
//!
//! - **Phase 1, set aside.** (P1) list backup markers; `young` is every pack written after
//!   the earlier of `T0` and the start of the oldest live marker (young packs are an
//!   economy, not the safety: phase 2 would keep them anyway). (P2) read the marks,
//!   the index, then every snapshot, and collect the blobs they use; a snapshot naming blobs
//!   the index lacks makes prune read the index again (a backup finished meanwhile); only
//!   then is it damage. (P3) list the packs. Every pack that is not young, not marked, and
//!   none of whose blobs is used is written into a new mark, with its blob list (from the
//!   index, or read from its trailer when no index names it yet).
//! - **Phase 2, delete.** (D1) read the marks; (D2) list backup markers; a mark is due when
//!   it is older than the grace period and no live marker started at or before it was
//!   written. (D3) list the snapshots again and read those that appeared since P2 (snapshots
//!   never change; the index is read again when they need it). Of the due marks' packs,
//!   those with a used blob are kept (put back); the others are "gone". (D4) read the index
//!   again (when there are gone packs), write one index of every pack in it except the gone
//!   ones, delete the index objects it was read from, delete the gone packs, then the due
//!   marks. Leftovers of killed writers
//!   older than the grace period (and never younger than [`IN_FLIGHT`]: a fresh staging file
//!   may be another process's upload in progress) and stale backup markers are removed last.
//!
//! ## Why the order keeps the invariant
//!
//! - *A backup that finished before P1* wrote its snapshot before removing its marker, so P2
//!   reads that snapshot: its blobs are used. (The old order, snapshots before markers, lost
//!   the packs of a backup finishing in between: they were neither used nor young.)
//! - *A backup running at P1, or starting after it,* writes its packs after its start (or
//!   after `T0`), so they are young and not set aside; within the same store second they may
//!   be, and then the next point keeps them: phase 2 waits for the backup's marker, then sees
//!   its snapshot.
//! - *A backup that deduplicates against an old pack X that phase 1 sets aside:* if it read
//!   the marks (W2) after the mark was written, it leaves X alone. Otherwise its marker (W1)
//!   was written before the mark, so it started at or before the mark: the mark is not due
//!   while that marker lives (D2). Once it is gone, the backup's snapshot exists (W4 before
//!   W5), and D3, which lists snapshots after D2 listed the markers, sees that X is used.
//! - *A backup paused for longer than a marker lives* (30 minutes unrenewed) could resume
//!   after its packs were deleted; W4 makes it fail instead of writing a snapshot.
//! - *A backup that re-indexes a pack no index names* (a killed backup's) while phase 1 sets
//!   it aside writes an index object naming it after P2 read the index. Its marker started
//!   before the mark, so the mark waits for it (D2); D4 reads the index again, so that object
//!   is compacted without the pack before the pack goes. (Compacting only the objects read in
//!   P2 left it naming a deleted pack when the backup was killed after re-indexing: the gc
//!   storm's "missing from the store".)
//! - *Two prunes* never run at once ([`crate::exclusive`]): otherwise each would compact the
//!   index from its own reading and delete index objects holding the other's entries, or keep
//!   entries for packs the other deleted (the issue this protocol fixed: `check` failing for
//!   good after two concurrent prunes). A prune that finds another waits (`wait_lock`) and then
//!   stops with [`Error::Busy`]. A prune that cannot renew its lock stops before its next change.
//! - *Crashes.* Every step writes before it deletes: a crash after D4's index write leaves
//!   duplicate entries (harmless); after the index deletions, the gone packs are still named by
//!   their mark, so no backup reuses them and the next prune deletes them; after the pack
//!   deletions, the marks name packs that are gone, which the next prune finishes. A crash in
//!   phase 1 leaves at most a mark, which phase 2 re-examines. Nothing a crash leaves is ever
//!   read as a reason to delete more.
//!
//! ## Choices
//!
//! restic takes an exclusive lock for all of prune and makes backups wait; kopia lets
//! maintenance run next to writers with epoch-based indexes and deletes blobs only after a
//! safety margin; bupstash serialises garbage collection against every writer. We keep
//! backups running during a prune (database backups are scheduled by many ActionSets, and a
//! prune of a large repository takes minutes) with the two phases and a grace period, which is
//! kopia's margin; and we keep prunes apart with a lock, as restic does, since two compactions
//! cannot be made safe without epochs. Packs are never rewritten: a pack stays until none of
//! its blobs is used ([`PruneReport::bytes_unused_in_used_packs`] says how much that keeps).
//! Pack contents are never read, except the trailers of packs no index names.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kanister_repo::index::{IndexFile, IndexPack};
use kanister_repo::{BlobId, PackId};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::exclusive::ExclusiveLock;
use crate::repository::{
    ALIVE_SUFFIX, DATA, INDEX, LockInfo, MasterIndex, PruneMark, Repository, Visit, now_secs, pack_id_from_key,
    pack_key,
};
use crate::store::StoreError;

/// Settings of a prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// How long set-aside packs wait before deletion.
    pub grace: Duration,
    /// Report only; change nothing.
    pub dry_run: bool,
    /// How long to wait for another maintenance to finish.
    pub wait_lock: Duration,
}

impl PruneOptions {
    /// A prune with this grace period, waiting up to a minute for another one.
    pub fn with_grace(grace: Duration) -> Self {
        PruneOptions { grace, dry_run: false, wait_lock: Duration::from_secs(60) }
    }
}

/// What a prune did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Snapshots kept.
    pub snapshots: usize,
    /// Packs set aside now (phase 1).
    pub packs_set_aside: usize,
    /// Bytes in those packs.
    pub bytes_set_aside: u64,
    /// Packs deleted (phase 2).
    pub packs_deleted: usize,
    /// Bytes freed.
    pub bytes_deleted: u64,
    /// Set-aside packs put back because a snapshot uses them.
    pub packs_restored: usize,
    /// Set-aside packs still waiting (grace period, or a running backup).
    pub packs_waiting: usize,
    /// Why packs are waiting, when they are.
    pub waiting_reason: Option<String>,
    /// Bytes of unused blobs inside packs that are still in use (not reclaimed).
    pub bytes_unused_in_used_packs: u64,
    /// Index objects merged into one.
    pub indexes_compacted: usize,
    /// Leftovers of interrupted uploads removed.
    pub leftovers_deleted: usize,
    /// Their bytes.
    pub bytes_leftovers: u64,
    /// Markers of backups that died, removed.
    pub stale_markers_removed: usize,
    /// Times the index was read again because a snapshot appeared while prune ran.
    pub index_reloads: usize,
    /// When this prune held the maintenance lock (store time, RFC 3339), from and to.
    pub locked_from: String,
    /// See `locked_from`.
    pub locked_to: String,
    /// When this prune held the lock by its own clock, in milliseconds since the epoch: after
    /// taking it and before giving it up (finer than the store's seconds).
    pub held_ms: (u64, u64),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs both phases, holding the repository's maintenance lock.
pub async fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let lock = ExclusiveLock::acquire(repo, "prune", opts.wait_lock).await?;
    let held_from = now_ms();
    let result = prune_locked(repo, opts, &lock).await;
    let to = lock.store_now().await.unwrap_or_else(|_| SystemTime::now());
    let from = lock.acquired;
    let held_to = now_ms();
    lock.release().await;
    let mut report = result?;
    report.held_ms = (held_from, held_to);
    report.locked_from = humantime::format_rfc3339_seconds(from).to_string();
    report.locked_to = humantime::format_rfc3339_seconds(to).to_string();
    Ok(report)
}

async fn prune_locked(repo: &Repository, opts: &PruneOptions, lock: &ExclusiveLock) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let t0 = lock.acquired;

    // Phase 1. P1: the backups that may be running, before anything they could write.
    let locks = repo.locks().await?;
    let oldest_live = locks.iter().filter(|l| l.is_live_at(t0)).map(|l| l.started).min();
    let young_from = oldest_live.map_or(t0, |o| o.min(t0));
    // Strictly after, in whole store seconds: a pack of the same second as `young_from` that is
    // set aside is still safe, phase 2 waits for its backup's marker or sees its snapshot.
    let young = |t: SystemTime| t > young_from;
    // P2.
    let marked = repo.prune_marked_packs().await?;
    let mut index = load_whole_index(repo).await?;
    let mut usage = Usage::default();
    add_snapshots(repo, &mut index, &mut usage, &mut report).await?;
    let used = &usage.used;
    // P3.
    let listed = repo.store().list(DATA).await?;
    let written: HashMap<PackId, SystemTime> =
        listed.iter().filter_map(|o| Some((pack_id_from_key(&o.key)?, o.last_modified))).collect();
    let mut set_aside: Vec<IndexPack> = Vec::new();
    for (pos, (id, size)) in index.packs.iter().enumerate() {
        if marked.contains(id) {
            continue;
        }
        let blobs = index.entries_of(pos as u32);
        if blobs.iter().any(|b| used.contains(&b.id)) {
            report.bytes_unused_in_used_packs +=
                blobs.iter().filter(|b| !used.contains(&b.id)).map(|b| b.length as u64).sum::<u64>();
        } else if written.get(id).is_some_and(|t| !young(*t)) {
            set_aside.push(IndexPack { id: *id, size: *size, blobs: blobs.to_vec() });
        }
    }
    // Packs in no index (left by a killed backup, or indexed since P2): their blob lists come
    // from their trailers, so phase 2 can tell whether a snapshot has come to use them.
    let unindexed: Vec<(PackId, u64)> = listed
        .iter()
        .filter(|o| !young(o.last_modified))
        .filter_map(|o| Some((pack_id_from_key(&o.key)?, o.size)))
        .filter(|(id, _)| !index.has_pack(id) && !marked.contains(id))
        .collect();
    let trailers: Vec<IndexPack> = futures::stream::iter(unindexed)
        .map(|(id, size)| async move {
            let blobs = match repo.read_pack_trailer(&id, size).await {
                Ok(b) => b,
                // A pack that lost its own list cannot be deduplicated against by anyone:
                // nothing can come to depend on it.
                Err(e) => {
                    tracing::warn!(pack = %id, error = %e, "an unindexed pack's trailer is unreadable");
                    vec![]
                }
            };
            IndexPack { id, size, blobs }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    set_aside.extend(trailers.into_iter().filter(|p| !usage.uses_any(p)));
    report.packs_set_aside = set_aside.len();
    report.bytes_set_aside = set_aside.iter().map(|p| p.size).sum();
    if opts.dry_run {
        return Ok(report);
    }
    if !set_aside.is_empty() {
        lock.ensure_held()?;
        repo.write_prune_mark(&PruneMark { created: now_secs(), packs: set_aside }).await?;
    }

    // Phase 2. D1, D2.
    let now = lock.store_now().await?;
    let marks = repo.prune_marks().await?;
    let locks = repo.locks().await?;
    let mut due = Vec::new();
    for (key, written, mark) in marks {
        let age = now.duration_since(written).unwrap_or_default();
        if age < opts.grace {
            report.packs_waiting += mark.packs.len();
            report.waiting_reason = Some(format!(
                "set-aside packs are deleted {} after they were set aside",
                humantime::format_duration(opts.grace)
            ));
        } else if locks.iter().any(|l| l.is_live_at(now) && l.started <= written) {
            report.packs_waiting += mark.packs.len();
            report.waiting_reason =
                Some("a backup that started before the packs were set aside is still running".into());
        } else {
            due.push((key, mark));
        }
    }
    // D3: the snapshots that appeared since phase 1 (the index is read again when they need
    // it). Compacting the index read in phase 1 is safe: only a prune removes packs, and no
    // other prune runs.
    let mut gone: HashMap<PackId, u64> = HashMap::new();
    if !due.is_empty() {
        add_snapshots(repo, &mut index, &mut usage, &mut report).await?;
        for (_, mark) in &due {
            for p in &mark.packs {
                if usage.uses_any(p) {
                    report.packs_restored += 1;
                } else {
                    gone.insert(p.id, p.size);
                }
            }
        }
    }
    // What is decided no longer needs the blob sets: free them before the index is written
    // (prune's peak memory is here, with the index and its encoding).
    drop(usage);
    let due: Vec<String> = due.into_iter().map(|(key, _)| key).collect();
    // D4: one index without the packs about to go (compacting many index objects into one).
    // With packs to delete, the index is read afresh: a backup that re-indexed one of them (a
    // pack no index named, like a killed backup's) before the mark was written wrote an index
    // object since phase 1, and no index may name a deleted pack. None can write such an index
    // from now on: a backup reads the marks before it re-indexes, and a mark is due only once
    // every backup that started before it has ended.
    if !gone.is_empty() {
        index = load_whole_index(repo).await?;
    }
    if !gone.is_empty() || index.index_ids.len() > 1 {
        let index_ids = std::mem::take(&mut index.index_ids);
        // The index is consumed: its entries move into the new index object, uncopied.
        let packs = index.into_packs().filter(|p| !gone.contains_key(&p.id)).collect::<Vec<_>>();
        lock.ensure_held()?;
        // Nothing left to index (every pack went): the old index objects simply go.
        if !packs.is_empty() {
            repo.write_index(&IndexFile { supersedes: index_ids.clone(), packs }).await?;
        }
        for id in &index_ids {
            repo.store().delete(&format!("{INDEX}/{id}")).await?;
        }
        report.indexes_compacted = index_ids.len();
    }
    for (id, size) in &gone {
        lock.ensure_held()?;
        repo.store().delete(&pack_key(id)).await?;
        report.packs_deleted += 1;
        report.bytes_deleted += size;
    }
    for key in due {
        repo.store().delete(&key).await?;
    }
    remove_leftovers(repo, opts.grace, now, &locks, &mut report).await?;
    Ok(report)
}

/// The whole index, refusing to go on when part of it cannot be read (its blobs would look
/// unused).
async fn load_whole_index(repo: &Repository) -> Result<MasterIndex> {
    let index = repo.load_index().await?;
    if let Some((id, why)) = index.damaged.first() {
        return Err(Error::Damaged(format!(
            "index {id} is damaged ({why}); prune refuses to run, since blobs it lists would look unused: \
             run `kanister-agent repo repair-index`"
        )));
    }
    Ok(index)
}

/// The blobs the snapshots read so far use. Snapshots never change, so a second look only
/// walks the ones that appeared since; one forgotten since keeps its blobs until the next prune.
#[derive(Debug, Default)]
struct Usage {
    used: HashSet<BlobId>,
    seen: HashSet<kanister_repo::SnapshotId>,
}

impl Usage {
    fn uses_any(&self, p: &IndexPack) -> bool {
        p.blobs.iter().any(|b| self.used.contains(&b.id))
    }
}

/// Adds the blobs of every snapshot not walked yet. A snapshot naming metadata blobs `index`
/// lacks was written after the index was read (its backup finished meanwhile): the index is
/// read again until it names everything or nothing new appears; only then is it damage.
async fn add_snapshots(
    repo: &Repository,
    index: &mut MasterIndex,
    usage: &mut Usage,
    report: &mut PruneReport,
) -> Result<()> {
    loop {
        let mut missing: Option<String> = None;
        let ids = repo.snapshot_ids().await?;
        report.snapshots = ids.len();
        let new: Vec<_> = ids.iter().filter(|id| !usage.seen.contains(*id)).collect();
        for id in new {
            let s = match repo.snapshot(id).await {
                Ok(s) => s,
                // Forgotten since the listing.
                Err(Error::SnapshotNotFound(_)) => continue,
                Err(e) => {
                    return Err(Error::Damaged(format!(
                        "snapshot {id} cannot be read ({e}); prune refuses to guess what it uses"
                    )));
                }
            };
            let idx: &MasterIndex = index;
            let mut blobs = Vec::new();
            let walk = repo
                .walk_blobs(idx, &s.root, &mut |v| match v {
                    Visit::Blob(b, _) => {
                        blobs.push(*b);
                        Ok(())
                    }
                    Visit::Unreadable(b, _) if !idx.contains(b) => {
                        Err(Error::MissingBlob { blob: *b, snapshot: id.to_string() })
                    }
                    Visit::Unreadable(b, e) => Err(Error::Damaged(format!(
                        "blob {b} of snapshot {id} cannot be read ({e}); prune refuses to guess what it uses"
                    ))),
                })
                .await;
            match walk {
                Ok(()) => {
                    usage.used.extend(blobs);
                    usage.seen.insert(*id);
                }
                Err(Error::MissingBlob { blob, snapshot }) => {
                    missing.get_or_insert(format!("blob {blob} of snapshot {snapshot}"));
                }
                Err(e) => return Err(e),
            }
        }
        let Some(what) = missing else { return Ok(()) };
        let fresh = load_whole_index(repo).await?;
        if fresh.index_ids.iter().all(|id| index.index_ids.contains(id)) {
            return Err(Error::Damaged(format!(
                "{what} is in no index; prune refuses to guess what it uses: run `kanister-agent check`"
            )));
        }
        report.index_reloads += 1;
        *index = fresh;
    }
}

/// How old a local upload's staging file must be before it counts as left over: no single
/// upload takes this long (request timeout 5 min), so a younger one may still be written.
pub const IN_FLIGHT: Duration = Duration::from_secs(10 * 60);

/// Removes what killed writers left, once older than the grace period: staging files of
/// interrupted uploads (and at least [`IN_FLIGHT`] old), and markers of backups that stopped
/// renewing them.
async fn remove_leftovers(
    repo: &Repository,
    grace: Duration,
    now: SystemTime,
    locks: &[LockInfo],
    report: &mut PruneReport,
) -> Result<()> {
    let leftovers = repo.store().leftovers().map_err(|e| Error::io("cannot list upload leftovers", e))?;
    // A staging file younger than IN_FLIGHT may belong to an upload still running (another
    // prune's lock, a backup's pack): whatever the grace period, it stays.
    let min_age = grace.max(IN_FLIGHT);
    for l in leftovers {
        // Local files: the store's clock is this machine's.
        if SystemTime::now().duration_since(l.last_modified).is_ok_and(|age| age >= min_age) {
            repo.store().delete_leftover(&l).map_err(|e| Error::io(format!("cannot remove {}", l.key), e))?;
            report.leftovers_deleted += 1;
            report.bytes_leftovers += l.size;
        }
    }
    for l in locks.iter().filter(|l| !l.is_live_at(now)) {
        for key in [format!("{}{ALIVE_SUFFIX}", l.key), l.key.clone()] {
            match repo.store().delete(&key).await {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        report.stale_markers_removed += 1;
    }
    Ok(())
}
