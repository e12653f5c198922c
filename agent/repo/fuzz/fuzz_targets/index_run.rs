//! A run of the local index cache: a footer or a page from a file another process (or a
//! damaged disk) may have written. The input is MAC'd with the fuzzer's key first, so the
//! parsers behind the MAC are what is fuzzed; what parses must re-encode to the same bytes.
#![no_main]
use kanister_repo::index_run::{PAGE_LEN, PAGE_MAC_LEN, Page, RunFooter, RunKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = RunKey::from_bytes([5; 32]);
    let mut footer = data.to_vec();
    footer.extend_from_slice(&key.footer_mac(data));
    if let Ok(f) = RunFooter::decode(&key, &footer) {
        let bytes = f.encode(&key);
        assert_eq!(&bytes[..footer.len()], &footer[..], "a decoded footer re-encodes to its bytes");
    }
    let mut page = data.to_vec();
    page.resize(PAGE_LEN - PAGE_MAC_LEN, 0);
    let run_id = [6; 16];
    page.extend_from_slice(&key.page_mac(&run_id, 0, &page));
    if let Ok(p) = Page::open(&key, &run_id, 0, &page) {
        for i in 0..p.len() {
            let _ = p.entry(i);
        }
        let _ = p.lower_bound(&kanister_repo::BlobId([0x80; 32]));
    }
});
