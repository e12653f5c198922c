//! Index objects: which pack holds which blob.
//!
//! A push writes index objects while it runs (so an interrupted push leaves its landed packs
//! findable) and one consolidated index at its end, which lists the interim ones it
//! supersedes. Readers merge all index objects; duplicates are harmless.

use crate::crypto::open_object;
use crate::error::{Error, Result};
use crate::id::{IndexId, PackId};
use crate::keys::Keys;
use crate::pack::{ENTRY_LEN, PackEntry};

const AAD: &[u8] = b"kanister index";
const VERSION: u8 = 1;

/// The blobs of one pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPack {
    /// The pack.
    pub id: PackId,
    /// Its size in bytes (so `check` can spot truncation without downloading).
    pub size: u64,
    /// Its blobs.
    pub blobs: Vec<PackEntry>,
}

/// One index object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Index objects whose content this one repeats; they may be deleted.
    pub supersedes: Vec<IndexId>,
    /// The packs it describes.
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    /// Seals the index; returns its id (object name) and bytes.
    pub fn encode(&self, keys: &Keys) -> (IndexId, Vec<u8>) {
        let n: usize = self.packs.iter().map(|p| 44 + p.blobs.len() * ENTRY_LEN).sum();
        let mut plain = crate::crypto::object_buffer(9 + self.supersedes.len() * 32 + n);
        self.write_plaintext(&mut plain);
        let (id, bytes) = crate::crypto::seal_object_buffer(&keys.data_key, AAD, plain);
        (IndexId(id), bytes)
    }

    /// The plaintext [`Self::encode`] seals (for tests and fuzzing seeds).
    pub fn to_plaintext(&self) -> Vec<u8> {
        let mut plain = Vec::new();
        self.write_plaintext(&mut plain);
        plain
    }

    fn write_plaintext(&self, plain: &mut Vec<u8>) {
        plain.push(VERSION);
        plain.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for s in &self.supersedes {
            plain.extend_from_slice(s.as_bytes());
        }
        plain.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            plain.extend_from_slice(p.id.as_bytes());
            plain.extend_from_slice(&p.size.to_le_bytes());
            plain.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
            for b in &p.blobs {
                b.encode_into(plain);
            }
        }
    }

    /// Verifies and opens a stored index.
    pub fn decode(keys: &Keys, id: &IndexId, bytes: &[u8]) -> Result<Self> {
        let plain = open_object(&keys.data_key, AAD, "index", &format!("index {id}"), Some(&id.0), bytes)?;
        Self::from_plaintext(&plain)
    }

    /// Parses an index's plaintext (what [`Self::decode`] opened). Untrusted bytes: every
    /// length is checked against what is there.
    pub fn from_plaintext(plain: &[u8]) -> Result<Self> {
        let mut r = crate::wire::Reader::new(plain, "index");
        let v = r.take(1)?[0];
        if v != VERSION {
            return Err(Error::Version { what: "index", found: v.into(), supported: VERSION.into() });
        }
        let ns = r.u32()? as usize;
        let mut supersedes = Vec::with_capacity(ns.min(1 << 16));
        for _ in 0..ns {
            supersedes.push(IndexId::from_slice(r.take(32)?).expect("32 bytes"));
        }
        let np = r.u32()? as usize;
        let mut packs = Vec::with_capacity(np.min(1 << 16));
        for _ in 0..np {
            let id = PackId::from_slice(r.take(32)?).expect("32 bytes");
            let size = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
            let nb = r.u32()? as usize;
            let mut blobs = Vec::with_capacity(nb.min(1 << 16));
            for _ in 0..nb {
                blobs.push(PackEntry::decode(r.take(ENTRY_LEN)?)?);
            }
            packs.push(IndexPack { id, size, blobs });
        }
        if !r.b.is_empty() {
            return Err(Error::malformed("index", "trailing bytes after the last pack".to_string()));
        }
        Ok(IndexFile { supersedes, packs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobKind;
    use crate::id::BlobId;
    use crate::keys::MasterKey;

    #[test]
    fn index_round_trip_and_damage() {
        let keys = MasterKey::generate().keys();
        let idx = IndexFile {
            supersedes: vec![IndexId([9; 32])],
            packs: vec![IndexPack {
                id: PackId([1; 32]),
                size: 12345,
                blobs: vec![PackEntry { id: BlobId([2; 32]), kind: BlobKind::Tree, offset: 5, length: 6, raw_len: 7 }],
            }],
        };
        let (id, bytes) = idx.encode(&keys);
        assert_eq!(IndexFile::decode(&keys, &id, &bytes).unwrap(), idx);
        let mut bad = bytes.clone();
        bad[40] ^= 1;
        let err = IndexFile::decode(&keys, &id, &bad).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains(&id.to_string()), "{err}");
    }
}
