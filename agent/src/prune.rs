//! Removing packs no snapshot needs, safely next to running backups.
//!
//! Two phases, with a grace period between them:
//!
//! 1. **Set aside.** Packs none of whose blobs any snapshot uses are written into a prune mark
//!    (with their index entries), and the index is rewritten without them, so backups that
//!    start from now on cannot deduplicate against them. Packs written after the oldest running
//!    backup started are never set aside: they may be that backup's, not yet indexed.
//! 2. **Delete.** A mark older than the grace period, with no backup running that started
//!    before the mark, is settled: its packs that a snapshot now uses (a backup that was running
//!    during phase 1 deduplicated against them) are put back into the index, the rest deleted.
//!
//! Both phases run in every `prune`; with a grace period of zero and no backup running, one
//! `prune` frees the space at once. Every step is safe to interrupt: a mark whose packs are
//! already gone is simply settled again. Time comparisons use the store's clock (object
//! modification times), never a pod's.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use kanister_repo::BlobId;
use kanister_repo::index::{IndexFile, IndexPack};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::repository::{DATA, INDEX, MasterIndex, PruneMark, Repository, now_secs, pack_id_from_key, pack_key};

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
        let kanister_repo::snapshot::Root::Stream { lists } = &s.root;
        used.extend(lists.iter().copied());
        repo.for_each_chunk_list(index, s, |_, ids| {
            used.extend(ids.iter().copied());
            Ok(())
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

    // Phase 1.
    let marked = repo.prune_marked_packs().await?;
    let locks = repo.locks().await?;
    let oldest_live = locks.iter().filter(|l| l.is_live()).map(|l| l.started).min();
    let listed = repo.store().list(DATA).await?;
    let young = |t: SystemTime| oldest_live.is_some_and(|o| t >= o);
    let mut set_aside: Vec<IndexPack> = Vec::new();
    let mut keep: Vec<IndexPack> = Vec::new();
    let mut per_pack: std::collections::HashMap<u32, Vec<kanister_repo::pack::PackEntry>> = Default::default();
    for loc in index.blobs.values() {
        per_pack.entry(loc.pack).or_default().push(loc.entry);
    }
    let modified: std::collections::HashMap<_, _> =
        listed.iter().filter_map(|o| Some((pack_id_from_key(&o.key)?, o.last_modified))).collect();
    for (pos, (id, size)) in index.packs.iter().enumerate() {
        let blobs = per_pack.remove(&(pos as u32)).unwrap_or_default();
        let p = IndexPack { id: *id, size: *size, blobs };
        let in_use = p.blobs.iter().any(|b| used.contains(&b.id));
        let protected = modified.get(id).is_none_or(|t| young(*t));
        if in_use || protected || marked.contains(id) {
            if in_use {
                report.bytes_unused_in_used_packs +=
                    p.blobs.iter().filter(|b| !used.contains(&b.id)).map(|b| b.length as u64).sum::<u64>();
            }
            keep.push(p);
        } else {
            set_aside.push(p);
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
        repo.write_prune_mark(&PruneMark { created: now_secs(), packs: set_aside.clone() }).await?;
    }
    if !set_aside.is_empty() || index.index_ids.len() > 1 {
        let f = IndexFile { supersedes: index.index_ids.clone(), packs: keep };
        repo.write_index(&f).await?;
        for id in &index.index_ids {
            repo.store().delete(&format!("{INDEX}/{id}")).await?;
        }
        report.indexes_compacted = index.index_ids.len();
    }

    // Phase 2.
    let marks = repo.prune_marks().await?;
    if marks.is_empty() {
        return Ok(report);
    }
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
    if due.is_empty() {
        return Ok(report);
    }
    // Snapshots may have appeared since phase 1: look again.
    let index = repo.load_index().await?;
    let (used, _) = used_blobs(repo, &index).await?;
    for (key, mark) in due {
        let (back, gone): (Vec<IndexPack>, Vec<IndexPack>) =
            mark.packs.into_iter().partition(|p| p.blobs.iter().any(|b| used.contains(&b.id)));
        if !back.is_empty() {
            report.packs_restored += back.len();
            repo.write_index(&IndexFile { supersedes: vec![], packs: back }).await?;
        }
        for p in gone {
            repo.store().delete(&pack_key(&p.id)).await?;
            report.packs_deleted += 1;
            report.bytes_deleted += p.size;
        }
        repo.store().delete(&key).await?;
    }
    Ok(report)
}
