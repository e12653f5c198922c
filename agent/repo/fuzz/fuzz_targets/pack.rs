//! A whole pack as downloaded (`check --read-data`): tail, trailer length, ranges, blobs.
#![no_main]
#[path = "common.rs"]
mod common;
use kanister_repo::PackId;
use kanister_repo::id::content_hash;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = common::keys();
    let id = PackId(content_hash(data));
    let _ = kanister_repo::pack::verify(&keys, &id, data);
    if data.len() >= kanister_repo::pack::PACK_TAIL_LEN {
        let _ = kanister_repo::pack::trailer_len(&data[data.len() - kanister_repo::pack::PACK_TAIL_LEN..]);
    }
});
