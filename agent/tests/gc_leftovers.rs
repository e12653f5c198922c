//! What a push killed with SIGKILL leaves behind is reported by `check` and removed by
//! `prune` once older than the grace period: on local disk the `name#N` staging file of the
//! pack being written (object_store writes there and renames), the killed push's marker and
//! its packs; on S3 nothing half-written at all (single-request uploads: no multipart upload
//! stays open), only the marker and whole packs, which prune removes.

use std::process::{Child, Stdio};
use std::time::Duration;

use kanister_testkit::agent::Agent;
use kanister_testkit::infra;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");

/// Starts a push of endless random data from the kernel (new data every time: data a killed
/// push stored would be deduplicated, and nothing new written).
fn endless_push(agent: &Agent) -> Child {
    let urandom = std::fs::File::open("/dev/urandom").expect("/dev/urandom opens");
    agent
        .cmd(&["push", "--json"])
        .stdin(Stdio::from(urandom))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent runs")
}

fn staging_files(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap().to_string_lossy().contains('#') {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

fn warnings(agent: &Agent) -> Vec<String> {
    let v = agent.json(&["check"]);
    v["warnings"].as_array().unwrap().iter().map(|w| format!("{} {}", w["object"], w["problem"])).collect()
}

#[test]
fn a_killed_push_leaves_nothing_after_prune_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    // A raw key: no key stretching at start, so kills land in the data path.
    let agent = Agent::new(BIN, format!("file://{}", root.display()))
        .with_env("KANISTER_REPO_KEY", "leftovers-key-0123456789abcdef");
    agent.run(&["repo", "init", "--pack-size", "32MiB"]);
    let seed: u64 = std::env::var("KANISTER_GC_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Kill pushes at random moments until one dies in the middle of writing a pack.
    let mut tries = 0;
    while staging_files(&root).is_empty() {
        tries += 1;
        assert!(tries <= 200, "no kill landed in the middle of a pack write in 200 tries (seed {seed})");
        let mut child = endless_push(&agent);
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..900)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let staged = staging_files(&root);
    eprintln!("after {tries} kill(s): {staged:?}");
    let w = warnings(&agent);
    for f in &staged {
        let key = f.strip_prefix(&format!("{}/", root.display())).unwrap();
        assert!(
            w.iter().any(|w| w.contains(key) && w.contains("leftover")),
            "check does not report the leftover {key}: {w:#?}"
        );
    }
    assert!(w.iter().any(|w| w.contains("locks/")), "check does not report the dead push's marker: {w:#?}");
    // A staging file younger than IN_FLIGHT may be an upload in progress (another prune's
    // lock, a backup's pack): no grace period removes it. The gc storm found a prune deleting
    // another prune's lock while it was written.
    let r = agent.json(&["prune", "--grace-period", "0s"]);
    assert_eq!(r["leftovers_deleted"], 0, "{r}");
    assert_eq!(staging_files(&root), staged, "a fresh staging file was removed");
    // Age the leftovers to 30 minutes: within the grace period nothing goes; after it,
    // everything the kills left.
    let aged = std::time::SystemTime::now() - Duration::from_secs(30 * 60);
    for f in &staged {
        std::fs::File::options().write(true).open(f).unwrap().set_modified(aged).unwrap();
    }
    let r = agent.json(&["prune", "--grace-period", "1h"]);
    assert_eq!(r["leftovers_deleted"], 0, "{r}");
    assert!(!staging_files(&root).is_empty());
    let r = agent.json(&["prune", "--grace-period", "0s"]);
    assert!(r["leftovers_deleted"].as_u64().unwrap() >= 1, "{r}");
    assert!(staging_files(&root).is_empty(), "leftovers remain: {:?}", staging_files(&root));
    let w = warnings(&agent);
    assert!(w.is_empty(), "check still warns after prune: {w:#?}");
    assert!(std::fs::read_dir(root.join("locks")).map_or(true, |d| d.count() == 0), "markers remain");
    // Only the repository's own objects remain: no pack (no snapshot was ever written).
    assert!(
        std::fs::read_dir(root.join("data"))
            .map_or(true, |d| d.flat_map(|e| std::fs::read_dir(e.unwrap().path()).unwrap()).count() == 0),
        "packs of the killed pushes remain"
    );
    agent.run(&["check", "--read-data"]);
}

/// Lists the multipart uploads in progress under `prefix` in the SeaweedFS bucket.
fn open_multipart_uploads(prefix: &str) -> String {
    let url = format!(
        "{}/{}?prefix={prefix}&uploads=",
        infra::var("KANISTER_TEST_S3_ENDPOINT"),
        infra::var("KANISTER_TEST_S3_BUCKET")
    );
    let out = std::process::Command::new("curl")
        .args(["-sf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{}:{}", infra::var("KANISTER_TEST_S3_ACCESS_KEY"), infra::var("KANISTER_TEST_S3_SECRET_KEY")))
        .arg(&url)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "ListMultipartUploads failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_killed_push_leaves_nothing_after_prune_on_s3() {
    let prefix = infra::unique("leftovers");
    let (url, opts) = infra::s3(&prefix);
    let agent = Agent::new(BIN, url).with_options(&opts);
    agent.init();
    let mut child = endless_push(&agent);
    // Until packs land (8 MiB each), then in the middle of the next.
    let store_has_packs = || {
        let v = agent.json(&["check"]);
        v["warnings"].as_array().unwrap().iter().any(|w| w["object"].as_str().unwrap().starts_with("data/"))
            || v["packs"].as_u64().unwrap() > 0
    };
    for _ in 0..300 {
        if store_has_packs() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(120));
    child.kill().unwrap();
    child.wait().unwrap();
    let uploads = open_multipart_uploads(&prefix);
    assert!(!uploads.contains("<Upload>"), "a killed push left a multipart upload open: {uploads}");
    assert!(!warnings(&agent).is_empty(), "check reported nothing the killed push left");
    let r = agent.json(&["prune", "--grace-period", "0s"]);
    assert!(r["packs_deleted"].as_u64().unwrap() >= 1 && r["stale_markers_removed"] == 1, "{r}");
    let v = agent.json(&["check"]);
    assert_eq!(v["warnings"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["packs"], 0, "packs of the killed push are still indexed: {v}");
}
