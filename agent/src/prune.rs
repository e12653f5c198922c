//! Removing packs no snapshot needs, safely next to running backups.
//!
//! Two phases, with a grace period between them:
//!
//! 1. **Set aside.** Packs none of whose blobs any snapshot uses are listed in a prune mark.
//!    Backups that start from then on do not deduplicate against set-aside packs (they store
//!    such data again), so no new snapshot comes to depend on them. Packs written after the
//!    oldest running backup started are never set aside: they may be that backup's, not yet
//!    referenced.
//! 2. **Delete.** A mark older than the grace period, with no backup still running that
//!    started before the mark, is settled: snapshots are read again, its packs that a snapshot
//!    now uses (a backup that was running during phase 1 deduplicated against them) are kept,
//!    the index is rewritten without the others, then they are deleted, then the mark.
//!
//! Both phases run in every `prune`; with a grace period of zero and no backup running, one
//! `prune` frees the space at once. Each step is safe to interrupt and to repeat. Times are
//! compared on the store's clock (object modification times), never a pod's. Index objects are
//! compacted into one along the way.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use kanister_repo::index::{IndexFile, IndexPack};
use kanister_repo::{BlobId, PackId};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::repository::{DATA, INDEX, MasterIndex, PruneMark, Repository, Visit, now_secs, pack_id_from_key, pack_key};

/// Settings of a prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// How long set-aside packs wait before deletion.
    pub grace: Duration,
    /// Report only; change nothing.
    pub dry_run: bool,
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
}

async fn used_blobs(repo: &Repository, index: &MasterIndex) -> Result<(HashSet<BlobId>, usize)> {
    let mut used = HashSet::new();
    let snaps = repo.snapshots().await?;
    for (id, s) in &snaps {
        let s = s.as_ref().map_err(|e| {
            Error::Damaged(format!("snapshot {id} cannot be read ({e}); prune refuses to guess what it uses"))
        })?;
        repo.walk_blobs(index, &s.root, &mut |v| match v {
            Visit::Blob(b, _) => {
                used.insert(*b);
                Ok(())
            }
            Visit::Unreadable(b, e) => Err(Error::Damaged(format!(
                "blob {b} of snapshot {id} cannot be read ({e}); prune refuses to guess what it uses"
            ))),
        })
        .await?;
    }
    Ok((used, snaps.len()))
}

/// Runs both phases.
pub async fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let index = repo.load_index().await?;
    if let Some((id, why)) = index.damaged.first() {
        return Err(Error::Damaged(format!(
            "index {id} is damaged ({why}); prune refuses to run, since blobs it lists would look unused"
        )));
    }
    let (used, n) = used_blobs(repo, &index).await?;
    report.snapshots = n;

    // Phase 1: set aside.
    let marked = repo.prune_marked_packs().await?;
    let locks = repo.locks().await?;
    let oldest_live = locks.iter().filter(|l| l.is_live()).map(|l| l.started).min();
    let young = |t: SystemTime| oldest_live.is_some_and(|o| t >= o);
    let listed = repo.store().list(DATA).await?;
    let modified: HashMap<PackId, SystemTime> =
        listed.iter().filter_map(|o| Some((pack_id_from_key(&o.key)?, o.last_modified))).collect();
    let mut set_aside: Vec<IndexPack> = Vec::new();
    for (pos, (id, size)) in index.packs.iter().enumerate() {
        if marked.contains(id) {
            continue;
        }
        let blobs = index.entries_of(pos as u32).to_vec();
        let in_use = blobs.iter().any(|b| used.contains(&b.id));
        if in_use {
            report.bytes_unused_in_used_packs +=
                blobs.iter().filter(|b| !used.contains(&b.id)).map(|b| b.length as u64).sum::<u64>();
        } else if modified.get(id).is_some_and(|t| !young(*t)) {
            set_aside.push(IndexPack { id: *id, size: *size, blobs });
        }
    }
    // Packs in no index: left by interrupted backups, once older than the grace period.
    for o in &listed {
        let Some(id) = pack_id_from_key(&o.key) else { continue };
        let old_enough = SystemTime::now().duration_since(o.last_modified).is_ok_and(|age| age >= opts.grace);
        if !index.has_pack(&id) && !marked.contains(&id) && old_enough && !young(o.last_modified) {
            set_aside.push(IndexPack { id, size: o.size, blobs: vec![] });
        }
    }
    report.packs_set_aside = set_aside.len();
    report.bytes_set_aside = set_aside.iter().map(|p| p.size).sum();
    if opts.dry_run {
        return Ok(report);
    }
    if !set_aside.is_empty() {
        repo.write_prune_mark(&PruneMark { created: now_secs(), packs: set_aside }).await?;
    }

    // Phase 2: settle marks that are due.
    let marks = repo.prune_marks().await?;
    let locks = repo.locks().await?;
    let mut due = Vec::new();
    for (key, written, mark) in marks {
        let age = SystemTime::now().duration_since(written).unwrap_or_default();
        if age < opts.grace {
            report.packs_waiting += mark.packs.len();
            report.waiting_reason = Some(format!(
                "set-aside packs are deleted {} after they were set aside",
                humantime::format_duration(opts.grace)
            ));
        } else if locks.iter().any(|l| l.is_live() && l.started <= written) {
            report.packs_waiting += mark.packs.len();
            report.waiting_reason =
                Some("a backup that started before the packs were set aside is still running".into());
        } else {
            due.push((key, mark));
        }
    }
    let index = if due.is_empty() { index } else { repo.load_index().await? };
    let mut gone: HashMap<PackId, u64> = HashMap::new();
    if !due.is_empty() {
        // Snapshots may have appeared since phase 1: look again.
        let (used, _) = used_blobs(repo, &index).await?;
        for (_, mark) in &due {
            for p in &mark.packs {
                if p.blobs.iter().any(|b| used.contains(&b.id)) {
                    report.packs_restored += 1;
                } else {
                    gone.insert(p.id, p.size);
                }
            }
        }
    }
    // One index without the packs about to go (and compacting many index objects into one).
    if !gone.is_empty() || index.index_ids.len() > 1 {
        let packs = index
            .packs
            .iter()
            .enumerate()
            .filter(|(_, (id, _))| !gone.contains_key(id))
            .map(|(pos, (id, size))| IndexPack { id: *id, size: *size, blobs: index.entries_of(pos as u32).to_vec() })
            .collect();
        repo.write_index(&IndexFile { supersedes: index.index_ids.clone(), packs }).await?;
        for id in &index.index_ids {
            repo.store().delete(&format!("{INDEX}/{id}")).await?;
        }
        report.indexes_compacted = index.index_ids.len();
    }
    for (id, size) in &gone {
        repo.store().delete(&pack_key(id)).await?;
        report.packs_deleted += 1;
        report.bytes_deleted += size;
    }
    for (key, _) in due {
        repo.store().delete(&key).await?;
    }
    Ok(report)
}
