//! A repository in a store: opening it, its index, its snapshots.
//!
//! Layout under the store's prefix:
//!
//! ```text
//! config                 sealed repository parameters, written once by `repo init`
//! keys/<id>              key slots (the master key, wrapped)
//! data/<xx>/<pack id>    packs
//! index/<index id>       indexes
//! snapshots/<id>         snapshots
//! locks/<id>             markers of running backups (not exclusive; read by `prune`)
//! prune/<id>             packs `prune` has set aside, deleted after the grace period
//! ```
//!
//! Every object except locks is written once and never overwritten. Writers take no global
//! lock: a backup writes packs, then indexes, then its snapshot, so a crash leaves only packs
//! nothing points at, which the next backup reuses (their trailers are re-indexed) and `prune`
//! eventually removes.
//!
//! Submodules: [`key`] (the secret and where it comes from), [`master_index`] (indexes merged
//! in memory), [`locks`] (backup markers), [`prune_marks`], [`store_ref`] (the store a gRPC
//! request names). The formats of markers and prune marks are in [`kanister_repo::marker`].

use std::collections::{BTreeMap, HashSet};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use kanister_repo::blob::{self, BlobKind};
use kanister_repo::chunker::ChunkerParams;
use kanister_repo::index::{IndexFile, IndexPack};
use kanister_repo::keys::{Argon2Params, Credential, KeySlot, MasterKey};
use kanister_repo::pack::{self, PackEntry};
use kanister_repo::snapshot::{Root, Snapshot};
use kanister_repo::{BlobId, IndexId, Keys, PackId, RepoConfig, SnapshotId};

mod key;
mod locks;
mod lookup;
mod master_index;
mod prune_marks;
mod store_ref;

pub use self::key::RepoKey;
pub use self::locks::{
    ALIVE_SUFFIX, BackupLock, BackupMarker, LOCK_REFRESH_EVERY, LOCK_STALE_AFTER, LocalProcess, LockInfo,
    ProcessIdentity, now_secs,
};
pub use self::lookup::{Locate, LookupIndex, MAX_RUNS, SORT_ENTRIES};
pub use self::master_index::{BlobLocation, MasterIndex};
pub use self::prune_marks::PruneMark;
pub use self::store_ref::{RefError, store_of_ref};
use crate::error::{Error, Result};
use crate::store::{Created, Store, StoreError};

/// Object holding the sealed config.
pub const CONFIG: &str = "config";
/// Folder of key slots.
pub const KEYS: &str = "keys";
/// Folder of packs.
pub const DATA: &str = "data";
/// Folder of indexes.
pub const INDEX: &str = "index";
/// Folder of snapshots.
pub const SNAPSHOTS: &str = "snapshots";
/// Folder of backup markers.
pub const LOCKS: &str = "locks";
/// Folder of prune marks.
pub const PRUNE: &str = "prune";

/// Concurrent small reads when loading indexes and snapshots.
const META_CONCURRENCY: usize = 16;

/// Most blobs one index object holds (~1.5 MiB sealed). Loading decodes up to
/// [`META_CONCURRENCY`] objects at once, each whole (it is sealed as one): one object for a
/// whole compacted repository of 10 million blobs was ~450 MB, held three times over (sealed,
/// opened, decoded) by every backup and restore that loaded it.
pub const MAX_INDEX_BLOBS: usize = 32 * 1024;

/// The ranges of `packs` that go into one index object each: consecutive packs up to
/// [`MAX_INDEX_BLOBS`] blobs (a larger pack alone), and one empty range for no packs.
fn index_parts(packs: &[IndexPack]) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let (mut start, mut blobs) = (0, 0);
    for (i, p) in packs.iter().enumerate() {
        if i > start && blobs + p.blobs.len() > MAX_INDEX_BLOBS {
            parts.push(start..i);
            (start, blobs) = (i, 0);
        }
        blobs += p.blobs.len();
    }
    if start < packs.len() || packs.is_empty() {
        parts.push(start..packs.len());
    }
    parts
}

/// The key of a pack object.
pub fn pack_key(id: &PackId) -> String {
    let h = id.to_hex();
    format!("{DATA}/{}/{h}", &h[..2])
}

/// Parses a pack id back from its key.
pub fn pack_id_from_key(key: &str) -> Option<PackId> {
    key.rsplit('/').next()?.parse().ok()
}

/// Typestate: a repository not opened yet.
#[derive(Debug)]
pub struct Closed;

/// Typestate: an opened repository (keys and config loaded).
#[derive(Debug, Clone)]
pub struct Open {
    keys: Keys,
    config: RepoConfig,
    cache_root: Option<PathBuf>,
}

/// The cache directory of an agent: `KANISTER_CACHE_DIR`, else `$XDG_CACHE_HOME/kanister`, else
/// `$HOME/.cache/kanister`; none when none of them is set.
pub fn default_cache_root() -> Option<PathBuf> {
    let var = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("KANISTER_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("kanister")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("kanister")))
}

/// A repository in a store. `Repository<Closed>` can only be initialised or opened. An open
/// repository clones cheaply (the store is shared), for tasks that outlive a borrow.
#[derive(Debug, Clone)]
pub struct Repository<S = Open> {
    store: Store,
    state: S,
    _s: PhantomData<S>,
}

/// Parameters of `repo init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Chunk sizes.
    pub chunker: ChunkerParams,
    /// Target pack size.
    pub pack_size: u32,
    /// zstd level.
    pub compression_level: i32,
    /// Argon2 cost for passphrase slots.
    pub argon2: Argon2Params,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            pack_size: kanister_repo::config::DEFAULT_PACK_SIZE,
            compression_level: kanister_repo::config::DEFAULT_COMPRESSION_LEVEL,
            argon2: Argon2Params::default(),
        }
    }
}

impl Repository<Closed> {
    /// The repository at `store`, not opened.
    pub fn at(store: Store) -> Self {
        Repository { store, state: Closed, _s: PhantomData }
    }

    /// Creates a new repository: a random master key, one key slot for `key`, the config.
    pub async fn init(mut self, key: &RepoKey, opts: &InitOptions) -> Result<Repository<Open>> {
        self.store.create_local_root().map_err(|e| Error::io(format!("cannot create {}", self.store), e))?;
        // Key slots without a config are a creation under way or one that crashed: the
        // conditional write of the config below decides.
        if self.store.size(CONFIG).await?.is_some() {
            return Err(Error::AlreadyInitialized(self.store.to_string()));
        }
        let config = RepoConfig::new(opts.chunker, opts.pack_size, opts.compression_level)?;
        let master = MasterKey::generate();
        let keys = master.keys();
        let slot = {
            let (master, key, params) = (master.clone(), key.clone(), opts.argon2);
            tokio::task::spawn_blocking(move || KeySlot::wrap(&master, &key.credential(), params, &slot_label()))
                .await
                .map_err(|e| Error::Task(e.to_string()))??
        };
        // The key slot first, then the config, created only if absent: of writers racing to
        // create a repository here, the one whose config lands wins; the others withdraw their
        // slot and open the winner's. A slot left behind by a crash in between is harmless:
        // `open` uses the slot whose master key opens the config.
        let slot_key = format!("{KEYS}/{}", slot.id);
        self.store.put(&slot_key, Bytes::from(slot.to_json())).await?;
        if self.store.put_new(CONFIG, Bytes::from(config.encode(&keys))).await? == Created::No {
            if let Err(e) = self.store.delete(&slot_key).await {
                tracing::warn!(slot = %slot_key, error = %e, "cannot withdraw the key slot of a lost repository creation");
            }
            return Err(Error::AlreadyInitialized(self.store.to_string()));
        }
        Ok(Repository {
            store: self.store,
            state: Open { keys, config, cache_root: default_cache_root() },
            _s: PhantomData,
        })
    }

    /// Opens the repository with `key`.
    pub async fn open(self, key: &RepoKey) -> Result<Repository<Open>> {
        let mut slots = self.key_slots().await?;
        if slots.is_empty() && self.store.size(CONFIG).await?.is_some() {
            // A creation racing this open writes its slot, then the config: look again.
            slots = self.key_slots().await?;
        }
        if slots.is_empty() {
            // No key slot, but a repository's objects: its keys were lost, which is damage. Never
            // call that "no repository": `repo init` there would hide what is left of it.
            for folder in [CONFIG, DATA, INDEX, SNAPSHOTS] {
                if !self.store.list(folder).await?.is_empty() {
                    return Err(Error::Damaged(format!(
                        "{} holds a repository ({folder} is there) but no key slot under keys/: its keys were \
                         deleted or lost, and without one nothing in it can be read. Restore keys/ from a copy \
                         of the bucket (or the repository-key Secret's slot); do NOT run `repo init` here",
                        self.store
                    )));
                }
            }
            return Err(Error::NotARepository(self.store.to_string()));
        }
        let sealed = match self.store.get(CONFIG).await {
            Ok(b) => b,
            Err(StoreError::NotFound(_)) => return Err(Error::NotARepository(self.store.to_string())),
            Err(e) => return Err(e.into()),
        };
        let key = key.clone();
        let (keys, config) = tokio::task::spawn_blocking(move || open_config(&slots, &key.credential(), &sealed))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        Ok(Repository {
            store: self.store,
            state: Open { keys, config, cache_root: default_cache_root() },
            _s: PhantomData,
        })
    }

    /// Opens the repository, creating it with default parameters when the location holds none:
    /// the first backup to a new Profile location. Only backups call this; reads never create.
    ///
    /// Writers racing to create it end up in one repository where the store creates objects
    /// only if absent (local disk, S3 with conditional writes, GCS, Azure); see [`Self::init`].
    pub async fn open_or_init(self, key: &RepoKey) -> Result<Repository<Open>> {
        let store = self.store.clone();
        match self.open(key).await {
            Err(Error::NotARepository(_)) => {}
            other => return other,
        }
        tracing::info!(store = %store, "creating the repository on first use");
        match Repository::at(store.clone()).init(key, &InitOptions::default()).await {
            Err(Error::AlreadyInitialized(_)) => {}
            other => return other,
        }
        // Another writer created it since we looked (its config is there): use theirs. (A
        // `file://` store opened before its directory existed must look again.)
        let mut store = store;
        store.create_local_root().map_err(|e| Error::io(format!("cannot open {store}"), e))?;
        Repository::at(store).open(key).await
    }

    async fn key_slots(&self) -> Result<Vec<KeySlot>> {
        let mut slots = Vec::new();
        for o in self.store.list(KEYS).await? {
            let bytes = match self.store.get(&o.key).await {
                Ok(b) => b,
                // Withdrawn since the listing by a writer that lost a creation race.
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            slots.push(KeySlot::from_json(&bytes)?);
        }
        Ok(slots)
    }
}

/// The keys and config of a repository: the first key slot `cred` opens whose master key also
/// opens the config (a slot orphaned by a lost creation race opens with the same credential but
/// holds another master key).
fn open_config(slots: &[KeySlot], cred: &Credential<'_>, sealed: &[u8]) -> Result<(Keys, RepoConfig)> {
    let mut mismatch = None;
    // A slot refused before any work (hostile cost parameters) does not stop another slot from
    // opening the repository; if none does, the refusal is the answer.
    let mut refused = None;
    for slot in slots {
        match slot.unwrap(cred) {
            Ok(Some(master)) => {
                let keys = master.keys();
                match RepoConfig::decode(&keys, sealed) {
                    Ok(config) => return Ok((keys, config)),
                    Err(e) => mismatch = Some(e),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(slot = %slot.id.short(), error = %e, "skipping a key slot");
                refused.get_or_insert(e);
            }
        }
    }
    Err(match (mismatch, refused) {
        (Some(e), _) | (None, Some(e)) => e.into(),
        (None, None) => kanister_repo::Error::WrongKey { slots: slots.len() }.into(),
    })
}

fn slot_label() -> String {
    format!("{}@{}", std::env::var("USER").unwrap_or_else(|_| "agent".into()), hostname())
}

/// This machine's (pod's) host name.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

impl Repository<Open> {
    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The working keys.
    pub fn keys(&self) -> &Keys {
        &self.state.keys
    }

    /// The parameters.
    pub fn config(&self) -> &RepoConfig {
        &self.state.config
    }

    /// Where the local index cache goes ([`default_cache_root`] unless set); `None` holds the
    /// index in memory.
    pub fn cache_root(&self) -> Option<&Path> {
        self.state.cache_root.as_deref()
    }

    /// Puts the local index cache under `root` (`None`: hold the index in memory).
    pub fn with_cache_root(mut self, root: Option<PathBuf>) -> Self {
        self.state.cache_root = root;
        self
    }

    /// Index objects `ids`, read and opened `concurrency` at a time, as they arrive.
    pub(crate) fn index_objects(
        &self,
        ids: Vec<IndexId>,
        concurrency: usize,
    ) -> impl futures::Stream<Item = (IndexId, Result<IndexFile>)> + '_ {
        let keys = self.keys();
        futures::stream::iter(ids)
            .map(move |id| async move {
                let r = match self.store.get(&format!("{INDEX}/{id}")).await {
                    Ok(b) => IndexFile::decode(keys, &id, &b).map_err(Error::from),
                    Err(e) => Err(e.into()),
                };
                (id, r)
            })
            .buffer_unordered(concurrency)
    }

    /// Reads and merges every index object. Damaged indexes are listed in
    /// [`MasterIndex::damaged`] rather than failing the load, so that what can be read still is.
    pub async fn load_index(&self) -> Result<MasterIndex> {
        for attempt in 0..2 {
            let listed = self.store.list(INDEX).await?;
            let ids: Vec<IndexId> = listed.iter().filter_map(|o| o.key.rsplit('/').next()?.parse().ok()).collect();
            let mut mi = MasterIndex::default();
            let vanished = self.merge_index_objects(&mut mi, ids).await;
            // An index deleted between list and get was superseded by a consolidated one
            // written before the deletion: list again to pick that one up.
            if vanished && attempt == 0 {
                continue;
            }
            return Ok(mi);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Reads index objects `ids` into `mi`, each merged as it arrives and dropped (peak memory
    /// is the merged index plus a few index objects, not all of them decoded at once); damaged
    /// ones go to [`MasterIndex::damaged`]. Returns whether one vanished since it was listed.
    pub(crate) async fn merge_index_objects(&self, mi: &mut MasterIndex, ids: Vec<IndexId>) -> bool {
        let mut results = self.index_objects(ids, META_CONCURRENCY);
        let mut vanished = false;
        while let Some((id, r)) = results.next().await {
            match r {
                Ok(f) => {
                    f.packs.into_iter().for_each(|p| mi.add_pack(p));
                    mi.index_ids.push(id);
                }
                Err(Error::Store(StoreError::NotFound(_))) => vanished = true,
                Err(e) => mi.damaged.push((id, e.to_string())),
            }
        }
        vanished
    }

    /// Writes `f` as index objects of at most [`MAX_INDEX_BLOBS`] blobs each (a pack is never
    /// split); returns their ids and total size. Every part repeats `f.supersedes`, which is
    /// informational: readers merge every index object, so a crash between two parts leaves
    /// the old objects and some new ones, which repeat each other, never a pack no object names.
    pub async fn write_index(&self, f: &IndexFile) -> Result<(Vec<IndexId>, u64)> {
        let (mut ids, mut total) = (Vec::new(), 0u64);
        for range in index_parts(&f.packs) {
            let part = IndexFile { supersedes: f.supersedes.clone(), packs: f.packs[range].to_vec() };
            let (id, bytes) = part.encode(self.keys());
            drop(part);
            total += bytes.len() as u64;
            self.store.put(&format!("{INDEX}/{id}"), Bytes::from(bytes)).await?;
            ids.push(id);
        }
        Ok((ids, total))
    }

    /// Writes a snapshot; returns its id and size.
    pub async fn write_snapshot(&self, s: &Snapshot) -> Result<(SnapshotId, u64)> {
        let (id, bytes) = s.encode(self.keys());
        let n = bytes.len() as u64;
        self.store.put(&format!("{SNAPSHOTS}/{id}"), Bytes::from(bytes)).await?;
        Ok((id, n))
    }

    /// Ids of all snapshots.
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        Ok(self.store.list(SNAPSHOTS).await?.iter().filter_map(|o| o.key.rsplit('/').next()?.parse().ok()).collect())
    }

    /// Reads one snapshot.
    pub async fn snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let bytes = self.store.get(&format!("{SNAPSHOTS}/{id}")).await.map_err(|e| match e {
            StoreError::NotFound(_) => Error::SnapshotNotFound(id.to_string()),
            e => e.into(),
        })?;
        Ok(Snapshot::decode(self.keys(), id, &bytes)?)
    }

    /// Reads every snapshot, with the result of each.
    pub async fn snapshots(&self) -> Result<Vec<(SnapshotId, Result<Snapshot>)>> {
        let ids = self.snapshot_ids().await?;
        Ok(futures::stream::iter(ids)
            .map(|id| async move { (id, self.snapshot(&id).await) })
            .buffer_unordered(META_CONCURRENCY)
            .collect()
            .await)
    }

    /// Finds the snapshot a full id or unique prefix names.
    pub async fn resolve_snapshot(&self, prefix: &str) -> Result<SnapshotId> {
        let p = prefix.trim().to_ascii_lowercase();
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::SnapshotNotFound(prefix.to_string()));
        }
        let matches: Vec<SnapshotId> =
            self.snapshot_ids().await?.into_iter().filter(|id| id.to_hex().starts_with(&p)).collect();
        match matches.len() {
            0 => Err(Error::SnapshotNotFound(prefix.to_string())),
            1 => Ok(matches[0]),
            count => Err(Error::AmbiguousSnapshot { prefix: prefix.to_string(), count }),
        }
    }

    /// Reads and verifies one blob.
    pub async fn read_blob(&self, index: &dyn Locate, id: &BlobId) -> Result<Vec<u8>> {
        let (pack, e) = index.locate(id)?.ok_or_else(|| Error::Damaged(format!("blob {id} is in no index")))?;
        let bytes = self.store.get_range(&pack_key(&pack), e.range()).await?;
        let keys = self.keys().clone();
        Ok(tokio::task::spawn_blocking(move || blob::decode(&keys, e.kind, &e.id, &bytes, e.raw_len))
            .await
            .map_err(|e| Error::Task(e.to_string()))??)
    }

    /// Reads a pack's blob list from its trailer (two small range reads).
    pub async fn read_pack_trailer(&self, id: &PackId, size: u64) -> Result<Vec<PackEntry>> {
        let key = pack_key(id);
        if size < pack::PACK_TAIL_LEN as u64 {
            return Err(Error::Damaged(format!("pack {id} is too short to be a pack")));
        }
        let tail = self.store.get_range(&key, size - pack::PACK_TAIL_LEN as u64..size).await?;
        let tl = pack::trailer_len(&tail)? as u64;
        let start = (size - pack::PACK_TAIL_LEN as u64)
            .checked_sub(tl)
            .ok_or_else(|| Error::Damaged(format!("pack {id}: trailer longer than the pack")))?;
        let trailer = self.store.get_range(&key, start..size - pack::PACK_TAIL_LEN as u64).await?;
        Ok(pack::parse_trailer(&self.keys().data_key, id, &trailer)?)
    }

    /// Packs in the store that no index lists and no prune mark has set aside: left by an
    /// interrupted backup (or one still running). Indexes them from their trailers, adds them
    /// to `index` and writes an index object for them. Returns how many packs and the bytes of
    /// the index written.
    pub async fn recover_unindexed_packs(
        &self,
        index: &mut LookupIndex,
        marked: &HashSet<PackId>,
    ) -> Result<(usize, u64)> {
        let orphans: Vec<(PackId, u64)> = self
            .store
            .list(DATA)
            .await?
            .into_iter()
            .filter_map(|o| Some((pack_id_from_key(&o.key)?, o.size)))
            .filter(|(id, _)| !index.has_pack(id) && !marked.contains(id))
            .collect();
        if orphans.is_empty() {
            return Ok((0, 0));
        }
        let found: Vec<IndexPack> = futures::stream::iter(orphans)
            .map(|(id, size)| async move {
                match self.read_pack_trailer(&id, size).await {
                    Ok(blobs) => Some(IndexPack { id, size, blobs }),
                    Err(e) => {
                        tracing::warn!(pack = %id, error = %e, "ignoring an unreadable unindexed pack");
                        None
                    }
                }
            })
            .buffer_unordered(META_CONCURRENCY)
            .filter_map(|p| async move { p })
            .collect()
            .await;
        if found.is_empty() {
            return Ok((0, 0));
        }
        found.iter().for_each(|p| index.add_pack(p.clone()));
        let n = found.len();
        let (_, bytes) = self.write_index(&IndexFile { supersedes: vec![], packs: found }).await?;
        tracing::info!(packs = n, "re-indexed packs left by an interrupted backup");
        Ok((n, bytes))
    }

    /// Forgets snapshots (full ids or unique prefixes): deletes their snapshot objects; their
    /// data goes with the next prune. Returns the ids removed and the full ids that were
    /// already gone (a retry of an earlier forget, not an error).
    pub async fn forget(&self, ids: &[String]) -> Result<(Vec<String>, Vec<String>)> {
        let (mut removed, mut absent) = (Vec::new(), Vec::new());
        for p in ids {
            if p.len() == 64
                && let Ok(id) = p.parse::<SnapshotId>()
                && !self.snapshot_ids().await?.contains(&id)
            {
                absent.push(id.to_string());
                continue;
            }
            let id = self.resolve_snapshot(p).await?;
            self.store.delete(&format!("{SNAPSHOTS}/{id}")).await?;
            tracing::info!(snapshot = %id, "snapshot forgotten");
            removed.push(id.to_string());
        }
        Ok((removed, absent))
    }

    /// Visits every blob a snapshot's root references, depth first: metadata blobs (chunk
    /// lists, tree parts) as [`Visit::Blob`] with kind `Tree` before their content, data blobs
    /// with kind `Data`. A metadata blob that cannot be read is reported as
    /// [`Visit::Unreadable`]; the visitor decides whether to go on (`Ok`) or stop (`Err`).
    pub async fn walk_blobs(
        &self,
        index: &dyn Locate,
        root: &Root,
        visit: &mut (dyn FnMut(Visit<'_>) -> Result<()> + Send),
    ) -> Result<()> {
        match root {
            Root::Stream { lists } => {
                for list in lists {
                    visit(Visit::Blob(list, BlobKind::Tree))?;
                    match self
                        .read_blob(index, list)
                        .await
                        .and_then(|b| Ok(kanister_repo::snapshot::decode_id_list(&b)?))
                    {
                        Ok(ids) => {
                            for id in &ids {
                                visit(Visit::Blob(id, BlobKind::Data))?;
                            }
                        }
                        Err(e) => visit(Visit::Unreadable(list, e))?,
                    }
                }
            }
            Root::Tree { dir, .. } => {
                let mut stack: Vec<BlobId> = dir.subtree.iter().rev().copied().collect();
                while let Some(part) = stack.pop() {
                    visit(Visit::Blob(&part, BlobKind::Tree))?;
                    match self.read_blob(index, &part).await.and_then(|b| Ok(kanister_repo::tree::decode_part(&b)?)) {
                        Ok(nodes) => {
                            for n in &nodes {
                                for id in &n.content {
                                    visit(Visit::Blob(id, BlobKind::Data))?;
                                }
                            }
                            for n in nodes.iter().rev() {
                                stack.extend(n.subtree.iter().rev().copied());
                            }
                        }
                        Err(e) => visit(Visit::Unreadable(&part, e))?,
                    }
                }
            }
        }
        Ok(())
    }
}

/// What [`Repository::walk_blobs`] shows its visitor.
#[derive(Debug)]
pub enum Visit<'a> {
    /// A referenced blob.
    Blob(&'a BlobId, BlobKind),
    /// A metadata blob that could not be read: what it references is unknown.
    Unreadable(&'a BlobId, Error),
}

/// Tags given as `key=value`.
pub fn parse_tags(tags: &[String]) -> Result<BTreeMap<String, String>, String> {
    tags.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("invalid tag {t:?}: expected key=value, e.g. --tag namespace=mysql-test")),
        })
        .collect()
}

/// Whether a snapshot carries every tag of `filter`.
pub fn has_tags(s: &Snapshot, filter: &BTreeMap<String, String>) -> bool {
    filter.iter().all(|(k, v)| s.tags.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Tags from a command line give a map or an error naming the bad one, never a panic.
        #[test]
        fn any_tag_gives_a_map_or_an_error(text in "\\PC{0,80}") {
            match parse_tags(std::slice::from_ref(&text)) {
                Ok(tags) => prop_assert_eq!(tags.len(), 1),
                Err(e) => prop_assert!(e.contains("key=value"), "{}", e),
            }
        }
    }
}
