//! Golden tests of the renderer: upstream template parameters, sprig functions, Go layouts,
//! `text/template` control flow, and errors that say where and what.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kanister_coordinator::crd::{Artifact, CredentialType, Location as ProfileLocation, LocationType};
use kanister_coordinator::render::params::{
    ConfigMapParams, CredentialParams, KeyPairParams, PhaseParams, ProfileParams, SecretParams, TemplateParams,
    WorkloadParams,
};
use kanister_coordinator::render::{Error, Location, Renderer};
use serde_json::json;

const ROOT_PASSWORD: &str = "s3cr3t-root-pass";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG";

fn started() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-03-07T09:05:03.12045Z").expect("time").to_utc()
}

fn params() -> TemplateParams {
    let mut p = TemplateParams::new(started());
    p.object = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": "mysql-release",
            "namespace": "mysql-test",
            "labels": {"app.kubernetes.io/instance": "mysql-release", "tier": "db"}
        },
        "spec": {"replicas": 2}
    }))
    .expect("object");
    p.stateful_set = Some(WorkloadParams {
        name: "mysql-release".into(),
        namespace: "mysql-test".into(),
        pods: vec!["mysql-release-0".into(), "mysql-release-1".into()],
        containers: vec![vec!["mysql".into(), "metrics".into()], vec!["mysql".into()]],
        persistent_volume_claims: BTreeMap::from([(
            "mysql-release-0".into(),
            BTreeMap::from([("data-mysql-release-0".into(), "/var/lib/mysql".into())]),
        )]),
    });
    p.secrets.insert(
        "mysql".into(),
        SecretParams {
            name: "mysql-release".into(),
            namespace: "mysql-test".into(),
            secret_type: "Opaque".into(),
            data: BTreeMap::from([("mysql-root-password".into(), ROOT_PASSWORD.as_bytes().to_vec())]),
        },
    );
    p.config_maps.insert(
        "location".into(),
        ConfigMapParams {
            name: "backup-location".into(),
            namespace: "mysql-test".into(),
            data: BTreeMap::from([("bucket".into(), "backups".into())]),
        },
    );
    p.profile = Some(ProfileParams {
        location: ProfileLocation {
            location_type: LocationType::S3Compliant,
            bucket: "backups".into(),
            endpoint: "http://seaweedfs:8333".into(),
            prefix: "mysql".into(),
            region: "us-east-1".into(),
            path: None,
        },
        credential: CredentialParams {
            credential_type: CredentialType::KeyPair,
            key_pair: Some(KeyPairParams { id: "AKIAEXAMPLE".into(), secret: AWS_SECRET.into() }),
            secret: None,
        },
        skip_ssl_verify: false,
        store_options: Default::default(),
    });
    p.artifacts_in.insert(
        "mysqlCloudDump".into(),
        Artifact {
            key_value: BTreeMap::from([("s3path".into(), "/mysql/2024/dump.sql.gz".into())]),
            kopia_snapshot: String::new(),
        },
    );
    p.phases.insert(
        "dumpToObjectStore".into(),
        PhaseParams::with_output(
            serde_json::from_value(json!({"s3path": "/mysql/dump.sql.gz", "size": 1024})).expect("output"),
        ),
    );
    p.defer_phase = PhaseParams::with_output(serde_json::from_value(json!({"cleaned": true})).expect("output"));
    p.options = BTreeMap::from([("team".into(), "databases".into()), ("empty".into(), String::new())]);
    p.pod_labels = BTreeMap::from([("app".into(), "backup".into())]);
    p.pod_annotations = BTreeMap::from([("example.com/owner".into(), "dba".into())]);
    p.pod_override = serde_json::from_value(json!({"securityContext": {"runAsNonRoot": true}})).expect("override");
    p
}

fn at() -> Location {
    Location { argument: "command[2]".into(), ..Location::phase("mysql-blueprint", "backup", "dumpToObjectStore") }
}

fn renderer() -> Renderer {
    Renderer::with_clock(DateTime::parse_from_rfc3339("2025-01-02T03:04:05.678Z").expect("clock").to_utc())
}

fn render(src: &str) -> Result<String, Error> {
    renderer().render(&at(), src, &params())
}

fn golden(cases: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for (src, want) in cases {
        match render(src) {
            Ok(got) if got == *want => {}
            Ok(got) => failures.push(format!("{src}\n   want {want:?}\n    got {got:?}")),
            Err(e) => failures.push(format!("{src}\n   want {want:?}\n  error {e}")),
        }
    }
    assert!(failures.is_empty(), "{} golden case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn upstream_template_parameters() {
    golden(&[
        ("{{ .StatefulSet.Name }}/{{ .StatefulSet.Namespace }}", "mysql-release/mysql-test"),
        ("{{ index .StatefulSet.Pods 1 }}", "mysql-release-1"),
        ("{{ index (index .StatefulSet.Containers 0) 1 }}", "metrics"),
        (
            r#"{{ index .StatefulSet.PersistentVolumeClaims "mysql-release-0" "data-mysql-release-0" }}"#,
            "/var/lib/mysql",
        ),
        (r#"{{ index .Object.metadata.labels "app.kubernetes.io/instance" }}"#, "mysql-release"),
        ("{{ .Object.spec.replicas }}", "2"),
        (r#"{{ index .Secrets.mysql.Data "mysql-root-password" | toString }}"#, ROOT_PASSWORD),
        ("{{ .Secrets.mysql.Name }} {{ .Secrets.mysql.Type }}", "mysql-release Opaque"),
        ("{{ .ConfigMaps.location.Data.bucket }}", "backups"),
        ("{{ .Profile.Location.Bucket }} {{ .Profile.Location.Type }}", "backups s3Compliant"),
        ("{{ .Profile.Credential.KeyPair.ID }}", "AKIAEXAMPLE"),
        ("{{ .ArtifactsIn.mysqlCloudDump.KeyValue.s3path }}", "/mysql/2024/dump.sql.gz"),
        ("{{ .Phases.dumpToObjectStore.Output.s3path }}", "/mysql/dump.sql.gz"),
        ("{{ .Phases.dumpToObjectStore.Output.size }}", "1024"),
        ("{{ .DeferPhase.Output.cleaned }}", "true"),
        ("{{ .Options.team }}", "databases"),
        ("{{ .Time }}", "2024-03-07T09:05:03.12045Z"),
        ("{{ .PodLabels.app }} {{ index .PodAnnotations \"example.com/owner\" }}", "backup dba"),
        ("{{ .PodOverride.securityContext.runAsNonRoot }}", "true"),
        ("{{ toJson .PodOverride }}", r#"{"securityContext":{"runAsNonRoot":true}}"#),
        ("{{ if .Deployment }}deployment{{ else }}statefulset{{ end }}", "statefulset"),
        ("{{ if .Namespace }}ns{{ else }}no namespace{{ end }}", "no namespace"),
    ]);
}

#[test]
fn to_json_of_profile_has_upstreams_shape() {
    golden(&[(
        "{{ toJson .Profile }}",
        concat!(
            r#"{"Location":{"type":"s3Compliant","bucket":"backups","endpoint":"http://seaweedfs:8333","prefix":"mysql","region":"us-east-1"},"#,
            r#""Credential":{"Type":"keyPair","KeyPair":{"ID":"AKIAEXAMPLE","Secret":"wJalrXUtnFEMI/K7MDENG"},"Secret":null,"KopiaServerSecret":null},"#,
            r#""SkipSSLVerify":false}"#
        ),
    )]);
    golden(&[(
        "{{ toJson .Profile.Location }}",
        r#"{"type":"s3Compliant","bucket":"backups","endpoint":"http://seaweedfs:8333","prefix":"mysql","region":"us-east-1"}"#,
    )]);
}

/// For task pods, `toJson .Profile` references `KANISTER_PROFILE_CREDENTIAL` instead of the
/// secret values; `kando` resolves it to the credential the coordinator gives the pod.
#[test]
fn to_json_of_profile_references_the_credential_for_task_pods() {
    let mut p = params();
    p.credential_from_env = true;
    let r = renderer();
    let json = r.render(&at(), "{{ toJson .Profile }}", &p).unwrap();
    assert_eq!(
        json,
        concat!(
            r#"{"Location":{"type":"s3Compliant","bucket":"backups","endpoint":"http://seaweedfs:8333","prefix":"mysql","region":"us-east-1"},"#,
            r#""Credential":{"Type":"keyPair","KeyPair":{"ID":"AKIAEXAMPLE","Secret":""},"Secret":null,"KopiaServerSecret":null,"#,
            r#""FromEnv":"KANISTER_PROFILE_CREDENTIAL"},"SkipSSLVerify":false}"#
        )
    );
    assert!(!r.render(&at(), "{{ toJson .Profile.Credential }}", &p).unwrap().contains(AWS_SECRET));
    // Asked for directly, the value is rendered: the blueprint wants it.
    assert_eq!(r.render(&at(), "{{ .Profile.Credential.KeyPair.Secret }}", &p).unwrap(), AWS_SECRET);

    // kando, given the variable's value, gets the same store settings as from the values.
    let profile = p.profile.as_ref().unwrap();
    let credential = profile.credential_json();
    assert!(credential.contains(AWS_SECRET));
    let by_reference = kanister_agent::kando::GoProfile::parse_with(&json, |name| {
        (name == kanister_agent::kando::CREDENTIAL_ENV).then(|| credential.to_string())
    })
    .unwrap();
    let by_value = kanister_agent::kando::GoProfile::parse(&render("{{ toJson .Profile }}").unwrap()).unwrap();
    assert_eq!(format!("{:?}", by_reference.credential), format!("{:?}", by_value.credential));
    let secret_of =
        |g: &kanister_agent::kando::GoProfile| g.credential.as_ref().unwrap().key_pair.as_ref().unwrap().secret.clone();
    assert_eq!(secret_of(&by_reference), AWS_SECRET);

    // A Secret credential: its data is left out too.
    let mut p2 = p.clone();
    p2.profile.as_mut().unwrap().credential = CredentialParams {
        credential_type: CredentialType::Secret,
        key_pair: None,
        secret: Some(SecretParams {
            name: "s3".into(),
            namespace: "kanister".into(),
            secret_type: "Opaque".into(),
            data: BTreeMap::from([("aws_secret_access_key".into(), AWS_SECRET.as_bytes().to_vec())]),
        }),
    };
    let json = r.render(&at(), "{{ toJson .Profile }}", &p2).unwrap();
    assert!(json.contains(r#""FromEnv":"KANISTER_PROFILE_CREDENTIAL""#), "{json}");
    assert!(!json.contains(r#""data""#), "{json}");
    // Without credential values there is nothing to reference.
    let mut p3 = p.clone();
    p3.profile.as_mut().unwrap().credential = CredentialParams::default();
    assert!(!r.render(&at(), "{{ toJson .Profile }}", &p3).unwrap().contains("FromEnv"));

    // A Profile's storeOptions travel to kando under StoreOptions (absent when empty, so the
    // JSON above stays upstream's).
    let mut p4 = p.clone();
    p4.profile.as_mut().unwrap().store_options = BTreeMap::from([("retry_timeout".into(), "2m".into())]);
    let json = r.render(&at(), "{{ toJson .Profile }}", &p4).unwrap();
    assert!(json.ends_with(r#""SkipSSLVerify":false,"StoreOptions":{"retry_timeout":"2m"}}"#), "{json}");
    let parsed = kanister_agent::kando::GoProfile::parse_with(&json, |_| Some(credential.to_string())).unwrap();
    assert_eq!(parsed.store_options["retry_timeout"], "2m");
}

#[test]
fn go_date_layouts() {
    golden(&[
        (
            r#"{{ toDate "2006-01-02T15:04:05.999999999Z07:00" .Time | date "2006-01-02T15-04-05" }}"#,
            "2024-03-07T09-05-03",
        ),
        (
            r#"{{ toDate "2006-01-02T15:04:05.999999999Z07:00" .Time | date "Jan _2 03:04:05.000PM" }}"#,
            "Mar  7 09:05:03.120AM",
        ),
        (r#"{{ now | date "2006-01-02 15:04:05.999 MST" }}"#, "2025-01-02 03:04:05.678 UTC"),
        ("{{ now }}", "2025-01-02 03:04:05.678 +0000 UTC"),
        (
            r#"{{ dateInZone "2006-01-02 15:04 MST -07:00" (toDate "2006-01-02T15:04:05Z07:00" "2024-07-01T12:00:00Z") "Asia/Kolkata" }}"#,
            "2024-07-01 17:30 IST +05:30",
        ),
        (r#"{{ toDate "2006-01-02" "2024-03-07" | unixEpoch }}"#, "1709769600"),
        (r#"{{ date "Monday 2 January 2006" 0 }}"#, "Thursday 1 January 1970"),
    ]);
}

#[test]
fn control_flow_and_pipelines() {
    golden(&[
        (
            "{{ range $i, $p := .StatefulSet.Pods }}{{ if $i }},{{ end }}{{ $p }}{{ end }}",
            "mysql-release-0,mysql-release-1",
        ),
        (
            "{{ range $k, $v := .Object.metadata.labels }}{{ $k }}={{ $v }};{{ end }}",
            "app.kubernetes.io/instance=mysql-release;tier=db;",
        ),
        ("{{ with .ArtifactsIn.mysqlCloudDump.KeyValue }}{{ .s3path }}{{ end }}", "/mysql/2024/dump.sql.gz"),
        ("{{ with .Options.empty }}set{{ else }}unset{{ end }}", "unset"),
        (r#"{{ if and (hasKey .Options "team") (eq .Options.team "databases") }}yes{{ else }}no{{ end }}"#, "yes"),
        (r#"{{ .Options.team | upper | printf "%s-x" | quote }}"#, r#""DATABASES-x""#),
        (
            r#"{{ (.StatefulSet.Name | trimSuffix "-release") | printf "%s/%s" .StatefulSet.Namespace }}"#,
            "mysql-test/mysql",
        ),
        ("a  {{- .Options.team -}}  b", "adatabasesb"),
        ("line1\n  {{- /* comment */ -}}\nline2", "line1line2"),
        ("{{ $x := .Options.team }}{{ $x }}{{ $x = \"changed\" }} {{ $x }}", "databases changed"),
    ]);
}

#[test]
fn sprig_functions() {
    golden(&[
        (r#"{{ dict "a" 1 "b" (list "x" "y") | toJson }}"#, r#"{"a":1,"b":["x","y"]}"#),
        (r#"{{ dict "a" 1 "b" (list "x" "y") | toYaml }}"#, "a: 1\nb:\n- x\n- y"),
        (r#"{{ toJson "<&>" }}"#, r#""\u003c\u0026\u003e""#),
        (r#"{{ 42 | toString }} {{ toString .Options.team }}"#, "42 databases"),
        (r#"{{ quote "a\"b" 1 }} {{ squote "x" "y" }}"#, r#""a\"b" "1" 'x' 'y'"#),
        (r#"{{ default "fallback" .Options.empty }} {{ .Options.team | default "fallback" }}"#, "fallback databases"),
        (
            r#"{{ empty .Options.empty }} {{ empty .Options.team }} {{ empty 0 }} {{ empty (list) }}"#,
            "true false true true",
        ),
        (r#"{{ coalesce .Options.empty "" "third" }}"#, "third"),
        (r#"{{ upper "abc" }} {{ lower "ABC" }} {{ trim "  x  " }}"#, "ABC abc x"),
        (r#"{{ trimSuffix ".gz" "dump.sql.gz" }} {{ trimPrefix "/" "/a/b" }}"#, "dump.sql a/b"),
        (r#"{{ replace "-" "_" "a-b-c" }}"#, "a_b_c"),
        (
            r#"{{ contains "sql" "mysql" }} {{ hasPrefix "my" "mysql" }} {{ hasSuffix "my" "mysql" }}"#,
            "true true false",
        ),
        (r#"{{ (split "-" "a-b-c")._1 }} {{ splitList "/" "a/b/c" | join "," }}"#, "b a,b,c"),
        (r#"{{ list 1 "two" 3 | join "+" }}"#, "1+two+3"),
        (r#"{{ get (dict "k" "v") "k" }}|{{ get (dict "k" "v") "nope" }}|{{ hasKey (dict "k" 1) "k" }}"#, "v||true"),
        (r#"{{ b64enc "hello" }} {{ b64dec "aGVsbG8=" }}"#, "aGVsbG8= hello"),
        (r#"{{ index .Secrets.mysql.Data "mysql-root-password" | b64enc | b64dec }}"#, ROOT_PASSWORD),
        (r#"{{ sha256sum "abc" }}"#, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (r#"{{ randAlphaNum 24 | len }} {{ regexMatch "^[a-zA-Z0-9]{8}$" (randAlphaNum 8) }}"#, "24 true"),
        (
            r#"{{ add 1 2 3 }} {{ sub 10 4 }} {{ mul 2 3 4 }} {{ div 10 3 }} {{ int "42" }} {{ atoi "7" }} {{ add1 1 }}"#,
            "6 6 24 3 42 7 2",
        ),
        (r#"{{ add .Phases.dumpToObjectStore.Output.size 1 }}"#, "1025"),
        (
            r#"{{ regexMatch "^mysql-[a-z]+$" "mysql-release" }} {{ regexReplaceAll "a(x*)b" "-ab-axxb-" "${1}W" }}"#,
            "true -W-xxW-",
        ),
        ("{{ \"a\\nb\" | indent 2 }}|{{ \"a\\nb\" | nindent 4 }}", "  a\n  b|\n    a\n    b"),
    ]);
}

#[test]
fn args_render_recursively_like_upstream() {
    let args = serde_json::from_value(json!({
        "namespace": "{{ .StatefulSet.Namespace }}",
        "replicas": 0,
        "waitForReady": true,
        "command": ["sh", "-c", "echo {{ .Options.team }}"],
        "podLabels": {"{{ .Options.team }}-key": "{{ .PodLabels.app }}"}
    }))
    .expect("args");
    let out = renderer().render_args(&Location::phase("bp", "backup", "p"), &args, &params()).expect("renders");
    assert_eq!(
        serde_json::to_value(out).expect("json"),
        json!({
            "namespace": "mysql-test",
            "replicas": 0,
            "waitForReady": true,
            "command": ["sh", "-c", "echo databases"],
            "podLabels": {"databases-key": "backup"}
        })
    );
}

#[test]
fn output_artifacts_render_after_phases() {
    let arts = BTreeMap::from([(
        "mysqlCloudDump".to_string(),
        Artifact {
            key_value: BTreeMap::from([("s3path".into(), "{{ .Phases.dumpToObjectStore.Output.s3path }}".into())]),
            kopia_snapshot: String::new(),
        },
    )]);
    let out = renderer().render_artifacts(&Location::phase("bp", "backup", ""), &arts, &params()).expect("renders");
    assert_eq!(out["mysqlCloudDump"].key_value["s3path"], "/mysql/dump.sql.gz");
}

#[test]
fn missing_key_names_the_location_and_suggests_the_closest_key() {
    let e = render("{{ .Phases.dumpToObjectStor.Output.s3path }}").expect_err("missing phase");
    assert_eq!(
        e.to_string(),
        r#"blueprint "mysql-blueprint", action "backup", phase "dumpToObjectStore", argument "command[2]": map has no entry for key "dumpToObjectStor" (did you mean "dumpToObjectStore"?)"#
    );
    let e = render("{{ .Phases.dumpToObjectStore.Output.s3pth }}").expect_err("missing output");
    assert!(
        matches!(&e, Error::MissingKey { key, hint, .. } if key == "s3pth" && hint.0.as_deref() == Some("s3path")),
        "{e}"
    );
    let e = render("{{ .StatefulSet.Namespce }}").expect_err("missing field");
    assert!(e.to_string().ends_with(r#"(did you mean "Namespace"?)"#), "{e}");
    let e = render("{{ .Options.nothingLikeIt }}").expect_err("no hint");
    assert!(e.to_string().ends_with(r#"map has no entry for key "nothingLikeIt""#), "{e}");
}

#[test]
fn failing_functions_are_named() {
    let e = render(r#"{{ toDate "2006-01-02" "07/03/2024" }}"#).expect_err("bad date");
    assert_eq!(
        e.to_string(),
        r#"blueprint "mysql-blueprint", action "backup", phase "dumpToObjectStore", argument "command[2]": error calling toDate: parsing time "07/03/2024" as "2006-01-02": cannot parse "07/03/2024" as "2006""#
    );
    let e = render("{{ div 1 0 }}").expect_err("div by zero");
    assert!(e.to_string().ends_with("error calling div: integer divide by zero"), "{e}");
    let e = render(r#"{{ b64dec "not base64!" }}"#).expect_err("bad base64");
    assert!(e.to_string().contains("error calling b64dec"), "{e}");
    let e = render(r#"{{ date "2006" "yesterday" }}"#).expect_err("not a time");
    assert!(e.to_string().contains("error calling date: argument is a string, not a time"), "{e}");
    let e = render("{{ tojson .Profile }}").expect_err("unknown function");
    assert!(e.to_string().ends_with(r#"function "tojson" not defined (did you mean "toJson"?)"#), "{e}");
    let e = render("{{ if }}").expect_err("syntax");
    assert!(matches!(e, Error::Parse { .. }), "{e}");
}

#[test]
fn nil_parameters_are_errors_not_empty_strings() {
    let e = render("{{ .Deployment.Name }}").expect_err("no deployment");
    assert!(matches!(e, Error::NoValue { .. }), "{e}");
    let e = render(r#"{{ index .Object.metadata.labels "missing" }}"#).expect_err("missing index");
    assert!(matches!(e, Error::NoValue { .. }), "{e}");
}

#[test]
fn secret_values_never_appear_in_errors() {
    for src in [
        r#"{{ index .Secrets.mysql.Data "mysql-root-password" | toString | toDate "2006" }}"#,
        r#"{{ .Profile.Credential.KeyPair.Secret | toDate "2006" }}"#,
        r#"{{ $s := index .Secrets.mysql.Data "mysql-root-password" | toString }}{{ index .Options $s }}"#,
    ] {
        let e = render(src).expect_err("fails");
        let msg = e.to_string();
        assert!(!msg.contains(ROOT_PASSWORD) && !msg.contains(AWS_SECRET), "secret leaked: {msg}");
        assert!(msg.contains("<redacted>") || matches!(e, Error::NoValue { .. }), "{msg}");
    }
    // And Debug of the parameters does not print them either.
    let debug = format!("{:?}", params());
    assert!(!debug.contains(ROOT_PASSWORD) && !debug.contains(AWS_SECRET), "{debug}");
}
