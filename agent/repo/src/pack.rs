//! Packs: many blobs in one object, so a backup makes few, large requests.
//!
//! Layout: `blob_0 || blob_1 || ... || trailer || trailer_len (u32 LE) || "KPK1"`. The trailer is
//! sealed and lists every blob (id, kind, offset, length, plaintext length), so a pack that
//! landed but whose index never did (a killed push) can be indexed again from the pack alone.
//! A pack's name is the BLAKE3 hash of its bytes.

use crate::blob::{BlobKind, EncodedBlob};
use crate::crypto::SecretKey;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId, content_hash};

/// Magic at the very end of a pack; its last digit is the pack format version.
pub const PACK_MAGIC: &[u8; 4] = b"KPK1";
/// Bytes at the end of a pack that locate the trailer.
pub const PACK_TAIL_LEN: usize = 8;
const TRAILER_AAD: &[u8] = b"kanister pack trailer";
const TRAILER_VERSION: u8 = 1;
/// Encoded size of one [`PackEntry`].
pub const ENTRY_LEN: usize = 32 + 1 + 4 + 4 + 4;

/// Where a blob sits in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The blob.
    pub id: BlobId,
    /// Its kind.
    pub kind: BlobKind,
    /// Offset of its sealed bytes in the pack.
    pub offset: u32,
    /// Length of its sealed bytes.
    pub length: u32,
    /// Length of its plaintext.
    pub raw_len: u32,
}

impl PackEntry {
    /// Appends the fixed-size encoding ([`ENTRY_LEN`] bytes).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
    }

    /// Reads an entry from its fixed-size encoding.
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() < ENTRY_LEN {
            return Err(Error::malformed("pack entry", "truncated"));
        }
        let u = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Ok(PackEntry {
            id: BlobId::from_slice(b).expect("length checked"),
            kind: BlobKind::from_u8(b[32]).ok_or_else(|| Error::malformed("pack entry", "unknown blob kind"))?,
            offset: u(33),
            length: u(37),
            raw_len: u(41),
        })
    }

    /// The byte range of the blob in its pack.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset as u64..self.offset as u64 + self.length as u64
    }
}

/// A pack being filled.
#[derive(Debug, Default)]
pub struct PackWriter {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A finished pack, ready to upload.
#[derive(Debug)]
pub struct FinishedPack {
    /// Its name.
    pub id: PackId,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The blobs in it.
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    /// An empty pack with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        PackWriter { buf: Vec::with_capacity(capacity), entries: Vec::new() }
    }

    /// Appends a blob.
    pub fn add(&mut self, blob: &EncodedBlob) {
        self.entries.push(PackEntry {
            id: blob.id,
            kind: blob.kind,
            offset: self.buf.len() as u32,
            length: blob.bytes.len() as u32,
            raw_len: blob.raw_len,
        });
        self.buf.extend_from_slice(&blob.bytes);
    }

    /// Bytes of blobs so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seals the trailer and names the pack.
    pub fn finish(mut self, data_key: &SecretKey) -> FinishedPack {
        let mut plain = Vec::with_capacity(5 + self.entries.len() * ENTRY_LEN);
        plain.push(TRAILER_VERSION);
        plain.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            e.encode_into(&mut plain);
        }
        let trailer = data_key.seal(TRAILER_AAD, &plain);
        self.buf.extend_from_slice(&trailer);
        self.buf.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(PACK_MAGIC);
        FinishedPack { id: PackId(content_hash(&self.buf)), bytes: self.buf, entries: self.entries }
    }
}

/// Reads the trailer length from the last [`PACK_TAIL_LEN`] bytes of a pack.
pub fn trailer_len(tail: &[u8]) -> Result<u32> {
    if tail.len() != PACK_TAIL_LEN || &tail[4..] != PACK_MAGIC {
        return Err(Error::malformed("pack", "it does not end with the pack magic (truncated or not a pack)"));
    }
    Ok(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")))
}

/// Opens a pack's sealed trailer (the bytes just before the tail) and lists its blobs.
pub fn parse_trailer(data_key: &SecretKey, pack: &PackId, trailer: &[u8]) -> Result<Vec<PackEntry>> {
    let plain = data_key.open(TRAILER_AAD, trailer, || format!("trailer of pack {pack}"))?;
    parse_trailer_plaintext(pack, &plain)
}

/// Parses an opened trailer (what [`parse_trailer`] decrypted). Untrusted bytes.
pub fn parse_trailer_plaintext(pack: &PackId, plain: &[u8]) -> Result<Vec<PackEntry>> {
    if plain.first() != Some(&TRAILER_VERSION) || plain.len() < 5 {
        return Err(Error::malformed("pack trailer", format!("pack {pack}: unknown trailer version")));
    }
    let n = u32::from_le_bytes(plain[1..5].try_into().expect("4 bytes")) as usize;
    let body = &plain[5..];
    if body.len() != n * ENTRY_LEN {
        return Err(Error::malformed("pack trailer", format!("pack {pack}: entry count does not match")));
    }
    body.chunks_exact(ENTRY_LEN).map(PackEntry::decode).collect()
}

/// Checks a whole downloaded pack: its hash, its trailer, every blob. Returns the entries.
pub fn verify(keys: &crate::keys::Keys, id: &PackId, bytes: &[u8]) -> Result<Vec<PackEntry>> {
    if content_hash(bytes) != id.0 {
        return Err(Error::malformed("pack", format!("{id} is damaged: its content does not match its name")));
    }
    let entries = read_entries(&keys.data_key, id, bytes)?;
    for e in &entries {
        let r = e.range();
        let b = bytes
            .get(r.start as usize..r.end as usize)
            .ok_or_else(|| Error::malformed("pack", format!("{id}: blob {} lies outside the pack", e.id)))?;
        crate::blob::decode(keys, e.kind, &e.id, b, e.raw_len)?;
    }
    Ok(entries)
}

/// Lists the blobs of a whole pack from its trailer.
pub fn read_entries(data_key: &SecretKey, id: &PackId, bytes: &[u8]) -> Result<Vec<PackEntry>> {
    if bytes.len() < PACK_TAIL_LEN {
        return Err(Error::malformed("pack", format!("{id} is shorter than a pack tail")));
    }
    let tail_start = bytes.len() - PACK_TAIL_LEN;
    let tl = trailer_len(&bytes[tail_start..])? as usize;
    let start = tail_start
        .checked_sub(tl)
        .ok_or_else(|| Error::malformed("pack", format!("{id}: trailer longer than the pack")))?;
    parse_trailer(data_key, id, &bytes[start..tail_start])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{blob_id, encode};
    use crate::keys::MasterKey;

    #[test]
    fn pack_round_trip_and_damage() {
        let keys = MasterKey::generate().keys();
        let mut w = PackWriter::with_capacity(1 << 16);
        let datas: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1000 + i as usize]).collect();
        for d in &datas {
            w.add(&encode(&keys, BlobKind::Data, blob_id(&keys, d), d, 3).unwrap());
        }
        let p = w.finish(&keys.data_key);
        let entries = verify(&keys, &p.id, &p.bytes).unwrap();
        assert_eq!(entries, p.entries);
        for (e, d) in entries.iter().zip(&datas) {
            let r = e.range();
            let got = crate::blob::decode(&keys, e.kind, &e.id, &p.bytes[r.start as usize..r.end as usize], e.raw_len);
            assert_eq!(&got.unwrap(), d);
        }
        let mut bad = p.bytes.clone();
        bad[5] ^= 1;
        assert!(verify(&keys, &p.id, &bad).is_err());
        assert!(verify(&keys, &p.id, &p.bytes[..p.bytes.len() - 3]).is_err());
        assert!(read_entries(&keys.data_key, &p.id, &p.bytes[..p.bytes.len() - 3]).is_err());
        let other = MasterKey::generate().keys();
        assert!(read_entries(&other.data_key, &p.id, &p.bytes).is_err());
    }
}
