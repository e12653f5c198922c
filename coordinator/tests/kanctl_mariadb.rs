//! The seed's story end to end, through kanctl and the coordinator's gRPC API, on a
//! `LocalCluster` with the real MariaDB and SeaweedFS of the test infrastructure:
//! `create profile s3compliant` (probe write/read/delete), `create actionset --action backup`
//! with the StatefulSet, Profile and Secret of the story, `get actionsets` showing it complete
//! with the `mysqlCloudDump` artifact, the data dropped, `--action restore --from` bringing the
//! rows back, and `--action delete --from` removing the dump from the bucket.
//!
//! The blueprint's phases run `mysqldump`/`mysql` through `KubeExec` (local processes) and move
//! the dump to and from the Profile's bucket with `curl --aws-sigv4`, the credentials coming
//! from the Profile (written to a private temporary curl config, never on a command line).
//!
//! Needs `KANISTER_TEST_MYSQL_SOCKET` and `KANISTER_TEST_S3_*` (`eval "$(bash tests/infra.sh
//! env)"`); fails without them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use kanister_coordinator::api::{CoordinatorApi, ServeConfig, serve};
use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::engine::{Engine, EngineConfig};
use kanister_coordinator::kanctl::{self, Cli, Error, Io, Outcome};

fn infra_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: this test needs MariaDB and SeaweedFS of the test infrastructure; run \
             `bash tests/infra.sh start` and `eval \"$(bash tests/infra.sh env)\"` first"
        ),
    }
}

fn unique(tag: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{tag}_{}_{nanos:x}", std::process::id())
}

/// Defines `s3 KEY [curl args]` in a phase: curl against the Profile's bucket, signed with the
/// Profile's key pair read from a private config file.
const S3: &str = r#"cfg=$(mktemp); tmp=$(mktemp); trap 'rm -f "$cfg" "$tmp"' EXIT
          printf 'user = "%s:%s"\n' '{{ .Profile.Credential.KeyPair.ID }}' '{{ .Profile.Credential.KeyPair.Secret }}' > "$cfg"
          s3() { url='{{ .Profile.Location.Endpoint }}/{{ .Profile.Location.Bucket }}/'"$1"; shift; curl -sSf -K "$cfg" --aws-sigv4 'aws:amz:{{ .Profile.Location.Region }}:s3' "$@" "$url"; }
          MYSQL="--no-defaults -u{{ index .Secrets.mysql.Data "username" | toString }} -S{{ index .Secrets.mysql.Data "socket" | toString }}""#;

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
    - func: KubeExec
      name: dumpToObjectStore
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        pod: "{{ index .StatefulSet.Pods 0 }}"
        container: mysql
        command:
        - sh
        - -ec
        - |
          @S3@
          path='{{ .Profile.Location.Prefix }}/mysql-backups/{{ .StatefulSet.Namespace }}/{{ .StatefulSet.Name }}/'"$(date +%s%N)"'/dump.sql'
          mysqldump $MYSQL --single-transaction '{{ .Options.database }}' > "$tmp"
          s3 "$path" -T "$tmp"
          printf '###Phase-output###: {"key":"s3path","value":"%s"}\n' "$path"
  restore:
    inputArtifactNames: [mysqlCloudDump]
    phases:
    - func: KubeExec
      name: restoreFromObjectStore
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        pod: "{{ index .StatefulSet.Pods 0 }}"
        container: mysql
        command:
        - sh
        - -ec
        - |
          @S3@
          s3 '{{ .ArtifactsIn.mysqlCloudDump.KeyValue.s3path }}' -o "$tmp"
          mysql $MYSQL -e 'CREATE DATABASE IF NOT EXISTS {{ .Options.database }}'
          mysql $MYSQL '{{ .Options.database }}' < "$tmp"
  delete:
    inputArtifactNames: [mysqlCloudDump]
    phases:
    - func: KubeExec
      name: deleteFromObjectStore
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        pod: "{{ index .StatefulSet.Pods 0 }}"
        container: mysql
        command:
        - sh
        - -ec
        - |
          @S3@
          s3 '{{ .ArtifactsIn.mysqlCloudDump.KeyValue.s3path }}' -X DELETE
"#;

fn world() -> String {
    let socket = infra_var("KANISTER_TEST_MYSQL_SOCKET");
    format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: mysql-release, namespace: mysql-test}}
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
stringData: {{username: root, socket: "{socket}"}}
"#
    )
}

async fn sql(db: &str, query: &str) -> String {
    let mut cmd = tokio::process::Command::new("mysql");
    cmd.args(["--no-defaults", "-uroot", "-S", &infra_var("KANISTER_TEST_MYSQL_SOCKET"), "-N", "-B"]);
    if !db.is_empty() {
        cmd.arg(db);
    }
    let out = cmd.arg("-e").arg(query).output().await.unwrap_or_else(|e| panic!("mysql did not run: {e}"));
    assert!(out.status.success(), "mysql -e {query:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

struct Database(String);

impl Drop for Database {
    fn drop(&mut self) {
        let Ok(socket) = std::env::var("KANISTER_TEST_MYSQL_SOCKET") else { return };
        let _ = std::process::Command::new("mysql")
            .args(["--no-defaults", "-uroot", "-S", &socket, "-e", &format!("DROP DATABASE IF EXISTS {}", self.0)])
            .output();
    }
}

async fn fingerprint(db: &str) -> String {
    sql(db, "SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, customer, amount, IFNULL(note, '<null>')))) FROM orders")
        .await
}

/// The HTTP status of a HEAD on an object of the test bucket.
fn head(key: &str, dir: &std::path::Path) -> String {
    let cfg = dir.join("curl.cfg");
    std::fs::write(
        &cfg,
        format!(
            "user = \"{}:{}\"\n",
            infra_var("KANISTER_TEST_S3_ACCESS_KEY"),
            infra_var("KANISTER_TEST_S3_SECRET_KEY")
        ),
    )
    .unwrap();
    let url = format!("{}/{}/{key}", infra_var("KANISTER_TEST_S3_ENDPOINT"), infra_var("KANISTER_TEST_S3_BUCKET"));
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I", "--aws-sigv4", "aws:amz:us-east-1:s3", "-K"])
        .arg(&cfg)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
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

#[tokio::test]
async fn the_seed_story_through_kanctl() {
    let db = Database(unique("kctl"));
    sql(
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
    let before = fingerprint(&db.0).await;

    let cluster = Arc::new(LocalCluster::new());
    cluster.load_yaml(&world(), "world").unwrap();
    cluster.load_yaml(&BLUEPRINT.replace("@S3@", S3), "blueprint").unwrap();
    let engine =
        Engine::new(cluster.clone(), EngineConfig { watch_interval: Duration::from_millis(100), ..Default::default() });
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
    std::fs::write(&file, BLUEPRINT.replace("@S3@", S3)).unwrap();
    let (r, out, _) = kanctl(addr, &["validate", "blueprint", "-f", file.to_str().unwrap()]).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}");

    // A profile with a wrong secret key is refused and leaves nothing behind.
    let endpoint = infra_var("KANISTER_TEST_S3_ENDPOINT");
    let bucket = infra_var("KANISTER_TEST_S3_BUCKET");
    let access = infra_var("KANISTER_TEST_S3_ACCESS_KEY");
    let secret = infra_var("KANISTER_TEST_S3_SECRET_KEY");
    let prefix = unique("kanctl-e2e");
    let profile = |name: &'static str, key: String| {
        let (endpoint, bucket, access, prefix) = (endpoint.clone(), bucket.clone(), access.clone(), prefix.clone());
        async move {
            kanctl(
                addr,
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
                ],
            )
            .await
        }
    };
    let (r, out, _) = profile("bad-profile", "not-the-secret".into()).await;
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("cannot write the probe object") && msg.contains("nothing was created"), "{msg}\n{out}");
    assert!(!msg.contains("not-the-secret"), "{msg}");
    let (r, _, _) = kanctl(addr, &["validate", "profile", "bad-profile", "-n", "mysql-test"]).await;
    assert!(r.unwrap_err().to_string().contains("profile mysql-test/bad-profile not found"));

    let (r, out, _) = profile("s3-profile", secret.clone()).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}");
    assert!(out.contains("profile 's3-profile' created"), "{out}");
    let (r, out, _) = kanctl(addr, &["validate", "profile", "s3-profile", "-n", "mysql-test"]).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}");

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
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s3path = json[0]["status"]["actions"][0]["artifacts"]["mysqlCloudDump"]["keyValue"]["s3path"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert!(s3path.starts_with(&format!("{prefix}/mysql-backups/mysql-test/mysql-release/")), "{s3path}");
    assert_eq!(head(&s3path, tmp.path()), "200", "the dump is not in the bucket");
    let (r, out, _) = kanctl(addr, &["describe", "actionset", &backup]).await;
    r.unwrap();
    assert!(out.contains("dumpToObjectStore") && out.contains(&s3path), "{out}");

    // Drop the data, restore from the backup.
    sql("", &format!("DROP DATABASE {}", db.0)).await;
    let (r, out, err) =
        kanctl(addr, &["create", "actionset", "--action", "restore", "--from", &backup, "--wait"]).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}{err}");
    assert!(out.contains(&format!("actionset restore-{backup}-")), "{out}");
    assert_eq!(fingerprint(&db.0).await, before, "the restored rows differ");

    // Delete the backup.
    let (r, out, err) = kanctl(addr, &["create", "actionset", "--action", "delete", "--from", &backup, "--wait"]).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}{err}");
    assert_eq!(head(&s3path, tmp.path()), "404", "the dump is still in the bucket");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
