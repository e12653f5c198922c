//! Fuzzing the template parser and renderer (proptest): no input makes them panic.

use chrono::DateTime;
use kanister_coordinator::crd::Blueprint;
use kanister_coordinator::render::params::{PhaseParams, SecretParams, TemplateParams};
use kanister_coordinator::render::{Location, Renderer};
use kanister_coordinator::validate;
use proptest::prelude::*;

/// Pieces of template syntax, so that generated inputs reach deep into the parser and the
/// functions instead of stopping at the first character.
const FRAGMENTS: &[&str] = &[
    "{{",
    "}}",
    "{{-",
    "-}}",
    " ",
    ".",
    "$",
    "$x",
    ":=",
    "=",
    "|",
    "(",
    ")",
    "\"",
    "`",
    "'",
    ",",
    "if",
    "else",
    "end",
    "range",
    "with",
    "define",
    "template",
    "block",
    "break",
    "continue",
    "nil",
    "true",
    "0",
    "-1",
    "1.5",
    "0x1F",
    "'a'",
    "\"s\"",
    "/*",
    "*/",
    ".Phases",
    ".Phases.p.Output.k",
    ".Secrets.s.Data.k",
    ".Object.metadata",
    ".Profile",
    ".Time",
    ".StatefulSet.Pods",
    ".Options",
    "index",
    "len",
    "printf",
    "toJson",
    "toYaml",
    "toString",
    "quote",
    "default",
    "date",
    "toDate",
    "dateInZone",
    "now",
    "split",
    "splitList",
    "join",
    "dict",
    "list",
    "get",
    "hasKey",
    "b64dec",
    "regexMatch",
    "regexReplaceAll",
    "[",
    "(",
    "indent",
    "nindent",
    "add",
    "div",
    "atoi",
    "int",
    "\"2006-01-02T15:04:05Z07:00\"",
    "\"Mon Jan _2 .000 PM -07\"",
    "\"UTC\"",
    "\"Asia/Tokyo\"",
    "randAlphaNum",
    "sha256sum",
    "coalesce",
    "empty",
    "upper",
    "trimSuffix",
    "\n",
];

fn template() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..24).prop_map(|v| v.concat()),
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..12)
            .prop_map(|v| format!("{{{{ {} }}}}", v.join(" "))),
    ]
}

fn params() -> TemplateParams {
    let mut p = TemplateParams::new(DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default());
    p.secrets.insert(
        "s".into(),
        SecretParams { name: "s".into(), data: [("k".into(), b"secret-value".to_vec())].into(), ..Default::default() },
    );
    p.phases
        .insert("p".into(), PhaseParams::with_output(serde_json::from_str(r#"{"k":"v","n":1}"#).unwrap_or_default()));
    p.options.insert("o".into(), "v".into());
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parser_and_renderer_never_panic(src in template()) {
        let renderer = Renderer::new();
        let _ = renderer.parse(&src);
        if let Err(e) = renderer.render(&Location::default(), &src, &params()) {
            let msg = e.to_string();
            prop_assert!(!msg.contains("panicked"), "a function panicked: {msg}");
            prop_assert!(!msg.contains("secret-value"), "a secret leaked: {msg}");
        }
    }

    #[test]
    fn validation_never_panics(src in template(), func in prop::sample::select(&["KubeTask", "Nope", ""][..])) {
        let bp: Blueprint = serde_json::from_value(serde_json::json!({
            "apiVersion": "cr.kanister.io/v1alpha1", "kind": "Blueprint", "metadata": {"name": "f"},
            "actions": {"a": {
                "inputArtifactNames": ["x"],
                "phases": [{"func": func, "name": "p", "args": {"command": [src.clone()], src.clone(): src.clone()}}],
                "outputArtifacts": {"o": {"keyValue": {"k": src}}}
            }}
        })).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let _ = validate::problems(&bp);
    }
}
