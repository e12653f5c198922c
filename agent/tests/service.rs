//! The agent's gRPC service, in process on 127.0.0.1:0, against the real test servers
//! (SeaweedFS S3, MariaDB): backups and restores through commands, progress, idempotent
//! operation ids, re-attach, cancellation, command failures, authentication, and logs that
//! never carry a secret.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kanister_agent::repository::{InitOptions, RepoKey, Repository};
use kanister_agent::service::{self, ServeConfig, ServeError, TlsSettings};
use kanister_agent::store::{Store, StoreOptions};
use kanister_proto::agent::v1 as pb;
use kanister_proto::agent::v1::agent_service_client::AgentServiceClient;
use kanister_testkit::agent::PASSWORD;
use kanister_testkit::infra;
use kanister_testkit::tls::{ServerNames, make_certs};
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use zeroize::Zeroizing;

const TOKEN: &str = "tok-7f3a9c2e5b1d4e6f8a0b";
/// Given to a command through its environment: must never be logged.
const ENV_SECRET: &str = "env-secret-91c4e2a7";

// ---------------------------------------------------------------------------------------------
// Captured logs: every test's server logs into one buffer, at trace level for the agent.

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = Capture(buf.clone());
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,kanister_agent=trace"))
            .with_ansi(false)
            .with_writer(move || w.clone())
            .init();
        buf
    })
}

fn captured() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// Every secret the tests use; none may appear in a log line or a status message.
fn secrets() -> Vec<String> {
    vec![
        PASSWORD.to_string(),
        infra::var("KANISTER_TEST_S3_SECRET_KEY"),
        TOKEN.to_string(),
        ENV_SECRET.to_string(),
        "wrong-token-0d1e".to_string(),
        "wrong passphrase 5e7".to_string(),
    ]
}

fn assert_no_secret(text: &str, what: &str) {
    for s in secrets() {
        assert!(!text.contains(&s), "{what} contains the secret {s:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Server and client.

struct TestServer {
    addr: SocketAddr,
    metrics: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    async fn start(tweak: impl FnOnce(&mut ServeConfig)) -> TestServer {
        logs();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, metrics_addr) = (listener.local_addr().unwrap(), metrics.local_addr().unwrap());
        let mut config = ServeConfig {
            token: Some(Zeroizing::new(TOKEN.to_string())),
            progress_interval: Duration::from_millis(20),
            metrics_listener: Some(metrics),
            ..ServeConfig::default()
        };
        tweak(&mut config);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service::serve(listener, config, async {
            let _ = rx.await;
        }));
        TestServer { addr, metrics: metrics_addr, stop: Some(tx), task }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("the server stops in time")
            .unwrap()
            .expect("the server ends cleanly");
    }

    fn metrics_text(&self) -> String {
        let mut s = std::net::TcpStream::connect(self.metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

#[derive(Clone)]
struct Token(Option<String>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    }
}

type Client = AgentServiceClient<InterceptedService<Channel, Token>>;

async fn plain_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

fn client(channel: Channel, token: Option<&str>) -> Client {
    AgentServiceClient::with_interceptor(channel, Token(token.map(str::to_string))).max_decoding_message_size(64 << 20)
}

/// A fresh S3 repository in SeaweedFS, and the reference to it a request carries.
async fn s3_repo(tag: &str) -> pb::RepositoryRef {
    let (url, opts) = infra::s3(&infra::unique(tag));
    let options: HashMap<String, String> =
        opts.iter().map(|o| o.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap()).collect();
    let store =
        Store::open(&url, &StoreOptions { options: options.clone().into_iter().collect(), credentials_file: None })
            .unwrap();
    let key = RepoKey::Passphrase(Zeroizing::new(PASSWORD.as_bytes().to_vec()));
    Repository::at(store).init(&key, &InitOptions::default()).await.unwrap();
    pb::RepositoryRef {
        store_url: url,
        store_options: options,
        key: Some(pb::repository_ref::Key::Passphrase(PASSWORD.as_bytes().to_vec())),
    }
}

fn cmd(argv: &[&str]) -> pb::CommandSpec {
    pb::CommandSpec { argv: argv.iter().map(|s| s.to_string()).collect(), env: HashMap::new() }
}

/// Reads a stream of events to its end: the events, then how it ended.
async fn drain(mut s: tonic::Streaming<pb::OperationEvent>) -> (Vec<pb::OperationEvent>, Result<(), tonic::Status>) {
    let mut events = Vec::new();
    loop {
        match s.message().await {
            Ok(Some(e)) => events.push(e),
            Ok(None) => return (events, Ok(())),
            Err(st) => return (events, Err(st)),
        }
    }
}

fn final_result(events: &[pb::OperationEvent]) -> &pb::operation_result::Result {
    let last = events.last().expect("at least one event");
    assert_eq!(last.state, pb::OperationState::Succeeded as i32, "{last:?}");
    last.result.as_ref().and_then(|r| r.result.as_ref()).expect("the last event carries the result")
}

fn backup_stats(events: &[pb::OperationEvent]) -> pb::BackupStats {
    match final_result(events) {
        pb::operation_result::Result::Backup(b) => b.clone(),
        r => panic!("not a backup result: {r:?}"),
    }
}

async fn snapshots(c: &mut Client, repo: &pb::RepositoryRef, tags: &[(&str, &str)]) -> Vec<pb::SnapshotInfo> {
    let tags = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    c.list_snapshots(pb::ListSnapshotsRequest { repository: Some(repo.clone()), tags })
        .await
        .unwrap()
        .into_inner()
        .snapshots
}

async fn check_read_data(c: &mut Client, repo: &pb::RepositoryRef) -> pb::CheckReport {
    let s = c
        .check(pb::CheckRequest { op_id: infra::unique("check"), repository: Some(repo.clone()), read_data: true })
        .await
        .unwrap()
        .into_inner();
    let (events, end) = drain(s).await;
    end.unwrap();
    match final_result(&events) {
        pb::operation_result::Result::Check(r) => r.clone(),
        r => panic!("not a check report: {r:?}"),
    }
}

fn details(s: &tonic::Status) -> pb::OperationError {
    pb::OperationError::decode(s.details()).expect("the status carries an OperationError")
}

fn sh(c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?} did not run: {e}"));
    assert!(o.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn mysql_args() -> Vec<String> {
    vec!["--no-defaults".into(), "-uroot".into(), "-S".into(), infra::var("KANISTER_TEST_MYSQL_SOCKET")]
}

fn mysql(db: &str) -> Command {
    let mut c = Command::new("mysql");
    c.args(mysql_args()).args(["-N", "-B"]);
    if !db.is_empty() {
        c.arg(db);
    }
    c
}

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie has ended; only its exit status waits to be collected.
        Ok(s) => s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if process_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Asserts that the command `pid` ends soon; kills it first when it does not, so that a failure
/// fails fast instead of hanging the test runtime on a blocked reader thread.
fn assert_gone(pid: u32, what: &str) {
    if !wait_gone(pid) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        panic!("{what} {pid} still runs after the cancellation");
    }
}

fn read_pid(path: &std::path::Path) -> u32 {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && let Ok(p) = s.trim().parse()
        {
            return p;
        }
        assert!(Instant::now() < until, "the command never wrote its pid");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// A real mysqldump → BackupStream → RestoreStream → mysql into a fresh database; progress
/// arrives while the backup runs and adds up to the final stats; over TLS with a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_backup_and_restore_over_grpc() {
    let db = infra::unique("svc").replace('-', "_");
    let restored = format!("{db}_restored");
    sh(mysql("").arg("-e").arg(format!(
        "CREATE DATABASE {db}; USE {db};
         CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(64), amount DECIMAL(10,2), note TEXT, created DATETIME);
         INSERT INTO orders SELECT seq, CONCAT('customer-', seq % 997), seq * 1.25, REPEAT(MD5(seq), 1 + seq % 7),
                                   '2026-01-01' + INTERVAL seq MINUTE FROM seq_1_to_120000;
         CREATE DATABASE {restored};"
    )));
    let fingerprint = |db: &str| {
        sh(mysql(db)
            .arg("-e")
            .arg("SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, customer, amount, note, created))) FROM orders"))
    };
    let before = fingerprint(&db);
    assert!(before.starts_with("120000\t"), "{before}");

    let certs = Certs::new();
    let srv = TestServer::start(|c| c.tls = Some(certs.server(false))).await;
    let mut c = client(certs.channel(srv.addr, false).await, Some(TOKEN));
    let repo = s3_repo("svc-maria").await;

    let mut dump = vec!["mysqldump".to_string()];
    dump.extend(mysql_args());
    dump.extend(["--single-transaction".into(), db.clone()]);
    let op_id = infra::unique("backup");
    let stream = c
        .backup_stream(pb::BackupStreamRequest {
            op_id: op_id.clone(),
            repository: Some(repo.clone()),
            command: Some(pb::CommandSpec { argv: dump, env: [("MYSQL_HISTFILE".into(), ENV_SECRET.into())].into() }),
            tags: [("db".to_string(), db.clone()), ("action".to_string(), "backup".to_string())].into(),
            hostname: "mysql-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (events, end) = drain(stream).await;
    end.unwrap();
    let stats = backup_stats(&events);
    assert!(stats.bytes_read > 5_000_000, "{stats:?}");

    // Progress arrived during the operation, counters only grew, and the last event's counters
    // are the stats.
    let during: Vec<&pb::Progress> = events[..events.len() - 1].iter().filter_map(|e| e.progress.as_ref()).collect();
    assert!(
        during.iter().any(|p| p.bytes_read > 0 && p.bytes_read < stats.bytes_read),
        "no progress event while the backup ran: {during:?}"
    );
    assert!(during.iter().any(|p| p.phase == pb::Phase::Transferring as i32 && p.rate_bytes_per_sec > 0.0));
    for w in during.windows(2) {
        assert!(w[0].bytes_read <= w[1].bytes_read && w[0].bytes_uploaded <= w[1].bytes_uploaded, "{w:?}");
    }
    let last = events.last().unwrap().progress.as_ref().unwrap();
    assert_eq!(last.phase, pb::Phase::Done as i32);
    assert_eq!(
        (last.bytes_read, last.bytes_new, last.bytes_uploaded),
        (stats.bytes_read, stats.bytes_new, stats.bytes_uploaded),
        "the final counters are the stats"
    );
    assert!(events.iter().all(|e| e.op_id == op_id && !e.attached));

    let listed = snapshots(&mut c, &repo, &[("db", &db)]).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].id.as_str(), listed[0].kind.as_str()), (stats.snapshot_id.as_str(), "stream"));
    assert_eq!(listed[0].hostname, "mysql-0");
    assert!(snapshots(&mut c, &repo, &[("db", "other")]).await.is_empty());

    // Restore into the fresh database.
    let mut load = vec!["mysql".to_string()];
    load.extend(mysql_args());
    load.push(restored.clone());
    let stream = c
        .restore_stream(pb::RestoreStreamRequest {
            op_id: infra::unique("restore"),
            repository: Some(repo.clone()),
            snapshot_id: stats.snapshot_id[..12].to_string(),
            command: Some(pb::CommandSpec { argv: load, env: HashMap::new() }),
        })
        .await
        .unwrap()
        .into_inner();
    let (events, end) = drain(stream).await;
    end.unwrap();
    let r = match final_result(&events) {
        pb::operation_result::Result::Restore(r) => r.clone(),
        r => panic!("{r:?}"),
    };
    assert_eq!((r.snapshot_id.as_str(), r.bytes_written), (stats.snapshot_id.as_str(), stats.bytes_read));
    let last = events.last().unwrap().progress.as_ref().unwrap();
    assert_eq!(
        (last.total_bytes, last.bytes_read, last.bytes_downloaded),
        (stats.bytes_read, r.bytes_written, r.bytes_downloaded)
    );
    assert_eq!(fingerprint(&restored), before, "the restored table differs");

    let m = srv.metrics_text();
    assert!(m.contains("kanister_agent_operations_total{kind=\"backup_stream\",result=\"succeeded\"} 1"), "{m}");
    assert!(m.contains("kanister_agent_operations_total{kind=\"restore_stream\",result=\"succeeded\"} 1"), "{m}");
    assert!(
        m.contains(&format!("kanister_agent_bytes_read_total{{kind=\"backup_stream\"}} {}", stats.bytes_read)),
        "{m}"
    );
    assert!(m.contains("kanister_agent_operation_duration_seconds_count{kind=\"backup_stream\"} 1"), "{m}");

    let log = captured();
    assert!(log.contains(&format!("op_id={op_id}")), "the operation's logs carry its id");
    assert_no_secret(&log, "the logs");
    srv.stop().await;
    sh(mysql("").arg("-e").arg(format!("DROP DATABASE {db}; DROP DATABASE {restored}")));
}

/// The same op id twice runs once; a caller that disconnects leaves the operation running, and
/// re-attaching (by the same call or by Attach) gets the final result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_op_id_runs_once_and_reattach_gets_the_result() {
    let srv = TestServer::start(|_| {}).await;
    let repo = s3_repo("svc-idem").await;
    let op_id = infra::unique("op");
    let request = pb::BackupStreamRequest {
        op_id: op_id.clone(),
        repository: Some(repo.clone()),
        command: Some(cmd(&["sh", "-c", "head -c 6000000 /dev/urandom; sleep 1; head -c 1000000 /dev/zero"])),
        tags: [("case".to_string(), "idempotent".to_string())].into(),
        hostname: String::new(),
    };

    // First caller: reads one event, then its whole connection goes away.
    {
        let mut first = client(plain_channel(srv.addr).await, Some(TOKEN));
        let mut s = first.backup_stream(request.clone()).await.unwrap().into_inner();
        let e = s.message().await.unwrap().unwrap();
        assert!(!e.attached);
    }
    let mut c = client(plain_channel(srv.addr).await, Some(TOKEN));
    // Second call with the same id: attaches.
    let (events, end) = drain(c.backup_stream(request.clone()).await.unwrap().into_inner()).await;
    end.unwrap();
    assert!(events.iter().all(|e| e.attached), "the retry attached");
    let stats = backup_stats(&events);
    assert_eq!(stats.bytes_read, 7_000_000);

    // Re-attach after the end, twice, by the call and by Attach: the same final result.
    let (again, end) = drain(c.backup_stream(request.clone()).await.unwrap().into_inner()).await;
    end.unwrap();
    assert_eq!(again.len(), 1, "a finished operation answers with its result at once");
    assert_eq!(backup_stats(&again).snapshot_id, stats.snapshot_id);
    let (attached, end) = drain(c.attach(pb::AttachRequest { op_id: op_id.clone() }).await.unwrap().into_inner()).await;
    end.unwrap();
    assert_eq!(backup_stats(&attached).snapshot_id, stats.snapshot_id);

    let listed = snapshots(&mut c, &repo, &[("case", "idempotent")]).await;
    assert_eq!(listed.len(), 1, "one op id, one snapshot: {listed:?}");

    // The same id with other parameters is refused; an unknown id is not found.
    let mut other = request.clone();
    other.command = Some(cmd(&["true"]));
    let e = c.backup_stream(other).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    let e = c.attach(pb::AttachRequest { op_id: "never-started".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Forget is idempotent by op id, and by snapshot id after the fact.
    let f = pb::ForgetRequest {
        op_id: infra::unique("forget"),
        repository: Some(repo.clone()),
        snapshot_ids: vec![stats.snapshot_id.clone()],
    };
    let r1 = c.forget(f.clone()).await.unwrap().into_inner();
    let r2 = c.forget(f.clone()).await.unwrap().into_inner();
    assert_eq!((r1.removed.clone(), r2.removed), (vec![stats.snapshot_id.clone()], vec![stats.snapshot_id.clone()]));
    let r3 = c.forget(pb::ForgetRequest { op_id: infra::unique("forget"), ..f }).await.unwrap().into_inner();
    assert_eq!((r3.removed.len(), r3.already_absent), (0, vec![stats.snapshot_id.clone()]));
    assert!(snapshots(&mut c, &repo, &[]).await.is_empty());

    // Prune through the service: the forgotten snapshot's packs are set aside.
    let (events, end) = drain(
        c.prune(pb::PruneRequest {
            op_id: infra::unique("prune"),
            repository: Some(repo.clone()),
            grace_period_secs: 3600,
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    end.unwrap();
    match final_result(&events) {
        pb::operation_result::Result::Prune(p) => assert!(p.packs_set_aside >= 1, "{p:?}"),
        r => panic!("{r:?}"),
    }
    assert_no_secret(&captured(), "the logs");
    srv.stop().await;
}

/// Cancel in the middle of a backup whose command has gone silent: the command is killed, the
/// operation ends CANCELLED, no snapshot and no backup marker remain, `check --read-data` is
/// clean, and the next backup works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_mid_stream_leaves_a_clean_repository() {
    let srv = TestServer::start(|_| {}).await;
    let repo = s3_repo("svc-cancel").await;
    let mut c = client(plain_channel(srv.addr).await, Some(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    // 12 MB (more than one 8 MiB pack lands), then the command sleeps without writing or
    // closing its stdout: the reader thread blocks, and only killing the command frees it.
    let script = format!("echo $$ > {}; head -c 12000000 /dev/urandom; exec sleep 600", pidfile.display());
    let op_id = infra::unique("cancel");
    let mut s = c
        .backup_stream(pb::BackupStreamRequest {
            op_id: op_id.clone(),
            repository: Some(repo.clone()),
            command: Some(cmd(&["sh", "-c", &script])),
            tags: [("case".to_string(), "cancel".to_string())].into(),
            hostname: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let pid = read_pid(&pidfile);
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let e = s.message().await.unwrap().expect("the stream goes on until cancelled");
        let p = e.progress.unwrap();
        // The chunker keeps the stream's tail until the stream ends: all but the last chunk.
        if p.bytes_read >= 11_000_000 {
            break;
        }
        assert!(Instant::now() < until, "the backup did not progress: {p:?}");
    }
    // Let the first pack's upload land, then cancel while the command is silent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = c.cancel(pb::CancelRequest { op_id: op_id.clone() }).await.unwrap().into_inner().state;
    assert_eq!(state, pb::OperationState::Running as i32);
    let t = Instant::now();
    let (_, end) = drain(s).await;
    let st = end.expect_err("a cancelled operation ends with a status");
    assert_eq!(st.code(), tonic::Code::Cancelled, "{st:?}");
    assert_eq!(details(&st).state, pb::OperationState::Cancelled as i32);
    assert!(t.elapsed() < Duration::from_secs(20), "cancellation took {:?}", t.elapsed());
    assert_gone(pid, "the command");
    // Cancelling again, or re-attaching, reports the same end.
    let state = c.cancel(pb::CancelRequest { op_id: op_id.clone() }).await.unwrap().into_inner().state;
    assert_eq!(state, pb::OperationState::Cancelled as i32);
    let (_, end) = drain(c.attach(pb::AttachRequest { op_id }).await.unwrap().into_inner()).await;
    assert_eq!(end.unwrap_err().code(), tonic::Code::Cancelled);

    assert!(snapshots(&mut c, &repo, &[]).await.is_empty(), "a cancelled backup writes no snapshot");
    let store = Store::open(
        &repo.store_url,
        &StoreOptions { options: repo.store_options.clone().into_iter().collect(), credentials_file: None },
    )
    .unwrap();
    assert!(store.list("locks").await.unwrap().is_empty(), "the backup marker was removed");
    let report = check_read_data(&mut c, &repo).await;
    assert!(report.ok && report.errors.is_empty(), "{report:?}");

    // A new backup works (and reuses what had landed).
    let (events, end) = drain(
        c.backup_stream(pb::BackupStreamRequest {
            op_id: infra::unique("after-cancel"),
            repository: Some(repo.clone()),
            command: Some(cmd(&["head", "-c", "3000000", "/dev/urandom"])),
            tags: HashMap::new(),
            hostname: String::new(),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    end.unwrap();
    assert_eq!(backup_stats(&events).bytes_read, 3_000_000);
    assert_eq!(snapshots(&mut c, &repo, &[]).await.len(), 1);
    let report = check_read_data(&mut c, &repo).await;
    assert!(report.ok, "{report:?}");
    let m = srv.metrics_text();
    assert!(m.contains("kanister_agent_operations_total{kind=\"backup_stream\",result=\"cancelled\"} 1"), "{m}");
    srv.stop().await;
}

/// The library path too: `push_until` with a `Source::Command` kills a silent command when
/// cancelled, and removes its backup marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_until_kills_a_silent_input_command() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("repo").display());
    let key = RepoKey::Passphrase(Zeroizing::new(PASSWORD.as_bytes().to_vec()));
    let store = Store::open(&url, &StoreOptions::default()).unwrap();
    let repo = Repository::at(store).init(&key, &InitOptions::default()).await.unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("echo $$ > {}; head -c 100000 /dev/urandom; exec sleep 600", pidfile.display());
    let source = kanister_agent::push::Source::Command(vec!["sh".into(), "-c".into(), script]);
    let progress = kanister_agent::progress::Progress::new();
    let pf = pidfile.clone();
    // Cancel once the command runs and has gone silent (its 100 kB are read by then).
    let cancel = async move {
        while !pf.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        kanister_agent::push::push_until(&repo, source, &Default::default(), progress, cancel),
    )
    .await
    .expect("push_until returns once cancelled");
    assert!(r.unwrap().is_none(), "cancelled");
    let pid = read_pid(&pidfile);
    assert_gone(pid, "the input command");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(repo.snapshot_ids().await.unwrap().is_empty());
    assert!(repo.store().list("locks").await.unwrap().is_empty(), "the marker was removed");
}

/// A failing dump: the error carries the exit code and the last stderr lines, and no snapshot
/// is written, whether it failed at once (real mysqldump) or after writing data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_dump_reports_exit_code_and_stderr_and_writes_nothing() {
    let srv = TestServer::start(|_| {}).await;
    let repo = s3_repo("svc-fail").await;
    let mut c = client(plain_channel(srv.addr).await, Some(TOKEN));

    let mut dump = vec!["mysqldump".to_string()];
    dump.extend(mysql_args());
    dump.push("no_such_database_4242".into());
    let mut spec = pb::CommandSpec { argv: dump, env: HashMap::new() };
    spec.env.insert("KANISTER_TEST_SECRET_ENV".into(), ENV_SECRET.into());
    let (_, end) = drain(
        c.backup_stream(pb::BackupStreamRequest {
            op_id: infra::unique("fail"),
            repository: Some(repo.clone()),
            command: Some(spec),
            tags: HashMap::new(),
            hostname: String::new(),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    let st = end.expect_err("the dump failed");
    let d = details(&st);
    assert_eq!(st.code(), tonic::Code::Aborted, "{st:?}");
    assert_eq!(d.exit_code, Some(2), "{d:?}");
    assert!(d.stderr_tail.iter().any(|l| l.contains("Unknown database")), "{d:?}");
    assert!(st.message().contains("exited with status 2") && st.message().contains("Unknown database"), "{st:?}");
    assert_no_secret(st.message(), "the status");

    // Data first, then a failure: still no snapshot.
    let script = "head -c 5000000 /dev/urandom; echo 'first problem' >&2; echo 'dump aborted: disk full' >&2; exit 3";
    let (events, end) = drain(
        c.backup_stream(pb::BackupStreamRequest {
            op_id: infra::unique("fail"),
            repository: Some(repo.clone()),
            command: Some(cmd(&["sh", "-c", script])),
            tags: HashMap::new(),
            hostname: String::new(),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    let st = end.expect_err("the command failed");
    let d = details(&st);
    assert_eq!(
        (d.exit_code, d.stderr_tail.clone()),
        (Some(3), vec!["first problem".to_string(), "dump aborted: disk full".to_string()])
    );
    assert!(events.iter().any(|e| e.progress.as_ref().is_some_and(|p| p.bytes_read > 0)));
    assert!(snapshots(&mut c, &repo, &[]).await.is_empty(), "a failed command writes no snapshot");
    let report = check_read_data(&mut c, &repo).await;
    assert!(report.ok, "{report:?}");

    // A restore into a failing command fails with its status too.
    let (events, end) = drain(
        c.backup_stream(pb::BackupStreamRequest {
            op_id: infra::unique("ok"),
            repository: Some(repo.clone()),
            command: Some(cmd(&["head", "-c", "2000000", "/dev/urandom"])),
            tags: HashMap::new(),
            hostname: String::new(),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    end.unwrap();
    let id = backup_stats(&events).snapshot_id;
    let (_, end) = drain(
        c.restore_stream(pb::RestoreStreamRequest {
            op_id: infra::unique("restore-fail"),
            repository: Some(repo.clone()),
            snapshot_id: id,
            command: Some(cmd(&["sh", "-c", "head -c 1000 >/dev/null; echo 'ERROR 1064 (42000): syntax' >&2; exit 1"])),
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    let st = end.expect_err("the restore command failed");
    assert_eq!(details(&st).exit_code, Some(1), "{st:?}");
    assert!(st.message().contains("ERROR 1064"), "{st:?}");
    srv.stop().await;
}

/// TLS, client certificates and the bearer token: every way of getting them wrong is
/// UNAUTHENTICATED; health answers without them (the kubelet probe speaks neither).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_or_missing_tls_is_unauthenticated() {
    let certs = Certs::new();
    let srv = TestServer::start(|c| c.tls = Some(certs.server(true))).await;
    let list = || pb::ListSnapshotsRequest { repository: None, tags: HashMap::new() };

    let mut plain = client(plain_channel(srv.addr).await, Some(TOKEN));
    let e = plain.list_snapshots(list()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "plain connection: {e:?}");
    assert!(e.message().contains("TLS"), "{e:?}");

    let mut anonymous = client(certs.channel(srv.addr, false).await, Some(TOKEN));
    let e = anonymous.list_snapshots(list()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "no client certificate: {e:?}");

    let tls = certs.channel(srv.addr, true).await;
    for token in [None, Some("wrong-token-0d1e")] {
        let e = client(tls.clone(), token).list_snapshots(list()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "token {token:?}: {e:?}");
        assert_no_secret(e.message(), "the status");
    }
    // Everything right: the request reaches the service (which then wants a store).
    let e = client(tls.clone(), Some(TOKEN)).list_snapshots(list()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("no store"), "{e:?}");

    let mut health = tonic_health::pb::health_client::HealthClient::new(plain_channel(srv.addr).await);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest { service: "kanister.agent.v1.AgentService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let m = srv.metrics_text();
    assert!(m.contains("kanister_agent_requests_rejected_total{reason=\"unauthenticated\"} 4"), "{m}");
    srv.stop().await;

    // Without TLS configured, the token alone guards the API.
    let srv = TestServer::start(|_| {}).await;
    let e = client(plain_channel(srv.addr).await, Some("wrong-token-0d1e")).list_snapshots(list()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    srv.stop().await;
    assert_no_secret(&captured(), "the logs");
}

/// Wrong repository keys and store credentials fail with statuses that name the problem and
/// carry no secret; the limit on operations refuses with RESOURCE_EXHAUSTED; nothing secret
/// reaches the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_and_logs_carry_no_secret_and_limits_hold() {
    let srv = TestServer::start(|c| {
        c.limits.max_running = 1;
        c.limits.max_queued = 1;
    })
    .await;
    let repo = s3_repo("svc-secret").await;
    let mut c = client(plain_channel(srv.addr).await, Some(TOKEN));

    let mut wrong_key = repo.clone();
    wrong_key.key = Some(pb::repository_ref::Key::Passphrase(b"wrong passphrase 5e7".to_vec()));
    let e = c
        .list_snapshots(pb::ListSnapshotsRequest { repository: Some(wrong_key), tags: HashMap::new() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert_no_secret(e.message(), "the status");

    let mut creds_in_url = repo.clone();
    creds_in_url.store_url =
        format!("{}?aws_secret_access_key={}", repo.store_url, infra::var("KANISTER_TEST_S3_SECRET_KEY"));
    let e = c
        .list_snapshots(pb::ListSnapshotsRequest { repository: Some(creds_in_url), tags: HashMap::new() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert_no_secret(e.message(), "the status");

    // One runs, one queues, the third is refused.
    let slow = |id: &str| pb::BackupStreamRequest {
        op_id: id.to_string(),
        repository: Some(repo.clone()),
        command: Some(pb::CommandSpec {
            argv: vec!["sh".into(), "-c".into(), "exec sleep 30".into()],
            env: [("DB_PASSWORD".into(), ENV_SECRET.into())].into(),
        }),
        tags: HashMap::new(),
        hostname: String::new(),
    };
    let (a, b) = (infra::unique("a"), infra::unique("b"));
    let _sa = c.backup_stream(slow(&a)).await.unwrap().into_inner();
    let mut sb = c.backup_stream(slow(&b)).await.unwrap().into_inner();
    let e = sb.message().await.unwrap().unwrap();
    assert_eq!(e.state, pb::OperationState::Queued as i32, "{e:?}");
    let e = c.backup_stream(slow(&infra::unique("c"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    for id in [&b, &a] {
        c.cancel(pb::CancelRequest { op_id: id.clone() }).await.unwrap();
    }
    let (_, end) = drain(sb).await;
    assert_eq!(end.unwrap_err().code(), tonic::Code::Cancelled);
    srv.stop().await;

    let log = captured();
    assert!(!log.is_empty());
    assert_no_secret(&log, "the logs");
}

/// A directory tree through BackupPaths and RestorePaths: same files, same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_backup_and_restore_over_grpc() {
    let srv = TestServer::start(|_| {}).await;
    let repo = s3_repo("svc-tree").await;
    let mut c = client(plain_channel(srv.addr).await, Some(TOKEN));
    let src = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for (i, name) in ["a.txt", "sub/b.bin", "sub/deeper/c.sql", "empty"].iter().enumerate() {
        let path = src.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut data = Vec::new();
        kanister_testkit::data::MixedStream::new(i as u64, [40_000u64, 3_000_000, 700_000, 0][i])
            .read_to_end(&mut data)
            .unwrap();
        std::fs::write(&path, &data).unwrap();
        expected.push((name.to_string(), data));
    }
    let op_id = infra::unique("paths");
    let request = pb::BackupPathsRequest {
        op_id: op_id.clone(),
        repository: Some(repo.clone()),
        path: src.path().display().to_string(),
        tags: [("volume".to_string(), "data".to_string())].into(),
        ..Default::default()
    };
    let (events, end) = drain(c.backup_paths(request.clone()).await.unwrap().into_inner()).await;
    end.unwrap();
    let stats = backup_stats(&events);
    assert_eq!((stats.files, stats.partial), (4, false), "{stats:?}");
    assert_eq!(stats.bytes_read, 3_740_000);
    // Idempotent like the stream backup.
    let (again, end) = drain(c.backup_paths(request).await.unwrap().into_inner()).await;
    end.unwrap();
    assert_eq!(backup_stats(&again).snapshot_id, stats.snapshot_id);
    let listed = snapshots(&mut c, &repo, &[("volume", "data")]).await;
    assert_eq!((listed.len(), listed[0].kind.as_str()), (1, "tree"));

    let dst = tempfile::tempdir().unwrap();
    let (events, end) = drain(
        c.restore_paths(pb::RestorePathsRequest {
            op_id: infra::unique("restore-paths"),
            repository: Some(repo.clone()),
            snapshot_id: stats.snapshot_id.clone(),
            target: dst.path().display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    end.unwrap();
    match final_result(&events) {
        pb::operation_result::Result::Restore(r) => {
            assert_eq!((r.files, r.bytes_written, r.snapshot_id.as_str()), (4, 3_740_000, stats.snapshot_id.as_str()))
        }
        r => panic!("{r:?}"),
    }
    for (name, data) in &expected {
        assert!(std::fs::read(dst.path().join(name)).unwrap() == *data, "{name} differs");
    }
    let e = c
        .restore_paths(pb::RestorePathsRequest {
            op_id: infra::unique("relative"),
            repository: Some(repo.clone()),
            snapshot_id: stats.snapshot_id,
            target: "relative/dir".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Test certificates ([`kanister_testkit::tls`]).

struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerNames { cn: "localhost", san: "DNS:localhost,IP:127.0.0.1" };
        make_certs(dir.path(), server, "coordinator");
        Certs { dir }
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap()
    }

    fn server(&self, client_ca: bool) -> TlsSettings {
        let d = self.dir.path();
        TlsSettings::from_files(
            &d.join("server.pem"),
            &d.join("server.key"),
            client_ca.then(|| d.join("ca.pem")).as_deref(),
        )
        .unwrap()
    }

    async fn channel(&self, addr: SocketAddr, client_cert: bool) -> Channel {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.read("ca.pem"))).domain_name("localhost");
        if client_cert {
            tls = tls.identity(Identity::from_pem(self.read("client.pem"), self.read("client.key")));
        }
        Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
    }
}

/// `serve` never runs unauthenticated by accident: without a token or client certificates it
/// refuses to start and says how to give one (before, an anonymous BackupStream ran any command
/// in the agent's container); the clearly named opt-out works only on loopback, and warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_to_start_without_authentication() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = service::serve(listener, ServeConfig::default(), std::future::pending()).await;
    match r {
        Err(ServeError::Unauthenticated(why)) => {
            assert!(why.contains("--token-file") && why.contains("--tls-client-ca"), "{why}")
        }
        other => panic!("served without authentication: {other:?}"),
    }
    // The opt-out, off loopback: refused.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let config = ServeConfig { insecure_no_auth: true, ..ServeConfig::default() };
    match service::serve(listener, config, std::future::pending()).await {
        Err(ServeError::Unauthenticated(why)) => assert!(why.contains("loopback"), "{why}"),
        other => panic!("--insecure-no-auth served on all addresses: {other:?}"),
    }
    // On loopback it serves, and anyone may call.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServeConfig { insecure_no_auth: true, ..ServeConfig::default() };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(service::serve(listener, config, async {
        let _ = rx.await;
    }));
    let dir = tempfile::tempdir().unwrap();
    let repo = pb::RepositoryRef {
        store_url: format!("file://{}/none", dir.path().display()),
        key: Some(pb::repository_ref::Key::Passphrase(b"x".to_vec())),
        ..Default::default()
    };
    let e = client(plain_channel(addr).await, None)
        .list_snapshots(pb::ListSnapshotsRequest { repository: Some(repo), tags: HashMap::new() })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_ne!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let _ = tx.send(());
    task.await.unwrap().unwrap();

    // The binary: the same refusal, with the fix, before serving anything.
    let out = Command::new(env!("CARGO_BIN_EXE_kanister-agent"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .env_remove("KANISTER_TOKEN_FILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kanister-agent serve started without authentication");
    assert!(err.contains("--token-file"), "{err}");
}
