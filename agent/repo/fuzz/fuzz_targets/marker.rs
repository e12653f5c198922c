//! What writers leave in the store to coordinate (plain JSON, or a prune mark's plaintext):
//! backup locks, the maintenance lock's holder, prune marks.
#![no_main]
use kanister_repo::marker::{BackupLock, MaintenanceHolder, PruneMark};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = BackupLock::decode(data);
    let _ = MaintenanceHolder::decode(data);
    let _ = PruneMark::from_plaintext(data);
});
