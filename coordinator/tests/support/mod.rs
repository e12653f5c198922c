//! Shared by the coordinator's end-to-end tests: the variables of the test infrastructure,
//! unique names and the S3 Profile fixture; an in-process agent sidecar
//! (`kanister_agent::service::serve` on 127.0.0.1:0, with a bearer token) and the agent binary
//! for task pods; running an ActionSet to its end and opening a Profile's repository; a scan of
//! every process's argv for secrets, a capture of the logs of the coordinator and the
//! in-process agents, and the check that no secret was recorded; the MariaDB and PostgreSQL
//! clients and cleanup guards.

// Each test crate uses what it needs of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kanister_coordinator::cluster::Cluster;
use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::crd::{ActionSet, State};
use kanister_coordinator::engine::agent::AgentClientConfig;
use kanister_coordinator::engine::{Engine, EngineConfig, Outcome, repokey};

use kanister_agent::service::{self, ServeConfig};
use zeroize::Zeroizing;

// ---- the test infrastructure ----

/// An environment variable set by the test infrastructure (`eval "$(bash tests/infra.sh env)"`);
/// a clear failure, naming the variable, when it is missing or empty.
pub fn infra_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: these tests need the test infrastructure; run `bash tests/infra.sh start` and \
             `eval \"$(bash tests/infra.sh env)\"` first"
        ),
    }
}

/// A name unique to this test process and call, `<prefix>_<tag>_<pid>_<n>_<nanos>`: for the
/// databases, users and repository prefixes of servers that other tests (and other runs) share.
/// The prefix says which test file made it (`data`, `ex`, `kando`, ...), so a leftover shows
/// where it came from. With a lowercase prefix and tag it is a valid MariaDB and PostgreSQL
/// identifier.
pub fn unique_name(prefix: &str, tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}_{tag}_{}_{}_{nanos:x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A fresh random password, long enough that finding it anywhere is no accident.
pub fn password() -> String {
    format!("pw-{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// YAML for `LocalCluster::load_yaml`: the Secret `<namespace>/<secret>` with the S3 key pair of
/// the test infrastructure, and the Profile `<namespace>/<profile>` whose `keyPair` credential
/// reads it, on the SeaweedFS bucket under `prefix`. The Profile is the last document, so text
/// appended to this is more of its fields or, after `---`, more documents.
pub fn s3_profile_yaml(namespace: &str, profile: &str, secret: &str, prefix: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: {secret}, namespace: {namespace}}}
stringData: {{aws_access_key_id: "{id}", aws_secret_access_key: "{key}"}}
---
apiVersion: cr.kanister.io/v1alpha1
kind: Profile
metadata: {{name: {profile}, namespace: {namespace}}}
location: {{type: s3Compliant, bucket: "{bucket}", endpoint: "{endpoint}", prefix: "{prefix}", region: us-east-1}}
credential:
  type: keyPair
  keyPair:
    idField: aws_access_key_id
    secretField: aws_secret_access_key
    secret: {{apiVersion: v1, kind: secret, name: {secret}, namespace: {namespace}}}
"#,
        id = infra_var("KANISTER_TEST_S3_ACCESS_KEY"),
        key = infra_var("KANISTER_TEST_S3_SECRET_KEY"),
        bucket = infra_var("KANISTER_TEST_S3_BUCKET"),
        endpoint = infra_var("KANISTER_TEST_S3_ENDPOINT"),
    )
}

/// A directory tree as relative path → what is there: `file:<contents>`, `link:<target>` (a
/// symlink, not followed) or `dir`; two trees are equal when a backup restored faithfully.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
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

// ---- the agent ----

/// A running agent; `stop` ends it and checks that it ended cleanly.
pub struct Agent {
    /// Its URL.
    pub endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), service::ServeError>>,
}

impl Agent {
    /// Starts an agent requiring `token`.
    pub async fn start(token: &str) -> Agent {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let config = ServeConfig {
            token: Some(Zeroizing::new(token.to_string())),
            progress_interval: Duration::from_millis(20),
            ..ServeConfig::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service::serve(listener, config, async {
            let _ = rx.await;
        }));
        Agent { endpoint, stop: Some(tx), task }
    }

    /// Stops the agent.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("the agent stops in time")
            .unwrap()
            .expect("the agent ends cleanly");
    }
}

/// The agent binary of this workspace, built when missing.
pub fn agent_binary() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("../target"), PathBuf::from);
    let bin = target.join("debug/kanister-agent");
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "kanister-agent"])
            .current_dir(&manifest)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p kanister-agent failed");
    }
    assert!(bin.exists(), "no agent binary at {}", bin.display());
    bin
}

/// A directory holding the agent as `kanister-agent` and `kando` (what the tools image has on
/// its PATH), and the PATH that puts it first.
/// `PATH` with the tools image's programs (`kanister-agent`, `kando`, links to the agent binary
/// in a directory of the target dir) first: what task pods of the local cluster run, as the
/// tools image's would.
pub fn tools_env_path() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("../target"), PathBuf::from);
        let bin = target.join(format!("test-tools-{}", std::process::id()));
        std::fs::create_dir_all(&bin).unwrap();
        for name in ["kando", "kanister-agent"] {
            let _ = std::fs::remove_file(bin.join(name));
            std::os::unix::fs::symlink(agent_binary(), bin.join(name)).unwrap();
        }
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
    })
    .clone()
}

/// Like [`tools_env_path`], in a directory of its own that goes with the returned guard.
pub fn tools_path() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["kando", "kanister-agent"] {
        std::os::unix::fs::symlink(agent_binary(), dir.path().join(name)).unwrap();
    }
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    (dir, path)
}

// ---- ActionSets and repositories ----

/// The engine's configuration in these tests: it watches and polls every 50 ms, and sends
/// `agent_token` to the agents (none: no token).
pub fn engine_config(agent_token: Option<&str>) -> EngineConfig {
    EngineConfig {
        watch_interval: Duration::from_millis(50),
        poll_interval: Duration::from_millis(50),
        agent: AgentClientConfig { token: agent_token.map(|t| Zeroizing::new(t.to_string())), ..Default::default() },
        ..Default::default()
    }
}

/// Reconciles ActionSet `kanister/<name>` (its run must start), waits up to `within` for the run
/// to end, and returns the ActionSet as it ended.
pub async fn run_to_end(engine: &Engine<LocalCluster>, name: &str, within: Duration) -> ActionSet {
    assert_eq!(engine.reconcile("kanister", name).await.unwrap(), Outcome::Started);
    tokio::time::timeout(within, engine.wait("kanister", name)).await.expect("the run ends");
    engine.cluster().get_actionset("kanister", name).await.unwrap()
}

/// Asserts that the ActionSet ended `complete`; if not, the failure names it and its (first)
/// action and gives its error message.
pub fn assert_complete(a: &ActionSet) {
    let status = a.status.as_ref().unwrap();
    assert_eq!(
        status.state,
        State::Complete,
        "{} ({}): {}",
        a.metadata.name.as_deref().unwrap_or_default(),
        a.spec.actions.first().map(|action| action.name.as_str()).unwrap_or_default(),
        status.error.as_ref().map(|e| e.message.clone()).unwrap_or_default()
    );
}

/// The repository key the coordinator created for Profile `<namespace>/<profile>` (from its key
/// Secret).
pub async fn repository_key(cluster: &LocalCluster, namespace: &str, profile: &str) -> String {
    let name = format!("{}{profile}", repokey::SECRET_PREFIX);
    let data = cluster.secret(namespace, &name).await.expect("the coordinator created the key Secret");
    String::from_utf8(data.data[repokey::SECRET_KEY].clone()).unwrap()
}

/// The repository at `s3://<bucket>/<prefix>` on SeaweedFS, opened here with the raw key `key`
/// the way the coordinator and the agents open it.
pub async fn open_s3_repository(bucket: &str, prefix: &str, key: Vec<u8>) -> kanister_agent::repository::Repository {
    use kanister_agent::repository::{RepoKey, Repository, store_of_ref};
    let options = std::collections::HashMap::from([
        ("endpoint".to_string(), infra_var("KANISTER_TEST_S3_ENDPOINT")),
        ("region".to_string(), "us-east-1".to_string()),
        ("aws_access_key_id".to_string(), infra_var("KANISTER_TEST_S3_ACCESS_KEY")),
        ("aws_secret_access_key".to_string(), infra_var("KANISTER_TEST_S3_SECRET_KEY")),
    ]);
    let store = store_of_ref(&format!("s3://{bucket}/{prefix}"), options).unwrap();
    Repository::at(store).open(&RepoKey::KeyFile(Zeroizing::new(key))).await.unwrap()
}

// ---- secrets ----

/// Scans `/proc/*/cmdline` every 10 ms while a test runs for secret values: the fixed ones
/// given, and the repository key of Profile `kanister/<profile>` once the coordinator has
/// created it.
pub struct ArgvScan {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl ArgvScan {
    /// Starts scanning.
    pub fn start(cluster: Arc<LocalCluster>, profile: &str, secrets: Vec<String>) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let name = format!("{}{profile}", repokey::SECRET_PREFIX);
        assert!(secrets.iter().all(|s| s.len() >= 6), "secrets to look for must not be trivially short");
        let task = tokio::spawn(async move {
            let (mut scanned, mut found) = (0, Vec::new());
            loop {
                let mut wanted = secrets.clone();
                if let Ok(data) = cluster.secret("kanister", &name).await {
                    wanted.push(String::from_utf8_lossy(&data.data[repokey::SECRET_KEY]).into_owned());
                }
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(argv) = std::fs::read(entry.path().join("cmdline")) else { continue };
                    scanned += 1;
                    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                    if wanted.iter().any(|s| argv.contains(s.as_str())) {
                        found.push(argv);
                    }
                }
                tokio::select! {
                    _ = &mut stopped => return (scanned, found),
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        });
        ArgvScan { stop, task }
    }

    /// Stops scanning: how many argv were read, and those holding a secret.
    pub async fn stop(self) -> (usize, Vec<String>) {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }

    /// Stops scanning and asserts the verdict: it read processes' argv, and none held a secret.
    pub async fn assert_clean(self) {
        let (scanned, found) = self.stop().await;
        assert!(scanned > 0, "the argv scan read no process");
        assert!(found.is_empty(), "a secret appeared in the argv of a process: {found:?}");
    }
}

/// No secret in any status written to the ActionSets `kanister/<names>`, in any event, or in the
/// captured logs. So that absence means something, each ActionSet must have a status write,
/// there must be an event, and the logs must hold lines of each crate of `logged_by`
/// (`kanister_coordinator`, and `kanister_agent` when the agents run in process).
pub fn assert_no_secret_anywhere(
    cluster: &LocalCluster,
    names: &[&str],
    secrets: &[String],
    logs: &Logs,
    logged_by: &[&str],
) {
    for name in names {
        let writes = cluster.status_writes("kanister", name);
        assert!(!writes.is_empty(), "no status was written to {name}");
        let text = serde_json::to_string(&writes).unwrap();
        for (i, s) in secrets.iter().enumerate() {
            assert!(!text.contains(s.as_str()), "secret #{i} in a status of {name}");
        }
    }
    let events = cluster.events();
    assert!(!events.is_empty(), "no event was recorded");
    let text = serde_json::to_string(&events).unwrap();
    for (i, s) in secrets.iter().enumerate() {
        assert!(!text.contains(s.as_str()), "secret #{i} in an event");
    }
    let text = logs.text();
    for target in logged_by {
        assert!(text.contains(target), "no log line of {target} was captured");
    }
    for (i, s) in secrets.iter().enumerate() {
        assert!(!text.contains(s.as_str()), "secret #{i} in the logs");
    }
}

/// The log lines of this test process (coordinator engine and in-process agents alike), as the
/// binaries would print them: `info` everywhere, `debug` for the kanister crates.
#[derive(Clone)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Installs the capturing subscriber (once per test binary) and returns the captured logs.
    /// Tests of one binary share it: what one test finds absent is absent from all of them.
    pub fn capture() -> Logs {
        static LOGS: OnceLock<Logs> = OnceLock::new();
        LOGS.get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let writer = buffer.clone();
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    "info,kanister_coordinator=debug,kanister_agent=debug",
                ))
                .with_ansi(false)
                .with_writer(move || LogWriter(writer.clone()))
                .try_init()
                .expect("no other tracing subscriber is installed in this test binary");
            Logs(buffer)
        })
        .clone()
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

// ---- MariaDB and PostgreSQL ----

/// Runs SQL as root on the test MariaDB's socket (in `db` unless empty) and returns the
/// tab-separated output without column names.
pub fn mysql(db: &str, query: &str) -> String {
    let mut cmd = std::process::Command::new("mysql");
    cmd.args(["--no-defaults", "-uroot", "-S", &infra_var("KANISTER_TEST_MYSQL_SOCKET"), "-N", "-B"]);
    if !db.is_empty() {
        cmd.arg(db);
    }
    let out = cmd.arg("-e").arg(query).output().expect("mysql runs");
    assert!(out.status.success(), "mysql -e {query:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// [`mysql`] without blocking the async runtime, for tests whose engine runs on the same
/// thread while they query.
pub async fn mysql_async(db: &str, query: &str) -> String {
    let mut cmd = tokio::process::Command::new("mysql");
    cmd.args(["--no-defaults", "-uroot", "-S", &infra_var("KANISTER_TEST_MYSQL_SOCKET"), "-N", "-B"]);
    if !db.is_empty() {
        cmd.arg(db);
    }
    let out = cmd.arg("-e").arg(query).output().await.unwrap_or_else(|e| panic!("mysql did not run: {e}"));
    assert!(out.status.success(), "mysql -e {query:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs SQL as root, the text on stdin (so that a password in it is on no command line).
pub fn mysql_stdin(sql: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("mysql")
        .args(["--no-defaults", "-uroot", "-S", &infra_var("KANISTER_TEST_MYSQL_SOCKET")])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mysql runs");
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "mysql: {}", String::from_utf8_lossy(&out.stderr));
}

/// Row count and a checksum over the `orders` table (`id, customer, amount, note`) the
/// MariaDB tests fill: equal before a backup and after its restore.
pub const MYSQL_ORDERS_FINGERPRINT: &str =
    "SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, customer, amount, IFNULL(note, '<null>')))) FROM orders";

/// [`MYSQL_ORDERS_FINGERPRINT`] of database `db`.
pub fn mysql_fingerprint(db: &str) -> String {
    mysql(db, MYSQL_ORDERS_FINGERPRINT)
}

/// A MariaDB database created by a test, dropped when it ends (also when it panics).
pub struct MysqlDatabase(pub String);

impl Drop for MysqlDatabase {
    fn drop(&mut self) {
        let Ok(socket) = std::env::var("KANISTER_TEST_MYSQL_SOCKET") else { return };
        let _ = std::process::Command::new("mysql")
            .args(["--no-defaults", "-uroot", "-S", &socket, "-e", &format!("DROP DATABASE IF EXISTS {}", self.0)])
            .output();
    }
}

/// A MariaDB database and a user with a password that owns it; both dropped at the end.
pub struct MysqlDb {
    pub name: String,
    pub user: String,
}

impl Drop for MysqlDb {
    fn drop(&mut self) {
        if let Ok(socket) = std::env::var("KANISTER_TEST_MYSQL_SOCKET") {
            let sql = format!("DROP DATABASE IF EXISTS {}; DROP USER IF EXISTS '{}'@'%'", self.name, self.user);
            let _ = std::process::Command::new("mysql")
                .args(["--no-defaults", "-uroot", "-S", &socket, "-e", &sql])
                .output();
        }
    }
}

/// Runs SQL as postgres in database `db`, the text on stdin (so that a password in it is on no
/// command line), and returns the unaligned output without column names.
pub fn psql_stdin(db: &str, sql: &str) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("psql")
        .args(["-h", &infra_var("KANISTER_TEST_PG_HOST"), "-p", &infra_var("KANISTER_TEST_PG_PORT")])
        .args(["-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-qtA"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql runs");
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A PostgreSQL database and a role with a password, both created by the test; both dropped at
/// the end.
pub struct PgDb {
    pub name: String,
    pub user: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let (Ok(host), Ok(port)) = (std::env::var("KANISTER_TEST_PG_HOST"), std::env::var("KANISTER_TEST_PG_PORT")) {
            for sql in [
                format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
                format!("DROP ROLE IF EXISTS {}", self.user),
            ] {
                let _ = std::process::Command::new("psql")
                    .args(["-h", &host, "-p", &port, "-U", "postgres", "-d", "postgres", "-c", &sql])
                    .output();
            }
        }
    }
}
