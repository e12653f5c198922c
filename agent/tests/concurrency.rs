//! Concurrent writers: pushes never lock each other out, and prune never removes what a
//! running push has built on.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use zeroize::Zeroizing;

use kanister_agent::repository::{InitOptions, KEYS, RepoKey, Repository};
use kanister_testkit::agent::Agent;
use kanister_testkit::data::MixedStream;
use kanister_testkit::infra;
use kanister_testkit::sha256_of;

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");

fn repo() -> (tempfile::TempDir, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    (dir, agent)
}

#[test]
fn two_pushes_at_once_then_prune_then_check() {
    let (_d, agent) = repo();
    let len = 96 << 20;
    let (a1, a2) = (agent.clone(), agent.clone());
    // Partly shared data: both streams start with the same 32 MiB.
    let shared = move |seed| MixedStream::new(50, 32 << 20).chain(MixedStream::new(seed, len - (32 << 20)));
    let t1 = std::thread::spawn(move || a1.push(&["--tag", "w=1"], shared(51)));
    let t2 = std::thread::spawn(move || a2.push(&["--tag", "w=2"], shared(52)));
    let (p1, p2) = (t1.join().unwrap(), t2.join().unwrap());
    assert_eq!(agent.json(&["check", "--read-data"])["ok"], true);
    agent.run(&["forget", p1["snapshot_id"].as_str().unwrap()]);
    let r = agent.json(&["prune", "--grace-period", "0s"]);
    assert!(r["packs_deleted"].as_u64().unwrap() > 0, "{r}");
    let check = agent.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    let (got, _, ok, err) = agent.pull_hash(p2["snapshot_id"].as_str().unwrap());
    assert!(ok, "{err}");
    assert_eq!(got, sha256_of(shared(52)).unwrap().0);
}

#[test]
fn prune_never_deletes_what_a_running_push_deduplicated_against() {
    let (_d, agent) = repo();
    let old = agent.push(&["--tag", "v=old"], MixedStream::new(60, 16 << 20));
    std::thread::sleep(Duration::from_millis(1100)); // store times have one-second resolution

    // A push that deduplicates against `old`'s data and is still running.
    let mut child = agent
        .cmd(&["push", "--json", "--tag", "v=new"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut buf = Vec::new();
    MixedStream::new(60, 16 << 20).read_to_end(&mut buf).unwrap();
    stdin.write_all(&buf).unwrap();
    std::thread::sleep(Duration::from_millis(1500)); // let it chunk and deduplicate

    agent.run(&["forget", old["snapshot_id"].as_str().unwrap()]);
    let r = agent.json(&["prune", "--grace-period", "0s"]);
    assert!(r["packs_set_aside"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["packs_deleted"], 0, "prune deleted packs while a push that started earlier was running: {r}");
    assert!(r["waiting_reason"].as_str().unwrap_or_default().contains("running"), "{r}");

    // The push finishes and its snapshot is whole.
    stdin.write_all(b"and a little more").unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let new: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(new["dedup_ratio"].as_f64().unwrap() > 0.9, "the push did not deduplicate: {new}");
    assert_eq!(agent.json(&["check", "--read-data"])["ok"], true);

    // The next prune keeps the packs the new snapshot uses.
    let r = agent.json(&["prune", "--grace-period", "0s"]);
    assert!(r["packs_restored"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(agent.json(&["check", "--read-data"])["ok"], true);
    buf.extend_from_slice(b"and a little more");
    let (got, n, ok, err) = agent.pull_hash(new["snapshot_id"].as_str().unwrap());
    assert!(ok, "{err}");
    assert_eq!((got, n), sha256_of(&buf[..]).unwrap());
}

fn store_of(url: &str, opts: &[String]) -> kanister_agent::store::Store {
    use kanister_agent::store::{Store, StoreOptions};
    let options =
        opts.iter().map(|o| o.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap()).collect();
    Store::open(url, &StoreOptions { options, credentials_file: None }).unwrap()
}

fn key_file() -> RepoKey {
    RepoKey::KeyFile(Zeroizing::new(b"0123456789abcdef0123456789abcdef".to_vec()))
}

/// Eight first backups racing to an empty location end in one repository: one key slot, one
/// master key for all (their chunker seeds agree), on every store kind here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_racing_to_create_a_repository_share_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = (format!("file://{}/repo", dir.path().display()), vec![]);
    for (name, (url, opts)) in
        [("file", file), ("s3", infra::s3(&infra::unique("race"))), ("azure", infra::azure(&infra::unique("race")))]
    {
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let store = store_of(&url, &opts);
                tokio::spawn(async move { Repository::at(store).open_or_init(&key_file()).await })
            })
            .collect();
        let mut seeds = Vec::new();
        for r in racers {
            let repo = r.await.unwrap().unwrap_or_else(|e| panic!("{name}: a racer failed: {e}"));
            seeds.push(repo.keys().chunker_seed);
        }
        seeds.dedup();
        assert_eq!(seeds.len(), 1, "{name}: racers ended in different repositories");
        let slots = store_of(&url, &opts).list(KEYS).await.unwrap();
        assert_eq!(slots.len(), 1, "{name}: losers left their key slots: {slots:?}");
    }
}

/// A key slot orphaned by a creation that lost the race and crashed before withdrawing it
/// (same credential, another master key) does not stop the repository from opening, nor does
/// it make `init` overwrite the repository.
#[tokio::test]
async fn an_orphaned_key_slot_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (format!("file://{}/a", dir.path().display()), format!("file://{}/b", dir.path().display()));
    let opts = InitOptions::default();
    let seed = Repository::at(store_of(&a, &[])).init(&key_file(), &opts).await.unwrap().keys().chunker_seed;
    let other = Repository::at(store_of(&b, &[])).init(&key_file(), &opts).await.unwrap();
    // Slot ids sort before and after the real one in turn: the orphan is tried first once.
    for o in other.store().list(KEYS).await.unwrap() {
        let bytes = other.store().get(&o.key).await.unwrap();
        for id in ["00000000", "ffffffff"] {
            store_of(&a, &[]).put(&format!("{KEYS}/{id}"), bytes.clone()).await.unwrap();
            let repo = Repository::at(store_of(&a, &[])).open(&key_file()).await.unwrap();
            assert_eq!(repo.keys().chunker_seed, seed, "opened with the orphan's master key");
            store_of(&a, &[]).delete(&format!("{KEYS}/{id}")).await.unwrap();
        }
    }
    let err = Repository::at(store_of(&a, &[])).init(&key_file(), &opts).await.unwrap_err();
    assert!(matches!(err, kanister_agent::Error::AlreadyInitialized(_)), "{err}");
    // Slots with no config (a creation that crashed) do not block creating the repository.
    std::fs::create_dir(dir.path().join("c")).unwrap();
    let c = format!("file://{}/c", dir.path().display());
    let orphan = other.store().list(KEYS).await.unwrap().remove(0);
    store_of(&c, &[]).put(&orphan.key, other.store().get(&orphan.key).await.unwrap()).await.unwrap();
    assert!(matches!(
        Repository::at(store_of(&c, &[])).open(&key_file()).await,
        Err(kanister_agent::Error::NotARepository(_))
    ));
    let created = Repository::at(store_of(&c, &[])).open_or_init(&key_file()).await.unwrap();
    let reopened = Repository::at(store_of(&c, &[])).open(&key_file()).await.unwrap();
    assert_eq!(reopened.keys().chunker_seed, created.keys().chunker_seed);
    assert_ne!(created.keys().chunker_seed, other.keys().chunker_seed);
}
