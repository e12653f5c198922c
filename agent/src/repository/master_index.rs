//! All index objects of a repository merged in memory: every known blob and pack.

use std::collections::HashSet;

use kanister_repo::index::IndexPack;
use kanister_repo::pack::PackEntry;
use kanister_repo::{BlobId, IndexId, PackId};

/// Where a blob is.
#[derive(Debug, Clone, Copy)]
pub struct BlobLocation {
    /// Index of its pack in [`MasterIndex::packs`].
    pub pack: u32,
    /// Its entry in the pack.
    pub entry: PackEntry,
}

/// All index objects merged: every known blob and pack.
///
/// A blob may sit in several packs (two backups that ran at once both stored it); lookups get
/// one location, while [`MasterIndex::entries_of`] keeps every pack's full list, which is
/// what `prune` must reason about. Each entry is stored once, in its pack's list; the lookup
/// table holds only a position (8 bytes), which halves the index's memory.
#[derive(Debug, Default)]
pub struct MasterIndex {
    /// Known packs and their sizes.
    pub packs: Vec<(PackId, u64)>,
    pack_pos: kanister_repo::IdMap<PackId, u32>,
    pack_blobs: Vec<Vec<PackEntry>>,
    blobs: kanister_repo::IdMap<BlobId, Slot>,
    /// The index objects that were read.
    pub index_ids: Vec<IndexId>,
    /// Index objects that could not be read, with the reason.
    pub damaged: Vec<(IndexId, String)>,
}

/// Where in [`MasterIndex::pack_blobs`] a blob's entry is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    pack: u32,
    idx: u32,
}

impl MasterIndex {
    /// Adds a pack's blobs (a pack listed twice is taken once: its content never changes).
    pub fn add_pack(&mut self, p: IndexPack) {
        if self.pack_pos.contains_key(&p.id) {
            return;
        }
        let pos = self.packs.len() as u32;
        self.packs.push((p.id, p.size));
        self.pack_pos.insert(p.id, pos);
        for (i, e) in p.blobs.iter().enumerate() {
            self.blobs.entry(e.id).or_insert(Slot { pack: pos, idx: i as u32 });
        }
        self.pack_blobs.push(p.blobs);
    }

    /// The packs with their blobs, consuming the index (no copy of the entries: what prune
    /// writes when it compacts the index).
    pub fn into_packs(self) -> impl Iterator<Item = IndexPack> {
        self.packs.into_iter().zip(self.pack_blobs).map(|((id, size), blobs)| IndexPack { id, size, blobs })
    }

    /// Whether the pack is indexed.
    pub fn has_pack(&self, id: &PackId) -> bool {
        self.pack_pos.contains_key(id)
    }

    /// The pack of a location.
    pub fn pack_id(&self, loc: &BlobLocation) -> PackId {
        self.packs[loc.pack as usize].0
    }

    /// Every blob of the pack at position `pos` in [`MasterIndex::packs`].
    pub fn entries_of(&self, pos: u32) -> &[PackEntry] {
        &self.pack_blobs[pos as usize]
    }

    /// Stops finding blobs in the given packs; a blob also stored elsewhere is found there.
    pub fn forget_blobs_in(&mut self, packs: &HashSet<PackId>) {
        let gone: HashSet<u32> =
            self.packs.iter().enumerate().filter(|(_, (id, _))| packs.contains(id)).map(|(i, _)| i as u32).collect();
        if gone.is_empty() {
            return;
        }
        self.blobs.retain(|_, s| !gone.contains(&s.pack));
        for (pos, entries) in self.pack_blobs.iter().enumerate() {
            if gone.contains(&(pos as u32)) {
                continue;
            }
            for (i, e) in entries.iter().enumerate() {
                self.blobs.entry(e.id).or_insert(Slot { pack: pos as u32, idx: i as u32 });
            }
        }
    }

    /// Looks a blob up.
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.blobs
            .get(id)
            .map(|s| BlobLocation { pack: s.pack, entry: self.pack_blobs[s.pack as usize][s.idx as usize] })
    }

    /// Whether a blob is indexed.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Whether no blob is indexed.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Every blob with the location lookups give.
    pub fn iter(&self) -> impl Iterator<Item = (&BlobId, BlobLocation)> + '_ {
        self.blobs
            .iter()
            .map(|(id, s)| (id, BlobLocation { pack: s.pack, entry: self.pack_blobs[s.pack as usize][s.idx as usize] }))
    }
}
