//! The local index cache (sorted runs on disk) answers exactly what the store's index objects
//! say, through growth, compaction and prune, and is never believed when damaged: a damaged,
//! truncated, foreign or half-written run is detected and rebuilt, and a backup stores a chunk
//! again rather than trust it. Seeded; the seed is printed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kanister_agent::repository::{INDEX, Locate, LookupIndex, MAX_RUNS, RepoKey, Repository, SORT_ENTRIES};
use kanister_agent::store::{Store, StoreOptions};
use kanister_repo::index::{IndexFile, IndexPack};
use kanister_repo::index_run::{PAGE_LEN, RunFooter, TAIL_LEN};
use kanister_repo::pack::PackEntry;
use kanister_repo::{BlobId, BlobKind, IndexId, PackId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PASSPHRASE: &str = "index-cache-passphrase";

fn seeded(name: &str) -> StdRng {
    let seed: u64 = std::env::var("INDEX_CACHE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("{name}: seed {seed} (INDEX_CACHE_SEED={seed} repeats it)");
    StdRng::seed_from_u64(seed)
}

async fn repository(dir: &Path) -> Repository {
    let store = Store::open(&format!("file://{}", dir.join("repo").display()), &StoreOptions::default()).unwrap();
    let key = RepoKey::Passphrase(zeroize::Zeroizing::new(PASSPHRASE.as_bytes().to_vec()));
    Repository::at(store).open_or_init(&key).await.unwrap().with_cache_root(Some(dir.join("cache")))
}

fn random_pack(rng: &mut StdRng, blobs: usize, reuse: &[BlobId]) -> IndexPack {
    let blobs = (0..blobs)
        .map(|i| PackEntry {
            // Now and then a blob another pack holds too (two backups that ran at once).
            id: if !reuse.is_empty() && rng.gen_bool(0.05) {
                reuse[rng.gen_range(0..reuse.len())]
            } else {
                BlobId(rng.r#gen())
            },
            kind: if rng.gen_bool(0.1) { BlobKind::Tree } else { BlobKind::Data },
            offset: i as u32 * 1000,
            length: rng.gen_range(1..1000),
            raw_len: rng.gen_range(1..70_000),
        })
        .collect::<Vec<_>>();
    IndexPack { id: PackId(rng.r#gen()), size: blobs.len() as u64 * 1000, blobs }
}

/// What the store's index objects say: every blob's locations.
#[derive(Default)]
struct Model {
    objects: HashMap<IndexId, Vec<IndexPack>>,
}

impl Model {
    fn locations(&self) -> HashMap<BlobId, Vec<(PackId, PackEntry)>> {
        let mut m: HashMap<BlobId, Vec<(PackId, PackEntry)>> = HashMap::new();
        for p in self.objects.values().flatten() {
            for e in &p.blobs {
                m.entry(e.id).or_default().push((p.id, *e));
            }
        }
        m
    }

    fn blobs(&self) -> Vec<BlobId> {
        self.objects.values().flatten().flat_map(|p| p.blobs.iter().map(|e| e.id)).collect()
    }

    async fn write(&mut self, repo: &Repository, packs: Vec<IndexPack>) {
        let (ids, _) = repo.write_index(&IndexFile { supersedes: Vec::new(), packs: packs.clone() }).await.unwrap();
        for id in ids {
            let bytes = repo.store().get(&format!("{INDEX}/{id}")).await.unwrap();
            self.objects.insert(id, IndexFile::decode(repo.keys(), &id, &bytes).unwrap().packs);
        }
    }
}

/// Every sampled blob is found where an index object puts it, blobs no index object lists are
/// not found, and forgotten packs are skipped exactly when another pack holds the blob.
fn assert_matches(li: &LookupIndex, model: &Model, gone: &[BlobId], rng: &mut StdRng) {
    let want = model.locations();
    let all: Vec<&BlobId> = want.keys().collect();
    for _ in 0..all.len().min(3000) {
        let id = all[rng.gen_range(0..all.len())];
        let got = li.locate(id).unwrap().unwrap_or_else(|| panic!("blob {id} is indexed but not found"));
        assert!(want[id].contains(&got), "blob {id}: {got:?} is not where an index object puts it");
    }
    for id in gone.iter().filter(|id| !want.contains_key(id)).take(3000) {
        assert_eq!(li.locate(id).unwrap(), None, "blob {id} of a removed index object is still found");
    }
    for _ in 0..500 {
        assert_eq!(li.locate(&BlobId(rng.r#gen())).unwrap(), None);
    }
}

#[tokio::test]
async fn lookups_match_the_index_objects_through_growth_compaction_and_prune() {
    let mut rng = seeded("growth");
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path()).await;
    let mut model = Model::default();
    let mut gone: Vec<BlobId> = Vec::new();
    for round in 0..14 {
        if round > 2 && rng.gen_bool(0.25) {
            // What prune does: a compacted index of the packs it keeps, then the old objects go.
            let ids: Vec<IndexId> = model.objects.keys().copied().filter(|_| rng.gen_bool(0.6)).collect();
            let mut kept = Vec::new();
            for id in &ids {
                for p in model.objects.remove(id).unwrap() {
                    if rng.gen_bool(0.7) {
                        kept.push(p);
                    } else {
                        gone.extend(p.blobs.iter().map(|e| e.id));
                    }
                }
            }
            model.write(&repo, kept).await;
            for id in &ids {
                repo.store().delete(&format!("{INDEX}/{id}")).await.unwrap();
            }
        }
        for _ in 0..rng.gen_range(1..=3) {
            let reuse = model.blobs();
            let packs = (0..rng.gen_range(1..12))
                .map(|_| {
                    let n = rng.gen_range(0..300);
                    random_pack(&mut rng, n, &reuse)
                })
                .collect();
            model.write(&repo, packs).await;
        }
        let li = repo.load_lookup().await.unwrap();
        assert!(li.runs() <= MAX_RUNS, "round {round}: {} runs", li.runs());
        assert!(li.damaged.is_empty());
        assert_matches(&li, &model, &gone, &mut rng);

        // Packs set aside by a prune: a blob is found elsewhere or not at all.
        let mut li = li;
        let locations = model.locations();
        let packs: Vec<PackId> = model.objects.values().flatten().map(|p| p.id).collect();
        let forgotten: HashSet<PackId> = packs.iter().copied().filter(|_| rng.gen_bool(0.3)).collect();
        li.forget_blobs_in(&forgotten);
        for (id, locs) in locations.iter().take(2000) {
            let elsewhere: Vec<_> = locs.iter().filter(|(p, _)| !forgotten.contains(p)).collect();
            match li.locate(id).unwrap() {
                Some(got) => assert!(elsewhere.contains(&&got), "blob {id} found in a forgotten pack"),
                None => assert!(elsewhere.is_empty(), "blob {id} is also in a kept pack but not found"),
            }
        }
    }
    // The same answers with no cache directory (the index in memory).
    let memory = repo.clone().with_cache_root(None).load_lookup().await.unwrap();
    assert_eq!(memory.runs(), 0);
    assert_matches(&memory, &model, &gone, &mut rng);
}

#[tokio::test]
async fn a_large_index_is_sorted_in_spills_and_merged() {
    let mut rng = seeded("spills");
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path()).await;
    let mut model = Model::default();
    let total = SORT_ENTRIES * 2 + 1234;
    let mut packs = Vec::new();
    let mut n = 0;
    while n < total {
        let k = 256.min(total - n);
        packs.push(random_pack(&mut rng, k, &[]));
        n += k;
    }
    model.write(&repo, packs).await;
    let li = repo.load_lookup().await.unwrap();
    assert_eq!(li.runs(), 1);
    assert_eq!(li.entries(), total as u64);
    assert_matches(&li, &model, &[], &mut rng);
}

/// The pages of a run (the footer's length is in its tail).
fn page_count(run: &[u8]) -> usize {
    let footer = RunFooter::footer_len(&run[run.len() - TAIL_LEN..]).unwrap() as usize;
    (run.len() - TAIL_LEN - footer) / PAGE_LEN
}

fn run_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in walk(dir) {
        if e.extension().is_some_and(|x| x == "kix") {
            out.push(e);
        }
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
    }
    out
}

#[tokio::test]
async fn a_damaged_truncated_or_foreign_cache_is_never_believed() {
    let mut rng = seeded("damage");
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path()).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = repository(other_dir.path()).await;
    let mut model = Model::default();
    let mut other_model = Model::default();
    for _ in 0..3 {
        let packs = (0..40).map(|_| random_pack(&mut rng, 250, &[])).collect();
        model.write(&repo, packs).await;
        let packs = (0..40).map(|_| random_pack(&mut rng, 250, &[])).collect();
        other_model.write(&other, packs).await;
        repo.load_lookup().await.unwrap();
        other.load_lookup().await.unwrap();
    }
    let want = model.locations();
    let ids: Vec<BlobId> = want.keys().copied().collect();
    for attempt in 0..40 {
        let runs = run_files(&dir.path().join("cache"));
        assert!(!runs.is_empty());
        let victim = &runs[rng.gen_range(0..runs.len())];
        let mut bytes = std::fs::read(victim).unwrap();
        let how = rng.gen_range(0..5);
        match how {
            0 => {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => bytes.truncate(rng.gen_range(0..bytes.len())),
            2 => {
                let foreign = run_files(&other_dir.path().join("cache"));
                bytes = std::fs::read(&foreign[rng.gen_range(0..foreign.len())]).unwrap();
            }
            3 if bytes.len() > 3 * PAGE_LEN => {
                let pages = bytes.len() / PAGE_LEN - 1;
                let (a, b) = (rng.gen_range(0..pages), rng.gen_range(0..pages));
                let pa = bytes[a * PAGE_LEN..(a + 1) * PAGE_LEN].to_vec();
                let pb = bytes[b * PAGE_LEN..(b + 1) * PAGE_LEN].to_vec();
                bytes[a * PAGE_LEN..(a + 1) * PAGE_LEN].copy_from_slice(&pb);
                bytes[b * PAGE_LEN..(b + 1) * PAGE_LEN].copy_from_slice(&pa);
            }
            _ => {
                // A byte of every page: the footer verifies, no page does.
                for p in 0..page_count(&bytes) {
                    bytes[p * PAGE_LEN + 2] ^= 0x55;
                }
            }
        }
        std::fs::write(victim, &bytes).unwrap();
        // A lookup answers right or says the cache is damaged: never a wrong or missing blob.
        let li = repo.load_lookup().await.unwrap();
        let mut refused = 0;
        for _ in 0..1500 {
            let id = ids[rng.gen_range(0..ids.len())];
            match li.locate(&id) {
                Ok(Some(got)) => assert!(want[&id].contains(&got), "attempt {attempt} ({how}): wrong location"),
                Ok(None) => panic!("attempt {attempt} ({how}): blob {id} not found in a damaged cache"),
                Err(e) => {
                    assert!(e.to_string().contains("index cache"), "{e}");
                    refused += 1;
                }
            }
        }
        for _ in 0..100 {
            // Absent blobs may only be answered "absent" or "damaged".
            if let Ok(Some(got)) = li.locate(&BlobId(rng.r#gen())) {
                panic!("attempt {attempt}: a blob never stored was found at {got:?}");
            }
        }
        drop(li);
        // The next load has rebuilt what was damaged: every answer is right again.
        assert_matches(&repo.load_lookup().await.unwrap(), &model, &[], &mut rng);
        println!("attempt {attempt}: damage {how}, {refused} lookups refused before the rebuild");
    }
}

fn agent(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kanister-agent"));
    c.env("KANISTER_STORE", format!("file://{}", dir.join("repo").display()))
        .env("KANISTER_REPO_PASSWORD", PASSPHRASE)
        .env("KANISTER_CACHE_DIR", dir.join("cache"))
        .env_remove("RUST_LOG");
    c
}

fn push(dir: &Path, input: &Path) -> serde_json::Value {
    let out = agent(dir)
        .args(["push", "--json"])
        .stdin(std::fs::File::open(input).unwrap())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "push failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pull_matches(dir: &Path, snapshot: &str, input: &Path) {
    let out = agent(dir).args(["pull", snapshot, "-"]).stderr(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "pull failed");
    assert!(out.stdout == std::fs::read(input).unwrap(), "the restored bytes differ");
}

fn random_file(dir: &Path, rng: &mut StdRng, len: usize) -> PathBuf {
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    let p = dir.join(format!("input-{}", rng.r#gen::<u32>()));
    std::fs::write(&p, data).unwrap();
    p
}

#[tokio::test]
async fn a_push_stores_chunks_again_rather_than_trust_a_damaged_page() {
    let mut rng = seeded("push over damage");
    let dir = tempfile::tempdir().unwrap();
    repository(dir.path()).await;
    let input = random_file(dir.path(), &mut rng, 4 << 20);
    push(dir.path(), &input);
    // The second push builds the run of the first one's index, and stores nothing new.
    let second = push(dir.path(), &input);
    assert_eq!(second["bytes_new"], 0);
    let runs = run_files(&dir.path().join("cache"));
    assert_eq!(runs.len(), 1);
    // Damage every page, not the footer: the run opens, no lookup can trust it.
    let mut bytes = std::fs::read(&runs[0]).unwrap();
    for p in 0..page_count(&bytes) {
        bytes[p * PAGE_LEN + 7] ^= 0xff;
    }
    std::fs::write(&runs[0], &bytes).unwrap();
    let third = push(dir.path(), &input);
    assert_eq!(third["bytes_new"], 4 << 20, "a damaged page must make the push store the chunks again");
    pull_matches(dir.path(), third["snapshot_id"].as_str().unwrap(), &input);
    let check = agent(dir.path()).arg("check").output().unwrap();
    assert!(check.status.success(), "check: {}", String::from_utf8_lossy(&check.stdout));
    // The damaged run was removed; the next push rebuilds and deduplicates again.
    let fourth = push(dir.path(), &input);
    assert_eq!(fourth["bytes_new"], 0);
}

#[tokio::test]
async fn kill_9_while_the_cache_is_built_or_merged_leaves_it_usable() {
    let mut rng = seeded("kill -9");
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path()).await;
    // A repository whose index takes a while to sort (300,000 synthetic blobs).
    let mut model = Model::default();
    let packs = (0..1200).map(|_| random_pack(&mut rng, 250, &[])).collect();
    model.write(&repo, packs).await;
    let input = random_file(dir.path(), &mut rng, 2 << 20);
    let mut kills = 0;
    for round in 0..10 {
        let mut child = agent(dir.path())
            .args(["push", "--json"])
            .stdin(std::fs::File::open(&input).unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let after = rng.gen_range(0..1200);
        std::thread::sleep(std::time::Duration::from_millis(after));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        println!("round {round}: killed after {after} ms");
        // Between kills, new index objects arrive now and then (more runs to merge).
        if rng.gen_bool(0.5) {
            model.write(&repo, (0..3).map(|_| random_pack(&mut rng, 100, &[])).collect()).await;
        }
    }
    println!("{kills} of 10 pushes killed");
    let done = push(dir.path(), &input);
    pull_matches(dir.path(), done["snapshot_id"].as_str().unwrap(), &input);
    // Whatever the kills left, lookups are right.
    assert_matches(&repo.load_lookup().await.unwrap(), &model, &[], &mut rng);
    // A killed build leaves at most its temporary files (removed once an hour old).
    let temps =
        walk(&dir.path().join("cache")).into_iter().filter(|p| p.extension().is_none_or(|x| x != "kix")).count();
    assert!(temps <= kills * 8, "{temps} temporary files after {kills} kills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_sharing_a_cache_directory_build_and_merge_it_at_once() {
    let mut rng = seeded("shared cache");
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path()).await;
    let mut model = Model::default();
    for round in 0..12 {
        // New index objects, so that every loader of this round builds a run and, past
        // MAX_RUNS, merges runs and deletes the ones another loader is opening or reading.
        for _ in 0..rng.gen_range(1..=3) {
            let packs = (0..rng.gen_range(1..6))
                .map(|_| {
                    let n = rng.gen_range(1..300);
                    random_pack(&mut rng, n, &[])
                })
                .collect();
            model.write(&repo, packs).await;
        }
        let loaders: Vec<_> = (0..4)
            .map(|_| {
                let repo = repo.clone();
                tokio::spawn(async move { repo.load_lookup().await })
            })
            .collect();
        for l in loaders {
            let li = l.await.unwrap().unwrap_or_else(|e| panic!("round {round}: a concurrent load failed: {e}"));
            assert_matches(&li, &model, &[], &mut rng);
        }
    }
    // What the races left is a cache that answers right, within its bound of runs.
    let li = repo.load_lookup().await.unwrap();
    assert!(li.runs() <= MAX_RUNS, "{} runs", li.runs());
    assert_matches(&li, &model, &[], &mut rng);
}
