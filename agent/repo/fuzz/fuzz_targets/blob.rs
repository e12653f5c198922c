//! A sealed blob as read from a pack range, with the kind and length the index claims.
#![no_main]
#[path = "common.rs"]
mod common;
use kanister_repo::{BlobId, BlobKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let keys = common::keys();
    let raw_len = u32::from_le_bytes(data[..4].try_into().unwrap()) % (16 << 20);
    let kind = if data[4] & 1 == 0 { BlobKind::Data } else { BlobKind::Tree };
    let sealed = &data[5..];
    let id = kanister_repo::blob::blob_id(&keys, sealed);
    let _ = kanister_repo::blob::decode(&keys, kind, &id, sealed, raw_len);
    let _ = kanister_repo::blob::decode(&keys, kind, &BlobId([0; 32]), sealed, raw_len);
});
