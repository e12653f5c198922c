//! The phase engine end to end on the local cluster against a real MariaDB (started by
//! `tests/infra.sh`): a backup phase runs `mysqldump` through `KubeExec` (a local process),
//! reports the dump with the `###Phase-output###` protocol, an output artifact is rendered from
//! it, and a restore ActionSet fed that artifact loads it into a fresh database whose rows are
//! compared by checksum. A failing phase, a phase timeout and a cancellation run on the same
//! setup, with a `runlog` table recording which phases really ran.
//!
//! Needs `KANISTER_TEST_MYSQL_SOCKET` (`eval "$(bash tests/infra.sh env)"`); fails without it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::cluster::{Cluster, ObjectRef};
use kanister_coordinator::crd::{ActionSet, Artifact, State};
use kanister_coordinator::engine::{Engine, Outcome};
use serde_json::{Value, json};

mod support;
use support::{MysqlDatabase, engine_config, infra_var, mysql_async, run_to_end, unique_name};

/// The `mysql` client as the blueprint runs it: user and socket come from the Secret.
const MYSQL: &str = r#"mysql --no-defaults -u'{{ index .Secrets.mysql.Data "username" | toString }}' -S '{{ index .Secrets.mysql.Data "socket" | toString }}'"#;

/// `@LOG name@` in the blueprint: appends `name` to the test database's `runlog` table.
const LOG: &str = r#"@MYSQL@ '{{ .Options.database }}' -e "INSERT INTO runlog (phase) VALUES ('NAME')""#;

const BLUEPRINT: &str = r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: mariadb, namespace: kanister}
actions:
  backup:
    outputArtifacts:
      mysqlDump:
        keyValue:
          path: "{{ .Phases.dump.Output.path }}"
          sha256: "{{ .Phases.dump.Output.sha256 }}"
          database: "{{ .Phases.dump.Output.database }}"
    phases:
    - func: KubeExec
      name: dump
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        pod: "{{ index .StatefulSet.Pods 0 }}"
        container: mariadb
        command:
        - sh
        - -ec
        - |
          kando_output() { printf '###Phase-output###: {"key":"%s","value":"%s"}\n' "$1" "$2"; }
          file='{{ .Options.dir }}/{{ .Options.database }}.sql'
          mysqldump --no-defaults -u'{{ index .Secrets.mysql.Data "username" | toString }}' \
            -S '{{ index .Secrets.mysql.Data "socket" | toString }}' \
            --single-transaction --skip-dump-date '{{ .Options.database }}' > "$file"
          echo "dumped $(wc -c < "$file") bytes to $file" >&2
          kando_output path "$file"
          kando_output sha256 "$(sha256sum "$file" | cut -d' ' -f1)"
          kando_output database '{{ .Options.database }}'
  restore:
    inputArtifactNames: [mysqlDump]
    phases:
    - func: KubeExec
      name: verify
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        pod: "{{ index .StatefulSet.Pods 0 }}"
        command:
        - sh
        - -ec
        - echo '{{ .ArtifactsIn.mysqlDump.KeyValue.sha256 }}  {{ .ArtifactsIn.mysqlDump.KeyValue.path }}' | sha256sum -c -
    - func: KubeExec
      name: load
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        pod: "{{ index .StatefulSet.Pods 0 }}"
        command:
        - sh
        - -ec
        - |
          @MYSQL@ -e "CREATE DATABASE {{ .Options.database }}"
          @MYSQL@ '{{ .Options.database }}' < '{{ .ArtifactsIn.mysqlDump.KeyValue.path }}'
          rows=$(@MYSQL@ -N -B '{{ .Options.database }}' -e 'SELECT COUNT(*) FROM orders')
          printf '###Phase-output###: {"key":"rows","value":"%s"}\n' "$rows"
  failing:
    phases:
    - func: KubeExec
      name: mark
      args:
        namespace: db
        pod: mariadb-0
        command:
        - sh
        - -ec
        - |
          @LOG mark@
    - func: KubeExec
      name: dumpMissing
      args:
        namespace: db
        pod: mariadb-0
        command:
        - sh
        - -ec
        - |
          mysqldump --no-defaults -u'{{ index .Secrets.mysql.Data "username" | toString }}' \
            -S '{{ index .Secrets.mysql.Data "socket" | toString }}' \
            '{{ .Options.database }}_missing' > '{{ .Options.dir }}/partial.sql'
    - func: KubeExec
      name: upload
      args:
        namespace: db
        pod: mariadb-0
        command:
        - sh
        - -ec
        - |
          @LOG upload@
    deferPhase:
      func: KubeExec
      name: cleanup
      args:
        namespace: db
        pod: mariadb-0
        command:
        - sh
        - -ec
        - |
          rm -f '{{ .Options.dir }}/partial.sql'
          @LOG cleanup@
  slowQuery:
    phases:
    - func: KubeExec
      name: query
      timeout: 1s
      args:
        namespace: db
        pod: mariadb-0
        command:
        - sh
        - -ec
        - |
          @MYSQL@ -e "SELECT SLEEP(60), '{{ .Options.marker }}'"
    - func: KubeExec
      name: after
      args:
        namespace: db
        pod: mariadb-0
        command:
        - sh
        - -ec
        - |
          @LOG after@
    deferPhase:
      func: KubeExec
      name: deferred
      args:
        namespace: db
        pod: mariadb-0
        command:
        - sh
        - -ec
        - |
          @LOG deferred@
  longQuery:
    phases:
    - func: KubeExec
      name: query
      args:
        namespace: db
        pod: mariadb-0
        command:
        - sh
        - -ec
        - |
          @MYSQL@ -e "SELECT SLEEP(60), '{{ .Options.marker }}'"
    - func: KubeExec
      name: after
      args:
        namespace: db
        pod: mariadb-0
        command:
        - sh
        - -ec
        - |
          @LOG after@
    deferPhase:
      func: KubeExec
      name: deferred
      args:
        namespace: db
        pod: mariadb-0
        command:
        - sh
        - -ec
        - |
          @LOG deferred@
"#;

/// Creates a database with an `orders` table (rows with NULLs, quotes, newlines and non-ASCII
/// text) and an empty `runlog` table.
async fn seed(db: &str) {
    mysql_async(
        "",
        &format!(
            "CREATE DATABASE {db}; USE {db};
             CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(64), amount DECIMAL(10,2),
                                  note TEXT, created DATETIME);
             INSERT INTO orders SELECT seq, CONCAT('customer-', seq % 97, IF(seq % 7 = 0, ' \\'q\\'\\n', ' é')),
                                       seq * 1.25, IF(seq % 11 = 0, NULL, REPEAT(MD5(seq), 1 + seq % 5)),
                                       '2026-01-01' + INTERVAL seq MINUTE FROM seq_1_to_3000;
             CREATE TABLE runlog (n INT AUTO_INCREMENT PRIMARY KEY, phase VARCHAR(64));"
        ),
    )
    .await;
}

/// Row count and a checksum over every column of `orders`.
async fn fingerprint(db: &str) -> String {
    mysql_async(
        db,
        "SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, customer, amount, IFNULL(note, '<null>'), created))) FROM orders",
    )
    .await
}

/// The phases that wrote to `runlog`, in order.
async fn runlog(db: &str) -> Vec<String> {
    mysql_async(db, "SELECT phase FROM runlog ORDER BY n").await.lines().map(str::to_string).collect()
}

/// How many server threads run a query containing `marker`.
async fn queries_with(marker: &str) -> usize {
    let q = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%{marker}%' AND INFO NOT LIKE \
         '%PROCESSLIST%'"
    );
    mysql_async("", &q).await.trim().parse().unwrap()
}

/// Waits until the server runs (`true`) or no longer runs (`false`) a query containing `marker`.
async fn until_query(marker: &str, running: bool, within: Duration) {
    let deadline = Instant::now() + within;
    while (queries_with(marker).await > 0) != running {
        assert!(Instant::now() < deadline, "query {marker} running={running} not reached within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn world() -> String {
    let socket = infra_var("KANISTER_TEST_MYSQL_SOCKET");
    format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: mariadb, namespace: db}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: mariadb}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: mariadb-0, namespace: db, labels: {{app: mariadb}}}}
spec:
  containers: [{{name: mariadb, image: "mariadb:11"}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: mysql, namespace: db}}
stringData: {{username: root, socket: "{socket}"}}
"#
    )
}

fn cluster() -> Arc<LocalCluster> {
    let c = LocalCluster::new();
    c.load_yaml(&world(), "world").unwrap();
    let mut blueprint = BLUEPRINT.to_string();
    while let Some(start) = blueprint.find("@LOG ") {
        let end = start + blueprint[start + 1..].find('@').unwrap() + 1;
        let name = blueprint[start + 5..end].to_string();
        blueprint.replace_range(start..=end, &LOG.replace("NAME", &name));
    }
    let blueprint = blueprint.replace("@MYSQL@", MYSQL);
    c.load_yaml(&blueprint, "blueprint").unwrap();
    Arc::new(c)
}

/// Adds an ActionSet running `action` of the blueprint on the StatefulSet.
fn put_actionset(cluster: &LocalCluster, name: &str, action: &str, options: Value, artifacts: Value) {
    cluster.put(json!({
        "apiVersion": "cr.kanister.io/v1alpha1",
        "kind": "ActionSet",
        "metadata": {"name": name, "namespace": "kanister"},
        "spec": {"actions": [{
            "name": action,
            "blueprint": "mariadb",
            "object": {"kind": "StatefulSet", "name": "mariadb", "namespace": "db"},
            "secrets": {"mysql": {"name": "mysql", "namespace": "db"}},
            "options": options,
            "artifacts": artifacts,
        }]}
    }));
}

/// How long a run may take.
const WITHIN: Duration = Duration::from_secs(60);

fn state(a: &ActionSet) -> State {
    a.status.as_ref().unwrap().state
}

fn error_message(a: &ActionSet) -> String {
    a.status.as_ref().unwrap().error.as_ref().map(|e| e.message.clone()).unwrap_or_default()
}

fn phase_states(a: &ActionSet) -> Vec<State> {
    a.status.as_ref().unwrap().actions[0].phases.iter().map(|p| p.state).collect()
}

fn defer_state(a: &ActionSet) -> State {
    a.status.as_ref().unwrap().actions[0].defer_phase.as_ref().unwrap().state
}

fn output(a: &ActionSet, phase: &str, key: &str) -> String {
    let action = &a.status.as_ref().unwrap().actions[0];
    let p = action.phases.iter().find(|p| p.name == phase).unwrap_or_else(|| panic!("no phase {phase}"));
    p.output.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test]
async fn mysqldump_backup_renders_an_artifact_that_a_restore_actionset_loads_into_a_fresh_database() {
    let source = unique_name("kco", "src");
    let target = unique_name("kco", "dst");
    let _cleanup = [MysqlDatabase(source.clone()), MysqlDatabase(target.clone())];
    seed(&source).await;
    let before = fingerprint(&source).await;
    assert!(before.starts_with("3000\t"), "{before}");
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster();
    let engine = Engine::new(cluster.clone(), engine_config(None));

    let options = json!({"dir": dir.path().to_str().unwrap(), "database": source});
    put_actionset(&cluster, "backup-maria", "backup", options, json!({}));
    let backup = run_to_end(&engine, "backup-maria", WITHIN).await;
    assert_eq!(state(&backup), State::Complete, "{}", error_message(&backup));

    // The phase outputs came from the command's stdout through the protocol.
    let dump = dir.path().join(format!("{source}.sql"));
    assert_eq!(output(&backup, "dump", "path"), dump.to_str().unwrap());
    assert_eq!(output(&backup, "dump", "sha256"), sha256_file(&dump));
    assert_eq!(output(&backup, "dump", "database"), source);
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(text.contains("CREATE TABLE `orders`") && text.contains("INSERT INTO `orders`"), "not a dump");
    // The exec ran in the pod's container, as a local process.
    let execs = cluster.execs();
    assert_eq!((execs[0].pod.as_str(), execs[0].container.as_str()), ("mariadb-0", "mariadb"));

    // The output artifact was rendered from the outputs.
    let artifacts = &backup.status.as_ref().unwrap().actions[0].artifacts;
    let artifact: &Artifact = &artifacts["mysqlDump"];
    assert_eq!(artifact.key_value["path"], dump.to_str().unwrap());
    assert_eq!(artifact.key_value["sha256"], sha256_file(&dump));
    assert_eq!(artifact.key_value["database"], source);

    // A restore ActionSet fed that artifact (as kanctl --from does) loads it into a fresh database.
    let options = json!({"database": target});
    let fed = json!({"mysqlDump": serde_json::to_value(artifact).unwrap()});
    put_actionset(&cluster, "restore-maria", "restore", options, fed);
    let restore = run_to_end(&engine, "restore-maria", WITHIN).await;
    assert_eq!(state(&restore), State::Complete, "{}", error_message(&restore));
    assert_eq!(phase_states(&restore), [State::Complete, State::Complete]);
    assert_eq!(output(&restore, "load", "rows"), "3000");
    assert_eq!(fingerprint(&target).await, before, "the restored rows differ from the source");
    assert_eq!(restore.status.as_ref().unwrap().progress.as_ref().unwrap().percent_completed, "100");
}

#[tokio::test]
async fn restore_rejects_a_dump_whose_checksum_does_not_match_the_artifact() {
    let source = unique_name("kco", "src");
    let target = unique_name("kco", "dst");
    let _cleanup = [MysqlDatabase(source.clone()), MysqlDatabase(target.clone())];
    seed(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster();
    let engine = Engine::new(cluster.clone(), engine_config(None));
    put_actionset(
        &cluster,
        "backup-m2",
        "backup",
        json!({"dir": dir.path().to_str().unwrap(), "database": source}),
        json!({}),
    );
    let backup = run_to_end(&engine, "backup-m2", WITHIN).await;
    assert_eq!(state(&backup), State::Complete, "{}", error_message(&backup));
    let artifact = backup.status.as_ref().unwrap().actions[0].artifacts["mysqlDump"].clone();
    // The dump changes after the backup: the restore must refuse it before loading anything.
    std::fs::write(&artifact.key_value["path"], "DROP TABLE orders;\n").unwrap();

    let fed = json!({"mysqlDump": serde_json::to_value(&artifact).unwrap()});
    put_actionset(&cluster, "restore-m2", "restore", json!({"database": target}), fed);
    let restore = run_to_end(&engine, "restore-m2", WITHIN).await;
    assert_eq!(state(&restore), State::Failed);
    let message = error_message(&restore);
    assert!(message.contains("phase \"verify\"") && message.contains("exit code 1"), "{message}");
    assert_eq!(phase_states(&restore), [State::Failed, State::Pending]);
    let exists =
        mysql_async("", &format!("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{target}'"))
            .await;
    assert_eq!(exists.trim(), "0", "the load phase must not have run");
}

#[tokio::test]
async fn failing_mysqldump_fails_the_actionset_with_its_exit_code_and_runs_only_the_defer_phase_after_it() {
    let db = unique_name("kco", "fail");
    let _cleanup = MysqlDatabase(db.clone());
    seed(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster();
    let engine = Engine::new(cluster.clone(), engine_config(None));
    put_actionset(
        &cluster,
        "fail-maria",
        "failing",
        json!({"dir": dir.path().to_str().unwrap(), "database": db}),
        json!({}),
    );
    let a = run_to_end(&engine, "fail-maria", WITHIN).await;

    assert_eq!(state(&a), State::Failed);
    let message = error_message(&a);
    // mysqldump exits with 2 on a connection-level error such as an unknown database.
    assert!(message.contains("phase \"dumpMissing\""), "{message}");
    assert!(message.contains("exit code 2"), "{message}");
    assert!(message.contains("Unknown database"), "the last log lines are in the message: {message}");
    assert_eq!(phase_states(&a), [State::Complete, State::Failed, State::Pending]);
    assert_eq!(defer_state(&a), State::Complete);
    // What really ran, in order: the later phase never did, the defer phase did.
    assert_eq!(runlog(&db).await, ["mark", "cleanup"]);
    assert!(!dir.path().join("partial.sql").exists(), "the defer phase removed the partial dump");
    assert!(cluster.events().iter().any(|e| e.reason == "PhaseFailed" && e.type_ == "Warning"));
}

#[tokio::test]
async fn phase_timeout_stops_a_long_query_and_runs_the_defer_phase() {
    let db = unique_name("kco", "slow");
    let marker = unique_name("kco", "mk");
    let _cleanup = MysqlDatabase(db.clone());
    seed(&db).await;
    let cluster = cluster();
    let engine = Engine::new(cluster.clone(), engine_config(None));
    put_actionset(&cluster, "slow-maria", "slowQuery", json!({"database": db, "marker": marker}), json!({}));
    let started = Instant::now();
    let a = run_to_end(&engine, "slow-maria", WITHIN).await;
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());

    assert_eq!(state(&a), State::Failed);
    let message = error_message(&a);
    assert!(message.contains("phase \"query\"") && message.contains("phase timeout"), "{message}");
    assert_eq!(phase_states(&a), [State::Failed, State::Pending]);
    assert_eq!(defer_state(&a), State::Complete);
    assert_eq!(runlog(&db).await, ["deferred"]);
    // The client was killed: the server drops the query long before its 60 s sleep ends.
    until_query(&marker, false, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn cancelling_through_the_spec_stops_a_running_query_and_runs_the_defer_phase() {
    let db = unique_name("kco", "cancel");
    let marker = unique_name("kco", "mk");
    let _cleanup = MysqlDatabase(db.clone());
    seed(&db).await;
    let cluster = cluster();
    let engine = Engine::new(cluster.clone(), engine_config(None));
    put_actionset(&cluster, "cancel-maria", "longQuery", json!({"database": db, "marker": marker}), json!({}));
    assert_eq!(engine.reconcile("kanister", "cancel-maria").await.unwrap(), Outcome::Started);
    until_query(&marker, true, Duration::from_secs(10)).await;

    let started = Instant::now();
    cluster.patch(&ObjectRef::actionset("kanister", "cancel-maria"), json!({"spec": {"cancel": true}})).await.unwrap();
    assert_eq!(engine.reconcile("kanister", "cancel-maria").await.unwrap(), Outcome::Cancelling);
    tokio::time::timeout(Duration::from_secs(10), engine.wait("kanister", "cancel-maria")).await.expect("run stops");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    let a = cluster.get_actionset("kanister", "cancel-maria").await.unwrap();
    assert_eq!(state(&a), State::Failed);
    assert!(error_message(&a).contains("spec.cancel"), "{}", error_message(&a));
    assert_eq!(phase_states(&a), [State::Failed, State::Pending]);
    assert_eq!(defer_state(&a), State::Complete);
    assert_eq!(runlog(&db).await, ["deferred"]);
    until_query(&marker, false, Duration::from_secs(15)).await;
    assert_eq!(engine.reconcile("kanister", "cancel-maria").await.unwrap(), Outcome::Finished);
}
