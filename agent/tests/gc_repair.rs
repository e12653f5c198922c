//! `repo repair-index` brings an index that disagrees with the store back to a state where
//! `check --read-data` is clean, without dropping a blob that still exists, and says what it
//! changed: index entries naming packs that are gone (what two concurrent prunes used to leave),
//! and packs no index names (a lost index object).

use std::path::PathBuf;

use kanister_testkit::agent::Agent;
use kanister_testkit::data::SqlDump;
use kanister_testkit::files_under;

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");

fn push(agent: &Agent, seed: u64) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    SqlDump::of_size(seed, 3 << 20, 0.0).write(1, &mut data).unwrap();
    let v = agent.push(&[], std::io::Cursor::new(data.clone()));
    (v["snapshot_id"].as_str().unwrap().to_string(), data)
}

fn assert_restores(agent: &Agent, id: &str, data: &[u8]) {
    let (h, n, ok, err) = agent.pull_hash(id);
    assert!(ok, "snapshot {id} does not restore: {err}");
    assert_eq!((h, n), kanister_testkit::sha256_of(data).unwrap());
}

#[test]
fn repair_drops_entries_of_gone_packs_and_indexes_unnamed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let agent = Agent::new(BIN, format!("file://{}", root.display()));
    agent.run(&["repo", "init", "--pack-size", "1MiB"]);

    // Entries naming packs that are gone: a forgotten snapshot's packs deleted behind the
    // index's back.
    let (gone, _) = push(&agent, 1);
    let before: Vec<PathBuf> = files_under(&root.join("data"));
    let (kept, kept_data) = push(&agent, 2);
    let kept_packs: Vec<PathBuf> =
        files_under(&root.join("data")).into_iter().filter(|p| !before.contains(p)).collect();
    agent.run(&["forget", &gone]);
    for p in &before {
        std::fs::remove_file(p).unwrap();
    }
    let check = agent.output(&["check"]);
    assert_eq!(check.status.code(), Some(3), "check did not see the missing packs");

    // Packs no index names: the index object listing the kept snapshot's packs is lost.
    let index_objects = files_under(&root.join("index"));
    assert!(!index_objects.is_empty());
    assert!(!kept_packs.is_empty());
    // Find the index objects written by the second push (newer than the first's).
    let newest = index_objects.iter().max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap()).unwrap();
    std::fs::remove_file(newest).unwrap();

    let r = agent.json(&["repo", "repair-index"]);
    let dropped = r["missing_packs_dropped"].as_array().unwrap().len();
    assert_eq!(dropped, before.len(), "repair dropped {dropped} entries, {} packs were gone: {r}", before.len());
    assert!(r["packs_indexed"].as_u64().unwrap() >= 1, "repair indexed none of the unnamed packs: {r}");
    agent.run(&["check", "--read-data"]);
    assert_restores(&agent, &kept, &kept_data);

    // A second repair finds nothing to do.
    let again = agent.json(&["repo", "repair-index"]);
    assert_eq!(again["missing_packs_dropped"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["packs_indexed"], 0, "{again}");
    // And a push of the lost data stores it again instead of deduplicating against nothing.
    let mut data = Vec::new();
    SqlDump::of_size(1, 3 << 20, 0.0).write(1, &mut data).unwrap();
    let v = agent.push(&[], std::io::Cursor::new(data.clone()));
    assert!(v["bytes_new"].as_u64().unwrap() > (2 << 20), "the push deduplicated against deleted packs: {v}");
    assert_restores(&agent, v["snapshot_id"].as_str().unwrap(), &data);
    agent.run(&["check", "--read-data"]);
}

/// Repair waits for a prune (it changes the index too) and refuses beside one.
#[test]
fn repair_index_takes_the_maintenance_lock() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let agent = Agent::new(BIN, format!("file://{}", root.display()));
    agent.init();
    // A live lock held by this test process (its pid is alive), written as a prune would.
    std::fs::create_dir_all(root.join("exclusive")).unwrap();
    let holder =
        serde_json::json!({"purpose": "prune", "hostname": "elsewhere", "pid": std::process::id(), "since": 0});
    std::fs::write(root.join("exclusive/0123456789abcdef0123456789abcdef"), holder.to_string()).unwrap();
    let o = agent.output(&["repo", "repair-index", "--wait-lock", "1s"]);
    assert!(!o.status.success(), "repair ran beside a prune");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("another maintenance is running") && err.contains("prune by elsewhere"), "{err}");
    std::fs::remove_file(root.join("exclusive/0123456789abcdef0123456789abcdef")).unwrap();
    agent.run(&["repo", "repair-index"]);
}
