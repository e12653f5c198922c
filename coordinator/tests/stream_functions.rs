//! `BackupStream` / `RestoreStream` end to end on the local cluster: an in-process agent
//! (`kanister_agent::service::serve` on 127.0.0.1:0) stands for the sidecar of pod
//! `mysql-test/mysql-0`; a blueprint backs up `mysqldump` of a real MariaDB database into
//! SeaweedFS (S3) under the Profile's repository key, the database is dropped, and a restore
//! ActionSet feeds the artifact's `backupID` to `mysql`. Rows are equal afterwards, and the
//! ActionSet's status carried byte counts while the backup phase ran.
//!
//! Needs the test infrastructure (`eval "$(bash tests/infra.sh env)"`). Fails without it.

use std::sync::Arc;
use std::time::Duration;

use kanister_coordinator::cluster::Cluster;
use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::crd::{ActionSet, State};
use kanister_coordinator::engine::Engine;
use serde_json::{Value, json};

mod support;
use support::{
    Agent, MysqlDatabase, assert_complete, engine_config, infra_var, mysql, mysql_fingerprint, run_to_end,
    s3_profile_yaml, unique_name,
};

const TOKEN: &str = "agent-token-3b9e1c";

const BLUEPRINT: &str = r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: stream, namespace: kanister}
actions:
  backup:
    outputArtifacts:
      dump:
        keyValue:
          backupID: "{{ .Phases.dump.Output.backupID }}"
          size: "{{ .Phases.dump.Output.size }}"
    phases:
    - func: BackupStream
      name: dump
      args:
        namespace: mysql-test
        pod: mysql-0
        container: mysql
        tags: {database: "{{ .Options.database }}"}
        command:
        - mysqldump
        - --no-defaults
        - -uroot
        - -S
        - '{{ index .Secrets.db.Data "socket" | toString }}'
        - --single-transaction
        - --skip-dump-date
        - --databases
        - '{{ .Options.database }}'
  restore:
    inputArtifactNames: [dump]
    phases:
    - func: RestoreStream
      name: load
      args:
        namespace: mysql-test
        pod: mysql-0
        backupID: "{{ .ArtifactsIn.dump.KeyValue.backupID }}"
        command:
        - mysql
        - --no-defaults
        - -uroot
        - -S
        - '{{ index .Secrets.db.Data "socket" | toString }}'
"#;

fn world(agent: &Agent) -> (Arc<LocalCluster>, Engine<LocalCluster>) {
    let c = LocalCluster::new().with_env("PATH", support::tools_env_path()).with_agent(
        "mysql-test",
        "mysql-0",
        agent.endpoint.clone(),
    );
    let objects = format!(
        r#"{profile}---
apiVersion: v1
kind: Secret
metadata: {{name: mysql, namespace: mysql-test}}
stringData: {{socket: "{socket}"}}
"#,
        profile = s3_profile_yaml("kanister", "s3-profile", "s3-credentials", &unique_name("stream", "repo")),
        socket = infra_var("KANISTER_TEST_MYSQL_SOCKET"),
    );
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
            "blueprint": "stream",
            "object": {"kind": "Namespace", "name": "mysql-test"},
            "profile": {"name": "s3-profile", "namespace": "kanister"},
            "secrets": {"db": {"name": "mysql", "namespace": "mysql-test"}},
            "options": options,
            "artifacts": artifacts,
        }]}
    }));
    let a = run_to_end(engine, name, Duration::from_secs(120)).await;
    assert_complete(&a);
    a
}

/// Byte counts the phase carried while it was running, over every status write.
fn running_byte_counts(cluster: &LocalCluster, name: &str) -> Vec<(i64, i64, i64)> {
    cluster
        .status_writes("kanister", name)
        .iter()
        .filter_map(|s| {
            let phase = &s["actions"][0]["phases"][0];
            if phase["state"] != "running" {
                return None;
            }
            let p = &phase["progress"];
            let n = |k: &str| p[k].as_i64().unwrap_or(0);
            let action = s["progress"]["sizeDownloadedB"].as_i64().unwrap_or(0);
            Some((n("sizeDownloadedB"), n("sizeUploadedB"), action))
        })
        .filter(|(d, u, _)| *d > 0 || *u > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_stream_and_restore_stream_through_the_agent_sidecar() {
    let agent = Agent::start(TOKEN).await;
    let (cluster, engine) = world(&agent);
    let db = MysqlDatabase(unique_name("stream", "my"));
    mysql(
        "",
        &format!(
            "CREATE DATABASE {0}; USE {0};
             CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(64), amount DECIMAL(10,2), note TEXT);
             INSERT INTO orders SELECT seq, CONCAT('customer-', seq % 97, IF(seq % 7 = 0, ' \\'q\\'\\n', ' é')),
                    seq * 1.25, IF(seq % 11 = 0, NULL, REPEAT(MD5(seq), 1 + seq % 5)) FROM seq_1_to_50000;",
            db.0
        ),
    );
    let before = mysql_fingerprint(&db.0);
    assert!(before.starts_with("50000\t"), "{before}");
    // No repository exists at the Profile's location yet: the first backup creates it.

    let backup = run(&cluster, &engine, "stream-backup", "backup", json!({"database": db.0}), json!({})).await;
    let status = backup.status.as_ref().unwrap();
    let output = &status.actions[0].phases[0].output;
    let backup_id = output["backupID"].as_str().unwrap().to_string();
    assert!(backup_id.len() >= 8, "{output:?}");
    let size = output["size"].as_u64().unwrap();
    assert!(size > 1_000_000, "{output:?}");
    assert!(output["phySize"].as_u64().unwrap() > 0, "{output:?}");
    let artifact = &status.actions[0].artifacts["dump"];
    assert_eq!(artifact.key_value["backupID"], backup_id);

    // Progress with byte counts appeared in the status while the phase ran.
    let counts = running_byte_counts(&cluster, "stream-backup");
    assert!(!counts.is_empty(), "no byte count in status while the phase ran");
    assert!(counts.iter().all(|(d, _, a)| *d as u64 <= size && a == d), "{counts:?}");

    // No secret in the status.
    let text = serde_json::to_string(&cluster.status_writes("kanister", "stream-backup")).unwrap();
    let key = cluster.secret("kanister", "kanister-repo-key-s3-profile").await.unwrap().data["key"].clone();
    for secret in [infra_var("KANISTER_TEST_S3_SECRET_KEY"), String::from_utf8(key).unwrap(), TOKEN.to_string()] {
        assert!(!text.contains(&secret), "a secret in the status");
    }

    // The coordinator's ListSnapshots finds the stream in the repository, tied to this
    // ActionSet, its phase (by the backup tag) and its artifact.
    use kanister_proto::coordinator::v1::{self as pb, coordinator_service_server::CoordinatorService as _};
    let api = kanister_coordinator::api::CoordinatorApi::new(cluster.clone());
    let request = pb::ListSnapshotsRequest { namespace: "kanister".into(), name: "s3-profile".into() };
    let listed = api.list_snapshots(tonic::Request::new(request)).await.unwrap().into_inner();
    assert_eq!(listed.state(), pb::RepositoryState::Open);
    let snap = listed.snapshots.iter().find(|s| s.id.starts_with(&backup_id)).expect("the backup is listed");
    assert_eq!((snap.kind.as_str(), snap.logical_bytes), ("stream", size), "{snap:?}");
    assert_eq!((snap.actionset_name.as_str(), snap.phase.as_str()), ("stream-backup", "dump"), "{snap:?}");
    assert_eq!((snap.artifact.as_str(), snap.key_values["backupID"].as_str()), ("dump", backup_id.as_str()));
    assert_eq!(snap.tags["database"], db.0, "{snap:?}");

    mysql("", &format!("DROP DATABASE {}", db.0));
    let artifacts = json!({"dump": serde_json::to_value(artifact).unwrap()});
    run(&cluster, &engine, "stream-restore", "restore", json!({}), artifacts).await;
    assert_eq!(mysql_fingerprint(&db.0), before, "restored rows differ");
    agent.stop().await;
}

#[tokio::test]
async fn a_pod_without_an_agent_fails_the_phase_clearly() {
    let agent = Agent::start(TOKEN).await;
    let (cluster, engine) = world(&agent);
    cluster.put(json!({
        "apiVersion": "cr.kanister.io/v1alpha1",
        "kind": "ActionSet",
        "metadata": {"name": "no-agent", "namespace": "kanister"},
        "spec": {"actions": [{
            "name": "restore",
            "blueprint": "stream",
            "object": {"kind": "Namespace", "name": "other"},
            "profile": {"name": "s3-profile", "namespace": "kanister"},
            "secrets": {"db": {"name": "mysql", "namespace": "mysql-test"}},
            "artifacts": {"dump": {"keyValue": {"backupID": "0123abcd"}}},
        }]}
    }));
    // The blueprint names pod mysql-test/mysql-0: point it at a pod with no agent instead
    // (nothing listens on its agent port).
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    cluster
        .load_yaml(
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: mysql-1, namespace: mysql-test, annotations: \
                 {{kanister.io/agent-port: '{free}'}}}}\nstatus: {{podIP: 127.0.0.1}}\n"
            ),
            "pod",
        )
        .unwrap();
    let bp = BLUEPRINT.replace("pod: mysql-0", "pod: mysql-1");
    cluster.load_yaml(&bp, "blueprint").unwrap();
    engine.reconcile("kanister", "no-agent").await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), engine.wait("kanister", "no-agent")).await.unwrap();
    let a = cluster.get_actionset("kanister", "no-agent").await.unwrap();
    let status = a.status.unwrap();
    assert_eq!(status.state, State::Failed);
    let message = status.error.unwrap().message;
    assert!(message.contains("pod mysql-test/mysql-1: failed to connect to the agent"), "{message}");
    agent.stop().await;
}
