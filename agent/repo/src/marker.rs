//! The objects writers leave to coordinate with each other, as opposed to the content objects:
//!
//! - [`BackupLock`] under `locks/`: a running backup, so that `prune` waits for it (plain
//!   JSON, renewed in `<key>.alive`);
//! - [`MaintenanceHolder`] under `exclusive/`: who holds the repository's maintenance lock
//!   (plain JSON);
//! - [`PruneMark`] under `prune/`: packs `prune` set aside, with their index entries so that
//!   they can be put back (JSON sealed with the data key, as metadata objects are).
//!
//! Each carries `format` ([`FORMAT`]; objects written before it existed have none and read as
//! format 1). A reader meeting a newer format fails with [`Error::Version`]: the agent
//! then counts a backup lock or a maintenance lock by its store times alone (it may still be
//! live), and refuses to act on a prune mark (it decides what is deleted).

use serde::{Deserialize, Serialize};

use crate::crypto::{self, SecretKey};
use crate::error::{Error, Result};
use crate::id::PackId;
use crate::index::IndexPack;
use crate::pack::{self, PackEntry};

/// The format version this code writes and the newest it reads.
pub const FORMAT: u32 = 1;

fn format_1() -> u32 {
    1
}

fn check(what: &'static str, found: u32) -> Result<()> {
    if found > FORMAT { Err(Error::Version { what, found, supported: FORMAT }) } else { Ok(()) }
}

/// A process, told apart from every other that ever ran on its machine: the boot, the pid
/// namespace (containers of one pod share a host name but not their pids), the pid and the
/// process's start time (pids are reused). The agent reads and compares them in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// The pid namespace, as `/proc/self/ns/pid` names it.
    pub pid_ns: String,
    /// The pid in that namespace.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// The marker a running backup leaves, so `prune` waits for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupLock {
    /// Format version ([`FORMAT`]).
    #[serde(default = "format_1")]
    pub format: u32,
    /// When the backup started (seconds since the epoch, its own clock).
    pub started: u64,
    /// When the marker was last renewed.
    pub refreshed: u64,
    /// Host (pod) of the backup.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// Which process exactly, so that a prune on the same host can tell that it died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessIdentity>,
}

impl BackupLock {
    /// The bytes stored.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a backup lock serializes")
    }

    /// Reads a stored marker.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let lock: BackupLock =
            serde_json::from_slice(bytes).map_err(|source| Error::Json { what: "backup lock", source })?;
        check("backup lock", lock.format)?;
        Ok(lock)
    }
}

/// Who holds a repository's maintenance lock, as written in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceHolder {
    /// Format version ([`FORMAT`]).
    #[serde(default = "format_1")]
    pub format: u32,
    /// What runs: `prune`, `repair-index`, ...
    pub purpose: String,
    /// Host (pod) of the holder.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// When it took the lock (seconds since the epoch, its own clock; informative only).
    pub since: u64,
}

impl MaintenanceHolder {
    /// The bytes stored.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a maintenance holder serializes")
    }

    /// Reads a stored holder.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let h: MaintenanceHolder =
            serde_json::from_slice(bytes).map_err(|source| Error::Json { what: "maintenance lock", source })?;
        check("maintenance lock", h.format)?;
        Ok(h)
    }
}

/// Associated data of sealed prune marks.
const PRUNE_AAD: &[u8] = b"kanister prune mark";

/// Packs set aside by `prune`, with their index entries so they can be put back if a backup
/// that was running at the time turns out to use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneMark {
    /// When the packs were set aside (seconds since the epoch).
    pub created: u64,
    /// The packs.
    pub packs: Vec<IndexPack>,
}

#[derive(Serialize, Deserialize)]
struct PruneMarkWire {
    #[serde(default = "format_1")]
    format: u32,
    created: u64,
    packs: Vec<PrunePackWire>,
}

#[derive(Serialize, Deserialize)]
struct PrunePackWire {
    id: PackId,
    size: u64,
    /// The pack's entries: a little-endian u32 count, then [`pack::ENTRY_LEN`] bytes each, hex.
    index: String,
}

impl PruneMark {
    /// The mark's plaintext (JSON, entry lists hex-encoded).
    pub fn to_plaintext(&self) -> Vec<u8> {
        let wire = PruneMarkWire {
            format: FORMAT,
            created: self.created,
            packs: self
                .packs
                .iter()
                .map(|p| PrunePackWire { id: p.id, size: p.size, index: hex::encode(encode_entries(&p.blobs)) })
                .collect(),
        };
        serde_json::to_vec(&wire).expect("a prune mark serializes")
    }

    /// The mark sealed with `key` (the data key): its name (content address) and bytes.
    pub fn seal(&self, key: &SecretKey) -> ([u8; 32], Vec<u8>) {
        crypto::seal_object(key, PRUNE_AAD, &self.to_plaintext())
    }

    /// Opens the mark stored as `name`.
    pub fn open(key: &SecretKey, name: &str, bytes: &[u8]) -> Result<Self> {
        let plain = crypto::open_object(key, PRUNE_AAD, "prune mark", name, None, bytes)?;
        Self::from_plaintext(&plain)
    }

    /// Reads a mark's plaintext (after [`Self::open`]'s decryption).
    pub fn from_plaintext(plain: &[u8]) -> Result<Self> {
        let wire: PruneMarkWire =
            serde_json::from_slice(plain).map_err(|source| Error::Json { what: "prune mark", source })?;
        check("prune mark", wire.format)?;
        let packs = wire
            .packs
            .into_iter()
            .map(|p| {
                let raw = hex::decode(&p.index).map_err(|e| Error::malformed("prune mark", e.to_string()))?;
                let blobs = decode_entries(&raw)
                    .ok_or_else(|| Error::malformed("prune mark", format!("bad entry list of pack {}", p.id)))?;
                Ok(IndexPack { id: p.id, size: p.size, blobs })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PruneMark { created: wire.created, packs })
    }
}

fn encode_entries(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * pack::ENTRY_LEN);
    out.extend_from_slice(&u32::try_from(entries.len()).expect("fewer than 2^32 blobs in a pack").to_le_bytes());
    entries.iter().for_each(|e| e.encode_into(&mut out));
    out
}

fn decode_entries(b: &[u8]) -> Option<Vec<PackEntry>> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let body = b.get(4..)?;
    if body.len() != n.checked_mul(pack::ENTRY_LEN)? {
        return None;
    }
    body.chunks_exact(pack::ENTRY_LEN).map(|c| PackEntry::decode(c).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SecretKey {
        SecretKey::from_bytes([7; 32])
    }

    proptest! {
        /// What others can write into the store (markers are plain JSON; a prune mark's
        /// plaintext is checked after decryption) gives errors on any input, never panics; an
        /// entry list that decodes encodes back to the same bytes.
        #[test]
        fn decoders_of_untrusted_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = BackupLock::decode(&bytes);
            let _ = MaintenanceHolder::decode(&bytes);
            let _ = PruneMark::from_plaintext(&bytes);
            let _ = PruneMark::open(&key(), "prune/x", &bytes);
            if let Some(entries) = decode_entries(&bytes) {
                prop_assert_eq!(encode_entries(&entries), bytes);
            }
        }
    }

    #[test]
    fn objects_written_before_the_format_field_read_as_format_1() {
        let lock = BackupLock::decode(br#"{"started":1,"refreshed":2,"hostname":"h","pid":3}"#).unwrap();
        assert_eq!(lock.format, 1);
        let holder = MaintenanceHolder::decode(br#"{"purpose":"prune","hostname":"h","pid":3,"since":4}"#).unwrap();
        assert_eq!(holder.format, 1);
        let mark = PruneMark::from_plaintext(br#"{"created":5,"packs":[]}"#).unwrap();
        assert_eq!(mark, PruneMark { created: 5, packs: vec![] });
    }

    /// The fuzzer's seeds are valid objects, so that it starts past the parsers' first checks.
    #[test]
    fn the_fuzz_seeds_decode() {
        BackupLock::decode(include_bytes!("../fuzz/corpus/marker/lock")).unwrap();
        MaintenanceHolder::decode(include_bytes!("../fuzz/corpus/marker/holder")).unwrap();
        let mark = PruneMark::from_plaintext(include_bytes!("../fuzz/corpus/marker/prune")).unwrap();
        assert_eq!((mark.packs.len(), mark.packs[0].blobs.len()), (1, 1));
        assert_eq!(PruneMark::from_plaintext(&mark.to_plaintext()).unwrap(), mark);
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let err = BackupLock::decode(br#"{"format":2,"started":1,"refreshed":2,"hostname":"h","pid":3}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("backup lock has format version 2") && err.contains("upgrade"), "{err}");
        let err = PruneMark::from_plaintext(br#"{"format":9,"created":5,"packs":[]}"#).unwrap_err().to_string();
        assert!(err.contains("prune mark has format version 9"), "{err}");
        let err = MaintenanceHolder::decode(br#"{"format":3,"purpose":"p","hostname":"h","pid":1,"since":0}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("maintenance lock has format version 3"), "{err}");
    }

    #[test]
    fn prune_marks_round_trip_sealed_and_carry_the_format() {
        let entry = PackEntry {
            id: crate::BlobId::from_slice(&[3; 32]).unwrap(),
            kind: crate::BlobKind::Data,
            offset: 1,
            length: 2,
            raw_len: 3,
        };
        let packs = vec![IndexPack { id: PackId::from_slice(&[1; 32]).unwrap(), size: 99, blobs: vec![entry] }];
        let mark = PruneMark { created: 42, packs };
        let (_, sealed) = mark.seal(&key());
        assert_eq!(PruneMark::open(&key(), "prune/a", &sealed).unwrap(), mark);
        let plain = crypto::open_object(&key(), PRUNE_AAD, "prune mark", "prune/a", None, &sealed).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["format"], FORMAT);
        assert!(PruneMark::open(&SecretKey::from_bytes([8; 32]), "prune/a", &sealed).is_err(), "wrong key opens");
    }
}
