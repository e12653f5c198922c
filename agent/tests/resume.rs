//! A push killed with SIGKILL leaves a repository that `check --read-data` accepts, and the
//! next push of the same data uploads only what had not landed.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kanister_testkit::agent::Agent;
use kanister_testkit::data::MixedStream;

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");
const LEN: u64 = 192 << 20;
const SEED: u64 = 30;

fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if !name.contains('#') {
                // `name#N` are the store's staging files of writes that never completed.
                total += e.metadata().unwrap().len();
            }
        }
    }
    total
}

/// Starts a push fed at about 64 MiB/s and kills it with SIGKILL after `after`.
fn push_and_kill(agent: &Agent, after: Duration) {
    let mut child = agent
        .cmd(&["push", "--json", "--tag", "run=killed"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let mut src = MixedStream::new(SEED, LEN);
        let mut buf = vec![0u8; 1 << 20];
        let start = Instant::now();
        let mut sent = 0u64;
        loop {
            let n = src.read(&mut buf).unwrap();
            if n == 0 || stdin.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
            let due = Duration::from_secs_f64(sent as f64 / (64u64 << 20) as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    });
    std::thread::sleep(after);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    feeder.join().unwrap();
}

#[test]
fn kill_9_at_several_points_then_resume() {
    // What a clean push of this data uploads, for comparison.
    let refdir = tempfile::tempdir().unwrap();
    let reference = Agent::new(BIN, format!("file://{}/repo", refdir.path().display()));
    reference.init();
    let clean = reference.push(&[], MixedStream::new(SEED, LEN))["bytes_uploaded"].as_u64().unwrap();
    let (want, _) = kanister_testkit::sha256_of(MixedStream::new(SEED, LEN)).unwrap();

    let mut landed_something = false;
    for after_ms in [200u64, 1200, 2500] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let agent = Agent::new(BIN, format!("file://{}", root.display()));
        agent.init();
        push_and_kill(&agent, Duration::from_millis(after_ms));
        let landed = dir_size(&root.join("data"));
        landed_something |= landed > (16 << 20);

        let check = agent.json(&["check", "--read-data"]);
        assert_eq!(check["ok"], true, "after a kill at {after_ms} ms: {check}");
        assert_eq!(
            agent.json(&["snapshots"])["snapshots"].as_array().unwrap().len(),
            0,
            "a killed push left a snapshot"
        );

        let rerun = agent.push(&[], MixedStream::new(SEED, LEN));
        let uploaded = rerun["bytes_uploaded"].as_u64().unwrap();
        // Packs are keyed per repository, so sizes differ a little between repositories.
        let slack = clean / 50 + (1 << 20);
        assert!(
            uploaded <= clean.saturating_sub(landed) + slack,
            "kill at {after_ms} ms: {landed} bytes had landed, a clean push uploads {clean}, the rerun uploaded {uploaded}"
        );
        let (got, _, ok, err) = agent.pull_hash(rerun["snapshot_id"].as_str().unwrap());
        assert!(ok, "{err}");
        assert_eq!(got, want);
        assert_eq!(agent.json(&["check", "--read-data"])["ok"], true);
    }
    assert!(landed_something, "no kill happened after packs had landed: the test did not test resuming");
}
