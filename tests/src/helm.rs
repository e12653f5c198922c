//! The Helm chart (`deploy/helm/kanister`) rendered offline by Helm's own Go SDK (PyPI
//! `helm-python-sdk`, the Python named by `KANISTER_TEST_HELM_PYTHON`), as `helm template` does:
//! values checked against values.schema.json first.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Prints `{"manifests": {template: text}}` (render) or the lint result (lint), or
/// `{"error": message}`.
const RENDER_PY: &str = r#"
import json, sys
try:
    import helm_python as helm
except ImportError as e:
    sys.exit("helm-python-sdk is not installed in this Python: %s" % e)
chart_dir, values, namespace, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    if mode == "lint":
        print(json.dumps(helm.lint(chart_dir, values, strict=True, namespace=namespace,
                                   kube_version="v1.33.0")))
    else:
        with helm.Chart.load(chart_dir) as chart:
            chart.validate_schema(values)
            out = chart.render(values, name="kanister", namespace=namespace, is_install=True)
            print(json.dumps({"manifests": out}))
except Exception as e:  # rendering errors are data for the test
    print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
"#;

/// Renders (`mode` "render") or lints (`mode` "lint") `chart` with `values` for a release in
/// `namespace`; the script's JSON answer.
pub fn run(chart: &Path, values: &Value, namespace: &str, mode: &str) -> Value {
    let python =
        crate::infra::tool("KANISTER_TEST_HELM_PYTHON", "a Python with PyPI `helm-python-sdk` (Helm's Go SDK)");
    let out = Command::new(&python)
        .arg("-c")
        .arg(RENDER_PY)
        .arg(chart)
        .arg(values.to_string())
        .arg(namespace)
        .arg(mode)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "helm ({mode}) failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("helm ({mode}) printed no JSON ({e}): {stdout}"))
}

/// The chart's manifests rendered with `values` for a release in `namespace`: template path and
/// text, NOTES.txt left out; a rendering error fails the test.
pub fn render(chart: &Path, values: &Value, namespace: &str) -> Vec<(String, String)> {
    let out = run(chart, values, namespace, "render");
    if let Some(e) = out.get("error") {
        panic!("rendering the chart with {values} failed: {e}");
    }
    let map = out["manifests"].as_object().expect("a manifests map");
    map.iter()
        .filter(|(path, _)| !path.ends_with("NOTES.txt"))
        .map(|(path, text)| (path.clone(), text.as_str().unwrap_or_default().to_string()))
        .collect()
}
