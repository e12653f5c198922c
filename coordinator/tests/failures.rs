//! A failure is never reported as success: every container of a task pod counts, not only the
//! one whose output the phase reads. Before, a `MultiContainerRun` whose background container
//! failed (upstream's blueprint-v2 restores run the database client there, fed through a pipe
//! by the output container) ended `complete` with nothing restored.

use std::sync::Arc;
use std::time::Duration;

use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::crd::{ActionSet, State};
use kanister_coordinator::engine::Engine;

mod support;
use support::{engine_config, infra_var, run_to_end, unique_name};

fn blueprint(shared: &str) -> String {
    format!(
        r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {{name: mcr, namespace: kanister}}
actions:
  backgroundFails:
    phases:
    - func: MultiContainerRun
      name: run
      args:
        namespace: kanister
        sharedVolumeDir: {shared}
        backgroundImage: alpine
        backgroundCommand: [sh, -c, "echo 'client: connection refused' >&2; exit 3"]
        outputImage: alpine
        outputCommand: [sh, -c, "echo '###Phase-output###: {{\"key\":\"done\",\"value\":\"yes\"}}'"]
    deferPhase:
      func: KubeTask
      name: cleanup
      args: {{namespace: kanister, image: alpine, command: [sh, -c, "echo cleaned"]}}
  initFails:
    phases:
    - func: MultiContainerRun
      name: run
      args:
        namespace: kanister
        sharedVolumeDir: {shared}
        initImage: alpine
        initCommand: [sh, -c, "echo 'cannot prepare' >&2; exit 7"]
        backgroundImage: alpine
        backgroundCommand: [sh, -c, "true"]
        outputImage: alpine
        outputCommand: [sh, -c, "true"]
  killedBackground:
    phases:
    - func: MultiContainerRun
      name: run
      args:
        namespace: kanister
        sharedVolumeDir: {shared}
        backgroundImage: alpine
        backgroundCommand: [sh, -c, "kill -9 $$"]
        outputImage: alpine
        outputCommand: [sh, -c, "true"]
  v2Restore:
    phases:
    - func: MultiContainerRun
      name: restore
      args:
        namespace: kanister
        sharedVolumeDir: {shared}
        initImage: alpine
        initCommand: [sh, -c, "mkdir -p {shared} && rm -f {shared}/pipe && mkfifo {shared}/pipe"]
        backgroundImage: mysql
        backgroundCommand:
        - sh
        - -c
        - exec mariadb --no-defaults -h 127.0.0.1 -P "{{{{ .Options.port }}}}" -u root no_such_database_x9 < {shared}/pipe
        outputImage: kanister-tools
        outputCommand: [sh, -c, "echo 'INSERT INTO t VALUES (1);' > {shared}/pipe"]
  bothFine:
    phases:
    - func: MultiContainerRun
      name: run
      args:
        namespace: kanister
        sharedVolumeDir: {shared}
        backgroundImage: alpine
        backgroundCommand: [sh, -c, "sleep 0.2"]
        outputImage: alpine
        outputCommand: [sh, -c, "echo '###Phase-output###: {{\"key\":\"done\",\"value\":\"yes\"}}'"]
"#
    )
}

fn world() -> (Arc<LocalCluster>, Engine<LocalCluster>, tempfile::TempDir) {
    let shared = tempfile::tempdir().unwrap();
    let c = LocalCluster::new();
    c.load_yaml(&blueprint(&shared.path().display().to_string()), "bp").unwrap();
    let cluster = Arc::new(c);
    let engine = Engine::new(cluster.clone(), engine_config(None));
    (cluster, engine, shared)
}

async fn run(cluster: &LocalCluster, engine: &Engine<LocalCluster>, action: &str) -> ActionSet {
    let name = unique_name("fail", action).to_lowercase();
    cluster.put(serde_json::json!({
        "apiVersion": "cr.kanister.io/v1alpha1",
        "kind": "ActionSet",
        "metadata": {"name": name, "namespace": "kanister"},
        "spec": {"actions": [{
            "name": action,
            "blueprint": "mcr",
            "object": {"kind": "Namespace", "name": "kanister"},
            "options": {"port": infra_var("KANISTER_TEST_MYSQL_PORT")},
        }]}
    }));
    run_to_end(engine, &name, Duration::from_secs(60)).await
}

fn failure(a: &ActionSet) -> String {
    let s = a.status.as_ref().unwrap();
    assert_eq!(s.state, State::Failed, "ended {:?}: {s:?}", s.state);
    s.error.as_ref().map(|e| e.message.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_container_of_a_multi_container_run_counts() {
    let (cluster, engine, _shared) = world();

    let a = run(&cluster, &engine, "backgroundFails").await;
    let m = failure(&a);
    assert!(m.contains("container background") && m.contains("exit code 3"), "{m}");
    assert!(m.contains("connection refused"), "the message lacks the container's last lines: {m}");
    let s = a.status.as_ref().unwrap();
    assert_eq!(s.actions[0].defer_phase.as_ref().unwrap().state, State::Complete, "the defer phase did not run");

    let m = failure(&run(&cluster, &engine, "initFails").await);
    assert!(m.contains("container init") && m.contains("exit code 7") && m.contains("cannot prepare"), "{m}");

    let m = failure(&run(&cluster, &engine, "killedBackground").await);
    assert!(m.contains("container background") && m.contains("was killed by signal 9 (SIGKILL)"), "{m}");

    let ok = run(&cluster, &engine, "bothFine").await;
    assert_eq!(ok.status.as_ref().unwrap().state, State::Complete);
    assert!(cluster.live_pods().is_empty(), "task pods remain: {:?}", cluster.live_pods());
}

/// A blueprint-v2-style restore: the output container feeds the database client in the
/// background container through a pipe in the shared directory; the client (a real MariaDB
/// client against the test server) fails: the ActionSet fails, it does not end `complete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_restore_whose_database_client_fails_is_failed() {
    let (cluster, engine, _shared) = world();
    let m = failure(&run(&cluster, &engine, "v2Restore").await);
    assert!(m.contains("container background"), "{m}");
    assert!(m.contains("no_such_database_x9"), "the client's own error is not in the message: {m}");
}

/// YAML of pods `db/<name>` with one container `db` each (exec targets of a fan-out).
fn db_pods(names: &[&str]) -> String {
    names
        .iter()
        .map(|pod| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: db}}\nspec: {{containers: [{{name: db, image: mariadb}}]}}\n"
            )
        })
        .collect()
}

/// Runs `action` of blueprint `blueprint` on namespace `db` in `cluster` to its end.
async fn run_on_db(cluster: Arc<LocalCluster>, blueprint: &str, action: &str) -> ActionSet {
    let engine = Engine::new(cluster.clone(), engine_config(None));
    let name = unique_name(blueprint, action).to_lowercase();
    cluster.put(serde_json::json!({
        "apiVersion": "cr.kanister.io/v1alpha1",
        "kind": "ActionSet",
        "metadata": {"name": name, "namespace": "kanister"},
        "spec": {"actions": [{"name": action, "blueprint": blueprint, "object": {"kind": "Namespace", "name": "db"}}]}
    }));
    run_to_end(&engine, &name, Duration::from_secs(60)).await
}

/// A fan-out over several pods: every pod that failed is named with how it failed, the phase
/// fails, and the outputs of the pods that succeeded are recorded (and reach the deferPhase).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_names_every_failed_pod_and_keeps_the_outputs_of_the_others() {
    let c = LocalCluster::new();
    c.load_yaml(&db_pods(&["db-0", "db-1", "db-2"]), "world").unwrap();
    c.load_yaml(
        r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: fan, namespace: kanister}
actions:
  dump:
    phases:
    - func: KubeExecAll
      name: dump
      args:
        namespace: db
        pods: db-0 db-1 db-2
        containers: db
        command:
        - sh
        - -c
        - |
          case "$HOSTNAME" in
            db-0) echo '###Phase-output###: {"key":"first","value":"dumped"}' ;;
            db-1) echo 'disk full' >&2; exit 5 ;;
            db-2) kill -TERM $$ ;;
          esac
    deferPhase:
      func: KubeTask
      name: report
      args:
        namespace: kanister
        image: alpine
        command: [sh, -c, "echo '###Phase-output###: {\"key\":\"seen\",\"value\":\"{{ .Phases.dump.Output.first }}\"}'"]
"#,
        "bp",
    )
    .unwrap();
    let a = run_on_db(Arc::new(c), "fan", "dump").await;
    let m = failure(&a);
    assert!(m.contains("2 failed"), "{m}");
    assert!(m.contains("pod db/db-1") && m.contains("exit code 5") && m.contains("disk full"), "{m}");
    assert!(m.contains("pod db/db-2") && m.contains("signal 15 (SIGTERM)"), "{m}");
    assert!(!m.contains("pod db/db-0"), "the pod that succeeded is named as failed: {m}");
    let action = &a.status.as_ref().unwrap().actions[0];
    let dump = &action.phases[0];
    assert_eq!(dump.state, State::Failed);
    assert_eq!(dump.output.get("first").and_then(|v| v.as_str()), Some("dumped"), "{:?}", dump.output);
    let report = action.defer_phase.as_ref().unwrap();
    assert_eq!(report.output.get("seen").and_then(|v| v.as_str()), Some("dumped"), "{report:?}");
}

/// How an injected command fails.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Exit1,
    Killed,
    NeverStarts,
}

impl Fault {
    /// The command, as a YAML flow sequence.
    fn command(self) -> &'static str {
        match self {
            Fault::Exit1 => r#"[sh, -c, "echo 'it broke' >&2; exit 1"]"#,
            Fault::Killed => r#"[sh, -c, "echo 'dying' >&2; kill -9 $$"]"#,
            Fault::NeverStarts => "[/nonexistent/kanister-no-such-program]",
        }
    }

    /// What the message must say about how it ended.
    fn says(self) -> &'static str {
        match self {
            Fault::Exit1 => "failed with exit code 1",
            Fault::Killed => "killed by signal 9 (SIGKILL)",
            Fault::NeverStarts => "kanister-no-such-program",
        }
    }
}

const OK: &str = r#"[sh, -c, "echo '###Phase-output###: {\"key\":\"path\",\"value\":\"/backups/x\"}'"]"#;

/// Every position where a function runs something, with the fault injected there: the phase's
/// arguments and what the failure message must name.
fn positions(fault: Fault) -> Vec<(&'static str, String, &'static str)> {
    let bad = fault.command();
    vec![
        (
            "KubeExec",
            format!("func: KubeExec\n      args: {{namespace: db, pod: db-0, container: db, command: {bad}}}"),
            "pod db/db-0",
        ),
        (
            "KubeExecAll, second pod",
            format!(
                "func: KubeExecAll\n      args: {{namespace: db, pods: db-0 db-1, containers: db, command: [sh, -c, \
                 'if [ \"$HOSTNAME\" = db-1 ]; then exec {}; fi; echo fine']}}",
                match fault {
                    Fault::Exit1 => "sh -c \"exit 1\"",
                    Fault::Killed => "sh -c \"kill -9 \\$\\$\"",
                    Fault::NeverStarts => "/nonexistent/kanister-no-such-program",
                }
            ),
            "pod db/db-1",
        ),
        (
            "KubeTask",
            format!("func: KubeTask\n      args: {{namespace: kanister, image: alpine, command: {bad}}}"),
            "container container",
        ),
        (
            "MultiContainerRun init",
            format!(
                "func: MultiContainerRun\n      args: {{namespace: kanister, initImage: a, initCommand: {bad}, \
                 backgroundImage: a, backgroundCommand: [sh, -c, 'true'], outputImage: a, outputCommand: {OK}}}"
            ),
            "container init",
        ),
        (
            "MultiContainerRun background",
            format!(
                "func: MultiContainerRun\n      args: {{namespace: kanister, backgroundImage: a, backgroundCommand: {bad}, \
                 outputImage: a, outputCommand: {OK}}}"
            ),
            "container background",
        ),
        (
            "MultiContainerRun output",
            format!(
                "func: MultiContainerRun\n      args: {{namespace: kanister, backgroundImage: a, \
                 backgroundCommand: [sh, -c, 'true'], outputImage: a, outputCommand: {bad}}}"
            ),
            "container output",
        ),
    ]
}

/// Failure injection over every function that runs something and every position in it (init,
/// background, output container; each pod of a fan-out): a command that exits 1, one killed by
/// a signal, one that never starts. Each time the ActionSet ends `failed`, the message names
/// the right pod or container and how it ended, the deferPhase runs, and no artifact claims a
/// backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_of_every_function_fails_the_actionset() {
    let world = db_pods(&["db-0", "db-1"]);
    let mut table = Vec::new();
    for fault in [Fault::Exit1, Fault::Killed, Fault::NeverStarts] {
        for (function, phase, names) in positions(fault) {
            let c = LocalCluster::new();
            c.load_yaml(&world, "world").unwrap();
            let blueprint = format!(
                r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {{name: inject, namespace: kanister}}
actions:
  backup:
    outputArtifacts:
      cloud:
        keyValue: {{path: "{{{{ .Phases.run.Output.path }}}}"}}
    phases:
    - name: run
      {phase}
    deferPhase:
      func: KubeTask
      name: cleanup
      args: {{namespace: kanister, image: alpine, command: [sh, -c, "echo cleaned"]}}
"#
            );
            c.load_yaml(&blueprint, "bp").unwrap();
            let a = run_on_db(Arc::new(c), "inject", "backup").await;
            let s = a.status.as_ref().unwrap();
            let message = s.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
            let defer = s.actions[0].defer_phase.as_ref().map(|d| d.state);
            let ok = s.state == State::Failed
                && message.contains(names)
                && message.contains(fault.says())
                && defer == Some(State::Complete)
                && s.actions[0].artifacts.is_empty();
            table.push(format!(
                "{} {function:<30} {fault:?}: {:?}, defer {defer:?}, artifacts {:?}: {message}",
                if ok { "ok  " } else { "FAIL" },
                s.state,
                s.actions[0].artifacts.keys().collect::<Vec<_>>()
            ));
        }
    }
    let report = table.join("\n");
    println!("{report}");
    assert!(!report.contains("FAIL"), "{report}");
}
