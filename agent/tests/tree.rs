//! Volume (directory tree) backups end to end: round trips compared by a walker, incremental
//! backups, hostile snapshots, files that change or cannot be read, browsing.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kanister_testkit::agent::Agent;
use kanister_testkit::data::MixedStream;
use kanister_testkit::infra;

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");

/// Everything a restore must reproduce about one path.
#[derive(Debug, PartialEq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    size: u64,
    target: Option<PathBuf>,
    sha256: Option<String>,
    /// For hard links: the first path (in name order) of the same inode.
    link_of: Option<String>,
}

fn walk(root: &Path) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            let p = dir.join(&name);
            let r = if rel.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", name.to_string_lossy())
            };
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            let link_of =
                (ft.is_file() && m.nlink() > 1).then(|| inodes.entry(m.ino()).or_insert_with(|| r.clone()).clone());
            out.insert(
                r.clone(),
                Seen {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                    size: if ft.is_file() { m.len() } else { 0 },
                    target: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                    sha256: ft
                        .is_file()
                        .then(|| kanister_testkit::sha256_of(std::fs::File::open(&p).unwrap()).unwrap().0),
                    link_of,
                },
            );
            if ft.is_dir() {
                stack.push((p, r));
            }
        }
    }
    out
}

fn write(p: &Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The tree the issue asks for.
fn make_tree(root: &Path) {
    write(&root.join("etc/app.conf"), b"listen = 127.0.0.1\n", 0o600);
    write(&root.join("bin/run.sh"), b"#!/bin/sh\necho run\n", 0o755);
    write(&root.join("data/empty.bin"), b"", 0o644);
    let mut big = Vec::new();
    std::io::Read::read_to_end(&mut MixedStream::new(90, 100 << 20), &mut big).unwrap();
    write(&root.join("data/big.bin"), &big, 0o640);
    std::fs::create_dir_all(root.join("empty/deeper/still-empty")).unwrap();
    std::fs::create_dir_all(root.join("shared")).unwrap();
    std::fs::set_permissions(root.join("shared"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    write(&root.join("shared/notes.txt"), "ünïcödé ✓\n".as_bytes(), 0o664);
    write(&root.join("ünïcödé 名前 with spaces.txt"), b"unicode name\n", 0o644);
    let long: String = std::iter::repeat_n('ü', 127).chain(std::iter::once('x')).collect(); // 255 bytes
    write(&root.join(&long), b"long name\n", 0o644);
    std::os::unix::fs::symlink("../etc/app.conf", root.join("bin/conf-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("shared/notes.txt"), root.join("notes-hardlink.txt")).unwrap();
    // A sparse file: 64 MiB with a little data in the middle and at the end.
    let f = std::fs::File::create(root.join("data/sparse.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"middle", 32 << 20).unwrap();
    f.write_all_at(b"end", (64 << 20) - 3).unwrap();
    // One that ends in a hole (a small file, restored with its group): the length must come back.
    let f = std::fs::File::create(root.join("data/sparse-tail.img")).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.set_len(3 << 20).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    std::os::unix::fs::lchown(root.join("etc/app.conf"), Some(1234), Some(5678)).unwrap();
    // Fixed, distinct mtimes (directories last, so their times stick).
    let t = |secs: i64| nix::sys::time::TimeSpec::new(secs, 123_456_789);
    for (i, (rel, _)) in walk(root).iter().rev().enumerate() {
        let ts = t(1_700_000_000 + i as i64);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &root.join(rel),
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

fn round_trip(agent: &Agent) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    agent.init();
    let b = agent.json(&["backup", src.to_str().unwrap(), "--tag", "pvc=data"]);
    assert_eq!(b["partial"], false, "{b}");
    let dst = dir.path().join("dst");
    agent.run(&["restore", b["snapshot_id"].as_str().unwrap(), dst.to_str().unwrap()]);
    let (want, got) = (walk(&src), walk(&dst));
    assert_eq!(want.len(), got.len());
    for (rel, w) in &want {
        assert_eq!(Some(w), got.get(rel), "{rel} differs after the round trip");
    }
    let sparse = std::fs::metadata(dst.join("data/sparse.img")).unwrap();
    assert!(sparse.blocks() * 512 < (8 << 20), "the sparse file was restored dense: {} blocks", sparse.blocks());
    assert_eq!(agent.json(&["check", "--read-data"])["ok"], true);
}

#[test]
fn round_trip_file_store() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(&Agent::new(BIN, format!("file://{}/repo", dir.path().display())));
}

#[test]
fn round_trip_s3_seaweedfs() {
    let (url, opts) = infra::s3(&infra::unique("tree"));
    round_trip(&Agent::new(BIN, url).with_options(&opts));
}

#[test]
fn incremental_opens_only_changed_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for i in 0..1000 {
        write(
            &src.join(format!("d{}/f{i:04}.txt", i % 10)),
            format!("file {i}\n{}", "x".repeat(i * 7)).as_bytes(),
            0o644,
        );
    }
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    let first = agent.json(&["backup", src.to_str().unwrap()]);
    assert_eq!((first["files_read"].as_u64(), first["files_new"].as_u64()), (Some(1000), Some(1000)), "{first}");
    let mut changed_bytes = 0;
    for i in [3, 500, 999] {
        let p = src.join(format!("d{}/f{i:04}.txt", i % 10));
        let data = format!("changed {i}\n{}", "y".repeat(5000));
        changed_bytes += data.len() as u64;
        std::fs::write(p, data).unwrap();
    }
    let second = agent.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(second["parent"], first["snapshot_id"]);
    assert_eq!(second["files_read"], 3, "{second}");
    assert_eq!(second["files_reused"], 997, "{second}");
    assert_eq!(second["bytes_read"], changed_bytes, "{second}");
    assert!(second["bytes_new"].as_u64().unwrap() <= changed_bytes, "{second}");
    let d = agent.json(&["diff", first["snapshot_id"].as_str().unwrap(), second["snapshot_id"].as_str().unwrap()]);
    assert_eq!(d["changed"].as_array().unwrap().len(), 3, "{d}");
    assert_eq!(d["added"].as_array().unwrap().len() + d["removed"].as_array().unwrap().len(), 0, "{d}");
}

#[test]
fn restore_filters_keeps_unrelated_files_and_deletes_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write(&src.join("db/main.db"), b"main", 0o644);
    write(&src.join("db/main.db-wal"), b"wal", 0o644);
    write(&src.join("logs/today.log"), b"log", 0o644);
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    let id = agent.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap().to_string();

    let dst = dir.path().join("dst");
    write(&dst.join("unrelated.txt"), b"keep me", 0o644);
    agent.run(&["restore", &id, dst.to_str().unwrap(), "--include", "db/*", "--exclude", "*.db-wal"]);
    assert_eq!(std::fs::read(dst.join("db/main.db")).unwrap(), b"main");
    assert!(!dst.join("db/main.db-wal").exists() && !dst.join("logs").exists());
    assert_eq!(std::fs::read(dst.join("unrelated.txt")).unwrap(), b"keep me");

    agent.run(&["restore", &id, dst.to_str().unwrap(), "--delete"]);
    assert!(!dst.join("unrelated.txt").exists());
    assert_eq!(walk(&src), walk(&dst));

    // Browsing.
    let ls = agent.run(&["ls", &id, "db"]);
    assert_eq!(String::from_utf8_lossy(&ls.stdout), "main.db\nmain.db-wal\n");
    assert_eq!(agent.run(&["cat", &id, "logs/today.log"]).stdout, b"log");
    assert!(!agent.output(&["cat", &id, "nope.txt"]).status.success());
    // A stream command on a tree snapshot says what to do instead.
    let o = agent.output(&["pull", &id]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("restore"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn symlink_in_the_target_is_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write(&src.join("a/passwd"), b"from the snapshot", 0o644);
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    let id = agent.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap().to_string();
    let outside = dir.path().join("outside");
    write(&outside.join("passwd"), b"precious", 0o644);
    let dst = dir.path().join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("a")).unwrap();
    agent.run(&["restore", &id, dst.to_str().unwrap()]);
    assert_eq!(std::fs::read(outside.join("passwd")).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(dst.join("a")).unwrap().is_dir());
    assert_eq!(std::fs::read(dst.join("a/passwd")).unwrap(), b"from the snapshot");
}

/// Writes a snapshot whose top directory lists `name` (a file holding "evil").
async fn craft_snapshot(store: &str, name: &[u8]) -> String {
    use kanister_agent::packer::{Packer, process_chunk};
    use kanister_agent::repository::{RepoKey, Repository};
    use kanister_repo::blob::BlobKind;
    use kanister_repo::snapshot::{Root, Snapshot};
    use kanister_repo::tree::{Node, NodeKind, encode_part};
    let s = kanister_agent::store::Store::open(store, &Default::default()).unwrap();
    let key = RepoKey::Passphrase(zeroize::Zeroizing::new(kanister_testkit::agent::PASSWORD.as_bytes().to_vec()));
    let repo = Repository::at(s).open(&key).await.unwrap();
    let (dedup, _, _) = kanister_agent::packer::prepare(&repo).await.unwrap();
    let progress = kanister_agent::progress::Progress::new();
    let mut packer = Packer::new(&repo, 1, 1 << 20);
    let keys = repo.keys().clone();
    let (data, blob) = process_chunk(&keys, &dedup, BlobKind::Data, 1, b"evil").unwrap();
    packer.add(blob.unwrap(), &progress).await.unwrap();
    let node = |name: &[u8], kind, content: Vec<_>, subtree: Vec<_>| Node {
        name: name.to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 1,
        size: if content.is_empty() { 0 } else { 4 },
        link_id: None,
        target: None,
        rdev: None,
        content,
        subtree,
        changed_during_backup: false,
    };
    let part = encode_part(&[
        node(b"innocent", NodeKind::File, vec![data], vec![]),
        node(name, NodeKind::File, vec![data], vec![]),
    ]);
    let (pid, pblob) = process_chunk(&keys, &dedup, BlobKind::Tree, 1, &part).unwrap();
    packer.add(pblob.unwrap(), &progress).await.unwrap();
    packer.finish(&progress).await.unwrap();
    let snap = Snapshot {
        version: 1,
        time: "2026-01-01T00:00:00Z".into(),
        hostname: "attacker".into(),
        tags: Default::default(),
        root: Root::Tree { path: "/x".into(), dir: node(b"", NodeKind::Dir, vec![], vec![pid]) },
        size: 8,
        stats: Default::default(),
        program: "crafted".into(),
        parent: None,
    };
    repo.write_snapshot(&snap).await.unwrap().0.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn malicious_names_are_refused_and_nothing_escapes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    for evil in [&b"../evil"[..], b"a/../../evil", b"..", b"nul\0name"] {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("file://{}/repo", dir.path().display());
        let agent = Agent::new(BIN, store.clone());
        agent.init();
        let id = craft_snapshot(&store, evil).await;
        let target = dir.path().join("t/target");
        let o = agent.output(&["restore", &id, target.to_str().unwrap()]);
        assert!(!o.status.success(), "restore of {evil:?} succeeded");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("unsafe entry name"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!dir.path().join("t/evil").exists() && !dir.path().join("evil").exists());
        // Nothing outside the target at all.
        let outside: Vec<_> =
            std::fs::read_dir(dir.path().join("t")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(outside, ["target"], "{evil:?}");
    }
}

#[test]
fn growing_file_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let grow = src.join("grow.log");
    write(&grow, &vec![b'a'; 48 << 20], 0o644);
    write(&src.join("quiet.txt"), b"still", 0o644);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, grow) = (stop.clone(), grow.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(grow).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"one more line\n").unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    let b = agent.json(&["backup", src.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(b["changed"], serde_json::json!(["grow.log"]), "{b}");
    assert_eq!(b["partial"], false);
}

#[test]
fn unreadable_file_makes_the_snapshot_partial() {
    // Root reads everything: run the agent as an unprivileged user where needed.
    let as_root = nix::unistd::geteuid().is_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let src = dir.path().join("src");
    write(&src.join("ok.txt"), b"fine", 0o644);
    write(&src.join("secret.key"), b"no", 0o000);
    std::fs::create_dir_all(dir.path().join("repo")).unwrap();
    std::fs::set_permissions(dir.path().join("repo"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    let run = |args: &[&str]| {
        let mut c = agent.cmd(args);
        if as_root {
            let program = c.get_program().to_owned();
            let mut r = std::process::Command::new("runuser");
            r.args(["-u", "nobody", "--"]).arg(program).args(c.get_args());
            for (k, v) in c.get_envs() {
                if let Some(v) = v {
                    r.env(k, v);
                }
            }
            c = r;
        }
        c.output().unwrap()
    };
    assert!(run(&["repo", "init"]).status.success());
    let o = run(&["backup", "--json", src.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "a partial backup must exit 3: {}", String::from_utf8_lossy(&o.stderr));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(b["partial"], true);
    let errors = b["errors"].to_string();
    assert!(errors.contains("secret.key") && errors.contains("ermission denied"), "{b}");
    assert_eq!(b["files_read"], 1, "{b}");
}

#[test]
fn a_large_restored_file_leaves_little_of_itself_in_the_page_cache() {
    // A database's data file is written back while the restore goes on and its pages are
    // dropped once clean, so a restore larger than the pod's memory does not fill the page
    // cache (and the pod's memory limit) with it. `fincore` (util-linux) counts resident pages.
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.run(&["repo", "init"]);
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let data = src.join("ibdata1");
    std::io::copy(&mut MixedStream::new(9, 160 << 20), &mut std::fs::File::create(&data).unwrap()).unwrap();
    let b = agent.json(&["backup", src.to_str().unwrap()]);
    let dst = dir.path().join("dst");
    agent.run(&["restore", b["snapshot_id"].as_str().unwrap(), dst.to_str().unwrap()]);
    let restored = dst.join("ibdata1");
    let (resident, size) = kanister_testkit::page_cache(&[&restored])[0];
    assert_eq!(size, 160 << 20);
    assert!(resident <= size / 2, "{resident} of the restored file's {size} bytes are still in the page cache");
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&data).unwrap(), "the restored file differs");
}
