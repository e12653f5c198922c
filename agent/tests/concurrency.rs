//! Concurrent writers: pushes never lock each other out, and prune never removes what a
//! running push has built on.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use kanister_testkit::agent::Agent;
use kanister_testkit::data::MixedStream;
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
