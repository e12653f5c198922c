//! The real Kubernetes cluster of the tests (`tests/cluster.sh`, see `tests/cluster/README.md`):
//! `tests/run.sh` starts one per test run and sets `KUBECONFIG` and `PATH` (the `kubectl` built
//! with the server); each test works in a [`Namespace`] of its own, deleted when it drops.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Runs `kubectl ARGS` with `stdin`, against the test cluster.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    ready();
    run_kubectl(args, stdin)
}

fn run_kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run kubectl: {e}; run the tests with `bash tests/run.sh`, which puts the cluster's kubectl on PATH"
        )
    });
    if let Some(input) = stdin {
        child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("write kubectl's stdin");
    }
    child.wait_with_output().expect("kubectl runs")
}

/// `kubectl ARGS` that must succeed; its stdout, trimmed.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Fails the test, with the fix, unless the cluster answers `/readyz`; checked once per process.
pub fn ready() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let r = READY.get_or_init(|| {
        let kubeconfig = std::env::var("KUBECONFIG").map_err(|_| {
            "KUBECONFIG is not set: run the tests with `bash tests/run.sh`, which starts the test cluster (tests/cluster.sh start) and sets it".to_string()
        })?;
        let out = run_kubectl(&["get", "--raw", "/readyz"], None);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "the test cluster at {kubeconfig} is not ready ({}): {}; `bash tests/cluster.sh status` says what runs, its logs are in /tmp/kanister-cluster/logs",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Applies the project's CRDs (`deploy/crds/`) once per process and waits until they are
/// established; fails the test when they do not apply.
pub fn crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        kubectl_ok(&["apply", "-f", dir.to_str().expect("utf-8 path")], None);
        for crd in ["actionsets", "blueprints", "profiles"] {
            kubectl_ok(
                &["wait", "--for=condition=Established", &format!("crd/{crd}.cr.kanister.io"), "--timeout=30s"],
                None,
            );
        }
    });
}

/// Applies the `snapshot.storage.k8s.io/v1` CRDs (`tests/cluster/volumesnapshot-crds.yaml`)
/// once per process and waits until they are established. No snapshot controller runs: tests
/// that need a snapshot ready write its status themselves.
pub fn snapshot_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/volumesnapshot-crds.yaml");
        kubectl_ok(&["apply", "-f", file.to_str().expect("utf-8 path")], None);
        for crd in ["volumesnapshots", "volumesnapshotcontents", "volumesnapshotclasses"] {
            kubectl_ok(
                &[
                    "wait",
                    "--for=condition=Established",
                    &format!("crd/{crd}.snapshot.storage.k8s.io"),
                    "--timeout=30s",
                ],
                None,
            );
        }
    });
}

/// Tells the test node that a container of image `repository` (any tag) without a command runs
/// `entrypoint` (or, for a command at an absolute path missing on the host, the entrypoint of
/// the same file name): the image's ENTRYPOINT, which a node of host processes cannot read.
/// Written to the file `KANISTER_CLUSTER_IMAGES` names (`tests/cluster.sh env`).
pub fn register_image(repository: &str, entrypoint: &[&str]) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ready();
    let path = std::path::PathBuf::from(crate::infra::var("KANISTER_CLUSTER_IMAGES"));
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> =
        old.lines().filter(|l| l.split_whitespace().next() != Some(repository)).map(str::to_string).collect();
    lines.push(format!("{repository} {}", entrypoint.join(" ")));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, lines.join("\n") + "\n").expect("write the node's image file");
    std::fs::rename(&tmp, &path).expect("replace the node's image file");
}

/// A namespace of the test cluster for one test, deleted (without waiting) on drop.
#[derive(Debug)]
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    /// Creates `<tag>-<unique>` and waits for its `default` ServiceAccount (pods need it).
    pub fn new(tag: &str) -> Namespace {
        ready();
        let name = crate::infra::unique(tag);
        assert!(name.len() <= 63, "namespace name {name} too long");
        kubectl_ok(&["create", "namespace", &name], None);
        let ns = Namespace { name };
        ns.eventually("the default ServiceAccount", Duration::from_secs(20), || {
            ns.kubectl(&["get", "serviceaccount", "default"], None).status.success().then_some(())
        });
        ns
    }

    /// `kubectl -n NAME ARGS`.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_kubectl(&all, stdin)
    }

    /// `kubectl -n NAME ARGS` that must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args, None);
        assert!(
            out.status.success(),
            "kubectl -n {} {} failed ({}): {}",
            self.name,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `kubectl apply -f -` of `yaml` in this namespace.
    pub fn apply(&self, yaml: &str) {
        let out = self.kubectl(&["apply", "-f", "-"], Some(yaml));
        assert!(out.status.success(), "kubectl apply failed: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
    }

    /// `kubectl wait --for=COND WHAT`; on a timeout, fails with the object's status.
    pub fn wait(&self, what: &str, cond: &str, timeout: Duration) {
        let t = format!("--timeout={}s", timeout.as_secs());
        let out = self.kubectl(&["wait", &format!("--for={cond}"), what, &t], None);
        if !out.status.success() {
            let status = self.kubectl(&["get", what, "-o", "jsonpath={.status}"], None);
            panic!(
                "{what} did not reach {cond} in {timeout:?}: {}; status: {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&status.stdout)
            );
        }
    }

    /// Polls `f` every 200 ms until it gives a value; fails naming `what` after `timeout`.
    pub fn eventually<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(start.elapsed() < timeout, "namespace {}: no {what} within {timeout:?}", self.name);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Namespace {
    /// Deletes the namespace, unless KANISTER_TEST_KEEP_NAMESPACES is set (to look into a failure).
    fn drop(&mut self) {
        if std::env::var_os("KANISTER_TEST_KEEP_NAMESPACES").is_some() {
            eprintln!("keeping namespace {}", self.name);
            return;
        }
        let _ = run_kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}
