//! The test cluster itself (tests/cluster.sh, tests/cluster/README.md) against what a real
//! cluster does: the built server version, the project's CRDs and their schema, a pod's logs and
//! exec through the API server, workloads scaled by the real controllers and scheduler, Secrets,
//! PVCs and Services. Each test in a namespace of its own.

use kanister_testkit::cluster::{Namespace, crds, kubectl, kubectl_ok};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

#[test]
fn server_reports_its_built_version_and_enforces_the_crd_schema() {
    let ns = Namespace::new("crd");
    let versions = std::fs::read_to_string(repo_root().join("tests/cluster/versions.env")).expect("versions.env");
    let want = versions
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .expect("KUBERNETES_VERSION in versions.env");
    let v: serde_json::Value =
        serde_json::from_str(&kubectl_ok(&["version", "-o", "json"], None)).expect("version JSON");
    assert_eq!(v["serverVersion"]["gitVersion"], want, "server version: {v}");
    assert_eq!(v["clientVersion"]["gitVersion"], want, "the tests' kubectl is the one built with the server: {v}");

    crds();
    let bad =
        "apiVersion: cr.kanister.io/v1alpha1\nkind: ActionSet\nmetadata: {name: bad}\nspec: {actions: not-a-list}\n";
    let out = ns.kubectl(&["apply", "-f", "-"], Some(bad));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server accepted an ActionSet whose spec.actions is a string");
    assert!(err.contains("spec.actions"), "the rejection does not name spec.actions: {err}");
    let good = format!(
        "apiVersion: cr.kanister.io/v1alpha1\nkind: ActionSet\nmetadata: {{name: good}}\nspec: {{actions: [{{name: backup, blueprint: bp, object: {{kind: StatefulSet, name: db, namespace: {}}}}}]}}\n",
        ns.name
    );
    ns.apply(&good);
    assert_eq!(ns.ok(&["get", "actionset", "good", "-o", "jsonpath={.spec.actions[0].blueprint}"]), "bp");
}

#[test]
fn a_pod_logs_and_execs_through_the_api_server() {
    let ns = Namespace::new("exec");
    ns.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: hello}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: none, command: [sh, -c, "echo hello; sleep 30"]}
"#,
    );
    ns.wait("pod/hello", "condition=Ready", T);
    let ip = ns.ok(&["get", "pod", "hello", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip.starts_with("127.0.0.") && ip != "127.0.0.1", "pod IP {ip}");
    ns.eventually("`hello` in the pod's log", T, || (ns.ok(&["logs", "hello"]) == "hello").then_some(()));
    assert_eq!(ns.ok(&["exec", "hello", "--", "sh", "-c", "echo $((6*7))"]), "42");
    let out = ns.kubectl(&["exec", "hello", "--", "sh", "-c", "exit 3"], None);
    assert_eq!(out.status.code(), Some(3), "exit 3 through exec: {out:?}");
    let out = ns.kubectl(&["exec", "hello", "--", "no-such-command-here"], None);
    assert_eq!(out.status.code(), Some(127), "a missing command through exec: {out:?}");
    let out = ns.kubectl(&["exec", "-i", "hello", "--", "cat"], Some("from stdin\n"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from stdin\n", "stdin through exec: {out:?}");
    // A container whose command is missing fails with 127, as a runtime reports it.
    ns.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: missing}\nspec:\n  restartPolicy: Never\n  containers:\n  - {name: m, image: none, command: [no-such-command-here]}\n");
    ns.wait("pod/missing", "jsonpath={.status.phase}=Failed", T);
    assert_eq!(
        ns.ok(&["get", "pod", "missing", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}"]),
        "127"
    );
}

fn pods(ns: &Namespace, selector: &str) -> Vec<String> {
    let out = ns.ok(&["get", "pods", "-l", selector, "-o", "name"]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn deployment_and_statefulset_scale_through_the_real_controllers_and_a_job_completes() {
    let ns = Namespace::new("scale");
    let spec = |kind: &str, name: &str, extra: &str| {
        format!(
            "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n  replicas: 0\n{extra}  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      terminationGracePeriodSeconds: 5\n      containers:\n      - {{name: c, image: none, command: [sh, -c, 'while true; do sleep 1; done']}}\n"
        )
    };
    ns.apply(&spec("Deployment", "web", ""));
    ns.apply(&spec("StatefulSet", "db", "  serviceName: db\n"));
    ns.apply("apiVersion: batch/v1\nkind: Job\nmetadata: {name: job}\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - {name: job, image: none, command: [sh, -c, 'echo job done']}\n");
    for (kind, name) in [("deployment", "web"), ("statefulset", "db")] {
        ns.ok(&["scale", kind, name, "--replicas=2"]);
        ns.ok(&["rollout", "status", kind, name, "--timeout=60s"]);
        let running = ns.ok(&[
            "get",
            "pods",
            "-l",
            &format!("app={name}"),
            "--field-selector=status.phase=Running",
            "-o",
            "name",
        ]);
        assert_eq!(running.lines().count(), 2, "{kind} {name} at 2 replicas: {running}");
    }
    assert_eq!(pods(&ns, "app=db"), ["pod/db-0", "pod/db-1"], "StatefulSet pods are named by ordinal");
    for (kind, name) in [("deployment", "web"), ("statefulset", "db")] {
        ns.ok(&["scale", kind, name, "--replicas=0"]);
        ns.eventually(&format!("{kind} {name} without pods"), T, || {
            pods(&ns, &format!("app={name}")).is_empty().then_some(())
        });
    }
    ns.wait("job/job", "condition=complete", T);
    assert_eq!(ns.ok(&["logs", "job/job"]), "job done");
}

#[test]
fn secrets_reach_volumes_and_env_and_a_pvc_outlives_its_pod() {
    let ns = Namespace::new("vol");
    let n = &ns.name;
    ns.ok(&["create", "secret", "generic", "creds", "--from-literal=password=s3cret"]);
    ns.ok(&["create", "configmap", "cfg", "--from-literal=mode=fast"]);
    // No provisioner: a PV for the claim to bind to (the controller manager binds it). The node
    // gives the claim a directory of its own.
    ns.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {n}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: ''\n  hostPath: {{path: /nonexistent/{n}}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: store}}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: ''\n  volumeName: {n}\n  resources: {{requests: {{storage: 1Gi}}}}\n"
    ));
    let pod = |name: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  initContainers:
  - {{name: init, image: none, command: [sh, -c, 'echo init > /data/from-init'], volumeMounts: [{{name: data, mountPath: /data}}]}}
  containers:
  - name: main
    image: none
    command: [sh, -c]
    args: ['echo "vol=$(cat etc/creds/password) abs=$(cat /etc/creds/password) mnt=$(cat $MOUNT_CREDS/password) ro=$(touch /etc/creds/x 2>/dev/null && echo writable || echo read-only) env=$PASS mode=$MODE ns=$NS ip=$IP/$POD_IP init=$(cat /data/from-init) pvc=$(cat /pvc/count 2>/dev/null)"; echo x >> /pvc/count']
    env:
    - {{name: PASS, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}
    - {{name: MODE, valueFrom: {{configMapKeyRef: {{name: cfg, key: mode}}}}}}
    - {{name: NS, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
    - {{name: IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    volumeMounts:
    - {{name: creds, mountPath: /etc/creds}}
    - {{name: data, mountPath: /data}}
    - {{name: pvc, mountPath: /pvc}}
  volumes:
  - {{name: creds, secret: {{secretName: creds}}}}
  - {{name: data, emptyDir: {{}}}}
  - {{name: pvc, persistentVolumeClaim: {{claimName: store}}}}
"#
        )
    };
    ns.apply(&pod("first"));
    ns.wait("pod/first", "jsonpath={.status.phase}=Succeeded", T);
    let ip = ns.ok(&["get", "pod", "first", "-o", "jsonpath={.status.podIP}"]);
    assert_eq!(
        ns.ok(&["logs", "first", "-c", "main"]),
        format!(
            "vol=s3cret abs=s3cret mnt=s3cret ro=read-only env=s3cret mode=fast ns={n} ip={ip}/{ip} init=init pvc="
        )
    );
    ns.apply(&pod("second"));
    ns.wait("pod/second", "jsonpath={.status.phase}=Succeeded", T);
    let second = ns.ok(&["logs", "second", "-c", "main"]);
    assert!(second.ends_with("pvc=x"), "the second pod of the claim did not see the first one's file: {second}");
    let _ = kubectl(&["delete", "pv", n, "--wait=false"], None);
}

#[test]
fn services_resolve_by_name_and_reach_a_ready_pod() {
    let ns = Namespace::new("svc");
    let n = &ns.name;
    // Two replicas of a server that answers with its pod's name, behind a Service whose
    // targetPort is a container port's name, and a headless Service of the StatefulSet.
    let server = r#"import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(s):
        s.send_response(200); s.end_headers(); s.wfile.write(os.environ['HOSTNAME'].encode())
    def log_message(s, *a): pass
http.server.HTTPServer((os.environ['POD_IP'], 8080), H).serve_forever()
"#;
    let script = serde_json::to_string(server).expect("json string");
    ns.apply(&format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web}}
spec:
  replicas: 2
  serviceName: web-headless
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: none
        command: [python3, -c, {script}]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-headless}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{port: 8080}}]
"#
    ));
    ns.ok(&["rollout", "status", "statefulset", "web", "--timeout=60s"]);
    let client = format!(
        r#"for u in http://web/ http://web/ http://web.{n}.svc.cluster.local/ http://web-0.web-headless:8080/ http://web-1.web-headless.{n}.svc.cluster.local:8080/; do
  echo "$u $(curl -sS --retry 20 --retry-connrefused --retry-delay 1 --max-time 5 $u)"
done
# 40 connections, 20 at a time: every one answered by one of the two pods.
seq 40 | xargs -P 20 -I{{}} curl -sS --max-time 10 -o - http://web/ > burst
echo "burst $(grep -o 'web-[01]' burst | wc -l)"
t=var/run/secrets/kubernetes.io/serviceaccount
echo "api $(curl -sS --max-time 5 --cacert $t/ca.crt -H "Authorization: Bearer $(cat $t/token)" https://kubernetes.default.svc/version | grep -c gitVersion)"
"#
    );
    ns.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: none\n    command: [sh, -c, {}]\n",
        serde_json::to_string(&client).expect("json string")
    ));
    ns.wait("pod/client", "jsonpath={.status.phase}=Succeeded", T);
    let logs = ns.ok(&["logs", "client"]);
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 7, "client output: {logs}");
    let answer = |i: usize| lines[i].rsplit(' ').next().unwrap_or_default().to_string();
    let mut both = [answer(0), answer(1)];
    both.sort();
    assert_eq!(both, ["web-0", "web-1"], "two connections to the Service reach both pods in turn: {logs}");
    assert!(answer(2).starts_with("web-"), "the Service's full name: {logs}");
    assert_eq!(answer(3), "web-0", "a StatefulSet pod by its headless name: {logs}");
    assert_eq!(answer(4), "web-1", "a StatefulSet pod by its full headless name: {logs}");
    assert_eq!(lines[5], "burst 40", "40 concurrent connections through the Service: {logs}");
    assert_eq!(lines[6], "api 1", "the API server through kubernetes.default.svc: {logs}");
    // Another namespace sees the Service by its qualified name only.
    let other = Namespace::new("svc2");
    other.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: c}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: c, image: none, command: [sh, -c, 'curl -sS --max-time 5 http://web.{n}/; echo; getent hosts web || echo no-short-name']}}\n"
    ));
    other.wait("pod/c", "jsonpath={.status.phase}=Succeeded", T);
    let out = other.ok(&["logs", "c"]);
    assert!(out.starts_with("web-") && out.ends_with("no-short-name"), "from another namespace: {out}");
}

#[test]
fn probes_gate_readiness_and_restart_a_failing_container() {
    let ns = Namespace::new("probe");
    // Ready only while the file `ready` exists; alive only while `alive` does not say "no".
    ns.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  restartPolicy: Always
  containers:
  - name: main
    image: none
    command: [sh, -c, "echo started >> starts; exec sleep 600"]
    readinessProbe: {exec: {command: [test, -f, ready]}, periodSeconds: 1, failureThreshold: 1}
    livenessProbe: {exec: {command: [sh, -c, "! grep -q no alive"]}, periodSeconds: 1, failureThreshold: 2}
"#,
    );
    ns.wait("pod/p", "jsonpath={.status.phase}=Running", T);
    let ready = || {
        ns.ok(&[
            "get",
            "pod",
            "p",
            "-o",
            "jsonpath={.status.containerStatuses[0].ready}/{.status.conditions[?(@.type=='Ready')].status}",
        ])
    };
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ready(), "false/False", "Ready before the readiness probe passed");
    ns.ok(&["exec", "p", "--", "touch", "ready"]);
    ns.wait("pod/p", "condition=Ready", T);
    ns.ok(&["exec", "p", "--", "rm", "ready"]);
    ns.eventually("the pod not Ready once its probe fails", T, || (ready() == "false/False").then_some(()));
    ns.ok(&["exec", "p", "--", "sh", "-c", "echo no > alive"]);
    ns.eventually("a restart after the liveness probe failed", T, || {
        (ns.ok(&["get", "pod", "p", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"]) != "0").then_some(())
    });
    let last =
        ns.ok(&["get", "pod", "p", "-o", "jsonpath={.status.containerStatuses[0].lastState.terminated.exitCode}"]);
    assert_eq!(last, "143", "the failing container was stopped by TERM");
}

#[test]
fn a_pod_waits_for_a_missing_secret_instead_of_failing() {
    let ns = Namespace::new("wait");
    // A Deployment whose pod mounts a Secret that does not exist yet: one pod, Pending, its
    // container waiting with the reason (a failed pod would be replaced at once, forever).
    ns.apply(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: w}
spec:
  replicas: 1
  selector: {matchLabels: {app: w}}
  template:
    metadata: {labels: {app: w}}
    spec:
      containers:
      - name: c
        image: none
        command: [sh, -c, "cat /etc/late/token; exec sleep 600"]
        volumeMounts: [{name: late, mountPath: /etc/late}]
      volumes: [{name: late, secret: {secretName: late}}]
"#,
    );
    let reason = ns.eventually("a waiting reason", T, || {
        let r = ns.ok(&[
            "get",
            "pods",
            "-l",
            "app=w",
            "-o",
            "jsonpath={.items[*].status.containerStatuses[0].state.waiting.message}",
        ]);
        r.contains("late").then_some(r)
    });
    assert!(reason.contains("not found") || reason.contains("late"), "the wait names the Secret: {reason}");
    std::thread::sleep(Duration::from_secs(3));
    let all = pods(&ns, "app=w");
    assert_eq!(all.len(), 1, "one pod, not replaced: {all:?}");
    assert_eq!(ns.ok(&["get", "pods", "-l", "app=w", "-o", "jsonpath={.items[0].status.phase}"]), "Pending");
    ns.ok(&["create", "secret", "generic", "late", "--from-literal=token=arrived"]);
    ns.ok(&["rollout", "status", "deployment", "w", "--timeout=60s"]);
    ns.eventually("the Secret's file in the log", T, || (ns.ok(&["logs", "deployment/w"]) == "arrived").then_some(()));
    assert_eq!(pods(&ns, "app=w"), all, "the same pod ran");
}

#[test]
fn a_statefulset_pod_replaced_under_its_name_keeps_running_with_its_volumes() {
    let ns = Namespace::new("roll");
    ns.ok(&["create", "secret", "generic", "s", "--from-literal=token=t0"]);
    ns.apply(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 1
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: c
        image: none
        command: [sh, -c, "exec sleep 600"]
        volumeMounts: [{name: s, mountPath: /etc/s}]
      volumes: [{name: s, secret: {secretName: s}}]
"#,
    );
    ns.ok(&["rollout", "status", "statefulset", "db", "--timeout=60s"]);
    let first = ns.ok(&["get", "pod", "db-0", "-o", "jsonpath={.metadata.uid}"]);
    // A change of the template: the controller deletes db-0 and creates a new db-0.
    ns.ok(&["patch", "statefulset", "db", "-p", r#"{"spec":{"template":{"metadata":{"annotations":{"rev":"2"}}}}}"#]);
    ns.ok(&["rollout", "status", "statefulset", "db", "--timeout=60s"]);
    let second = ns.ok(&["get", "pod", "db-0", "-o", "jsonpath={.metadata.uid}"]);
    assert_ne!(first, second, "db-0 was replaced");
    // A late delete of the first db-0 must not touch the second (it removed its volumes).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ns.ok(&["exec", "db-0", "--", "cat", "/etc/s/token"]), "t0");
    assert_eq!(ns.ok(&["get", "pod", "db-0", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"]), "0");
}

/// A volume at /tmp (the agent sidecar's emptyDir) hides the host's /tmp in the pod: the pod's
/// other volumes (whose directories are under the node's state, often in /tmp) and a program
/// under /tmp on the host (a clone built in /tmp) must still reach the pod.
#[test]
fn a_volume_at_tmp_hides_neither_the_other_volumes_nor_the_program() {
    let ns = Namespace::new("tmpvol");
    ns.ok(&["create", "secret", "generic", "s", "--from-literal=token=t1"]);
    let dir = std::env::temp_dir().join(&ns.name);
    std::fs::create_dir_all(&dir).expect("a directory under /tmp");
    let program = dir.join("program.sh");
    std::fs::write(&program, "#!/bin/sh\necho \"$(cat /var/run/s/token) $(ls -A /tmp | wc -l)\"\nexec sleep 600\n")
        .expect("the program");
    std::process::Command::new("chmod").args(["+x"]).arg(&program).status().expect("chmod");
    ns.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: p}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: none
    command: [{program}]
    volumeMounts: [{{name: tmp, mountPath: /tmp}}, {{name: s, mountPath: /var/run/s}}]
  volumes: [{{name: tmp, emptyDir: {{}}}}, {{name: s, secret: {{secretName: s}}}}]
"#,
        program = program.display()
    ));
    ns.ok(&["wait", "pod/p", "--for=condition=Ready", "--timeout=60s"]);
    // The Secret's file, and an empty /tmp: the emptyDir, not the host's.
    ns.eventually("the program's line", T, || (ns.ok(&["logs", "p"]) == "t1 0").then_some(()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An image the node's image file names puts its entrypoint's directory first on PATH, as the
/// image's own PATH would: upstream blueprints call `kando` by name in the tools image.
#[test]
fn an_images_other_programs_are_on_its_path() {
    let ns = Namespace::new("imgpath");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), Into::into);
    let bin = target.join("test-images").join(&ns.name).join("bin");
    std::fs::create_dir_all(&bin).expect("the image's bin directory");
    for (name, text) in [("entry", "#!/bin/sh\nexit 0\n"), ("hello-from-image", "#!/bin/sh\necho \"hi $1\"\n")] {
        std::fs::write(bin.join(name), text).expect("a program of the image");
        std::process::Command::new("chmod").arg("+x").arg(bin.join(name)).status().expect("chmod");
    }
    let repo = format!("example.com/{}/tools", ns.name);
    kanister_testkit::cluster::register_image(&repo, &[bin.join("entry").to_str().expect("utf-8")]);
    ns.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: c, image: '{repo}:1.0', command: [sh, -c, 'hello-from-image there']}}\n  - {{name: d, image: '{repo}:1.0', command: [hello-from-image, direct]}}\n"
    ));
    ns.wait("pod/p", "jsonpath={.status.phase}=Succeeded", T);
    // Through a shell, and as the container's command itself.
    assert_eq!(ns.ok(&["logs", "p", "-c", "c"]), "hi there");
    assert_eq!(ns.ok(&["logs", "p", "-c", "d"]), "hi direct");
    let _ = std::fs::remove_dir_all(bin.parent().expect("the image directory"));
}
