//! `BackupData` / `RestoreData` / `DeleteData` end to end on the local cluster: an in-process
//! agent (`kanister_agent::service::serve` on 127.0.0.1:0) stands for the sidecar of pod
//! `app/app-0`. A directory tree (nested files, a symlink) is backed up into SeaweedFS (S3)
//! under the Profile's repository key, restored into an empty directory (the trees are equal),
//! deleted, and a restore of the deleted backup fails clearly.
//!
//! Needs the test infrastructure (`eval "$(bash tests/infra.sh env)"`). Fails without it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::cluster::{Cluster, EnvSource, ObjectRef};
use kanister_coordinator::crd::{ActionSet, State};
use kanister_coordinator::engine::Engine;
use serde_json::{Value, json};

mod support;
use support::{
    Agent, assert_complete, engine_config, infra_var, open_s3_repository, run_to_end, s3_profile_yaml, tree,
    unique_name,
};

const TOKEN: &str = "agent-token-7d2f0a";

const BLUEPRINT: &str = r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: data, namespace: kanister}
actions:
  backup:
    outputArtifacts:
      files:
        keyValue:
          backupID: "{{ .Phases.backup.Output.backupID }}"
          backupTag: "{{ .Phases.backup.Output.backupTag }}"
    phases:
    - func: BackupData
      name: backup
      args:
        namespace: app
        pod: app-0
        container: app
        includePath: "{{ .Options.source }}"
        backupArtifactPrefix: unused/prefix
  restore:
    inputArtifactNames: [files]
    phases:
    - func: RestoreData
      name: restore
      args:
        namespace: app
        pod: app-0
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        backupArtifactPrefix: unused/prefix
        restorePath: "{{ .Options.target }}"
        backupIdentifier: "{{ .ArtifactsIn.files.KeyValue.backupID }}"
  restoreByTag:
    inputArtifactNames: [files]
    phases:
    - func: RestoreData
      name: restore
      args:
        namespace: app
        pod: app-0
        backupArtifactPrefix: unused/prefix
        restorePath: "{{ .Options.target }}"
        backupTag: "{{ .ArtifactsIn.files.KeyValue.backupTag }}"
  delete:
    inputArtifactNames: [files]
    phases:
    - func: DeleteData
      name: delete
      args:
        namespace: app
        pod: app-0
        backupArtifactPrefix: unused/prefix
        backupID: "{{ .ArtifactsIn.files.KeyValue.backupID }}"
        reclaimSpace: true
  backupAll:
    outputArtifacts:
      all:
        keyValue:
          info: "{{ .Phases.backup.Output.BackupAllInfo }}"
    phases:
    - func: BackupDataAll
      name: backup
      args:
        namespace: app
        pods: "app-0 app-1"
        container: app
        includePath: "{{ .Options.source }}"
        backupArtifactPrefix: unused/prefix
  backupSix:
    phases:
    - func: BackupDataAll
      name: backup
      args:
        namespace: app
        pods: "app-0 app-1 app-2 app-3 app-4 app-5"
        container: app
        includePath: "{{ .Options.source }}"
        backupArtifactPrefix: unused/prefix
  restoreAll:
    inputArtifactNames: [all]
    phases:
    - func: RestoreDataAll
      name: restore
      args:
        namespace: app
        pods: "{{ .Options.pod }}"
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        backupArtifactPrefix: unused/prefix
        restorePath: "{{ .Options.target }}"
        backupInfo: "{{ .ArtifactsIn.all.KeyValue.info }}"
  deleteAll:
    inputArtifactNames: [all]
    phases:
    - func: DeleteDataAll
      name: delete
      args:
        namespace: app
        backupArtifactPrefix: unused/prefix
        backupInfo: "{{ .ArtifactsIn.all.KeyValue.info }}"
        reclaimSpace: true
  stats:
    inputArtifactNames: [files]
    phases:
    - func: BackupDataStats
      name: restoreSize
      args:
        namespace: app
        backupArtifactPrefix: unused/prefix
        backupID: "{{ .ArtifactsIn.files.KeyValue.backupID }}"
    - func: BackupDataStats
      name: rawData
      args:
        namespace: app
        backupArtifactPrefix: unused/prefix
        backupID: "{{ .ArtifactsIn.files.KeyValue.backupID }}"
        statsMode: raw-data
  copyVolume:
    outputArtifacts:
      files:
        keyValue:
          backupID: "{{ .Phases.copy.Output.backupID }}"
          backupTag: "{{ .Phases.copy.Output.backupTag }}"
    phases:
    - func: CopyVolumeData
      name: copy
      args:
        namespace: app
        volume: data-pvc
        dataArtifactPrefix: unused/prefix
  restoreVolume:
    inputArtifactNames: [files]
    phases:
    - func: RestoreData
      name: restore
      args:
        namespace: app
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        backupArtifactPrefix: unused/prefix
        restorePath: /mnt/restore
        backupTag: "{{ .ArtifactsIn.files.KeyValue.backupTag }}"
        volumes:
          restore-pvc: /mnt/restore
  check:
    phases:
    - func: CheckRepository
      name: check
      args:
        backupArtifactPrefix: unused/prefix
"#;

fn world(agent: &Agent) -> (Arc<LocalCluster>, Engine<LocalCluster>) {
    world_of(&[("app-0", agent)])
}

/// A local cluster whose pods `app/<name>` have the given agents as sidecars.
fn world_of(agents: &[(&str, &Agent)]) -> (Arc<LocalCluster>, Engine<LocalCluster>) {
    let mut c = LocalCluster::new().with_env("PATH", support::tools_env_path());
    for (pod, agent) in agents {
        c = c.with_agent("app", pod, agent.endpoint.clone());
    }
    world_with(c)
}

/// `c` with the Profile (on SeaweedFS, under a fresh prefix) and the blueprint loaded.
fn world_with(c: LocalCluster) -> (Arc<LocalCluster>, Engine<LocalCluster>) {
    let objects = s3_profile_yaml("kanister", "s3-profile", "s3-credentials", &unique_name("data", "repo"));
    c.load_yaml(&objects, "world").unwrap();
    c.load_yaml(BLUEPRINT, "blueprint").unwrap();
    let cluster = Arc::new(c);
    (cluster.clone(), Engine::new(cluster, engine_config(Some(TOKEN))))
}

async fn run(
    cluster: &LocalCluster,
    engine: &Engine<LocalCluster>,
    name: &str,
    action: &str,
    options: Value,
    artifacts: Value,
) -> ActionSet {
    cluster.put(json!({
        "apiVersion": "cr.kanister.io/v1alpha1",
        "kind": "ActionSet",
        "metadata": {"name": name, "namespace": "kanister"},
        "spec": {"actions": [{
            "name": action,
            "blueprint": "data",
            "object": {"kind": "Namespace", "name": "app"},
            "profile": {"name": "s3-profile", "namespace": "kanister"},
            "options": options,
            "artifacts": artifacts,
        }]}
    }));
    run_to_end(engine, name, Duration::from_secs(120)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_data_restore_data_and_delete_data_through_the_agent_sidecar() {
    let agent = Agent::start(TOKEN).await;
    let (cluster, engine) = world(&agent);
    let source = tempfile::tempdir().unwrap();
    let s = source.path();
    std::fs::create_dir_all(s.join("a/b/c")).unwrap();
    std::fs::write(s.join("top.txt"), "top level\n").unwrap();
    std::fs::write(s.join("a/one.txt"), "one ".repeat(1000)).unwrap();
    std::fs::write(s.join("a/b/two.bin"), (0..=255u8).cycle().take(100_000).collect::<Vec<_>>()).unwrap();
    std::fs::write(s.join("a/b/c/three.txt"), "three\n").unwrap();
    std::fs::write(s.join("a/empty"), "").unwrap();
    std::os::unix::fs::symlink("b/two.bin", s.join("a/link")).unwrap();
    let before = tree(s);
    assert_eq!(before.len(), 9, "{before:?}");

    let backup =
        run(&cluster, &engine, "data-backup", "backup", json!({"source": s.display().to_string()}), json!({})).await;
    assert_complete(&backup);
    let status = backup.status.as_ref().unwrap();
    let output = &status.actions[0].phases[0].output;
    let backup_id = output["backupID"].as_str().unwrap().to_string();
    assert!(backup_id.len() >= 8, "{output:?}");
    assert!(!output["backupTag"].as_str().unwrap().is_empty(), "{output:?}");
    assert!(output["fileCount"].as_u64().unwrap() >= 5, "{output:?}");
    assert!(output["size"].as_u64().unwrap() >= 100_000, "{output:?}");
    assert!(output["phySize"].as_u64().unwrap() > 0, "{output:?}");
    let artifact = &status.actions[0].artifacts["files"];
    assert_eq!(artifact.key_value["backupID"], backup_id);
    let artifacts = json!({"files": serde_json::to_value(artifact).unwrap()});

    // No secret in the status.
    let text = serde_json::to_string(&cluster.status_writes("kanister", "data-backup")).unwrap();
    for secret in [infra_var("KANISTER_TEST_S3_SECRET_KEY"), TOKEN.to_string()] {
        assert!(!text.contains(&secret), "a secret in the status");
    }

    let target = tempfile::tempdir().unwrap();
    let t = target.path().display().to_string();
    assert_complete(&run(&cluster, &engine, "data-restore", "restore", json!({"target": t}), artifacts.clone()).await);
    assert_eq!(tree(target.path()), before, "the restored tree differs");

    let by_tag = tempfile::tempdir().unwrap();
    let t2 = by_tag.path().display().to_string();
    assert_complete(
        &run(&cluster, &engine, "data-restore-tag", "restoreByTag", json!({"target": t2}), artifacts.clone()).await,
    );
    assert_eq!(tree(by_tag.path()), before, "the tree restored by tag differs");

    let deleted = run(&cluster, &engine, "data-delete", "delete", json!({}), artifacts.clone()).await;
    assert_complete(&deleted);
    let removed = &deleted.status.as_ref().unwrap().actions[0].phases[0].output["removed"];
    assert_eq!(removed.as_array().map(Vec::len), Some(1), "{removed:?}");

    let again = tempfile::tempdir().unwrap();
    let t3 = again.path().display().to_string();
    let failed = run(&cluster, &engine, "data-restore-deleted", "restore", json!({"target": t3}), artifacts).await;
    let status = failed.status.as_ref().unwrap();
    assert_eq!(status.state, State::Failed);
    let message = status.error.as_ref().unwrap().message.clone();
    assert!(message.contains("RestoreData") && message.contains("NotFound"), "{message}");
    assert!(message.contains(&backup_id), "{message}");
    assert!(tree(again.path()).is_empty(), "the failed restore wrote files");
    agent.stop().await;
}

fn output(a: &ActionSet, phase: usize) -> &BTreeMap<String, Value> {
    &a.status.as_ref().unwrap().actions[0].phases[phase].output
}

/// The snapshots in the Profile's repository (opened here with the key from the cluster's key
/// Secret, the way the coordinator does): id → parent.
async fn snapshots(cluster: &LocalCluster) -> BTreeMap<String, Option<String>> {
    let profile: Value = cluster.get(&ObjectRef::new("Profile", "kanister", "s3-profile")).await.unwrap();
    let key = cluster.secret("kanister", "kanister-repo-key-s3-profile").await.unwrap().data["key"].clone();
    let location = &profile["location"];
    let repo =
        open_s3_repository(location["bucket"].as_str().unwrap(), location["prefix"].as_str().unwrap(), key).await;
    repo.snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, s)| (id.to_string(), s.unwrap().parent.map(|p| p.to_string())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_variants_stats_checks_and_incremental_backups() {
    let (a0, a1) = (Agent::start(TOKEN).await, Agent::start(TOKEN).await);
    let (cluster, engine) = world_of(&[("app-0", &a0), ("app-1", &a1)]);
    let source = tempfile::tempdir().unwrap();
    let s = source.path();
    std::fs::create_dir_all(s.join("d/e")).unwrap();
    for i in 0..20 {
        std::fs::write(s.join(format!("d/f{i}.txt")), format!("file {i} ").repeat(500 + i)).unwrap();
    }
    std::fs::write(s.join("d/e/big.bin"), (0..=250u8).cycle().take(300_000).collect::<Vec<_>>()).unwrap();
    let before = tree(s);
    let src = json!({"source": s.display().to_string()});

    // Nothing was backed up through the Profile yet.
    let check = run(&cluster, &engine, "check-empty", "check", json!({}), json!({})).await;
    assert_complete(&check);
    assert_eq!(output(&check, 0)["repoUnavailable"], "true");
    assert_eq!(output(&check, 0)["passwordIncorrect"], "false");

    // Incremental: the second BackupData of the same pod and path has the first as its parent.
    let first = run(&cluster, &engine, "inc-1", "backup", src.clone(), json!({})).await;
    assert_complete(&first);
    std::fs::write(s.join("d/f3.txt"), "changed\n").unwrap();
    let second = run(&cluster, &engine, "inc-2", "backup", src.clone(), json!({})).await;
    assert_complete(&second);
    let (id1, id2) =
        (output(&first, 0)["backupID"].as_str().unwrap(), output(&second, 0)["backupID"].as_str().unwrap());
    let snaps = snapshots(&cluster).await;
    assert_eq!(snaps[id1], None, "{snaps:?}");
    assert_eq!(snaps[id2].as_deref(), Some(id1), "the second backup was not made from the first: {snaps:?}");
    std::fs::write(s.join("d/f3.txt"), "file 3 ".repeat(503)).unwrap();

    // Stats of the second backup: restore size is the tree's bytes, raw data what it stores.
    let files =
        json!({"files": serde_json::to_value(&second.status.as_ref().unwrap().actions[0].artifacts["files"]).unwrap()});
    let stats = run(&cluster, &engine, "stats", "stats", json!({}), files).await;
    assert_complete(&stats);
    let (restore, raw) = (output(&stats, 0), output(&stats, 1));
    assert_eq!(restore["mode"], "restore-size");
    assert_eq!(raw["mode"], "raw-data");
    let logical: u64 = restore["size"].as_str().unwrap().parse().unwrap();
    assert_eq!(logical, output(&second, 0)["size"].as_u64().unwrap());
    assert_eq!(restore["fileCount"].as_str().unwrap(), "21", "{restore:?}");
    let stored: u64 = raw["size"].as_str().unwrap().parse().unwrap();
    assert!(stored > 0 && stored < logical, "raw data {stored} of {logical} bytes: the text compresses");

    // The repository checks out; with another key in the key Secret, the password is wrong.
    let check = run(&cluster, &engine, "check-ok", "check", json!({}), json!({})).await;
    assert_complete(&check);
    assert_eq!(
        (output(&check, 0)["repoUnavailable"].as_str(), output(&check, 0)["passwordIncorrect"].as_str()),
        (Some("false"), Some("false"))
    );
    assert_eq!(output(&check, 0)["snapshots"], 2);
    let key_secret = ObjectRef::new("Secret", "kanister", "kanister-repo-key-s3-profile");
    let original: Value = cluster.get(&key_secret).await.unwrap();
    let mut other = original.clone();
    other["data"] = json!({"key": base64_of(&"ab".repeat(32))});
    other.as_object_mut().unwrap().remove("stringData");
    cluster.put(other);
    let check = run(&cluster, &engine, "check-wrong-key", "check", json!({}), json!({})).await;
    assert_complete(&check);
    assert_eq!(output(&check, 0)["passwordIncorrect"], "true");
    cluster.put(original);

    // BackupDataAll over two pods, RestoreDataAll one pod at a time, DeleteDataAll both.
    let all = run(&cluster, &engine, "all-backup", "backupAll", src.clone(), json!({})).await;
    assert_complete(&all);
    let info: Value = serde_json::from_str(output(&all, 0)["BackupAllInfo"].as_str().unwrap()).unwrap();
    for pod in ["app-0", "app-1"] {
        assert_eq!(info[pod]["PodName"], pod, "{info}");
        assert!(info[pod]["BackupID"].as_str().is_some_and(|s| s.len() == 64), "{info}");
        assert!(!info[pod]["BackupTag"].as_str().unwrap().is_empty(), "{info}");
    }
    assert_ne!(info["app-0"]["BackupID"], info["app-1"]["BackupID"]);
    let artifact =
        json!({"all": serde_json::to_value(&all.status.as_ref().unwrap().actions[0].artifacts["all"]).unwrap()});
    for pod in ["app-0", "app-1"] {
        let target = tempfile::tempdir().unwrap();
        let opts = json!({"target": target.path().display().to_string(), "pod": pod});
        assert_complete(
            &run(&cluster, &engine, &format!("all-restore-{pod}"), "restoreAll", opts, artifact.clone()).await,
        );
        assert_eq!(tree(target.path()), before, "the tree restored from {pod} differs");
    }
    let target = tempfile::tempdir().unwrap();
    let opts = json!({"target": target.path().display().to_string(), "pod": "app-7"});
    let failed = run(&cluster, &engine, "all-restore-unknown", "restoreAll", opts, artifact.clone()).await;
    let message = failed.status.as_ref().unwrap().error.as_ref().unwrap().message.clone();
    assert!(message.contains("app-7") && message.contains("app-0, app-1"), "{message}");

    let before_delete = snapshots(&cluster).await.len();
    let deleted = run(&cluster, &engine, "all-delete", "deleteAll", json!({}), artifact.clone()).await;
    assert_complete(&deleted);
    assert_eq!(output(&deleted, 0)["removed"].as_array().map(Vec::len), Some(2));
    let left = snapshots(&cluster).await;
    assert_eq!(left.len(), before_delete - 2);
    assert!(!left.contains_key(info["app-0"]["BackupID"].as_str().unwrap()));
    // Deleting again is not an error: both are already gone.
    let again = run(&cluster, &engine, "all-delete-again", "deleteAll", json!({}), artifact).await;
    assert_complete(&again);
    assert_eq!(output(&again, 0)["alreadyAbsent"].as_array().map(Vec::len), Some(2));
    a0.stop().await;
    a1.stop().await;
}

/// `CopyVolumeData`: a task pod running the agent CLI mounts the PVC (on the local cluster, a
/// registered directory) and backs it up; store credentials and the repository key reach it
/// through the environment from Secrets, never its command line. A second copy is incremental
/// (its parent is the first), and the backup restores through `RestoreData` to an equal tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_volume_data_backs_up_a_pvc_from_a_task_pod() {
    let agent = Agent::start(TOKEN).await;
    let volume = tempfile::tempdir().unwrap();
    let v = volume.path();
    std::fs::create_dir_all(v.join("pgdata/base")).unwrap();
    for i in 0..12 {
        std::fs::write(v.join(format!("pgdata/base/{i}")), format!("page {i} ").repeat(2000 + i)).unwrap();
    }
    std::os::unix::fs::symlink("base/0", v.join("pgdata/first")).unwrap();
    let before = tree(v);
    let (_bin, path) = support::tools_path();
    let restore_pvc = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::new().with_agent("app", "app-0", agent.endpoint.clone()).with_env("PATH", path);
    c = c.with_volume("app", "data-pvc", v).with_volume("app", "restore-pvc", restore_pvc.path());
    let (cluster, engine) = world_with(c);

    let first = run(&cluster, &engine, "copy-1", "copyVolume", json!({}), json!({})).await;
    assert_complete(&first);
    let out = output(&first, 0);
    assert_eq!(out["fileCount"].as_str(), Some("12"), "{out:?}");
    let size: u64 = out["size"].as_str().unwrap().parse().unwrap();
    assert!(size > 12 * 2000 * 6, "{out:?}");
    assert_eq!(out["backupRoot"], "/mnt/vol_data/data-pvc", "{out:?}");
    let id1 = out["backupID"].as_str().unwrap().to_string();

    // The task pod's command holds no secret; credentials came from Secrets in its namespace.
    let s3_secret = infra_var("KANISTER_TEST_S3_SECRET_KEY");
    let pods = cluster.pods();
    assert_eq!(pods.len(), 1);
    let spec = &pods[0].spec;
    assert_eq!(spec.volumes.get("data-pvc").map(String::as_str), Some("/mnt/vol_data/data-pvc"));
    assert!(spec.containers.iter().all(|c| !c.command.iter().any(|a| a.contains(&s3_secret))), "{spec:?}");
    for name in ["AWS_SECRET_ACCESS_KEY", "KANISTER_REPO_KEY"] {
        let var = spec.env.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no {name} in {spec:?}"));
        assert!(matches!(var.source, EnvSource::SecretKey { .. }), "{name} is not from a Secret: {var:?}");
    }

    // Change one file: the second copy has the first as its parent.
    std::fs::write(v.join("pgdata/base/3"), "changed\n").unwrap();
    let changed = tree(v);
    let second = run(&cluster, &engine, "copy-2", "copyVolume", json!({}), json!({})).await;
    assert_complete(&second);
    let id2 = output(&second, 0)["backupID"].as_str().unwrap().to_string();
    let store_secrets: std::collections::BTreeSet<_> = cluster
        .pods()
        .iter()
        .flat_map(|p| p.spec.env.iter())
        .filter_map(|e| match &e.source {
            EnvSource::SecretKey { secret, .. } if secret.starts_with("kanister-store-") => Some(secret.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(store_secrets.len(), 1, "the same credentials made more than one Secret: {store_secrets:?}");
    let snaps = snapshots(&cluster).await;
    assert_eq!(snaps[&id2].as_deref(), Some(id1.as_str()), "{snaps:?}");

    let artifacts =
        json!({"files": serde_json::to_value(&second.status.as_ref().unwrap().actions[0].artifacts["files"]).unwrap()});
    let target = tempfile::tempdir().unwrap();
    let opts = json!({"target": target.path().display().to_string()});
    assert_complete(&run(&cluster, &engine, "copy-restore", "restore", opts, artifacts.clone()).await);
    assert_eq!(tree(target.path()), changed, "the restored volume differs");
    assert_ne!(changed, before);

    // RestoreData with volumes instead of a pod (the workload scaled down): a task pod mounts
    // the PVC and restores the backup found by its tag.
    let restored = run(&cluster, &engine, "copy-restore-pvc", "restoreVolume", json!({}), artifacts).await;
    assert_complete(&restored);
    assert_eq!(tree(restore_pvc.path()), changed, "the volume restored by a task pod differs");
    let pod = cluster.pods().into_iter().last().unwrap();
    assert_eq!(pod.spec.volumes.get("restore-pvc").map(String::as_str), Some("/mnt/restore"));
    assert!(pod.spec.containers[0].command.iter().all(|a| !a.contains(&s3_secret)), "{:?}", pod.spec);

    // A PVC the cluster does not have fails the phase clearly.
    let missing = LocalCluster::new().with_env("PATH", support::tools_path().1);
    let (cluster, engine) = world_with(missing);
    let failed = run(&cluster, &engine, "copy-missing", "copyVolume", json!({}), json!({})).await;
    let message = failed.status.as_ref().unwrap().error.as_ref().unwrap().message.clone();
    assert!(message.contains("data-pvc"), "{message}");
    agent.stop().await;
}

/// Two actions of one ActionSet with the same name (as `kanctl --deployment a,b` makes) back up
/// under different tags, so a restore or delete by tag of one never touches the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actions_named_alike_get_tags_of_their_own() {
    let agent = Agent::start(TOKEN).await;
    let (cluster, engine) = world(&agent);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(a.path().join("a.txt"), "first").unwrap();
    std::fs::write(b.path().join("b.txt"), "second").unwrap();
    let action = |dir: &Path| {
        json!({
            "name": "backup",
            "blueprint": "data",
            "object": {"kind": "Namespace", "name": "app"},
            "profile": {"name": "s3-profile", "namespace": "kanister"},
            "options": {"source": dir.display().to_string()},
        })
    };
    cluster.put(json!({
        "apiVersion": "cr.kanister.io/v1alpha1",
        "kind": "ActionSet",
        "metadata": {"name": "twins", "namespace": "kanister", "uid": "u-1"},
        "spec": {"actions": [action(a.path()), action(b.path())]}
    }));
    let twins = run_to_end(&engine, "twins", Duration::from_secs(120)).await;
    assert_complete(&twins);
    let status = twins.status.as_ref().unwrap();
    let tags: Vec<&str> = status.actions.iter().map(|a| a.phases[0].output["backupTag"].as_str().unwrap()).collect();
    assert_eq!(tags, ["kanister/twins/u-1/backup:0/backup", "kanister/twins/u-1/backup:1/backup"]);
    agent.stop().await;
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Six first backups to an empty location at once (`BackupDataAll`) create one repository,
/// not one each: a single key slot, and every snapshot reads with the Profile's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_backups_at_once_create_one_repository() {
    let mut agents = Vec::new();
    for _ in 0..6 {
        agents.push(Agent::start(TOKEN).await);
    }
    let names: Vec<String> = (0..6).map(|i| format!("app-{i}")).collect();
    let pods: Vec<(&str, &Agent)> = names.iter().map(String::as_str).zip(agents.iter()).collect();
    let (cluster, engine) = world_of(&pods);
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("f"), "data ".repeat(10_000)).unwrap();
    let opts = json!({"source": source.path().display().to_string()});
    assert_complete(&run(&cluster, &engine, "six-first", "backupSix", opts, json!({})).await);

    let profile: Value = cluster.get(&ObjectRef::new("Profile", "kanister", "s3-profile")).await.unwrap();
    let key = cluster.secret("kanister", "kanister-repo-key-s3-profile").await.unwrap().data["key"].clone();
    let location = &profile["location"];
    let repo =
        open_s3_repository(location["bucket"].as_str().unwrap(), location["prefix"].as_str().unwrap(), key).await;
    let slots = repo.store().list(kanister_agent::repository::KEYS).await.unwrap();
    assert_eq!(slots.len(), 1, "one repository, one key slot: {slots:?}");
    let all = repo.snapshots().await.unwrap();
    assert_eq!(all.len(), 6);
    for (id, s) in all {
        assert!(s.is_ok(), "snapshot {id} does not read with the repository's key: {s:?}");
    }
    for agent in agents {
        agent.stop().await;
    }
}

/// `BackupDataAll` where one pod's backup fails: the phase fails and names that pod, the pod
/// whose backup succeeded is still recorded in the phase's `BackupAllInfo` (its snapshot exists
/// and must stay findable, to restore or delete it), and no artifact of the failed action
/// claims a backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_out_backup_that_fails_for_one_pod_records_the_others() {
    let a0 = Agent::start(TOKEN).await;
    // app-1 has no agent sidecar: its backup cannot run.
    let (cluster, engine) = world_of(&[("app-0", &a0)]);
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("f.txt"), "data ".repeat(1000)).unwrap();
    let src = json!({"source": source.path().display().to_string()});
    let all = run(&cluster, &engine, "all-partial", "backupAll", src, json!({})).await;
    let status = all.status.as_ref().unwrap();
    assert_eq!(status.state, State::Failed);
    let message = status.error.as_ref().unwrap().message.clone();
    assert!(message.contains("app/app-1"), "{message}");
    assert!(!message.contains("app/app-0"), "{message}");
    let info: Value = serde_json::from_str(output(&all, 0)["BackupAllInfo"].as_str().unwrap()).unwrap();
    let id = info["app-0"]["BackupID"].as_str().unwrap().to_string();
    assert!(info.get("app-1").is_none(), "{info}");
    assert!(snapshots(&cluster).await.contains_key(&id), "the recorded backup does not exist");
    assert!(status.actions[0].artifacts.is_empty(), "{:?}", status.actions[0].artifacts);
    a0.stop().await;
}
