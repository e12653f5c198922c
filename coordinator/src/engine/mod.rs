//! The phase engine: runs ActionSets on a [`Cluster`].
//!
//! [`Engine::reconcile`] is the one entry point, called by the controller for every change of an
//! ActionSet and by [`Engine::recover`] at start-up. It initialises the status (phases pending,
//! artifact templates), starts a run, cancels one, or resumes or fails an ActionSet left
//! `running` by a previous coordinator.
//!
//! A run executes the ActionSet's actions concurrently and each action's phases in order. Each
//! phase's object references and arguments are rendered just before it runs (so
//! `{{ .Phases.earlier.Output.key }}` works), the function runs under the phase timeout and the
//! run's cancellation, the pods it created are deleted, and the status records state, running
//! phase, outputs, percent progress, last transition time and errors (with the exit code and the
//! last log lines of a failing command). The defer phase runs whatever happened before it, and
//! the output artifacts are rendered at the end of a successful action.
//!
//! # Guarantees
//! - Every run ends with the ActionSet `complete` or `failed` with `error.message` saying why,
//!   unless the engine itself is stopped ([`Engine::shutdown`]); then the next engine's
//!   [`Engine::recover`] finishes it: an ActionSet whose interrupted phase had not started yet is
//!   resumed from that phase (completed phases are not run again, their outputs are restored from
//!   the status); one whose phase was `running` is failed with a reason naming the phase, and its
//!   defer phase is run. No ActionSet stays `running` forever.
//! - A phase is never run twice by the engine (a phase interrupted by a restart is failed, not
//!   retried), because functions such as a restore need not be idempotent. The defer phase is
//!   the exception: it is re-run after a restart, so it should be written as idempotent cleanup.
//! - Pods created by a phase are deleted when the phase ends: success, failure, timeout or
//!   cancellation.
//! - The defer phase runs after a failure, a timeout and a cancellation (it has its own phase
//!   timeout and is not cancelled by the ActionSet's cancellation).
//! - Status writes go through [`crate::cluster::write_status`], which retries conflicts; the
//!   engine is the only writer of an ActionSet's status.
//! - `reconcile` is idempotent and cheap: calling it again for a running ActionSet does nothing.
//!
//! # Assumptions
//! - One engine instance is active per ActionSet namespace at a time (leader election or a
//!   single replica).
//! - The Blueprint does not change while an ActionSet using it runs (it is read at each action's
//!   start and at recovery).
//!
//! # Caveats
//! - Secret values are scrubbed from every error message, log tail and event the engine writes,
//!   but a command that prints a secret in a transformed form (e.g. base64) cannot be scrubbed.
//! - `.Time` is the time the action started in this engine instance; a resumed action gets a
//!   new `.Time`.

pub mod agent;
pub mod context;
mod csi;
mod data;
pub mod duration;
pub mod functions;
pub mod maintenance;
mod metrics;
mod run;
use run::Run;
pub mod params;
mod paths;
mod repo_tasks;
pub mod repokey;
pub mod repository;
mod streams;
pub(crate) mod task;
mod volumes;
mod wait;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::cluster::{self, Cluster, Event, EventType, ObjectRef, get_typed, write_status};
use crate::crd::actionset::{ActionProgress, ActionStatus, PhaseStatus, StatusError};
use crate::crd::{ActionSet, ActionSetStatus, Blueprint, BlueprintAction, BlueprintPhase, State};
use crate::render::Renderer;

/// Errors of [`Engine::reconcile`] (failures of a run end up in the ActionSet's status instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster failed while reading or initialising the ActionSet.
    #[error("failed to reconcile actionset {namespace}/{name}")]
    Cluster {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The cause.
        #[source]
        source: cluster::Error,
    },
}

impl Error {
    /// Whether reconciling again later may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Cluster { source, .. } => source.is_retryable(),
        }
    }
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a phase failed.
#[derive(Debug, thiserror::Error)]
enum PhaseError {
    #[error(transparent)]
    Render(#[from] crate::render::Error),
    #[error(transparent)]
    Params(#[from] params::Error),
    #[error(transparent)]
    Function(#[from] functions::Error),
    #[error("invalid phase timeout {0:?}: expected a Go duration such as 10m")]
    BadTimeout(String),
    #[error("timed out after {0:?} (phase timeout)")]
    Timeout(Duration),
    #[error("{0}")]
    Cancelled(String),
    #[error("internal error: function {function} panicked ({message}); please report it")]
    Panic { function: String, message: String },
}

/// A Blueprint's annotation choosing how `{{ toJson .Profile }}` renders the credential in the
/// arguments of task-pod functions: `reference` (the default: the values stay in a Secret, the
/// JSON names `KANISTER_PROFILE_CREDENTIAL`, which only this project's kando resolves) or
/// `inline` (as upstream: the values in the JSON, so on the command line of `kando` in the pod;
/// for images that carry upstream's kando).
pub const PROFILE_CREDENTIALS_ANNOTATION: &str = "kanister.io/profile-credentials";

/// An action found in its Blueprint.
struct FoundAction {
    blueprint: String,
    action: BlueprintAction,
    /// The Blueprint asks for credential values in `toJson .Profile`
    /// ([`PROFILE_CREDENTIALS_ANNOTATION`]).
    inline_credentials: bool,
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Timeout of an ActionSet without `spec.timeout`.
    pub actionset_timeout: Duration,
    /// Timeout of a phase without `timeout`.
    pub phase_timeout: Duration,
    /// How often a run re-reads its ActionSet to notice deletion and `spec.cancel`.
    pub watch_interval: Duration,
    /// Poll interval of `Wait` conditions.
    pub poll_interval: Duration,
    /// How long a pod or a workload may take to become ready.
    pub ready_timeout: Duration,
    /// How many log lines an error message shows.
    pub log_tail_lines: usize,
    /// How the engine reaches agent sidecars (`BackupStream`, `RestoreStream`).
    pub agent: agent::AgentClientConfig,
    /// The shortest time between two progress writes of a running phase.
    pub progress_interval: Duration,
    /// Image of task pods that run the agent (`CopyVolumeData`) when the phase names none:
    /// the kanister-tools image.
    pub tools_image: String,
    /// Memory limit of the agent's task pods for repository work (`1Gi`; empty: none).
    pub task_memory_limit: String,
}

/// Why the run of a deleted ActionSet stopped (its defer phase still runs).
pub const DELETED: &str = "cancelled: the ActionSet was deleted";

/// Label of task pods: the name of their ActionSet (the controller watches pods by it).
pub const ACTIONSET_LABEL: &str = "kanister.io/actionset";
/// Label of task pods: the UID of their ActionSet (a later ActionSet may reuse the name).
pub const ACTIONSET_UID_LABEL: &str = "kanister.io/actionset-uid";

/// The default [`EngineConfig::tools_image`]: the tools image of this release.
pub const DEFAULT_TOOLS_IMAGE: &str = concat!("ghcr.io/kanister-rs/kanister-tools:", env!("CARGO_PKG_VERSION"));

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            actionset_timeout: Duration::from_secs(24 * 3600),
            phase_timeout: Duration::from_secs(6 * 3600),
            watch_interval: Duration::from_secs(5),
            poll_interval: Duration::from_secs(2),
            ready_timeout: Duration::from_secs(15 * 60),
            log_tail_lines: 10,
            agent: agent::AgentClientConfig::default(),
            progress_interval: Duration::from_secs(1),
            tools_image: DEFAULT_TOOLS_IMAGE.into(),
            task_memory_limit: "1Gi".into(),
        }
    }
}

/// What [`Engine::reconcile`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The ActionSet does not exist (a run of it, if any, was cancelled).
    Missing,
    /// The status was initialised but the ActionSet cannot run (its status says why).
    Rejected,
    /// A run was started (fresh, resumed or finishing a recovered ActionSet).
    Started,
    /// A run is in progress; nothing to do.
    Running,
    /// The running run was asked to cancel.
    Cancelling,
    /// The ActionSet is complete or failed; nothing to do.
    Finished,
}

#[derive(Debug, Default)]
struct CancelState {
    token: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl CancelState {
    /// Cancels with `reason` unless already cancelled; whether this call did.
    fn cancel(&self, reason: &str) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        let first = r.is_none();
        if first {
            *r = Some(reason.to_string());
        }
        self.token.cancel();
        first
    }

    fn reason(&self) -> String {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(|| "cancelled".into())
    }
}

struct RunHandle {
    cancel: Arc<CancelState>,
    done: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner<C> {
    cluster: Arc<C>,
    config: EngineConfig,
    renderer: Renderer,
    runs: Mutex<HashMap<(String, String), RunHandle>>,
    metrics: metrics::Metrics,
}

/// Runs ActionSets. Cheap to clone (shared state).
pub struct Engine<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Engine<C> {
    fn clone(&self) -> Self {
        Engine { inner: self.inner.clone() }
    }
}

impl<C> std::fmt::Debug for Engine<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replaces each secret (4 bytes or longer) by `<redacted>`.
fn redact(mut text: String, secrets: &[String]) -> String {
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "<redacted>");
        }
    }
    text
}

/// The percent of regular phases completed, over all actions, as upstream (an integer string).
fn percent_completed(status: &ActionSetStatus) -> String {
    let phases: Vec<&PhaseStatus> = status.actions.iter().flat_map(|a| &a.phases).collect();
    if phases.is_empty() {
        return if status.state == State::Complete { "100".into() } else { "0".into() };
    }
    let done = phases.iter().filter(|p| p.state == State::Complete).count();
    (done * 100 / phases.len()).to_string()
}

impl<C: Cluster> Engine<C> {
    /// An engine on `cluster`.
    pub fn new(cluster: Arc<C>, config: EngineConfig) -> Self {
        Self::with_renderer(cluster, config, Renderer::new())
    }

    /// An engine with a given renderer (tests fix its clock).
    pub fn with_renderer(cluster: Arc<C>, config: EngineConfig, renderer: Renderer) -> Self {
        Engine {
            inner: Arc::new(Inner {
                cluster,
                config,
                renderer,
                runs: Mutex::new(HashMap::new()),
                metrics: metrics::Metrics::default(),
            }),
        }
    }

    /// The cluster.
    pub fn cluster(&self) -> &Arc<C> {
        &self.inner.cluster
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Brings one ActionSet forward: initialise, start, cancel, recover or nothing. Idempotent.
    pub async fn reconcile(&self, namespace: &str, name: &str) -> Result<Outcome> {
        let key = (namespace.to_string(), name.to_string());
        let err = |source| Error::Cluster { namespace: namespace.into(), name: name.into(), source };
        let actionset = match self.inner.cluster.get_actionset(namespace, name).await {
            Ok(a) => a,
            Err(cluster::Error::NotFound(_)) => {
                if let Some(h) = lock(&self.inner.runs).get(&key)
                    && !*h.done.borrow()
                    && h.cancel.cancel(DELETED)
                {
                    tracing::info!(actionset = %key.1, namespace = %key.0, "ActionSet deleted: stopping its run");
                }
                return Ok(Outcome::Missing);
            }
            Err(e) => return Err(err(e)),
        };
        {
            let runs = lock(&self.inner.runs);
            if let Some(h) = runs.get(&key)
                && !*h.done.borrow()
            {
                if actionset.spec.cancel == Some(true) {
                    h.cancel.cancel("cancelled: spec.cancel is true");
                    return Ok(Outcome::Cancelling);
                }
                return Ok(Outcome::Running);
            }
        }
        let rv = actionset.metadata.resource_version.clone().unwrap_or_default();
        let (status, recover) = match &actionset.status {
            None => {
                let status = self.initial_status(&actionset).await;
                let rejected = status.state == State::Failed;
                write_status(&*self.inner.cluster, namespace, name, &rv, &status).await.map_err(err)?;
                if rejected {
                    let note = status.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
                    self.event(&actionset, EventType::Warning, "ActionSetFailed", &note).await;
                    self.inner.metrics.finished(metrics::Finished::Failed);
                    return Ok(Outcome::Rejected);
                }
                // Re-read for the new resource version.
                let actionset = self.inner.cluster.get_actionset(namespace, name).await.map_err(err)?;
                return Ok(self.start(actionset, status, false));
            }
            Some(s) if s.state.is_terminal() => return Ok(Outcome::Finished),
            Some(s) if s.state == State::Running => (s.clone(), true),
            Some(s) => (s.clone(), false),
        };
        Ok(self.start(actionset, status, recover))
    }

    /// Reconciles every ActionSet of `namespace` (all when empty) that is not finished: used at
    /// start-up so that ActionSets left `running` by a previous instance are resumed or failed.
    /// Returns how many runs were started.
    pub async fn recover(&self, namespace: &str) -> Result<usize> {
        let all = self.inner.cluster.list_actionsets(namespace).await.map_err(|source| Error::Cluster {
            namespace: namespace.into(),
            name: String::new(),
            source,
        })?;
        let mut started = 0;
        for a in all {
            if a.status.as_ref().is_some_and(|s| s.state.is_terminal()) {
                continue;
            }
            let ns = a.metadata.namespace.clone().unwrap_or_default();
            let name = a.metadata.name.clone().unwrap_or_default();
            match self.reconcile(&ns, &name).await {
                Ok(Outcome::Started) => started += 1,
                Ok(_) => {}
                Err(e) => tracing::warn!(actionset = %name, namespace = %ns, error = %e, "recovery failed"),
            }
        }
        Ok(started)
    }

    /// Asks a run to stop: the running phase is interrupted, its pods deleted, the defer phase
    /// runs, and the ActionSet ends `failed` with `reason`. Returns whether this call stopped a
    /// run (false: none in progress, or it was stopped already).
    pub fn cancel(&self, namespace: &str, name: &str, reason: &str) -> bool {
        match lock(&self.inner.runs).get(&(namespace.to_string(), name.to_string())) {
            Some(h) => !*h.done.borrow() && h.cancel.cancel(reason),
            None => false,
        }
    }

    /// Whether a run of the ActionSet is in progress in this engine.
    pub fn is_running(&self, namespace: &str, name: &str) -> bool {
        lock(&self.inner.runs).get(&(namespace.to_string(), name.to_string())).is_some_and(|h| !*h.done.borrow())
    }

    /// Waits until the run of an ActionSet (if any) ended.
    pub async fn wait(&self, namespace: &str, name: &str) {
        let rx = lock(&self.inner.runs).get(&(namespace.to_string(), name.to_string())).map(|h| h.done.clone());
        if let Some(mut rx) = rx {
            // An error means the run's task is gone: it ended too.
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    /// Stops every run at once, writing nothing more (as a crash or a SIGKILL would). Statuses
    /// stay as they were; the next engine's [`Engine::recover`] finishes them.
    pub fn shutdown(&self) {
        for (_, h) in lock(&self.inner.runs).drain() {
            h.task.abort();
        }
    }

    /// The metrics in the Prometheus text format (see [`metrics`]).
    pub fn metrics_text(&self) -> String {
        let running = lock(&self.inner.runs).values().filter(|h| !*h.done.borrow()).count();
        self.inner.metrics.encode(running)
    }

    async fn event(&self, actionset: &ActionSet, type_: EventType, reason: &str, note: &str) {
        let event = Event { type_, reason: reason.into(), note: note.into(), action: "Run".into() };
        self.inner.cluster.record_event(actionset, event).await;
    }

    /// The status of a new ActionSet: one action status per action, phases pending, artifact
    /// templates copied; or `failed` with the reason when a Blueprint or action is missing.
    async fn initial_status(&self, actionset: &ActionSet) -> ActionSetStatus {
        let namespace = actionset.metadata.namespace.clone().unwrap_or_default();
        let mut status = ActionSetStatus { state: State::Pending, ..Default::default() };
        for a in &actionset.spec.actions {
            let bpa = match self.blueprint_action(&namespace, &a.blueprint, &a.name).await {
                Ok(found) => found.action,
                Err(message) => {
                    status.state = State::Failed;
                    status.error = Some(StatusError { message });
                    status.actions.clear();
                    return status;
                }
            };
            let pending =
                |p: &BlueprintPhase| PhaseStatus { name: p.name.clone(), state: State::Pending, ..Default::default() };
            status.actions.push(ActionStatus {
                name: a.name.clone(),
                object: a.object.clone(),
                blueprint: a.blueprint.clone(),
                phases: bpa.phases.iter().map(pending).collect(),
                artifacts: bpa.output_artifacts.clone(),
                defer_phase: bpa.defer_phase.as_ref().map(pending),
            });
        }
        if actionset.spec.actions.is_empty() {
            status.state = State::Failed;
            status.error = Some(StatusError { message: "the actionset has no actions".into() });
        }
        status.progress = Some(ActionProgress {
            percent_completed: "0".into(),
            last_transition_time: Some(now()),
            ..Default::default()
        });
        status
    }

    async fn blueprint_action(
        &self,
        namespace: &str,
        blueprint: &str,
        action: &str,
    ) -> std::result::Result<FoundAction, String> {
        if blueprint.is_empty() {
            return Err(format!("action {action:?}: blueprint is not specified"));
        }
        let object = ObjectRef {
            api_version: format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
            ..ObjectRef::new("Blueprint", namespace, blueprint)
        };
        let bp: Blueprint = get_typed(&*self.inner.cluster, &object)
            .await
            .map_err(|e| format!("action {action:?}: failed to read blueprint {blueprint:?}: {e}"))?;
        let bpa = bp.spec.actions.get(action).cloned().ok_or_else(|| {
            format!("action {action:?} not found in blueprint {blueprint:?} (it has: {})", {
                let names: Vec<&str> = bp.spec.actions.keys().map(String::as_str).collect();
                names.join(", ")
            })
        })?;
        let annotation = bp.metadata.annotations.as_ref().and_then(|a| a.get(PROFILE_CREDENTIALS_ANNOTATION));
        let inline_credentials = match annotation.map(String::as_str) {
            None | Some("reference") => false,
            Some("inline") => true,
            Some(other) => {
                return Err(format!(
                    "blueprint {blueprint:?}: annotation {PROFILE_CREDENTIALS_ANNOTATION}={other:?}: use \"reference\" \
                     (the default) or \"inline\""
                ));
            }
        };
        Ok(FoundAction { blueprint: blueprint.to_string(), action: bpa, inline_credentials })
    }

    fn start(&self, actionset: ActionSet, status: ActionSetStatus, recover: bool) -> Outcome {
        let namespace = actionset.metadata.namespace.clone().unwrap_or_default();
        let name = actionset.metadata.name.clone().unwrap_or_default();
        let key = (namespace.clone(), name.clone());
        let mut runs = lock(&self.inner.runs);
        if runs.get(&key).is_some_and(|h| !*h.done.borrow()) {
            return Outcome::Running;
        }
        let cancel = Arc::new(CancelState::default());
        if actionset.spec.cancel == Some(true) {
            cancel.cancel("cancelled: spec.cancel is true");
        }
        let (done_tx, done_rx) = watch::channel(false);
        let rv = actionset.metadata.resource_version.clone().unwrap_or_default();
        let run = Arc::new(Run {
            engine: self.clone(),
            actionset,
            status: tokio::sync::Mutex::new((status, rv)),
            cancel: cancel.clone(),
        });
        let span = tracing::info_span!("actionset", namespace = %namespace, actionset = %name);
        let task = tokio::spawn(
            async move {
                // Whatever happens inside the run, the ActionSet ends: a bug that panics fails it
                // with the reason instead of leaving it `running` until the next restart.
                let outcome = std::panic::AssertUnwindSafe(run.clone().execute(recover)).catch_unwind().await;
                if let Err(panic) = outcome {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    run.fail_after_panic(&message).await;
                }
                // Nobody waiting for the end is not an error.
                let _ = done_tx.send(true);
            }
            .instrument(span),
        );
        runs.insert(key, RunHandle { cancel, done: done_rx, task });
        Outcome::Started
    }
}
