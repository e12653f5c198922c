//! A stream snapshot's chunk list.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ids) = kanister_repo::snapshot::decode_id_list(data) {
        assert_eq!(kanister_repo::snapshot::encode_id_list(&ids), data);
    }
});
