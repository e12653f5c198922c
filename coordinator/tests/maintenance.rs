//! Scheduled repository maintenance on the local cluster, against SeaweedFS: backups deleted the
//! upstream way (`kando location delete` in a `KubeTask`) and through `DeleteData` (without
//! `reclaimSpace`) free nothing by themselves; the coordinator's maintenance round, a task pod
//! running `kanister-agent maintain`, brings the bucket back to the size of an empty repository
//! and says so in an event on the Profile and in the metrics. Two coordinators maintaining the
//! same repository at once never overlap: the agent's maintenance lock lets one run and the
//! other skip.

use std::sync::Arc;
use std::time::Duration;

use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::crd::{ActionSet, ObjectReference};
use kanister_coordinator::engine::Engine;
use kanister_coordinator::engine::maintenance::{MaintenanceConfig, MaintenanceResult};
use serde_json::{Value, json};

mod support;
use support::{assert_complete, engine_config, infra_var, run_to_end, s3_profile_yaml, tools_path, unique_name};

const PROFILE: &str = r#"'{{ toJson .Profile }}'"#;

fn blueprint() -> String {
    r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: maint, namespace: kanister}
actions:
  push:
    outputArtifacts:
      dump:
        keyValue:
          path: "{{ .Phases.push.Output.path }}"
    phases:
    - func: KubeTask
      name: push
      args:
        namespace: kanister
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        command:
        - bash
        - -o
        - pipefail
        - -ec
        - |
          head -c 6000000 /dev/urandom | kando location push --profile @PROFILE@ --path "m/{{ .Options.n }}" -
          kando output path "m/{{ .Options.n }}"
  kandoDelete:
    inputArtifactNames: [dump]
    phases:
    - func: KubeTask
      name: delete
      args:
        namespace: kanister
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        command: [kando, location, delete, --profile, @PROFILE@, --path, "{{ .ArtifactsIn.dump.KeyValue.path }}"]
  copyVolume:
    outputArtifacts:
      files:
        keyValue:
          backupID: "{{ .Phases.copy.Output.backupID }}"
    phases:
    - func: CopyVolumeData
      name: copy
      args:
        namespace: kanister
        volume: data-pvc
  delete:
    inputArtifactNames: [files]
    phases:
    - func: DeleteData
      name: delete
      args:
        namespace: kanister
        backupArtifactPrefix: unused/prefix
        backupID: "{{ .ArtifactsIn.files.KeyValue.backupID }}"
"#
    .replace("@PROFILE@", PROFILE)
}

struct World {
    cluster: Arc<LocalCluster>,
    engine: Engine<LocalCluster>,
    prefix: String,
    _tools: tempfile::TempDir,
    _volume: tempfile::TempDir,
}

fn world() -> World {
    let (tools, path) = tools_path();
    let volume = tempfile::tempdir().unwrap();
    for i in 0..4 {
        let _ = i;
        let mut data = vec![0u8; 1_500_000];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut data).unwrap();
        std::fs::write(volume.path().join(format!("f{i}")), data).unwrap();
    }
    let c = LocalCluster::new().with_env("PATH", path).with_volume("kanister", "data-pvc", volume.path());
    let prefix = unique_name("maint", "repo");
    c.load_yaml(&s3_profile_yaml("kanister", "s3-profile", "s3-credentials", &prefix), "world").unwrap();
    c.load_yaml(&blueprint(), "blueprint").unwrap();
    let cluster = Arc::new(c);
    let engine = Engine::new(cluster.clone(), engine_config(None));
    World { cluster, engine, prefix, _tools: tools, _volume: volume }
}

async fn run(w: &World, name: &str, action: &str, options: Value, artifacts: Value) -> ActionSet {
    w.cluster.put(json!({
        "apiVersion": "cr.kanister.io/v1alpha1",
        "kind": "ActionSet",
        "metadata": {"name": name, "namespace": "kanister"},
        "spec": {"actions": [{
            "name": action,
            "blueprint": "maint",
            "object": {"kind": "Namespace", "name": "kanister"},
            "profile": {"name": "s3-profile", "namespace": "kanister"},
            "options": options,
            "artifacts": artifacts,
        }]}
    }));
    let a = run_to_end(&w.engine, name, Duration::from_secs(120)).await;
    assert_complete(&a);
    a
}

fn artifact(a: &ActionSet, name: &str) -> Value {
    json!({ name: serde_json::to_value(&a.status.as_ref().unwrap().actions[0].artifacts[name]).unwrap() })
}

/// Bytes under the repository's prefix in the bucket, and those of an empty repository there
/// (its config and key slots).
async fn bucket_bytes(prefix: &str) -> (u64, u64) {
    use kanister_agent::repository::store_of_ref;
    let options = std::collections::HashMap::from([
        ("endpoint".to_string(), infra_var("KANISTER_TEST_S3_ENDPOINT")),
        ("region".to_string(), "us-east-1".to_string()),
        ("aws_access_key_id".to_string(), infra_var("KANISTER_TEST_S3_ACCESS_KEY")),
        ("aws_secret_access_key".to_string(), infra_var("KANISTER_TEST_S3_SECRET_KEY")),
    ]);
    let store = store_of_ref(&format!("s3://{}/{prefix}", infra_var("KANISTER_TEST_S3_BUCKET")), options).unwrap();
    let mut total = 0;
    let mut empty = 0;
    for folder in ["config", "keys", "data", "index", "snapshots", "locks", "prune", "exclusive"] {
        for o in store.list(folder).await.unwrap() {
            total += o.size;
            if folder == "config" || folder == "keys" {
                empty += o.size;
            }
        }
    }
    (total, empty)
}

fn config(interval: Duration) -> MaintenanceConfig {
    MaintenanceConfig { interval, grace: Duration::ZERO, namespaces: vec!["kanister".into()] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_maintenance_frees_what_deleted_backups_used() {
    let w = world();
    let pushed = run(&w, "push-1", "push", json!({"n": "1"}), json!({})).await;
    let copied = run(&w, "copy-1", "copyVolume", json!({}), json!({})).await;
    let (full, empty) = bucket_bytes(&w.prefix).await;
    assert!(full > 10_000_000, "the backups stored too little to measure: {full} bytes");

    run(&w, "kando-delete-1", "kandoDelete", json!({}), artifact(&pushed, "dump")).await;
    run(&w, "delete-1", "delete", json!({}), artifact(&copied, "files")).await;
    let (after_delete, _) = bucket_bytes(&w.prefix).await;
    assert!(after_delete > full * 9 / 10, "deleting freed space by itself ({after_delete} of {full} bytes left)");

    // The scheduler, every 300 ms, until a round has run.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scheduler = {
        let engine = w.engine.clone();
        tokio::spawn(async move {
            engine
                .run_maintenance(config(Duration::from_millis(300)), async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };
    let events = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let events: Vec<_> = w.cluster.events().into_iter().filter(|e| e.kind == "Profile").collect();
            if events.iter().any(|e| e.reason.starts_with("Maintenance")) {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a maintenance round ran");
    let _ = stop_tx.send(());
    scheduler.await.unwrap();

    let ev = events.iter().find(|e| e.reason.starts_with("Maintenance")).unwrap();
    assert_eq!(ev.reason, "MaintenanceSucceeded", "{ev:?}");
    assert_eq!((ev.namespace.as_str(), ev.name.as_str()), ("kanister", "s3-profile"));
    assert!(ev.note.starts_with("freed "), "{ev:?}");
    let (left, _) = bucket_bytes(&w.prefix).await;
    assert!(
        left as f64 <= empty as f64 * 1.05,
        "maintenance left {left} bytes; an empty repository has {empty} (deleted backups held {full})"
    );
    let metrics = w.engine.metrics_text();
    assert!(metrics.contains("kanister_maintenance_runs_total{result=\"succeeded\"} "), "{metrics}");
    assert!(!metrics.contains("kanister_maintenance_runs_total{result=\"succeeded\"} 0\n"), "{metrics}");
    let freed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kanister_maintenance_freed_bytes_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(freed >= full - empty - 200_000, "metrics say {freed} bytes freed of {full}");
    assert!(metrics.contains("kanister_maintenance_last_run_timestamp_seconds{profile=\"kanister/s3-profile\"}"));
    // Its task pods are gone.
    assert!(
        w.cluster.live_pods().iter().all(|p| !p.starts_with("kanister-maintenance-")),
        "a maintenance pod remains: {:?}",
        w.cluster.live_pods()
    );
}

/// Two coordinators (two engines on one cluster) maintain the same repository at the same
/// time, round after round: the runs never hold the repository at once (each maintenance pod
/// reports when it held the agent's maintenance lock, in milliseconds of this machine's clock,
/// which every pod here shares), and those that found it held waited or were skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_coordinators_never_maintain_one_repository_at_once() {
    let w = world();
    for i in 0..3 {
        run(&w, &format!("push-{i}"), "push", json!({"n": i.to_string()}), json!({})).await;
    }
    let second = Engine::new(w.cluster.clone(), engine_config(None));
    let profile = ObjectReference { namespace: "kanister".into(), name: "s3-profile".into(), ..Default::default() };
    let mut worked = Vec::new();
    let mut skipped = 0;
    for _ in 0..4 {
        let (a, b) =
            tokio::join!(w.engine.maintain(&profile, Duration::ZERO), second.maintain(&profile, Duration::ZERO));
        for r in [a, b] {
            match r.result {
                MaintenanceResult::Succeeded { .. } => {
                    worked.push(r.held_ms.expect("a run that worked reports its lock"))
                }
                MaintenanceResult::Skipped(why) => {
                    eprintln!("skipped: {why}");
                    assert!(why.contains("another maintenance"), "{why}");
                    skipped += 1;
                }
                MaintenanceResult::Failed(e) => panic!("a maintenance failed: {e}"),
            }
        }
    }
    assert!(!worked.is_empty(), "no maintenance ran");
    for (i, a) in worked.iter().enumerate() {
        for b in &worked[i + 1..] {
            assert!(a.1 <= b.0 || b.1 <= a.0, "two maintenances held the repository at once: {a:?} and {b:?}");
        }
    }
    eprintln!("{} maintenances ran one after another, {skipped} were skipped", worked.len());
}
