//! Garbage collection under fire: several writers (stream pushes and directory backups, some
//! killed with SIGKILL at random moments), `forget`s, and two prunes with a zero grace period
//! looping at once, for many rounds, on local disk and on SeaweedFS. After every round,
//! `check --read-data` must be clean and every snapshot not forgotten must restore byte for
//! byte. The seed is printed; `KANISTER_GC_SEED=<seed>` replays a run, `KANISTER_GC_ROUNDS`
//! changes the number of rounds.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kanister_testkit::agent::Agent;
use kanister_testkit::infra;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");
const BLOCK: usize = 256 * 1024;
const POOL: u64 = 24;

/// A block of the shared pool: writers draw their content from a few of these, so new backups
/// deduplicate against packs older snapshots (some forgotten meanwhile) wrote.
fn block(n: u64) -> Vec<u8> {
    let mut r = StdRng::seed_from_u64(0x6b61_6e69 ^ n);
    let mut b = vec![0u8; BLOCK];
    r.fill(&mut b[..]);
    b
}

fn stream_of(rng: &mut StdRng) -> Vec<u8> {
    let blocks = rng.gen_range(2..14);
    let mut out = Vec::with_capacity(blocks * BLOCK + 64);
    for _ in 0..blocks {
        out.extend_from_slice(&block(rng.gen_range(0..POOL)));
        // A few unique bytes between blocks: chunk boundaries move, packs differ.
        let extra: u64 = rng.r#gen();
        out.extend_from_slice(&extra.to_le_bytes());
    }
    out
}

fn sha(b: &[u8]) -> String {
    kanister_testkit::hex(&Sha256::digest(b))
}

/// What a surviving snapshot must restore to.
#[derive(Debug, Clone)]
enum Expect {
    Stream { sha: String, len: u64 },
    Tree { files: BTreeMap<String, String> },
}

/// A writer in flight.
struct Writer {
    child: Child,
    expect: Expect,
    kill_at: Option<Instant>,
    _input: Option<std::thread::JoinHandle<()>>,
}

fn start_push(agent: &Agent, data: Vec<u8>, round: usize) -> (Child, std::thread::JoinHandle<()>) {
    let mut child = agent
        .cmd(&["push", "--json", "--tag", &format!("round={round}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent runs");
    let mut stdin = child.stdin.take().expect("piped");
    let feeder = std::thread::spawn(move || {
        for c in data.chunks(64 * 1024) {
            if stdin.write_all(c).is_err() {
                return;
            }
        }
    });
    (child, feeder)
}

fn write_tree(dir: &Path, rng: &mut StdRng) -> BTreeMap<String, String> {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let mut files = BTreeMap::new();
    for i in 0..rng.gen_range(2..6) {
        let name = if i % 2 == 0 { format!("f{i}") } else { format!("sub/f{i}") };
        let data = stream_of(rng);
        std::fs::write(dir.join(&name), &data).unwrap();
        files.insert(name, sha(&data));
    }
    files
}

fn tree_files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, sha(&std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn snapshot_of(out: &std::process::Output) -> Option<String> {
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["snapshot_id"].as_str().map(String::from)
}

/// Runs `prune --grace-period 0s` in a loop until `stop`; collects every failure.
fn prune_loop(
    agent: Agent,
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut runs = 0;
        while !stop.load(Ordering::Relaxed) {
            let o = agent.output(&["prune", "--grace-period", "0s", "--wait-lock", "60s", "--json"]);
            runs += 1;
            if !o.status.success() {
                failures.lock().unwrap().push(format!(
                    "prune failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
        }
        runs
    })
}

fn storm(agent: &Agent, work: &Path, seed: u64, rounds: usize) {
    eprintln!("gc storm on {}: seed {seed} (replay with KANISTER_GC_SEED={seed}), {rounds} rounds", agent.store);
    let mut rng = StdRng::seed_from_u64(seed);
    agent.run(&["repo", "init", "--pack-size", "1MiB"]);
    let mut alive: Vec<(String, Expect)> = Vec::new();
    let (mut killed, mut written, mut forgotten) = (0usize, 0usize, 0usize);
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let prunes: Vec<_> = (0..2).map(|_| prune_loop(agent.clone(), stop.clone(), failures.clone())).collect();
        let mut writers = Vec::new();
        for w in 0..rng.gen_range(3..6) {
            let kill_at = rng.gen_bool(0.3).then(|| Instant::now() + Duration::from_millis(rng.gen_range(30..600)));
            if rng.gen_bool(0.65) {
                let data = stream_of(&mut rng);
                let expect = Expect::Stream { sha: sha(&data), len: data.len() as u64 };
                let (child, feeder) = start_push(agent, data, round);
                writers.push(Writer { child, expect, kill_at, _input: Some(feeder) });
            } else {
                let dir = work.join(format!("tree-{round}-{w}"));
                let files = write_tree(&dir, &mut rng);
                let child = agent
                    .cmd(&["backup", "--json", dir.to_str().unwrap(), "--tag", &format!("tree={round}-{w}")])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("agent runs");
                writers.push(Writer { child, expect: Expect::Tree { files }, kill_at, _input: None });
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..150)));
        }
        // Forget some older snapshots while the writers run.
        while !alive.is_empty() && rng.gen_bool(0.5) {
            let (id, _) = alive.remove(rng.gen_range(0..alive.len()));
            agent.run(&["forget", &id]);
            forgotten += 1;
        }
        for mut w in writers {
            if let Some(at) = w.kill_at {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let _ = w.child.kill();
            }
            let out = w.child.wait_with_output().expect("writer ends");
            match snapshot_of(&out) {
                Some(id) => {
                    written += 1;
                    alive.push((id, w.expect));
                }
                None if w.kill_at.is_some() => killed += 1,
                None => panic!(
                    "round {round}: a writer that was not killed failed (seed {seed}): {}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let runs: usize = prunes.into_iter().map(|p| p.join().unwrap()).sum();
        let failures = failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "round {round} (seed {seed}): {} prune(s) failed: {failures:#?}", failures.len());
        // One more prune with nothing running, then everything must hold.
        agent.run(&["prune", "--grace-period", "0s"]);
        let check = agent.output(&["check", "--read-data"]);
        assert!(
            check.status.success(),
            "round {round} (seed {seed}): check --read-data failed after {runs} prunes:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        for (id, expect) in &alive {
            match expect {
                Expect::Stream { sha, len } => {
                    let (h, n, ok, err) = agent.pull_hash(id);
                    assert!(ok, "round {round} (seed {seed}): snapshot {id} does not restore: {err}");
                    assert_eq!((&h, n), (sha, *len), "round {round} (seed {seed}): snapshot {id} restored other bytes");
                }
                Expect::Tree { files } => {
                    let target = work.join(format!("restore-{round}-{id}"));
                    agent.run(&["restore", id, target.to_str().unwrap()]);
                    assert_eq!(&tree_files(&target), files, "round {round} (seed {seed}): tree {id} differs");
                    std::fs::remove_dir_all(&target).unwrap();
                }
            }
        }
        eprintln!("round {round}: {} snapshots alive, {runs} prunes ran", alive.len());
    }
    eprintln!("gc storm done: {written} snapshots written, {killed} writers killed, {forgotten} forgotten");
    assert!(written > rounds, "too few writers finished to test anything ({written})");
}

fn seed() -> u64 {
    std::env::var("KANISTER_GC_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random)
}

fn rounds(default: usize) -> usize {
    std::env::var("KANISTER_GC_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[test]
fn storm_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}", dir.path().join("repo").display()));
    let work: PathBuf = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    storm(&agent, &work, seed(), rounds(8));
}

#[test]
fn storm_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let (url, opts) = infra::s3(&infra::unique("gc-storm"));
    let agent = Agent::new(BIN, url).with_options(&opts);
    storm(&agent, dir.path(), seed(), rounds(5));
}
