//! The coordinator against the real API server of the test cluster (tests/cluster.sh): the
//! `kanister-coordinator serve` binary, as a host process with the cluster's kubeconfig, runs
//! ActionSets whose phases exec into a Deployment's pod through the API server, run task pods
//! scheduled to the test node and read their logs, and scale the Deployment through the real
//! controller. Each test has a namespace of its own, which the coordinator watches.

use kanister_testkit::cluster::{Namespace, crds};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `kanister-coordinator serve` watching one namespace; killed on drop. Its log is in a file
/// that failures print.
struct Coordinator {
    child: Child,
    log: std::path::PathBuf,
}

impl Coordinator {
    fn start(ns: &Namespace) -> Coordinator {
        let dir = std::env::temp_dir().join(format!("kanister-real-cluster-{}", ns.name));
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join("coordinator.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let child = Command::new(env!("CARGO_BIN_EXE_kanister-coordinator"))
            .args(["serve", "--namespace", &ns.name, "--api-listen", "off", "--maintenance-interval", "0s"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).expect("log file")))
            .spawn()
            .expect("kanister-coordinator starts");
        Coordinator { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the ActionSet's state is final; its status.
fn finished(ns: &Namespace, name: &str, co: &Coordinator, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let out = ns.kubectl(&["get", "actionset", name, "-o", "json"], None);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).expect("ActionSet JSON");
            let state = v["status"]["state"].as_str().unwrap_or_default().to_string();
            if state == "complete" || state == "failed" {
                return v["status"].clone();
            }
        }
        if start.elapsed() > timeout {
            panic!(
                "ActionSet {name} not finished in {timeout:?}; status: {}\nevents: {}\ncoordinator log:\n{}",
                String::from_utf8_lossy(
                    &ns.kubectl(&["get", "actionset", name, "-o", "jsonpath={.status}"], None).stdout
                ),
                String::from_utf8_lossy(&ns.kubectl(&["get", "events"], None).stdout),
                co.log()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 1
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - {name: main, image: none, command: [sh, -c, "echo app-data > data.txt; exec sleep 600"]}
"#;

const BLUEPRINT: &str = r#"apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: bp}
actions:
  backup:
    outputArtifacts:
      result:
        keyValue:
          data: "{{ .Phases.exec.Output.data }}"
          task: "{{ .Phases.task.Output.task }}"
    phases:
    - func: KubeExec
      name: exec
      args:
        namespace: "{{ .Deployment.Namespace }}"
        pod: "{{ index .Deployment.Pods 0 }}"
        command: [sh, -c, "echo '###Phase-output###: {\"key\":\"data\",\"value\":\"'$(cat data.txt)'\"}'"]
    - func: KubeTask
      name: task
      args:
        namespace: "{{ .Deployment.Namespace }}"
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        command: [sh, -c, "echo working; echo '###Phase-output###: {\"key\":\"task\",\"value\":\"saw {{ .Phases.exec.Output.data }}\"}'"]
    - func: ScaleWorkload
      name: scale
      args: {replicas: 2}
  fail:
    phases:
    - func: KubeTask
      name: broken
      args:
        namespace: "{{ .Deployment.Namespace }}"
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        command: [sh, -c, "echo 'no space left' >&2; exit 3"]
"#;

fn actionset(ns: &Namespace, name: &str, action: &str) -> String {
    format!(
        "apiVersion: cr.kanister.io/v1alpha1\nkind: ActionSet\nmetadata: {{name: {name}}}\nspec:\n  actions:\n  - name: {action}\n    blueprint: bp\n    object: {{kind: Deployment, name: app, namespace: {}}}\n",
        ns.name
    )
}

/// Pods of the namespace other than the Deployment's: task pods left behind.
fn leftover_task_pods(ns: &Namespace) -> Vec<String> {
    ns.ok(&["get", "pods", "-l", "app!=app", "-o", "name"]).lines().map(str::to_string).collect()
}

#[test]
fn an_actionset_execs_runs_a_task_pod_and_scales_through_the_real_api_server() {
    crds();
    let ns = Namespace::new("co");
    ns.apply(APP);
    ns.ok(&["rollout", "status", "deployment", "app", "--timeout=60s"]);
    ns.apply(BLUEPRINT);
    let co = Coordinator::start(&ns);
    ns.apply(&actionset(&ns, "backup", "backup"));
    let status = finished(&ns, "backup", &co, Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "status: {status:#}\ncoordinator log:\n{}", co.log());
    let art = &status["actions"][0]["artifacts"]["result"]["keyValue"];
    assert_eq!(art["data"], "app-data", "KubeExec's output, through the API server: {status:#}");
    assert_eq!(art["task"], "saw app-data", "KubeTask's output, from its pod's log: {status:#}");
    let ready = ns.ok(&["get", "deployment", "app", "-o", "jsonpath={.status.readyReplicas}"]);
    assert_eq!(ready, "2", "ScaleWorkload waited for the Deployment's 2 ready replicas");
    ns.eventually("task pods deleted", Duration::from_secs(30), || leftover_task_pods(&ns).is_empty().then_some(()));
    let events = ns.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=backup",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(!events.is_empty(), "the ActionSet has events");
}

#[test]
fn a_failing_task_pod_fails_the_actionset_with_its_exit_code_and_stderr() {
    crds();
    let ns = Namespace::new("cofail");
    ns.apply(APP);
    ns.ok(&["rollout", "status", "deployment", "app", "--timeout=60s"]);
    ns.apply(BLUEPRINT);
    let co = Coordinator::start(&ns);
    ns.apply(&actionset(&ns, "broken", "fail"));
    let status = finished(&ns, "broken", &co, Duration::from_secs(120));
    assert_eq!(status["state"], "failed", "status: {status:#}");
    let msg = status["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("exit code 3") || msg.contains("exited 3"), "the error names the exit code: {msg}");
    assert!(msg.contains("no space left"), "the error carries the task's stderr: {msg}");
    ns.eventually("task pods deleted", Duration::from_secs(30), || leftover_task_pods(&ns).is_empty().then_some(()));
}
