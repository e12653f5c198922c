//! The coordinator against the real API server of the test cluster (tests/cluster.sh): the
//! `kanister-coordinator serve` binary, as a host process with the cluster's kubeconfig, runs
//! ActionSets whose phases exec into a Deployment's pod through the API server, run task pods
//! scheduled to the test node and read their logs, and scale the Deployment through the real
//! controller. Each test has a namespace of its own, which the coordinator watches.

use kanister_testkit::cluster::{Namespace, crds, kubectl};
use serde_json::{Value, json};
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

/// Waits until the ActionSet's state is final; its status. `logs` gives the coordinator's log
/// for the failure message.
fn finished(ns: &Namespace, name: &str, logs: impl Fn() -> String, timeout: Duration) -> Value {
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
                logs()
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
    let status = finished(&ns, "backup", || co.log(), Duration::from_secs(120));
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
    let status = finished(&ns, "broken", || co.log(), Duration::from_secs(120));
    assert_eq!(status["state"], "failed", "status: {status:#}");
    let msg = status["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("exit code 3") || msg.contains("exited 3"), "the error names the exit code: {msg}");
    assert!(msg.contains("no space left"), "the error carries the task's stderr: {msg}");
    ns.eventually("task pods deleted", Duration::from_secs(30), || leftover_task_pods(&ns).is_empty().then_some(()));
}

/// The chart as a user installs it (offline rendering, `kubectl apply`), the coordinator running
/// as its Deployment on the test node under the chart's ServiceAccount and Roles. Two changes,
/// for the node: pods are host processes, so the container gets the built binary as its
/// command, and they share the host's network, so the coordinator listens on its pod's address
/// instead of 0.0.0.0.
#[test]
fn the_chart_installs_and_its_roles_run_an_actionset_and_a_missing_rule_is_named() {
    crds();
    let ns = Namespace::new("chart");
    let n = ns.name.clone();
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/kanister");
    let values = json!({"targetNamespaces": [n], "coordinator": {"maintenance": {"interval": "0s"}}});
    let mut items = Vec::new();
    for (path, text) in kanister_testkit::helm::render(&chart, &values, &n) {
        for doc in serde_norway::Deserializer::from_str(&text) {
            let mut v: Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}"));
            if v.is_null() {
                continue;
            }
            if v["kind"] == "Deployment" {
                let c = &mut v["spec"]["template"]["spec"]["containers"][0];
                c["command"] = json!([env!("CARGO_BIN_EXE_kanister-coordinator")]);
                let args: Vec<Value> = c["args"]
                    .as_array()
                    .expect("the coordinator's args")
                    .iter()
                    .map(|a| json!(a.as_str().unwrap_or_default().replace("=0.0.0.0:", "=$(POD_IP):")))
                    .collect();
                c["args"] = json!(args);
            }
            items.push(v);
        }
    }
    let deployment = items.iter().find(|v| v["kind"] == "Deployment").expect("the chart's Deployment");
    let name = deployment["metadata"]["name"].as_str().expect("its name").to_string();
    let target_role = format!("{name}-target");
    assert!(
        items.iter().any(|v| v["kind"] == "Role" && v["metadata"]["name"] == target_role.as_str()),
        "a target Role"
    );
    // The agent token the chart mounts (deploy/README.md: created by the user).
    ns.ok(&["create", "secret", "generic", "kanister-agent-token", "--from-literal=token=chart-test-token"]);
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let out = kubectl(&["apply", "-f", "-"], Some(&list.to_string()));
    assert!(out.status.success(), "applying the chart: {}", String::from_utf8_lossy(&out.stderr));
    // Ready means its readiness probe (GET /readyz on the http port) passed.
    ns.ok(&["rollout", "status", "deployment", &name, "--timeout=90s"]);
    let logs =
        || String::from_utf8_lossy(&ns.kubectl(&["logs", &format!("deployment/{name}")], None).stdout).to_string();

    ns.apply(APP);
    ns.ok(&["rollout", "status", "deployment", "app", "--timeout=60s"]);
    ns.apply(BLUEPRINT);
    ns.apply(&actionset(&ns, "backup", "backup"));
    let status = finished(&ns, "backup", logs, Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "with the chart's Roles: {status:#}\ncoordinator log:\n{}", logs());
    assert_eq!(status["actions"][0]["artifacts"]["result"]["keyValue"]["task"], "saw app-data");

    // Take pods/exec away from the target Role: the next run fails naming what is missing.
    let role: Value = serde_json::from_str(&ns.ok(&["get", "role", &target_role, "-o", "json"])).expect("Role JSON");
    let mut rules = role["rules"].as_array().expect("rules").clone();
    for r in &mut rules {
        let res: Vec<Value> =
            r["resources"].as_array().cloned().unwrap_or_default().into_iter().filter(|x| x != "pods/exec").collect();
        r["resources"] = json!(res);
    }
    rules.retain(|r| !r["resources"].as_array().is_some_and(|a| a.is_empty()));
    let patch = json!({"rules": rules}).to_string();
    ns.ok(&["patch", "role", &target_role, "--type=merge", "-p", &patch]);
    let sa = format!("--as=system:serviceaccount:{n}:{name}");
    let denied = ns.kubectl(&["auth", "can-i", "create", "pods", "--subresource=exec", &sa], None);
    assert!(
        !denied.status.success(),
        "the ServiceAccount still may exec; Roles: {}",
        ns.ok(&["get", "roles", "-o", "yaml"])
    );
    ns.apply(&actionset(&ns, "noexec", "backup"));
    let status = finished(&ns, "noexec", logs, Duration::from_secs(120));
    assert_eq!(status["state"], "failed", "without pods/exec: {status:#}");
    let msg = status["error"]["message"].as_str().unwrap_or_default();
    // The websocket upgrade of an exec is authorized as `get` first (then `create`).
    for word in ["cannot get resource \"pods/exec\"", n.as_str(), "targetNamespaces"] {
        assert!(msg.contains(word), "the error names the missing permission ({word}): {msg}");
    }
    let events = ns.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=noexec",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("pods/exec"), "an event names the missing permission: {events}");
}
