//! The races of garbage collection, each forced into its worst interleaving by pausing one
//! process at a chosen store operation (a [`Hook`] on its store): a push finishing while prune
//! runs, two prunes at once, a snapshot appearing during a prune. Each ran the repository into
//! lost data or a failing prune before the protocol in `prune`'s module docs.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kanister_agent::error::Error;
use kanister_agent::progress::Progress;
use kanister_agent::prune::{PruneOptions, prune};
use kanister_agent::push::{PushOptions, Source, push};
use kanister_agent::repository::{InitOptions, RepoKey, Repository};
use kanister_agent::store::{Hook, Store, StoreOp, StoreOptions};
use kanister_testkit::infra;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, Semaphore};
use zeroize::Zeroizing;

fn key() -> RepoKey {
    RepoKey::KeyFile(Zeroizing::new(b"gc-races-0123456789abcdef01234567".to_vec()))
}

fn store_of(url: &str, opts: &[String]) -> Store {
    let options =
        opts.iter().map(|o| o.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap()).collect();
    Store::open(url, &StoreOptions { options, credentials_file: None }).unwrap()
}

/// Pauses the first operation `op` on a key starting with `prefix` until released.
struct Gate {
    op: StoreOp,
    prefix: &'static str,
    armed: AtomicBool,
    reached: Notify,
    release: Semaphore,
}

impl Gate {
    fn new(op: StoreOp, prefix: &'static str) -> Arc<Gate> {
        Arc::new(Gate { op, prefix, armed: AtomicBool::new(true), reached: Notify::new(), release: Semaphore::new(0) })
    }

    fn hook(self: &Arc<Gate>) -> Hook {
        let gate = self.clone();
        Arc::new(move |op, key| {
            let g = gate.clone();
            let hit = op == g.op && key.starts_with(g.prefix) && g.armed.swap(false, Ordering::SeqCst);
            Box::pin(async move {
                if hit {
                    g.reached.notify_one();
                    g.release.acquire().await.expect("gate open").forget();
                }
            })
        })
    }

    async fn wait_reached(&self) {
        tokio::time::timeout(Duration::from_secs(60), self.reached.notified())
            .await
            .unwrap_or_else(|_| panic!("the paused process never reached {:?} {}", self.op, self.prefix));
    }

    fn open(&self) {
        self.release.add_permits(1);
    }
}

/// The repositories every race runs on: local disk and SeaweedFS.
fn locations(dir: &std::path::Path, tag: &str) -> Vec<(String, Vec<String>)> {
    vec![(format!("file://{}/{tag}", dir.display()), vec![]), infra::s3(&infra::unique(tag))]
}

async fn repo_at(url: &str, opts: &[String], hook: Option<Hook>) -> Repository {
    let mut store = store_of(url, opts);
    store.create_local_root().unwrap();
    let store = match hook {
        Some(h) => store.with_hook(h),
        None => store,
    };
    Repository::at(store).open(&key()).await.unwrap()
}

async fn init(url: &str, opts: &[String]) -> Repository {
    let o = InitOptions { pack_size: 1 << 20, ..InitOptions::default() };
    Repository::at(store_of(url, opts)).init(&key(), &o).await.unwrap()
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut b = vec![0u8; len];
    r.fill(&mut b[..]);
    b
}

async fn push_bytes(repo: &Repository, bytes: Vec<u8>) -> String {
    let s = push(repo, Source::Reader(Box::new(std::io::Cursor::new(bytes))), &PushOptions::default(), Progress::new())
        .await
        .unwrap();
    s.snapshot_id.to_string()
}

async fn pull_bytes(repo: &Repository, id: &str) -> Vec<u8> {
    let id = repo.resolve_snapshot(id).await.unwrap();
    let (_, out) = kanister_agent::pull::pull(repo, &id, Vec::new(), 4, 2, Progress::new())
        .await
        .unwrap_or_else(|e| panic!("snapshot {id} does not restore: {e}"));
    out
}

async fn assert_clean(repo: &Repository, what: &str) {
    let r = kanister_agent::check::check(repo, true).await.unwrap();
    assert!(r.ok, "{what}: check --read-data found damage: {:#?}", r.errors);
}

fn grace0() -> PruneOptions {
    PruneOptions::with_grace(Duration::ZERO)
}

/// A push that finishes while prune runs keeps every pack: prune is paused right before it
/// lists the backup markers while the push writes its last pack, its index and its snapshot
/// and removes its marker. (Before: prune had read the snapshots already, found no marker,
/// and deleted the push's last pack as unused: "blob ... is in no index" on pull.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_finishing_during_prune_keeps_its_packs() {
    let dir = tempfile::tempdir().unwrap();
    for (url, opts) in locations(dir.path(), "finish") {
        let repo = init(&url, &opts).await;
        let body = data(1, 5 << 20);
        let (reader, mut writer) = std::io::pipe().unwrap();
        let pushing = {
            let repo = repo.clone();
            tokio::spawn(async move {
                push(&repo, Source::Reader(Box::new(reader)), &PushOptions::default(), Progress::new()).await
            })
        };
        // Most of the stream, so packs land; the push goes on waiting for the rest.
        let (head, tail) = body.split_at(4 << 20);
        let (head, tail) = (head.to_vec(), tail.to_vec());
        let writer_thread = std::thread::spawn(move || {
            writer.write_all(&head).unwrap();
            writer
        });
        let mut writer = tokio::task::spawn_blocking(move || writer_thread.join().unwrap()).await.unwrap();
        while repo.store().list("data").await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let gate = Gate::new(StoreOp::List, "locks");
        let pruning = {
            let paused = repo_at(&url, &opts, Some(gate.hook())).await;
            tokio::spawn(async move { prune(&paused, &grace0()).await })
        };
        gate.wait_reached().await;
        // The push ends while prune waits: last pack, index, snapshot, marker removed.
        tokio::task::spawn_blocking(move || {
            writer.write_all(&tail).unwrap();
            drop(writer);
        })
        .await
        .unwrap();
        let stats = pushing.await.unwrap().unwrap();
        gate.open();
        let report = pruning.await.unwrap().unwrap();
        let id = stats.snapshot_id.to_string();
        assert_eq!(pull_bytes(&repo, &id).await, body, "{url}: the pushed stream came back different");
        assert_eq!(report.packs_deleted, 0, "{url}: prune deleted packs of the push that finished: {report:?}");
        assert_clean(&repo, &url).await;
    }
}

/// Two prunes at once never leave an index naming deleted packs. Prune A is paused right
/// before it writes its compacted index; meanwhile another snapshot is forgotten and prune B
/// runs. (Before: B set the forgotten snapshot's packs aside and deleted them, then A wrote
/// an index, compacted from its older reading, that still named them: `check` failed for
/// good.) Now B finds A's lock and stops with `Busy`, changing nothing; A finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_prunes_at_once_never_leave_dangling_index_entries() {
    let dir = tempfile::tempdir().unwrap();
    for (url, opts) in locations(dir.path(), "two") {
        let repo = init(&url, &opts).await;
        let s1 = push_bytes(&repo, data(11, 3 << 20)).await;
        let s2 = push_bytes(&repo, data(12, 3 << 20)).await;
        let s3 = push_bytes(&repo, data(13, 3 << 20)).await;
        repo.forget(std::slice::from_ref(&s1)).await.unwrap();

        let gate = Gate::new(StoreOp::Put, "index/");
        let a = {
            let paused = repo_at(&url, &opts, Some(gate.hook())).await;
            tokio::spawn(async move { prune(&paused, &grace0()).await })
        };
        gate.wait_reached().await;
        repo.forget(std::slice::from_ref(&s2)).await.unwrap();
        let b = prune(&repo, &PruneOptions { wait_lock: Duration::from_secs(2), ..grace0() }).await;
        gate.open();
        let a = a.await.unwrap();
        match b {
            Err(Error::Busy(who)) => assert!(who.contains("prune"), "{url}: Busy names no holder: {who}"),
            other => panic!("{url}: a second prune ran beside the first: {other:?}"),
        }
        a.unwrap_or_else(|e| panic!("{url}: the first prune failed: {e}"));
        assert_clean(&repo, &url).await;
        // The next prune frees the second snapshot's data; the third still restores.
        let r = prune(&repo, &grace0()).await.unwrap();
        assert!(r.packs_deleted > 0, "{url}: the forgotten snapshot's packs were not freed: {r:?}");
        assert_clean(&repo, &url).await;
        assert_eq!(pull_bytes(&repo, &s3).await, data(13, 3 << 20));
    }
}

/// A snapshot written while prune runs makes it read the index again instead of failing.
/// Prune is paused right before it lists the snapshots (its index is loaded); a push writes a
/// snapshot whose chunk list is in an index prune has not read. (Before: "blob ... cannot be
/// read (blob ... is in no index); prune refuses to guess".)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_appearing_during_prune_is_read_with_a_fresh_index() {
    let dir = tempfile::tempdir().unwrap();
    for (url, opts) in locations(dir.path(), "appear") {
        let repo = init(&url, &opts).await;
        let old = push_bytes(&repo, data(21, 2 << 20)).await;
        repo.forget(std::slice::from_ref(&old)).await.unwrap();
        let gate = Gate::new(StoreOp::List, "snapshots");
        let pruning = {
            let paused = repo_at(&url, &opts, Some(gate.hook())).await;
            tokio::spawn(async move { prune(&paused, &grace0()).await })
        };
        gate.wait_reached().await;
        let new = push_bytes(&repo, data(22, 3 << 20)).await;
        gate.open();
        let r = pruning.await.unwrap().unwrap_or_else(|e| panic!("{url}: prune failed beside a new snapshot: {e}"));
        assert!(r.index_reloads >= 1, "{url}: prune did not read the index again: {r:?}");
        assert_eq!(pull_bytes(&repo, &new).await, data(22, 3 << 20));
        assert_clean(&repo, &url).await;
    }
}

/// A maintenance lock whose holder died (not renewed) does not block the next prune forever;
/// one that is alive does, for as long as `wait_lock`, and the refusal names the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_lock_blocks_and_names_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/held", dir.path().display());
    let repo = init(&url, &[]).await;
    let held = kanister_agent::exclusive::ExclusiveLock::acquire(&repo, "test-holder", Duration::ZERO).await.unwrap();
    let started = std::time::Instant::now();
    let r = prune(&repo, &PruneOptions { wait_lock: Duration::from_secs(2), ..grace0() }).await;
    match r {
        Err(Error::Busy(who)) => assert!(who.contains("test-holder"), "{who}"),
        other => panic!("prune ran beside a held lock: {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(2), "prune gave up before --wait-lock");
    held.release().await;
    prune(&repo, &grace0()).await.expect("prune runs once the lock is released");
}

/// A pack no index names (a killed backup's), re-indexed by a backup that is then killed too,
/// while prune sets the pack aside. Prune is paused right before it writes its mark; the backup
/// reads no mark, writes an index naming the pack and dies (no marker lives). Prune deletes the
/// pack as unused, and no index may still name it. (Before: prune compacted only the index
/// objects it had read before the backup's, so the backup's index kept naming the deleted pack:
/// `check` failed with "... is missing from the store". The gc storm found it on SeaweedFS,
/// seed 16676667700656817060, which did not replay: the kill had to land right after the
/// re-index.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pack_reindexed_by_a_killed_backup_during_prune_leaves_no_dangling_index() {
    let dir = tempfile::tempdir().unwrap();
    for (url, opts) in locations(dir.path(), "reindex") {
        let repo = init(&url, &opts).await;
        // The pack of a backup killed before it indexed it: in the store, in no index, in no
        // snapshot.
        let id = push_bytes(&repo, data(7, 3 << 20)).await;
        repo.forget(&[id]).await.unwrap();
        for o in repo.store().list("index").await.unwrap() {
            repo.store().delete(&o.key).await.unwrap();
        }
        let packs = repo.store().list("data").await.unwrap();
        assert!(!packs.is_empty(), "{url}: no orphan pack to begin with");
        // Packs must look old to prune (store times are in whole seconds).
        tokio::time::sleep(Duration::from_millis(1100)).await;

        let gate = Gate::new(StoreOp::Put, "prune");
        let pruning = {
            let paused = repo_at(&url, &opts, Some(gate.hook())).await;
            tokio::spawn(async move { prune(&paused, &grace0()).await })
        };
        gate.wait_reached().await;
        // The backup starts (no mark yet: the orphan is re-indexed), then is killed: it leaves
        // its index and no live marker.
        let (_, reindexed, _) = kanister_agent::packer::prepare(&repo).await.unwrap();
        assert_eq!(reindexed, packs.len(), "{url}: the backup re-indexed the orphan packs");
        gate.open();
        let report = pruning.await.unwrap().unwrap();
        assert_eq!(report.packs_deleted, packs.len(), "{url}: prune deleted the unused packs: {report:?}");
        assert_clean(&repo, &url).await;
        // And a backup after that stores and restores.
        let body = data(8, 2 << 20);
        let id = push_bytes(&repo, body.clone()).await;
        assert_eq!(pull_bytes(&repo, &id).await, body, "{url}: a later push came back different");
    }
}
