//! Damaged repositories: every kind of damage is named by `check`, with the snapshots it
//! harms, and `pull` fails clearly without ever writing wrong bytes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kanister_testkit::agent::Agent;
use kanister_testkit::data::MixedStream;

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");
const LEN: u64 = 24 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    agent: Agent,
    /// Snapshot A and the packs only it uses.
    a: String,
    a_packs: Vec<PathBuf>,
    /// Snapshot B (different data).
    b: String,
}

fn files(p: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path())
            } else {
                out.insert(e.path());
            }
        }
    }
    out
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let agent = Agent::new(BIN, format!("file://{}", root.display()));
    agent.init();
    let a = agent.push(&["--tag", "n=a"], MixedStream::new(40, LEN))["snapshot_id"].as_str().unwrap().to_string();
    let a_packs: Vec<PathBuf> = files(&root.join("data")).into_iter().collect();
    let b = agent.push(&["--tag", "n=b"], MixedStream::new(41, LEN))["snapshot_id"].as_str().unwrap().to_string();
    assert!(a_packs.len() >= 2);
    Fixture { _dir: dir, root, agent, a, a_packs, b }
}

fn check_fails(f: &Fixture, read_data: bool) -> serde_json::Value {
    let mut args = vec!["check", "--json"];
    if read_data {
        args.push("--read-data");
    }
    let o = f.agent.output(&args);
    assert_eq!(o.status.code(), Some(3), "check must exit 3 on damage: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn rel(f: &Fixture, p: &Path) -> String {
    p.strip_prefix(&f.root).unwrap().to_str().unwrap().to_string()
}

/// The error about `object` names snapshot A and not B.
fn assert_names(report: &serde_json::Value, object: &str, a: &str, b: &str) {
    let errs = report["errors"].as_array().unwrap();
    let e = errs.iter().find(|e| e["object"] == object).unwrap_or_else(|| panic!("{object} not named: {report}"));
    let snaps: Vec<&str> = e["snapshots"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(snaps.contains(&&a[..8]), "{report}");
    assert!(!snaps.contains(&&b[..8]), "{report}");
}

/// Pulling A into a file fails with a clear error and leaves no file; B still restores.
fn assert_pull_a_fails_b_works(f: &Fixture, want_in_err: &[&str]) {
    let out = f.root.parent().unwrap().join("restored.sql");
    let o = f.agent.output(&["pull", &f.a, out.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(want_in_err.iter().any(|w| err.contains(w)), "unclear error: {err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(!out.exists(), "a failed pull left a file behind");
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    let (got, _, ok, err) = f.agent.pull_hash(&f.b);
    assert!(ok, "{err}");
    assert_eq!(got, kanister_testkit::sha256_of(MixedStream::new(41, LEN)).unwrap().0);
}

#[test]
fn deleted_pack() {
    let f = fixture();
    let victim = f.a_packs[0].clone();
    std::fs::remove_file(&victim).unwrap();
    let r = check_fails(&f, false);
    assert_names(&r, &rel(&f, &victim), &f.a, &f.b);
    assert!(r.to_string().contains("missing"), "{r}");
    assert_pull_a_fails_b_works(&f, &["does not exist", "missing"]);
}

#[test]
fn truncated_pack() {
    let f = fixture();
    let victim = f.a_packs[1].clone();
    let len = std::fs::metadata(&victim).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&victim).unwrap().set_len(len / 2).unwrap();
    let r = check_fails(&f, false);
    assert_names(&r, &rel(&f, &victim), &f.a, &f.b);
    assert!(r.to_string().contains("truncated"), "{r}");
    assert_pull_a_fails_b_works(&f, &["short read", "truncated", "damaged", "out of range", "failed"]);
}

#[test]
fn flipped_byte_in_a_pack() {
    let f = fixture();
    let victim = f.a_packs[0].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&victim, &bytes).unwrap();
    let r = check_fails(&f, true);
    assert_names(&r, &rel(&f, &victim), &f.a, &f.b);
    assert_pull_a_fails_b_works(&f, &["damaged", "decrypt"]);
    // To stdout, what was written before the damaged blob is a correct prefix: never a wrong byte.
    let o = f.agent.output(&["pull", &f.a, "-"]);
    assert!(!o.status.success());
    let mut want = Vec::new();
    std::io::Read::read_to_end(&mut MixedStream::new(40, LEN), &mut want).unwrap();
    assert!(o.stdout.len() < want.len());
    assert!(want.starts_with(&o.stdout), "pull wrote bytes that differ from the original");
}

#[test]
fn dropped_index_then_repair() {
    let f = fixture();
    for p in files(&f.root.join("index")) {
        std::fs::remove_file(p).unwrap();
    }
    let r = check_fails(&f, false);
    let text = r.to_string();
    assert!(text.contains(&format!("snapshots/{}", f.a)) && text.contains(&format!("snapshots/{}", f.b)), "{r}");
    assert!(r["warnings"].as_array().unwrap().iter().any(|w| w["problem"].as_str().unwrap().contains("in no index")));
    let o = f.agent.output(&["pull", &f.a, "-"]);
    assert!(!o.status.success() && o.stdout.is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("in no index"));
    // The packs' trailers hold everything needed to rebuild the index.
    let fixed = f.agent.json(&["repo", "repair-index"]);
    assert!(fixed["packs_indexed"].as_u64().unwrap() >= 2, "{fixed}");
    assert_eq!(f.agent.json(&["check", "--read-data"])["ok"], true);
    let (got, _, ok, _) = f.agent.pull_hash(&f.a);
    assert!(ok);
    assert_eq!(got, kanister_testkit::sha256_of(MixedStream::new(40, LEN)).unwrap().0);
}

#[test]
fn damaged_index_and_snapshot_objects_are_named() {
    let f = fixture();
    let index = files(&f.root.join("index")).into_iter().next().unwrap();
    let mut b = std::fs::read(&index).unwrap();
    b[10] ^= 1;
    std::fs::write(&index, b).unwrap();
    let snap = f.root.join("snapshots").join(&f.b);
    let mut s = std::fs::read(&snap).unwrap();
    let n = s.len() - 5;
    s[n] ^= 1;
    std::fs::write(&snap, s).unwrap();
    let r = check_fails(&f, false);
    let objects: Vec<&str> = r["errors"].as_array().unwrap().iter().map(|e| e["object"].as_str().unwrap()).collect();
    assert!(objects.contains(&rel(&f, &index).as_str()), "{r}");
    assert!(objects.contains(&format!("snapshots/{}", f.b).as_str()), "{r}");
}

/// A key slot asking for absurd Argon2 costs (written by anyone who can write the bucket) is
/// refused fast with an error naming it, instead of aborting the agent (m_cost = 4294967295:
/// a 4 TiB allocation, exit 134) or hanging it (t_cost = 4294967295); another slot still opens
/// the repository.
#[test]
fn hostile_key_slot_costs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let agent = Agent::new(BIN, format!("file://{}", root.display()));
    agent.init();
    let slot_path = files(&root.join("keys")).into_iter().next().unwrap();
    let original = std::fs::read_to_string(&slot_path).unwrap();
    for (field, value) in [("m_cost", u32::MAX), ("t_cost", u32::MAX), ("p_cost", u32::MAX)] {
        let mut slot: serde_json::Value = serde_json::from_str(&original).unwrap();
        slot["kdf"][field] = serde_json::json!(value);
        std::fs::write(&slot_path, serde_json::to_vec(&slot).unwrap()).unwrap();
        let started = std::time::Instant::now();
        let o = agent.output(&["snapshots"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{field}: the agent did not fail cleanly ({}): {err}", o.status);
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{field}: took {:?}", started.elapsed());
        let id = slot_path.file_name().unwrap().to_string_lossy();
        assert!(err.contains(&id[..8]) && err.contains(field), "{field}: {err}");
    }
    // A hostile extra slot beside the real one: the repository still opens.
    std::fs::write(&slot_path, &original).unwrap();
    let mut hostile: serde_json::Value = serde_json::from_str(&original).unwrap();
    hostile["kdf"]["m_cost"] = serde_json::json!(u32::MAX);
    std::fs::write(
        root.join("keys/0000000000000000000000000000000000000000000000000000000000000000"),
        hostile.to_string(),
    )
    .unwrap();
    agent.run(&["snapshots"]);
}

/// Errors say what is wrong and only what helps: one line per distinct cause; a truncated pack
/// is damage (not "check the endpoint and credentials"); a repository whose keys/ was deleted
/// is damaged, never "no repository ... run repo init", which would invite destroying it.
#[test]
fn errors_name_the_cause_and_a_damaged_repository_is_never_called_absent() {
    let f = fixture();
    // Truncated pack.
    let pack = &f.a_packs[0];
    let len = std::fs::metadata(pack).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(pack).unwrap();
    file.set_len(len / 2).unwrap();
    let o = f.agent.output(&["pull", &f.a, "/dev/null"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("truncated") && err.contains("check --read-data"), "{err}");
    assert!(!err.contains("credentials") && !err.contains("endpoint"), "a misleading hint: {err}");
    assert!(err.lines().count() <= 2, "more than the error and its hint:\n{err}");
    // keys/ deleted.
    std::fs::remove_dir_all(f.root.join("keys")).unwrap();
    for args in [&["snapshots"][..], &["push", "--json"][..]] {
        let o = f.agent.output(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains("no key slot") && err.contains("do NOT run `repo init`"), "{args:?}: {err}");
        assert!(!err.contains("create a repository"), "{args:?}: {err}");
    }
    // Invalid parameters get no "damaged repository" hint.
    let dir = tempfile::tempdir().unwrap();
    let o =
        Agent::new(BIN, format!("file://{}/r", dir.path().display())).output(&["repo", "init", "--pack-size", "1KiB"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pack size") && !err.contains("check --read-data"), "{err}");
}
