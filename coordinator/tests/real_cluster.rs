//! The coordinator against the real API server of the test cluster (tests/cluster.sh): the
//! `kanister-coordinator serve` binary, as a host process with the cluster's kubeconfig, runs
//! ActionSets whose phases exec into a Deployment's pod through the API server, run task pods
//! scheduled to the test node and read their logs, and scale the Deployment through the real
//! controller. Each test has a namespace of its own, which the coordinator watches.

mod support;

use kanister_testkit::cluster::{Namespace, crds, kubectl, register_image};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
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
        Coordinator::start_with(ns, &[])
    }

    fn start_with(ns: &Namespace, extra: &[&str]) -> Coordinator {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("kanister-real-cluster-{}", ns.name));
        std::fs::create_dir_all(&dir).expect("log dir");
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("coordinator-{n}.log"));
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let child = Command::new(env!("CARGO_BIN_EXE_kanister-coordinator"))
            .args(["serve", "--namespace", &ns.name, "--maintenance-interval", "0s"])
            .args(if extra.contains(&"--api-listen") { &[][..] } else { &["--api-listen", "off"][..] })
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
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

    /// kill -9.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
  slow:
    phases:
    - func: KubeTask
      name: wait
      args:
        namespace: "{{ .Deployment.Namespace }}"
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        command: [sh, -c, "echo started; exec sleep 300"]
    deferPhase:
      func: KubeExec
      name: cleanup
      args:
        namespace: "{{ .Deployment.Namespace }}"
        pod: "{{ index .Deployment.Pods 0 }}"
        command: [sh, -c, "echo deferred > deferred.txt"]
  steady:
    outputArtifacts:
      result: {keyValue: {done: "{{ .Phases.work.Output.done }}"}}
    phases:
    - func: KubeTask
      name: work
      args:
        namespace: "{{ .Deployment.Namespace }}"
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        command: [sh, -c, "echo started; sleep 12; echo '###Phase-output###: {\"key\":\"done\",\"value\":\"yes\"}'"]
  fail:
    phases:
    - func: KubeTask
      name: broken
      args:
        namespace: "{{ .Deployment.Namespace }}"
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        command: [sh, -c, "echo 'no space left' >&2; exit 3"]
"#;

/// Held (shared) by every test; the API server restart test holds it alone, so that no other
/// test meets its outage.
static OUTAGE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn no_outage() -> std::sync::RwLockReadGuard<'static, ()> {
    OUTAGE.read().unwrap_or_else(|e| e.into_inner())
}

/// The ActionSet `name` running `action` of `blueprint` on the object `(kind, name, namespace)`,
/// with the Profile `s3-profile` of the object's namespace when `profile`, and `artifacts` (YAML
/// or JSON) as its input artifacts.
fn actionset_yaml(
    name: &str,
    action: &str,
    blueprint: &str,
    (kind, object, ns): (&str, &str, &str),
    profile: bool,
    artifacts: &str,
) -> String {
    let profile = if profile { format!("    profile: {{name: s3-profile, namespace: {ns}}}\n") } else { String::new() };
    format!(
        "apiVersion: cr.kanister.io/v1alpha1\nkind: ActionSet\nmetadata: {{name: {name}}}\nspec:\n  actions:\n  - name: {action}\n    blueprint: {blueprint}\n    object: {{kind: {kind}, name: {object}, namespace: {ns}}}\n{profile}    artifacts: {artifacts}\n"
    )
}

fn actionset(ns: &Namespace, name: &str, action: &str) -> String {
    actionset_yaml(name, action, "bp", ("Deployment", "app", &ns.name), false, "{}")
}

/// Waits until the `slow` action's task pod runs; its name.
fn running_task_pod(ns: &Namespace, co: &Coordinator) -> String {
    let start = Instant::now();
    loop {
        let pods = ns.ok(&[
            "get",
            "pods",
            "-l",
            "kanister.io/actionset",
            "--field-selector=status.phase=Running",
            "-o",
            "name",
        ]);
        if let Some(p) = pods.lines().next() {
            return p.trim_start_matches("pod/").to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no running task pod; coordinator log:\n{}", co.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The file the `slow` action's defer phase writes in the app's pod, if it ran.
fn deferred(ns: &Namespace) -> String {
    let out = ns.kubectl(&["exec", "deploy/app", "--", "sh", "-c", "cat deferred.txt 2>/dev/null || true"], None);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Pods of the namespace other than the Deployment's: task pods left behind.
fn leftover_task_pods(ns: &Namespace) -> Vec<String> {
    ns.ok(&["get", "pods", "-l", "app!=app", "-o", "name"]).lines().map(str::to_string).collect()
}

#[test]
fn an_actionset_execs_runs_a_task_pod_and_scales_through_the_real_api_server() {
    let _cluster = no_outage();
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
    // Real events.k8s.io Events about the ActionSet, from the coordinator.
    let events: Value = serde_json::from_str(&ns.ok(&[
        "get",
        "events.events.k8s.io",
        "--field-selector",
        "regarding.name=backup",
        "-o",
        "json",
    ]))
    .expect("events JSON");
    let reasons: Vec<&str> =
        events["items"].as_array().into_iter().flatten().filter_map(|e| e["reason"].as_str()).collect();
    for want in ["StartedAction", "StartedPhase", "EndedPhase"] {
        assert!(reasons.contains(&want), "event {want} among {reasons:?}");
    }
    assert!(
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| e["reportingController"].as_str().is_some_and(|c| !c.is_empty())),
        "every event names its controller: {events:#}"
    );
    // The status went through the status subresource (the server's managed fields say so).
    let actionset: Value =
        serde_json::from_str(&ns.ok(&["get", "actionset", "backup", "--show-managed-fields", "-o", "json"]))
            .expect("ActionSet JSON");
    let fields = actionset["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    assert!(
        fields.iter().any(|f| f["subresource"] == "status" && f["fieldsV1"]["f:status"].is_object()),
        "a status write through the status subresource: {fields:#?}"
    );
}

#[test]
fn a_failing_task_pod_fails_the_actionset_with_its_exit_code_and_stderr() {
    let _cluster = no_outage();
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

/// The chart installed as a user installs it (offline rendering, secrets created with kubectl,
/// `kubectl apply`), the coordinator running as its Deployment on the test node under the
/// chart's ServiceAccount and Roles, Ready (its readiness probe passed). The node knows the
/// images' entrypoints from the workspace's binaries. One change, for the node: pods share the
/// host's network, so the coordinator listens on its pod's address instead of 0.0.0.0. Returns
/// the Deployment's name.
fn install_chart(release: &Namespace, targets: &[&str], grpc: bool) -> String {
    let coordinator = env!("CARGO_BIN_EXE_kanister-coordinator");
    let agent = support::agent_binary();
    let agent = agent.to_str().expect("utf-8 path");
    register_image("ghcr.io/kanister-rs/kanister-coordinator", &[coordinator]);
    register_image("ghcr.io/kanister-rs/kanister-tools", &[agent]);
    register_image("ghcr.io/kanister-rs/kanister-agent", &[agent]);
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/kanister");
    let values = json!({
        "targetNamespaces": targets,
        "coordinator": {"maintenance": {"interval": "0s"}},
        "service": {"grpc": {"enabled": grpc}},
    });
    let mut items = Vec::new();
    for (path, text) in kanister_testkit::helm::render(&chart, &values, &release.name) {
        for doc in serde_norway::Deserializer::from_str(&text) {
            let mut v: Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}"));
            if v.is_null() {
                continue;
            }
            if v["kind"] == "Deployment" {
                let c = &mut v["spec"]["template"]["spec"]["containers"][0];
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
    let name = items
        .iter()
        .find(|v| v["kind"] == "Deployment")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("the chart's Deployment")
        .to_string();
    // The Secrets deploy/README.md has the user create: the agent token, the API token.
    release.ok(&[
        "create",
        "secret",
        "generic",
        "kanister-agent-token",
        &format!("--from-literal=token={AGENT_TOKEN}"),
    ]);
    if grpc {
        release.ok(&[
            "create",
            "secret",
            "generic",
            "kanister-coordinator-token",
            &format!("--from-literal=token={API_TOKEN}"),
        ]);
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let out = kubectl(&["apply", "-f", "-"], Some(&list.to_string()));
    assert!(out.status.success(), "applying the chart: {}", String::from_utf8_lossy(&out.stderr));
    release.ok(&["rollout", "status", "deployment", &name, "--timeout=90s"]);
    name
}

const AGENT_TOKEN: &str = "agent-token-of-the-real-cluster-tests";
const API_TOKEN: &str = "api-token-of-the-real-cluster-tests";

fn pod_logs(ns: &Namespace, what: &str) -> String {
    let out = ns.kubectl(&["logs", what, "--all-containers"], None);
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn the_chart_installs_and_its_roles_run_an_actionset_and_a_missing_rule_is_named() {
    let _cluster = no_outage();
    crds();
    let ns = Namespace::new("chart");
    let n = ns.name.clone();
    let name = install_chart(&ns, &[&n], false);
    let target_role = format!("{name}-target");
    let logs = || pod_logs(&ns, &format!("deployment/{name}"));

    ns.apply(APP);
    ns.ok(&["rollout", "status", "deployment", "app", "--timeout=60s"]);
    ns.apply(BLUEPRINT);
    ns.apply(&actionset(&ns, "backup", "backup"));
    let status = finished(&ns, "backup", logs, Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "with the chart's Roles: {status:#}\ncoordinator log:\n{}", logs());
    assert_eq!(status["actions"][0]["artifacts"]["result"]["keyValue"]["task"], "saw app-data");

    // What the API server grants the chart's ServiceAccount here is exactly what its Roles say
    // (deploy.rs pins those rules to the ones deploy/README.md documents): nothing more.
    let sa = format!("--as=system:serviceaccount:{n}:{name}");
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let roles: Value = serde_json::from_str(&ns.ok(&["get", "roles", "-o", "json"])).expect("Roles JSON");
    for rule in
        roles["items"].as_array().into_iter().flatten().flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
    {
        for group in rule["apiGroups"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            for res in rule["resources"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                // As can-i names them: resource.group/subresource.
                let (base, sub) = res.split_once('/').map_or((res, String::new()), |(b, s)| (b, format!("/{s}")));
                let key = if group.is_empty() { res.to_string() } else { format!("{base}.{group}{sub}") };
                want.entry(key).or_default().extend(
                    rule["verbs"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string),
                );
            }
        }
    }
    // Less what every ServiceAccount may do (the namespace's `default`, bound to nothing).
    let everyone = can_i_list(&ns, &format!("--as=system:serviceaccount:{n}:default"));
    let mut granted = can_i_list(&ns, &sa);
    granted.retain(|k, v| everyone.get(k) != Some(v));
    assert_eq!(granted, want, "`kubectl auth can-i --list` for the chart's ServiceAccount");

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

/// `kubectl auth can-i --list` as `as_` in the namespace: resource (with its group) -> verbs.
fn can_i_list(ns: &Namespace, as_: &str) -> BTreeMap<String, BTreeSet<String>> {
    let text = ns.ok(&["auth", "can-i", "--list", as_]);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let Some(resource) = line.split_whitespace().next() else { continue };
        if resource.starts_with('[') {
            continue; // a non-resource URL row
        }
        let verbs = line.rsplit_once('[').and_then(|(_, v)| v.strip_suffix(']')).unwrap_or_default();
        out.entry(resource.to_string()).or_default().extend(verbs.split_whitespace().map(str::to_string));
    }
    out
}

/// MariaDB as the StatefulSet `mysql-release` with its Secret and Service. `on_loopback`: it also
/// listens on 127.0.0.1:3306, where the mysql blueprint's defaults look (the pod's own loopback on
/// a real cluster; the host's here, which pods share: only one test's database may have it).
fn mariadb(ns: &Namespace, password: &str, on_loopback: bool) -> String {
    ns.ok(&["create", "secret", "generic", "mysql-release", &format!("--from-literal=mysql-root-password={password}")]);
    ns.ok(&["create", "secret", "generic", "kanister-agent-token", &format!("--from-literal=token={AGENT_TOKEN}")]);
    let n = &ns.name;
    // No provisioner: a PV for the claim of the StatefulSet's pod.
    ns.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {n}-data}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: ''\n  claimRef: {{namespace: {n}, name: data-mysql-release-0}}\n  hostPath: {{path: /nonexistent/{n}}}\n"
    ));
    // The server listens where the blueprint's defaults look (127.0.0.1:3306: the pod's loopback
    // on a real cluster, the host's here) and on the pod's address, for the Service. Not on
    // 0.0.0.0: pods share the host's network, where the node's Service proxy holds 127.1.x.y:3306.
    let script = r#"set -e
if [ ! -d /var/lib/mysql/mysql ]; then
  mariadb-install-db --no-defaults --datadir=/var/lib/mysql --user=root --auth-root-authentication-method=normal --skip-test-db >/dev/null
  init=1
fi
mariadbd --no-defaults --datadir=/var/lib/mysql --socket="/run/mysqld/mysqld.sock" --port=3306 --bind-address="$BIND" --user=root --skip-name-resolve --pid-file=/run/mysqld/mysqld.pid &
pid=$!
for i in $(seq 1 100); do mariadb-admin --no-defaults -S "/run/mysqld/mysqld.sock" -uroot ping >/dev/null 2>&1 && break; sleep 0.2; done
if [ -n "$init" ]; then
  mariadb --no-defaults -S "/run/mysqld/mysqld.sock" -uroot <<SQL
CREATE OR REPLACE USER 'root'@'127.0.0.1' IDENTIFIED BY '$MARIADB_ROOT_PASSWORD';
GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
SQL
fi
wait $pid
"#;
    ns.apply(&format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: mysql-release, labels: {{app.kubernetes.io/instance: mysql-release}}}}
spec:
  replicas: 1
  serviceName: mysql-release
  selector: {{matchLabels: {{app: mysql-release}}}}
  template:
    metadata: {{labels: {{app: mysql-release}}}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: mysql
        image: mariadb:11
        command: [bash, -c, {script}]
        env:
        - {{name: MARIADB_ROOT_PASSWORD, valueFrom: {{secretKeyRef: {{name: mysql-release, key: mysql-root-password}}}}}}
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        - {{name: BIND, value: "{bind}"}}
        ports: [{{name: mysql, containerPort: 3306}}]
        readinessProbe: {{exec: {{command: [sh, -c, 'mariadb-admin --no-defaults -S "/run/mysqld/mysqld.sock" -uroot ping']}}, periodSeconds: 1}}
        volumeMounts: [{{name: data, mountPath: /var/lib/mysql}}, {{name: run, mountPath: /run/mysqld}}]
      volumes: [{{name: run, emptyDir: {{}}}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: ''
      resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: mysql-release}}
spec:
  selector: {{app: mysql-release}}
  ports: [{{name: mysql, port: 3306, targetPort: mysql}}]
"#,
        script = serde_json::to_string(script).expect("json string"),
        bind = if on_loopback { "127.0.0.1,$(POD_IP)" } else { "$(POD_IP)" },
    ));
    ns.ok(&["rollout", "status", "statefulset", "mysql-release", "--timeout=90s"]);
    "mysql-release-0".to_string()
}

/// `mariadb` in the database's container, through `kubectl exec`.
fn sql(ns: &Namespace, query: &str) -> String {
    ns.ok(&[
        "exec",
        "mysql-release-0",
        "-c",
        "mysql",
        "--",
        "sh",
        "-c",
        &format!("mariadb --no-defaults -S \"/run/mysqld/mysqld.sock\" -uroot -N -e \"{query}\""),
    ])
}

/// The seed's story on the real cluster: the chart (API on), MariaDB with the chart's agent
/// sidecar, a Profile on SeaweedFS created by kanctl, the mysql blueprint of deploy/examples,
/// and exactly the seed's commands (namespaces are the test's own).
#[test]
fn the_seeds_story_runs_on_the_real_cluster() {
    let _cluster = no_outage();
    crds();
    let kanister = Namespace::new("kanister");
    let db = Namespace::new("mysql-test");
    let (k, d) = (kanister.name.clone(), db.name.clone());
    let name = install_chart(&kanister, &[&d], true);
    let logs = || pod_logs(&kanister, &format!("deployment/{name}"));
    let password = format!("pw-{}", kanister_testkit::infra::unique("x"));
    mariadb(&db, &password, true);
    // The chart's sidecar patch, applied as deploy/README.md says.
    let patch = kanister.ok(&["get", "configmap", "kanister-agent-sidecar", "-o", "jsonpath={.data.patch\\.yaml}"]);
    let file = std::env::temp_dir().join(format!("{d}-sidecar.yaml"));
    std::fs::write(&file, patch).expect("write the patch");
    db.ok(&["patch", "statefulset", "mysql-release", "--patch-file", file.to_str().expect("utf-8")]);
    db.ok(&["rollout", "status", "statefulset", "mysql-release", "--timeout=120s"]);
    sql(
        &db,
        "CREATE DATABASE shop; USE shop; CREATE TABLE orders (id INT PRIMARY KEY, note TEXT); INSERT INTO orders SELECT seq, MD5(seq) FROM seq_1_to_2000",
    );
    let fingerprint = || sql(&db, "SELECT COUNT(*) FROM shop.orders; CHECKSUM TABLE shop.orders EXTENDED");
    let before = fingerprint();

    // kanctl reaches the coordinator's API at its pod's address (no port-forward on this node).
    let pod_ip = kanister.ok(&[
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=coordinator",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    let token = std::env::temp_dir().join(format!("{k}-token"));
    std::fs::write(&token, API_TOKEN).expect("token file");
    let kanctl_run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kanctl"))
            .args(args)
            .env("KANCTL_COORDINATOR", format!("http://{pod_ip}:7434"))
            .env("KANCTL_TOKEN_FILE", &token)
            .env("AWS_SECRET_ACCESS_KEY", kanister_testkit::infra::var("KANISTER_TEST_S3_SECRET_KEY"))
            .output()
            .expect("kanctl runs")
    };
    let kanctl = |args: &[&str]| {
        let out = kanctl_run(args);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kanctl {} failed: {text}{}\ncoordinator log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            logs()
        );
        text
    };
    let created = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("actionset ").and_then(|r| r.strip_suffix(" created")))
            .expect("actionset ... created")
            .to_string()
    };
    let prefix = kanister_testkit::infra::unique("seed");
    let (bucket, endpoint, access) = (
        kanister_testkit::infra::var("KANISTER_TEST_S3_BUCKET"),
        kanister_testkit::infra::var("KANISTER_TEST_S3_ENDPOINT"),
        kanister_testkit::infra::var("KANISTER_TEST_S3_ACCESS_KEY"),
    );
    let create_profile = [
        "create",
        "profile",
        "s3compliant",
        "--bucket",
        &bucket,
        "--endpoint",
        &endpoint,
        "--region",
        "us-east-1",
        "--prefix",
        &prefix,
        "--access-key",
        &access,
        "--namespace",
        &d,
        "--name",
        "s3-profile",
    ];
    kanctl(&create_profile);
    // Again: refused as a taken Profile name, before anything is written (the coordinator may
    // create Secrets, never update or delete them).
    let version = || db.ok(&["get", "secret", "s3-profile-secret", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let first = version();
    let again = kanctl_run(&create_profile);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains(&format!("profile {d}/s3-profile already exists")), "{err}");
    assert_eq!(version(), first, "the Profile's Secret was left alone");
    let bp = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/mysql-blueprint.yaml");
    let bp = std::fs::read_to_string(bp)
        .expect("the example blueprint")
        .replace("namespace: kanister", &format!("namespace: {k}"));
    kanister.apply(&bp);

    let backup = created(&kanctl(&[
        "create",
        "actionset",
        "--action",
        "backup",
        "--namespace",
        &k,
        "--blueprint",
        "mysql-blueprint",
        "--statefulset",
        &format!("{d}/mysql-release"),
        "--profile",
        &format!("{d}/s3-profile"),
        "--secrets",
        &format!("mysql={d}/mysql-release"),
    ]));
    let status = finished(&kanister, &backup, logs, Duration::from_secs(180));
    assert_eq!(status["state"], "complete", "backup: {status:#}\ncoordinator log:\n{}", logs());
    // `kubectl get actionset`: the seed's columns, filled.
    let table = kanister.ok(&["get", "actionset", &backup]);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    for col in ["PROGRESS", "RUNNING PHASE", "LAST TRANSITION TIME", "STATE"] {
        assert!(header.contains(col), "column {col} in: {table}");
    }
    let row = lines.next().unwrap_or_default();
    assert!(row.contains("100") && row.contains("complete"), "a filled row: {table}");
    // `kanctl snapshots`: the chart's coordinator lists through a task pod of the agent in the
    // Profile's namespace, with the chart's Roles, and ties the snapshot to the ActionSet.
    let listed = kanctl(&["snapshots", "--profile", &format!("{d}/s3-profile")]);
    assert!(listed.contains(&backup) && listed.contains("mysqlBackup"), "kanctl snapshots: {listed}");

    sql(&db, "DROP TABLE shop.orders");
    let restore =
        created(&kanctl(&["create", "actionset", "--action", "restore", "--namespace", &k, "--from", &backup]));
    let status = finished(&kanister, &restore, logs, Duration::from_secs(180));
    assert_eq!(status["state"], "complete", "restore: {status:#}\ncoordinator log:\n{}", logs());
    assert_eq!(fingerprint(), before, "the restored rows match the backed-up ones");

    let delete = created(&kanctl(&["create", "actionset", "--action", "delete", "--namespace", &k, "--from", &backup]));
    let status = finished(&kanister, &delete, logs, Duration::from_secs(180));
    assert_eq!(status["state"], "complete", "delete: {status:#}\ncoordinator log:\n{}", logs());
    let _ = kubectl(&["delete", "pv", &format!("{d}-data"), "--wait=false"], None);
}

/// kill -9 of the coordinator while a task pod runs: the next coordinator fails the ActionSet
/// with the reason (never leaves it `running`), runs the defer phase, and deletes the task pod
/// the killed one left behind.
#[test]
fn a_coordinator_killed_mid_phase_is_followed_by_one_that_fails_the_actionset_and_cleans_up() {
    let _cluster = no_outage();
    crds();
    let ns = Namespace::new("kill");
    ns.apply(APP);
    ns.ok(&["rollout", "status", "deployment", "app", "--timeout=60s"]);
    ns.apply(BLUEPRINT);
    let mut co = Coordinator::start(&ns);
    ns.apply(&actionset(&ns, "slow", "slow"));
    let pod = running_task_pod(&ns, &co);
    co.child.kill().expect("SIGKILL");
    let _ = co.child.wait();
    let first = co.log();
    drop(co);
    assert_eq!(ns.ok(&["get", "actionset", "slow", "-o", "jsonpath={.status.state}"]), "running");

    let co = Coordinator::start(&ns);
    let logs = || format!("{first}\n--- restarted ---\n{}", co.log());
    let status = finished(&ns, "slow", logs, Duration::from_secs(60));
    assert_eq!(status["state"], "failed", "status: {status:#}");
    let msg = status["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("interrupted") && msg.contains("restarted"), "the error says why: {msg}");
    ns.eventually("the defer phase ran", Duration::from_secs(30), || (deferred(&ns) == "deferred").then_some(()));
    ns.eventually("the orphaned task pod deleted", Duration::from_secs(30), || {
        (!ns.ok(&["get", "pods", "-o", "name"]).contains(&pod)).then_some(())
    });
}

/// `kubectl delete actionset` while its task pod runs: the pod is stopped and the defer phase
/// runs (the ActionSet is gone, so no status tells it: the pod and the defer phase's file do).
#[test]
fn deleting_a_running_actionset_stops_its_pod_and_runs_the_defer_phase() {
    let _cluster = no_outage();
    crds();
    let ns = Namespace::new("cancel");
    ns.apply(APP);
    ns.ok(&["rollout", "status", "deployment", "app", "--timeout=60s"]);
    ns.apply(BLUEPRINT);
    let co = Coordinator::start(&ns);
    ns.apply(&actionset(&ns, "slow", "slow"));
    let pod = running_task_pod(&ns, &co);
    ns.ok(&["delete", "actionset", "slow", "--wait=false"]);
    ns.eventually("the defer phase ran", Duration::from_secs(30), || (deferred(&ns) == "deferred").then_some(()));
    ns.eventually("the task pod deleted", Duration::from_secs(30), || {
        (!ns.ok(&["get", "pods", "-o", "name"]).contains(&pod)).then_some(())
    });
    assert!(co.log().contains("ActionSet deleted"), "the coordinator says why it stopped: {}", co.log());
}

/// Upstream's MariaDB blueprint shape, unchanged but for the image name: `KubeTask` pods that
/// reach the database through its Service by the instance label, read the password through the
/// phase's `objects`, and pipe the dump through `kando location push --profile '{{ toJson
/// .Profile }}'`; restore pulls it back into `mysql`; delete runs `kando location delete`.
const UPSTREAM_BLUEPRINT: &str = r#"apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: maria-blueprint}
actions:
  backup:
    outputArtifacts:
      mariaCloudDump:
        keyValue:
          s3path: "{{ .Phases.dumpToObjectStore.Output.s3path }}"
    phases:
    - func: KubeTask
      name: dumpToObjectStore
      objects:
        mariaDBSecret:
          kind: Secret
          name: '{{ index .Object.metadata.labels "app.kubernetes.io/instance" }}'
          namespace: '{{ .StatefulSet.Namespace }}'
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
          root_password="{{ index .Phases.dumpToObjectStore.Secrets.mariaDBSecret.Data "mysql-root-password" | toString }}"
          mysqldump -u root --password=${root_password} -h {{ index .Object.metadata.labels "app.kubernetes.io/instance" }} --single-transaction --all-databases | gzip - | kando location push --profile '{{ toJson .Profile }}' --path ${s3_path} -
          kando output s3path ${s3_path}
  restore:
    inputArtifactNames:
    - mariaCloudDump
    phases:
    - func: KubeTask
      name: restoreFromBlobStore
      objects:
        mariaDBSecret:
          kind: Secret
          name: '{{ index .Object.metadata.labels "app.kubernetes.io/instance" }}'
          namespace: '{{ .StatefulSet.Namespace }}'
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
          s3_path="{{ .ArtifactsIn.mariaCloudDump.KeyValue.s3path }}"
          root_password="{{ index .Phases.restoreFromBlobStore.Secrets.mariaDBSecret.Data "mysql-root-password" | toString }}"
          kando location pull --profile '{{ toJson .Profile }}' --path ${s3_path} - | gunzip | mysql -u root --password=${root_password} -h {{ index .Object.metadata.labels "app.kubernetes.io/instance" }}
  delete:
    inputArtifactNames:
    - mariaCloudDump
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
          s3_path="{{ .ArtifactsIn.mariaCloudDump.KeyValue.s3path }}"
          kando location delete --profile '{{ toJson .Profile }}' --path ${s3_path}
"#;

/// The tools image of upstream blueprints on the test node: a directory holding the agent
/// binary and `kando` (the agent under that name), as the image's PATH has them.
fn register_tools_image(repository: &str) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), Into::into);
    let bin = target.join("test-images/tools/bin");
    std::fs::create_dir_all(&bin).expect("the tools image's directory");
    let agent = support::agent_binary();
    for name in ["kanister-agent", "kando"] {
        let link = bin.join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(agent.as_path()) {
            let tmp = bin.join(format!(".{name}.{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&agent, &tmp).expect("symlink");
            std::fs::rename(&tmp, &link).expect("replace the symlink");
        }
    }
    register_image(repository, &[bin.join("kanister-agent").to_str().expect("utf-8")]);
}

/// Upstream's blueprint, unchanged: task pods on the node reach MariaDB through its Service,
/// `kando` pushes the dump with the credential the coordinator gives the pod through a Secret
/// (never the pod's command line), and the rows come back after a drop.
#[test]
fn upstreams_mariadb_blueprint_backs_up_and_restores_through_task_pods() {
    let _cluster = no_outage();
    crds();
    let db = Namespace::new("maria");
    let d = db.name.clone();
    register_tools_image("ghcr.io/kanisterio/mysql-sidecar");
    let password = format!("pw-{}", kanister_testkit::infra::unique("u"));
    mariadb(&db, &password, false);
    sql(
        &db,
        "CREATE DATABASE shop; USE shop; CREATE TABLE orders (id INT PRIMARY KEY, note TEXT); INSERT INTO orders SELECT seq, MD5(seq) FROM seq_1_to_500",
    );
    let fingerprint = || sql(&db, "SELECT COUNT(*) FROM shop.orders; CHECKSUM TABLE shop.orders EXTENDED");
    let before = fingerprint();
    let prefix = kanister_testkit::infra::unique("upstream");
    let profile = support::s3_profile_yaml(&d, "s3-profile", "s3-creds", &prefix);
    db.apply(&profile);
    db.apply(UPSTREAM_BLUEPRINT);
    let co = Coordinator::start(&db);
    let logs = || co.log();
    let spec = |name: &str, action: &str, kind: &str, object: &str, artifacts: &str| {
        actionset_yaml(name, action, "maria-blueprint", (kind, object, &d), true, artifacts)
    };
    db.apply(&spec("backup", "backup", "StatefulSet", "mysql-release", "{}"));
    let status = finished(&db, "backup", logs, Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "backup: {status:#}\ncoordinator log:\n{}", logs());
    let s3path = status["actions"][0]["artifacts"]["mariaCloudDump"]["keyValue"]["s3path"]
        .as_str()
        .expect("the s3path artifact")
        .to_string();
    assert!(s3path.ends_with("/dump.sql.gz"), "{s3path}");
    // The store's secret key reached the task pod through a Secret, not its command line.
    let secret_key = kanister_testkit::infra::var("KANISTER_TEST_S3_SECRET_KEY");
    let events = db.ok(&["get", "events", "-o", "json"]);
    assert!(!events.contains(&secret_key), "the store's secret key in events");

    sql(&db, "DROP TABLE shop.orders");
    let artifacts = format!("{{mariaCloudDump: {{keyValue: {{s3path: '{s3path}'}}}}}}");
    db.apply(&spec("restore", "restore", "StatefulSet", "mysql-release", &artifacts));
    let status = finished(&db, "restore", logs, Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "restore: {status:#}\ncoordinator log:\n{}", logs());
    assert_eq!(fingerprint(), before, "the restored rows match the backed-up ones");

    db.apply(&spec("delete", "delete", "Namespace", &d, &artifacts));
    let status = finished(&db, "delete", logs, Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "delete: {status:#}\ncoordinator log:\n{}", logs());
    // A second restore finds nothing to pull: the delete removed the dump.
    db.apply(&spec("restore-again", "restore", "StatefulSet", "mysql-release", &artifacts));
    let status = finished(&db, "restore-again", logs, Duration::from_secs(120));
    assert_eq!(status["state"], "failed", "restore after delete: {status:#}");
    let msg = status["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("no snapshot matches") && msg.contains(&s3path), "restore after delete: {msg}");
    assert!(leftover_task_pods_of(&db).is_empty(), "task pods left: {:?}", leftover_task_pods_of(&db));
    let _ = kubectl(&["delete", "pv", &format!("{d}-data"), "--wait=false"], None);
}

/// Task pods (by the coordinator's label) still in the namespace.
fn leftover_task_pods_of(ns: &Namespace) -> Vec<String> {
    ns.ok(&["get", "pods", "-l", "kanister.io/actionset", "-o", "name"]).lines().map(str::to_string).collect()
}

/// A StatefulSet of two pods, each with a claim of its own, bound to PVs this test makes (the
/// test cluster has no provisioner), and an unused claim `restore-pvc` to restore into.
fn two_pod_statefulset(ns: &Namespace) {
    let n = &ns.name;
    for claim in ["data-db-0", "data-db-1", "restore-pvc"] {
        ns.apply(&format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {n}-{claim}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: ''\n  claimRef: {{namespace: {n}, name: {claim}}}\n  hostPath: {{path: /nonexistent/{n}/{claim}}}\n"
        ));
    }
    ns.apply(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: restore-pvc}
spec: {accessModes: [ReadWriteOnce], storageClassName: '', resources: {requests: {storage: 1Gi}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: db, image: none, command: [sh, -c, "exec sleep 600"], volumeMounts: [{name: data, mountPath: /data}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], storageClassName: '', resources: {requests: {storage: 1Gi}}}
"#,
    );
    ns.ok(&["rollout", "status", "statefulset", "db", "--timeout=90s"]);
}

/// Every function family but the sidecar's (the seed's story covers those) in one action, in
/// the order a blueprint would chain them.
const FAMILIES: &str = r####"apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: families}
actions:
  all:
    outputArtifacts:
      seen:
        keyValue:
          prepared: "{{ .Phases.prepare.Output.seen }}"
          shared: "{{ .Phases.mcr.Output.shared }}"
          created: "{{ .Phases.create.Output.name }}"
          restored: "{{ .Phases.check.Output.restored }}"
          backupID: "{{ .Phases.copy.Output.backupID }}"
    phases:
    - func: KubeExecAll
      name: stamp
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        pods: "{{ range .StatefulSet.Pods }}{{ . }} {{ end }}"
        containers: db
        command: [sh, -c, 'echo "$HOSTNAME" > /data/host.txt']
    - func: PrepareData
      name: prepare
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        command:
        - sh
        - -c
        - |
          echo "###Phase-output###: {\"key\":\"seen\",\"value\":\"$(cat /mnt/prepare_data/data-db-0/host.txt),$(cat /mnt/prepare_data/data-db-1/host.txt)\"}"
    - func: MultiContainerRun
      name: mcr
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        sharedVolumeDir: /shared
        initImage: ghcr.io/kanisterio/kanister-tools:0.110.0
        initCommand: [sh, -c, "echo init > /shared/init.txt"]
        backgroundImage: ghcr.io/kanisterio/kanister-tools:0.110.0
        backgroundCommand: [sh, -c, "echo $(cat /shared/init.txt)+background > /shared/bg.txt"]
        outputImage: ghcr.io/kanisterio/kanister-tools:0.110.0
        outputCommand: [sh, -c, "while [ ! -s /shared/bg.txt ]; do sleep 0.1; done; echo \"###Phase-output###: {\\\"key\\\":\\\"shared\\\",\\\"value\\\":\\\"$(cat /shared/bg.txt)\\\"}\""]
    - func: KubeOps
      name: create
      args:
        operation: create
        namespace: "{{ .StatefulSet.Namespace }}"
        spec: |
          apiVersion: v1
          kind: ConfigMap
          metadata: {name: marker}
          data: {ready: "yes"}
    - func: WaitV2
      name: waitReady
      args:
        timeout: 30s
        conditions:
          anyOf:
          - objectReference: {apiVersion: v1, resource: configmaps, name: "{{ .Phases.create.Output.name }}", namespace: "{{ .StatefulSet.Namespace }}"}
            condition: '{{ if eq .data.ready "yes" }}true{{ end }}'
    - func: KubeOps
      name: remove
      args:
        operation: delete
        objectReference: {apiVersion: v1, resource: configmaps, name: marker, namespace: "{{ .StatefulSet.Namespace }}"}
    - func: ScaleWorkload
      name: scaleDown
      args: {replicas: 1}
    - func: CopyVolumeData
      name: copy
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        volume: data-db-1
    - func: RestoreData
      name: restore
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        restorePath: /mnt/restore
        backupTag: "{{ .Phases.copy.Output.backupTag }}"
        volumes: {restore-pvc: /mnt/restore}
    - func: PrepareData
      name: check
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        image: ghcr.io/kanisterio/kanister-tools:0.110.0
        volumes: {restore-pvc: /mnt/r}
        command: [sh, -c, "echo \"###Phase-output###: {\\\"key\\\":\\\"restored\\\",\\\"value\\\":\\\"$(cat /mnt/r/host.txt)\\\"}\""]
    - func: ScaleWorkload
      name: scaleUp
      args: {replicas: 2}
  initFails:
    phases:
    - func: MultiContainerRun
      name: run
      args:
        namespace: "{{ .StatefulSet.Namespace }}"
        initImage: ghcr.io/kanisterio/kanister-tools:0.110.0
        initCommand: [sh, -c, "echo 'cannot prepare' >&2; exit 7"]
        backgroundImage: ghcr.io/kanisterio/kanister-tools:0.110.0
        backgroundCommand: [sh, -c, "true"]
        outputImage: ghcr.io/kanisterio/kanister-tools:0.110.0
        outputCommand: [sh, -c, "true"]
"####;

/// KubeExecAll, PrepareData, MultiContainerRun, KubeOps, WaitV2, ScaleWorkload (StatefulSet,
/// waiting for the real controller), CopyVolumeData and RestoreData into a PVC, chained in one
/// action through the real API server: outputs flow, the restored volume holds the copied
/// file, the created object is gone, every task pod is deleted and each had a valid owner.
#[test]
fn every_function_family_runs_through_the_real_api_server() {
    let _cluster = no_outage();
    crds();
    let ns = Namespace::new("families");
    let n = ns.name.clone();
    register_tools_image("ghcr.io/kanisterio/kanister-tools");
    register_tools_image("ghcr.io/kanister-rs/kanister-tools");
    two_pod_statefulset(&ns);
    ns.apply(&support::s3_profile_yaml(&n, "s3-profile", "s3-creds", &kanister_testkit::infra::unique("families")));
    ns.apply(FAMILIES);
    let co = Coordinator::start(&ns);
    let logs = || co.log();
    // Owners of the task pods while they exist: each must name the ActionSet by its UID. And the
    // memory limit of the agent's container, as the real API server stored the pod.
    let owners = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, String>::new()));
    let limits = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (owners, limits, stop, ns) = (owners.clone(), limits.clone(), stop.clone(), Namespace { name: n.clone() });
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = ns.kubectl(&["get", "pods", "-l", "kanister.io/actionset=all", "-o", "json"], None);
                if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
                    for p in v["items"].as_array().into_iter().flatten() {
                        let name = p["metadata"]["name"].as_str().unwrap_or_default().to_string();
                        let owner = p["metadata"]["ownerReferences"][0]["uid"].as_str().unwrap_or("none").to_string();
                        let memory =
                            p["spec"]["containers"][0]["resources"]["limits"]["memory"].as_str().unwrap_or("none");
                        limits.lock().expect("limits").insert(name.clone(), memory.to_string());
                        owners.lock().expect("owners").insert(name, owner);
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            std::mem::forget(ns); // the test's own Namespace deletes it
        })
    };
    let run = |action: &str| {
        ns.apply(&actionset_yaml(&action.to_lowercase(), action, "families", ("StatefulSet", "db", &n), true, "{}"));
        finished(&ns, &action.to_lowercase(), logs, Duration::from_secs(240))
    };
    // A failed init container: the pod ends before the others start; the ActionSet says which
    // container failed and why (it used to wait forever for a container that never ran).
    let status = run("initFails");
    assert_eq!(status["state"], "failed", "status: {status:#}");
    let msg = status["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("container init") && msg.contains("exit code 7") && msg.contains("cannot prepare"),
        "the error names the init container, its code and its stderr: {msg}"
    );
    let status = run("all");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().expect("the owner watcher");
    assert_eq!(status["state"], "complete", "status: {status:#}\ncoordinator log:\n{}", logs());
    let seen = &status["actions"][0]["artifacts"]["seen"]["keyValue"];
    assert_eq!(seen["prepared"], "db-0,db-1", "PrepareData saw both claims: {seen}");
    assert_eq!(seen["shared"], "init+background", "MultiContainerRun's containers shared a volume: {seen}");
    assert_eq!(seen["created"], "marker", "{seen}");
    assert_eq!(seen["restored"], "db-1", "RestoreData filled the claim from CopyVolumeData's backup: {seen}");
    assert!(!seen["backupID"].as_str().unwrap_or_default().is_empty(), "{seen}");
    assert!(!ns.kubectl(&["get", "configmap", "marker"], None).status.success(), "KubeOps delete left the ConfigMap");
    assert_eq!(ns.ok(&["get", "statefulset", "db", "-o", "jsonpath={.status.readyReplicas}"]), "2");
    let uid = ns.ok(&["get", "actionset", "all", "-o", "jsonpath={.metadata.uid}"]);
    let owners = owners.lock().expect("owners").clone();
    assert!(owners.len() >= 5, "task pods seen: {owners:?}");
    assert!(owners.values().all(|o| *o == uid), "every task pod owned by the ActionSet {uid}: {owners:?}");
    // The pods that run the agent (CopyVolumeData, RestoreData into volumes and its lookup of the
    // latest backup) carry the task memory limit (`--task-memory-limit`, 1Gi by default); the
    // blueprint's own pods do not.
    let limits = limits.lock().expect("limits").clone();
    let agent_pods: Vec<_> = limits
        .iter()
        .filter(|(p, _)| ["copy-vol-data-", "restore-data-", "latest-backup-"].iter().any(|a| p.starts_with(a)))
        .collect();
    assert!(!agent_pods.is_empty(), "no agent task pod seen: {limits:?}");
    assert!(agent_pods.iter().all(|(_, m)| *m == "1Gi"), "agent pods without the memory limit: {limits:?}");
    ns.eventually("the task pods deleted", Duration::from_secs(30), || {
        leftover_task_pods_of(&ns).is_empty().then_some(())
    });
    for claim in ["data-db-0", "data-db-1", "restore-pvc"] {
        let _ = kubectl(&["delete", "pv", &format!("{n}-{claim}"), "--wait=false"], None);
    }
}

/// kill -9 of the API server while a task pod runs, and its restart: the running phase rides
/// out the outage and completes, and the controller's watch comes back (a new ActionSet runs).
#[test]
fn the_controller_rides_out_an_api_server_restart() {
    crds();
    let ns = Namespace::new("outage");
    ns.apply(APP);
    ns.ok(&["rollout", "status", "deployment", "app", "--timeout=60s"]);
    ns.apply(BLUEPRINT);
    // The leader keeps its Lease through the outage (the default 10 s renew deadline would make
    // this test depend on how fast the API server restarts here).
    let co = Coordinator::start_with(&ns, &["--leader-elect-lease-duration=90s", "--leader-elect-renew-deadline=60s"]);
    let logs = || co.log();
    let _alone = OUTAGE.write().unwrap_or_else(|e| e.into_inner());
    ns.apply(&actionset(&ns, "during", "steady"));
    running_task_pod(&ns, &co);
    // The coordinator follows the pod's log by now.
    std::thread::sleep(Duration::from_secs(2));
    let state = std::path::PathBuf::from(kanister_testkit::infra::var("KUBECONFIG"));
    let state = state.parent().expect("the cluster's state directory");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cluster.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("restart-apiserver")
        .env("KANISTER_CLUSTER_DIR", state)
        .output()
        .expect("cluster.sh runs");
    assert!(out.status.success(), "restart-apiserver: {}", String::from_utf8_lossy(&out.stderr));
    let status = finished(&ns, "during", logs, Duration::from_secs(90));
    assert_eq!(status["state"], "complete", "the phase across the outage: {status:#}\ncoordinator log:\n{}", logs());
    assert_eq!(status["actions"][0]["artifacts"]["result"]["keyValue"]["done"], "yes", "{status:#}");
    ns.apply(&actionset(&ns, "after", "backup"));
    let status = finished(&ns, "after", logs, Duration::from_secs(90));
    assert_eq!(status["state"], "complete", "an ActionSet after the outage: {status:#}\ncoordinator log:\n{}", logs());
}

/// Two coordinators on one namespace: one holds the Lease and runs every ActionSet, the other
/// runs nothing; kill -9 of the leader hands the Lease to the other within its duration, and
/// the next ActionSet runs there.
#[test]
fn two_coordinators_elect_one_leader_and_the_other_takes_over() {
    let _cluster = no_outage();
    crds();
    let ns = Namespace::new("leader");
    ns.apply(APP);
    ns.ok(&["rollout", "status", "deployment", "app", "--timeout=60s"]);
    ns.apply(BLUEPRINT);
    let mut coordinators = [Coordinator::start(&ns), Coordinator::start(&ns)];
    let leads = |c: &Coordinator| c.log().contains("became the leader");
    let leader = ns.eventually("a leader", Duration::from_secs(30), || coordinators.iter().position(leads));
    let follower = 1 - leader;
    let logs = |cs: &[Coordinator; 2]| format!("leader:\n{}\nfollower:\n{}", cs[leader].log(), cs[follower].log());
    let holder = ns.ok(&["get", "lease", "kanister-coordinator", "-o", "jsonpath={.spec.holderIdentity}"]);
    assert!(!holder.is_empty(), "the Lease names its holder");

    ns.apply(&actionset(&ns, "first", "backup"));
    let status = finished(&ns, "first", || logs(&coordinators), Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "{status:#}\n{}", logs(&coordinators));
    // The coordinator logs the finish after the status patch and its event: wait for the line.
    let finished_by = |c: &Coordinator| c.log().contains("actionset finished").then_some(());
    ns.eventually("the leader's log of the finish", Duration::from_secs(20), || finished_by(&coordinators[leader]));
    let f = coordinators[follower].log();
    assert!(
        !leads(&coordinators[follower]) && !f.contains("task pod created") && !f.contains("actionset finished"),
        "the follower ran something:\n{f}"
    );

    let start = Instant::now();
    coordinators[leader].kill();
    ns.eventually("the follower takes over", Duration::from_secs(40), || leads(&coordinators[follower]).then_some(()));
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(10), "taken over after {took:?}: before the Lease expired");
    let new_holder = ns.ok(&["get", "lease", "kanister-coordinator", "-o", "jsonpath={.spec.holderIdentity}"]);
    assert_ne!(new_holder, holder, "the Lease changed hands");
    ns.apply(&actionset(&ns, "second", "backup"));
    let status = finished(&ns, "second", || logs(&coordinators), Duration::from_secs(120));
    assert_eq!(status["state"], "complete", "{status:#}\n{}", logs(&coordinators));
    ns.eventually("the new leader's log of the finish", Duration::from_secs(20), || {
        finished_by(&coordinators[follower])
    });
}

/// What `/data` holds in the app's container: type, path, size and checksum of every entry.
fn data_tree(ns: &Namespace) -> String {
    ns.ok(&[
        "exec",
        "deploy/files",
        "-c",
        "app",
        "--",
        "sh",
        "-c",
        "cd /data && find . -mindepth 1 -printf '%y %p %s %l\\n' | sort && find . -type f -exec md5sum {} + | sort",
    ])
}

/// deploy/examples/volume-blueprint.yaml on the real cluster: the chart's agent sidecar, patched
/// into a Deployment with the app's volume mounted in it too (as the example says), is found
/// through the pod's address; BackupData, RestoreData into the pod and DeleteData through it.
#[test]
fn the_volume_blueprint_backs_up_and_restores_a_directory_through_the_sidecar() {
    let _cluster = no_outage();
    crds();
    let kanister = Namespace::new("kanister");
    let app = Namespace::new("files");
    let (k, a) = (kanister.name.clone(), app.name.clone());
    let name = install_chart(&kanister, &[&a], false);
    let logs = || pod_logs(&kanister, &format!("deployment/{name}"));
    app.ok(&["create", "secret", "generic", "kanister-agent-token", &format!("--from-literal=token={AGENT_TOKEN}")]);
    app.apply(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: files}
spec:
  replicas: 1
  selector: {matchLabels: {app: files}}
  template:
    metadata: {labels: {app: files}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: none
        command: [sh, -c, "cd /data && mkdir -p sub && echo one > a.txt && head -c 300000 /dev/urandom > sub/big.bin && ln -sf a.txt link && exec sleep 600"]
        volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
"#,
    );
    let patch = kanister.ok(&["get", "configmap", "kanister-agent-sidecar", "-o", "jsonpath={.data.patch\\.yaml}"]);
    let file = std::env::temp_dir().join(format!("{a}-sidecar.yaml"));
    std::fs::write(&file, patch).expect("write the patch");
    app.ok(&["patch", "deployment", "files", "--patch-file", file.to_str().expect("utf-8")]);
    // The volume to protect, in the sidecar too, at the same path.
    let mount = r#"{"spec":{"template":{"spec":{"containers":[{"name":"kanister-agent","volumeMounts":[{"name":"data","mountPath":"/data"}]}]}}}}"#;
    app.ok(&["patch", "deployment", "files", "-p", mount]);
    app.ok(&["rollout", "status", "deployment", "files", "--timeout=120s"]);
    let before = data_tree(&app);
    assert!(before.contains("sub/big.bin") && before.contains("l ./link"), "{before}");
    app.apply(&support::s3_profile_yaml(&a, "s3-profile", "s3-creds", &kanister_testkit::infra::unique("volume")));
    let bp = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/volume-blueprint.yaml");
    let bp =
        std::fs::read_to_string(bp).expect("the example").replace("namespace: kanister", &format!("namespace: {k}"));
    kanister.apply(&bp);
    let run = |name: &str, action: &str, artifacts: &Value| {
        let object = ("Deployment", "files", a.as_str());
        kanister.apply(&actionset_yaml(name, action, "volume-blueprint", object, true, &artifacts.to_string()));
        let status = finished(&kanister, name, logs, Duration::from_secs(120));
        assert_eq!(status["state"], "complete", "{action}: {status:#}\ncoordinator log:\n{}", logs());
        status
    };
    let status = run("backup", "backup", &json!({}));
    let artifacts = status["actions"][0]["artifacts"].clone();
    assert_eq!(artifacts["volumeBackup"]["keyValue"]["fileCount"], "2", "{artifacts:#}");

    app.ok(&["exec", "deploy/files", "-c", "app", "--", "sh", "-c", "rm -rf /data/* && echo stray > /data/a.txt"]);
    run("restore", "restore", &artifacts);
    assert_eq!(data_tree(&app), before, "the restored tree matches the backed-up one");
    run("delete", "delete", &artifacts);
    // Restoring the deleted backup fails: it is gone from the repository.
    let object = ("Deployment", "files", a.as_str());
    kanister.apply(&actionset_yaml("again", "restore", "volume-blueprint", object, true, &artifacts.to_string()));
    let status = finished(&kanister, "again", logs, Duration::from_secs(120));
    assert_eq!(status["state"], "failed", "a restore of a deleted backup: {status:#}");
    let msg = status["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("no snapshot matches"), "the error says the backup is gone: {msg}");
}

/// VmRSS and VmHWM (peak) of process `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const MEMORY_BLUEPRINT: &str = r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: mem-blueprint}
actions:
  stats:
    phases:
    - func: BackupDataStats
      name: size
      args:
        namespace: "{{ .Namespace.Name }}"
        backupID: "{{ .ArtifactsIn.snap.KeyValue.id }}"
        statsMode: raw-data
  delete:
    phases:
    - func: DeleteData
      name: deleteFromStore
      args:
        namespace: "{{ .Namespace.Name }}"
        backupID: "{{ .ArtifactsIn.snap.KeyValue.id }}"
        reclaimSpace: true
"#;

/// The coordinator does no repository work itself: listing the snapshots of a repository of
/// ~500,000 blobs (`kanctl snapshots`), sizing one (`BackupDataStats`) and deleting it with its
/// space reclaimed (`DeleteData`) run in the agent's task pods, and the coordinator's peak RSS
/// stays within 10 MiB of its RSS at rest. (It loaded the index in its own process before:
/// ~95 bytes per blob, some 45 MiB here.)
#[test]
fn repository_work_on_half_a_million_blobs_leaves_the_coordinators_memory_flat() {
    let _cluster = no_outage();
    crds();
    let ns = Namespace::new("memory");
    let n = ns.name.clone();
    register_tools_image("ghcr.io/kanister-rs/kanister-tools");

    // A repository of many small blobs at a local-disk Profile (pods here are host processes).
    let dir = tempfile::tempdir().expect("a temp dir");
    let repo = dir.path().join("repo");
    let key = hex::encode(rand::random::<[u8; 32]>());
    ns.ok(&["create", "secret", "generic", "kanister-repo-key-local", &format!("--from-literal=key={key}")]);
    ns.ok(&["create", "secret", "generic", "local-creds"]);
    ns.apply(&format!(
        "apiVersion: cr.kanister.io/v1alpha1\nkind: Profile\nmetadata: {{name: local, namespace: {n}}}\n\
         location: {{type: local, path: \"{}\", prefix: repo}}\n\
         credential: {{type: secret, secret: {{apiVersion: v1, kind: secret, name: local-creds, namespace: {n}}}}}\n",
        dir.path().display()
    ));
    let agent = kanister_testkit::agent::Agent::new(support::agent_binary(), format!("file://{}", repo.display()))
        .with_env("KANISTER_REPO_KEY", &key);
    agent.run(&["repo", "init", "--chunk-size", "256B", "--pack-size", "16MiB"]);
    let pushed = agent.push(&["--tag", "kind=many-blobs"], kanister_testkit::data::MixedStream::new(7, 160 << 20));
    let (id, chunks) = (pushed["snapshot_id"].as_str().expect("an id").to_string(), pushed["chunks"].as_u64().unwrap());
    assert!(chunks >= 450_000, "the repository holds only {chunks} blobs");
    ns.apply(MEMORY_BLUEPRINT);

    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let api = format!("127.0.0.1:{port}");
    let co = Coordinator::start_with(&ns, &["--api-listen", &api, "--insecure-no-auth"]);
    let pid = co.child.id();
    let kanctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kanctl"))
            .args(args)
            .env("KANCTL_COORDINATOR", format!("http://{api}"))
            .output()
            .expect("kanctl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "kanctl {args:?}: {text}{}\n{}", String::from_utf8_lossy(&out.stderr), co.log());
        text
    };
    let spec = |name: &str, action: &str| {
        format!(
            "apiVersion: cr.kanister.io/v1alpha1\nkind: ActionSet\nmetadata: {{name: {name}}}\nspec:\n  actions:\n  \
             - name: {action}\n    blueprint: mem-blueprint\n    object: {{kind: Namespace, name: {n}, namespace: {n}}}\n    \
             profile: {{name: local, namespace: {n}}}\n    artifacts: {{snap: {{keyValue: {{id: '{id}'}}}}}}\n"
        )
    };
    // At rest: started, one small ActionSet run (the first of everything allocates), settled.
    ns.apply(&spec("warm-up", "stats"));
    let status = finished(&ns, "warm-up", || co.log(), Duration::from_secs(180));
    assert_eq!(status["state"], "complete", "stats: {status:#}\n{}", co.log());
    let size: u64 = status["actions"][0]["phases"][0]["output"]["size"].as_str().unwrap_or("0").parse().unwrap_or(0);
    assert!(size > 100 << 20, "raw-data size {size}: {status:#}");
    let _ = kanctl(&["snapshots", "--profile", &format!("{n}/local")]);
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    let (idle, _) = rss_kib(pid);

    let listed = kanctl(&["snapshots", "--profile", &format!("{n}/local")]);
    assert!(listed.contains(&id[..8]), "kanctl snapshots lists the snapshot: {listed}");
    ns.apply(&spec("delete", "delete"));
    let status = finished(&ns, "delete", || co.log(), Duration::from_secs(300));
    assert_eq!(status["state"], "complete", "delete: {status:#}\n{}", co.log());
    let (now, peak) = rss_kib(pid);
    eprintln!("coordinator RSS: {idle} KiB at rest, peak {peak} KiB, {now} KiB after ({chunks} blobs)");
    assert!(
        peak <= idle + 10 * 1024,
        "the coordinator's peak RSS {peak} KiB is over 10 MiB above its {idle} KiB at rest"
    );

    // The work was done: the snapshot is gone and its packs too.
    let listed = agent.json(&["snapshots"]);
    assert_eq!(listed["snapshots"].as_array().map(Vec::len), Some(0), "{listed}");
    let packs = walk_files(&repo.join("data"));
    assert_eq!(packs, 0, "packs left after reclaimSpace");
    assert!(leftover_task_pods_of(&ns).is_empty(), "task pods left: {:?}", leftover_task_pods_of(&ns));
}

fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.path().is_dir() { walk_files(&e.path()) } else { 1 })
        .sum()
}

const CSI: &str = r#"apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: csi}
actions:
  snapshot:
    outputArtifacts:
      snap:
        keyValue:
          name: "{{ .Phases.snap.Output.name }}"
          pvc: "{{ .Phases.snap.Output.pvc }}"
          namespace: "{{ .Phases.snap.Output.namespace }}"
          restoreSize: "{{ .Phases.snap.Output.restoreSize }}"
          snapshotContent: "{{ .Phases.snap.Output.snapshotContent }}"
    phases:
    - func: CreateCSISnapshot
      name: snap
      args:
        pvc: "{{ .PVC.Name }}"
        namespace: "{{ .PVC.Namespace }}"
        snapshotClass: @CLASS@
        labels: {made-by: kanister}
  static:
    outputArtifacts:
      snap:
        keyValue:
          name: "{{ .Phases.snap.Output.name }}"
          restoreSize: "{{ .Phases.snap.Output.restoreSize }}"
          snapshotContent: "{{ .Phases.snap.Output.snapshotContent }}"
    phases:
    - func: CreateCSISnapshotStatic
      name: snap
      args: {name: imported, namespace: "{{ .PVC.Namespace }}", driver: hostpath.csi.k8s.io, snapshotHandle: handle-42, snapshotClass: @CLASS@}
  restore:
    inputArtifactNames: [snap]
    phases:
    - func: RestoreCSISnapshot
      name: restore
      args:
        name: "{{ .ArtifactsIn.snap.KeyValue.name }}"
        pvc: restored
        namespace: "{{ .PVC.Namespace }}"
        storageClass: standard
        restoreSize: "{{ .ArtifactsIn.snap.KeyValue.restoreSize }}"
        accessModes: [ReadWriteOnce]
  delete:
    inputArtifactNames: [snap]
    phases:
    - func: DeleteCSISnapshot
      name: deleteSnapshot
      args: {name: "{{ .ArtifactsIn.snap.KeyValue.name }}", namespace: "{{ .PVC.Namespace }}"}
    - func: DeleteCSISnapshotContent
      name: deleteContent
      args: {name: "{{ .ArtifactsIn.snap.KeyValue.snapshotContent }}"}
  never:
    phases:
    - func: CreateCSISnapshot
      name: never
      timeout: 4s
      args: {name: never-ready, pvc: "{{ .PVC.Name }}", namespace: "{{ .PVC.Namespace }}", snapshotClass: @CLASS@}
  broken:
    phases:
    - func: CreateCSISnapshot
      name: broken
      args: {name: broken-snap, pvc: "{{ .PVC.Name }}", namespace: "{{ .PVC.Namespace }}", snapshotClass: @CLASS@}
"#;

/// Plays the snapshot controller and the CSI driver, which the test cluster does not run: every
/// VolumeSnapshot of `ns` gets a VolumeSnapshotContent (unless it names one) and a ready status,
/// except `never-ready` (left alone) and `broken-snap` (given a status.error), until `stop`.
fn play_snapshot_controller(ns: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let ns = Namespace { name: ns };
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let out = ns.kubectl(&["get", "volumesnapshots", "-o", "json"], None);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        for vs in list["items"].as_array().into_iter().flatten() {
            let name = vs["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if name == "never-ready" || vs["status"]["readyToUse"] == true || !vs["status"]["error"].is_null() {
                continue;
            }
            let status = if name == "broken-snap" {
                json!({"status": {"readyToUse": false, "error": {"message": "the driver refused: quota exceeded"}}})
            } else {
                let content = match vs["spec"]["source"]["volumeSnapshotContentName"].as_str() {
                    Some(c) => c.to_string(),
                    None => {
                        let c = format!("{}-{name}-content", ns.name);
                        let yaml = format!(
                            "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotContent\nmetadata: {{name: {c}}}\n\
                             spec: {{deletionPolicy: Delete, driver: hostpath.csi.k8s.io, source: {{snapshotHandle: h-{name}}}, \
                             volumeSnapshotRef: {{kind: VolumeSnapshot, name: {name}, namespace: {}}}}}\n",
                            ns.name
                        );
                        let _ = kubectl(&["apply", "-f", "-"], Some(&yaml));
                        c
                    }
                };
                json!({"status": {"readyToUse": true, "creationTime": "2026-12-04T00:00:00Z", "restoreSize": "1Gi",
                                  "boundVolumeSnapshotContentName": content}})
            };
            let _ = ns.kubectl(
                &["patch", "volumesnapshot", &name, "--subresource=status", "--type=merge", "-p", &status.to_string()],
                None,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::mem::forget(ns); // the test's own Namespace deletes it
}

/// Upstream's CSI snapshot functions through the real API server with the snapshot CRDs: a
/// snapshot of a PVC (waited for until ready), a static one from a storage handle, a restore
/// into a new PVC, deletion of both objects; a snapshot that never becomes ready fails its
/// phase before the timeout saying what it waited for; a driver's error fails it with that.
#[test]
fn csi_snapshot_functions_create_restore_and_delete_through_the_snapshot_api() {
    let _cluster = no_outage();
    crds();
    kanister_testkit::cluster::snapshot_crds();
    let ns = Namespace::new("csi");
    let n = ns.name.clone();
    let class = format!("{n}-class");
    kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {{name: {class}}}\n\
             driver: hostpath.csi.k8s.io\ndeletionPolicy: Retain\n"
        )),
    );
    ns.apply(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\n\
         spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n",
    );
    ns.apply(&CSI.replace("@CLASS@", &class));
    let co = Coordinator::start(&ns);
    let logs = || co.log();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let controller = {
        let (n, stop) = (n.clone(), stop.clone());
        std::thread::spawn(move || play_snapshot_controller(n, stop))
    };
    let run = |name: &str, action: &str, artifacts: &str| {
        ns.apply(&actionset_yaml(name, action, "csi", ("PersistentVolumeClaim", "data", &n), false, artifacts));
        finished(&ns, name, logs, Duration::from_secs(120))
    };
    let get = |what: &[&str]| -> Value {
        let out = kubectl(&[&["-n", &n, "get"], what, &["-o", "json"]].concat(), None);
        assert!(out.status.success(), "get {what:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    };

    // A snapshot of the PVC: created as asked, waited for, its outputs upstream's.
    let status = run("snapshot", "snapshot", "{}");
    assert_eq!(status["state"], "complete", "{status:#}\ncoordinator log:\n{}", logs());
    let art = status["actions"][0]["artifacts"]["snap"]["keyValue"].clone();
    let snap = art["name"].as_str().unwrap_or_default().to_string();
    assert!(snap.starts_with("data-snapshot-") && snap.len() == "data-snapshot-".len() + 5, "{art}");
    assert_eq!((art["pvc"].as_str(), art["namespace"].as_str()), (Some("data"), Some(n.as_str())), "{art}");
    assert_eq!(art["restoreSize"], "1Gi", "{art}");
    assert_eq!(art["snapshotContent"], format!("{n}-{snap}-content"), "{art}");
    let vs = get(&["volumesnapshot", &snap]);
    assert_eq!(vs["spec"]["source"]["persistentVolumeClaimName"], "data", "{vs:#}");
    assert_eq!(vs["spec"]["volumeSnapshotClassName"], class.as_str(), "{vs:#}");
    assert_eq!(vs["metadata"]["labels"]["made-by"], "kanister", "{vs:#}");

    // A static snapshot: a content with the class's deletion policy, bound to its snapshot.
    let status = run("static", "static", "{}");
    assert_eq!(status["state"], "complete", "{status:#}\ncoordinator log:\n{}", logs());
    let stat = status["actions"][0]["artifacts"]["snap"]["keyValue"].clone();
    assert_eq!(stat["name"], "imported", "{stat}");
    let content = stat["snapshotContent"].as_str().unwrap_or_default().to_string();
    assert!(content.starts_with("imported-content-"), "{stat}");
    let vsc = get(&["volumesnapshotcontent", &content]);
    assert_eq!(vsc["spec"]["source"]["snapshotHandle"], "handle-42", "{vsc:#}");
    assert_eq!(vsc["spec"]["driver"], "hostpath.csi.k8s.io", "{vsc:#}");
    assert_eq!(vsc["spec"]["deletionPolicy"], "Retain", "{vsc:#}");
    assert_eq!(vsc["spec"]["volumeSnapshotRef"]["name"], "imported", "{vsc:#}");
    assert_eq!(vsc["spec"]["volumeSnapshotRef"]["namespace"], n.as_str(), "{vsc:#}");

    // Restore into a new PVC whose data source is the snapshot.
    let artifacts = json!({"snap": {"keyValue": art}}).to_string();
    let status = run("restore", "restore", &artifacts);
    assert_eq!(status["state"], "complete", "{status:#}\ncoordinator log:\n{}", logs());
    let pvc = get(&["pvc", "restored"]);
    assert_eq!(
        pvc["spec"]["dataSource"],
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snap}),
        "{pvc:#}"
    );
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi", "{pvc:#}");
    assert_eq!(pvc["spec"]["storageClassName"], "standard", "{pvc:#}");
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]), "{pvc:#}");
    assert_eq!(pvc["spec"]["volumeMode"], "Filesystem", "{pvc:#}");

    // Delete the snapshot and its content; deleting again succeeds (they are gone).
    for name in ["delete", "delete-again"] {
        let status = run(name, "delete", &artifacts);
        assert_eq!(status["state"], "complete", "{status:#}\ncoordinator log:\n{}", logs());
    }
    assert!(!ns.kubectl(&["get", "volumesnapshot", &snap], None).status.success(), "the snapshot is left");
    let gone = kubectl(&["get", "volumesnapshotcontent", &format!("{n}-{snap}-content")], None);
    assert!(!gone.status.success(), "the content is left");

    // Never ready: fails before the phase's 4 s, naming what it awaited and where to look.
    let started = Instant::now();
    let status = run("never", "never", "{}");
    assert_eq!(status["state"], "failed", "{status:#}");
    let msg = status["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("VolumeSnapshot")
            && msg.contains("never-ready")
            && msg.contains("not ready to use before the phase's timeout"),
        "{msg}"
    );
    assert!(msg.contains("kubectl describe volumesnapshot") && msg.contains(&class), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());

    // The driver's error fails the phase with the driver's words.
    let status = run("broken", "broken", "{}");
    assert_eq!(status["state"], "failed", "{status:#}");
    let msg = status["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("broken-snap") && msg.contains("the driver refused: quota exceeded"), "{msg}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    controller.join().expect("the snapshot controller thread");
    let _ = kubectl(&["delete", "volumesnapshotclass", &class], None);
    let _ = kubectl(&["delete", "volumesnapshotcontent", &content], None);
}
