//! A pack trailer's plaintext (entry count and entries).
#![no_main]
use kanister_repo::PackId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kanister_repo::pack::parse_trailer_plaintext(&PackId([0; 32]), data);
    let _ = kanister_repo::pack::PackEntry::decode(data);
});
