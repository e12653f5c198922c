//! Packing blobs and uploading packs, shared by every backup pipeline.
//!
//! A [`Packer`] fills the current pack; a full pack is sealed and uploaded by a task, at most
//! `uploads` at once (a semaphore: waiting for a slot is the pipelines' backpressure). Landed
//! packs are indexed every few seconds while the backup runs, so an interrupted backup leaves
//! findable packs; [`Packer::finish`] writes one index for all of them, superseding the interim
//! ones, which [`Packer::delete_interim`] removes once the snapshot is written.
//!
//! [`Dedup`] decides, per blob, whether it must be stored: not in the index and not already
//! claimed by another worker of this backup.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kanister_repo::blob::{self, BlobKind, EncodedBlob};
use kanister_repo::index::{IndexFile, IndexPack};
use kanister_repo::pack::PackWriter;
use kanister_repo::{BlobId, IndexId, Keys};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repository::{INDEX, LookupIndex, Repository, pack_key};

/// Which blobs this backup must store. Shared by its workers.
#[derive(Debug, Clone)]
pub struct Dedup {
    index: Arc<LookupIndex>,
    claimed: Arc<Mutex<kanister_repo::IdSet<BlobId>>>,
}

impl Dedup {
    /// Deduplicates against `index`.
    pub fn new(index: Arc<LookupIndex>) -> Self {
        Dedup { index, claimed: Arc::default() }
    }

    /// True exactly once per new blob: the caller must store it.
    pub fn claim(&self, id: &BlobId) -> bool {
        !self.is_stored(id) && self.claimed.lock().expect("not poisoned").insert(*id)
    }

    /// Whether the repository holds the blob. A damaged page of the local index cache answers
    /// no: the blob is stored again rather than trusted to be there.
    pub fn is_stored(&self, id: &BlobId) -> bool {
        match self.index.contains(id) {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(blob = %id, error = %e, "storing a blob again: the index cache cannot say");
                false
            }
        }
    }

    /// The index deduplicated against.
    pub fn index(&self) -> &LookupIndex {
        &self.index
    }

    /// The index deduplicated against, shared.
    pub fn shared_index(&self) -> Arc<LookupIndex> {
        self.index.clone()
    }
}

/// Loads the index a backup deduplicates against: without the packs `prune` has set aside
/// (they may be deleted soon), with the packs an interrupted backup left (re-indexed from their
/// trailers). Returns the dedup state, the number of packs re-indexed and the bytes written.
pub async fn prepare(repo: &Repository) -> Result<(Dedup, usize, u64)> {
    let mut index = repo.load_lookup().await?;
    for (id, why) in &index.damaged {
        tracing::warn!(index = %id, error = %why, "ignoring a damaged index: its blobs will be stored again");
    }
    let marked = repo.prune_marked_packs().await?;
    index.forget_blobs_in(&marked);
    let (recovered, bytes) = repo.recover_unindexed_packs(&mut index, &marked).await?;
    Ok((Dedup::new(Arc::new(index)), recovered, bytes))
}

/// Hashes a chunk and, when it is new, compresses and seals it. CPU work: call it on the
/// blocking pool.
pub fn process_chunk(
    keys: &Keys,
    dedup: &Dedup,
    kind: BlobKind,
    level: i32,
    data: &[u8],
) -> Result<(BlobId, Option<EncodedBlob>)> {
    let id = blob::blob_id(keys, data);
    let blob = if dedup.claim(&id) { Some(blob::encode(keys, kind, id, data, level)?) } else { None };
    Ok((id, blob))
}

/// Fills packs, uploads them with bounded concurrency, and indexes them as they land.
#[derive(Debug)]
pub struct Packer<'r> {
    repo: &'r Repository,
    pack: PackWriter,
    pack_size: usize,
    uploads: JoinSet<Result<IndexPack>>,
    slots: Arc<Semaphore>,
    landed: Vec<IndexPack>,
    unindexed: Vec<IndexPack>,
    interim: Vec<IndexId>,
    last_index: Instant,
    /// Bytes written so far (packs and indexes).
    pub bytes_uploaded: u64,
}

/// Index landed packs at least this often while a push runs.
const INTERIM_INDEX_EVERY: Duration = Duration::from_secs(2);

impl<'r> Packer<'r> {
    /// A packer writing into `repo`.
    pub fn new(repo: &'r Repository, uploads: usize, pack_size: usize) -> Self {
        Packer {
            repo,
            pack: PackWriter::with_capacity(pack_size + (1 << 20)),
            pack_size,
            uploads: JoinSet::new(),
            slots: Arc::new(Semaphore::new(uploads)),
            landed: Vec::new(),
            unindexed: Vec::new(),
            interim: Vec::new(),
            last_index: Instant::now(),
            bytes_uploaded: 0,
        }
    }

    /// Adds a blob; seals and uploads the pack when it is full.
    pub async fn add(&mut self, b: EncodedBlob, progress: &Progress) -> Result<()> {
        self.pack.add(&b);
        if self.pack.len() >= self.pack_size {
            self.seal_and_upload(progress).await?;
        }
        Ok(())
    }

    async fn seal_and_upload(&mut self, progress: &Progress) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        // Wait for an upload slot before sealing: this is the pipeline's backpressure.
        let permit = self.slots.clone().acquire_owned().await.expect("semaphore never closed");
        let pack = std::mem::replace(&mut self.pack, PackWriter::with_capacity(self.pack_size + (1 << 20)));
        let finished = pack.finish(&self.repo.keys().data_key);
        let store = self.repo.store().clone();
        self.uploads.spawn(async move {
            let size = finished.bytes.len() as u64;
            store.put(&pack_key(&finished.id), Bytes::from(finished.bytes)).await?;
            drop(permit);
            Ok(IndexPack { id: finished.id, size, blobs: finished.entries })
        });
        self.collect_landed(progress, false).await
    }

    /// Takes finished uploads; writes an interim index when due (or when `all` is set, after
    /// waiting for every upload).
    pub async fn collect_landed(&mut self, progress: &Progress, all: bool) -> Result<()> {
        loop {
            let next = if all { self.uploads.join_next().await } else { self.uploads.try_join_next() };
            let Some(r) = next else { break };
            let p = r.map_err(|e| Error::Task(e.to_string()))??;
            self.bytes_uploaded += p.size;
            Progress::add(&progress.bytes_stored, p.size);
            self.unindexed.push(p);
        }
        if !self.unindexed.is_empty() && (all || self.last_index.elapsed() >= INTERIM_INDEX_EVERY) {
            let packs = std::mem::take(&mut self.unindexed);
            let (ids, n) = self.repo.write_index(&IndexFile { supersedes: vec![], packs: packs.clone() }).await?;
            self.bytes_uploaded += n;
            Progress::add(&progress.bytes_stored, n);
            self.interim.extend(ids);
            self.landed.extend(packs);
            self.last_index = Instant::now();
        }
        Ok(())
    }

    /// Uploads the last pack, waits for every upload, and writes one index for all packs of
    /// this push (superseding the interim ones). Returns the number of packs.
    pub async fn finish(&mut self, progress: &Progress) -> Result<u64> {
        self.seal_and_upload(progress).await?;
        self.collect_landed(progress, true).await?;
        if self.interim.len() > 1 {
            let f = IndexFile { supersedes: self.interim.clone(), packs: std::mem::take(&mut self.landed) };
            let (_, n) = self.repo.write_index(&f).await?;
            self.landed = f.packs;
            self.bytes_uploaded += n;
            Progress::add(&progress.bytes_stored, n);
        } else {
            // Zero or one interim index already says everything.
            self.interim.clear();
        }
        Ok(self.landed.len() as u64)
    }

    /// Removes the interim indexes once the consolidated one and the snapshot are written.
    pub async fn delete_interim(&mut self) {
        for id in std::mem::take(&mut self.interim) {
            if let Err(e) = self.repo.store().delete(&format!("{INDEX}/{id}")).await {
                tracing::debug!(index = %id, error = %e, "cannot delete a superseded index; prune will");
            }
        }
    }
}
