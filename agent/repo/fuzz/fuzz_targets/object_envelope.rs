//! Stored metadata objects as they come from the store: index, snapshot and config envelopes
//! (content hash, version byte, XChaCha20-Poly1305), then their parsers.
#![no_main]
#[path = "common.rs"]
mod common;
use kanister_repo::id::content_hash;
use kanister_repo::index::IndexFile;
use kanister_repo::snapshot::Snapshot;
use kanister_repo::{IndexId, RepoConfig, SnapshotId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = common::keys();
    let hash = content_hash(data);
    let _ = IndexFile::decode(&keys, &IndexId(hash), data);
    let _ = Snapshot::decode(&keys, &SnapshotId(hash), data);
    let _ = RepoConfig::decode(&keys, data);
});
