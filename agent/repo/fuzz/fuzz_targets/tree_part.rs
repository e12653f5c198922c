//! A tree part (binary version 2, or legacy JSON): names, modes, sizes, chunk lists.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kanister_repo::tree::decode_part(data);
});
