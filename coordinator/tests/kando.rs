//! Upstream-style blueprints through `kando`, end to end on the local cluster: a `KubeTask` pipes
//! `mysqldump` (or `pg_dumpall`) through `gzip` into `kando location push --profile '{{ toJson
//! .Profile }}'`, reports the path with `kando output`; a restore ActionSet pulls the artifact
//! back into the database; a delete ActionSet removes it. The data lands in SeaweedFS (S3) in our
//! repository format, encrypted under the Profile's repository key, which the coordinator
//! creates on first use and hands to the task pods through `KANISTER_REPO_KEY` from its Secret.
//!
//! No secret reaches a command line: the database users have passwords, given to the task pods
//! the upstream way (`podOverride` env `MYSQL_PWD` / `PGPASSWORD` from a `secretKeyRef`), and
//! `{{ toJson .Profile }}` renders the S3 credential as a reference that kando resolves from
//! `KANISTER_PROFILE_CREDENTIAL`, which the coordinator gives the task pods from a Secret. While
//! the tests run, every process's argv is scanned for the passwords, the S3 secret key and the
//! repository key; none may appear there, nor in a status, an event or the logs.
//!
//! `kando` is the agent binary (`cargo build -p kanister-agent`; `cargo test --workspace` builds
//! it before running tests, and this test builds it when it is missing) behind a symlink named
//! `kando` on the PATH of the local cluster's commands.
//!
//! The second generation (upstream's blueprint-v2) runs too: `--output-name kopiaOutput` gives
//! upstream's snapshot JSON as a `kopiaSnapshot` artifact; restore and delete hand it back with
//! `--kopia-snapshot`.
//!
//! Needs the test infrastructure (`eval "$(bash tests/infra.sh env)"`): SeaweedFS S3 with its
//! filer on 127.0.0.1:8888, MariaDB and PostgreSQL. Fails without them.

use std::sync::Arc;
use std::time::Duration;

use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::cluster::{Cluster as _, EnvSource};
use kanister_coordinator::crd::ActionSet;
use kanister_coordinator::engine::{Engine, repokey};
use serde_json::{Value, json};

mod support;
use kanister_agent::kando;
use support::{
    ArgvScan, Logs, MysqlDb, PgDb, agent_binary, assert_complete, engine_config, infra_var, mysql, mysql_fingerprint,
    mysql_stdin, password, psql_stdin, repository_key, run_to_end, s3_profile_yaml, unique_name,
};

const PROFILE: &str = r#"'{{ toJson .Profile }}'"#;

/// The blueprint, written as for upstream Kanister.
fn blueprint() -> String {
    r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: kando, namespace: kanister}
actions:
  mysqlBackup:
    outputArtifacts:
      dump:
        keyValue:
          path: "{{ .Phases.dump.Output.path }}"
    phases:
    - func: KubeTask
      name: dump
      args:
        namespace: db
        image: ghcr.io/kanisterio/mysql-sidecar:0.112.0
        podOverride: @MYSQL_PWD@
        command:
        - bash
        - -o
        - pipefail
        - -ec
        - |
          path='mysql/{{ .Options.database }}/{{ .Options.tag }}.sql.gz'
          mysqldump --no-defaults -u'{{ index .Secrets.db.Data "username" | toString }}' \
            -h '{{ index .Secrets.db.Data "host" | toString }}' -P '{{ index .Secrets.db.Data "port" | toString }}' \
            --single-transaction --skip-dump-date --databases '{{ .Options.database }}' \
            | gzip -n | kando location push --profile @PROFILE@ --path "$path" -
          kando output path "$path"
  mysqlBackupCut:
    phases:
    - func: KubeTask
      name: dump
      args:
        namespace: db
        image: ghcr.io/kanisterio/mysql-sidecar:0.112.0
        podOverride: @MYSQL_PWD@
        command:
        - bash
        - -ec
        - |
          # No pipefail: the dump dies (cut off by head), the pipeline's status is kando's.
          mysqldump --no-defaults -u'{{ index .Secrets.db.Data "username" | toString }}' \
            -h '{{ index .Secrets.db.Data "host" | toString }}' -P '{{ index .Secrets.db.Data "port" | toString }}' \
            --single-transaction --databases '{{ .Options.database }}' \
            | head -c 20000 | gzip -n | kando location push --profile @PROFILE@ --path mysql/cut.sql.gz -
  mysqlRestore:
    inputArtifactNames: [dump]
    phases:
    - func: KubeTask
      name: load
      args:
        namespace: db
        image: ghcr.io/kanisterio/mysql-sidecar:0.112.0
        podOverride: @MYSQL_PWD@
        command:
        - bash
        - -o
        - pipefail
        - -ec
        - |
          kando location pull --profile @PROFILE@ --path '{{ .ArtifactsIn.dump.KeyValue.path }}' - \
            | gunzip | mysql --no-defaults -u'{{ index .Secrets.db.Data "username" | toString }}' \
              -h '{{ index .Secrets.db.Data "host" | toString }}' -P '{{ index .Secrets.db.Data "port" | toString }}'
  pgBackup:
    outputArtifacts:
      dump:
        keyValue:
          path: "{{ .Phases.dump.Output.path }}"
    phases:
    - func: KubeTask
      name: dump
      args:
        namespace: db
        image: ghcr.io/kanisterio/postgres-kanister-tools:0.112.0
        podOverride: @PGPASSWORD@
        command:
        - bash
        - -o
        - pipefail
        - -ec
        - |
          export PGHOST='{{ index .Secrets.db.Data "host" | toString }}'
          export PGPORT='{{ index .Secrets.db.Data "port" | toString }}'
          export PGUSER='{{ index .Secrets.db.Data "username" | toString }}'
          # Other tests share this server: dump the globals and this database only.
          others=$(psql -d postgres -tA -c "SELECT string_agg('--exclude-database=' || datname, ' ')
            FROM pg_database WHERE NOT datistemplate AND datname <> '{{ .Options.database }}'")
          path='postgres/{{ .Options.database }}/{{ .Options.tag }}.sql.gz'
          pg_dumpall $others | gzip -n | kando location push --profile @PROFILE@ --path "$path" -
          kando output path "$path"
  pgRestore:
    inputArtifactNames: [dump]
    phases:
    - func: KubeTask
      name: load
      args:
        namespace: db
        image: ghcr.io/kanisterio/postgres-kanister-tools:0.112.0
        podOverride: @PGPASSWORD@
        command:
        - bash
        - -o
        - pipefail
        - -ec
        - |
          export PGHOST='{{ index .Secrets.db.Data "host" | toString }}'
          export PGPORT='{{ index .Secrets.db.Data "port" | toString }}'
          export PGUSER='{{ index .Secrets.db.Data "username" | toString }}'
          # The roles exist already: psql reports them and goes on, as upstream's restore does.
          kando location pull --profile @PROFILE@ --path '{{ .ArtifactsIn.dump.KeyValue.path }}' - \
            | gunzip | psql -q -d postgres >/dev/null
  delete:
    inputArtifactNames: [dump]
    phases:
    - func: KubeTask
      name: deleteDump
      args:
        namespace: db
        image: ghcr.io/kanisterio/mysql-sidecar:0.112.0
        command:
        - bash
        - -ec
        - kando location delete --profile @PROFILE@ --path '{{ .ArtifactsIn.dump.KeyValue.path }}'
  # Second generation (upstream's blueprint-v2): push with --output-name, the snapshot as a
  # kopiaSnapshot artifact, pull and delete by --kopia-snapshot, the same path for every backup.
  mysqlBackupV2:
    outputArtifacts:
      mysqlBackup:
        kopiaSnapshot: "{{ .Phases.dumpToStore.Output.kopiaOutput }}"
    phases:
    - func: KubeTask
      name: dumpToStore
      args:
        namespace: db
        image: ghcr.io/kanisterio/mysql-sidecar:0.112.0
        podOverride: @MYSQL_PWD@
        command:
        - bash
        - -o
        - errexit
        - -o
        - pipefail
        - -c
        - |
          backup_file_path="dump.sql"
          mysqldump --no-defaults -u'{{ index .Secrets.db.Data "username" | toString }}' \
            -h '{{ index .Secrets.db.Data "host" | toString }}' -P '{{ index .Secrets.db.Data "port" | toString }}' \
            --single-transaction --databases '{{ .Options.database }}' \
            | kando location push --profile @PROFILE@ --path "${backup_file_path}" --output-name "kopiaOutput" -
  mysqlRestoreV2:
    inputArtifactNames: [mysqlBackup]
    phases:
    - func: KubeTask
      name: restoreFromStore
      args:
        namespace: db
        image: ghcr.io/kanisterio/mysql-sidecar:0.112.0
        podOverride: @MYSQL_PWD@
        command:
        - bash
        - -o
        - errexit
        - -o
        - pipefail
        - -c
        - |
          backup_file_path="dump.sql"
          kopia_snap='{{ .ArtifactsIn.mysqlBackup.KopiaSnapshot }}'
          kando location pull --profile @PROFILE@ --path "${backup_file_path}" --kopia-snapshot "${kopia_snap}" - \
            | mysql --no-defaults -u'{{ index .Secrets.db.Data "username" | toString }}' \
              -h '{{ index .Secrets.db.Data "host" | toString }}' -P '{{ index .Secrets.db.Data "port" | toString }}'
  deleteV2:
    inputArtifactNames: [mysqlBackup]
    phases:
    - func: KubeTask
      name: deleteFromStore
      args:
        namespace: db
        image: ghcr.io/kanisterio/mysql-sidecar:0.112.0
        command:
        - bash
        - -o
        - errexit
        - -o
        - pipefail
        - -c
        - |
          backup_file_path="dump.sql"
          kopia_snap='{{ .ArtifactsIn.mysqlBackup.KopiaSnapshot }}'
          kando location delete --profile @PROFILE@ --path "${backup_file_path}" --kopia-snapshot "${kopia_snap}"
  pgBackupV2:
    outputArtifacts:
      pgBackup:
        kopiaSnapshot: "{{ .Phases.pgDump.Output.kopiaOutput }}"
    phases:
    - func: KubeTask
      name: pgDump
      args:
        namespace: db
        image: ghcr.io/kanisterio/postgres-kanister-tools:0.112.0
        podOverride: @PGPASSWORD@
        command:
        - bash
        - -o
        - errexit
        - -o
        - pipefail
        - -c
        - |
          export PGHOST='{{ index .Secrets.db.Data "host" | toString }}'
          export PGPORT='{{ index .Secrets.db.Data "port" | toString }}'
          export PGUSER='{{ index .Secrets.db.Data "username" | toString }}'
          backup_file_path='backup.sql.gz'
          pg_dump --clean --if-exists --create '{{ .Options.database }}' | gzip -c \
            | kando location push --profile @PROFILE@ --path "${backup_file_path}" --output-name "kopiaOutput" -
  pgRestoreV2:
    inputArtifactNames: [pgBackup]
    phases:
    - func: KubeTask
      name: pgRestore
      args:
        namespace: db
        image: ghcr.io/kanisterio/postgres-kanister-tools:0.112.0
        podOverride: @PGPASSWORD@
        command:
        - bash
        - -o
        - errexit
        - -o
        - pipefail
        - -c
        - |
          export PGHOST='{{ index .Secrets.db.Data "host" | toString }}'
          export PGPORT='{{ index .Secrets.db.Data "port" | toString }}'
          export PGUSER='{{ index .Secrets.db.Data "username" | toString }}'
          backup_file_path='backup.sql.gz'
          kopia_snap='{{ .ArtifactsIn.pgBackup.KopiaSnapshot }}'
          kando location pull --profile @PROFILE@ --path "${backup_file_path}" --kopia-snapshot "${kopia_snap}" - \
            | gunzip -c -f | psql -q -v ON_ERROR_STOP=1 -d postgres >/dev/null
  pgDeleteV2:
    inputArtifactNames: [pgBackup]
    phases:
    - func: KubeTask
      name: deleteDump
      args:
        namespace: db
        image: ghcr.io/kanisterio/postgres-kanister-tools:0.112.0
        command:
        - bash
        - -o
        - errexit
        - -o
        - pipefail
        - -c
        - |
          kopia_snap='{{ .ArtifactsIn.pgBackup.KopiaSnapshot }}'
          kando location delete --profile @PROFILE@ --path 'backup.sql.gz' --kopia-snapshot "${kopia_snap}"
  locationDelete:
    inputArtifactNames: [dump]
    phases:
    - func: LocationDelete
      name: deleteDump
      args:
        artifact: '{{ .ArtifactsIn.dump.KeyValue.path }}'
"#
    .replace("@PROFILE@", PROFILE)
    .replace("@MYSQL_PWD@", &password_override("MYSQL_PWD"))
    .replace("@PGPASSWORD@", &password_override("PGPASSWORD"))
}

/// Upstream's way to give a task pod a password: `podOverride` env from the ActionSet's Secret
/// (in the pod's namespace), as flow-style YAML.
fn password_override(var: &str) -> String {
    format!(
        "{{containers: [{{name: container, env: [{{name: {var}, valueFrom: {{secretKeyRef: \
         {{name: '{{{{ .Secrets.db.Name }}}}', key: password}}}}}}]}}]}}"
    )
}

struct World {
    cluster: Arc<LocalCluster>,
    engine: Engine<LocalCluster>,
    prefix: String,
    _bin: tempfile::TempDir,
}

fn world() -> World {
    let (bin, path) = support::tools_path();
    let prefix = unique_name("kando", "repo");
    let c = LocalCluster::new().with_env("PATH", path);
    // This Profile also states skipSSLVerify, at its default (false).
    let objects =
        format!("{}skipSSLVerify: false\n", s3_profile_yaml("kanister", "s3-profile", "s3-credentials", &prefix));
    c.load_yaml(&objects, "world").unwrap();
    c.load_yaml(&blueprint(), "blueprint").unwrap();
    let cluster = Arc::new(c);
    World { engine: Engine::new(cluster.clone(), engine_config(None)), cluster, prefix, _bin: bin }
}

impl World {
    /// Runs `action` to its end and returns the ActionSet.
    async fn run(&self, name: &str, action: &str, secret: &str, options: Value, artifacts: Value) -> ActionSet {
        let a = self.run_any(name, action, secret, options, artifacts).await;
        assert_complete(&a);
        a
    }

    /// Runs `action` to its end, however it ends.
    async fn run_any(&self, name: &str, action: &str, secret: &str, options: Value, artifacts: Value) -> ActionSet {
        self.cluster.put(json!({
            "apiVersion": "cr.kanister.io/v1alpha1",
            "kind": "ActionSet",
            "metadata": {"name": name, "namespace": "kanister"},
            "spec": {"actions": [{
                "name": action,
                "blueprint": "kando",
                "object": {"kind": "Namespace", "name": "db"},
                "profile": {"name": "s3-profile", "namespace": "kanister"},
                "secrets": {"db": {"name": secret, "namespace": "db"}},
                "options": options,
                "artifacts": artifacts,
            }]}
        }));
        run_to_end(&self.engine, name, Duration::from_secs(120)).await
    }

    /// Adds the database's Secret `db/<name>` (the ActionSet's `db` Secret).
    fn db_secret(&self, name: &str, user: &str, password: &str, host: &str, port: &str) {
        let yaml = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: db}}\n\
             stringData: {{username: \"{user}\", password: \"{password}\", host: \"{host}\", port: \"{port}\"}}\n"
        );
        self.cluster.load_yaml(&yaml, "db secret").unwrap();
    }

    /// Bytes and object count under `<prefix>/<sub>` in the bucket, through the SeaweedFS filer.
    fn stored(&self, sub: &str) -> (u64, usize) {
        let bucket = infra_var("KANISTER_TEST_S3_BUCKET");
        filer_walk(&format!("/buckets/{bucket}/{}/{sub}", self.prefix))
    }

    /// The repository key the coordinator created for the Profile.
    async fn repository_key(&self) -> String {
        repository_key(&self.cluster, "kanister", "s3-profile").await
    }
}

/// Total size and number of files under a filer directory (recursively).
fn filer_walk(dir: &str) -> (u64, usize) {
    let out = std::process::Command::new("curl")
        .args(["-sf", "-H", "Accept: application/json", &format!("http://127.0.0.1:8888{dir}/?limit=100000")])
        .output()
        .expect("curl runs");
    if !out.status.success() {
        return (0, 0); // the directory does not exist (yet, or any more)
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut total = (0, 0);
    for e in v.get("Entries").and_then(Value::as_array).into_iter().flatten() {
        let path = e["FullPath"].as_str().unwrap_or_default();
        // Directories have the directory bit (1 << 31) in their Go file mode.
        if e["Mode"].as_u64().unwrap_or(0) & (1 << 31) != 0 {
            let (b, n) = filer_walk(path);
            total = (total.0 + b, total.1 + n);
        } else {
            total = (total.0 + e["FileSize"].as_u64().unwrap_or(0), total.1 + 1);
        }
    }
    total
}

/// Runs `kando location pull` at `path` as a task pod would (key and credential from the
/// environment).
fn kando_pull_works(world: &World, key: &str, path: &str) -> bool {
    let profile = json!({
        "Location": {
            "type": "s3Compliant",
            "bucket": infra_var("KANISTER_TEST_S3_BUCKET"),
            "endpoint": infra_var("KANISTER_TEST_S3_ENDPOINT"),
            "prefix": world.prefix,
            "region": "us-east-1",
        },
        "Credential": {"Type": "keyPair", "KeyPair": {"ID": infra_var("KANISTER_TEST_S3_ACCESS_KEY"), "Secret": ""},
                       "FromEnv": kando::CREDENTIAL_ENV},
        "SkipSSLVerify": false,
    });
    let credential = json!({"Type": "keyPair", "KeyPair": {
        "ID": infra_var("KANISTER_TEST_S3_ACCESS_KEY"),
        "Secret": infra_var("KANISTER_TEST_S3_SECRET_KEY"),
    }});
    std::process::Command::new(agent_binary())
        .args(["kando", "location", "pull", "--profile", &profile.to_string(), "--path", path, "-"])
        .env("KANISTER_REPO_KEY", key)
        .env(kando::CREDENTIAL_ENV, credential.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("kando runs")
        .success()
}

fn artifact(a: &ActionSet) -> Value {
    let art = &a.status.as_ref().unwrap().actions[0].artifacts["dump"];
    json!({"dump": serde_json::to_value(art).unwrap()})
}

fn artifact_path(a: &ActionSet) -> String {
    a.status.as_ref().unwrap().actions[0].artifacts["dump"].key_value["path"].clone()
}

// ---- MariaDB ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysqldump_through_kando_backs_up_restores_dedups_and_deletes() {
    let logs = Logs::capture();
    let w = world();
    let db = MysqlDb { name: unique_name("kando", "my"), user: unique_name("kando", "myu") };
    let pw = password();
    mysql_stdin(&format!(
        "CREATE DATABASE {0}; CREATE USER '{1}'@'%' IDENTIFIED BY '{2}'; GRANT ALL ON {0}.* TO '{1}'@'%'; USE {0};
         CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(64), amount DECIMAL(10,2), note TEXT);
         INSERT INTO orders SELECT seq, CONCAT('customer-', seq % 97, IF(seq % 7 = 0, ' \\'q\\'\\n', ' é')),
                seq * 1.25, IF(seq % 11 = 0, NULL, REPEAT(MD5(seq), 1 + seq % 5)) FROM seq_1_to_20000;",
        db.name, db.user, pw
    ));
    let before = mysql_fingerprint(&db.name);
    assert!(before.starts_with("20000\t"), "{before}");
    w.db_secret("mysql", &db.user, &pw, "127.0.0.1", &infra_var("KANISTER_TEST_MYSQL_PORT"));
    let s3_secret = infra_var("KANISTER_TEST_S3_SECRET_KEY");
    let scan = ArgvScan::start(w.cluster.clone(), "s3-profile", vec![pw.clone(), s3_secret.clone()]);

    let options = |tag: &str| json!({"database": db.name, "tag": tag});
    let backup = w.run("my-backup-1", "mysqlBackup", "mysql", options("one"), json!({})).await;
    let path = artifact_path(&backup);
    assert_eq!(path, format!("mysql/{}/one.sql.gz", db.name));
    let (first_bytes, _) = w.stored("");
    let (_, snapshots) = w.stored("snapshots");
    assert!(first_bytes > 10_000, "the first backup stored only {first_bytes} bytes");
    assert_eq!(snapshots, 1, "one snapshot after one push");

    // The same data again (gzip -n is deterministic): the second backup stores far less.
    let again = w.run("my-backup-2", "mysqlBackup", "mysql", options("two"), json!({})).await;
    let (second_bytes, _) = w.stored("");
    let added = second_bytes - first_bytes;
    assert!(added * 10 < first_bytes, "the second backup added {added} bytes after {first_bytes}: no dedup");

    // A dump cut off halfway in a pipeline without pipefail: kando sees the dump lacks its
    // end line, stores no snapshot, and the phase fails.
    let cut = w.run_any("my-backup-cut", "mysqlBackupCut", "mysql", options("cut"), json!({})).await;
    let status = cut.status.as_ref().unwrap();
    assert_eq!(status.state, kanister_coordinator::crd::State::Failed, "{status:?}");
    let message = status.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
    assert!(message.contains("mysqldump dump (gzip-compressed) that ends before its"), "{message}");
    assert_eq!(w.stored("snapshots").1, 2, "the cut dump left a snapshot");

    // The key, the S3 credential and the password went to the task pods through the
    // environment from Secrets; their commands hold none of them.
    let key = w.repository_key().await;
    assert_eq!(key.len(), 64);
    let pods = w.cluster.pods();
    assert!(!pods.is_empty());
    for p in &pods {
        let from_secret = |name: &str, prefix: &str| {
            p.spec.env.iter().any(|e| {
                e.name == name && matches!(&e.source, EnvSource::SecretKey { secret, .. } if secret.starts_with(prefix))
            })
        };
        assert!(from_secret("KANISTER_REPO_KEY", repokey::SECRET_PREFIX), "{:?}", p.spec.env);
        assert!(from_secret(kando::CREDENTIAL_ENV, "kanister-profile-kanister-s3-profile-"), "{:?}", p.spec.env);
        for secret in [&key, &s3_secret, &pw] {
            assert!(p.spec.containers.iter().all(|c| !c.command.iter().any(|a| a.contains(secret.as_str()))));
        }
    }
    let dump_pod = pods.iter().find(|p| p.spec.generate_name == "kanister-job-").unwrap();
    assert_eq!(dump_pod.spec.override_env("container")[0]["name"], "MYSQL_PWD");

    // Drop the database, restore it from the first artifact.
    mysql("", &format!("DROP DATABASE {}", db.name));
    w.run("my-restore", "mysqlRestore", "mysql", json!({}), artifact(&backup)).await;
    assert_eq!(mysql_fingerprint(&db.name), before, "restored rows differ");

    // Delete both artifacts: the snapshots are gone and pull finds nothing any more.
    assert!(kando_pull_works(&w, &key, &path));
    assert!(!kando_pull_works(&w, &"0".repeat(64), &path), "a wrong key must not open the repository");
    w.run("my-delete-1", "delete", "mysql", json!({}), artifact(&backup)).await;
    w.run("my-delete-2", "delete", "mysql", json!({}), artifact(&again)).await;
    assert_eq!(w.stored("snapshots").1, 0, "snapshots left after delete");
    assert!(!kando_pull_works(&w, &key, &path), "the deleted path can still be pulled");

    let names = ["my-backup-1", "my-backup-2", "my-backup-cut", "my-restore", "my-delete-1", "my-delete-2"];
    assert_no_secret_anywhere(&w, scan, &names, &[pw, s3_secret, key], &logs).await;
}

/// No secret in the argv of any process while the test ran (the scan), in any status written
/// to the ActionSets `names`, in any event, or in the coordinator's logs (kando runs as a
/// process of its own: its logs are not captured here).
async fn assert_no_secret_anywhere(w: &World, scan: ArgvScan, names: &[&str], secrets: &[String], logs: &Logs) {
    scan.assert_clean().await;
    support::assert_no_secret_anywhere(&w.cluster, names, secrets, logs, &["kanister_coordinator"]);
}

// ---- PostgreSQL ----

fn psql(db: &str, query: &str) -> String {
    let out = std::process::Command::new("psql")
        .args(["-h", &infra_var("KANISTER_TEST_PG_HOST"), "-p", &infra_var("KANISTER_TEST_PG_PORT")])
        .args(["-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-tA", "-c", query])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql -c {query:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn pg_fingerprint(db: &str) -> String {
    psql(db, "SELECT COUNT(*), SUM(hashtext(id || '|' || customer || '|' || coalesce(note, '<null>'))) FROM orders")
}

#[tokio::test]
async fn pg_dumpall_through_kando_backs_up_restores_and_deletes() {
    let logs = Logs::capture();
    let w = world();
    let db = PgDb { name: unique_name("kando", "pg"), user: unique_name("kando", "pgu") };
    let pw = password();
    // A superuser: pg_dumpall reads every role.
    psql_stdin("postgres", &format!("CREATE ROLE {} LOGIN SUPERUSER PASSWORD '{pw}';", db.user));
    psql("postgres", &format!("CREATE DATABASE {}", db.name));
    psql(
        &db.name,
        "CREATE TABLE orders (id INT PRIMARY KEY, customer TEXT, note TEXT);
         INSERT INTO orders SELECT g, 'customer-' || (g % 97) || CASE WHEN g % 7 = 0 THEN ' ''q''' ELSE ' é' END,
                CASE WHEN g % 11 = 0 THEN NULL ELSE repeat(md5(g::text), 1 + g % 5) END
         FROM generate_series(1, 20000) g;",
    );
    let before = pg_fingerprint(&db.name);
    assert!(before.starts_with("20000|"), "{before}");
    let (host, port) = (infra_var("KANISTER_TEST_PG_HOST"), infra_var("KANISTER_TEST_PG_PORT"));
    w.db_secret("pg", &db.user, &pw, &host, &port);
    let s3_secret = infra_var("KANISTER_TEST_S3_SECRET_KEY");
    let scan = ArgvScan::start(w.cluster.clone(), "s3-profile", vec![pw.clone(), s3_secret.clone()]);

    let backup = w.run("pg-backup", "pgBackup", "pg", json!({"database": db.name, "tag": "one"}), json!({})).await;
    let path = artifact_path(&backup);
    assert_eq!(path, format!("postgres/{}/one.sql.gz", db.name));
    assert_eq!(w.stored("snapshots").1, 1);
    let dump_pod = w.cluster.pods().into_iter().find(|p| p.spec.generate_name == "kanister-job-").unwrap();
    assert_eq!(dump_pod.spec.override_env("container")[0]["name"], "PGPASSWORD");

    psql("postgres", &format!("DROP DATABASE {} WITH (FORCE)", db.name));
    w.run("pg-restore", "pgRestore", "pg", json!({}), artifact(&backup)).await;
    assert_eq!(pg_fingerprint(&db.name), before, "restored rows differ");

    let key = w.repository_key().await;
    assert!(kando_pull_works(&w, &key, &path));
    // Upstream's LocationDelete (run by the coordinator itself) removes what kando pushed.
    w.run("pg-delete", "locationDelete", "pg", json!({}), artifact(&backup)).await;
    assert_eq!(w.stored("snapshots").1, 0, "snapshots left after delete");
    assert!(!kando_pull_works(&w, &key, &path), "the deleted path can still be pulled");

    assert_no_secret_anywhere(&w, scan, &["pg-backup", "pg-restore", "pg-delete"], &[pw, s3_secret, key], &logs).await;
}

// ---- Second generation (blueprint-v2) ----

/// The kopiaSnapshot artifact of `name` in action `a`: upstream's snapshot JSON.
fn kopia_artifact(a: &ActionSet, name: &str) -> (Value, Value) {
    let art = &a.status.as_ref().unwrap().actions[0].artifacts[name];
    let info: Value = serde_json::from_str(&art.kopia_snapshot)
        .unwrap_or_else(|e| panic!("kopiaSnapshot {:?} is not upstream's JSON: {e}", art.kopia_snapshot));
    (json!({name: serde_json::to_value(art).unwrap()}), info)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blueprint_v2_mysql_restores_the_snapshot_it_names_and_deletes_only_that_one() {
    let logs = Logs::capture();
    let w = world();
    let db = MysqlDb { name: unique_name("kandov2", "my"), user: unique_name("kandov2", "myu") };
    let pw = password();
    mysql_stdin(&format!(
        "CREATE DATABASE {0}; CREATE USER '{1}'@'%' IDENTIFIED BY '{2}'; GRANT ALL ON {0}.* TO '{1}'@'%'; USE {0};
         CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(64), amount DECIMAL(10,2), note TEXT);
         INSERT INTO orders SELECT seq, CONCAT('customer-', seq % 97), seq * 1.25, REPEAT(MD5(seq), 1 + seq % 5)
         FROM seq_1_to_5000;",
        db.name, db.user, pw
    ));
    let first = mysql_fingerprint(&db.name);
    w.db_secret("mysql", &db.user, &pw, "127.0.0.1", &infra_var("KANISTER_TEST_MYSQL_PORT"));
    let s3_secret = infra_var("KANISTER_TEST_S3_SECRET_KEY");
    let scan = ArgvScan::start(w.cluster.clone(), "s3-profile", vec![pw.clone(), s3_secret.clone()]);
    let options = json!({"database": db.name});

    let one = w.run("v2-my-backup-1", "mysqlBackupV2", "mysql", options.clone(), json!({})).await;
    let (one_art, one_info) = kopia_artifact(&one, "mysqlBackup");
    assert_eq!(one_info["id"].as_str().map(str::len), Some(64), "{one_info}");
    assert!(one_info["logicalSize"].as_i64().unwrap() > 100_000, "{one_info}");
    // More rows, a second backup at the same path: the path alone no longer names the first.
    mysql(&db.name, "INSERT INTO orders SELECT seq, 'later', 1, 'x' FROM seq_5001_to_5100");
    let second = mysql_fingerprint(&db.name);
    assert_ne!(first, second);
    let two = w.run("v2-my-backup-2", "mysqlBackupV2", "mysql", options.clone(), json!({})).await;
    let (two_art, two_info) = kopia_artifact(&two, "mysqlBackup");
    assert_ne!(one_info["id"], two_info["id"]);
    assert_eq!(w.stored("snapshots").1, 2);

    mysql("", &format!("DROP DATABASE {}", db.name));
    w.run("v2-my-restore", "mysqlRestoreV2", "mysql", json!({}), one_art.clone()).await;
    assert_eq!(mysql_fingerprint(&db.name), first, "--kopia-snapshot restored another backup than it names");

    w.run("v2-my-delete-1", "deleteV2", "mysql", json!({}), one_art.clone()).await;
    assert_eq!(w.stored("snapshots").1, 1, "deleting one snapshot by --kopia-snapshot removed another");
    // Deleting it again is not an error (a retried delete).
    w.run("v2-my-delete-1b", "deleteV2", "mysql", json!({}), one_art).await;
    mysql("", &format!("DROP DATABASE {}", db.name));
    w.run("v2-my-restore-2", "mysqlRestoreV2", "mysql", json!({}), two_art.clone()).await;
    assert_eq!(mysql_fingerprint(&db.name), second);
    w.run("v2-my-delete-2", "deleteV2", "mysql", json!({}), two_art).await;
    assert_eq!(w.stored("snapshots").1, 0);

    let key = w.repository_key().await;
    let names = ["v2-my-backup-1", "v2-my-backup-2", "v2-my-restore", "v2-my-delete-1", "v2-my-restore-2"];
    assert_no_secret_anywhere(&w, scan, &names, &[pw, s3_secret, key], &logs).await;
}

#[tokio::test]
async fn blueprint_v2_postgresql_backs_up_restores_and_deletes_by_kopia_snapshot() {
    let logs = Logs::capture();
    let w = world();
    let db = PgDb { name: unique_name("kandov2", "pg"), user: unique_name("kandov2", "pgu") };
    let pw = password();
    psql_stdin("postgres", &format!("CREATE ROLE {} LOGIN SUPERUSER PASSWORD '{pw}';", db.user));
    psql("postgres", &format!("CREATE DATABASE {}", db.name));
    psql(
        &db.name,
        "CREATE TABLE orders (id INT PRIMARY KEY, customer TEXT, note TEXT);
         INSERT INTO orders SELECT g, 'customer-' || (g % 97), repeat(md5(g::text), 1 + g % 5)
         FROM generate_series(1, 5000) g;",
    );
    let before = pg_fingerprint(&db.name);
    let (host, port) = (infra_var("KANISTER_TEST_PG_HOST"), infra_var("KANISTER_TEST_PG_PORT"));
    w.db_secret("pg", &db.user, &pw, &host, &port);
    let s3_secret = infra_var("KANISTER_TEST_S3_SECRET_KEY");
    let scan = ArgvScan::start(w.cluster.clone(), "s3-profile", vec![pw.clone(), s3_secret.clone()]);

    let backup = w.run("v2-pg-backup", "pgBackupV2", "pg", json!({"database": db.name}), json!({})).await;
    let (art, info) = kopia_artifact(&backup, "pgBackup");
    assert_eq!(info["id"].as_str().map(str::len), Some(64), "{info}");
    psql("postgres", &format!("DROP DATABASE {} WITH (FORCE)", db.name));
    w.run("v2-pg-restore", "pgRestoreV2", "pg", json!({}), art.clone()).await;
    assert_eq!(pg_fingerprint(&db.name), before, "restored rows differ");
    w.run("v2-pg-delete", "pgDeleteV2", "pg", json!({}), art).await;
    assert_eq!(w.stored("snapshots").1, 0, "snapshots left after delete");

    let key = w.repository_key().await;
    let names = ["v2-pg-backup", "v2-pg-restore", "v2-pg-delete"];
    assert_no_secret_anywhere(&w, scan, &names, &[pw, s3_secret, key], &logs).await;
}

// ---- Upstream's kando in the image: credentials inline on request ----

/// By default a task pod's `{{ toJson .Profile }}` carries no secret (a reference that only our
/// kando resolves, with the credential in the pod's environment from a Secret). A Blueprint
/// annotated `kanister.io/profile-credentials: inline` gets upstream's rendering, values in the
/// JSON, for images that carry upstream's kando; an unknown value fails the ActionSet by name.
#[tokio::test]
async fn a_blueprint_asks_for_inline_credentials_for_upstreams_kando() {
    let w = world();
    let secret = infra_var("KANISTER_TEST_S3_SECRET_KEY");
    let blueprint = |name: &str, annotation: &str| {
        format!(
            "apiVersion: cr.kanister.io/v1alpha1\nkind: Blueprint\nmetadata: {{name: {name}, namespace: kanister{annotation}}}\n\
             actions:\n  show:\n    phases:\n    - func: KubeTask\n      name: show\n      args:\n        namespace: db\n\
             \x20       image: ghcr.io/kanisterio/kanister-tools:0.112.0\n        command: [sh, -c, 'true', '{{{{ toJson .Profile }}}}']\n"
        )
    };
    w.cluster.load_yaml(&blueprint("by-reference", ""), "bp").unwrap();
    w.cluster
        .load_yaml(&blueprint("inline", ", annotations: {kanister.io/profile-credentials: inline}"), "bp")
        .unwrap();
    w.cluster.load_yaml(&blueprint("typo", ", annotations: {kanister.io/profile-credentials: inlined}"), "bp").unwrap();
    let run = |name: &'static str, bp: &str| {
        w.cluster.put(json!({
            "apiVersion": "cr.kanister.io/v1alpha1", "kind": "ActionSet",
            "metadata": {"name": name, "namespace": "kanister"},
            "spec": {"actions": [{"name": "show", "blueprint": bp, "object": {"kind": "Namespace", "name": "db"},
                                  "profile": {"name": "s3-profile", "namespace": "kanister"}}]}
        }));
        run_to_end(&w.engine, name, Duration::from_secs(60))
    };
    let pod_of = |bp: &str| {
        w.cluster.pods().into_iter().rev().find(|p| p.spec.labels.values().any(|v| v.starts_with(bp))).unwrap_or_else(
            || {
                panic!(
                    "no pod for {bp}: {:?}",
                    w.cluster.pods().iter().map(|p| p.spec.labels.clone()).collect::<Vec<_>>()
                )
            },
        )
    };

    assert_complete(&run("ref-1", "by-reference").await);
    let pod = pod_of("ref-1");
    let command = pod.spec.containers[0].command.join(" ");
    assert!(!command.contains(&secret) && command.contains(kando::CREDENTIAL_ENV), "{command}");
    assert!(pod.spec.env.iter().any(|e| e.name == kando::CREDENTIAL_ENV), "no credential variable");

    assert_complete(&run("inline-1", "inline").await);
    let pod = pod_of("inline-1");
    let command = pod.spec.containers[0].command.join(" ");
    assert!(command.contains(&secret) && !command.contains("FromEnv"), "upstream's rendering expected: {command}");
    assert!(!pod.spec.env.iter().any(|e| e.name == kando::CREDENTIAL_ENV), "a reference nobody reads");

    // An unknown value: the ActionSet is refused at once, naming the annotation and the choices.
    w.cluster.put(json!({
        "apiVersion": "cr.kanister.io/v1alpha1", "kind": "ActionSet",
        "metadata": {"name": "typo-1", "namespace": "kanister"},
        "spec": {"actions": [{"name": "show", "blueprint": "typo", "object": {"kind": "Namespace", "name": "db"},
                              "profile": {"name": "s3-profile", "namespace": "kanister"}}]}
    }));
    assert_eq!(
        w.engine.reconcile("kanister", "typo-1").await.unwrap(),
        kanister_coordinator::engine::Outcome::Rejected
    );
    let failed = w.cluster.get_actionset("kanister", "typo-1").await.unwrap();
    let status = failed.status.as_ref().unwrap();
    assert_eq!(status.state, kanister_coordinator::crd::State::Failed, "{status:?}");
    let message = status.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
    assert!(message.contains("kanister.io/profile-credentials") && message.contains("\"inline\""), "{message}");
}
