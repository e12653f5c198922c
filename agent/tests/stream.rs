//! Stream backups end to end through the `kanister-agent` binary, on every kind of store.

use kanister_testkit::agent::Agent;
use kanister_testkit::data::{MixedStream, SqlDump};
use kanister_testkit::infra;

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");
const BIG: u64 = 256 << 20;

fn round_trip(agent: &Agent, seed: u64, len: u64) {
    agent.init();
    let (want, n) = kanister_testkit::sha256_of(MixedStream::new(seed, len)).unwrap();
    let push = agent.push(&["--tag", "kind=mixed"], MixedStream::new(seed, len));
    assert_eq!(push["bytes_read"], n, "{push}");
    assert!(push["bytes_uploaded"].as_u64().unwrap() > 0);
    let id = push["snapshot_id"].as_str().unwrap().to_string();
    let (got, m, ok, err) = agent.pull_hash(&id[..12]);
    assert!(ok, "pull failed: {err}");
    assert_eq!((got, m), (want, n), "pulled bytes differ from pushed bytes");
    let check = agent.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
}

#[test]
fn round_trip_256_mib_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    round_trip(&agent, 1, BIG);
}

#[test]
fn round_trip_256_mib_s3_seaweedfs() {
    let (url, opts) = infra::s3(&infra::unique("rt"));
    round_trip(&Agent::new(BIN, url).with_options(&opts), 2, BIG);
}

#[test]
fn s3_credentials_from_a_file_and_wrong_credentials_fail_clearly() {
    let (url, opts) = infra::s3(&infra::unique("cred"));
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("s3.env");
    // The shape of a mounted Secret: key=value lines.
    let (keys, rest): (Vec<_>, Vec<_>) = opts.into_iter().partition(|o| o.starts_with("aws_"));
    std::fs::write(&creds, keys.join("\n")).unwrap();
    let agent = Agent::new(BIN, url.clone())
        .with_options(&rest)
        .with_env("KANISTER_STORE_CREDENTIALS", creds.to_str().unwrap());
    round_trip(&agent, 3, 8 << 20);

    std::fs::write(&creds, "aws_access_key_id=testkey\naws_secret_access_key=wrong-secret\n").unwrap();
    let o = agent.output(&["snapshots"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error:") && err.contains("hint:"), "{err}");
    assert!(!err.contains("wrong-secret"), "a secret leaked into the error: {err}");
}

#[test]
fn round_trip_256_mib_azurite() {
    let (url, opts) = infra::azure(&infra::unique("rt"));
    round_trip(&Agent::new(BIN, url).with_options(&opts), 4, BIG);
}

#[test]
fn gcs_read_path_through_fake_gcs_server() {
    // object_store writes GCS through the XML API, which fake-gcs-server lacks: build the
    // repository on disk, upload its objects with the JSON API, then read it as gs://.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let local = Agent::new(BIN, format!("file://{}", root.display()));
    local.init();
    let len = 32 << 20;
    let (want, _) = kanister_testkit::sha256_of(MixedStream::new(5, len)).unwrap();
    let id = local.push(&[], MixedStream::new(5, len))["snapshot_id"].as_str().unwrap().to_string();
    let prefix = infra::unique("gcs");
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&root).unwrap().to_str().unwrap();
                infra::gcs_upload(&format!("{prefix}/{rel}"), &p);
            }
        }
    }
    let (url, opts) = infra::gcs(&prefix);
    let gcs = Agent::new(BIN, url).with_options(&opts);
    let snaps = gcs.json(&["snapshots"]);
    assert_eq!(snaps["snapshots"][0]["id"], id.as_str(), "{snaps}");
    let (got, _, ok, err) = gcs.pull_hash(&id);
    assert!(ok, "{err}");
    assert_eq!(got, want);
    assert_eq!(gcs.json(&["check", "--read-data"])["ok"], true);
}

#[test]
fn changed_dump_stores_at_most_a_quarter_of_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    let dump = SqlDump::of_size(11, 64 << 20, 0.03);
    let version = |v: u32| {
        let mut b = Vec::new();
        dump.write(v, &mut b).unwrap();
        std::io::Cursor::new(b)
    };
    let first = agent.push(&["--tag", "db=shop"], version(1));
    let second = agent.push(&["--tag", "db=shop"], version(2));
    let (a, b) = (first["bytes_uploaded"].as_u64().unwrap(), second["bytes_uploaded"].as_u64().unwrap());
    assert!(b * 4 <= a, "second push uploaded {b} bytes, first {a}: more than a quarter");
    assert!(second["dedup_ratio"].as_f64().unwrap() > 0.75, "{second}");
    // And it restores exactly.
    let (want, _) = kanister_testkit::sha256_of(version(2)).unwrap();
    let (got, _, ok, err) = agent.pull_hash(second["snapshot_id"].as_str().unwrap());
    assert!(ok, "{err}");
    assert_eq!(got, want);
    // Listing by tag finds both, newest last.
    let list = agent.json(&["snapshots", "--tag", "db=shop"]);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2);
    assert_eq!(agent.json(&["snapshots", "--tag", "db=other"])["snapshots"].as_array().unwrap().len(), 0);
}

#[test]
fn failing_exec_command_writes_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    let o = agent.output(&["push", "--exec", "sh", "-c", "head -c 3000000 /dev/urandom; exit 7"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("exited with status 7") && err.contains("no snapshot was written"), "{err}");
    assert_eq!(agent.json(&["snapshots"])["snapshots"].as_array().unwrap().len(), 0);
    // A successful command works, and the repository's password is not in its environment.
    let ok = agent.json(&["push", "--exec", "sh", "-c", "echo pw=${KANISTER_REPO_PASSWORD:-unset}"]);
    let (_, n, pulled, _) = agent.pull_hash(ok["snapshot_id"].as_str().unwrap());
    assert!(pulled);
    assert_eq!(n, "pw=unset\n".len() as u64);
    assert_eq!(agent.json(&["check"])["ok"], true);
}

#[test]
fn key_handling_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}/repo", dir.path().display());
    let agent = Agent::new(BIN, store.clone());
    // Nothing there yet.
    let o = agent.output(&["snapshots"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no repository at"), "{}", String::from_utf8_lossy(&o.stderr));
    agent.init();
    // A second init refuses.
    let o = agent.output(&["repo", "init"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("already exists"));
    // Wrong passphrase.
    let wrong = agent.clone().with_env("KANISTER_REPO_PASSWORD", "not it");
    let o = wrong.output(&["snapshots"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("wrong passphrase"), "{err}");
    assert!(!err.contains("not it"), "the passphrase leaked: {err}");
    // No passphrase at all: no default key.
    let mut c = agent.cmd(&["snapshots"]);
    c.env_remove("KANISTER_REPO_PASSWORD");
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("KANISTER_REPO_PASSWORD"), "{err}");
    // A key-file repository opens with the file, not with a passphrase.
    let kf = dir.path().join("key");
    std::fs::write(&kf, "0123456789abcdef0123456789abcdef\n").unwrap();
    let kagent = Agent::new(BIN, format!("file://{}/krepo", dir.path().display()))
        .with_env("KANISTER_REPO_KEY_FILE", kf.to_str().unwrap());
    kagent.init();
    let id = kagent.push(&[], std::io::Cursor::new(b"hello".to_vec()))["snapshot_id"].as_str().unwrap().to_string();
    let (_, n, ok, _) = kagent.pull_hash(&id);
    assert!(ok && n == 5);
    // A bad URL names the problem.
    let o = Agent::new(BIN, "ftp://x/y").output(&["snapshots"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown scheme"));
}

#[test]
fn forget_and_prune_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    let a = agent.push(&[], MixedStream::new(20, 24 << 20));
    let b = agent.push(&[], MixedStream::new(21, 24 << 20));
    let size = |p: &std::path::Path| -> u64 {
        let mut t = 0;
        let mut st = vec![p.to_path_buf()];
        while let Some(d) = st.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() { st.push(e.path()) } else { t += e.metadata().unwrap().len() }
            }
        }
        t
    };
    let before = size(&dir.path().join("repo/data"));
    agent.run(&["forget", &a["snapshot_id"].as_str().unwrap()[..10]]);
    let r = agent.json(&["prune", "--grace-period", "0s"]);
    assert!(r["packs_deleted"].as_u64().unwrap() > 0, "{r}");
    let after = size(&dir.path().join("repo/data"));
    assert!(after < before * 6 / 10, "prune freed too little: {before} -> {after}");
    assert_eq!(agent.json(&["check", "--read-data"])["ok"], true);
    let (want, _) = kanister_testkit::sha256_of(MixedStream::new(21, 24 << 20)).unwrap();
    assert_eq!(agent.pull_hash(b["snapshot_id"].as_str().unwrap()).0, want);
    // With a grace period, unused packs wait.
    let c = agent.push(&[], MixedStream::new(22, 8 << 20));
    agent.run(&["forget", c["snapshot_id"].as_str().unwrap()]);
    let r = agent.json(&["prune"]);
    assert_eq!(r["packs_deleted"], 0, "{r}");
    assert!(r["packs_waiting"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(agent.json(&["check", "--read-data"])["ok"], true);
}

/// Peak RSS of `push` for a stream of `len` bytes (via /usr/bin/time, installed by tests/infra.sh).
fn push_peak_rss_kib(agent: &Agent, seed: u64, len: u64) -> u64 {
    let mut c = agent.cmd(&["push"]);
    let program = c.get_program().to_owned();
    let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
    let mut timed = std::process::Command::new("/usr/bin/time");
    timed.arg("-f").arg("MAXRSS=%M").arg(program).args(args);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    c = timed;
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || std::io::copy(&mut MixedStream::new(seed, len), &mut stdin).unwrap());
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    err.lines()
        .find_map(|l| l.strip_prefix("MAXRSS="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS in {err}"))
}

#[test]
fn peak_memory_does_not_grow_with_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    let small = push_peak_rss_kib(&agent, 70, 32 << 20);
    let large = push_peak_rss_kib(&agent, 71, 512 << 20);
    // Sixteen times the data may not cost more than a few buffers more memory.
    assert!(large <= small + 24 * 1024, "peak RSS grew from {small} KiB (32 MiB) to {large} KiB (512 MiB)");
}

/// No secret leaks: a store URL carrying a credential in its query is never printed whole when
/// the store cannot be built, and the command of `push --exec` inherits none of the agent's
/// secrets (repository key or passphrase, store credentials of any provider).
#[test]
fn secrets_reach_neither_errors_nor_the_dump_command() {
    const SECRET: &str = "sEcReT-9f8e7d6c5b4a";
    let dir = tempfile::tempdir().unwrap();
    for url in [
        format!("s3://b/x?aws_secret_access_key={SECRET}&no_such_setting=1"),
        format!("az://c/x?azure_storage_account_key={SECRET}&no_such_setting=1"),
        format!("gs://b/x?google_service_account_key={SECRET}&no_such_setting=1"),
        format!("s3://user:{SECRET}@b/x"),
        format!("s3:/b/x?aws_secret_access_key={SECRET}"),
        format!("nosuch://b/x?aws_secret_access_key={SECRET}"),
    ] {
        let o = Agent::new(BIN, url.clone()).output(&["snapshots"]);
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(!o.status.success(), "{url}: {all}");
        assert!(!all.contains(SECRET), "{url}: the secret is in the output:\n{all}");
    }
    let agent = Agent::new(BIN, format!("file://{}", dir.path().join("repo").display()))
        .with_env("KANISTER_REPO_KEY", "kanister-repo-key-0123456789abcdef")
        .with_env("AWS_SECRET_ACCESS_KEY", SECRET)
        .with_env("AWS_SESSION_TOKEN", SECRET)
        .with_env("AZURE_STORAGE_ACCOUNT_KEY", SECRET)
        .with_env("GOOGLE_SERVICE_ACCOUNT_KEY", SECRET);
    agent.run(&["repo", "init"]);
    let out = agent.json(&["push", "--exec", "env"]);
    let id = out["snapshot_id"].as_str().unwrap().to_string();
    let pulled = agent.cmd(&["pull", &id, "-"]).output().unwrap();
    let env = String::from_utf8_lossy(&pulled.stdout);
    assert!(env.contains("PATH="), "the command saw no environment at all: {env}");
    for secret in [SECRET, "kanister-repo-key-0123456789abcdef", kanister_testkit::agent::PASSWORD] {
        assert!(!env.contains(secret), "the dump command inherited a secret:\n{env}");
    }
}

/// A store endpoint that never answers fails in about 30 seconds (it hung for 181 s, silently),
/// with a message naming the endpoint; the budget is a store setting.
#[test]
fn a_dead_endpoint_fails_in_about_thirty_seconds_and_names_itself() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming() {
            held.push(s);
        }
    });
    let opts = |extra: &[&str]| {
        let mut o = vec![
            format!("endpoint=http://127.0.0.1:{port}"),
            "region=us-east-1".to_string(),
            "aws_access_key_id=k".to_string(),
            "aws_secret_access_key=s".to_string(),
        ];
        o.extend(extra.iter().map(|s| s.to_string()));
        o
    };
    let started = std::time::Instant::now();
    let o = Agent::new(BIN, "s3://b/x").with_options(&opts(&[])).output(&["snapshots"]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        took >= std::time::Duration::from_secs(15) && took <= std::time::Duration::from_secs(75),
        "took {took:?}: {err}"
    );
    assert!(err.contains(&format!("127.0.0.1:{port}")), "the error does not name the endpoint: {err}");
    assert!(err.contains("backing off") && err.contains("retry 1 of"), "no word of the retries while waiting: {err}");
    // A shorter budget, per store.
    let started = std::time::Instant::now();
    let o = Agent::new(BIN, "s3://b/x")
        .with_options(&opts(&["retry_timeout=1s", "read_timeout=1s"]))
        .output(&["snapshots"]);
    assert!(!o.status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
    let o = Agent::new(BIN, "s3://b/x").with_options(&opts(&["retry_timeout=soon"])).output(&["snapshots"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("retry_timeout"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A dump command that dies after writing part of its output never leaves a snapshot that
/// looks complete: exit 1, SIGKILL and SIGTERM halfway all fail the push, and the repository
/// holds no snapshot afterwards.
#[test]
fn a_dump_that_dies_halfway_leaves_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}", dir.path().join("repo").display()));
    agent.init();
    for (how, script) in [
        ("exit 1", "head -c 3000000 /dev/urandom; exit 1"),
        ("SIGKILL", "head -c 3000000 /dev/urandom; kill -9 $$"),
        ("SIGTERM", "head -c 3000000 /dev/urandom; kill -TERM $$"),
        ("SIGABRT", "head -c 3000000 /dev/urandom; kill -ABRT $$"),
    ] {
        let o = agent.output(&["push", "--json", "--exec", "sh", "-c", script]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{how}: the push succeeded: {}", String::from_utf8_lossy(&o.stdout));
        assert!(err.contains("no snapshot was written"), "{how}: {err}");
        let snaps = agent.json(&["snapshots"]);
        assert_eq!(snaps["snapshots"].as_array().map(Vec::len), Some(0), "{how}: {snaps}");
    }
}

/// A dump cut off where nothing reports it (a shell pipeline without pipefail ends with the
/// status of its last command): the stream lacks the dump tool's end line, so the push fails
/// and writes no snapshot. A complete dump is recorded as such in the snapshot's tags.
#[test]
fn a_dump_cut_off_without_an_error_is_refused_and_a_whole_one_is_tagged() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}", dir.path().join("repo").display()));
    agent.init();
    let dump = "printf -- '-- MariaDB dump 10.19\\n--\\n'; for i in $(seq 1 3000); do echo \"INSERT INTO t VALUES ($i);\"; done";
    let end = "echo '-- Dump completed on 2026-12-03'";
    for (how, script, tool) in [
        ("plain", format!("{{ {dump}; {end}; }} | head -c 20000"), "mysqldump"),
        ("gzip", format!("{{ {dump}; {end}; }} | head -c 20000 | gzip"), "mysqldump"),
        ("pg_dump", "printf -- '--\\n-- PostgreSQL database dump\\n--\\n'; seq 1 5000".to_string(), "pg_dump"),
    ] {
        let o = agent.output(&["push", "--json", "--exec", "sh", "-c", &script]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{how}: the push of a cut dump succeeded");
        assert!(
            err.contains(&format!("the input is a {tool} dump")) && err.contains("nothing was stored"),
            "{how}: {err}"
        );
        let snaps = agent.json(&["snapshots"]);
        assert_eq!(snaps["snapshots"].as_array().map(Vec::len), Some(0), "{how}: {snaps}");
    }
    // Asked to, it stores one, recorded as incomplete.
    let cut = format!("{{ {dump}; {end}; }} | head -c 20000");
    let accepted = agent.json(&["push", "--accept-incomplete-dump", "--exec", "sh", "-c", &cut]);
    let accepted = accepted["snapshot_id"].as_str().unwrap().to_string();
    let whole = agent.json(&["push", "--exec", "sh", "-c", &format!("{{ {dump}; {end}; }} | gzip")]);
    let id = whole["snapshot_id"].as_str().unwrap().to_string();
    let other = agent.json(&["push", "--exec", "sh", "-c", "seq 1 1000"]);
    let snaps = agent.json(&["snapshots"]);
    let tag = |id: &str| {
        let s = snaps["snapshots"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap();
        s["tags"]["input"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(tag(&id), "complete:mysqldump", "{snaps}");
    assert_eq!(tag(&accepted), "incomplete:mysqldump", "{snaps}");
    assert_eq!(tag(other["snapshot_id"].as_str().unwrap()), "unverified", "{snaps}");
}

#[test]
fn a_pull_into_a_named_pipe_writes_through_it() {
    // A FIFO (or `/dev/stdout`) at the output path cannot be written beside and renamed over:
    // it is written as it is, and the reader at its other end gets the whole stream.
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    let dump = dir.path().join("dump.sql");
    SqlDump::of_size(3, 4 << 20, 0.0).write(1, &mut std::fs::File::create(&dump).unwrap()).unwrap();
    let (want, n) = kanister_testkit::sha256_of(std::fs::File::open(&dump).unwrap()).unwrap();
    let id = agent.push(&[], std::fs::File::open(&dump).unwrap())["snapshot_id"].as_str().unwrap().to_string();
    let fifo = dir.path().join("restore.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let fifo = fifo.clone();
        std::thread::spawn(move || tx.send(kanister_testkit::sha256_of(std::fs::File::open(fifo).unwrap()).unwrap()));
    }
    let o = agent.output(&["pull", &id, fifo.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A reader still waiting long after the pull ended was never written to.
    let got = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the pipe's reader got nothing");
    assert_eq!(got, (want, n));
    // Nothing was left beside it, and the FIFO is still one.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains("partial")), "{left:?}");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_pull_to_dev_stdout_writes_through_the_redirect_and_a_symlink_is_kept() {
    // `pull ID /dev/stdout > FILE` (and `>>`): the dump goes through descriptor 1 into FILE,
    // with the report on standard error; `/dev/stdout` is never replaced by a renamed file.
    // A symlink at the output path stays a link, and the file it leads to gets the dump.
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    let mut dump = Vec::new();
    SqlDump::of_size(5, 3 << 20, 0.0).write(1, &mut dump).unwrap();
    let id = agent.push(&[], std::io::Cursor::new(dump.clone()))["snapshot_id"].as_str().unwrap().to_string();

    for name in ["/dev/stdout", "/dev/fd/1", "-"] {
        let out = dir.path().join("out.sql");
        let o = agent.cmd(&["pull", &id, name]).stdout(std::fs::File::create(&out).unwrap()).output().unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::read(&out).unwrap() == dump, "{name}: the redirected file is not the dump");
    }
    // `>>` appends after what the file held.
    let out = dir.path().join("appended.sql");
    std::fs::write(&out, b"-- before\n").unwrap();
    let append = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
    let o = agent.cmd(&["pull", &id, "/dev/stdout"]).stdout(append).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = std::fs::read(&out).unwrap();
    assert!(got.starts_with(b"-- before\n") && got[10..] == dump[..], "appending to a file through /dev/stdout");
    // A link to `/dev/stdout` is standard output too: the redirected file itself gets the
    // dump (the same inode, not one renamed over it).
    let link = dir.path().join("to-stdout");
    std::os::unix::fs::symlink("/dev/stdout", &link).unwrap();
    let out = dir.path().join("through-link.sql");
    let redirect = std::fs::File::create(&out).unwrap();
    use std::os::unix::fs::MetadataExt;
    let inode = redirect.metadata().unwrap().ino();
    let o = agent.cmd(&["pull", &id, link.to_str().unwrap()]).stdout(redirect).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == dump && std::fs::metadata(&out).unwrap().ino() == inode);
    // `/dev/stderr`: its redirected file gets the dump (with whatever the agent said there).
    let out = dir.path().join("stderr.sql");
    let o = agent.cmd(&["pull", &id, "/dev/stderr"]).stderr(std::fs::File::create(&out).unwrap()).output().unwrap();
    assert!(o.status.success());
    let got = std::fs::read(&out).unwrap();
    assert!(got.windows(dump.len()).any(|w| w == dump), "the dump is not in the file behind /dev/stderr");
    for name in ["/dev/stdout", "/dev/stderr"] {
        assert!(std::fs::symlink_metadata(name).unwrap().file_type().is_symlink(), "{name} was replaced");
    }

    // A link to an existing file, and a link to a file not written yet.
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("old.sql"), b"an older restore").unwrap();
    for (link, to) in [("old.sql", "real/old.sql"), ("new.sql", "real/new.sql")] {
        let link = dir.path().join(link);
        std::os::unix::fs::symlink(to, &link).unwrap();
        let o = agent.output(&["pull", &id, link.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", link.display(), String::from_utf8_lossy(&o.stderr));
        assert!(
            std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(),
            "{}: the link was replaced",
            link.display()
        );
        assert!(std::fs::read(dir.path().join(to)).unwrap() == dump, "{to}: not the dump");
    }
    let left: Vec<_> = std::fs::read_dir(&real).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn a_push_to_local_disk_leaves_its_packs_out_of_the_page_cache() {
    // A backup never reads its packs back: once fsynced, their pages are dropped rather than
    // crowding out the database's cache (and the pod's memory limit). `fincore` (util-linux)
    // counts a file's resident pages.
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.run(&["repo", "init", "--pack-size", "1MiB"]);
    let dump = dir.path().join("dump.sql");
    SqlDump::of_size(4, 24 << 20, 0.0).write(1, &mut std::fs::File::create(&dump).unwrap()).unwrap();
    agent.push(&[], std::fs::File::open(&dump).unwrap());
    let packs = kanister_testkit::files_under(&dir.path().join("repo/data"));
    assert!(packs.len() >= 2, "{packs:?}");
    let counts = kanister_testkit::page_cache(&packs);
    let resident: u64 = counts.iter().map(|(resident, _)| resident).sum();
    assert_eq!(resident, 0, "pack pages still in the page cache: {:?}", packs.iter().zip(&counts).collect::<Vec<_>>());
}

#[test]
fn a_pull_into_a_file_leaves_little_of_it_in_the_page_cache() {
    // A restored file is written back while the restore goes on, and its pages are dropped
    // once clean: restoring a database larger than the pod's memory does not fill the page
    // cache (and the pod's memory limit) with it.
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.run(&["repo", "init"]);
    let dump = dir.path().join("dump.sql");
    SqlDump::of_size(4, 160 << 20, 0.0).write(1, &mut std::fs::File::create(&dump).unwrap()).unwrap();
    let id = agent.push(&[], std::fs::File::open(&dump).unwrap())["snapshot_id"].as_str().unwrap().to_string();
    let out = dir.path().join("restored.sql");
    agent.run(&["pull", &id, out.to_str().unwrap()]);
    let (resident, size) = kanister_testkit::page_cache(&[&out])[0];
    assert_eq!(size, std::fs::metadata(&dump).unwrap().len());
    assert!(resident <= size / 2, "{resident} of the restored file's {size} bytes are still in the page cache");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&dump).unwrap(), "the restored file differs from the dump");
}

#[test]
fn a_pull_killed_at_random_points_leaves_the_old_file_and_the_next_pull_removes_its_leftovers() {
    // `kill -9` while a pull writes a file: the file that was there stays whole, and the
    // killed pull's temporary file (as large as what it wrote) is removed by the next pull
    // into the same file, once no pull holds it and it has gone unwritten for a minute. A
    // file another pull still holds, or one written just now, is kept. The seed is printed;
    // `KANISTER_KILL_SEED=<seed>` replays a run.
    use rand::{Rng, SeedableRng};
    let seed =
        std::env::var("KANISTER_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("pull kills: seed {seed} (replay with KANISTER_KILL_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));
    agent.init();
    let dump = dir.path().join("dump.sql");
    SqlDump::of_size(6, 96 << 20, 0.0).write(1, &mut std::fs::File::create(&dump).unwrap()).unwrap();
    let want = kanister_testkit::sha256_of(std::fs::File::open(&dump).unwrap()).unwrap();
    let id = agent.push(&[], std::fs::File::open(&dump).unwrap())["snapshot_id"].as_str().unwrap().to_string();
    let out_dir = dir.path().join("restore");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("db.sql");
    std::fs::write(&out, b"the restore before this one\n").unwrap();
    let started = std::time::Instant::now();
    let o = agent.output(&["pull", &id, dir.path().join("timing.sql").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = started.elapsed();

    let leftovers = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".partial-"))
            .collect()
    };
    let age = |p: &std::path::Path| {
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        std::fs::File::options().write(true).open(p).unwrap().set_modified(old).unwrap();
    };
    let mut killed = 0;
    for round in 0..6 {
        let mut child = agent.cmd(&["pull", &id, out.to_str().unwrap()]).spawn().unwrap();
        // Killed while it writes: once its temporary file is there, at a random point after.
        let tmp = out_dir.join(format!(".db.sql.partial-{}", child.id()));
        while !tmp.exists() && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let at = whole.mul_f64(rng.gen_range(0.0..0.7));
        std::thread::sleep(at);
        let _ = child.kill();
        let status = child.wait().unwrap();
        // Killed or finished first, the file is whole: the old one or the restored one (a pull
        // killed after its rename, which is where a restore takes effect, has restored it).
        let now = std::fs::read(&out).unwrap();
        let restored = kanister_testkit::sha256_of(std::io::Cursor::new(&now)).unwrap() == want;
        assert!(
            now == b"the restore before this one\n" || restored,
            "round {round} (seed {seed}), killed {at:?} into writing ({status}): {} bytes at the output",
            now.len()
        );
        if restored {
            std::fs::write(&out, b"the restore before this one\n").unwrap();
        }
        if !status.success() {
            killed += 1;
        }
    }
    assert!(killed > 0, "no pull was killed (seed {seed})");
    let left = leftovers();
    assert!(!left.is_empty(), "a killed pull left no temporary file (seed {seed})");
    // Just written: kept.
    let o = agent.output(&["pull", &id, dir.path().join("elsewhere.sql").to_str().unwrap()]);
    assert!(o.status.success());
    // Held by another pull (its lock), though old: kept; old and not held: removed.
    let held = out_dir.join(".db.sql.partial-4000000");
    std::fs::write(&held, b"a pull that is still running").unwrap();
    age(&held);
    let lock = std::fs::File::open(&held).unwrap();
    lock.lock().unwrap();
    let fresh = out_dir.join(".db.sql.partial-4000001");
    std::fs::write(&fresh, b"a pull that just began").unwrap();
    let other = out_dir.join(".other.sql.partial-4000002");
    std::fs::write(&other, b"a pull into another file").unwrap();
    age(&other);
    let users = out_dir.join(".db.sql.partial-4000003.bak");
    std::fs::write(&users, b"not a name a pull makes").unwrap();
    age(&users);
    for p in &left {
        age(p);
    }
    let o = agent.output(&["pull", &id, out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(kanister_testkit::sha256_of(std::fs::File::open(&out).unwrap()).unwrap(), want);
    let now = leftovers();
    for p in &left {
        assert!(!now.contains(p), "{} was not removed (seed {seed})", p.display());
    }
    for p in [&held, &fresh, &other, &users] {
        assert!(now.contains(p), "{} was removed (seed {seed})", p.display());
    }
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("removed what an earlier pull"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(lock);
}
