//! An index's plaintext (lengths and counts an attacker with the key could forge).
#![no_main]
use kanister_repo::index::IndexFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = IndexFile::from_plaintext(data) {
        // What parses must round-trip.
        let keys = kanister_repo::Keys {
            id_key: kanister_repo::crypto::SecretKey::from_bytes([1; 32]),
            data_key: kanister_repo::crypto::SecretKey::from_bytes([2; 32]),
            chunker_seed: 3,
        };
        let (id, bytes) = f.encode(&keys);
        let back = IndexFile::decode(&keys, &id, &bytes).expect("an encoded index decodes");
        assert_eq!(back.packs.len(), f.packs.len());
    }
});
