//! Benchmark support (`tests/bench/index-memory.sh`): adds index entries for `BLOBS` synthetic
//! blobs to a repository, as a repository backed up nightly for months would hold, without
//! writing their data. The packs they name do not exist: only a push's dedup lookups and a
//! restore's index load see them, which is what the benchmark measures. Never run it against
//! a repository you keep: `check` reports every one of those packs as missing.
//!
//!   KANISTER_REPO_PASSWORD=... cargo run --release -p kanister-agent --example synth-index -- \
//!     file:///tmp/repo 10000000

use kanister_agent::repository::{RepoKey, Repository};
use kanister_agent::store::{Store, StoreOptions};
use kanister_repo::index::{IndexFile, IndexPack};
use kanister_repo::pack::PackEntry;
use kanister_repo::{BlobId, BlobKind, PackId};
use rand::{Rng, SeedableRng};

/// Blobs per pack (16 MiB packs of 64 KiB chunks) and per index object.
const PER_PACK: u64 = 256;
const PER_INDEX: u64 = 1_000_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, blobs] = &args[..] else {
        return Err("usage: synth-index STORE_URL BLOBS".into());
    };
    let blobs: u64 = blobs.parse()?;
    let store = Store::open(url, &StoreOptions::default())?;
    let repo = Repository::at(store).open(&RepoKey::from_files_or_env(None, None)?).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(blobs);
    let mut id = move || rng.r#gen::<[u8; 32]>();
    let mut done = 0u64;
    while done < blobs {
        let n = PER_INDEX.min(blobs - done);
        let mut packs = Vec::new();
        let mut left = n;
        while left > 0 {
            let k = PER_PACK.min(left);
            let entries = (0..k)
                .map(|i| PackEntry {
                    id: BlobId(id()),
                    kind: BlobKind::Data,
                    offset: (i * 20_000) as u32,
                    length: 20_000,
                    raw_len: 65_536,
                })
                .collect();
            packs.push(IndexPack { id: PackId(id()), size: k * 20_000, blobs: entries });
            left -= k;
        }
        repo.write_index(&IndexFile { supersedes: Vec::new(), packs }).await?;
        done += n;
        eprintln!("{done} of {blobs} synthetic blobs indexed");
    }
    Ok(())
}
