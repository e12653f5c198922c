//! `kanister-coordinator run-local` end to end: a directory of YAML files in, ActionSets run as
//! local processes, final statuses out on stdout (logs on stderr), exit status by outcome.

use std::path::Path;
use std::process::{Command, Output};

use kanister_coordinator::crd::{ActionSet, State};
use serde::Deserialize as _;

const BIN: &str = env!("CARGO_BIN_EXE_kanister-coordinator");

const WORLD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: prod}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: app-7d9f-abcde, namespace: prod, labels: {app: web}}
spec:
  containers: [{name: web, image: nginx:1}]
"#;

const BLUEPRINT: &str = r####"
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {name: files, namespace: kanister}
actions:
  backup:
    outputArtifacts:
      archive:
        keyValue:
          file: "{{ .Phases.copy.Output.file }}"
          lines: "{{ .Phases.count.Output.lines }}"
    phases:
    - func: KubeExec
      name: copy
      args:
        namespace: "{{ .Deployment.Namespace }}"
        pod: "{{ index .Deployment.Pods 0 }}"
        command:
        - sh
        - -ec
        - |
          printf 'a\nb\nc\n' > '{{ .Options.dir }}/{{ .Deployment.Name }}.txt'
          echo '###Phase-output###: {"key":"file","value":"{{ .Options.dir }}/{{ .Deployment.Name }}.txt"}'
    - func: KubeTask
      name: count
      args:
        image: busybox:1
        namespace: "{{ .Deployment.Namespace }}"
        command:
        - sh
        - -ec
        - |
          n=$(wc -l < '{{ .Phases.copy.Output.file }}' | tr -d ' ')
          echo "###Phase-output###: {\"key\":\"lines\",\"value\":\"$n\"}"
  broken:
    phases:
    - func: KubeExec
      name: fail
      args: {namespace: prod, pod: app-7d9f-abcde, command: [sh, -c, "echo 'disk full' >&2; exit 7"]}
"####;

fn actionset(name: &str, action: &str, dir: &Path) -> String {
    format!(
        r#"
apiVersion: cr.kanister.io/v1alpha1
kind: ActionSet
metadata: {{name: {name}, namespace: kanister}}
spec:
  actions:
  - name: {action}
    blueprint: files
    object: {{kind: Deployment, name: app, namespace: prod}}
    options: {{dir: "{}"}}
"#,
        dir.display()
    )
}

fn run_local(dir: &Path) -> Output {
    Command::new(BIN)
        .args(["run-local", "--dir"])
        .arg(dir)
        .env("RUST_LOG", "info")
        .env_remove("KANISTER_LOCAL_STATE")
        .output()
        .expect("the binary runs")
}

/// The ActionSets printed on stdout, by name.
fn printed(out: &Output) -> Vec<ActionSet> {
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| ActionSet::deserialize(doc).unwrap_or_else(|e| panic!("stdout is not ActionSet YAML: {e}\n{text}")))
        .collect()
}

fn workspace() -> (tempfile::TempDir, tempfile::TempDir) {
    let input = tempfile::tempdir().unwrap();
    std::fs::write(input.path().join("world.yaml"), WORLD).unwrap();
    std::fs::write(input.path().join("blueprint.yaml"), BLUEPRINT).unwrap();
    (input, tempfile::tempdir().unwrap())
}

#[test]
fn run_local_runs_the_actionsets_of_a_directory_and_prints_their_final_status() {
    let (input, work) = workspace();
    std::fs::write(input.path().join("backup.yaml"), actionset("backup-1", "backup", work.path())).unwrap();
    let out = run_local(input.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let all = printed(&out);
    assert_eq!(all.len(), 1);
    let status = all[0].status.as_ref().unwrap();
    assert_eq!(status.state, State::Complete, "{:?}", status.error);
    let file = work.path().join("app.txt");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a\nb\nc\n", "the command ran on this machine");
    let artifact = &status.actions[0].artifacts["archive"];
    assert_eq!(artifact.key_value["file"], file.to_str().unwrap());
    assert_eq!(artifact.key_value["lines"], "3");
    // Structured logs went to stderr, with the ActionSet named.
    assert!(stderr.contains("backup-1"), "{stderr}");
}

#[test]
fn run_local_exits_non_zero_when_an_actionset_fails_and_still_prints_every_status() {
    let (input, work) = workspace();
    std::fs::write(input.path().join("a.yaml"), actionset("good", "backup", work.path())).unwrap();
    std::fs::write(input.path().join("b.yaml"), actionset("bad", "broken", work.path())).unwrap();
    let out = run_local(input.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at least one ActionSet did not complete"), "{stderr}");
    let all = printed(&out);
    let state = |name: &str| {
        let a = all.iter().find(|a| a.metadata.name.as_deref() == Some(name)).unwrap();
        a.status.clone().unwrap()
    };
    assert_eq!(state("good").state, State::Complete);
    let bad = state("bad");
    assert_eq!(bad.state, State::Failed);
    let message = bad.error.unwrap().message;
    assert!(message.contains("exit code 7") && message.contains("disk full"), "{message}");
}

#[test]
fn run_local_reports_an_unreadable_directory_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "kind: [unclosed").unwrap();
    let out = run_local(dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed to load"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
}
