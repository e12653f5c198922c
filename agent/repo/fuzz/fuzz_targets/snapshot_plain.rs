//! A snapshot's plaintext (JSON).
#![no_main]
use kanister_repo::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Snapshot::from_plaintext(data);
});
