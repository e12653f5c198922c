//! Sorted index runs: the local, on-disk form of a repository's index that lets a backup or a
//! restore look blobs up without holding the whole index in memory.
//!
//! A run is a file of fixed-size pages of entries sorted by blob id, followed by a footer:
//!
//! ```text
//! page 0 .. page n-1   PAGE_LEN bytes each: count (u16), count entries, zero padding,
//!                      MAC (16 bytes) over the run id, the page number and the page
//! footer               version (u8), run id (16), entry count (u64),
//!                      index ids it covers (u32 count, 32 bytes each),
//!                      packs (u32 count, id 32 + size u64 each),
//!                      fence: the first blob id of every page (u32 count, 32 bytes each),
//!                      MAC (32 bytes) over all of the above
//! tail                 footer length with its MAC (u64), MAGIC (8 bytes)
//! ```
//!
//! An entry is a pack entry ([`ENTRY_LEN`] bytes) and the position of its pack in the footer's
//! pack list (u32). A blob stored in several packs has one entry per pack, next to each other.
//!
//! A run is a cache: what it says is also in the index objects it covers. Its MACs are keyed
//! with a key derived from the repository's keys, so a damaged, truncated, swapped or edited
//! run is detected (and rebuilt from the store) instead of making a backup skip a chunk the
//! repository does not hold. Both decoders take untrusted bytes: every length is checked.

use crate::error::{Error, Result};
use crate::id::{BlobId, ID_LEN, IndexId, PackId};
use crate::keys::Keys;
use crate::pack::{ENTRY_LEN, PackEntry};

/// Bytes of a page.
pub const PAGE_LEN: usize = 4096;
/// Bytes of a page's MAC.
pub const PAGE_MAC_LEN: usize = 16;
/// Bytes of an entry: a pack entry and its pack's position.
pub const RUN_ENTRY_LEN: usize = ENTRY_LEN + 4;
/// Entries in a full page.
pub const PER_PAGE: usize = (PAGE_LEN - 2 - PAGE_MAC_LEN) / RUN_ENTRY_LEN;
/// Bytes of the tail: the footer's length and [`MAGIC`].
pub const TAIL_LEN: usize = 16;
/// The last bytes of every run.
pub const MAGIC: &[u8; 8] = b"KNXRUN\x00\x01";
const VERSION: u8 = 1;
const FOOTER_MAC_LEN: usize = 32;

/// The key of a repository's runs (derived from its keys: a run made for one repository
/// does not verify in another).
#[derive(Clone)]
pub struct RunKey([u8; 32]);

impl std::fmt::Debug for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunKey(..)")
    }
}

impl RunKey {
    /// The run key of a repository.
    pub fn of(keys: &Keys) -> Self {
        RunKey(blake3::derive_key("kanister-rs 2026-12 index run mac", keys.id_key.expose()))
    }

    /// A key from raw bytes (tests and fuzzing).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        RunKey(b)
    }

    /// A name for the repository's cache directory that reveals nothing about its keys.
    pub fn repository_name(&self) -> String {
        hex::encode(&blake3::keyed_hash(&self.0, b"cache directory").as_bytes()[..12])
    }

    /// The MAC of a page's body (everything before the MAC).
    pub fn page_mac(&self, run_id: &[u8; 16], page_no: u64, body: &[u8]) -> [u8; PAGE_MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"P").update(run_id).update(&page_no.to_le_bytes()).update(body);
        let mut mac = [0u8; PAGE_MAC_LEN];
        h.finalize_xof().fill(&mut mac);
        mac
    }

    /// The MAC of a footer's body (everything before the MAC).
    pub fn footer_mac(&self, body: &[u8]) -> [u8; FOOTER_MAC_LEN] {
        *blake3::Hasher::new_keyed(&self.0).update(b"F").update(body).finalize().as_bytes()
    }
}

/// One entry of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEntry {
    /// Position of its pack in [`RunFooter::packs`].
    pub pack: u32,
    /// Where the blob is in that pack.
    pub entry: PackEntry,
}

impl RunEntry {
    /// The order of a run: by blob id, then pack position.
    pub fn sort_key(&self) -> ([u8; ID_LEN], u32) {
        (self.entry.id.0, self.pack)
    }

    /// Appends the fixed-size encoding ([`RUN_ENTRY_LEN`] bytes).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.entry.encode_into(out);
        out.extend_from_slice(&self.pack.to_le_bytes());
    }

    /// Reads an entry from its fixed-size encoding.
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() < RUN_ENTRY_LEN {
            return Err(Error::malformed("index run entry", "truncated"));
        }
        let entry = PackEntry::decode(&b[..ENTRY_LEN])?;
        let pack = u32::from_le_bytes(b[ENTRY_LEN..RUN_ENTRY_LEN].try_into().expect("4 bytes"));
        Ok(RunEntry { pack, entry })
    }
}

/// Seals a page of at most [`PER_PAGE`] sorted entries.
pub fn encode_page(key: &RunKey, run_id: &[u8; 16], page_no: u64, entries: &[RunEntry]) -> Vec<u8> {
    assert!(!entries.is_empty() && entries.len() <= PER_PAGE, "a page holds 1..={PER_PAGE} entries");
    let mut page = Vec::with_capacity(PAGE_LEN);
    page.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    entries.iter().for_each(|e| e.encode_into(&mut page));
    page.resize(PAGE_LEN - PAGE_MAC_LEN, 0);
    let mac = key.page_mac(run_id, page_no, &page);
    page.extend_from_slice(&mac);
    page
}

/// A verified page: its entries, read on demand.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    body: &'a [u8],
    count: usize,
}

impl<'a> Page<'a> {
    /// Verifies page `page_no` of run `run_id`.
    pub fn open(key: &RunKey, run_id: &[u8; 16], page_no: u64, page: &'a [u8]) -> Result<Self> {
        if page.len() != PAGE_LEN {
            return Err(Error::malformed("index run page", format!("{} bytes, not {PAGE_LEN}", page.len())));
        }
        let (body, mac) = page.split_at(PAGE_LEN - PAGE_MAC_LEN);
        // Not secret-dependent timing that matters here: the MAC guards against damage and
        // edits of a local file, and a mismatch only rebuilds it.
        if key.page_mac(run_id, page_no, body) != mac {
            return Err(Error::malformed("index run page", format!("page {page_no} does not verify")));
        }
        let count = u16::from_le_bytes([body[0], body[1]]) as usize;
        if count == 0 || count > PER_PAGE {
            return Err(Error::malformed("index run page", format!("page {page_no} claims {count} entries")));
        }
        Ok(Page { body: &body[2..2 + count * RUN_ENTRY_LEN], count })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the page is empty (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The blob id of entry `i`.
    pub fn id(&self, i: usize) -> &'a [u8] {
        &self.body[i * RUN_ENTRY_LEN..i * RUN_ENTRY_LEN + ID_LEN]
    }

    /// Entry `i`.
    pub fn entry(&self, i: usize) -> Result<RunEntry> {
        RunEntry::decode(&self.body[i * RUN_ENTRY_LEN..(i + 1) * RUN_ENTRY_LEN])
    }

    /// The first position whose id is not less than `id`.
    pub fn lower_bound(&self, id: &BlobId) -> usize {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.id(mid) < &id.0[..] {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// A run's footer: what it covers and where its pages start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFooter {
    /// Random, so that pages of one run do not verify in another.
    pub run_id: [u8; 16],
    /// Entries in the run.
    pub entries: u64,
    /// The index objects whose entries it holds.
    pub index_ids: Vec<IndexId>,
    /// The packs its entries name, and their sizes.
    pub packs: Vec<(PackId, u64)>,
    /// The first blob id of each page.
    pub fence: Vec<BlobId>,
}

impl RunFooter {
    /// Encodes the footer with its MAC and the tail: what follows the pages.
    pub fn encode(&self, key: &RunKey) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            64 + 32 * self.index_ids.len() + 40 * self.packs.len() + 32 * self.fence.len() + FOOTER_MAC_LEN + TAIL_LEN,
        );
        b.push(VERSION);
        b.extend_from_slice(&self.run_id);
        b.extend_from_slice(&self.entries.to_le_bytes());
        b.extend_from_slice(&(self.index_ids.len() as u32).to_le_bytes());
        self.index_ids.iter().for_each(|i| b.extend_from_slice(i.as_bytes()));
        b.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for (id, size) in &self.packs {
            b.extend_from_slice(id.as_bytes());
            b.extend_from_slice(&size.to_le_bytes());
        }
        b.extend_from_slice(&(self.fence.len() as u32).to_le_bytes());
        self.fence.iter().for_each(|f| b.extend_from_slice(f.as_bytes()));
        let mac = key.footer_mac(&b);
        b.extend_from_slice(&mac);
        b.extend_from_slice(&(b.len() as u64).to_le_bytes());
        b.extend_from_slice(MAGIC);
        b
    }

    /// The length of the footer (with its MAC) that precedes a run's tail.
    pub fn footer_len(tail: &[u8]) -> Result<u64> {
        if tail.len() != TAIL_LEN || &tail[8..] != MAGIC {
            return Err(Error::malformed("index run", "no run tail (not a run, or truncated)"));
        }
        Ok(u64::from_le_bytes(tail[..8].try_into().expect("8 bytes")))
    }

    /// Verifies and parses a footer (the [`Self::footer_len`] bytes before the tail).
    pub fn decode(key: &RunKey, footer: &[u8]) -> Result<Self> {
        let body_len = footer
            .len()
            .checked_sub(FOOTER_MAC_LEN)
            .ok_or_else(|| Error::malformed("index run footer", "shorter than its MAC"))?;
        let (body, mac) = footer.split_at(body_len);
        if key.footer_mac(body) != mac {
            return Err(Error::malformed("index run footer", "does not verify"));
        }
        let mut r = crate::wire::Reader::new(body, "index run footer");
        let v = r.u8()?;
        if v != VERSION {
            return Err(Error::Version { what: "index run", found: v.into(), supported: VERSION.into() });
        }
        let run_id: [u8; 16] = r.take(16)?.try_into().expect("16 bytes");
        let entries = r.u64()?;
        let n = r.count(32)?;
        let index_ids =
            (0..n).map(|_| Ok(IndexId::from_slice(r.take(32)?).expect("32 bytes"))).collect::<Result<_>>()?;
        let n = r.count(40)?;
        let packs = (0..n)
            .map(|_| Ok((PackId::from_slice(r.take(32)?).expect("32 bytes"), r.u64()?)))
            .collect::<Result<_>>()?;
        let n = r.count(32)?;
        let fence: Vec<BlobId> =
            (0..n).map(|_| Ok(BlobId::from_slice(r.take(32)?).expect("32 bytes"))).collect::<Result<_>>()?;
        if !r.b.is_empty() {
            return Err(Error::malformed("index run footer", "trailing bytes"));
        }
        if entries > fence.len() as u64 * PER_PAGE as u64 || entries < fence.len() as u64 {
            return Err(Error::malformed("index run footer", "entry count does not fit its pages"));
        }
        Ok(RunFooter { run_id, entries, index_ids, packs, fence })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobKind;
    use proptest::prelude::*;

    fn entry(id: u8, pack: u32) -> RunEntry {
        let entry = PackEntry { id: BlobId([id; 32]), kind: BlobKind::Data, offset: 1, length: 2, raw_len: 3 };
        RunEntry { pack, entry }
    }

    #[test]
    fn a_page_verifies_only_where_it_was_written() {
        let key = RunKey::from_bytes([7; 32]);
        let entries: Vec<RunEntry> = (1..=PER_PAGE as u8).map(|i| entry(i, i as u32)).collect();
        let page = encode_page(&key, &[1; 16], 3, &entries);
        assert_eq!(page.len(), PAGE_LEN);
        let p = Page::open(&key, &[1; 16], 3, &page).unwrap();
        assert_eq!(p.len(), PER_PAGE);
        assert_eq!(p.entry(4).unwrap(), entries[4]);
        assert_eq!(p.lower_bound(&BlobId([5; 32])), 4);
        assert_eq!(p.lower_bound(&BlobId([0; 32])), 0);
        assert_eq!(p.lower_bound(&BlobId([255; 32])), PER_PAGE);
        // Another position, another run, another key, one flipped bit: all refused.
        assert!(Page::open(&key, &[1; 16], 4, &page).is_err());
        assert!(Page::open(&key, &[2; 16], 3, &page).is_err());
        assert!(Page::open(&RunKey::from_bytes([8; 32]), &[1; 16], 3, &page).is_err());
        let mut bad = page.clone();
        bad[100] ^= 1;
        assert!(Page::open(&key, &[1; 16], 3, &bad).is_err());
    }

    #[test]
    fn a_footer_round_trips_and_refuses_edits() {
        let key = RunKey::from_bytes([7; 32]);
        let f = RunFooter {
            run_id: [3; 16],
            entries: 5,
            index_ids: vec![IndexId([1; 32])],
            packs: vec![(PackId([2; 32]), 99)],
            fence: vec![BlobId([4; 32])],
        };
        let bytes = f.encode(&key);
        let (footer, tail) = bytes.split_at(bytes.len() - TAIL_LEN);
        assert_eq!(RunFooter::footer_len(tail).unwrap(), footer.len() as u64);
        assert_eq!(RunFooter::decode(&key, footer).unwrap(), f);
        let mut bad = footer.to_vec();
        bad[20] ^= 1;
        assert!(RunFooter::decode(&key, &bad).is_err());
        assert!(RunFooter::decode(&RunKey::from_bytes([8; 32]), footer).is_err());
        assert!(RunFooter::footer_len(&tail[1..]).is_err());
    }

    proptest! {
        /// Any bytes, MAC'd with the right key so the parser is reached, give a footer or an
        /// error, never a panic or a huge allocation.
        #[test]
        fn any_footer_body_parses_or_fails(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let key = RunKey::from_bytes([9; 32]);
            let mut footer = body.clone();
            footer.extend_from_slice(&key.footer_mac(&body));
            let _ = RunFooter::decode(&key, &footer);
        }

        /// The same for pages.
        #[test]
        fn any_page_body_opens_or_fails(body in proptest::collection::vec(any::<u8>(), PAGE_LEN - PAGE_MAC_LEN..=PAGE_LEN - PAGE_MAC_LEN)) {
            let key = RunKey::from_bytes([9; 32]);
            let mut page = body.clone();
            page.extend_from_slice(&key.page_mac(&[0; 16], 0, &body));
            if let Ok(p) = Page::open(&key, &[0; 16], 0, &page) {
                for i in 0..p.len() {
                    let _ = p.entry(i);
                }
                let _ = p.lower_bound(&BlobId([0x80; 32]));
            }
        }
    }
}
