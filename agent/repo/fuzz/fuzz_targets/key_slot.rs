//! A key slot (JSON from `keys/`, writable by anyone with the bucket): parsed, then opened with a
//! passphrase and a key file. Hostile Argon2 costs must be refused before any work.
#![no_main]
use kanister_repo::KeySlot;
use kanister_repo::keys::Credential;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(slot) = KeySlot::from_json(data) {
        let _ = slot.unwrap(&Credential::Passphrase(b"fuzz passphrase"));
        let _ = slot.unwrap(&Credential::KeyFile(b"fuzz key file 0123456789abcdef"));
    }
});
