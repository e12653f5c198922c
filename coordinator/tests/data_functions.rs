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
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kanister_coordinator::cluster::Cluster;
use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::crd::{ActionSet, State};
use kanister_coordinator::engine::agent::AgentClientConfig;
use kanister_coordinator::engine::{Engine, EngineConfig, Outcome};
use serde_json::{Value, json};
use zeroize::Zeroizing;

mod support;
use support::Agent;

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
"#;

fn infra_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: these tests need the test infrastructure; run `bash tests/infra.sh start` and \
             `eval \"$(bash tests/infra.sh env)\"` first"
        ),
    }
}

fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("data_{tag}_{}_{}_{nanos:x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn world(agent: &Agent) -> (Arc<LocalCluster>, Engine<LocalCluster>) {
    let c = LocalCluster::new().with_agent("app", "app-0", agent.endpoint.clone());
    let objects = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: s3-credentials, namespace: kanister}}
stringData: {{aws_access_key_id: "{id}", aws_secret_access_key: "{secret}"}}
---
apiVersion: cr.kanister.io/v1alpha1
kind: Profile
metadata: {{name: s3-profile, namespace: kanister}}
location: {{type: s3Compliant, bucket: "{bucket}", endpoint: "{endpoint}", prefix: "{prefix}", region: us-east-1}}
credential:
  type: keyPair
  keyPair:
    idField: aws_access_key_id
    secretField: aws_secret_access_key
    secret: {{apiVersion: v1, kind: secret, name: s3-credentials, namespace: kanister}}
"#,
        id = infra_var("KANISTER_TEST_S3_ACCESS_KEY"),
        secret = infra_var("KANISTER_TEST_S3_SECRET_KEY"),
        bucket = infra_var("KANISTER_TEST_S3_BUCKET"),
        endpoint = infra_var("KANISTER_TEST_S3_ENDPOINT"),
        prefix = unique_name("repo"),
    );
    c.load_yaml(&objects, "world").unwrap();
    c.load_yaml(BLUEPRINT, "blueprint").unwrap();
    let cluster = Arc::new(c);
    let config = EngineConfig {
        watch_interval: Duration::from_millis(50),
        poll_interval: Duration::from_millis(50),
        agent: AgentClientConfig { token: Some(Zeroizing::new(TOKEN.to_string())), ..Default::default() },
        ..Default::default()
    };
    (cluster.clone(), Engine::new(cluster, config))
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
    assert_eq!(engine.reconcile("kanister", name).await.unwrap(), Outcome::Started);
    tokio::time::timeout(Duration::from_secs(120), engine.wait("kanister", name)).await.expect("the run ends");
    cluster.get_actionset("kanister", name).await.unwrap()
}

fn completed(a: &ActionSet) {
    let status = a.status.as_ref().unwrap();
    assert_eq!(
        status.state,
        State::Complete,
        "{}: {}",
        a.metadata.name.as_deref().unwrap_or_default(),
        status.error.as_ref().map(|e| e.message.clone()).unwrap_or_default()
    );
}

/// Relative path → what is there: a file's contents, a symlink's target, or a directory.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(rel, format!("link:{}", std::fs::read_link(&path).unwrap().display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else {
                out.insert(rel, format!("file:{}", String::from_utf8_lossy(&std::fs::read(&path).unwrap())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
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
    completed(&backup);
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
    completed(&run(&cluster, &engine, "data-restore", "restore", json!({"target": t}), artifacts.clone()).await);
    assert_eq!(tree(target.path()), before, "the restored tree differs");

    let by_tag = tempfile::tempdir().unwrap();
    let t2 = by_tag.path().display().to_string();
    completed(
        &run(&cluster, &engine, "data-restore-tag", "restoreByTag", json!({"target": t2}), artifacts.clone()).await,
    );
    assert_eq!(tree(by_tag.path()), before, "the tree restored by tag differs");

    let deleted = run(&cluster, &engine, "data-delete", "delete", json!({}), artifacts.clone()).await;
    completed(&deleted);
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
