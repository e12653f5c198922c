//! `repo repair-index`: makes the index agree with the packs the store holds.
//!
//! Whatever broke it (a lost index object, an index naming packs that were deleted, a pack
//! replaced by one of another size), the repaired index names exactly the packs that exist,
//! each with the blob list of its own trailer where the index disagrees with the store, and
//! every pack no index named is indexed from its trailer. No pack is deleted and no blob that
//! still exists in a readable pack is dropped. It holds the maintenance lock, so it never runs
//! beside a prune ([`crate::exclusive`]).

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use kanister_repo::PackId;
use kanister_repo::index::{IndexFile, IndexPack};
use serde::Serialize;

use crate::error::Result;
use crate::exclusive::ExclusiveLock;
use crate::repository::{DATA, INDEX, Repository, pack_id_from_key, pack_key};

/// What a repair changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    /// Packs that were in no index, now indexed from their trailers.
    pub packs_indexed: usize,
    /// Packs the index named that the store does not hold: their entries were dropped.
    pub missing_packs_dropped: Vec<String>,
    /// Packs whose size in the store differs from the index: re-indexed from their trailer.
    pub packs_reindexed: Vec<String>,
    /// Packs whose trailer cannot be read (damaged): an indexed one keeps its entries (blobs
    /// before the damage still read), one in no index stays out; `check --read-data` names them.
    pub unreadable_packs: Vec<String>,
    /// Index objects that could not be read, replaced.
    pub damaged_indexes_replaced: usize,
    /// Index objects replaced by the repaired one.
    pub indexes_replaced: usize,
}

impl RepairReport {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.packs_indexed > 0
            || !self.missing_packs_dropped.is_empty()
            || !self.packs_reindexed.is_empty()
            || self.damaged_indexes_replaced > 0
    }
}

/// Repairs the index (see the module docs).
pub async fn repair_index(repo: &Repository, wait_lock: Duration) -> Result<RepairReport> {
    let lock = ExclusiveLock::acquire(repo, "repair-index", wait_lock).await?;
    let r = repair_locked(repo, &lock).await;
    lock.release().await;
    r
}

async fn repair_locked(repo: &Repository, lock: &ExclusiveLock) -> Result<RepairReport> {
    let mut report = RepairReport::default();
    let index = repo.load_index().await?;
    let listed: HashMap<PackId, u64> =
        repo.store().list(DATA).await?.into_iter().filter_map(|o| Some((pack_id_from_key(&o.key)?, o.size))).collect();
    // Packs prune has set aside are deleted by prune, whatever the index says.
    let marked = repo.prune_marked_packs().await?;

    let mut packs: Vec<IndexPack> = Vec::new();
    let mut to_read: Vec<(PackId, u64, Option<usize>)> = Vec::new();
    for (pos, (id, size)) in index.packs.iter().enumerate() {
        match listed.get(id) {
            None => report.missing_packs_dropped.push(pack_key(id)),
            Some(s) if s != size => to_read.push((*id, *s, Some(pos))),
            Some(_) => packs.push(IndexPack { id: *id, size: *size, blobs: index.entries_of(pos as u32).to_vec() }),
        }
    }
    for (id, size) in &listed {
        if !index.has_pack(id) && !marked.contains(id) {
            to_read.push((*id, *size, None));
        }
    }
    let read: Vec<_> = futures::stream::iter(to_read)
        .map(|(id, size, known)| async move { (id, size, known, repo.read_pack_trailer(&id, size).await) })
        .buffer_unordered(8)
        .collect()
        .await;
    for (id, size, known, trailer) in read {
        match (trailer, known) {
            (Ok(blobs), Some(_)) => {
                report.packs_reindexed.push(pack_key(&id));
                packs.push(IndexPack { id, size, blobs });
            }
            (Ok(blobs), None) => {
                report.packs_indexed += 1;
                packs.push(IndexPack { id, size, blobs });
            }
            (Err(e), known) => {
                tracing::warn!(pack = %id, error = %e, "a pack's trailer cannot be read");
                report.unreadable_packs.push(pack_key(&id));
                if let Some(pos) = known {
                    let (_, old_size) = index.packs[pos];
                    packs.push(IndexPack { id, size: old_size, blobs: index.entries_of(pos as u32).to_vec() });
                }
            }
        }
    }
    report.damaged_indexes_replaced = index.damaged.len();
    if !report.changed() {
        return Ok(report);
    }
    let mut supersedes = index.index_ids.clone();
    supersedes.extend(index.damaged.iter().map(|(id, _)| *id));
    lock.ensure_held()?;
    repo.write_index(&IndexFile { supersedes: supersedes.clone(), packs }).await?;
    for id in &supersedes {
        repo.store().delete(&format!("{INDEX}/{id}")).await?;
    }
    report.indexes_replaced = supersedes.len();
    Ok(report)
}
