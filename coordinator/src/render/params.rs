//! The template parameters of a phase, with upstream Kanister's names (`param.TemplateParams`).
//!
//! [`TemplateParams::to_value`] builds the data a template sees. Field names are Go's exported
//! field names (`.StatefulSet.Pods`, `.Profile.Location.Bucket`, `.Secrets.db.Data.password`),
//! except `.Object`, which is the unstructured object with its JSON keys.
//!
//! Two Go behaviours are kept on purpose:
//! - Secret data are bytes (a list of `uint8`), so `{{ .Secrets.db.Data.password | toString }}`
//!   is needed to get the text, as upstream.
//! - A struct keeps its JSON form next to its fields, so `toJson .Profile` produces upstream's
//!   JSON (`{"Location":{"type":...,"bucket":...},"Credential":{"Type":...,"KeyPair":{"ID":...`)
//!   in upstream's field order, while templates address the Go field names.
//!
//! One departure, for task pods only: with [`TemplateParams::credential_from_env`], that JSON
//! carries a reference to an environment variable instead of the credential's secret values
//! (see `kanister_agent::kando`, "Credentials by reference").

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use gotmpl::Value;
use serde::Serialize;

use super::gotime::GoTime;
use crate::crd::{Artifact, CredentialType, JsonMap, Location};

/// Key under which a struct-shaped map keeps its upstream JSON (not addressable as `.Field`).
pub(crate) const JSON_KEY: &str = " json";

/// Go's `time.RFC3339Nano`, the layout of `.Time`.
pub const RFC3339_NANO: &str = "2006-01-02T15:04:05.999999999Z07:00";

/// Everything a phase's templates can read.
#[derive(Debug, Clone, Default)]
pub struct TemplateParams {
    /// `.Object`: the object the action runs on, unstructured (JSON keys).
    pub object: JsonMap,
    /// `.StatefulSet`, when the action runs on a StatefulSet.
    pub stateful_set: Option<WorkloadParams>,
    /// `.Deployment`, when the action runs on a Deployment.
    pub deployment: Option<WorkloadParams>,
    /// `.DeploymentConfig`, when the action runs on an OpenShift DeploymentConfig.
    pub deployment_config: Option<WorkloadParams>,
    /// `.PVC`, when the action runs on a PersistentVolumeClaim.
    pub pvc: Option<ObjectParams>,
    /// `.Namespace`, when the action runs on a Namespace.
    pub namespace: Option<ObjectParams>,
    /// `.ArtifactsIn`: the input artifacts, by name.
    pub artifacts_in: BTreeMap<String, Artifact>,
    /// `.ConfigMaps`: the ConfigMaps passed by the ActionSet, by name.
    pub config_maps: BTreeMap<String, ConfigMapParams>,
    /// `.Secrets`: the Secrets passed by the ActionSet, by name.
    pub secrets: BTreeMap<String, SecretParams>,
    /// `.Time`: when the action started, RFC 3339 with nanoseconds, fixed for the whole action.
    pub time: String,
    /// `.Profile`: the resolved Profile (credentials read from their Secret).
    pub profile: Option<ProfileParams>,
    /// `.Options`: free-form values from the ActionSet.
    pub options: BTreeMap<String, String>,
    /// `.CurrentPhase`: the phase being rendered.
    pub current_phase: Option<PhaseParams>,
    /// `.Phases`: the phases that ran before this one, by name.
    pub phases: BTreeMap<String, PhaseParams>,
    /// `.DeferPhase`: the defer phase (its output, once it ran).
    pub defer_phase: PhaseParams,
    /// `.PodOverride`.
    pub pod_override: JsonMap,
    /// `.PodAnnotations`.
    pub pod_annotations: BTreeMap<String, String>,
    /// `.PodLabels`.
    pub pod_labels: BTreeMap<String, String>,
    /// Whether `toJson .Profile` (and `toJson .Profile.Credential`) leaves the credential's
    /// secret values out and references [`CREDENTIAL_ENV`] instead, for `kando` in a task pod
    /// that has the variable ([`ProfileParams::credential_json`]). The fields
    /// (`.Profile.Credential.KeyPair.Secret`, ...) keep their values either way.
    pub credential_from_env: bool,
    /// The Blueprint asked for the credential's values in `toJson .Profile` also in task pods
    /// (its `kanister.io/profile-credentials: inline` annotation, for images with upstream's
    /// kando): the engine then never sets [`Self::credential_from_env`].
    pub credentials_inline: bool,
}

/// The environment variable a credential reference names: `kando`'s
/// [`kanister_profile::CREDENTIAL_ENV`].
pub const CREDENTIAL_ENV: &str = kanister_profile::CREDENTIAL_ENV;

/// `.StatefulSet`, `.Deployment`, `.DeploymentConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadParams {
    /// `.Name`.
    pub name: String,
    /// `.Namespace`.
    pub namespace: String,
    /// `.Pods`: names of the running pods.
    pub pods: Vec<String>,
    /// `.Containers`: container names, one list per pod.
    pub containers: Vec<Vec<String>>,
    /// `.PersistentVolumeClaims`: pod name → PVC name → mount path.
    pub persistent_volume_claims: BTreeMap<String, BTreeMap<String, String>>,
}

/// `.PVC` and `.Namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectParams {
    /// `.Name`.
    pub name: String,
    /// `.Namespace`.
    pub namespace: String,
}

/// A ConfigMap as templates see it (`.ConfigMaps.<name>.Data.<key>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigMapParams {
    /// `.Name`.
    pub name: String,
    /// `.Namespace`.
    pub namespace: String,
    /// `.Data`.
    pub data: BTreeMap<String, String>,
}

/// A Secret as templates see it (`.Secrets.<name>.Data.<key>`, bytes).
///
/// `Debug` never prints the data, only its keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretParams {
    /// `.Name`.
    pub name: String,
    /// `.Namespace`.
    pub namespace: String,
    /// `.Type` (`Opaque`, ...).
    pub secret_type: String,
    /// `.Data`: the decoded values.
    pub data: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for SecretParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretParams")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("secret_type", &self.secret_type)
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `.Profile`: a Profile with its credentials resolved (upstream `param.Profile`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileParams {
    /// `.Location`.
    pub location: Location,
    /// `.Credential`.
    pub credential: CredentialParams,
    /// `.SkipSSLVerify`.
    pub skip_ssl_verify: bool,
    /// The Profile's `storeOptions` (network settings of the agents' store client; not a
    /// template field).
    pub store_options: BTreeMap<String, String>,
}

/// `.Profile.Credential`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialParams {
    /// `.Type`.
    pub credential_type: CredentialType,
    /// `.KeyPair`, for `keyPair` credentials.
    pub key_pair: Option<KeyPairParams>,
    /// `.Secret`, for `secret` credentials.
    pub secret: Option<SecretParams>,
}

/// `.Profile.Credential.KeyPair`: the id and the secret, read from their Secret.
///
/// `Debug` never prints the secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyPairParams {
    /// `.ID`.
    pub id: String,
    /// `.Secret`.
    pub secret: String,
}

impl fmt::Debug for KeyPairParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPairParams").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// `.Phases.<name>`, `.DeferPhase`, `.CurrentPhase`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseParams {
    /// `.Secrets`: Secrets the phase's object references resolved to.
    pub secrets: BTreeMap<String, SecretParams>,
    /// `.ConfigMaps`: ConfigMaps the phase's object references resolved to.
    pub config_maps: BTreeMap<String, ConfigMapParams>,
    /// `.Output`: what the phase's function returned.
    pub output: JsonMap,
}

impl TemplateParams {
    /// Parameters for an action that started at `started` (sets `.Time`).
    pub fn new(started: DateTime<Utc>) -> Self {
        TemplateParams { time: GoTime::from_utc(started).format(RFC3339_NANO), ..Default::default() }
    }

    /// The data templates are executed against.
    pub fn to_value(&self) -> Value {
        let workload = |w: &Option<WorkloadParams>| w.as_ref().map_or(Value::Nil, WorkloadParams::to_value);
        let object = |o: &Option<ObjectParams>| o.as_ref().map_or(Value::Nil, ObjectParams::to_value);
        map([
            ("Object", json_map_value(&self.object)),
            ("StatefulSet", workload(&self.stateful_set)),
            ("Deployment", workload(&self.deployment)),
            ("DeploymentConfig", workload(&self.deployment_config)),
            ("PVC", object(&self.pvc)),
            ("Namespace", object(&self.namespace)),
            ("ArtifactsIn", map_of(&self.artifacts_in, artifact_value)),
            ("ConfigMaps", map_of(&self.config_maps, ConfigMapParams::to_value)),
            ("Secrets", map_of(&self.secrets, SecretParams::to_value)),
            ("Time", string(&self.time)),
            ("Profile", self.profile.as_ref().map_or(Value::Nil, |p| p.to_value(self.credential_from_env))),
            ("Options", map_of(&self.options, |s| string(s))),
            ("CurrentPhase", self.current_phase.as_ref().map_or(Value::Nil, PhaseParams::to_value)),
            ("Phases", map_of(&self.phases, PhaseParams::to_value)),
            ("DeferPhase", self.defer_phase.to_value()),
            ("PodOverride", json_map_value(&self.pod_override)),
            ("PodAnnotations", map_of(&self.pod_annotations, |s| string(s))),
            ("PodLabels", map_of(&self.pod_labels, |s| string(s))),
        ])
    }

    /// Every secret value reachable from the parameters (Secret data, key pair secrets), so
    /// that error messages can be scrubbed of them.
    pub fn secret_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add_secret = |s: &SecretParams| {
            out.extend(s.data.values().map(|v| String::from_utf8_lossy(v).into_owned()));
        };
        self.secrets.values().for_each(&mut add_secret);
        for phase in self.phases.values().chain([&self.defer_phase]).chain(&self.current_phase) {
            phase.secrets.values().for_each(&mut add_secret);
        }
        if let Some(profile) = &self.profile {
            if let Some(secret) = &profile.credential.secret {
                add_secret(secret);
            }
            if let Some(kp) = &profile.credential.key_pair {
                out.push(kp.secret.clone());
            }
        }
        out
    }
}

impl WorkloadParams {
    fn to_value(&self) -> Value {
        map([
            ("Name", string(&self.name)),
            ("Namespace", string(&self.namespace)),
            ("Pods", list(self.pods.iter().map(|p| string(p)))),
            ("Containers", list(self.containers.iter().map(|c| list(c.iter().map(|s| string(s)))))),
            ("PersistentVolumeClaims", map_of(&self.persistent_volume_claims, |m| map_of(m, |s| string(s)))),
        ])
    }
}

impl ObjectParams {
    fn to_value(&self) -> Value {
        map([("Name", string(&self.name)), ("Namespace", string(&self.namespace))])
    }
}

impl ConfigMapParams {
    fn to_value(&self) -> Value {
        map([
            ("Name", string(&self.name)),
            ("Namespace", string(&self.namespace)),
            ("Data", map_of(&self.data, |s| string(s))),
        ])
    }
}

/// The JSON of a Kubernetes object's metadata, as in a fetched object.
#[derive(Serialize)]
struct GoObjectMeta<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: &'a str,
}

#[derive(Serialize)]
struct GoSecret<'a> {
    metadata: GoObjectMeta<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    data: BTreeMap<&'a str, String>,
    #[serde(rename = "type", skip_serializing_if = "str::is_empty")]
    secret_type: &'a str,
}

impl SecretParams {
    fn go_json(&self) -> GoSecret<'_> {
        GoSecret {
            metadata: GoObjectMeta { name: &self.name, namespace: &self.namespace },
            data: self
                .data
                .iter()
                .map(|(k, v)| (k.as_str(), base64::engine::general_purpose::STANDARD.encode(v)))
                .collect(),
            secret_type: &self.secret_type,
        }
    }

    fn to_value(&self) -> Value {
        with_json(
            [
                ("Name", string(&self.name)),
                ("Namespace", string(&self.namespace)),
                ("Type", string(&self.secret_type)),
                ("Data", map_of(&self.data, |b| bytes(b))),
                ("StringData", map::<0>([])),
                ("Labels", map::<0>([])),
                ("Annotations", map::<0>([])),
            ],
            &self.go_json(),
        )
    }
}

/// `crv1alpha1.Location` keeps its JSON tags in Go, so it marshals with lower-case keys.
#[derive(Serialize)]
struct GoLocation<'a> {
    #[serde(rename = "type")]
    location_type: &'a str,
    bucket: &'a str,
    endpoint: &'a str,
    prefix: &'a str,
    region: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
}

/// `param.Credential` has no JSON tags: Go field names, `null` for nil pointers.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GoCredential<'a> {
    #[serde(rename = "Type")]
    credential_type: &'a str,
    key_pair: Option<GoKeyPair<'a>>,
    secret: Option<GoSecret<'a>>,
    kopia_server_secret: Option<()>,
    /// Ours: the credential's values are in this environment variable (`kando` reads it).
    #[serde(rename = "FromEnv", skip_serializing_if = "Option::is_none")]
    from_env: Option<&'a str>,
}

#[derive(Serialize)]
struct GoKeyPair<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    #[serde(rename = "Secret")]
    secret: &'a str,
}

#[derive(Serialize)]
struct GoProfile<'a> {
    #[serde(rename = "Location")]
    location: GoLocation<'a>,
    #[serde(rename = "Credential")]
    credential: GoCredential<'a>,
    #[serde(rename = "SkipSSLVerify")]
    skip_ssl_verify: bool,
    /// Our addition, for our kando: the Profile's `storeOptions` (upstream's kando ignores it).
    #[serde(rename = "StoreOptions", skip_serializing_if = "BTreeMap::is_empty")]
    store_options: &'a BTreeMap<String, String>,
}

impl ProfileParams {
    fn go_location(&self) -> GoLocation<'_> {
        let l = &self.location;
        GoLocation {
            location_type: l.location_type.as_str(),
            bucket: &l.bucket,
            endpoint: &l.endpoint,
            prefix: &l.prefix,
            region: &l.region,
            path: l.path.as_deref(),
        }
    }

    /// The credential as upstream's JSON; with `by_reference` (and secret values to hide), the
    /// values left out and [`CREDENTIAL_ENV`] named instead.
    fn go_credential(&self, by_reference: bool) -> GoCredential<'_> {
        let c = &self.credential;
        let hide = by_reference && self.has_credential_values();
        GoCredential {
            credential_type: c.credential_type.as_str(),
            key_pair: c
                .key_pair
                .as_ref()
                .map(|kp| GoKeyPair { id: &kp.id, secret: if hide { "" } else { &kp.secret } }),
            secret: c.secret.as_ref().map(|s| {
                let mut json = s.go_json();
                if hide {
                    json.data.clear();
                }
                json
            }),
            kopia_server_secret: None,
            from_env: hide.then_some(CREDENTIAL_ENV),
        }
    }

    /// `toJson .Profile` with the credential's values in it, as kando would read it. Secret.
    pub fn upstream_json(&self) -> zeroize::Zeroizing<String> {
        let go = GoProfile {
            location: self.go_location(),
            credential: self.go_credential(false),
            skip_ssl_verify: self.skip_ssl_verify,
            store_options: &self.store_options,
        };
        // Serializing these plain structs cannot fail (string keys, no non-finite floats).
        zeroize::Zeroizing::new(serde_json::to_string(&go).unwrap_or_default())
    }

    /// Whether the credential holds secret values (a key pair's secret, a Secret's data).
    pub fn has_credential_values(&self) -> bool {
        let c = &self.credential;
        c.key_pair.as_ref().is_some_and(|kp| !kp.secret.is_empty())
            || c.secret.as_ref().is_some_and(|s| !s.data.is_empty())
    }

    /// The credential as upstream's JSON, with its secret values: what [`CREDENTIAL_ENV`] holds
    /// in a task pod whose arguments reference it. Secret.
    pub fn credential_json(&self) -> zeroize::Zeroizing<String> {
        // Serializing these plain structs cannot fail (string keys, no non-finite floats).
        zeroize::Zeroizing::new(serde_json::to_string(&self.go_credential(false)).unwrap_or_default())
    }

    fn to_value(&self, credential_by_reference: bool) -> Value {
        let l = &self.location;
        let location = with_json(
            [
                ("Type", string(l.location_type.as_str())),
                ("Bucket", string(&l.bucket)),
                ("Endpoint", string(&l.endpoint)),
                ("Prefix", string(&l.prefix)),
                ("Region", string(&l.region)),
                ("Path", string(l.path.as_deref().unwrap_or_default())),
            ],
            &self.go_location(),
        );
        let c = &self.credential;
        let key_pair = c.key_pair.as_ref().map_or(Value::Nil, |kp| {
            with_json(
                [("ID", string(&kp.id)), ("Secret", string(&kp.secret))],
                &GoKeyPair { id: &kp.id, secret: &kp.secret },
            )
        });
        let credential = with_json(
            [
                ("Type", string(c.credential_type.as_str())),
                ("KeyPair", key_pair),
                ("Secret", c.secret.as_ref().map_or(Value::Nil, SecretParams::to_value)),
                ("KopiaServerSecret", Value::Nil),
            ],
            &self.go_credential(credential_by_reference),
        );
        with_json(
            [("Location", location), ("Credential", credential), ("SkipSSLVerify", Value::Bool(self.skip_ssl_verify))],
            &GoProfile {
                location: self.go_location(),
                credential: self.go_credential(credential_by_reference),
                skip_ssl_verify: self.skip_ssl_verify,
                store_options: &self.store_options,
            },
        )
    }
}

impl PhaseParams {
    /// A phase that produced `output`.
    pub fn with_output(output: JsonMap) -> Self {
        PhaseParams { output, ..Default::default() }
    }

    fn to_value(&self) -> Value {
        map([
            ("Secrets", map_of(&self.secrets, SecretParams::to_value)),
            ("ConfigMaps", map_of(&self.config_maps, ConfigMapParams::to_value)),
            ("Output", json_map_value(&self.output)),
        ])
    }
}

fn artifact_value(a: &Artifact) -> Value {
    map([("KeyValue", map_of(&a.key_value, |s| string(s))), ("KopiaSnapshot", string(&a.kopia_snapshot))])
}

pub(crate) fn string(s: &str) -> Value {
    Value::String(Arc::from(s))
}

/// Bytes as Go's `[]byte`: a list of `uint8`.
pub(crate) fn bytes(b: &[u8]) -> Value {
    Value::List(b.iter().map(|&x| Value::Uint(u64::from(x))).collect())
}

pub(crate) fn list(items: impl IntoIterator<Item = Value>) -> Value {
    Value::List(items.into_iter().collect())
}

pub(crate) fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(Arc::new(entries.into_iter().map(|(k, v)| (Arc::from(k), v)).collect()))
}

fn map_of<T>(m: &BTreeMap<String, T>, f: impl Fn(&T) -> Value) -> Value {
    Value::Map(Arc::new(m.iter().map(|(k, v)| (Arc::from(k.as_str()), f(v))).collect()))
}

/// A struct-shaped map that also carries its upstream JSON for `toJson`.
fn with_json<const N: usize>(fields: [(&str, Value); N], json: &impl Serialize) -> Value {
    let mut m: BTreeMap<Arc<str>, Value> = fields.into_iter().map(|(k, v)| (Arc::from(k), v)).collect();
    // Serializing these plain structs cannot fail (string keys, no non-finite floats).
    if let Ok(text) = serde_json::to_string(json) {
        m.insert(Arc::from(JSON_KEY), string(&text));
    }
    Value::Map(Arc::new(m))
}

/// Converts JSON to template data: integers stay integers, as in Go's unstructured objects.
pub fn json_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_u64().map(Value::Uint))
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        serde_json::Value::String(s) => string(s),
        serde_json::Value::Array(a) => list(a.iter().map(json_value)),
        serde_json::Value::Object(o) => {
            Value::Map(Arc::new(o.iter().map(|(k, v)| (Arc::from(k.as_str()), json_value(v))).collect()))
        }
    }
}

fn json_map_value(m: &JsonMap) -> Value {
    map_of(m, json_value)
}
