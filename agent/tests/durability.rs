//! A push to local disk reports success only after its packs, then its index, then its
//! snapshot are durable: each file is fsynced before it is renamed into place and its directory
//! after, and the snapshot lands after every pack and index of the push. Read off the system
//! calls of a real push (`strace -f -y`). The local index cache is not part of the repository
//! and is not fsynced (a torn cache file fails its MACs and is rebuilt): its renames are left
//! out.
//!
//! A restore, likewise, reports success only once what it wrote is on disk: a directory restore
//! ends with a `syncfs` after its last write, a pull into a file fsyncs it, renames it into
//! place and fsyncs the directory, and a pull to a redirected standard output fsyncs that file.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use kanister_testkit::agent::{Agent, PASSWORD};
use kanister_testkit::data::SqlDump;

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");

#[test]
fn packs_then_index_then_snapshot_are_fsynced_before_a_push_reports_success() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let store = format!("file://{}", repo.display());
    let agent = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.env("KANISTER_STORE", &store).env("KANISTER_REPO_PASSWORD", PASSWORD).args(args);
        c
    };
    assert!(agent(&["repo", "init", "--pack-size", "1MiB"]).status().unwrap().success());
    let input = dir.path().join("dump.sql");
    let mut f = std::fs::File::create(&input).unwrap();
    SqlDump::of_size(5, 6 << 20, 0.0).write(1, &mut f).unwrap();
    drop(f);
    let trace = dir.path().join("trace");
    // A first push of other data, so that the traced one also builds an index cache run.
    let cache = dir.path().join("cache");
    let other = dir.path().join("other.sql");
    let mut f = std::fs::File::create(&other).unwrap();
    SqlDump::of_size(5, 1 << 20, 0.0).write(2, &mut f).unwrap();
    drop(f);
    let first = agent(&["push", other.to_str().unwrap()]).env("KANISTER_CACHE_DIR", &cache).status().unwrap();
    assert!(first.success());
    let out = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o"])
        .arg(&trace)
        .arg(BIN)
        .args(["push", "--json"])
        .arg(&input)
        .env("KANISTER_STORE", &store)
        .env("KANISTER_REPO_PASSWORD", PASSWORD)
        .env("KANISTER_CACHE_DIR", &cache)
        .stdin(Stdio::null())
        .output()
        .expect("strace runs (apt-get install strace)");
    assert!(out.status.success(), "push failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = whole_calls(&std::fs::read_to_string(&trace).unwrap());
    assert!(text.contains(&*cache.to_string_lossy()), "the traced push built no index cache run:\n{text}");
    // Order of events: (index in the trace, what).
    let mut synced: HashMap<String, usize> = HashMap::new();
    let mut dir_synced: Vec<(usize, String)> = Vec::new();
    let mut landed: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let path = line.split_once('<').and_then(|(_, r)| r.split_once('>')).map(|(p, _)| p.to_string());
        if line.contains("fsync(") || line.contains("fdatasync(") {
            let p = path.unwrap_or_default();
            if std::path::Path::new(&p).is_dir() {
                dir_synced.push((i, p));
            } else {
                synced.insert(p, i);
            }
        } else if line.contains("rename") && line.contains("= 0") {
            // rename("from", "to") = 0: the object's final name.
            let parts: Vec<&str> = line.split('"').collect();
            if parts.len() >= 4 && !parts[3].starts_with(&*cache.to_string_lossy()) {
                let (from, to) = (parts[1].to_string(), parts[3].to_string());
                let fsynced_at = synced.get(&from).copied();
                assert!(
                    fsynced_at.is_some_and(|s| s < i),
                    "{to} was renamed into place before its data was fsynced:\n{text}"
                );
                landed.push((i, to));
            }
        }
    }
    let of = |folder: &str| -> Vec<usize> {
        landed.iter().filter(|(_, p)| p.contains(&format!("/{folder}/"))).map(|(i, _)| *i).collect()
    };
    let (packs, indexes, snaps) = (of("data"), of("index"), of("snapshots"));
    assert!(packs.len() >= 2, "expected several packs: {landed:?}");
    assert!(!indexes.is_empty() && snaps.len() == 1, "{landed:?}");
    let snap = snaps[0];
    assert!(packs.iter().chain(&indexes).all(|&i| i < snap), "the snapshot landed before its packs or index");
    // Each object's directory is fsynced after the rename (so the name survives a crash).
    for (i, to) in &landed {
        let parent = std::path::Path::new(to).parent().unwrap().display().to_string();
        assert!(
            dir_synced.iter().any(|(j, d)| j > i && *d == parent),
            "the directory of {to} was not fsynced after it landed"
        );
    }
}

/// A repository holding a stream snapshot and a tree snapshot; returns (store URL, stream id,
/// tree id, the tree).
fn repository_with_both(dir: &std::path::Path) -> (String, String, String, std::path::PathBuf) {
    let store = format!("file://{}", dir.join("repo").display());
    let agent = Agent::new(BIN, &store);
    agent.init();
    let dump = dir.join("dump.sql");
    let mut f = std::fs::File::create(&dump).unwrap();
    SqlDump::of_size(5, 3 << 20, 0.0).write(1, &mut f).unwrap();
    drop(f);
    let tree = dir.join("tree");
    for (i, sub) in ["a", "a/b", "c"].iter().enumerate() {
        std::fs::create_dir_all(tree.join(sub)).unwrap();
        for j in 0..5 {
            std::fs::write(tree.join(sub).join(format!("f{j}")), format!("{i}-{j}\n").repeat(3000 * (j + 1))).unwrap();
        }
    }
    std::fs::copy(&dump, tree.join("c/big.sql")).unwrap();
    let id = |v: serde_json::Value| v["snapshot_id"].as_str().unwrap().to_string();
    let stream = id(agent.json(&["push", dump.to_str().unwrap()]));
    let snap = id(agent.json(&["backup", tree.to_str().unwrap()]));
    (store, stream, snap, tree)
}

/// Runs the agent under `strace -f -y -e trace=CALLS` and returns the joined trace.
fn traced(dir: &std::path::Path, store: &str, calls: &str, args: &[&str], stdout: Stdio) -> String {
    let trace = dir.join("trace");
    let out = Command::new("strace")
        .args(["-f", "-y", "-qq", "-e", &format!("trace={calls}"), "-o"])
        .arg(&trace)
        .arg(BIN)
        .args(args)
        .env("KANISTER_STORE", store)
        .env("KANISTER_REPO_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .stdout(stdout)
        .output()
        .expect("strace runs (apt-get install strace)");
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    whole_calls(&std::fs::read_to_string(&trace).unwrap())
}

/// The path strace's `-y` shows for a call's first descriptor: `write(7</a/b>, ...` is `/a/b`.
fn fd_path(line: &str) -> Option<&str> {
    line.split_once('<').and_then(|(_, r)| r.split_once('>')).map(|(p, _)| p)
}

#[test]
fn a_directory_restore_is_on_disk_before_it_reports_success() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, snap, tree) = repository_with_both(dir.path());
    let target = dir.path().join("restored");
    let t = target.to_string_lossy().to_string();
    // stdout to a file: the report is a write to it, which the trace shows by its path.
    let report = dir.path().join("report.json");
    let text = traced(
        dir.path(),
        &store,
        "write,writev,pwrite64,pwritev,syncfs,fsync,fdatasync,sync",
        &["restore", "--json", &snap, &t],
        Stdio::from(std::fs::File::create(&report).unwrap()),
    );
    let lines: Vec<&str> = text.lines().collect();
    let last_write = lines
        .iter()
        .rposition(|l| l.contains("write") && fd_path(l).is_some_and(|p| p.starts_with(&t)))
        .unwrap_or_else(|| panic!("no write to a restored file in the trace:\n{text}"));
    let synced = lines
        .iter()
        .rposition(|l| l.contains("syncfs(") && l.ends_with("= 0") && fd_path(l).is_some_and(|p| p.starts_with(&t)))
        .unwrap_or_else(|| panic!("the restored files were never synced to disk:\n{text}"));
    assert!(synced > last_write, "a restored file was written after the last syncfs:\n{text}");
    let reported = lines
        .iter()
        .position(|l| l.contains("write") && fd_path(l) == Some(&*report.to_string_lossy()))
        .unwrap_or_else(|| panic!("no report written:\n{text}"));
    assert!(reported > synced, "the restore reported success before its files were on disk:\n{text}");
    // And it restored the tree.
    let a = std::fs::read(tree.join("c/big.sql")).unwrap();
    assert_eq!(std::fs::read(target.join("c/big.sql")).unwrap(), a);
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(stats["sync_secs"].as_f64().is_some_and(|s| s >= 0.0), "{stats}");
}

#[test]
fn a_pull_into_a_file_is_fsynced_renamed_and_its_directory_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let (store, stream, _, _) = repository_with_both(dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("dump.sql");
    let text = traced(
        dir.path(),
        &store,
        "fsync,fdatasync,rename,renameat,renameat2",
        &["pull", &stream, out.to_str().unwrap()],
        Stdio::null(),
    );
    let lines: Vec<&str> = text.lines().collect();
    let renamed = lines
        .iter()
        .position(|l| l.contains("rename") && l.contains(&*out.to_string_lossy()) && l.ends_with("= 0"))
        .unwrap_or_else(|| panic!("the output was not renamed into place:\n{text}"));
    let partial = lines[renamed].split('"').nth(1).unwrap().to_string();
    assert!(
        lines[..renamed].iter().any(|l| l.contains("fsync(") && fd_path(l) == Some(&*partial)),
        "renamed into place before its data was fsynced:\n{text}"
    );
    assert!(
        lines[renamed..].iter().any(|l| l.contains("fsync(") && fd_path(l) == Some(&*out_dir.to_string_lossy())),
        "the directory was not fsynced after the rename:\n{text}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(dir.path().join("dump.sql")).unwrap());

    // Standard output redirected to a file (`pull ID > dump.sql`): that file is fsynced.
    let redirected = dir.path().join("redirected.sql");
    let text = traced(
        dir.path(),
        &store,
        "fsync,fdatasync",
        &["pull", &stream],
        Stdio::from(std::fs::File::create(&redirected).unwrap()),
    );
    assert!(
        text.lines().any(|l| l.contains("fsync(") && fd_path(l) == Some(&*redirected.to_string_lossy())),
        "standard output's file was not fsynced:\n{text}"
    );
    assert_eq!(std::fs::read(&redirected).unwrap(), std::fs::read(dir.path().join("dump.sql")).unwrap());
}

/// strace's lines with each interrupted call joined back into one: with `-f`, a call that
/// another thread's call interrupts is written as `PID call(args <unfinished ...>` and later
/// `PID <... call resumed>rest`, and only the second half holds the result. strace pads the
/// pid to five columns, so a short pid is followed by more than one space.
fn whole_calls(text: &str) -> String {
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let (pid, rest) = line.split_once(' ').unwrap_or(("", line));
        let rest = rest.trim_start();
        if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            pending.insert(pid.to_string(), format!("{pid} {head}"));
        } else if let Some((_, tail)) = rest.split_once(" resumed>").filter(|_| rest.starts_with("<... ")) {
            let head = pending.remove(pid).unwrap_or_default();
            out.push(format!("{head}{tail}"));
        } else {
            out.push(line.to_string());
        }
    }
    out.join("\n")
}

#[test]
fn interrupted_calls_are_joined() {
    let t = "7 fsync(3</r/a> <unfinished ...>\n8 rename(\"/r/x\", \"/r/y\") = 0\n7 <... fsync resumed>) = 0";
    assert_eq!(whole_calls(t), "8 rename(\"/r/x\", \"/r/y\") = 0\n7 fsync(3</r/a> ) = 0");
    // Pids shorter than five digits are padded: `7163  fsync(...`.
    let t =
        "7163  fsync(3</r/a> <unfinished ...>\n7164  rename(\"/r/x\", \"/r/y\") = 0\n7163  <... fsync resumed>) = 0";
    assert_eq!(whole_calls(t), "7164  rename(\"/r/x\", \"/r/y\") = 0\n7163 fsync(3</r/a> ) = 0");
}
