//! `kanister-agent task`: the coordinator's repository work, run by the agent binary as a task
//! pod runs it (request in KANISTER_TASK, answer as the phase output `taskResult`), on a real
//! local-disk repository.

use base64::Engine as _;
use kanister_proto::agent::v1 as pb;
use kanister_testkit::agent::Agent;
use prost::Message as _;

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");
const BACKUP_TAG: &str = "kanister.io/backup-tag";

fn request(task: pb::task_request::Task) -> String {
    base64::engine::general_purpose::STANDARD.encode(pb::TaskRequest { task: Some(task) }.encode_to_vec())
}

/// Runs `task`; the answer, or the failure's stderr.
fn run(agent: &Agent, task: pb::task_request::Task) -> Result<pb::TaskResult, String> {
    let o = agent.cmd(&["task"]).env("KANISTER_TASK", request(task)).output().expect("the agent runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    if !o.status.success() {
        return Err(stderr.into_owned());
    }
    let line = stdout.lines().find(|l| l.starts_with("###Phase-output###:")).expect("an output line");
    let kv: serde_json::Value = serde_json::from_str(line.trim_start_matches("###Phase-output###:").trim()).unwrap();
    assert_eq!(kv["key"], "taskResult");
    let bytes = base64::engine::general_purpose::STANDARD.decode(kv["value"].as_str().unwrap()).unwrap();
    Ok(pb::TaskResult::decode(bytes.as_slice()).unwrap())
}

fn open(r: pb::TaskResult) -> pb::task_result::Result {
    assert_eq!(r.state(), pb::TaskRepositoryState::Open);
    r.result.expect("a result")
}

fn push(agent: &Agent, tags: &[&str], bytes: Vec<u8>) -> String {
    let mut args = Vec::new();
    for t in tags {
        args.extend(["--tag", t]);
    }
    agent.push(&args, std::io::Cursor::new(bytes))["snapshot_id"].as_str().unwrap().to_string()
}

#[test]
fn every_task_against_a_real_repository() {
    use pb::task_request::Task;
    use pb::task_result::Result as Out;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::new(BIN, format!("file://{}/repo", dir.path().display()));

    // No repository yet: an answer, not a failure.
    let r = run(&agent, Task::ListSnapshots(Default::default())).unwrap();
    assert_eq!((r.state(), r.result.is_none()), (pb::TaskRepositoryState::NoRepository, true));

    agent.init();
    let data = |seed: u8| (0..3 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed).collect();
    let a = push(&agent, &[&format!("{BACKUP_TAG}=ns/as/u/backup/dump"), "kando.path=/x/dump.gz"], data(1));
    let b = push(&agent, &[&format!("{BACKUP_TAG}=ns/as/u/backup/dump")], data(2));
    let c = push(&agent, &["other=1"], data(3));

    let Out::Snapshots(list) = open(run(&agent, Task::ListSnapshots(Default::default())).unwrap()) else { panic!() };
    let ids: Vec<&str> = list.snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [a.as_str(), b.as_str(), c.as_str()], "oldest first");
    assert!(list.snapshots.iter().all(|s| s.kind == "stream" && s.size == 3 << 20 && s.error.is_empty()));
    let tagged = pb::ListSnapshotsTask { tags: [(BACKUP_TAG.into(), "ns/as/u/backup/dump".into())].into() };
    let Out::Snapshots(list) = open(run(&agent, Task::ListSnapshots(tagged)).unwrap()) else { panic!() };
    assert_eq!(list.snapshots.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), [a.as_str(), b.as_str()]);

    let stats = |raw_data| Task::Stats(pb::StatsTask { snapshot_id: c[..10].into(), raw_data });
    let Out::Stats(s) = open(run(&agent, stats(false)).unwrap()) else { panic!() };
    assert_eq!((s.file_count, s.size), (1, 3 << 20));
    let Out::Stats(raw) = open(run(&agent, stats(true)).unwrap()) else { panic!() };
    assert!(raw.size > 0 && raw.size < 4 << 20, "{raw:?}");

    let Out::Check(r) = open(run(&agent, Task::Check(pb::CheckTask { read_data: true })).unwrap()) else { panic!() };
    assert!(r.ok && r.snapshots == 3, "{r:?}");

    // The kando path: one snapshot goes.
    let del = Task::DeleteAt(pb::DeleteAtTask { paths: vec!["/x/dump.gz".into(), "x/dump.gz".into()] });
    let Out::DeleteAt(d) = open(run(&agent, del).unwrap()) else { panic!() };
    assert_eq!(d.deleted, 1);

    // By tag and by id, with space reclaimed; an id already gone is reported, not an error.
    let size_before = dir_size(&dir.path().join("repo/data"));
    let forget = Task::Forget(pb::ForgetTask {
        snapshot_ids: vec![a.clone()],
        backup_tags: vec!["ns/as/u/backup/dump".into()],
        reclaim_space: true,
        wait_lock_secs: 5,
    });
    let Out::Forget(f) = open(run(&agent, forget).unwrap()) else { panic!() };
    assert_eq!((f.removed, f.already_absent), (vec![b.clone()], vec![a.clone()]));
    assert!(f.prune.expect("pruned").packs_deleted > 0);
    assert!(dir_size(&dir.path().join("repo/data")) < size_before, "space was reclaimed");
    let Out::Check(r) = open(run(&agent, Task::Check(pb::CheckTask { read_data: true })).unwrap()) else { panic!() };
    assert!(r.ok && r.snapshots == 1, "{r:?}");

    // A snapshot that does not exist: a failure naming it.
    let e = run(&agent, Task::Stats(pb::StatsTask { snapshot_id: "ffffffff".into(), raw_data: false })).unwrap_err();
    assert!(e.contains("ffffffff"), "{e}");

    // Another key: an answer, and nothing read.
    let other = agent.clone().with_env("KANISTER_REPO_PASSWORD", "not the passphrase");
    let r = run(&other, Task::ListSnapshots(Default::default())).unwrap();
    assert_eq!(r.state(), pb::TaskRepositoryState::WrongKey);

    // A request that is not one, and none at all: clear errors.
    let o = agent.cmd(&["task"]).env("KANISTER_TASK", "%%%").output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("KANISTER_TASK is not a task request"), "{e}");
    let o = agent.cmd(&["task"]).env_remove("KANISTER_TASK").output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("KANISTER_TASK is not set"), "{e}");
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
    }
    total
}
