//! Index objects are bounded: an index of many blobs (prune's compaction, a long backup's
//! consolidated index) is written as several objects of at most `MAX_INDEX_BLOBS` blobs, never
//! splitting a pack, and reads back as the same index.

use kanister_agent::repository::{INDEX, MAX_INDEX_BLOBS, RepoKey, Repository};
use kanister_agent::store::{Store, StoreOptions};
use kanister_repo::index::{IndexFile, IndexPack};
use kanister_repo::pack::PackEntry;
use kanister_repo::{BlobId, BlobKind, PackId};
use rand::{Rng, SeedableRng};

#[tokio::test]
async fn a_large_index_is_written_in_bounded_parts_and_reads_back_whole() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().display()), &StoreOptions::default()).unwrap();
    let key = RepoKey::Passphrase(zeroize::Zeroizing::new(b"index-parts-passphrase".to_vec()));
    let repo = Repository::at(store).open_or_init(&key).await.unwrap();

    // Packs of random sizes, one larger than the limit by itself.
    let mut sizes: Vec<usize> = (0..60).map(|_| rng.gen_range(0..4000)).collect();
    sizes.push(MAX_INDEX_BLOBS + 17);
    sizes.extend((0..40).map(|_| rng.gen_range(0..4000)));
    let packs: Vec<IndexPack> = sizes
        .iter()
        .map(|&n| IndexPack {
            id: PackId(rng.r#gen()),
            size: n as u64,
            blobs: (0..n)
                .map(|i| PackEntry {
                    id: BlobId(rng.r#gen()),
                    kind: BlobKind::Data,
                    offset: i as u32,
                    length: 10,
                    raw_len: 20,
                })
                .collect(),
        })
        .collect();
    let total: usize = sizes.iter().sum();
    let (ids, _) = repo.write_index(&IndexFile { supersedes: Vec::new(), packs: packs.clone() }).await.unwrap();
    assert!(ids.len() >= total / MAX_INDEX_BLOBS, "{} parts for {total} blobs", ids.len());
    for id in &ids {
        let bytes = repo.store().get(&format!("{INDEX}/{id}")).await.unwrap();
        let part = IndexFile::decode(repo.keys(), id, &bytes).unwrap();
        let n: usize = part.packs.iter().map(|p| p.blobs.len()).sum();
        assert!(n <= MAX_INDEX_BLOBS || part.packs.len() == 1, "a part of {n} blobs in {} packs", part.packs.len());
    }
    let index = repo.load_index().await.unwrap();
    assert_eq!(index.packs.len(), packs.len());
    assert_eq!(index.len(), total);
    for p in &packs {
        assert!(index.has_pack(&p.id));
        for e in &p.blobs {
            let loc = index.get(&e.id).expect("every blob is found");
            assert_eq!((index.pack_id(&loc), loc.entry), (p.id, *e));
        }
    }
}
