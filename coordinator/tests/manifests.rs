//! Upstream-shaped manifests round-trip through the CRD types without loss.

use std::path::PathBuf;

use kanister_coordinator::crd::{ActionSet, Blueprint, CredentialType, LocationType, Profile, State};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn data(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Parses `name` as `T`, serializes it back, and asserts the JSON is unchanged.
fn round_trip<T: DeserializeOwned + Serialize>(name: &str) -> T {
    round_trip_text(name, &data(name))
}

fn round_trip_text<T: DeserializeOwned + Serialize>(name: &str, text: &str) -> T {
    let original: serde_json::Value = serde_norway::from_str(text).expect("manifest is YAML");
    let typed: T = serde_norway::from_str(text).expect("manifest deserializes into the type");
    let back = serde_json::to_value(&typed).expect("type serializes");
    assert_eq!(
        back,
        original,
        "{name} changed in a round trip:\n--- original\n{}\n--- after\n{}",
        serde_json::to_string_pretty(&original).unwrap_or_default(),
        serde_json::to_string_pretty(&back).unwrap_or_default()
    );
    // And through YAML again, as kubectl would send it.
    let yaml = serde_norway::to_string(&typed).expect("type serializes to YAML");
    let again: serde_json::Value = serde_norway::from_str(&yaml).expect("YAML re-reads");
    assert_eq!(again, original, "{name} changed in a YAML round trip");
    typed
}

#[test]
fn blueprint_round_trips_with_actions_at_the_top_level() {
    let bp: Blueprint = round_trip("blueprint-mysql.yaml");
    assert_eq!(bp.metadata.name.as_deref(), Some("mysql-blueprint"));
    let backup = &bp.spec.actions["backup"];
    assert_eq!(backup.phases[0].func, "KubeTask");
    assert_eq!(backup.phases[0].object_refs["mysqlSecret"].kind, "Secret");
    assert_eq!(backup.defer_phase.as_ref().map(|p| p.name.as_str()), Some("cleanupScratch"));
    let restore = &bp.spec.actions["restore"];
    assert_eq!(restore.input_artifact_names, ["mysqlCloudDump"]);
    assert_eq!(restore.phases[0].args["replicas"], serde_json::json!(0));
    // No `spec` on the wire.
    let json = serde_json::to_value(&bp).expect("serializes");
    assert!(json.get("spec").is_none() && json.get("actions").is_some());
}

#[test]
fn profiles_round_trip_for_every_location_type() {
    let s3: Profile = round_trip("profile-s3.yaml");
    assert_eq!(s3.spec.location.location_type, LocationType::S3Compliant);
    assert_eq!(s3.spec.credential.credential_type, CredentialType::KeyPair);
    let kp = s3.spec.credential.key_pair.as_ref().expect("keyPair");
    assert_eq!((kp.id_field.as_str(), kp.secret.name.as_str()), ("aws_access_key_id", "s3-credentials"));
    assert_eq!(s3.spec.skip_ssl_verify, Some(false));

    let azure: Profile = round_trip("profile-azure.yaml");
    assert_eq!(azure.spec.location.location_type, LocationType::Azure);
    assert_eq!(azure.spec.credential.credential_type, CredentialType::Secret);

    let local: Profile = round_trip("profile-local.yaml");
    assert_eq!(local.spec.location.location_type, LocationType::Local);
    assert_eq!(local.spec.location.path.as_deref(), Some("/var/lib/kanister/backups"));
}

#[test]
fn gcs_profile_parses_from_json_too() {
    let json = r#"{"apiVersion":"cr.kanister.io/v1alpha1","kind":"Profile",
        "metadata":{"name":"gcs"},
        "location":{"type":"gcs","bucket":"b"},
        "credential":{"type":"keyPair","keyPair":{"idField":"project-id","secretField":"service-account.json",
            "secret":{"name":"gcs-creds","namespace":"ns"}}}}"#;
    let p: Profile = serde_json::from_str(json).expect("gcs profile");
    assert_eq!(p.spec.location.location_type, LocationType::Gcs);
}

#[test]
fn actionset_round_trips_with_status() {
    let aset: ActionSet = round_trip("actionset-backup.yaml");
    let spec = &aset.spec.actions[0];
    assert_eq!(spec.object.kind, "statefulset");
    assert_eq!(spec.secrets["mysql"].name, "mysql-release");
    assert_eq!(spec.options["team"], "databases");
    let status = aset.status.as_ref().expect("status");
    assert_eq!(status.state, State::Complete);
    let progress = status.progress.as_ref().expect("progress");
    assert_eq!(progress.percent_completed, "100.00");
    assert_eq!(progress.size_uploaded_b, 1_048_576);
    let phase = &status.actions[0].phases[0];
    assert_eq!(phase.output["size"], serde_json::json!(1_048_576));
    assert_eq!(phase.progress.as_ref().map(|p| p.estimated_time_seconds), Some(3));
    assert_eq!(status.error.as_ref().map(|e| e.message.as_str()), Some(""));
}

#[test]
fn unknown_states_and_location_types_are_rejected() {
    let bad_state = r#"{"apiVersion":"cr.kanister.io/v1alpha1","kind":"ActionSet","metadata":{},
        "spec":{"actions":[]},"status":{"state":"exploded"}}"#;
    let err = serde_json::from_str::<ActionSet>(bad_state).expect_err("unknown state");
    assert!(err.to_string().contains("exploded"), "{err}");
    let bad_type = r#"{"apiVersion":"cr.kanister.io/v1alpha1","kind":"Profile","metadata":{},
        "location":{"type":"ftp"},"credential":{"type":"keyPair"}}"#;
    let err = serde_json::from_str::<Profile>(bad_type).expect_err("unknown location type");
    assert!(err.to_string().contains("ftp"), "{err}");
}

/// The round-trip check itself notices a field the types would drop.
#[test]
#[should_panic(expected = "changed in a round trip")]
fn round_trip_detects_a_dropped_field() {
    let text = data("profile-s3.yaml").replace("region: us-east-1", "region: us-east-1\n  storageClass: GLACIER");
    let _: Profile = round_trip_text("profile-s3.yaml (with an unknown field)", &text);
}
