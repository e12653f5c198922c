//! kanctl against the coordinator's gRPC API served in-process on a `LocalCluster`:
//! - every `create actionset` flag mapped into the ActionSet (table-driven, against YAML);
//! - upstream's generated names;
//! - bad input: one clear message each;
//! - `watch` surviving a restart of the API server mid-action;
//! - `describe` showing the ActionSet's events.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use kanister_coordinator::api::{CoordinatorApi, ServeConfig, serve};
use kanister_coordinator::cluster::Cluster as _;
use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::crd::ActionSet;
use kanister_coordinator::engine::{Engine, EngineConfig};
use kanister_coordinator::kanctl::{
    self, Cli, Command, CreateArgs, CreateCommand, Error, Io, Outcome, ValidateCommand, actionset,
};
use serde_json::Value;
use zeroize::Zeroizing;

/// A running API server; dropping it (or `stop`) shuts it down.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(api: CoordinatorApi<LocalCluster>, addr: Option<SocketAddr>, token: Option<&str>) -> Server {
        let listener = tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .expect("bind the API port");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let config = ServeConfig { tls: None, token: token.map(|t| Zeroizing::new(t.to_string())) };
        let task = tokio::spawn(async move {
            serve(listener, api, config, async move {
                let _ = rx.await;
            })
            .await
            .expect("API server failed");
        });
        Server { addr, stop: Some(tx), task }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the API server did not stop within 10s")
            .unwrap();
    }
}

/// Runs kanctl in-process; returns the result and what it printed (stdout, stderr).
async fn kanctl(
    addr: SocketAddr,
    token_file: Option<&Path>,
    args: &[&str],
) -> (Result<Outcome, Error>, String, String) {
    let address = format!("http://{addr}");
    let mut argv = vec!["kanctl", "--coordinator", &address, "--config", "/dev/null"];
    let tf;
    if let Some(p) = token_file {
        tf = p.display().to_string();
        argv.extend(["--token-file", &tf]);
    }
    argv.extend(args);
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?} does not parse: {e}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = kanctl::run(cli, None, &mut Io { out: &mut out, err: &mut err, live: false }).await;
    (r, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

fn build(args: &[&str], parent: Option<&ActionSet>) -> Result<ActionSet, Error> {
    let mut argv = vec!["kanctl", "create", "actionset"];
    argv.extend(args);
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?} does not parse: {e}"));
    let Command::Create(CreateArgs { command: CreateCommand::Actionset(a), .. }) = cli.command else {
        panic!("not create actionset")
    };
    actionset::build(&a, parent).map(|(a, _)| a)
}

fn as_value(a: &ActionSet) -> Value {
    let mut v = serde_json::to_value(a).unwrap();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    v
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap()
}

/// A complete backup ActionSet with an output artifact, as the parent of `--from`.
fn parent(state: &str) -> ActionSet {
    serde_norway::from_str(&format!(
        r#"
apiVersion: cr.kanister.io/v1alpha1
kind: ActionSet
metadata: {{name: backup-t4sqb, namespace: kanister}}
spec:
  actions:
  - name: backup
    blueprint: mysql-blueprint
    object: {{kind: statefulset, name: mysql-release, namespace: mysql-test}}
    profile: {{name: s3-profile, namespace: mysql-test}}
    secrets: {{mysql: {{name: mysql-release, namespace: mysql-test}}}}
    configMaps: {{cfg: {{name: conf, namespace: mysql-test}}}}
    options: {{retention: 7d}}
status:
  state: {state}
  actions:
  - name: backup
    object: {{kind: statefulset, name: mysql-release, namespace: mysql-test}}
    artifacts:
      mysqlCloudDump: {{keyValue: {{s3path: "s3://bucket/dump.sql"}}}}
"#
    ))
    .unwrap()
}

#[test]
fn every_flag_maps_into_the_actionset() {
    let head = "apiVersion: cr.kanister.io/v1alpha1\nkind: ActionSet\n";
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        (
            "the seed's backup",
            vec![
                "-a",
                "backup",
                "-n",
                "kanister",
                "--name",
                "x",
                "-b",
                "mysql-blueprint",
                "-t",
                "mysql-test/mysql-release",
                "-p",
                "mysql-test/s3-profile",
                "-s",
                "mysql=mysql-test/mysql-release",
            ],
            format!(
                "{head}metadata: {{name: x, namespace: kanister}}
spec:
  actions:
  - name: backup
    blueprint: mysql-blueprint
    object: {{kind: statefulset, name: mysql-release, namespace: mysql-test}}
    profile: {{name: s3-profile, namespace: mysql-test}}
    secrets: {{mysql: {{name: mysql-release, namespace: mysql-test}}}}"
            ),
        ),
        (
            "long flags, profile in --namespace, several of each",
            vec![
                "--action",
                "backup",
                "--namespace",
                "ops",
                "--name",
                "x",
                "--blueprint",
                "bp",
                "--deployment",
                "a/d1,b/d2",
                "--profile",
                "prof",
                "--secrets",
                "s1=ns/one",
                "--secrets",
                "s2=ns/two",
                "--config-maps",
                "c=ns/cm",
                "--options",
                "k1=v1,k2=v=2",
            ],
            format!(
                "{head}metadata: {{name: x, namespace: ops}}
spec:
  actions:
  - name: backup
    blueprint: bp
    object: {{kind: deployment, name: d1, namespace: a}}
    profile: {{name: prof, namespace: ops}}
    secrets: {{s1: {{name: one, namespace: ns}}, s2: {{name: two, namespace: ns}}}}
    configMaps: {{c: {{name: cm, namespace: ns}}}}
    options: {{k1: v1, k2: v=2}}
  - name: backup
    blueprint: bp
    object: {{kind: deployment, name: d2, namespace: b}}
    profile: {{name: prof, namespace: ops}}
    secrets: {{s1: {{name: one, namespace: ns}}, s2: {{name: two, namespace: ns}}}}
    configMaps: {{c: {{name: cm, namespace: ns}}}}
    options: {{k1: v1, k2: v=2}}"
            ),
        ),
        (
            "short target flags: -D -v -T -O -c -o",
            vec![
                "-a",
                "snap",
                "--name",
                "x",
                "-b",
                "bp",
                "-D",
                "os/dc",
                "-v",
                "data/pvc1",
                "-T",
                "team",
                "-O",
                "apps/v1/deployments/web/front",
                "-c",
                "c=ns/cm",
                "-o",
                "k=v",
            ],
            format!(
                "{head}metadata: {{name: x, namespace: kanister}}
spec:
  actions:
  - {{name: snap, blueprint: bp, object: {{kind: deploymentconfig, name: dc, namespace: os}},
     configMaps: {{c: {{name: cm, namespace: ns}}}}, options: {{k: v}}}}
  - {{name: snap, blueprint: bp, object: {{kind: pvc, name: pvc1, namespace: data}},
     configMaps: {{c: {{name: cm, namespace: ns}}}}, options: {{k: v}}}}
  - {{name: snap, blueprint: bp, object: {{kind: namespace, name: team, namespace: team}},
     configMaps: {{c: {{name: cm, namespace: ns}}}}, options: {{k: v}}}}
  - {{name: snap, blueprint: bp,
     object: {{group: apps, apiVersion: v1, resource: deployments, name: front, namespace: web}},
     configMaps: {{c: {{name: cm, namespace: ns}}}}, options: {{k: v}}}}"
            ),
        ),
        (
            "labels, pod labels and annotations, --statefulset long",
            vec![
                "-a",
                "backup",
                "--name",
                "x",
                "-b",
                "bp",
                "--statefulset",
                "db/mysql",
                "--labels",
                "team=db,tier=1",
                "--podlabels",
                "app=kanister",
                "--podannotations",
                "sidecar=false,note=a b",
            ],
            format!(
                "{head}metadata: {{name: x, namespace: kanister, labels: {{team: db, tier: '1'}}}}
spec:
  actions:
  - name: backup
    blueprint: bp
    object: {{kind: statefulset, name: mysql, namespace: db}}
    podLabels: {{app: kanister}}
    podAnnotations: {{sidecar: 'false', note: a b}}"
            ),
        ),
        (
            "a selector leaves one template action for the coordinator to expand",
            vec![
                "-a",
                "backup",
                "--name",
                "x",
                "-b",
                "bp",
                "-l",
                "app=mysql",
                "-k",
                "statefulset",
                "--selector-namespace",
                "db",
            ],
            format!(
                "{head}metadata: {{name: x, namespace: kanister}}
spec:
  actions:
  - {{name: backup, blueprint: bp, object: {{}}}}"
            ),
        ),
    ];
    for (what, args, expected) in cases {
        let got = build(&args, None).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(as_value(&got), yaml(&expected), "{what}:\n{}", serde_norway::to_string(&got).unwrap());
    }

    // The selector itself goes to the coordinator.
    let cli = Cli::try_parse_from([
        "kanctl",
        "create",
        "actionset",
        "-a",
        "b",
        "-b",
        "bp",
        "-l",
        "app=mysql",
        "-k",
        "statefulset",
        "--selector-namespace",
        "db",
    ])
    .unwrap();
    let Command::Create(CreateArgs { command: CreateCommand::Actionset(a), .. }) = cli.command else { panic!() };
    let (_, selectors) = actionset::build(&a, None).unwrap();
    assert_eq!(selectors.len(), 1);
    assert_eq!(
        (selectors[0].kind.as_str(), selectors[0].label_selector.as_str(), selectors[0].namespace.as_str()),
        ("statefulset", "app=mysql", "db")
    );
    assert!(!a.dry_run && !a.skip_validation && !a.wait);
    let cli =
        Cli::try_parse_from(["kanctl", "create", "actionset", "--dry-run", "--skip-validation", "--wait", "-a", "x"])
            .unwrap();
    let Command::Create(CreateArgs { command: CreateCommand::Actionset(a), .. }) = cli.command else { panic!() };
    assert!(a.dry_run && a.skip_validation && a.wait);
}

#[test]
fn from_copies_the_parent_and_its_artifacts() {
    let p = parent("complete");
    let got = build(&["-a", "restore", "--name", "x", "-f", "backup-t4sqb"], Some(&p)).unwrap();
    let expected = yaml(
        "apiVersion: cr.kanister.io/v1alpha1
kind: ActionSet
metadata: {name: x, namespace: kanister}
spec:
  actions:
  - name: restore
    blueprint: mysql-blueprint
    object: {kind: statefulset, name: mysql-release, namespace: mysql-test}
    profile: {name: s3-profile, namespace: mysql-test}
    secrets: {mysql: {name: mysql-release, namespace: mysql-test}}
    configMaps: {cfg: {name: conf, namespace: mysql-test}}
    options: {retention: 7d}
    artifacts: {mysqlCloudDump: {keyValue: {s3path: 's3://bucket/dump.sql'}}}",
    );
    assert_eq!(as_value(&got), expected, "{}", serde_norway::to_string(&got).unwrap());

    // Flags given with --from win over the parent's.
    let got =
        build(&["-a", "restore", "--name", "x", "-f", "backup-t4sqb", "-p", "other", "-o", "k=v"], Some(&p)).unwrap();
    let a = &got.spec.actions[0];
    assert_eq!(a.profile.as_ref().unwrap().name, "other");
    assert_eq!(a.options.get("k").map(String::as_str), Some("v"));
    assert_eq!(a.options.get("retention").map(String::as_str), Some("7d"));
}

#[test]
fn names_follow_upstream() {
    let name_of = |a: ActionSet| a.metadata.name.unwrap();
    let backup = name_of(build(&["-a", "backup", "-b", "bp", "-t", "a/b"], None).unwrap());
    let re = regex::Regex::new("^backup-[bcdfghjklmnpqrstvwxz2456789]{5}$").unwrap();
    assert!(re.is_match(&backup), "{backup}");
    let restore = name_of(build(&["-a", "restore", "-f", "backup-t4sqb"], Some(&parent("complete"))).unwrap());
    let re = regex::Regex::new("^restore-backup-t4sqb-[bcdfghjklmnpqrstvwxz2456789]{5}$").unwrap();
    assert!(re.is_match(&restore), "{restore}");
}

#[test]
fn bad_flags_name_the_field_and_the_fix() {
    let cases: &[(&[&str], &str)] = &[
        (&["-a", "b", "-b", "bp", "-t", "a/b", "-s", "mysql"], "--secrets: \"mysql\" is not key=namespace/name"),
        (
            &["-a", "b", "-b", "bp", "-t", "a/b", "-s", "mysql=noslash"],
            "--secrets: \"mysql=noslash\" is not key=namespace/name",
        ),
        (&["-a", "b", "-b", "bp", "-t", "a/b", "-c", "=ns/x"], "--config-maps: \"=ns/x\" is not key=namespace/name"),
        (&["-a", "b", "-b", "bp", "-t", "a/b", "-o", "novalue"], "--options: \"novalue\" is not key=value"),
        (&["-a", "b", "-b", "bp", "-t", "mysql"], "--statefulset: \"mysql\" is not namespace/name"),
        (&["-a", "b", "-b", "bp", "-O", "a/b"], "--objects: \"a/b\" is not group/version/resource/namespace/name"),
        (&["-b", "bp", "-t", "a/b"], "--action is required"),
        (&["-a", "b", "-t", "a/b"], "--blueprint is required"),
        (&["-a", "b", "-b", "bp"], "no object to act on"),
    ];
    for (args, expected) in cases {
        let e = build(args, None).expect_err(&format!("{args:?} was accepted"));
        assert!(e.to_string().contains(expected), "{args:?}: {e}");
    }
    for state in ["running", "failed", "pending"] {
        let e = build(&["-a", "restore", "-f", "backup-t4sqb"], Some(&parent(state))).unwrap_err();
        assert!(e.to_string().contains(&format!("backup-t4sqb is {state}, not complete")), "{e}");
    }
}

const WORLD: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: app, namespace: db, labels: {app: demo}}
spec: {replicas: 1, selector: {matchLabels: {app: demo}}}
---
apiVersion: v1
kind: Pod
metadata: {name: app-0, namespace: db, labels: {app: demo}}
spec: {containers: [{name: main, image: busybox}]}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: db}
stringData: {username: root}
---
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: demo, namespace: kanister}
actions:
  backup:
    outputArtifacts:
      note: {keyValue: {word: "{{ .Phases.say.Output.word }}"}}
    phases:
    - func: KubeExec
      name: say
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        pod: "{{ index .StatefulSet.Pods 0 }}"
        command:
        - sh
        - -ec
        - |
          sleep {{ .Options.sleep | default "0" }}
          echo '###Phase-output###: {"key":"word","value":"hello"}'
  restore:
    inputArtifactNames: [note]
    phases:
    - func: KubeExec
      name: check
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        pod: "{{ index .StatefulSet.Pods 0 }}"
        command: [sh, -ec, "test '{{ .ArtifactsIn.note.KeyValue.word }}' = hello"]
"#;

fn local() -> (Arc<LocalCluster>, CoordinatorApi<LocalCluster>) {
    let cluster = Arc::new(LocalCluster::new());
    cluster.load_yaml(WORLD, "world").unwrap();
    let config = EngineConfig { watch_interval: Duration::from_millis(100), ..EngineConfig::default() };
    let engine = Engine::new(cluster.clone(), config);
    let api = CoordinatorApi::new(cluster.clone()).with_engine(engine).with_poll_interval(Duration::from_millis(50));
    (cluster, api)
}

#[tokio::test]
async fn bad_input_gives_one_clear_message_each() {
    let (cluster, api) = local();
    // An ActionSet left pending (no status) for `--from`.
    cluster
        .load_yaml(
            "apiVersion: cr.kanister.io/v1alpha1\nkind: ActionSet\nmetadata: {name: backup-pend1, namespace: kanister}\n\
             spec: {actions: [{name: backup, blueprint: demo, object: {kind: statefulset, name: app, namespace: db}}]}\n",
            "pending",
        )
        .unwrap();
    let token = "s3cret-token-value";
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let bad = dir.path().join("bad");
    std::fs::write(&good, token).unwrap();
    std::fs::write(&bad, "wrong").unwrap();
    let server = Server::start(api, None, Some(token)).await;
    let a = server.addr;
    let cases: Vec<(Vec<&str>, &Path, &str)> = vec![
        (
            vec!["create", "actionset", "-a", "backup", "-b", "nope", "-t", "db/app"],
            &good,
            "blueprint \"nope\" not found in namespace \"kanister\": create it or fix --blueprint",
        ),
        (
            vec!["create", "actionset", "-a", "bogus", "-b", "demo", "-t", "db/app"],
            &good,
            "action \"bogus\" is not in blueprint \"demo\" (it has: backup, restore): fix --action",
        ),
        (
            vec!["create", "actionset", "-a", "restore", "-f", "backup-pend1"],
            &good,
            "--from: actionset backup-pend1 is pending, not complete",
        ),
        (
            vec!["create", "actionset", "-a", "restore", "-f", "backup-gone1"],
            &good,
            "--from: actionset backup-gone1 not found in namespace kanister",
        ),
        (
            vec!["create", "actionset", "-a", "backup", "-b", "demo", "-t", "db/app", "-s", "mysql"],
            &good,
            "--secrets: \"mysql\" is not key=namespace/name",
        ),
        (
            vec!["create", "actionset", "-a", "backup", "-b", "demo", "-t", "db/missing"],
            &good,
            "object statefulset db/missing not found",
        ),
        (
            vec!["create", "actionset", "-a", "backup", "-b", "demo", "-t", "db/app", "-s", "k=db/nosecret"],
            &good,
            "secret k=db/nosecret not found: fix --secrets",
        ),
        (
            vec!["create", "actionset", "-a", "restore", "-b", "demo", "-t", "db/app"],
            &good,
            "input artifact \"note\" required by action \"restore\" is missing",
        ),
        (vec!["get", "actionsets"], &bad, "the coordinator refused the token: set KANCTL_TOKEN or --token-file"),
    ];
    for (args, token_file, expected) in cases {
        let (r, _, _) = kanctl(a, Some(token_file), &args).await;
        let e = r.expect_err(&format!("{args:?} succeeded"));
        let msg = e.to_string();
        assert!(msg.contains(expected), "{args:?}: {msg}");
        assert!(!msg.contains(token), "{args:?} leaked the token: {msg}");
    }
    // No token at all.
    let (r, _, _) = kanctl(a, None, &["get", "actionsets"]).await;
    assert!(matches!(r, Err(Error::Unauthenticated)), "{r:?}");
    server.stop().await;

    // Unreachable: the port is closed now.
    let (r, _, _) = kanctl(a, Some(&good), &["get", "actionsets"]).await;
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains(&format!("cannot reach the coordinator at http://{a}")) && msg.contains("--coordinator"),
        "{msg}"
    );
}

#[tokio::test]
async fn watch_survives_a_restart_of_the_api_server() {
    let (cluster, api) = local();
    let server = Server::start(api.clone(), None, None).await;
    let addr = server.addr;
    let (r, out, _) = kanctl(
        addr,
        None,
        &[
            "create",
            "actionset",
            "-a",
            "backup",
            "-b",
            "demo",
            "-t",
            "db/app",
            "--name",
            "backup-slow1",
            "-o",
            "sleep=4",
        ],
    )
    .await;
    assert_eq!(r.unwrap(), Outcome::Success);
    assert!(out.contains("actionset backup-slow1 created"), "{out}");

    let watcher = tokio::spawn(async move { kanctl(addr, None, &["watch", "backup-slow1"]).await });
    // Let the watch see the running ActionSet, then restart the server under it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.get_actionset("kanister", "backup-slow1").await.unwrap().status.map(|s| s.state)
        != Some(kanister_coordinator::crd::State::Running)
    {
        assert!(std::time::Instant::now() < deadline, "backup-slow1 never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let server = Server::start(api, Some(addr), None).await;

    let (r, out, err) =
        tokio::time::timeout(Duration::from_secs(30), watcher).await.expect("watch did not end").unwrap();
    assert_eq!(r.unwrap(), Outcome::Success, "out: {out}\nerr: {err}");
    assert!(err.contains("backup-slow1: running"), "{err}");
    assert!(err.contains("reconnecting"), "the watch never lost its connection: {err}");
    assert!(out.contains("actionset backup-slow1 complete"), "{out}");

    // Resuming from the final revision sends nothing more; from scratch, the final form.
    let mut client = kanister_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient::connect(
        format!("http://{addr}"),
    )
    .await
    .unwrap();
    let watch = |after: String| kanister_proto::coordinator::v1::WatchActionSetRequest {
        namespace: "kanister".into(),
        name: "backup-slow1".into(),
        after_revision: after,
    };
    let mut all = client.watch_action_set(watch(String::new())).await.unwrap().into_inner();
    let last = all.message().await.unwrap().expect("the current form");
    assert_eq!(last.state, "complete");
    assert!(all.message().await.unwrap().is_none(), "the stream goes on after the final state");
    let mut rest = client.watch_action_set(watch(last.revision.clone())).await.unwrap().into_inner();
    assert!(rest.message().await.unwrap().is_none(), "an unchanged ActionSet was sent again");

    // The final state is the ActionSet's, with its artifact, and a restore --from runs.
    let (r, out, _) = kanctl(addr, None, &["get", "actionsets"]).await;
    r.unwrap();
    let row = out.lines().find(|l| l.starts_with("backup-slow1")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("complete") && row.contains("note"), "{row}");
    let (r, out, err) =
        kanctl(addr, None, &["create", "actionset", "-a", "restore", "-f", "backup-slow1", "--wait"]).await;
    assert_eq!(r.unwrap(), Outcome::Success, "{out}{err}");

    // A failing action ends the wait with exit code 3, a cancelled one with 4.
    let (r, out, err) = kanctl(
        addr,
        None,
        &["create", "actionset", "-a", "backup", "-b", "demo", "-t", "db/app", "-o", "sleep=notanumber", "--wait"],
    )
    .await;
    assert_eq!(r.unwrap(), Outcome::Failed, "{out}{err}");
    assert_eq!(Outcome::Failed.exit_code(), 3);
    let (r, _, _) = kanctl(
        addr,
        None,
        &[
            "create",
            "actionset",
            "-a",
            "backup",
            "-b",
            "demo",
            "-t",
            "db/app",
            "--name",
            "backup-cncl1",
            "-o",
            "sleep=30",
        ],
    )
    .await;
    r.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (r, out, _) = kanctl(addr, None, &["cancel", "backup-cncl1"]).await;
    r.unwrap();
    assert!(out.contains("cancellation requested"), "{out}");
    let (r, out, err) = kanctl(addr, None, &["watch", "backup-cncl1"]).await;
    assert_eq!(r.unwrap(), Outcome::Cancelled, "{out}{err}");
    assert_eq!(Outcome::Cancelled.exit_code(), 4);
    server.stop().await;
}

/// The `(type, reason, message)` rows of the Events section of `kanctl describe`.
fn event_rows(described: &str) -> Vec<(String, String, String)> {
    described
        .lines()
        .skip_while(|l| !l.starts_with("Events:"))
        .skip(2)
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[0].to_string(), cells[1].to_string(), cells[3..].join(" "))
        })
        .collect()
}

#[tokio::test]
async fn describe_shows_the_events_of_that_actionset() {
    let (_cluster, api) = local();
    let server = Server::start(api, None, None).await;
    let addr = server.addr;
    let create = |name: &'static str, sleep: &'static str| async move {
        let option = format!("sleep={sleep}");
        let args = ["create", "actionset", "-a", "backup", "-b", "demo", "-t", "db/app", "--name", name, "-o", &option];
        let (r, out, err) = kanctl(addr, None, &[&args[..], &["--wait"]].concat()).await;
        (r.unwrap(), format!("{out}{err}"))
    };
    let (outcome, out) = create("backup-good1", "0").await;
    assert_eq!(outcome, Outcome::Success, "{out}");
    let (outcome, out) = create("backup-bad01", "notanumber").await;
    assert_eq!(outcome, Outcome::Failed, "{out}");

    let (r, good, _) = kanctl(addr, None, &["describe", "actionset", "backup-good1"]).await;
    r.unwrap();
    let rows = event_rows(&good);
    let reasons: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(reasons, ["StartedAction", "StartedPhase", "EndedPhase", "ActionSetComplete"], "{good}");
    assert!(rows.iter().all(|r| r.0 == "Normal"), "{good}");
    assert_eq!(rows[0].2, "Executing actionset backup-good1", "{good}");
    assert_eq!(rows[1].2, "Executing phase say", "{good}");
    assert!(!good.contains("backup-bad01"), "another ActionSet's events: {good}");

    let (r, bad, _) = kanctl(addr, None, &["describe", "actionset", "backup-bad01"]).await;
    r.unwrap();
    let rows = event_rows(&bad);
    let warnings: Vec<&str> = rows.iter().filter(|r| r.0 == "Warning").map(|r| r.1.as_str()).collect();
    assert_eq!(warnings, ["PhaseFailed", "ActionSetFailed"], "{bad}");
    assert_eq!(rows.first().map(|r| r.1.as_str()), Some("StartedAction"), "{bad}");
    assert!(rows.iter().any(|r| r.1 == "PhaseFailed" && r.2.contains("say")), "{bad}");

    // Over gRPC: GetActionSet carries the events; ListActionSets does not (kept cheap).
    let mut client = kanister_proto::coordinator::v1::coordinator_service_client::CoordinatorServiceClient::connect(
        format!("http://{addr}"),
    )
    .await
    .unwrap();
    let got = client
        .get_action_set(kanister_proto::coordinator::v1::ActionSetRef {
            namespace: "kanister".into(),
            name: "backup-good1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.events.len(), 4);
    assert!(got.events_error.is_empty());
    assert!(got.events.iter().all(|e| e.count == 1 && e.time.ends_with('Z')), "{:?}", got.events);
    let listed = client
        .list_action_sets(kanister_proto::coordinator::v1::ListActionSetsRequest { namespace: "kanister".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.actionsets.iter().all(|a| a.events.is_empty()));
    server.stop().await;
}

/// Makes a CA and a server certificate for 127.0.0.1 with the openssl command; returns the
/// paths of (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca"]]
        .concat());
    run(&[&["req"][..], &ec, &["-keyout", "key.pem", "-out", "req.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"))
}

#[tokio::test]
async fn tls_with_a_token_and_settings_from_a_config_file() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let (_cluster, api) = local();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServeConfig {
        tls: Some((std::fs::read(&cert).unwrap(), Zeroizing::new(std::fs::read(&key).unwrap()))),
        token: Some(Zeroizing::new("tls-token-value".into())),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, api, config, async move {
        let _ = stopped.await;
    }));

    // Everything from the config file: address, CA and token file.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tls-token-value\n").unwrap();
    let config_file = dir.path().join("config.yaml");
    std::fs::write(
        &config_file,
        format!("coordinator: https://{addr}\ncaCert: {}\ntokenFile: {}\n", ca.display(), token_file.display()),
    )
    .unwrap();
    let run = |argv: Vec<String>| async move {
        let cli = Cli::try_parse_from(&argv).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = kanctl::run(cli, None, &mut Io { out: &mut out, err: &mut err, live: false }).await;
        (r, String::from_utf8(out).unwrap())
    };
    let cfg = config_file.display().to_string();
    let (r, out) = run(vec!["kanctl".into(), "--config".into(), cfg.clone(), "get".into(), "actionsets".into()]).await;
    assert_eq!(r.unwrap(), Outcome::Success);
    assert!(out.starts_with("NAME"), "{out}");

    // A flag wins over the file: plain HTTP to the TLS port fails clearly.
    let (r, _) = run(vec![
        "kanctl".into(),
        "--config".into(),
        cfg.clone(),
        "--coordinator".into(),
        format!("http://{addr}"),
        "get".into(),
        "actionsets".into(),
    ])
    .await;
    assert!(r.is_err(), "plain HTTP to a TLS server succeeded");

    // https without a CA names the missing flag.
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "{}\n").unwrap();
    let (r, _) = run(vec![
        "kanctl".into(),
        "--config".into(),
        empty.display().to_string(),
        "--coordinator".into(),
        format!("https://{addr}"),
        "get".into(),
        "actionsets".into(),
    ])
    .await;
    assert!(r.unwrap_err().to_string().contains("--ca-cert is required"));

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// kanctl checks what it can before connecting: a missing --action is reported as such (it was
/// reported as an unreachable coordinator), and a Blueprint file is parsed and validated with no
/// coordinator at all.
#[test]
fn kanctl_checks_arguments_and_files_without_a_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    // A coordinator address where nothing listens.
    let kanctl = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kanctl"))
            .args(args)
            .env("KANCTL_COORDINATOR", "http://127.0.0.1:9")
            .env_remove("KANCTL_TOKEN_FILE")
            .env("HOME", dir.path())
            .output()
            .unwrap()
    };
    let o = kanctl(&["create", "actionset", "--blueprint", "bp", "--namespace", "kanister"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--action is required"), "{err}");
    assert!(!err.contains("127.0.0.1:9"), "it tried the coordinator first: {err}");
    let o = kanctl(&["create", "actionset", "--action", "backup", "--secrets", "nonsense"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--secrets"), "{err}");

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: cr.kanister.io/v1alpha1\nkind: Blueprint\nmetadata: {name: b, namespace: kanister}\nactions:\n  backup:\n    phases:\n    - func: KubeTask\n      name: p\n      args: {image: alpine, command: [echo, hi]}\n",
    )
    .unwrap();
    let o = kanctl(&["validate", "blueprint", "-f", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("is valid"));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: cr.kanister.io/v1alpha1\nkind: Blueprint\nmetadata: {name: b}\nactions:\n  backup:\n    phases:\n    - func: NoSuchFunction\n      name: p\n").unwrap();
    let o = kanctl(&["validate", "blueprint", "-f", bad.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success() && out.contains("NoSuchFunction"), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let piped = dir.path().join("piped.yaml");
    std::fs::write(
        &piped,
        "apiVersion: cr.kanister.io/v1alpha1\nkind: Blueprint\nmetadata: {name: b, namespace: kanister}\nactions:\n  backup:\n    phases:\n    - func: KubeTask\n      name: dump\n      args: {image: tools, command: [sh, -c, 'pg_dumpall | kando location push --profile p --path x -']}\n",
    )
    .unwrap();
    let o = kanctl(&["validate", "blueprint", "-f", piped.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "a warning failed the validation: {err}");
    assert!(err.contains("warning") && err.contains("dump") && err.contains("pipefail"), "{err}");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "actions: [unclosed").unwrap();
    let o = kanctl(&["validate", "blueprint", "-f", broken.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("does not parse"), "{err}");
}

/// Upstream kanctl's flags, long and short, in upstream's places, with upstream's defaults.
#[test]
fn upstream_kanctl_flags_parse_as_upstream() {
    let parse = |args: &str| {
        Cli::try_parse_from(std::iter::once("kanctl").chain(args.split_whitespace()))
            .unwrap_or_else(|e| panic!("{args}: {e}"))
    };
    let create = |args: &str| {
        let cli = parse(args);
        let verbose = cli.verbose;
        let Command::Create(mut c) = cli.command else { panic!("{args}: not create") };
        c.push_down();
        let CreateCommand::Actionset(a) = c.command else { panic!("{args}: not actionset") };
        (a, verbose)
    };
    for args in [
        "create actionset -a backup -b bp -A my-set",
        "create actionset -a backup -b bp --name my-set",
        "--verbose create actionset -a backup -b bp -A my-set",
        "create actionset -a backup -b bp -A my-set --verbose",
    ] {
        let (a, verbose) = create(args);
        assert_eq!(a.name.as_deref(), Some("my-set"), "{args}");
        assert_eq!(verbose, args.contains("--verbose"), "{args}");
    }
    // --dry-run and --skip-validation before the kind (upstream's persistent flags) or after it.
    for args in [
        "create --dry-run --skip-validation actionset -a backup -b bp",
        "create --dry-run actionset --skip-validation -a backup -b bp",
        "create actionset --dry-run --skip-validation -a backup -b bp",
    ] {
        let (a, _) = create(args);
        assert!(a.dry_run && a.skip_validation, "{args}: {a:?}");
    }
    let (a, _) = create("create actionset -a backup -b bp");
    assert!(!a.dry_run && !a.skip_validation);
    let cli = parse("create --dry-run profile s3compliant -a AK -s SK -b bucket");
    let Command::Create(mut c) = cli.command else { panic!() };
    c.push_down();
    let CreateCommand::Profile(mut p) = c.command else { panic!() };
    assert!(p.common_mut().dry_run);

    // validate: --name, --resource-namespace (wins over -n), -f FILE or -, schema only, -v.
    let validate = |args: &str| match parse(args).command {
        Command::Validate(ValidateCommand::Profile(v)) => ("profile", v),
        Command::Validate(ValidateCommand::Blueprint(v)) => ("blueprint", v),
        other => panic!("{args}: {other:?}"),
    };
    for (args, kind, name, ns) in [
        ("validate profile --name p --resource-namespace team", "profile", Some("p"), "team"),
        ("validate profile p -n team", "profile", Some("p"), "team"),
        ("validate profile --name p -n other --resource-namespace team", "profile", Some("p"), "team"),
        ("validate blueprint --name bp --resource-namespace team", "blueprint", Some("bp"), "team"),
        ("validate blueprint bp --namespace team", "blueprint", Some("bp"), "team"),
        ("validate blueprint -f bp.yaml -n team", "blueprint", None, "team"),
    ] {
        let (k, v) = validate(args);
        assert_eq!((k, v.resource_name().as_deref(), v.resource_namespace().as_str()), (kind, name, ns), "{args}");
        assert_eq!(v.function_version, "v0.0.0", "{args}");
        assert!(!v.schema_validation_only, "{args}");
    }
    let (_, v) = validate("validate blueprint -f - --schema-validation-only -v v0.0.0");
    assert_eq!(v.filename.as_deref(), Some(std::path::Path::new("-")));
    assert!(v.schema_validation_only);
    let (_, v) = validate("validate profile --name p --functionVersion v1.0.0-alpha");
    assert_eq!(v.function_version, "v1.0.0-alpha");
    assert!(Cli::try_parse_from(["kanctl", "validate", "profile", "p", "--name", "q"]).is_err(), "two names");

    // create profile: upstream's short flags; --role puts the role in the Secret, as upstream does.
    let cli = parse("create profile gcp -a my-project -s /dev/null -b bucket");
    let Command::Create(c) = cli.command else { panic!() };
    let CreateCommand::Profile(p) = c.command else { panic!() };
    let req = kanctl::profile::request(&p).unwrap();
    assert_eq!(req.credentials.get("project-id").map(Vec::as_slice), Some(&b"my-project"[..]));
    let cli = parse("create profile s3compliant -a AK -s SK -b bucket -R arn:aws:iam::1:role/backup");
    let Command::Create(c) = cli.command else { panic!() };
    let CreateCommand::Profile(p) = c.command else { panic!() };
    let req = kanctl::profile::request(&p).unwrap();
    // As upstream: the role goes in the Secret, and the Profile's credential is the whole Secret.
    assert_eq!(req.credentials.get("role").map(Vec::as_slice), Some(&b"arn:aws:iam::1:role/backup"[..]));
    assert_eq!(req.credentials.get("aws_access_key_id").map(Vec::as_slice), Some(&b"AK"[..]));
    assert_eq!((req.id_field.as_str(), req.secret_field.as_str()), ("", ""));
    let cli =
        parse("create profile s3compliant --access-key AK --secret-key SK --bucket b --role arn:aws:iam::1:role/r");
    let Command::Create(c) = cli.command else { panic!() };
    let CreateCommand::Profile(p) = c.command else { panic!() };
    assert!(kanctl::profile::request(&p).unwrap().credentials.contains_key("role"));
    let cli = parse("create profile s3compliant -a AK -s SK -b bucket");
    let Command::Create(c) = cli.command else { panic!() };
    let CreateCommand::Profile(p) = c.command else { panic!() };
    let req = kanctl::profile::request(&p).unwrap();
    assert!(!req.credentials.contains_key("role"));
    assert_eq!(req.id_field, "aws_access_key_id");
}

/// `-n` defaults to the kubeconfig's current namespace where one is set, else `kanister`; a
/// function version other than upstream's default and a Profile file are checked offline.
#[test]
fn namespace_defaults_to_the_kubeconfig_and_files_validate_offline() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: team\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {}}]\ncontexts: [{name: team, context: {cluster: c, user: u, namespace: from-kubeconfig}}]\n",
    )
    .unwrap();
    let kanctl = |args: &[&str], kubeconfig: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kanctl"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KANCTL_NAMESPACE")
            .env("KANCTL_COORDINATOR", "http://127.0.0.1:9")
            .env("HOME", dir.path())
            .output()
            .unwrap()
    };
    let dry = ["create", "--dry-run", "--skip-validation", "actionset", "-a", "backup", "-b", "bp", "-d", "db/mysql"];
    let o = kanctl(&dry, &kubeconfig);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(yaml(&out)["metadata"]["namespace"], "from-kubeconfig", "{out}");
    let o = kanctl(&dry, &dir.path().join("missing"));
    assert_eq!(yaml(&String::from_utf8_lossy(&o.stdout))["metadata"]["namespace"], "kanister");
    let o = kanctl(&[&dry[..], &["-n", "explicit"]].concat(), &kubeconfig);
    assert_eq!(yaml(&String::from_utf8_lossy(&o.stdout))["metadata"]["namespace"], "explicit");

    let o = kanctl(&["validate", "blueprint", "--name", "bp", "-v", "v9.9.9"], &kubeconfig);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("v9.9.9") && err.contains("v0.0.0"), "{err}");
    assert!(!err.contains("127.0.0.1:9"), "it asked the coordinator: {err}");

    let profile = dir.path().join("profile.yaml");
    std::fs::write(
        &profile,
        "apiVersion: cr.kanister.io/v1alpha1\nkind: Profile\nmetadata: {name: p, namespace: kanister}\n\
         location: {type: s3Compliant, bucket: '', endpoint: 'http://minio:9000'}\n\
         credential: {type: keyPair, keyPair: {idField: aws_access_key_id, secretField: '', secret: {name: s3, namespace: kanister}}}\n",
    )
    .unwrap();
    let o = kanctl(&["validate", "profile", "-f", profile.to_str().unwrap()], &kubeconfig);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("location.bucket") && out.contains("credential.keyPair.secretField"), "{out}");
    let fixed = std::fs::read_to_string(&profile)
        .unwrap()
        .replace("bucket: ''", "bucket: b")
        .replace("secretField: ''", "secretField: k");
    std::fs::write(&profile, fixed).unwrap();
    let o = kanctl(&["validate", "profile", "-f", profile.to_str().unwrap()], &kubeconfig);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    // And from stdin, schema only.
    let bp = "apiVersion: cr.kanister.io/v1alpha1\nkind: Blueprint\nmetadata: {name: b}\nactions:\n  backup:\n    phases:\n    - func: NoSuchFunction\n      name: p\n";
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kanctl"))
        .args(["validate", "blueprint", "-f", "-", "--schema-validation-only"])
        .env("KANCTL_COORDINATOR", "http://127.0.0.1:9")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), bp.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("is valid"),
        "schema only passes an unknown function"
    );
}
