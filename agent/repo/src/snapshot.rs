//! Snapshots: what a backup produced, named by tags.
//!
//! A stream snapshot's root is a list of chunk-list blobs (kind [`BlobKind::Tree`]), each
//! holding up to [`IDS_PER_LIST`] chunk ids in stream order. The snapshot object itself stays
//! small whatever the stream's size.
//!
//! [`BlobKind::Tree`]: crate::blob::BlobKind::Tree

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::{open_object, seal_object};
use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};
use crate::keys::Keys;

const AAD: &[u8] = b"kanister snapshot";
/// Version of the snapshot format.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Chunk ids per chunk-list blob: 1 MiB of ids.
pub const IDS_PER_LIST: usize = 32 * 1024;
const LIST_VERSION: u8 = 1;

/// What a snapshot's root holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Root {
    /// A byte stream (a database dump): chunk-list blobs in order.
    Stream {
        /// The chunk-list blobs.
        lists: Vec<BlobId>,
    },
    /// A directory tree (a volume).
    Tree {
        /// The path that was backed up, as given.
        path: String,
        /// The top directory itself: its metadata, and its listing in `subtree`.
        dir: crate::tree::Node,
    },
}

/// Numbers recorded with a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotStats {
    /// Bytes of plaintext in the snapshot.
    pub bytes_read: u64,
    /// Plaintext bytes that were not in the repository before.
    pub bytes_new: u64,
    /// Bytes written to the store (packs, indexes, the snapshot) by this backup.
    pub bytes_uploaded: u64,
    /// Chunks in the snapshot.
    pub chunks: u64,
    /// Chunks that were new.
    pub chunks_new: u64,
    /// Wall time of the backup in seconds.
    pub duration_secs: f64,
    /// Tree backups: files opened and read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_read: u64,
    /// Tree backups: unchanged files whose content was taken from the parent snapshot.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_reused: u64,
    /// Tree backups: files not in the parent snapshot.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_new: u64,
    /// Tree backups: directories.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dirs: u64,
    /// Tree backups: paths that could not be backed up, with the reason (at most 1000).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Tree backups: paths that kept changing while read (content may be torn).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SnapshotStats {
    /// Whether something was left out of the snapshot.
    pub fn partial(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// A snapshot object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// RFC 3339 time the backup started, in microseconds (so that string order is time order).
    pub time: String,
    /// Host (pod) that made it.
    pub hostname: String,
    /// Tags: namespace, workload, action, ActionSet, ... Used to find snapshots.
    pub tags: BTreeMap<String, String>,
    /// The content.
    pub root: Root,
    /// Size of the content in bytes.
    pub size: u64,
    /// Statistics of the backup that made it.
    pub stats: SnapshotStats,
    /// The program that wrote it.
    pub program: String,
    /// The snapshot this one was made incrementally from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
}

impl Snapshot {
    /// Seals the snapshot; returns its id and bytes.
    pub fn encode(&self, keys: &Keys) -> (SnapshotId, Vec<u8>) {
        let json = serde_json::to_vec(self).expect("snapshot serializes");
        let (id, bytes) = seal_object(&keys.data_key, AAD, &json);
        (SnapshotId(id), bytes)
    }

    /// Verifies and opens a stored snapshot.
    pub fn decode(keys: &Keys, id: &SnapshotId, bytes: &[u8]) -> Result<Self> {
        let plain = open_object(&keys.data_key, AAD, "snapshot", &format!("snapshot {id}"), Some(&id.0), bytes)?;
        Self::from_plaintext(&plain)
    }

    /// Parses a snapshot's plaintext (what [`Self::decode`] opened).
    pub fn from_plaintext(plain: &[u8]) -> Result<Self> {
        let s: Snapshot = serde_json::from_slice(plain).map_err(|source| Error::Json { what: "snapshot", source })?;
        if s.version > SNAPSHOT_VERSION {
            return Err(Error::Version { what: "snapshot", found: s.version, supported: SNAPSHOT_VERSION });
        }
        Ok(s)
    }
}

/// Encodes a chunk list (the plaintext of a chunk-list blob).
pub fn encode_id_list(ids: &[BlobId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + ids.len() * 32);
    out.push(LIST_VERSION);
    for id in ids {
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// Decodes a chunk list.
pub fn decode_id_list(bytes: &[u8]) -> Result<Vec<BlobId>> {
    match bytes.split_first() {
        Some((&LIST_VERSION, rest)) if rest.len() % 32 == 0 => {
            Ok(rest.chunks_exact(32).map(|c| BlobId::from_slice(c).expect("32 bytes")).collect())
        }
        _ => Err(Error::malformed("chunk list", "bad version or length")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    #[test]
    fn snapshot_and_list_round_trip() {
        let keys = MasterKey::generate().keys();
        let s = Snapshot {
            version: SNAPSHOT_VERSION,
            time: "2026-11-25T10:00:00Z".into(),
            hostname: "h".into(),
            tags: [("app".to_string(), "mysql".to_string())].into(),
            root: Root::Stream { lists: vec![BlobId([3; 32])] },
            size: 10,
            stats: SnapshotStats::default(),
            program: "test".into(),
            parent: None,
        };
        let (id, bytes) = s.encode(&keys);
        assert_eq!(Snapshot::decode(&keys, &id, &bytes).unwrap(), s);
        assert!(Snapshot::decode(&MasterKey::generate().keys(), &id, &bytes).is_err());
        let ids = vec![BlobId([1; 32]), BlobId([2; 32])];
        assert_eq!(decode_id_list(&encode_id_list(&ids)).unwrap(), ids);
        assert!(decode_id_list(&[1, 2, 3]).is_err());
    }
}
