//! The example blueprints of `deploy/examples/`, loaded as shipped: each passes the
//! coordinator's blueprint validation, keeps secrets out of its commands, and runs end to end on
//! the local cluster with an in-process agent (`kanister_agent::service::serve` on 127.0.0.1:0)
//! standing for the sidecar of the workload's first pod:
//!
//! - MariaDB (`mysql-blueprint.yaml`) and PostgreSQL (`postgresql-blueprint.yaml`), each with a
//!   database user that has a password, created here: backup (`BackupStream`), drop the
//!   database, restore from the artifact (`RestoreStream`), rows equal, delete (`DeleteData`),
//!   the snapshot is gone from the repository.
//! - A volume (`volume-blueprint.yaml`): `BackupData` of a directory, `RestoreData` into an
//!   empty one, trees equal, `DeleteData`.
//!
//! While they run, every process's argv is scanned for the database password, the S3 secret
//! key and the Profile's repository key ([`support::ArgvScan`]); afterwards none of them may
//! appear in any status written to the ActionSets, any event, or the logs of the coordinator
//! and the agent ([`support::Logs`]).
//!
//! Needs the test infrastructure (`eval "$(bash tests/infra.sh env)"`): SeaweedFS S3, MariaDB
//! and PostgreSQL. Fails without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::crd::{ActionSet, Blueprint};
use kanister_coordinator::engine::{Engine, EngineConfig};
use serde_json::{Value, json};

mod support;
use support::{
    Agent, ArgvScan, Logs, MysqlDb, PgDb, assert_complete, assert_no_secret_anywhere, engine_config, infra_var, mysql,
    mysql_fingerprint, mysql_stdin, open_s3_repository, password, psql_stdin, repository_key, run_to_end,
    s3_profile_yaml, tree, unique_name,
};

const TOKEN: &str = "agent-token-e8a51c";
const PROFILE: &str = "s3-profile";
/// The crates whose log lines the tests must capture: the coordinator's and the in-process
/// agent's.
const LOGGED_BY: [&str; 2] = ["kanister_coordinator", "kanister_agent"];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

/// The text of an example file, as shipped.
fn example(file: &str) -> String {
    let path = examples_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---- the files as shipped ----

#[test]
fn examples_validate_and_keep_secrets_out_of_commands() {
    let files = ["mysql-blueprint.yaml", "postgresql-blueprint.yaml", "volume-blueprint.yaml"];
    let readme = example("README.md");
    for file in files {
        let bp: Blueprint =
            serde_norway::from_str(&example(file)).unwrap_or_else(|e| panic!("{file} is not a Blueprint: {e}"));
        let problems = kanister_coordinator::validate::problems(&bp);
        assert!(problems.is_empty(), "{file}: {problems:#?}");
        let actions: Vec<&String> = bp.spec.actions.keys().collect();
        assert_eq!(actions, ["backup", "delete", "restore"], "{file}");
        assert!(readme.contains(file), "deploy/examples/README.md does not describe {file}");
        for (action, a) in &bp.spec.actions {
            for phase in &a.phases {
                // Secrets may be rendered into `env` only, never into a command line.
                let command = serde_json::to_string(&phase.args.get("command")).unwrap();
                for leak in [".Secrets", ".Profile.Credential", "toJson .Profile", "--password", " -p"] {
                    assert!(!command.contains(leak), "{file}: {action}/{}: {leak:?} in the command", phase.name);
                }
            }
        }
    }
    let funcs = |file: &str| -> Vec<String> {
        let bp: Blueprint = serde_norway::from_str(&example(file)).unwrap();
        ["backup", "restore", "delete"].iter().map(|a| bp.spec.actions[*a].phases[0].func.clone()).collect()
    };
    for file in ["mysql-blueprint.yaml", "postgresql-blueprint.yaml"] {
        assert_eq!(funcs(file), ["BackupStream", "RestoreStream", "DeleteData"], "{file}");
    }
    assert_eq!(funcs("volume-blueprint.yaml"), ["BackupData", "RestoreData", "DeleteData"]);
}

// ---- the local world ----

struct World {
    cluster: Arc<LocalCluster>,
    engine: Engine<LocalCluster>,
    /// The Profile's prefix in the bucket.
    prefix: String,
}

/// A local cluster with the Profile (on SeaweedFS, under a fresh prefix), the objects `objects`
/// (YAML), the example blueprint `file` as shipped, and `agent` as the sidecar of
/// `namespace/pod`.
fn world(agent: &Agent, namespace: &str, pod: &str, objects: &str, file: &str) -> World {
    let c = LocalCluster::new().with_env("PATH", support::tools_env_path()).with_agent(
        namespace,
        pod,
        agent.endpoint.clone(),
    );
    let prefix = unique_name("ex", "repo");
    let profile = s3_profile_yaml("kanister", PROFILE, "s3-credentials", &prefix);
    c.load_yaml(&profile, "profile").unwrap();
    c.load_yaml(objects, "objects").unwrap();
    c.load_yaml(&example(file), file).unwrap();
    let cluster = Arc::new(c);
    let config = EngineConfig { progress_interval: Duration::from_millis(200), ..engine_config(Some(TOKEN)) };
    World { engine: Engine::new(cluster.clone(), config), cluster, prefix }
}

/// An ActionSet's one action, as `kanctl create actionset` would write it.
struct Action<'a> {
    name: &'a str,
    action: &'a str,
    blueprint: &'a str,
    object: Value,
    secrets: Value,
    options: Value,
    artifacts: Value,
}

impl World {
    /// Runs the action to its end; it must complete.
    async fn run(&self, a: Action<'_>) -> ActionSet {
        self.cluster.put(json!({
            "apiVersion": "cr.kanister.io/v1alpha1",
            "kind": "ActionSet",
            "metadata": {"name": a.name, "namespace": "kanister"},
            "spec": {"actions": [{
                "name": a.action,
                "blueprint": a.blueprint,
                "object": a.object,
                "profile": {"name": PROFILE, "namespace": "kanister"},
                "secrets": a.secrets,
                "options": a.options,
                "artifacts": a.artifacts,
            }]}
        }));
        let set = run_to_end(&self.engine, a.name, Duration::from_secs(180)).await;
        assert_complete(&set);
        set
    }

    /// The repository key the coordinator created for the Profile.
    async fn repository_key(&self) -> String {
        repository_key(&self.cluster, "kanister", PROFILE).await
    }

    /// The ids of the snapshots in the Profile's repository, opened here with the key from the
    /// key Secret.
    async fn snapshots(&self) -> Vec<String> {
        let key = self.repository_key().await;
        let repo = open_s3_repository(&infra_var("KANISTER_TEST_S3_BUCKET"), &self.prefix, key.into_bytes()).await;
        repo.snapshots().await.unwrap().into_iter().map(|(id, _)| id.to_string()).collect()
    }
}

fn artifacts_of(a: &ActionSet) -> Value {
    let artifacts = &a.status.as_ref().unwrap().actions[0].artifacts;
    serde_json::to_value(artifacts).unwrap()
}

fn output(a: &ActionSet) -> &BTreeMap<String, Value> {
    &a.status.as_ref().unwrap().actions[0].phases[0].output
}

/// Byte counts the first phase carried while it was running, over every status write.
fn running_byte_counts(cluster: &LocalCluster, name: &str) -> Vec<i64> {
    cluster
        .status_writes("kanister", name)
        .iter()
        .filter(|s| s["actions"][0]["phases"][0]["state"] == "running")
        .filter_map(|s| s["actions"][0]["phases"][0]["progress"]["sizeDownloadedB"].as_i64())
        .filter(|n| *n > 0)
        .collect()
}

/// A StatefulSet `namespace/name` with one pod, `name-0`, whose first container is `container`.
fn stateful_set(namespace: &str, name: &str, container: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{replicas: 1, selector: {{matchLabels: {{app: {name}}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}-0, namespace: {namespace}, labels: {{app: {name}}}}}
spec: {{containers: [{{name: {container}, image: "db:1"}}, {{name: kanister-agent, image: "kanister-tools:1"}}]}}
"#
    )
}

// ---- MariaDB ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_example_backs_up_restores_and_deletes_with_a_password_user() {
    let logs = Logs::capture();
    let agent = Agent::start(TOKEN).await;
    let db = MysqlDb { name: unique_name("ex", "my"), user: unique_name("ex", "myu") };
    let pw = password();
    // The password is given to the server through its stdin here, not on a command line.
    let setup = format!(
        "CREATE DATABASE {0}; CREATE USER '{1}'@'%' IDENTIFIED BY '{2}'; GRANT ALL ON {0}.* TO '{1}'@'%'; USE {0};
         CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(64), amount DECIMAL(10,2), note TEXT);
         INSERT INTO orders SELECT seq, CONCAT('customer-', seq % 97, IF(seq % 7 = 0, ' \\'q\\'\\n', ' é')),
                seq * 1.25, IF(seq % 11 = 0, NULL, REPEAT(MD5(seq), 1 + seq % 5)) FROM seq_1_to_50000;",
        db.name, db.user, pw
    );
    mysql_stdin(&setup);
    let before = mysql_fingerprint(&db.name);
    assert!(before.starts_with("50000\t"), "{before}");

    let objects = format!(
        "{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: mysql-release, namespace: mysql-test}}\n\
         stringData: {{mysql-root-password: \"{pw}\"}}\n",
        stateful_set("mysql-test", "mysql-release", "mysql")
    );
    let w = world(&agent, "mysql-test", "mysql-release-0", &objects, "mysql-blueprint.yaml");
    let s3_secret = infra_var("KANISTER_TEST_S3_SECRET_KEY");
    let scan = ArgvScan::start(w.cluster.clone(), PROFILE, vec![pw.clone(), s3_secret.clone()]);
    let object = json!({"kind": "StatefulSet", "name": "mysql-release", "namespace": "mysql-test"});
    let secrets = json!({"mysql": {"name": "mysql-release", "namespace": "mysql-test"}});
    let options = json!({"user": db.user, "port": infra_var("KANISTER_TEST_MYSQL_PORT"), "databases": db.name});
    let action = |name, action, artifacts| Action {
        name,
        action,
        blueprint: "mysql-blueprint",
        object: object.clone(),
        secrets: secrets.clone(),
        options: options.clone(),
        artifacts,
    };

    let backup = w.run(action("my-backup", "backup", json!({}))).await;
    let backup_id = output(&backup)["backupID"].as_str().unwrap().to_string();
    assert!(output(&backup)["size"].as_u64().unwrap() > 1_000_000, "{:?}", output(&backup));
    let artifacts = artifacts_of(&backup);
    assert_eq!(artifacts["mysqlBackup"]["keyValue"]["backupID"], backup_id.as_str());
    assert!(!running_byte_counts(&w.cluster, "my-backup").is_empty(), "no progress in the status while dumping");
    assert_eq!(w.snapshots().await, std::slice::from_ref(&backup_id));

    mysql("", &format!("DROP DATABASE {}", db.name));
    w.run(action("my-restore", "restore", artifacts.clone())).await;
    assert_eq!(mysql_fingerprint(&db.name), before, "restored rows differ");

    let deleted = w.run(action("my-delete", "delete", artifacts)).await;
    assert_eq!(output(&deleted)["removed"], json!([backup_id]));
    assert!(w.snapshots().await.is_empty(), "the snapshot is still in the repository");

    scan.assert_clean().await;
    let secrets = [pw, s3_secret, w.repository_key().await];
    assert_no_secret_anywhere(&w.cluster, &["my-backup", "my-restore", "my-delete"], &secrets, &logs, &LOGGED_BY);
    agent.stop().await;
}

// ---- PostgreSQL ----

fn pg_fingerprint(db: &str) -> String {
    psql_stdin(
        db,
        "SELECT COUNT(*), SUM(hashtext(id || '|' || customer || '|' || coalesce(note, '<null>'))) FROM orders;",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_example_backs_up_restores_and_deletes_with_a_password_user() {
    let logs = Logs::capture();
    let agent = Agent::start(TOKEN).await;
    let db = PgDb { name: unique_name("ex", "pg"), user: unique_name("ex", "pgu") };
    let pw = password();
    psql_stdin("postgres", &format!("CREATE ROLE {} LOGIN CREATEDB PASSWORD '{pw}';", db.user));
    psql_stdin("postgres", &format!("CREATE DATABASE {} OWNER {};", db.name, db.user));
    psql_stdin(
        &db.name,
        &format!(
            "SET ROLE {};
             CREATE TABLE orders (id INT PRIMARY KEY, customer TEXT, note TEXT);
             INSERT INTO orders SELECT g, 'customer-' || (g % 97) || CASE WHEN g % 7 = 0 THEN ' ''q''' ELSE ' é' END,
                    CASE WHEN g % 11 = 0 THEN NULL ELSE repeat(md5(g::text), 1 + g % 5) END
             FROM generate_series(1, 30000) g;",
            db.user
        ),
    );
    let before = pg_fingerprint(&db.name);
    assert!(before.starts_with("30000|"), "{before}");

    let objects = format!(
        "{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: pg-release, namespace: pg-test}}\n\
         stringData: {{postgres-password: \"{pw}\"}}\n",
        stateful_set("pg-test", "pg-release", "postgresql")
    );
    let w = world(&agent, "pg-test", "pg-release-0", &objects, "postgresql-blueprint.yaml");
    let s3_secret = infra_var("KANISTER_TEST_S3_SECRET_KEY");
    let scan = ArgvScan::start(w.cluster.clone(), PROFILE, vec![pw.clone(), s3_secret.clone()]);
    let object = json!({"kind": "StatefulSet", "name": "pg-release", "namespace": "pg-test"});
    let secrets = json!({"postgres": {"name": "pg-release", "namespace": "pg-test"}});
    let options = json!({
        "user": db.user,
        "host": infra_var("KANISTER_TEST_PG_HOST"),
        "port": infra_var("KANISTER_TEST_PG_PORT"),
        "database": db.name,
    });
    let action = |name, action, options: &Value, artifacts| Action {
        name,
        action,
        blueprint: "postgresql-blueprint",
        object: object.clone(),
        secrets: secrets.clone(),
        options: options.clone(),
        artifacts,
    };

    let backup = w.run(action("pg-backup", "backup", &options, json!({}))).await;
    let backup_id = output(&backup)["backupID"].as_str().unwrap().to_string();
    let artifacts = artifacts_of(&backup);
    assert_eq!(artifacts["pgBackup"]["keyValue"]["database"], db.name.as_str());
    assert_eq!(w.snapshots().await, std::slice::from_ref(&backup_id));

    psql_stdin("postgres", &format!("DROP DATABASE {} WITH (FORCE);", db.name));
    // The restore finds the database in the artifact, not in the options.
    let connection = json!({"user": db.user, "host": options["host"], "port": options["port"]});
    w.run(action("pg-restore", "restore", &connection, artifacts.clone())).await;
    assert_eq!(pg_fingerprint(&db.name), before, "restored rows differ");

    let deleted = w.run(action("pg-delete", "delete", &connection, artifacts)).await;
    assert_eq!(output(&deleted)["removed"], json!([backup_id]));
    assert!(w.snapshots().await.is_empty(), "the snapshot is still in the repository");

    scan.assert_clean().await;
    let secrets = [pw, s3_secret, w.repository_key().await];
    assert_no_secret_anywhere(&w.cluster, &["pg-backup", "pg-restore", "pg-delete"], &secrets, &logs, &LOGGED_BY);
    agent.stop().await;
}

// ---- a volume ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_example_backs_up_a_directory_and_restores_it_into_an_empty_one() {
    let logs = Logs::capture();
    let agent = Agent::start(TOKEN).await;
    let source = tempfile::tempdir().unwrap();
    let s = source.path();
    std::fs::create_dir_all(s.join("uploads/2024/05")).unwrap();
    std::fs::write(s.join("index.html"), "<h1>hello</h1>\n").unwrap();
    for i in 0..30 {
        std::fs::write(s.join(format!("uploads/2024/05/img-{i}.bin")), vec![i as u8; 10_000 + i * 7]).unwrap();
    }
    std::fs::write(s.join("uploads/empty"), "").unwrap();
    std::os::unix::fs::symlink("uploads/2024/05/img-3.bin", s.join("latest")).unwrap();
    let before = tree(s);
    assert_eq!(before.len(), 36, "{before:?}");

    let objects = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: web-test}
spec: {replicas: 1, selector: {matchLabels: {app: web}}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-7f9c4-x2k8p, namespace: web-test, labels: {app: web}}
spec: {containers: [{name: web, image: "web:1"}, {name: kanister-agent, image: "kanister-tools:1"}]}
"#;
    let w = world(&agent, "web-test", "web-7f9c4-x2k8p", objects, "volume-blueprint.yaml");
    let s3_secret = infra_var("KANISTER_TEST_S3_SECRET_KEY");
    let scan = ArgvScan::start(w.cluster.clone(), PROFILE, vec![s3_secret.clone()]);
    let object = json!({"kind": "Deployment", "name": "web", "namespace": "web-test"});
    let action = |name, action, options, artifacts| Action {
        name,
        action,
        blueprint: "volume-blueprint",
        object: object.clone(),
        secrets: json!({}),
        options,
        artifacts,
    };

    let path = s.display().to_string();
    let backup = w.run(action("vol-backup", "backup", json!({"path": path, "container": "web"}), json!({}))).await;
    let out = output(&backup);
    let backup_id = out["backupID"].as_str().unwrap().to_string();
    assert!(out["fileCount"].as_u64().is_some_and(|n| n >= 32), "{out:?}");
    let artifacts = artifacts_of(&backup);
    assert_eq!(artifacts["volumeBackup"]["keyValue"]["path"], path.as_str());

    let target = tempfile::tempdir().unwrap();
    let options = json!({"restorePath": target.path().display().to_string()});
    w.run(action("vol-restore", "restore", options, artifacts.clone())).await;
    assert_eq!(tree(target.path()), before, "the restored tree differs");

    let deleted = w.run(action("vol-delete", "delete", json!({}), artifacts)).await;
    assert_eq!(output(&deleted)["removed"], json!([backup_id]));
    assert!(w.snapshots().await.is_empty(), "the snapshot is still in the repository");

    scan.assert_clean().await;
    let secrets = [s3_secret, w.repository_key().await];
    assert_no_secret_anywhere(&w.cluster, &["vol-backup", "vol-restore", "vol-delete"], &secrets, &logs, &LOGGED_BY);
    agent.stop().await;
}
