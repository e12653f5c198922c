//! The checked-in CRDs under `deploy/crds/` match the Rust types and validate offline.

use std::path::{Path, PathBuf};
use std::process::Command;

use kanister_coordinator::crd;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

const REGENERATE: &str =
    "run `cargo run -p kanister-coordinator --bin crdgen -- --out deploy/crds` and commit the result";

#[test]
fn checked_in_crds_match_the_types() {
    let dir = crd_dir();
    let mut expected = Vec::new();
    for c in crd::crds() {
        let name = crd::crd_file_name(&c);
        let want = crd::crd_yaml(&c).expect("CRD serializes");
        let path = dir.join(&name);
        let have = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} is missing ({e}); {REGENERATE}", path.display()));
        assert!(have == want, "{} drifted from the Rust types; {REGENERATE}", path.display());
        expected.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/crds exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(present, expected, "deploy/crds holds files no type generates");
}

#[test]
fn crds_are_upstream_compatible() {
    let crds = crd::crds();
    let names: Vec<_> = crds.iter().map(|c| c.metadata.name.clone().unwrap_or_default()).collect();
    assert_eq!(names, ["actionsets.cr.kanister.io", "blueprints.cr.kanister.io", "profiles.cr.kanister.io"]);
    for c in &crds {
        assert_eq!(c.spec.group, "cr.kanister.io");
        assert_eq!(c.spec.scope, "Namespaced");
        assert_eq!(c.spec.versions.len(), 1);
        assert_eq!(c.spec.versions[0].name, "v1alpha1");
    }
    // Blueprint and Profile keep their fields at the top level.
    let top_level = |i: usize| -> Vec<String> {
        let schema = crds[i].spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
        schema.and_then(|s| s.properties.as_ref()).map(|p| p.keys().cloned().collect()).unwrap_or_default()
    };
    assert_eq!(top_level(1), ["actions"]);
    // `storeOptions` is our addition (optional, so upstream Profiles stay valid).
    assert_eq!(top_level(2), ["credential", "location", "skipSSLVerify", "storeOptions"]);
    assert_eq!(top_level(0), ["spec", "status"]);
}

#[test]
fn actionset_printer_columns_match_kubectl_get_of_upstream() {
    let c = &crd::crds()[0];
    let columns = c.spec.versions[0].additional_printer_columns.as_ref().expect("printer columns");
    let default_view: Vec<(&str, &str)> = columns
        .iter()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        default_view,
        [
            ("Progress", ".status.progress.percentCompleted"),
            ("Running Phase", ".status.progress.runningPhase"),
            ("Last Transition Time", ".status.progress.lastTransitionTime"),
            ("State", ".status.state"),
        ]
    );
    assert!(c.spec.versions[0].subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
}

/// The `kubernetes-validate` executable (PyPI `kubernetes-validate`), from
/// `KANISTER_TEST_KUBE_VALIDATE`. Missing is a failure, not a skip: CI must run this check.
fn kube_validate() -> PathBuf {
    match std::env::var_os("KANISTER_TEST_KUBE_VALIDATE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "KANISTER_TEST_KUBE_VALIDATE is not set: set it to the path of the `kubernetes-validate` \
             executable (python3 -m venv /tmp/kv && /tmp/kv/bin/pip install kubernetes-validate; \
             KANISTER_TEST_KUBE_VALIDATE=/tmp/kv/bin/kubernetes-validate)"
        ),
    }
}

/// Runs `kubernetes-validate --strict` on `file`; returns (success, combined output).
fn validate(file: &Path) -> (bool, String) {
    let exe = kube_validate();
    let out = Command::new(&exe)
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn crds_validate_offline_with_kubernetes_validate() {
    for c in crd::crds() {
        let path = crd_dir().join(crd::crd_file_name(&c));
        let (ok, out) = validate(&path);
        assert!(ok && out.contains("passed"), "{} does not validate:\n{out}", path.display());
    }
    // The validator really validates: a CRD without its group is rejected.
    let tmp = tempfile::tempdir().expect("tempdir");
    let broken = tmp.path().join("broken.yaml");
    let mut c = crd::crds().remove(0);
    c.spec.group = String::new();
    let mut json = serde_json::to_value(&c).expect("serializes");
    if let Some(spec) = json.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.remove("group");
    }
    std::fs::write(&broken, serde_norway::to_string(&json).expect("yaml")).expect("write");
    let (ok, out) = validate(&broken);
    assert!(!ok && out.contains("group"), "a CRD without group passed:\n{out}");
}

/// Custom resources: kubernetes-validate only knows built-in kinds (it warns "Couldn't find
/// schema" and exits 0), so instead every example manifest is checked against the generated
/// structural schema: no field would be pruned by the API server and every enum value is allowed.
#[test]
fn example_manifests_fit_the_crd_schemas() {
    let crds = crd::crds();
    for (file, index) in [
        ("actionset-backup.yaml", 0),
        ("blueprint-mysql.yaml", 1),
        ("profile-s3.yaml", 2),
        ("profile-azure.yaml", 2),
        ("profile-local.yaml", 2),
    ] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(file);
        let text = std::fs::read_to_string(&path).expect("example manifest");
        let doc: serde_json::Value = serde_norway::from_str(&text).expect("yaml");
        let schema = serde_json::to_value(
            crds[index].spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()),
        )
        .expect("schema");
        let mut problems = Vec::new();
        for (k, v) in doc.as_object().expect("object") {
            if ["apiVersion", "kind", "metadata"].contains(&k.as_str()) {
                continue;
            }
            fits(&schema["properties"][k], v, &format!(".{k}"), &mut problems);
        }
        assert!(problems.is_empty(), "{file}: {problems:#?}");
    }
    // The checker itself catches unknown fields and bad enum values.
    let mut problems = Vec::new();
    let schema =
        serde_json::to_value(crds[2].spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()))
            .expect("schema");
    fits(
        &schema["properties"]["location"],
        &serde_json::json!({"type": "ftp", "bukket": "b"}),
        ".location",
        &mut problems,
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
}

fn fits(schema: &serde_json::Value, v: &serde_json::Value, path: &str, problems: &mut Vec<String>) {
    if schema.is_null() {
        problems.push(format!("{path}: not in the schema (would be pruned)"));
        return;
    }
    if schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        problems.push(format!("{path}: {v} is not one of {allowed:?}"));
    }
    match v {
        serde_json::Value::Object(m) => {
            for (k, item) in m {
                let sub = if schema["properties"].is_object() {
                    &schema["properties"][k]
                } else {
                    &schema["additionalProperties"]
                };
                fits(sub, item, &format!("{path}.{k}"), problems);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                fits(&schema["items"], item, &format!("{path}[{i}]"), problems);
            }
        }
        _ => {}
    }
}
