//! The phase engine end to end on the local cluster: commands run as local processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::cluster::{Cluster, ObjectRef};
use kanister_coordinator::crd::{ActionSet, State};
use kanister_coordinator::engine::{Engine, EngineConfig, Outcome};

const WORLD: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: mysql, namespace: db}
spec:
  replicas: 1
  selector: {matchLabels: {app: mysql}}
---
apiVersion: v1
kind: Pod
metadata: {name: mysql-0, namespace: db, labels: {app: mysql}}
spec:
  containers: [{name: mysql, image: mariadb:11}]
---
apiVersion: v1
kind: Secret
metadata: {name: mysql, namespace: db}
stringData: {password: s3cr3t-pw}
"#;

const BLUEPRINT: &str = r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: bp, namespace: kanister}
actions:
  backup:
    outputArtifacts:
      cloud:
        keyValue:
          path: "{{ .Phases.dump.Output.path }}"
          size: "{{ .Phases.check.Output.size }}"
    phases:
    - func: KubeExec
      name: dump
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        pod: "{{ index .StatefulSet.Pods 0 }}"
        container: mysql
        command:
        - sh
        - -c
        - |
          echo dumping
          echo "some warning" >&2
          echo '###Phase-output###: {"key":"path","value":"/backups/{{ .StatefulSet.Name }}.sql"}'
    - func: KubeTask
      name: check
      args:
        image: alpine:3
        namespace: db
        command:
        - sh
        - -c
        - |
          echo "checking {{ .Phases.dump.Output.path }}"
          printf '###Phase-'
          printf 'output###: {"key":"size","value":"42"}\n'
    deferPhase:
      func: KubeTask
      name: cleanup
      args:
        image: alpine:3
        command: [sh, -c, "echo '###Phase-output###: {\"key\":\"cleaned\",\"value\":\"yes\"}'"]
  restore:
    inputArtifactNames: [cloud]
    phases:
    - func: ScaleWorkload
      name: stop
      args: {replicas: 0}
    - func: KubeExec
      name: load
      args:
        namespace: db
        pod: mysql-0
        command: [sh, -c, "echo '###Phase-output###: {\"key\":\"restored\",\"value\":\"{{ .ArtifactsIn.cloud.KeyValue.path }}\"}'"]
    - func: ScaleWorkload
      name: start
      args: {replicas: "{{ .Phases.stop.Output.originalReplicaCount }}"}
  fail:
    phases:
    - func: KubeExec
      name: first
      args: {namespace: db, pod: mysql-0, command: [sh, -c, "echo first"]}
    - func: KubeExec
      name: broken
      objects:
        db: {kind: Secret, name: mysql, namespace: db}
      args:
        namespace: db
        pod: mysql-0
        command:
        - sh
        - -c
        - |
          echo "connecting with {{ index .Phases.broken.Secrets.db.Data "password" | toString }}"
          echo "ERROR 1045: access denied" >&2
          exit 3
    - func: KubeExec
      name: never
      args: {namespace: db, pod: mysql-0, command: [sh, -c, "echo never"]}
    deferPhase:
      func: KubeExec
      name: deferred
      args: {namespace: db, pod: mysql-0, command: [sh, -c, "echo deferred"]}
  slow:
    phases:
    - func: KubeExec
      name: quick
      args: {namespace: db, pod: mysql-0, command: [sh, -c, "echo '###Phase-output###: {\"key\":\"k\",\"value\":\"v1\"}'"]}
    - func: KubeTask
      name: sleepy
      timeout: "{{PHASE_TIMEOUT}}"
      args: {image: alpine:3, namespace: db, command: [sh, -c, "echo started; sleep 30"]}
    - func: KubeExec
      name: after
      args: {namespace: db, pod: mysql-0, command: [sh, -c, "echo '###Phase-output###: {\"key\":\"got\",\"value\":\"{{ .Phases.quick.Output.k }}\"}'"]}
    deferPhase:
      func: KubeTask
      name: cleanupSlow
      args: {image: alpine:3, namespace: db, command: [sh, -c, "echo cleanup"]}
  ops:
    phases:
    - func: KubeOps
      name: create
      args:
        operation: create
        namespace: db
        spec: |
          apiVersion: v1
          kind: ConfigMap
          metadata: {name: marker}
          data: {ready: "yes"}
    - func: WaitV2
      name: waitReady
      args:
        timeout: 5s
        conditions:
          anyOf:
          - objectReference: {apiVersion: v1, resource: configmaps, name: "{{ .Phases.create.Output.name }}", namespace: db}
            condition: '{{ if eq .data.ready "yes" }}true{{ end }}'
    - func: Wait
      name: waitV1
      args:
        timeout: 5s
        conditions:
          allOf:
          - objectReference: {apiVersion: v1, resource: configmaps, name: marker, namespace: db}
            condition: '{{ if eq "{$.data.ready}" "yes" }}true{{ end }}'
    - func: KubeOps
      name: remove
      args:
        operation: delete
        objectReference: {apiVersion: v1, resource: configmaps, name: marker, namespace: db}
"#;

fn actionset(name: &str, action: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: cr.kanister.io/v1alpha1
kind: ActionSet
metadata: {{name: {name}, namespace: kanister}}
spec:
  {extra}
  actions:
  - name: {action}
    blueprint: bp
    object: {{kind: StatefulSet, name: mysql, namespace: db}}
    secrets:
      db: {{kind: Secret, name: mysql, namespace: db}}
"#
    )
}

fn config() -> EngineConfig {
    EngineConfig {
        watch_interval: Duration::from_millis(50),
        poll_interval: Duration::from_millis(50),
        ready_timeout: Duration::from_secs(5),
        ..EngineConfig::default()
    }
}

fn cluster_with(phase_timeout: &str) -> Arc<LocalCluster> {
    let c = LocalCluster::new();
    c.load_yaml(WORLD, "world").unwrap();
    c.load_yaml(&BLUEPRINT.replace("{{PHASE_TIMEOUT}}", phase_timeout), "bp").unwrap();
    Arc::new(c)
}

async fn run_to_end(engine: &Engine<LocalCluster>, name: &str) -> ActionSet {
    let outcome = engine.reconcile("kanister", name).await.unwrap();
    assert_eq!(outcome, Outcome::Started);
    tokio::time::timeout(Duration::from_secs(20), engine.wait("kanister", name)).await.expect("run ends");
    engine.cluster().get_actionset("kanister", name).await.unwrap()
}

/// Waits until the named phase of the first action is running.
async fn until_running(cluster: &LocalCluster, name: &str, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = cluster.get_actionset("kanister", name).await.unwrap();
        let running = a
            .status
            .as_ref()
            .and_then(|s| s.actions.first())
            .and_then(|a| a.phases.iter().find(|p| p.name == phase))
            .is_some_and(|p| p.state == State::Running);
        if running {
            // Give the task pod time to start its process.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        assert!(Instant::now() < deadline, "phase {phase} never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn output<'a>(a: &'a ActionSet, phase: &str, key: &str) -> &'a str {
    let action = &a.status.as_ref().unwrap().actions[0];
    let p = action.phases.iter().chain(action.defer_phase.iter()).find(|p| p.name == phase).unwrap();
    p.output.get(key).and_then(|v| v.as_str()).unwrap_or_default()
}

fn error_message(a: &ActionSet) -> String {
    a.status.as_ref().unwrap().error.as_ref().map(|e| e.message.clone()).unwrap_or_default()
}

#[tokio::test]
async fn backup_passes_outputs_between_phases_and_renders_artifacts_then_restore_uses_them() {
    let cluster = cluster_with("1h");
    cluster.load_yaml(&actionset("backup-1", "backup", ""), "as").unwrap();
    let engine = Engine::new(cluster.clone(), config());
    let a = run_to_end(&engine, "backup-1").await;
    let status = a.status.as_ref().unwrap();
    assert_eq!(status.state, State::Complete, "{:?}", status.error);
    assert_eq!(output(&a, "dump", "path"), "/backups/mysql.sql");
    assert_eq!(output(&a, "check", "size"), "42", "marker split across printf calls");
    assert_eq!(output(&a, "cleanup", "cleaned"), "yes");
    let artifact = &status.actions[0].artifacts["cloud"];
    assert_eq!(artifact.key_value["path"], "/backups/mysql.sql");
    assert_eq!(artifact.key_value["size"], "42");
    let progress = status.progress.as_ref().unwrap();
    assert_eq!(progress.percent_completed, "100");
    assert!(progress.running_phase.is_empty());
    assert!(progress.last_transition_time.is_some());
    assert!(status.actions[0].phases.iter().all(|p| p.state == State::Complete));
    // The exec ran in the pod's container; the task pods recorded their image and were deleted.
    assert_eq!(cluster.execs()[0].pod, "mysql-0");
    assert_eq!(cluster.execs()[0].container, "mysql");
    let pods = cluster.pods();
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| p.spec.containers[0].image == "alpine:3"));
    assert_eq!(pods[0].spec.labels["kanister.io/actionset"], "backup-1");
    // Owned by the ActionSet only in its own namespace: Kubernetes has no cross-namespace owners.
    for p in &pods {
        if p.spec.namespace == "kanister" {
            assert!(p.spec.owner.as_ref().is_some_and(|o| o.kind == "ActionSet" && !o.uid.is_empty()));
        } else {
            assert!(p.spec.owner.is_none(), "a pod in {} is owned across namespaces", p.spec.namespace);
        }
    }
    assert!(cluster.live_pods().is_empty());
    let reasons: Vec<String> = cluster.events().into_iter().map(|e| e.reason).collect();
    assert_eq!(reasons.first().map(String::as_str), Some("StartedAction"));
    assert_eq!(reasons.iter().filter(|r| *r == "EndedPhase").count(), 3);
    assert_eq!(reasons.last().map(String::as_str), Some("ActionSetComplete"));

    // Restore, fed the backup's artifact as kanctl's --from does.
    let mut restore = actionset("restore-1", "restore", "");
    restore.push_str("    artifacts:\n      cloud:\n        keyValue:\n          path: /backups/mysql.sql\n");
    cluster.load_yaml(&restore, "as").unwrap();
    let a = run_to_end(&engine, "restore-1").await;
    assert_eq!(a.status.as_ref().unwrap().state, State::Complete, "{}", error_message(&a));
    assert_eq!(output(&a, "load", "restored"), "/backups/mysql.sql");
    assert_eq!(output(&a, "stop", "originalReplicaCount"), "");
    let stop = &a.status.as_ref().unwrap().actions[0].phases[0];
    assert_eq!(stop.output["originalReplicaCount"], serde_json::json!(1));
    let sts = ObjectRef::new("StatefulSet", "db", "mysql");
    assert_eq!(cluster.scales(), vec![(sts.clone(), 0), (sts, 1)]);
}

#[tokio::test]
async fn failing_phase_stops_the_action_runs_the_defer_phase_and_hides_secrets() {
    let cluster = cluster_with("1h");
    cluster.load_yaml(&actionset("fail-1", "fail", ""), "as").unwrap();
    let engine = Engine::new(cluster.clone(), config());
    let a = run_to_end(&engine, "fail-1").await;
    let status = a.status.as_ref().unwrap();
    assert_eq!(status.state, State::Failed);
    let message = error_message(&a);
    assert!(message.contains("phase \"broken\""), "{message}");
    assert!(message.contains("exit code 3"), "{message}");
    assert!(message.contains("ERROR 1045: access denied"), "{message}");
    let states: Vec<State> = status.actions[0].phases.iter().map(|p| p.state).collect();
    assert_eq!(states, [State::Complete, State::Failed, State::Pending]);
    assert_eq!(status.actions[0].defer_phase.as_ref().unwrap().state, State::Complete);
    assert!(cluster.execs().iter().all(|e| !e.command.concat().contains("never")));
    assert!(cluster.execs().iter().any(|e| e.command.concat().contains("deferred")));
    assert!(status.progress.as_ref().unwrap().running_phase.is_empty());
    // The secret was rendered into the command but appears in no status, event or error.
    let everything = serde_json::to_string(&a).unwrap() + &format!("{:?}", cluster.events());
    assert!(!everything.contains("s3cr3t-pw"));
    assert!(cluster.events().iter().any(|e| e.reason == "PhaseFailed" && e.type_ == "Warning"));
}

#[tokio::test]
async fn phase_timeout_fails_the_phase_deletes_its_pod_and_runs_the_defer_phase() {
    let cluster = cluster_with("300ms");
    cluster.load_yaml(&actionset("slow-1", "slow", ""), "as").unwrap();
    let engine = Engine::new(cluster.clone(), config());
    let started = Instant::now();
    let a = run_to_end(&engine, "slow-1").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let message = error_message(&a);
    assert_eq!(a.status.as_ref().unwrap().state, State::Failed);
    assert!(message.contains("phase \"sleepy\"") && message.contains("phase timeout"), "{message}");
    assert_eq!(a.status.as_ref().unwrap().actions[0].defer_phase.as_ref().unwrap().state, State::Complete);
    assert!(cluster.live_pods().is_empty());
}

#[tokio::test]
async fn actionset_timeout_cancels_the_run() {
    let cluster = cluster_with("1h");
    cluster.load_yaml(&actionset("slow-2", "slow", "timeout: 400ms"), "as").unwrap();
    let engine = Engine::new(cluster.clone(), config());
    let a = run_to_end(&engine, "slow-2").await;
    let message = error_message(&a);
    assert!(message.contains("actionset timeout"), "{message}");
    assert_eq!(a.status.as_ref().unwrap().actions[0].defer_phase.as_ref().unwrap().state, State::Complete);
    assert!(cluster.live_pods().is_empty());
}

#[tokio::test]
async fn cancellation_through_the_spec_stops_the_phase_and_still_runs_the_defer_phase() {
    let cluster = cluster_with("1h");
    cluster.load_yaml(&actionset("slow-3", "slow", ""), "as").unwrap();
    let engine = Engine::new(cluster.clone(), config());
    assert_eq!(engine.reconcile("kanister", "slow-3").await.unwrap(), Outcome::Started);
    until_running(&cluster, "slow-3", "sleepy").await;
    assert_eq!(cluster.live_pods().len(), 1);
    let started = Instant::now();
    cluster
        .patch(&ObjectRef::actionset("kanister", "slow-3"), serde_json::json!({"spec": {"cancel": true}}))
        .await
        .unwrap();
    assert_eq!(engine.reconcile("kanister", "slow-3").await.unwrap(), Outcome::Cancelling);
    engine.wait("kanister", "slow-3").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let a = cluster.get_actionset("kanister", "slow-3").await.unwrap();
    let status = a.status.as_ref().unwrap();
    assert_eq!(status.state, State::Failed);
    assert!(error_message(&a).contains("spec.cancel"), "{}", error_message(&a));
    assert_eq!(status.actions[0].phases[2].state, State::Pending);
    assert_eq!(status.actions[0].defer_phase.as_ref().unwrap().state, State::Complete);
    assert!(cluster.live_pods().is_empty());
    assert_eq!(engine.reconcile("kanister", "slow-3").await.unwrap(), Outcome::Finished);
}

#[tokio::test]
async fn deleting_the_actionset_cancels_its_run() {
    let cluster = cluster_with("1h");
    cluster.load_yaml(&actionset("slow-4", "slow", ""), "as").unwrap();
    let engine = Engine::new(cluster.clone(), config());
    engine.reconcile("kanister", "slow-4").await.unwrap();
    until_running(&cluster, "slow-4", "sleepy").await;
    cluster.delete(&ObjectRef::actionset("kanister", "slow-4")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), engine.wait("kanister", "slow-4")).await.expect("run stops");
    assert!(cluster.live_pods().is_empty());
    assert!(!engine.is_running("kanister", "slow-4"));
}

#[tokio::test]
async fn restart_mid_phase_fails_the_interrupted_phase_with_a_reason_and_runs_the_defer_phase() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    {
        let cluster = Arc::new(LocalCluster::with_state_file(&state).unwrap());
        cluster.load_yaml(WORLD, "world").unwrap();
        cluster.load_yaml(&BLUEPRINT.replace("{{PHASE_TIMEOUT}}", "1h"), "bp").unwrap();
        cluster.load_yaml(&actionset("slow-5", "slow", ""), "as").unwrap();
        let engine = Engine::new(cluster.clone(), config());
        engine.reconcile("kanister", "slow-5").await.unwrap();
        until_running(&cluster, "slow-5", "sleepy").await;
        engine.shutdown();
    }
    let cluster = Arc::new(LocalCluster::with_state_file(&state).unwrap());
    let before = cluster.get_actionset("kanister", "slow-5").await.unwrap();
    assert_eq!(before.status.as_ref().unwrap().state, State::Running);
    let engine = Engine::new(cluster.clone(), config());
    assert_eq!(engine.recover("").await.unwrap(), 1);
    tokio::time::timeout(Duration::from_secs(10), engine.wait("kanister", "slow-5")).await.unwrap();
    let a = cluster.get_actionset("kanister", "slow-5").await.unwrap();
    let status = a.status.as_ref().unwrap();
    assert_eq!(status.state, State::Failed);
    assert!(error_message(&a).contains("interrupted"), "{}", error_message(&a));
    let states: Vec<State> = status.actions[0].phases.iter().map(|p| p.state).collect();
    assert_eq!(states, [State::Complete, State::Failed, State::Pending]);
    assert_eq!(status.actions[0].defer_phase.as_ref().unwrap().state, State::Complete);
}

#[tokio::test]
async fn restart_between_phases_resumes_with_the_outputs_of_completed_phases() {
    let cluster = cluster_with("1h");
    // What a coordinator that stopped after "quick" and "sleepy" completed leaves behind.
    let mut yaml = actionset("slow-6", "slow", "");
    yaml.push_str(
        r#"status:
  state: running
  actions:
  - name: slow
    blueprint: bp
    object: {kind: StatefulSet, name: mysql, namespace: db}
    phases:
    - {name: quick, state: complete, output: {k: from-before}}
    - {name: sleepy, state: complete}
    - {name: after, state: pending}
    deferPhase: {name: cleanupSlow, state: pending}
"#,
    );
    cluster.load_yaml(&yaml, "as").unwrap();
    let engine = Engine::new(cluster.clone(), config());
    assert_eq!(engine.recover("kanister").await.unwrap(), 1);
    engine.wait("kanister", "slow-6").await;
    let a = cluster.get_actionset("kanister", "slow-6").await.unwrap();
    assert_eq!(a.status.as_ref().unwrap().state, State::Complete, "{}", error_message(&a));
    assert_eq!(output(&a, "after", "got"), "from-before");
    // Completed phases were not run again.
    assert!(cluster.pods().iter().all(|p| !p.spec.containers[0].command.concat().contains("sleep 30")));
}

#[tokio::test]
async fn status_conflicts_are_retried_not_lost() {
    let cluster = cluster_with("1h");
    cluster.load_yaml(&actionset("backup-2", "backup", ""), "as").unwrap();
    cluster.inject_status_conflicts(3);
    let engine = Engine::new(cluster.clone(), config());
    let a = run_to_end(&engine, "backup-2").await;
    assert_eq!(a.status.as_ref().unwrap().state, State::Complete);
    assert_eq!(a.status.as_ref().unwrap().actions[0].artifacts["cloud"].key_value["size"], "42");
}

/// The final status write meets an API server that is briefly unreachable: it is retried, so
/// the ActionSet does not stay `running` after its run ended (before, the error was logged and
/// the state never written).
#[tokio::test]
async fn a_final_status_write_that_fails_is_retried() {
    let cluster = cluster_with("1h");
    cluster.load_yaml(&actionset("backup-3", "backup", ""), "as").unwrap();
    cluster.inject_final_status_failures(2);
    let engine = Engine::new(cluster.clone(), config());
    let a = run_to_end(&engine, "backup-3").await;
    assert_eq!(a.status.as_ref().unwrap().state, State::Complete);
}

#[tokio::test]
async fn kube_ops_and_waits() {
    let cluster = cluster_with("1h");
    cluster.load_yaml(&actionset("ops-1", "ops", ""), "as").unwrap();
    let engine = Engine::new(cluster.clone(), config());
    let a = run_to_end(&engine, "ops-1").await;
    assert_eq!(a.status.as_ref().unwrap().state, State::Complete, "{}", error_message(&a));
    assert_eq!(output(&a, "create", "name"), "marker");
    assert_eq!(output(&a, "create", "namespace"), "db");
    assert!(cluster.get(&ObjectRef::new("ConfigMap", "db", "marker")).await.is_err(), "deleted by the last phase");
}

#[tokio::test]
async fn unknown_blueprint_action_fails_at_initialisation() {
    let cluster = cluster_with("1h");
    cluster.load_yaml(&actionset("bad-1", "nosuch", ""), "as").unwrap();
    let engine = Engine::new(cluster.clone(), config());
    assert_eq!(engine.reconcile("kanister", "bad-1").await.unwrap(), Outcome::Rejected);
    let a = cluster.get_actionset("kanister", "bad-1").await.unwrap();
    assert_eq!(a.status.as_ref().unwrap().state, State::Failed);
    assert!(error_message(&a).contains("action \"nosuch\" not found in blueprint \"bp\""), "{}", error_message(&a));
}

#[tokio::test]
async fn actions_of_one_actionset_run_concurrently() {
    let cluster = cluster_with("1h");
    cluster
        .load_yaml(
            r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: par, namespace: kanister}
actions:
  a:
    phases:
    - {func: KubeExec, name: pa, args: {namespace: db, pod: mysql-0, command: [sleep, "1"]}}
  b:
    phases:
    - {func: KubeExec, name: pb, args: {namespace: db, pod: mysql-0, command: [sleep, "1"]}}
---
apiVersion: cr.kanister.io/v1alpha1
kind: ActionSet
metadata: {name: par-1, namespace: kanister}
spec:
  actions:
  - {name: a, blueprint: par, object: {kind: Namespace, name: db}}
  - {name: b, blueprint: par, object: {kind: Namespace, name: db}}
"#,
            "par",
        )
        .unwrap();
    let engine = Engine::new(cluster.clone(), config());
    let started = Instant::now();
    let a = run_to_end(&engine, "par-1").await;
    assert_eq!(a.status.as_ref().unwrap().state, State::Complete, "{}", error_message(&a));
    assert!(started.elapsed() < Duration::from_millis(1900), "took {:?}", started.elapsed());
    assert_eq!(a.status.as_ref().unwrap().progress.as_ref().unwrap().percent_completed, "100");
}

/// Timeouts a Go duration cannot hold (`99999999999999999h` once panicked inside the duration
/// parser, outside the run's guard, and left the ActionSet `running` for good, also after a
/// restart) fail the ActionSet with the reason; the longest valid one runs normally.
#[tokio::test]
async fn overflowing_timeouts_fail_the_actionset_instead_of_wedging_it() {
    for (n, (phase_timeout, spec)) in
        [("99999999999999999h", ""), ("1h", "timeout: 99999999999999999h"), ("-5s", ""), ("1h", "timeout: 1.5.5h")]
            .into_iter()
            .enumerate()
    {
        let cluster = cluster_with(phase_timeout);
        let name = format!("wedge-{n}");
        cluster.load_yaml(&actionset(&name, "slow", spec), "as").unwrap();
        let engine = Engine::new(cluster.clone(), config());
        let a = run_to_end(&engine, &name).await;
        assert_eq!(a.status.as_ref().unwrap().state, State::Failed, "{phase_timeout} / {spec}");
        let message = error_message(&a);
        assert!(message.contains("timeout"), "{phase_timeout} / {spec}: {message}");
        // A restart finds it finished: nothing to recover, nothing panics.
        let again = Engine::new(cluster.clone(), config());
        assert_eq!(again.reconcile("kanister", &name).await.unwrap(), Outcome::Finished);
    }
    // The longest Go duration is a valid timeout.
    let cluster = cluster_with("2562047h47m16.854775807s");
    cluster.load_yaml(&actionset("longest", "backup", "timeout: 2562047h47m16.854775807s"), "as").unwrap();
    let engine = Engine::new(cluster.clone(), config());
    let a = run_to_end(&engine, "longest").await;
    assert_eq!(a.status.as_ref().unwrap().state, State::Complete, "{}", error_message(&a));
}

/// A Profile's `storeOptions` take only the store client's network settings, with values the
/// agent can parse: anything else fails the ActionSet with the option named, before any phase
/// runs, and a credential never goes there.
#[tokio::test]
async fn profile_store_options_are_checked_before_any_phase_runs() {
    let cases = [
        ("aws_secret_access_key: hunter2", "storeOptions has \"aws_secret_access_key\"; it takes only connect_timeout"),
        ("retry_timeout: soon", "storeOptions retry_timeout is \"soon\"; it must be a duration like 30s or 2m"),
        ("max_retries: many", "storeOptions max_retries is \"many\"; it must be a count like 4"),
    ];
    for (i, (option, expected)) in cases.iter().enumerate() {
        let cluster = cluster_with("1h");
        let profile = format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: creds, namespace: kanister}}
stringData: {{id: AKID, secret: never-shown}}
---
apiVersion: cr.kanister.io/v1alpha1
kind: Profile
metadata: {{name: p, namespace: kanister}}
location: {{type: s3Compliant, bucket: b, endpoint: "http://127.0.0.1:9"}}
credential:
  type: keyPair
  keyPair: {{idField: id, secretField: secret, secret: {{apiVersion: v1, kind: secret, name: creds, namespace: kanister}}}}
storeOptions: {{{option}}}
"#
        );
        cluster.load_yaml(&profile, "profile").unwrap();
        let name = format!("opts-{i}");
        cluster
            .load_yaml(
                &actionset(&name, "backup", "")
                    .replace("    secrets:", "    profile: {name: p, namespace: kanister}\n    secrets:"),
                "as",
            )
            .unwrap();
        let engine = Engine::new(cluster.clone(), config());
        let outcome = engine.reconcile("kanister", &name).await.unwrap();
        if outcome == Outcome::Started {
            tokio::time::timeout(Duration::from_secs(20), engine.wait("kanister", &name)).await.expect("run ends");
        }
        let a = cluster.get_actionset("kanister", &name).await.unwrap();
        let status = a.status.as_ref().unwrap();
        assert_eq!(status.state, State::Failed, "{option}");
        assert!(error_message(&a).contains(expected), "{option}: {}", error_message(&a));
        assert!(!serde_json::to_string(&a).unwrap().contains("hunter2"));
        assert!(
            status.actions[0].phases.iter().all(|p| p.state != State::Complete),
            "no phase may run with a bad Profile: {status:?}"
        );
    }
}
