//! `ActionSet`: a request to run actions of a Blueprint on objects, and the record of the run.
//!
//! `spec.actions[]` says what to run; `status` is written only by the coordinator (through the
//! status subresource, an addition over upstream, which has none) and keeps upstream's shape:
//! `state`, `actions[]` with phases, outputs and artifacts, `error.message` and `progress`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Artifact, JsonMap, ObjectReference, is_default, preserve_unknown_object};

/// What an ActionSet asks for: one or more actions.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cr.kanister.io",
    version = "v1alpha1",
    kind = "ActionSet",
    plural = "actionsets",
    namespaced,
    doc = "A request to run Blueprint actions on objects, and the record of the run",
    status = "ActionSetStatus",
    printcolumn = r#"{"name":"Progress","type":"string","description":"Progress of completion in percentage","jsonPath":".status.progress.percentCompleted"}"#,
    printcolumn = r#"{"name":"Running Phase","type":"string","description":"The phase being run; empty once the actionset is done","jsonPath":".status.progress.runningPhase"}"#,
    printcolumn = r#"{"name":"Last Transition Time","type":"string","format":"date-time","description":"Progress last transition time","jsonPath":".status.progress.lastTransitionTime"}"#,
    printcolumn = r#"{"name":"State","type":"string","description":"State of the actionset","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"SizeDownloadedB","type":"integer","priority":1,"description":"Amount of data downloaded","jsonPath":".status.progress.sizeDownloadedB"}"#,
    printcolumn = r#"{"name":"SizeUploadedB","type":"integer","priority":1,"description":"Amount of data uploaded","jsonPath":".status.progress.sizeUploadedB"}"#,
    printcolumn = r#"{"name":"EstimatedDownloadSizeB","type":"integer","priority":1,"description":"Estimated amount of data to download","jsonPath":".status.progress.estimatedDownloadSizeB"}"#,
    printcolumn = r#"{"name":"EstimatedUploadSizeB","type":"integer","priority":1,"description":"Estimated amount of data to upload","jsonPath":".status.progress.estimatedUploadSizeB"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ActionSetSpec {
    /// The actions to run, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionSpec>,
    /// Addition: set to `true` to cancel the ActionSet. The running phase is stopped, its pods
    /// are deleted, the defer phase still runs, and the ActionSet ends `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
    /// Addition: how long the whole ActionSet may run (Go duration: `30m`, `1h30m`); the
    /// coordinator's default when absent. On expiry the ActionSet is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// One action to run: which Blueprint action, on which object, with which inputs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionSpec {
    /// Name of the Blueprint action (`backup`, `restore`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The object the action runs on.
    pub object: ObjectReference,
    /// Name of the Blueprint (in the ActionSet's namespace).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blueprint: String,
    /// Input artifacts (`.ArtifactsIn`), usually copied from a previous ActionSet's output.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, Artifact>,
    /// ConfigMaps passed to the Blueprint (`.ConfigMaps.<name>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_maps: BTreeMap<String, ObjectReference>,
    /// Secrets passed to the Blueprint (`.Secrets.<name>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, ObjectReference>,
    /// The Profile: where artifacts go and the credentials to reach them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ObjectReference>,
    /// Pod spec fields merged into the pods that functions create (`.PodOverride`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub pod_override: JsonMap,
    /// Free-form values for the Blueprint (`.Options`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Preferred version of the Kanister functions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preferred_version: String,
    /// Labels added to pods that functions create (`.PodLabels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Annotations added to pods that functions create (`.PodAnnotations`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
}

/// State of an ActionSet, an action or a phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not started yet.
    #[default]
    Pending,
    /// Running now.
    Running,
    /// Ended unsuccessfully; see `error.message`.
    Failed,
    /// Ended successfully.
    Complete,
}

impl State {
    /// Whether the state is final (`failed` or `complete`).
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Failed | State::Complete)
    }
}

/// The record of an ActionSet run, written by the coordinator only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionSetStatus {
    /// Overall state.
    pub state: State,
    /// One entry per `spec.actions[]`, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionStatus>,
    /// Why the ActionSet failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusError>,
    /// Progress of the whole ActionSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ActionProgress>,
}

/// An error message in a status (upstream `error.message`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct StatusError {
    /// The message shown to the user.
    pub message: String,
}

/// The record of one action.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionStatus {
    /// Name of the action.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The object the action ran on.
    pub object: ObjectReference,
    /// Name of the Blueprint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blueprint: String,
    /// The phases, in execution order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseStatus>,
    /// Output artifacts, rendered once the phases completed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, Artifact>,
    /// The defer phase, if the Blueprint action has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defer_phase: Option<PhaseStatus>,
}

/// The record of one phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseStatus {
    /// Name of the phase.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// State of the phase.
    pub state: State,
    /// Output of the function (`.Phases.<name>.Output`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub output: JsonMap,
    /// Progress of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<PhaseProgress>,
}

/// Progress of a whole action set (upstream `ActionProgress`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionProgress {
    /// The phase being run; empty when none is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub running_phase: String,
    /// Completed share of the phases, in percent (a string, as upstream).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub percent_completed: String,
    /// Bytes downloaded so far.
    #[serde(rename = "sizeDownloadedB", default, skip_serializing_if = "is_default")]
    pub size_downloaded_b: i64,
    /// Bytes uploaded so far.
    #[serde(rename = "sizeUploadedB", default, skip_serializing_if = "is_default")]
    pub size_uploaded_b: i64,
    /// Estimated total bytes to download.
    #[serde(rename = "estimatedDownloadSizeB", default, skip_serializing_if = "is_default")]
    pub estimated_download_size_b: i64,
    /// Estimated total bytes to upload.
    #[serde(rename = "estimatedUploadSizeB", default, skip_serializing_if = "is_default")]
    pub estimated_upload_size_b: i64,
    /// When the progress last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// Progress of one phase (upstream `PhaseProgress`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseProgress {
    /// Progress of the phase, in percent (a string, as upstream).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub progress_percent: String,
    /// Bytes downloaded so far.
    #[serde(rename = "sizeDownloadedB", default, skip_serializing_if = "is_default")]
    pub size_downloaded_b: i64,
    /// Bytes uploaded so far.
    #[serde(rename = "sizeUploadedB", default, skip_serializing_if = "is_default")]
    pub size_uploaded_b: i64,
    /// Estimated total bytes to download.
    #[serde(rename = "estimatedDownloadSizeB", default, skip_serializing_if = "is_default")]
    pub estimated_download_size_b: i64,
    /// Estimated total bytes to upload.
    #[serde(rename = "estimatedUploadSizeB", default, skip_serializing_if = "is_default")]
    pub estimated_upload_size_b: i64,
    /// Estimated seconds left. The JSON name keeps upstream's spelling, `estinatedTimeSeconds`.
    #[serde(rename = "estinatedTimeSeconds", default, skip_serializing_if = "is_default")]
    pub estimated_time_seconds: i64,
    /// When the progress last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}
