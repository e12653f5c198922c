//! The seed's story end to end, through kanctl and the coordinator's gRPC API, on a
//! `LocalCluster` with the real MariaDB and SeaweedFS of the test infrastructure:
//! `create profile s3compliant` (probe write/read/delete), `create actionset --action backup`
//! with the StatefulSet, Profile and Secret of the story, `get actionsets` showing it complete
//! with the `mysqlCloudDump` artifact, `describe` with its events, `snapshots` listing the dump in
//! the Profile's repository tied to the ActionSet, the data dropped, `--action restore --from`
//! bringing the rows back, and `--action delete --from` removing the snapshot.
//!
//! The blueprint has the shape of upstream's `examples/mysql/mysql-blueprint.yaml`: `KubeTask`
//! phases pipe `mysqldump | gzip | kando location push --profile '{{ toJson .Profile }}'` and
//! report the path with `kando output s3path`; restore pulls it back through `gunzip | mysql`;
//! delete runs `kando location delete` in the namespace of `--namespacetargets`. `kando` is the
//! agent binary on the local cluster's PATH ([`support::tools_path`]). Differences from
//! upstream, for a MariaDB shared with other tests: the dump holds only the test's database
//! (`--databases`, not `--all-databases`), the server's address comes from the Secret (upstream
//! connects to the Service named by the instance label, which resolves only in a cluster) and
//! the password goes through `MYSQL_PWD` rather than mysqldump's argv.
//!
//! Needs `KANISTER_TEST_MYSQL_*` and `KANISTER_TEST_S3_*` (`eval "$(bash tests/infra.sh
//! env)"`); fails without them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use kanister_coordinator::api::{CoordinatorApi, ServeConfig, serve};
use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::engine::{Engine, EngineConfig};
use kanister_coordinator::kanctl::{self, Cli, Error, Io, Outcome};
use serde_json::Value;

mod support;
use support::{MYSQL_ORDERS_FINGERPRINT, MysqlDatabase, infra_var, mysql_async, repository_key, unique_name};

/// Upstream's mysql-blueprint, with the differences named in the module doc.
const BLUEPRINT: &str = r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: mysql-blueprint, namespace: kanister}
actions:
  backup:
    outputArtifacts:
      mysqlCloudDump:
        keyValue:
          s3path: "{{ .Phases.dumpToObjectStore.Output.s3path }}"
    phases:
    - func: KubeTask
      name: dumpToObjectStore
      args:
        image: ghcr.io/kanisterio/mysql-sidecar:0.117.0
        namespace: "{{ .StatefulSet.Namespace }}"
        command:
        - bash
        - -o
        - errexit
        - -o
        - pipefail
        - -c
        - |
          s3_path="/mysql-backups/{{ .StatefulSet.Namespace }}/{{ index .Object.metadata.labels "app.kubernetes.io/instance" }}/{{ toDate "2006-01-02T15:04:05.999999999Z07:00" .Time | date "2006-01-02T15-04-05" }}/dump.sql.gz"
          export MYSQL_PWD='{{ index .Secrets.mysql.Data "mysql-root-password" | toString }}'
          mysqldump --no-defaults -u root -h '{{ index .Secrets.mysql.Data "host" | toString }}' -P '{{ index .Secrets.mysql.Data "port" | toString }}' --single-transaction --databases '{{ .Options.database }}' | gzip - | kando location push --profile '{{ toJson .Profile }}' --path "${s3_path}" -
          kando output s3path "${s3_path}"
  restore:
    inputArtifactNames:
    - mysqlCloudDump
    phases:
    - func: KubeTask
      name: restoreFromBlobStore
      args:
        image: ghcr.io/kanisterio/mysql-sidecar:0.117.0
        namespace: "{{ .StatefulSet.Namespace }}"
        command:
        - bash
        - -o
        - errexit
        - -o
        - pipefail
        - -c
        - |
          s3_path="{{ .ArtifactsIn.mysqlCloudDump.KeyValue.s3path }}"
          export MYSQL_PWD='{{ index .Secrets.mysql.Data "mysql-root-password" | toString }}'
          kando location pull --profile '{{ toJson .Profile }}' --path "${s3_path}" - | gunzip | mysql --no-defaults -u root -h '{{ index .Secrets.mysql.Data "host" | toString }}' -P '{{ index .Secrets.mysql.Data "port" | toString }}'
  delete:
    inputArtifactNames:
    - mysqlCloudDump
    phases:
    - func: KubeTask
      name: deleteFromBlobStore
      args:
        image: ghcr.io/kanisterio/mysql-sidecar:0.117.0
        namespace: "{{ .Namespace.Name }}"
        command:
        - bash
        - -o
        - errexit
        - -o
        - pipefail
        - -c
        - |
          s3_path="{{ .ArtifactsIn.mysqlCloudDump.KeyValue.s3path }}"
          kando location delete --profile '{{ toJson .Profile }}' --path "${s3_path}"
"#;

fn world() -> String {
    let port = infra_var("KANISTER_TEST_MYSQL_PORT");
    format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: mysql-release, namespace: mysql-test, labels: {{app.kubernetes.io/instance: mysql-release}}}}
spec: {{replicas: 1, selector: {{matchLabels: {{app: mysql}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: mysql-release-0, namespace: mysql-test, labels: {{app: mysql}}}}
spec: {{containers: [{{name: mysql, image: "mysql:8"}}]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: mysql-release, namespace: mysql-test}}
stringData: {{mysql-root-password: "", host: 127.0.0.1, port: "{port}"}}
"#
    )
}

async fn kanctl(addr: SocketAddr, args: &[&str]) -> (Result<Outcome, Error>, String, String) {
    let address = format!("http://{addr}");
    let mut argv = vec!["kanctl", "--coordinator", &address, "--config", "/dev/null"];
    argv.extend(args);
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?} does not parse: {e}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = kanctl::run(cli, None, &mut Io { out: &mut out, err: &mut err, live: false }).await;
    (r, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

/// `kanctl snapshots --profile mysql-test/s3-profile -o json`.
async fn snapshots_json(addr: SocketAddr) -> Value {
    let (r, out, _) = kanctl(addr, &["snapshots", "--profile", "mysql-test/s3-profile", "-o", "json"]).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_story_through_kanctl() {
    let db = MysqlDatabase(unique_name("kctl", "db"));
    mysql_async(
        "",
        &format!(
            "CREATE DATABASE {0}; USE {0};
             CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(64), amount DECIMAL(10,2), note TEXT);
             INSERT INTO orders SELECT seq, CONCAT('customer-', seq % 97, IF(seq % 7 = 0, ' \\'q\\'', ' é')),
                    seq * 1.25, IF(seq % 11 = 0, NULL, MD5(seq)) FROM seq_1_to_2000;",
            db.0
        ),
    )
    .await;
    let before = mysql_async(&db.0, MYSQL_ORDERS_FINGERPRINT).await;

    // `kando` (the agent binary) on the PATH of the task pods' commands.
    let (_bin, path) = support::tools_path();
    let cluster = Arc::new(LocalCluster::new().with_env("PATH", path));
    cluster.load_yaml(&world(), "world").unwrap();
    cluster.load_yaml(BLUEPRINT, "blueprint").unwrap();
    let config = EngineConfig {
        watch_interval: Duration::from_millis(100),
        poll_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let engine = Engine::new(cluster.clone(), config);
    let api = CoordinatorApi::new(cluster.clone()).with_engine(engine).with_poll_interval(Duration::from_millis(50));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, api, ServeConfig::default(), async move {
        let _ = stopped.await;
    }));
    let tmp = tempfile::tempdir().unwrap();

    // The blueprint is valid, stored and as a file.
    let (r, out, _) = kanctl(addr, &["validate", "blueprint", "mysql-blueprint"]).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}");
    let file = tmp.path().join("bp.yaml");
    std::fs::write(&file, BLUEPRINT).unwrap();
    let (r, out, _) = kanctl(addr, &["validate", "blueprint", "-f", file.to_str().unwrap()]).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}");

    // A profile with a wrong secret key is refused and leaves nothing behind.
    let endpoint = infra_var("KANISTER_TEST_S3_ENDPOINT");
    let bucket = infra_var("KANISTER_TEST_S3_BUCKET");
    let access = infra_var("KANISTER_TEST_S3_ACCESS_KEY");
    let secret = infra_var("KANISTER_TEST_S3_SECRET_KEY");
    let prefix = unique_name("kanctl-e2e", "repo");
    // The backup runs with an AWS role, as upstream's `--role`: SeaweedFS's "backup" user has no
    // rights of its own and may assume the role, which may use the bucket.
    let role = infra_var("KANISTER_TEST_S3_ROLE_ARN");
    let role_user = infra_var("KANISTER_TEST_S3_ROLE_USER");
    let (role_access, role_secret) = role_user.split_once(':').expect("KEY:SECRET");
    let profile = |name: &'static str, access: String, key: String, role: Option<String>| {
        let (endpoint, bucket, prefix) = (endpoint.clone(), bucket.clone(), prefix.clone());
        async move {
            let role_args = role.map(|r| vec!["--role".to_string(), r]).unwrap_or_default();
            let role_args: Vec<&str> = role_args.iter().map(String::as_str).collect();
            kanctl(
                addr,
                &[
                    &[
                        "create",
                        "profile",
                        "s3compliant",
                        "-n",
                        "mysql-test",
                        "--name",
                        name,
                        "--access-key",
                        &access,
                        "--secret-key",
                        &key,
                        "--bucket",
                        &bucket,
                        "--endpoint",
                        &endpoint,
                        "--prefix",
                        &prefix,
                        "--region",
                        "us-east-1",
                    ][..],
                    &role_args,
                ]
                .concat(),
            )
            .await
        }
    };
    let (r, out, _) = profile("bad-profile", access.clone(), "not-the-secret".into(), None).await;
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("cannot write the probe object") && msg.contains("nothing was created"), "{msg}\n{out}");
    assert!(!msg.contains("not-the-secret"), "{msg}");
    let (r, _, _) = kanctl(addr, &["validate", "profile", "bad-profile", "-n", "mysql-test"]).await;
    assert!(r.unwrap_err().to_string().contains("profile mysql-test/bad-profile not found"));

    // The role's key pair alone may not write: the probe says so and nothing is created.
    let (r, out, _) = profile("no-role-profile", role_access.into(), role_secret.into(), None).await;
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("cannot write the probe object") && msg.contains("nothing was created"), "{msg}\n{out}");

    let (r, out, _) = profile("s3-profile", role_access.into(), role_secret.into(), Some(role.clone())).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}");
    assert!(out.contains("profile 's3-profile' created"), "{out}");
    let (r, out, _) = kanctl(addr, &["validate", "profile", "s3-profile", "-n", "mysql-test"]).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}");

    // Nothing backed up yet: the Profile has no repository key.
    let (r, out, _) = kanctl(addr, &["snapshots", "--profile", "mysql-test/s3-profile"]).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}");
    assert!(
        out.contains("no snapshots: profile mysql-test/s3-profile has no repository key yet")
            && out.contains("nothing was backed up through it"),
        "{out}"
    );

    // Backup.
    let option = format!("database={}", db.0);
    let (r, out, err) = kanctl(
        addr,
        &[
            "create",
            "actionset",
            "--action",
            "backup",
            "--namespace",
            "kanister",
            "--blueprint",
            "mysql-blueprint",
            "--statefulset",
            "mysql-test/mysql-release",
            "--profile",
            "mysql-test/s3-profile",
            "--secrets",
            "mysql=mysql-test/mysql-release",
            "--options",
            &option,
            "--wait",
        ],
    )
    .await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}{err}");
    let backup = out
        .lines()
        .find_map(|l| l.strip_prefix("actionset ").and_then(|l| l.strip_suffix(" created")))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert!(regex::Regex::new("^backup-[a-z0-9]{5}$").unwrap().is_match(&backup), "{backup}");

    let (r, out, _) = kanctl(addr, &["get", "actionsets"]).await;
    r.unwrap();
    let row = out.lines().find(|l| l.starts_with(&backup)).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("complete") && row.contains("mysqlCloudDump") && row.contains("100"), "{out}");
    let (r, out, _) = kanctl(addr, &["get", "actionsets", &backup, "-o", "json"]).await;
    r.unwrap();
    let json: Value = serde_json::from_str(&out).unwrap();
    let s3path = json[0]["status"]["actions"][0]["artifacts"]["mysqlCloudDump"]["keyValue"]["s3path"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let dated =
        regex::Regex::new(r"^/mysql-backups/mysql-test/mysql-release/\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d/dump\.sql\.gz$");
    assert!(dated.unwrap().is_match(&s3path), "{s3path}");

    // describe: phases, the artifact and the events of this ActionSet, in order.
    let (r, described, _) = kanctl(addr, &["describe", "actionset", &backup]).await;
    r.unwrap();
    assert!(described.contains("dumpToObjectStore") && described.contains(&s3path), "{described}");
    let events: Vec<&str> =
        described.lines().skip_while(|l| !l.starts_with("Events:")).skip(2).map(str::trim).collect();
    let reasons: Vec<&str> = events.iter().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(reasons, ["StartedAction", "StartedPhase", "EndedPhase", "ActionSetComplete"], "{described}");
    assert!(events.iter().all(|l| l.starts_with("Normal")), "{described}");
    assert!(events[1].ends_with("Executing phase dumpToObjectStore"), "{described}");

    // The repository holds the dump, tied to the backup ActionSet and its artifact.
    let listed = snapshots_json(addr).await;
    assert_eq!(listed["state"], "open", "{listed}");
    assert_eq!(listed["location"], format!("s3://{bucket}/{prefix}"), "{listed}");
    let snaps = listed["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{listed}");
    let snap = &snaps[0];
    assert_eq!((snap["kind"].as_str(), snap["path"].as_str()), (Some("kando"), Some(s3path.as_str())), "{snap}");
    assert_eq!(snap["tags"]["kando.path"], s3path.as_str(), "{snap}");
    assert_eq!(snap["actionSet"]["name"], backup.as_str(), "{snap}");
    assert_eq!(snap["actionSet"]["namespace"], "kanister", "{snap}");
    assert_eq!(snap["actionSet"]["action"], "backup", "{snap}");
    assert_eq!(snap["actionSet"]["object"], "statefulset mysql-test/mysql-release", "{snap}");
    assert_eq!(snap["artifact"]["name"], "mysqlCloudDump", "{snap}");
    assert_eq!(snap["artifact"]["keyValue"]["s3path"], s3path.as_str(), "{snap}");
    let (logical, stored) = (snap["logicalBytes"].as_u64().unwrap(), snap["storedBytes"].as_u64().unwrap());
    assert!(logical > 1000 && stored > 0, "{snap}");
    let short = snap["shortId"].as_str().unwrap().to_string();
    let (r, table, _) = kanctl(addr, &["snapshots", "-p", "s3-profile", "-n", "mysql-test"]).await;
    r.unwrap();
    let row = table.lines().find(|l| l.starts_with(&short)).unwrap_or_else(|| panic!("{table}"));
    for cell in ["kando", &format!("kanister/{backup}"), "mysqlCloudDump", &format!("kando.path={s3path}")] {
        assert!(row.contains(cell), "{cell:?} missing: {table}");
    }
    assert!(table.starts_with("ID"), "{table}");

    // Drop the data, restore from the backup.
    mysql_async("", &format!("DROP DATABASE {}", db.0)).await;
    let (r, out, err) =
        kanctl(addr, &["create", "actionset", "--action", "restore", "--from", &backup, "--wait"]).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}{err}");
    assert!(out.contains(&format!("actionset restore-{backup}-")), "{out}");
    assert_eq!(mysql_async(&db.0, MYSQL_ORDERS_FINGERPRINT).await, before, "the restored rows differ");

    // Delete the backup (upstream runs the delete in a namespace: --namespacetargets).
    let (r, out, err) = kanctl(
        addr,
        &["create", "actionset", "--action", "delete", "--from", &backup, "--namespacetargets", "kanister", "--wait"],
    )
    .await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}{err}");
    let listed = snapshots_json(addr).await;
    assert_eq!(listed["state"], "open", "{listed}");
    assert_eq!(listed["snapshots"], Value::Array(Vec::new()), "the snapshot is still in the repository: {listed}");
    let (r, out, _) = kanctl(addr, &["snapshots", "--profile", "mysql-test/s3-profile"]).await;
    r.unwrap();
    assert_eq!(out.trim(), format!("no snapshots: the repository at s3://{bucket}/{prefix} is empty"));

    // The repository key and the S3 secret keys appear in no answer (describe, snapshots) and
    // no event.
    let key = repository_key(&cluster, "mysql-test", "s3-profile").await;
    assert_eq!(key.len(), 64);
    for text in [&described, &table, &listed.to_string()] {
        for s in [key.as_str(), secret.as_str(), role_secret] {
            assert!(!text.contains(s), "a secret in {text}");
        }
    }
    for e in cluster.events() {
        for s in [key.as_str(), secret.as_str(), role_secret] {
            assert!(!e.note.contains(s), "a secret in event {e:?}");
        }
    }

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
