//! `kanister-coordinator serve --local DIR`: kanctl against a coordinator without a cluster.
//! The objects come from YAML files in DIR (and from kanctl); the agent sidecar is found from
//! the Pod's YAML (`status.podIP` and the agent-port annotation), as on a cluster; state
//! survives a restart, also one in the middle of a run (the ActionSet ends, never stays
//! `running`); two ActionSets run at once. Real processes throughout: the coordinator and
//! kanctl binaries, and an agent sidecar (`kanister-agent serve`) on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{agent_binary, tree};

const COORDINATOR: &str = env!("CARGO_BIN_EXE_kanister-coordinator");
const KANCTL: &str = env!("CARGO_BIN_EXE_kanctl");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn port_up(port: u16, within: Duration) -> bool {
    let until = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

fn wait_port(port: u16, what: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Local {
    dir: PathBuf,
    api: u16,
    health: u16,
    agent_token: PathBuf,
}

impl Local {
    fn start(&self) -> Killed {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("coordinator.log")).unwrap();
        let child = Command::new(COORDINATOR)
            .args(["serve", "--local"])
            .arg(&self.dir)
            .args(["--api-listen", &format!("127.0.0.1:{}", self.api)])
            .args(["--listen", &format!("127.0.0.1:{}", self.health)])
            .arg("--agent-token-file")
            .arg(&self.agent_token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the coordinator starts");
        wait_port(self.api, "the local coordinator");
        Killed(child)
    }

    fn kanctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(KANCTL)
            .args(args)
            .env("KANCTL_COORDINATOR", format!("http://127.0.0.1:{}", self.api))
            .env("KANCTL_TOKEN_FILE", self.dir.join(".kanister/token"))
            .stdin(Stdio::null())
            .output()
            .expect("kanctl runs")
    }

    fn kanctl_ok(&self, args: &[&str]) -> String {
        let o = self.kanctl(args);
        assert!(
            o.status.success(),
            "kanctl {args:?} failed: {}\n{}\ncoordinator log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(self.dir.join("coordinator.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Waits until the ActionSet is complete or failed; returns its state.
    fn wait_done(&self, name: &str) -> String {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let o = self.kanctl(&["get", "actionsets", name, "-n", "kanister", "-o", "json"]);
            if o.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
                let v = if v.is_array() { v[0].clone() } else { v };
                let state = v.pointer("/status/state").and_then(|s| s.as_str()).unwrap_or("").to_string();
                if state == "complete" || state == "failed" {
                    if state == "failed" {
                        eprintln!("{name} failed: {}", v.pointer("/status/error").unwrap_or(&serde_json::Value::Null));
                        eprintln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    }
                    return state;
                }
            }
            assert!(Instant::now() < until, "{name} did not end in time");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn created_name(out: &str) -> String {
        // "actionset backup-xxxx created"
        out.split_whitespace().find(|w| w.contains('-') && !w.starts_with("actionset")).unwrap_or_default().to_string()
    }
}

fn write_world(dir: &Path, agent_port: u16, source: &Path, target: &Path) {
    std::fs::write(
        dir.join("world.yaml"),
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: app-0
  namespace: app
  annotations: {{kanister.io/agent-port: "{agent_port}"}}
status: {{podIP: 127.0.0.1}}
---
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {{name: files, namespace: kanister}}
actions:
  backup:
    outputArtifacts:
      files:
        keyValue:
          backupID: "{{{{ .Phases.b.Output.backupID }}}}"
    phases:
    - func: BackupData
      name: b
      args: {{namespace: app, pod: app-0, container: app, includePath: "{source}", backupArtifactPrefix: x}}
  restore:
    inputArtifactNames: [files]
    phases:
    - func: RestoreData
      name: r
      args:
        namespace: app
        pod: app-0
        backupArtifactPrefix: x
        restorePath: "{target}"
        backupIdentifier: "{{{{ .ArtifactsIn.files.KeyValue.backupID }}}}"
  slow:
    phases:
    - func: BackupStream
      name: dump
      args: {{namespace: app, pod: app-0, container: app, command: [sh, -c, "sleep 3; head -c 200000 /dev/urandom"]}}
"#,
            source = source.display(),
            target = target.display(),
        ),
    )
    .unwrap();
}

#[test]
fn kanctl_against_a_local_coordinator_backs_up_restores_and_survives_restarts() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("local");
    std::fs::create_dir_all(&dir).unwrap();
    let source = work.path().join("source");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    for i in 0..20 {
        std::fs::write(source.join(format!("sub/f{i}")), format!("file {i} ").repeat(500 + i)).unwrap();
    }
    let target = work.path().join("target");
    let agent_token = work.path().join("agent-token");
    std::fs::write(&agent_token, "local-agent-token-0123456789").unwrap();

    // The agent sidecar of pod app/app-0, on loopback.
    let agent_port = free_port();
    let _agent = Killed(
        Command::new(agent_binary())
            .args(["serve", "--metrics-listen", "off", "--listen", &format!("127.0.0.1:{agent_port}"), "--token-file"])
            .arg(&agent_token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    if !port_up(agent_port, Duration::from_secs(60)) {
        panic!(
            "the agent never listened on {agent_port}: {}",
            std::fs::read_to_string(work.path().join("agent.log")).unwrap_or_default()
        );
    }
    write_world(&dir, agent_port, &source, &target);
    let local = Local { dir: dir.clone(), api: free_port(), health: free_port(), agent_token };
    let coordinator = local.start();

    // The seed's commands, against the local coordinator: a local-disk Profile, a backup.
    let repo = work.path().join("repo");
    local.kanctl_ok(&[
        "create",
        "profile",
        "local",
        "--path",
        repo.to_str().unwrap(),
        "--namespace",
        "kanister",
        "--name",
        "local",
    ]);
    let out = local.kanctl_ok(&[
        "create",
        "actionset",
        "--action",
        "backup",
        "--namespace",
        "kanister",
        "--blueprint",
        "files",
        "--profile",
        "kanister/local",
        "--namespacetargets",
        "app",
    ]);
    let backup = Local::created_name(&out);
    assert!(backup.starts_with("backup-"), "{out}");
    assert_eq!(local.wait_done(&backup), "complete");
    let table = local.kanctl_ok(&["get", "actionsets", "-n", "kanister"]);
    for col in ["NAME", "PROGRESS", "RUNNING PHASE", "LAST TRANSITION TIME", "STATE"] {
        assert!(table.contains(col), "{table}");
    }
    assert!(table.lines().any(|l| l.contains(&backup) && l.contains("complete")), "{table}");

    // A restart keeps everything: the finished ActionSet and its artifacts.
    drop(coordinator);
    let coordinator = local.start();
    let table = local.kanctl_ok(&["get", "actionsets", "-n", "kanister"]);
    assert!(table.lines().any(|l| l.contains(&backup) && l.contains("complete")), "after a restart:\n{table}");

    // --from restore, and two ActionSets at once (the restore and a slow one).
    let out =
        local.kanctl_ok(&["create", "actionset", "--action", "restore", "--namespace", "kanister", "--from", &backup]);
    let restore = Local::created_name(&out);
    let out = local.kanctl_ok(&[
        "create",
        "actionset",
        "--action",
        "slow",
        "--namespace",
        "kanister",
        "--blueprint",
        "files",
        "--profile",
        "kanister/local",
        "--namespacetargets",
        "app",
    ]);
    let slow = Local::created_name(&out);
    assert_eq!(local.wait_done(&restore), "complete");
    assert_eq!(tree(&target), tree(&source), "the restore put back other files");

    // Killed in the middle of a backup (the sidecar's dump is still sleeping): after the restart
    // the ActionSet ends, it does not stay running.
    drop(coordinator);
    let _coordinator = local.start();
    let state = local.wait_done(&slow);
    assert!(state == "complete" || state == "failed", "{state}");
    eprintln!("the backup cut by a restart ended {state}");

    // The rest of kanctl, unchanged: describe, validate, snapshots, cancel, delete.
    let described = local.kanctl_ok(&["describe", "actionset", "-n", "kanister", &backup]);
    assert!(described.contains("backupID") && described.contains("complete"), "{described}");
    let valid = local.kanctl_ok(&["validate", "blueprint", "files", "-n", "kanister"]);
    assert!(!valid.to_lowercase().contains("error"), "{valid}");
    local.kanctl_ok(&["validate", "profile", "local", "-n", "kanister"]);
    let snaps = local.kanctl_ok(&["snapshots", "--profile", "kanister/local"]);
    assert!(snaps.contains(&backup), "the backup is not in the repository's list: {snaps}");
    let out = local.kanctl_ok(&[
        "create",
        "actionset",
        "--action",
        "slow",
        "--namespace",
        "kanister",
        "--blueprint",
        "files",
        "--profile",
        "kanister/local",
        "--namespacetargets",
        "app",
    ]);
    let cancelled = Local::created_name(&out);
    std::thread::sleep(Duration::from_millis(600));
    local.kanctl_ok(&["cancel", "-n", "kanister", &cancelled]);
    assert_eq!(local.wait_done(&cancelled), "failed", "a cancelled run must not end complete");
    local.kanctl_ok(&["delete", "actionset", "-n", "kanister", &cancelled]);
    let table = local.kanctl_ok(&["get", "actionsets", "-n", "kanister"]);
    assert!(!table.contains(&cancelled), "the deleted ActionSet is still listed:\n{table}");
}

/// `run-local` finds the agent sidecar from the Pod's YAML too.
#[test]
fn run_local_backs_up_through_a_sidecar_found_from_pod_yaml() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("local");
    std::fs::create_dir_all(&dir).unwrap();
    let source = work.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("a"), "alpha ".repeat(1000)).unwrap();
    let agent_token = work.path().join("agent-token");
    std::fs::write(&agent_token, "run-local-agent-token-0123456789").unwrap();
    let agent_port = free_port();
    let _agent = Killed(
        Command::new(agent_binary())
            .args(["serve", "--metrics-listen", "off", "--listen", &format!("127.0.0.1:{agent_port}"), "--token-file"])
            .arg(&agent_token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    if !port_up(agent_port, Duration::from_secs(60)) {
        panic!(
            "the agent never listened on {agent_port}: {}",
            std::fs::read_to_string(work.path().join("agent.log")).unwrap_or_default()
        );
    }
    write_world(&dir, agent_port, &source, &work.path().join("target"));
    std::fs::write(
        dir.join("run.yaml"),
        format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: local-secret, namespace: kanister}}
---
apiVersion: cr.kanister.io/v1alpha1
kind: Profile
metadata: {{name: local, namespace: kanister}}
location: {{type: local, path: "{repo}"}}
credential: {{type: secret, secret: {{apiVersion: v1, kind: Secret, name: local-secret, namespace: kanister}}}}
---
apiVersion: cr.kanister.io/v1alpha1
kind: ActionSet
metadata: {{name: backup-once, namespace: kanister}}
spec:
  actions:
  - name: backup
    blueprint: files
    object: {{kind: Namespace, name: app}}
    profile: {{name: local, namespace: kanister}}
"#,
            repo = work.path().join("repo").display()
        ),
    )
    .unwrap();
    let out = Command::new(COORDINATOR)
        .args(["run-local", "--dir"])
        .arg(&dir)
        .arg("--agent-token-file")
        .arg(&agent_token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "run-local failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("state: complete") && text.contains("backupID"), "{text}");
}
