//! `Blueprint`: how to run each action (backup, restore, delete, ...) on a kind of workload.
//!
//! Upstream keeps `actions` at the top level of the object; so do we.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Artifact, JsonMap, ObjectReference, preserve_unknown_object};

/// The fields of a Blueprint (top level of the object, no `spec` on the wire).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cr.kanister.io",
    version = "v1alpha1",
    kind = "Blueprint",
    plural = "blueprints",
    namespaced,
    doc = "How to run each action (backup, restore, delete, ...) on a kind of workload",
    no_spec
)]
#[serde(rename_all = "camelCase")]
pub struct BlueprintSpec {
    /// The actions of the Blueprint, by action name (`backup`, `restore`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actions: BTreeMap<String, BlueprintAction>,
}

/// The phases that make up one action, and what the action consumes and produces.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueprintAction {
    /// Name of the action (upstream repeats the map key here; may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Kind of object the action runs on (`StatefulSet`, `Deployment`, `Namespace`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Names of the ConfigMaps the ActionSet must provide (`.ConfigMaps.<name>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_map_names: Vec<String>,
    /// Names of the Secrets the ActionSet must provide (`.Secrets.<name>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_names: Vec<String>,
    /// Names of the input artifacts this action reads (`.ArtifactsIn.<name>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_artifact_names: Vec<String>,
    /// Output artifacts, rendered after the phases ran (templates over `.Phases`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub output_artifacts: BTreeMap<String, Artifact>,
    /// The phases, run in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<BlueprintPhase>,
    /// A phase that runs after the phases whatever their outcome (cleanup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defer_phase: Option<BlueprintPhase>,
}

/// One step of an action: a Kanister function and its (templated) arguments.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueprintPhase {
    /// Name of the Kanister function (`KubeTask`, `BackupData`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub func: String,
    /// Name of the phase, unique within the action (`.Phases.<name>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Named references to objects the arguments may use (upstream field `objects`).
    #[serde(rename = "objects", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub object_refs: BTreeMap<String, ObjectReference>,
    /// Arguments of the function; string leaves are templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub args: JsonMap,
    /// Addition: how long the phase may run (Go duration: `10m`); the coordinator's default
    /// when absent. On expiry the phase fails and its pods are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

impl BlueprintAction {
    /// The phases followed by the defer phase, if any, in execution order.
    pub fn all_phases(&self) -> impl Iterator<Item = &BlueprintPhase> {
        self.phases.iter().chain(self.defer_phase.iter())
    }
}
