//! A repository config's plaintext (JSON, chunker parameters validated).
#![no_main]
use kanister_repo::RepoConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = RepoConfig::from_plaintext(data);
});
