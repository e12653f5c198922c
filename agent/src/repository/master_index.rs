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
/// table holds only its position (8 bytes, no copy of the id: a lookup compares with the
/// entry), so a blob costs its 48-byte entry and about 10 bytes of table.
#[derive(Debug, Default)]
pub struct MasterIndex {
    /// Known packs and their sizes.
    pub packs: Vec<(PackId, u64)>,
    pack_pos: kanister_repo::IdMap<PackId, u32>,
    pack_blobs: Vec<Vec<PackEntry>>,
    blobs: hashbrown::HashTable<Slot>,
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

/// A blob id's hash: its first 8 bytes (ids are keyed hashes: uniform, and not choosable
/// without the repository key).
fn hash_of(id: &BlobId) -> u64 {
    u64::from_le_bytes(*id.0.first_chunk::<8>().expect("ids are 32 bytes"))
}

/// Adds `pack_blobs[pos]`'s blobs not yet in `table` (split from the index for the borrows).
fn insert_pack(table: &mut hashbrown::HashTable<Slot>, pack_blobs: &[Vec<PackEntry>], pos: u32) {
    let entry = |s: &Slot| &pack_blobs[s.pack as usize][s.idx as usize];
    for (i, e) in pack_blobs[pos as usize].iter().enumerate() {
        let h = hash_of(&e.id);
        if table.find(h, |s| entry(s).id == e.id).is_none() {
            table.insert_unique(h, Slot { pack: pos, idx: i as u32 }, |s| hash_of(&entry(s).id));
        }
    }
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
        self.pack_blobs.push(p.blobs);
        insert_pack(&mut self.blobs, &self.pack_blobs, pos);
    }

    fn slot_of(&self, id: &BlobId) -> Option<&Slot> {
        self.blobs.find(hash_of(id), |s| self.pack_blobs[s.pack as usize][s.idx as usize].id == *id)
    }

    fn location(&self, s: &Slot) -> BlobLocation {
        BlobLocation { pack: s.pack, entry: self.pack_blobs[s.pack as usize][s.idx as usize] }
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
        self.blobs.retain(|s| !gone.contains(&s.pack));
        for pos in 0..self.pack_blobs.len() as u32 {
            if !gone.contains(&pos) {
                insert_pack(&mut self.blobs, &self.pack_blobs, pos);
            }
        }
    }

    /// Looks a blob up.
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.slot_of(id).map(|s| self.location(s))
    }

    /// Whether a blob is indexed.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.slot_of(id).is_some()
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
        self.blobs.iter().map(|s| (&self.pack_blobs[s.pack as usize][s.idx as usize].id, self.location(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kanister_repo::BlobKind;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn entry(id: u8, n: u32) -> PackEntry {
        // Ids that share their first 8 bytes (the table's hash) when `id` is even: lookups must
        // tell them apart by the whole id.
        let mut b = [0u8; 32];
        b[31] = id;
        if id % 2 == 1 {
            b[0] = id;
        }
        PackEntry { id: BlobId(b), kind: BlobKind::Data, offset: n, length: n + 1, raw_len: n + 2 }
    }

    proptest! {
        // Against a model: the first pack that lists a blob is where lookups find it, also after
        // some packs are forgotten.
        #[test]
        fn lookups_match_a_model(packs in proptest::collection::vec(proptest::collection::vec(0u8..40, 0..12), 1..12),
                                 forget in proptest::collection::vec(any::<bool>(), 12)) {
            let mut mi = MasterIndex::default();
            let pack_ids: Vec<PackId> = (0..packs.len()).map(|i| PackId([i as u8 + 1; 32])).collect();
            for (p, blobs) in packs.iter().enumerate() {
                let entries = blobs.iter().enumerate().map(|(i, b)| entry(*b, (p * 100 + i) as u32)).collect();
                mi.add_pack(IndexPack { id: pack_ids[p], size: 1, blobs: entries });
            }
            let model = |skip: &HashSet<usize>| {
                let mut m: HashMap<BlobId, (u32, u32)> = HashMap::new();
                for (p, blobs) in packs.iter().enumerate().filter(|(p, _)| !skip.contains(p)) {
                    for (i, b) in blobs.iter().enumerate() {
                        m.entry(entry(*b, 0).id).or_insert((p as u32, (p * 100 + i) as u32));
                    }
                }
                m
            };
            let check = |mi: &MasterIndex, m: &HashMap<BlobId, (u32, u32)>| {
                prop_assert_eq!(mi.len(), m.len());
                for b in 0u8..40 {
                    let id = entry(b, 0).id;
                    let got = mi.get(&id).map(|l| (l.pack, l.entry.offset));
                    prop_assert_eq!(got, m.get(&id).copied(), "blob {}", b);
                    prop_assert_eq!(mi.contains(&id), m.contains_key(&id));
                }
                let listed: HashMap<BlobId, (u32, u32)> = mi.iter().map(|(id, l)| (*id, (l.pack, l.entry.offset))).collect();
                prop_assert_eq!(&listed, m);
                Ok(())
            };
            check(&mi, &model(&HashSet::new()))?;
            let skip: HashSet<usize> = (0..packs.len()).filter(|p| forget[*p]).collect();
            mi.forget_blobs_in(&skip.iter().map(|p| pack_ids[*p]).collect());
            check(&mi, &model(&skip))?;
        }
    }
}
