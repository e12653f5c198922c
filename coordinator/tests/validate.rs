//! Every blueprint validation rule, with a failing example and its expected message.

use kanister_coordinator::crd::Blueprint;
use kanister_coordinator::validate::{self, Error};

fn blueprint(actions: serde_json::Value) -> Blueprint {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "cr.kanister.io/v1alpha1",
        "kind": "Blueprint",
        "metadata": {"name": "bp"},
        "actions": actions,
    }))
    .expect("blueprint")
}

/// Validates `actions` and returns the problems as display strings.
fn problems(actions: serde_json::Value) -> Vec<String> {
    validate::problems(&blueprint(actions)).iter().map(ToString::to_string).collect()
}

fn kube_task(name: &str, command: &str) -> serde_json::Value {
    serde_json::json!({
        "func": "KubeTask",
        "name": name,
        "args": {"image": "busybox", "namespace": "ns", "command": ["sh", "-c", command]}
    })
}

#[test]
fn the_example_mysql_blueprint_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/blueprint-mysql.yaml");
    let bp: Blueprint = serde_norway::from_str(&std::fs::read_to_string(path).expect("read")).expect("parse");
    assert_eq!(validate::check(&bp), Ok(()));
}

#[test]
fn rule_1_unknown_function() {
    let got = problems(serde_json::json!({"backup": {"phases": [
        {"func": "KubeTsk", "name": "p", "args": {}}
    ]}}));
    assert_eq!(
        got,
        [r#"blueprint "bp", action "backup", phase "p": unknown function "KubeTsk" (did you mean "KubeTask"?)"#]
    );
}

#[test]
fn rule_2_missing_required_argument() {
    let got = problems(serde_json::json!({"backup": {"phases": [
        {"func": "KubeExec", "name": "p", "args": {"namespace": "ns", "pod": "x"}}
    ]}}));
    assert_eq!(got, [r#"blueprint "bp", action "backup", phase "p": function KubeExec requires argument "command""#]);
}

#[test]
fn rule_3_unknown_argument() {
    let got = problems(serde_json::json!({"backup": {"phases": [
        {"func": "ScaleWorkload", "name": "p", "args": {"replicas": 0, "namepsace": "ns"}}
    ]}}));
    assert_eq!(
        got,
        [
            r#"blueprint "bp", action "backup", phase "p", argument "namepsace": function ScaleWorkload does not take argument "namepsace" (did you mean "namespace"?)"#
        ]
    );
}

#[test]
fn rule_4_phase_names_are_unique_across_actions_and_defer_phases() {
    let got = problems(serde_json::json!({
        "backup": {"phases": [kube_task("dump", "true")], "deferPhase": kube_task("dump", "true")},
        "restore": {"phases": [kube_task("dump", "true"), kube_task("", "true")]}
    }));
    assert_eq!(
        got,
        [
            r#"blueprint "bp", action "backup", phase "dump": phase name "dump" is already used in action "backup"; phase names must be unique in a blueprint"#,
            r#"blueprint "bp", action "restore", phase "dump": phase name "dump" is already used in action "backup"; phase names must be unique in a blueprint"#,
            r#"blueprint "bp", action "restore": phase has no name"#,
        ]
    );
}

#[test]
fn rule_5_templates_must_parse_and_call_known_functions() {
    let got = problems(serde_json::json!({"backup": {"phases": [
        kube_task("p", "echo {{ .Options.x "),
        kube_task("q", "echo {{ .Options.x | tojson }}"),
    ]}}));
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(
        got[0].starts_with(
            r#"blueprint "bp", action "backup", phase "p", argument "command[2]": template does not parse: "#
        ),
        "{}",
        got[0]
    );
    assert_eq!(
        got[1],
        r#"blueprint "bp", action "backup", phase "q", argument "command[2]": template calls unknown function "tojson" (did you mean "toJson"?)"#
    );
}

#[test]
fn rule_6_phase_references_name_an_earlier_phase() {
    let got = problems(serde_json::json!({"backup": {
        "phases": [
            kube_task("first", "echo {{ .Phases.second.Output.x }}"),
            kube_task("second", "echo {{ .Phases.frist.Output.x }} {{ .Phases.second.Output.y }}"),
            kube_task("third", "echo {{ .Phases.first.Output.x }} {{ index .Phases \"second\" \"Output\" }} {{ .Phases.third.Secrets.s.Data }}"),
        ],
        "deferPhase": kube_task("cleanup", "echo {{ .Phases.third.Output.x }} {{ .Phases.cleanup.Output.x }}"),
        "outputArtifacts": {"a": {"keyValue": {"k": "{{ .Phases.first.Output.x }}{{ .Phases.nope.Output.x }}"}}}
    }}));
    assert_eq!(
        got,
        [
            r#"blueprint "bp", action "backup", phase "first", argument "command[2]": .Phases.second names a phase that has not run yet when this template renders"#,
            r#"blueprint "bp", action "backup", phase "second", argument "command[2]": .Phases.frist names no phase of this action (did you mean "first"?)"#,
            r#"blueprint "bp", action "backup", phase "second", argument "command[2]": .Phases.second names a phase that has not run yet when this template renders"#,
            r#"blueprint "bp", action "backup", phase "cleanup", argument "command[2]": .Phases.cleanup names a phase that has not run yet when this template renders"#,
            r#"blueprint "bp", action "backup", argument "outputArtifacts.a.keyValue.k": .Phases.nope names no phase of this action"#,
        ]
    );
}

#[test]
fn rule_7_input_artifacts_must_be_declared() {
    let got = problems(serde_json::json!({"restore": {
        "inputArtifactNames": ["mysqlCloudDump"],
        "phases": [kube_task("p", "echo {{ .ArtifactsIn.mysqlCloudDump.KeyValue.path }} {{ .ArtifactsIn.mysqlDump.KeyValue.path }}")]
    }}));
    assert_eq!(
        got,
        [
            r#"blueprint "bp", action "restore", phase "p", argument "command[2]": .ArtifactsIn.mysqlDump is not declared in the action's inputArtifactNames (did you mean "mysqlCloudDump"?)"#
        ]
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let bp = blueprint(serde_json::json!({"backup": {"phases": [
        {"func": "Nope", "name": "a", "args": {}},
        {"func": "KubeTask", "name": "b", "args": {"image": "x", "command": ["{{ .ArtifactsIn.z.KeyValue.k }}"], "extra": 1}},
    ]}}));
    let Err(Error::Invalid { blueprint, problems }) = validate::check(&bp) else { panic!("must be invalid") };
    assert_eq!(blueprint, "bp");
    assert_eq!(problems.len(), 3, "{problems:#?}");
    let text = validate::check(&bp).expect_err("invalid").to_string();
    assert!(text.starts_with("blueprint \"bp\" is invalid (3 problems):\n  - "), "{text}");
}

/// A shell pipeline into `kando location push` without pipefail is warned about, naming the
/// phase: the dump could fail halfway and still leave a backup that looks complete.
#[test]
fn pipes_into_kando_push_without_pipefail_are_warned_about() {
    let bp = |command: &str| -> kanister_coordinator::crd::Blueprint {
        serde_norway::from_str(&format!(
            "apiVersion: cr.kanister.io/v1alpha1\nkind: Blueprint\nmetadata: {{name: b}}\nactions:\n  backup:\n    phases:\n    - func: KubeTask\n      name: dump\n      args:\n        image: tools\n        command: {command}\n"
        ))
        .unwrap()
    };
    let warned = kanister_coordinator::validate::warnings(&bp(
        r#"[bash, -c, "mysqldump --all-databases | gzip | kando location push --profile p --path x -"]"#,
    ));
    assert_eq!(warned.len(), 1, "{warned:?}");
    let text = warned[0].to_string();
    assert!(text.contains("dump") && text.contains("pipefail"), "{text}");
    for fine in [
        r#"[bash, -o, pipefail, -c, "mysqldump | kando location push --profile p --path x -"]"#,
        r#"[bash, -c, "set -eo pipefail; mysqldump | kando location push --profile p --path x -"]"#,
        r#"[bash, -c, "kando location push --profile p --path x /backup.sql"]"#,
        r#"[sh, -c, "mysqldump > /tmp/d; kando output k v"]"#,
    ] {
        assert!(kanister_coordinator::validate::warnings(&bp(fine)).is_empty(), "{fine}");
    }
}

/// A function upstream has and this coordinator does not run validates (upstream blueprints stay
/// valid) with a warning naming the phase, from the one function catalogue.
#[test]
fn functions_not_served_here_are_warned_about() {
    let bp = |func: &str, args: &str| -> kanister_coordinator::crd::Blueprint {
        serde_norway::from_str(&format!(
            "apiVersion: cr.kanister.io/v1alpha1\nkind: Blueprint\nmetadata: {{name: b}}\nactions:\n  backup:\n    phases:\n    - func: {func}\n      name: snap\n      args: {args}\n"
        ))
        .unwrap()
    };
    let rds = bp("CreateRDSSnapshot", "{instanceID: db-1}");
    assert!(kanister_coordinator::validate::check(&rds).is_ok(), "upstream's function stays valid");
    let warned = kanister_coordinator::validate::warnings(&rds);
    assert_eq!(warned.len(), 1, "{warned:?}");
    let text = warned[0].to_string();
    assert!(text.contains("snap") && text.contains("CreateRDSSnapshot") && text.contains("not run"), "{text}");
    assert!(text.contains("KubeTask running mysqldump or pg_dump"), "names no alternative: {text}");
    // The CSI functions are served now.
    let csi = bp("CreateCSISnapshot", "{pvc: data, namespace: ns, snapshotClass: csi}");
    assert!(kanister_coordinator::validate::warnings(&csi).is_empty());
    let served = bp("KubeTask", "{image: tools, command: [sh, -c, 'true']}");
    assert!(kanister_coordinator::validate::warnings(&served).is_empty());
}

/// `kanister.io/profile-credentials`: `inline` is allowed and warned about (secrets on command
/// lines); a value other than `inline` or `reference` is an error naming both.
#[test]
fn the_profile_credentials_annotation_is_checked() {
    let bp = |annotation: &str| -> kanister_coordinator::crd::Blueprint {
        serde_norway::from_str(&format!(
            "apiVersion: cr.kanister.io/v1alpha1\nkind: Blueprint\nmetadata: {{name: b{annotation}}}\nactions:\n  backup:\n    phases:\n    - func: KubeTask\n      name: p\n      args: {{image: tools, command: [sh, -c, 'true']}}\n"
        ))
        .unwrap()
    };
    let inline = bp(", annotations: {kanister.io/profile-credentials: inline}");
    assert!(kanister_coordinator::validate::check(&inline).is_ok());
    let warned: Vec<String> =
        kanister_coordinator::validate::warnings(&inline).iter().map(ToString::to_string).collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("metadata.annotations") && warned[0].contains("ps on the node"), "{warned:?}");
    assert!(!warned[0].contains("action \"\""), "{warned:?}");
    let reference = bp(", annotations: {kanister.io/profile-credentials: reference}");
    assert!(kanister_coordinator::validate::check(&reference).is_ok());
    assert!(kanister_coordinator::validate::warnings(&reference).is_empty());
    let typo = bp(", annotations: {kanister.io/profile-credentials: inlined}");
    let err = kanister_coordinator::validate::check(&typo).unwrap_err().to_string();
    assert!(err.contains("\"inlined\"") && err.contains("\"reference\"") && err.contains("\"inline\""), "{err}");
}
