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
mod data;
pub mod duration;
pub mod functions;
pub mod maintenance;
pub mod params;
pub mod repokey;
pub mod repository;
pub(crate) mod task;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::cluster::{self, Cluster, Event, EventType, ObjectRef, Owner, get_typed, write_status};
use crate::crd::actionset::{ActionProgress, ActionStatus, PhaseProgress, PhaseStatus, StatusError};
use crate::crd::{ActionSet, ActionSetStatus, Blueprint, BlueprintAction, BlueprintPhase, JsonMap, State};
use crate::render::params::PhaseParams;
use crate::render::{Location, Renderer, TemplateParams};

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

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
struct Metrics {
    finished: BTreeMap<&'static str, u64>,
    phase_seconds: BTreeMap<String, (u64, f64)>,
    failures: BTreeMap<&'static str, u64>,
    maintenance: maintenance::MaintenanceMetrics,
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
    metrics: Mutex<Metrics>,
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
                metrics: Mutex::new(Metrics::default()),
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
                    lock(&self.inner.metrics).finished.entry("failed").and_modify(|n| *n += 1).or_insert(1);
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

    /// The metrics in the Prometheus text format. (`let _ = writeln!` here and in
    /// `maintenance` writes to a `String`, which cannot fail.)
    pub fn metrics_text(&self) -> String {
        let m = lock(&self.inner.metrics);
        let mut out = String::new();
        let running = lock(&self.inner.runs).values().filter(|h| !*h.done.borrow()).count();
        out.push_str("# HELP kanister_actionsets ActionSets by state (running now; finished since start).\n");
        out.push_str("# TYPE kanister_actionsets gauge\n");
        let _ = writeln!(out, "kanister_actionsets{{state=\"running\"}} {running}");
        for state in ["complete", "failed"] {
            let _ = writeln!(out, "kanister_actionsets{{state=\"{state}\"}} {}", m.finished.get(state).unwrap_or(&0));
        }
        out.push_str("# HELP kanister_phase_duration_seconds Phase durations by function.\n");
        out.push_str("# TYPE kanister_phase_duration_seconds summary\n");
        for (func, (count, sum)) in &m.phase_seconds {
            let _ = writeln!(out, "kanister_phase_duration_seconds_count{{function=\"{func}\"}} {count}");
            let _ = writeln!(out, "kanister_phase_duration_seconds_sum{{function=\"{func}\"}} {sum}");
        }
        out.push_str("# HELP kanister_phase_failures_total Phase failures by reason.\n");
        out.push_str("# TYPE kanister_phase_failures_total counter\n");
        for (reason, n) in &m.failures {
            let _ = writeln!(out, "kanister_phase_failures_total{{reason=\"{reason}\"}} {n}");
        }
        m.maintenance.render(&mut out);
        out
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
                Ok((_, b)) => b,
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
    ) -> std::result::Result<(String, BlueprintAction), String> {
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
        Ok((blueprint.to_string(), bpa))
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

/// One run of an ActionSet.
struct Run<C> {
    engine: Engine<C>,
    actionset: ActionSet,
    status: tokio::sync::Mutex<(ActionSetStatus, String)>,
    cancel: Arc<CancelState>,
}

/// Which phase of an action.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Regular(usize),
    Defer,
}

impl<C: Cluster> Run<C> {
    fn namespace(&self) -> &str {
        self.actionset.metadata.namespace.as_deref().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.actionset.metadata.name.as_deref().unwrap_or_default()
    }

    /// Action `i` as named in operation ids and backup tags: its name, with `:i` appended
    /// when another action of the ActionSet has the same name (`--deployment a/d1,b/d2` makes
    /// two `backup` actions), so their backups never share a tag.
    fn action_key(&self, i: usize) -> String {
        let actions = &self.actionset.spec.actions;
        let name = &actions[i].name;
        if actions.iter().filter(|a| &a.name == name).count() > 1 { format!("{name}:{i}") } else { name.clone() }
    }

    /// Deletes the task pods a killed coordinator left behind for this ActionSet (by its
    /// name and UID labels), in its namespace and those of its actions' objects: the run that
    /// created them, and would have deleted them, is gone. Best effort: failures are logged.
    async fn delete_orphaned_pods(&self) {
        let uid = self.actionset.metadata.uid.clone().unwrap_or_default();
        let mut namespaces = std::collections::BTreeSet::from([self.namespace().to_string()]);
        namespaces.extend(self.actionset.spec.actions.iter().filter_map(|a| {
            let ns = &a.object.namespace;
            (!ns.is_empty()).then(|| ns.clone())
        }));
        let labels = BTreeMap::from([
            (ACTIONSET_LABEL.to_string(), self.name().to_string()),
            (ACTIONSET_UID_LABEL.to_string(), uid),
        ]);
        for ns in namespaces {
            let pods = match self.cluster().list("v1", "Pod", &ns, &labels).await {
                Ok(pods) => pods,
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "failed to list the task pods of an interrupted run");
                    continue;
                }
            };
            for pod in pods {
                let Some(name) = pod["metadata"]["name"].as_str() else { continue };
                match self.cluster().delete_pod(&ns, name).await {
                    Ok(()) => tracing::info!(pod = %name, namespace = %ns, "deleted a task pod of an interrupted run"),
                    Err(e) => tracing::warn!(pod = %name, namespace = %ns, error = %e, "failed to delete a task pod"),
                }
            }
        }
    }

    /// Stops the run of an ActionSet found deleted (its defer phase still runs), saying so once.
    fn stop_deleted(&self) {
        if self.cancel.cancel(DELETED) {
            tracing::info!("ActionSet deleted: stopping its run");
        }
    }

    fn cluster(&self) -> &Arc<C> {
        &self.engine.inner.cluster
    }

    fn config(&self) -> &EngineConfig {
        &self.engine.inner.config
    }

    /// Applies `f` to the status and writes it. A deleted ActionSet cancels the run; other
    /// write failures are retried through an API server outage ([`cluster::through_outage`]),
    /// then logged: the next write carries the change too, and a run whose last write never landed
    /// is found `running` by the next reconcile, which fails the interrupted phase rather than
    /// report it complete.
    async fn update(&self, f: impl FnOnce(&mut ActionSetStatus)) {
        let mut guard = self.status.lock().await;
        let (status, rv) = &mut *guard;
        f(status);
        let percent = percent_completed(status);
        let progress = status.progress.get_or_insert_with(Default::default);
        if progress.percent_completed != percent {
            progress.percent_completed = percent;
        }
        progress.last_transition_time = Some(now());
        // The last write of a run must land, or a finished backup would read `running` until
        // the next coordinator fails it.
        let current: &str = rv;
        let write = || write_status(&**self.cluster(), self.namespace(), self.name(), current, status);
        match cluster::through_outage("write actionset status", write).await {
            Ok(new_rv) => *rv = new_rv,
            Err(cluster::Error::NotFound(_)) => self.stop_deleted(),
            Err(e) => tracing::warn!(error = %e, "failed to write actionset status"),
        }
    }

    async fn event(&self, type_: EventType, reason: &str, note: &str) {
        self.engine.event(&self.actionset, type_, reason, note).await;
    }

    async fn execute(self: Arc<Self>, recover: bool) {
        let timeout = match self.actionset.spec.timeout.as_deref() {
            None => Ok(self.config().actionset_timeout),
            Some(t) => functions::parse_go_duration(t).ok_or(t),
        };
        self.update(|s| {
            s.state = State::Running;
            if recover {
                tracing::info!("recovering an actionset left running by a previous coordinator");
            }
        })
        .await;
        self.event(EventType::Normal, "StartedAction", &format!("Executing actionset {}", self.name())).await;

        let watchdog = {
            let run = self.clone();
            let after = match timeout {
                Ok(t) => t,
                Err(t) => {
                    run.cancel.cancel(&format!("invalid actionset timeout {t:?}: expected a Go duration such as 1h"));
                    Duration::ZERO
                }
            };
            tokio::spawn(async move { run.watch(after).await })
        };

        let actions = (0..self.actionset.spec.actions.len()).map(|i| {
            let span = tracing::info_span!("action", action = %self.actionset.spec.actions[i].name);
            self.run_action(i, recover).instrument(span)
        });
        let results = futures::future::join_all(actions).await;
        watchdog.abort();

        let error = results.into_iter().find_map(|r| r.err());
        let failed = error.is_some();
        self.update(|s| {
            if let Some(p) = s.progress.as_mut() {
                p.running_phase.clear();
            }
            match &error {
                Some(message) => {
                    s.state = State::Failed;
                    if s.error.is_none() {
                        s.error = Some(StatusError { message: message.clone() });
                    }
                }
                None => {
                    s.state = State::Complete;
                    s.error = None;
                }
            }
        })
        .await;
        let state = if failed { "failed" } else { "complete" };
        lock(&self.engine.inner.metrics).finished.entry(state).and_modify(|n| *n += 1).or_insert(1);
        match &error {
            Some(message) => self.event(EventType::Warning, "ActionSetFailed", message).await,
            None => self.event(EventType::Normal, "ActionSetComplete", "Actionset completed").await,
        }
        tracing::info!(state, "actionset finished");
    }

    /// Ends an ActionSet whose run panicked: `failed`, with the reason, an event and the count.
    async fn fail_after_panic(&self, message: &str) {
        let message = format!("internal error: the run stopped unexpectedly ({message}); please report it");
        tracing::error!(%message, "actionset run panicked");
        self.update(|s| {
            if let Some(p) = s.progress.as_mut() {
                p.running_phase.clear();
            }
            s.state = State::Failed;
            s.error = Some(StatusError { message: message.clone() });
            // What an action of a run that stopped this way claims cannot be trusted.
            for a in &mut s.actions {
                a.artifacts.clear();
            }
        })
        .await;
        lock(&self.engine.inner.metrics).finished.entry("failed").and_modify(|n| *n += 1).or_insert(1);
        self.event(EventType::Warning, "ActionSetFailed", &message).await;
    }

    /// Cancels the run on its timeout, on deletion of the ActionSet and on `spec.cancel`.
    async fn watch(&self, timeout: Duration) {
        // A timeout beyond what the clock can add (Go durations reach 292 years) never fires.
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86400));
        loop {
            let tick = tokio::time::sleep(self.config().watch_interval);
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    self.cancel.cancel(&format!("timed out after {timeout:?} (actionset timeout)"));
                    return;
                }
                _ = tick => {}
            }
            match self.cluster().get_actionset(self.namespace(), self.name()).await {
                Err(cluster::Error::NotFound(_)) => {
                    self.stop_deleted();
                    return;
                }
                Ok(a) if a.spec.cancel == Some(true) => {
                    self.cancel.cancel("cancelled: spec.cancel is true");
                    return;
                }
                _ => {}
            }
        }
    }

    /// Fails action `i` with `message` (the status's error, unless an earlier failure set it).
    /// Its artifacts go: the status held the blueprint's templates while it ran, and a failed
    /// action made no backup, so none may claim one (`--from` it, a restore would use a
    /// template as a backup's path).
    async fn fail_action(&self, i: usize, message: String) -> std::result::Result<(), String> {
        self.update(|s| {
            s.error.get_or_insert(StatusError { message: message.clone() });
            if let Some(a) = s.actions.get_mut(i) {
                a.artifacts.clear();
            }
        })
        .await;
        Err(message)
    }

    /// Runs one action; returns the message of its first failure.
    async fn run_action(&self, i: usize, recover: bool) -> std::result::Result<(), String> {
        let spec = &self.actionset.spec.actions[i];
        {
            let fail = |m| self.fail_action(i, m);
            let (blueprint, bpa) =
                match self.engine.blueprint_action(self.namespace(), &spec.blueprint, &spec.name).await {
                    Ok(b) => b,
                    Err(m) => return fail(m).await,
                };
            let mut params = match params::resolve(&**self.cluster(), spec, Utc::now()).await {
                Ok(p) => p,
                Err(e) => {
                    return fail(format!("action {:?}: failed to resolve template parameters: {e}", spec.name)).await;
                }
            };
            let action_status = self.status.lock().await.0.actions.get(i).cloned().unwrap_or_default();
            let mut core_err: Option<String> = None;
            for (j, phase) in bpa.phases.iter().enumerate() {
                let state = action_status.phases.get(j).map(|p| p.state).unwrap_or_default();
                match state {
                    State::Complete => {
                        // Resumed: restore the output (and object references) of a completed phase.
                        let location = Location::phase(&blueprint, &spec.name, &phase.name);
                        let mut restored = params::resolve_phase_objects(
                            &**self.cluster(),
                            &self.engine.inner.renderer,
                            &location,
                            &phase.object_refs,
                            &params,
                        )
                        .await
                        .unwrap_or_default();
                        restored.output = action_status.phases[j].output.clone();
                        params.phases.insert(phase.name.clone(), restored);
                        continue;
                    }
                    State::Running if recover => {
                        self.delete_orphaned_pods().await;
                        let message = format!(
                            "phase {:?} of action {:?} was interrupted: the coordinator restarted while it was \
                             running; it is not retried because it may not be idempotent",
                            phase.name, spec.name
                        );
                        self.update(|s| {
                            if let Some(p) = s.actions.get_mut(i).and_then(|a| a.phases.get_mut(j)) {
                                p.state = State::Failed;
                            }
                            s.error.get_or_insert(StatusError { message: message.clone() });
                        })
                        .await;
                        core_err = Some(message);
                        break;
                    }
                    State::Failed => {
                        core_err = Some(format!("phase {:?} of action {:?} had failed", phase.name, spec.name));
                        break;
                    }
                    _ => {}
                }
                if self.cancel.token.is_cancelled() {
                    core_err = Some(self.cancel.reason());
                    break;
                }
                match self.run_phase(i, Slot::Regular(j), &blueprint, phase, &mut params, &self.cancel.token).await {
                    Ok(()) => {}
                    Err(message) => {
                        // The garbage collector may take an owned task pod before the deletion
                        // of its ActionSet reaches the controller: say which happened.
                        let deleted = if self.cancel.token.is_cancelled() {
                            self.cancel.reason() == DELETED
                        } else if let Err(cluster::Error::NotFound(_)) =
                            self.cluster().get_actionset(self.namespace(), self.name()).await
                        {
                            self.stop_deleted();
                            true
                        } else {
                            false
                        };
                        core_err = Some(if deleted && !message.contains(DELETED) {
                            format!("{DELETED} ({message})")
                        } else {
                            message
                        });
                        break;
                    }
                }
            }
            if let Some(message) = &core_err {
                // Phases after the failure never run: they stay pending.
                self.update(|s| {
                    s.error.get_or_insert(StatusError { message: message.clone() });
                })
                .await;
            }
            let mut defer_err = None;
            if let Some(defer) = &bpa.defer_phase {
                let done = action_status.defer_phase.as_ref().is_some_and(|p| p.state == State::Complete);
                if !done {
                    // The defer phase is not stopped by the ActionSet's cancellation.
                    let token = CancellationToken::new();
                    defer_err = self.run_phase(i, Slot::Defer, &blueprint, defer, &mut params, &token).await.err();
                }
            }
            if let Some(e) = core_err.or(defer_err) {
                return fail(e).await;
            }
            let location = Location { blueprint: blueprint.clone(), action: spec.name.clone(), ..Default::default() };
            match self.engine.inner.renderer.render_artifacts(&location, &bpa.output_artifacts, &params) {
                Ok(artifacts) => {
                    self.update(|s| {
                        if let Some(a) = s.actions.get_mut(i) {
                            a.artifacts = artifacts;
                        }
                    })
                    .await;
                    Ok(())
                }
                Err(e) => fail(format!("failed to render output artifacts: {e}")).await,
            }
        }
    }

    fn phase_status(s: &mut ActionSetStatus, i: usize, slot: Slot) -> Option<&mut PhaseStatus> {
        let a = s.actions.get_mut(i)?;
        match slot {
            Slot::Regular(j) => a.phases.get_mut(j),
            Slot::Defer => a.defer_phase.as_mut(),
        }
    }

    /// Runs one phase and records it; returns the status message of its failure.
    async fn run_phase(
        &self,
        i: usize,
        slot: Slot,
        blueprint: &str,
        phase: &BlueprintPhase,
        params: &mut TemplateParams,
        token: &CancellationToken,
    ) -> std::result::Result<(), String> {
        let action = &self.actionset.spec.actions[i].name;
        let span = tracing::info_span!("phase", phase = %phase.name, function = %phase.func);
        self.update(|s| {
            if let Some(p) = Self::phase_status(s, i, slot) {
                p.state = State::Running;
                p.progress = Some(PhaseProgress {
                    progress_percent: "0".into(),
                    last_transition_time: Some(now()),
                    ..Default::default()
                });
            }
            s.progress.get_or_insert_with(Default::default).running_phase = phase.name.clone();
        })
        .await;
        self.event(EventType::Normal, "StartedPhase", &format!("Executing phase {}", phase.name)).await;
        let started = Instant::now();
        let pods = Arc::new(Mutex::new(Vec::new()));
        let result =
            self.execute_phase(i, slot, blueprint, phase, params, token, pods.clone()).instrument(span.clone()).await;
        // Pods of the phase are deleted whatever happened.
        let created: Vec<(String, String)> = std::mem::take(&mut *lock(&pods));
        for (ns, pod) in created {
            if let Err(e) = self.cluster().delete_pod(&ns, &pod).await {
                tracing::warn!(pod = %pod, error = %e, "failed to delete task pod");
            }
        }
        {
            let mut m = lock(&self.engine.inner.metrics);
            let entry = m.phase_seconds.entry(phase.func.clone()).or_default();
            entry.0 += 1;
            entry.1 += started.elapsed().as_secs_f64();
            if let Err(e) = &result {
                let reason = match e {
                    PhaseError::Timeout(_) => "timeout",
                    PhaseError::Cancelled(_) => "cancelled",
                    PhaseError::Render(_) | PhaseError::Params(_) | PhaseError::BadTimeout(_) => "invalid",
                    PhaseError::Function(_) => "function",
                    PhaseError::Panic { .. } => "internal",
                };
                *m.failures.entry(reason).or_default() += 1;
            }
        }
        match result {
            Ok(output) => {
                self.update(|s| {
                    if let Some(p) = Self::phase_status(s, i, slot) {
                        p.state = State::Complete;
                        p.output = output.clone();
                        p.progress = Some(PhaseProgress {
                            progress_percent: "100".into(),
                            last_transition_time: Some(now()),
                            ..Default::default()
                        });
                    }
                    if let Some(p) = s.progress.as_mut()
                        && p.running_phase == phase.name
                    {
                        p.running_phase.clear();
                    }
                })
                .await;
                match slot {
                    Slot::Regular(_) => params.phases.entry(phase.name.clone()).or_default().output = output,
                    Slot::Defer => params.defer_phase.output = output,
                }
                self.event(EventType::Normal, "EndedPhase", &format!("Completed phase {}", phase.name)).await;
                Ok(())
            }
            Err(e) => {
                let what = if matches!(slot, Slot::Defer) { "defer phase" } else { "phase" };
                let message = redact(
                    format!("{what} {:?} of action {action:?} failed: {e}", phase.name),
                    &params.secret_values(),
                );
                tracing::warn!(error = %message, "phase failed");
                // A fan-out that failed for some pods: the outputs of the others (their backups
                // exist) are recorded, and a deferPhase can use them.
                let partial = match &e {
                    PhaseError::Function(functions::Error::Partial { outputs, .. }) => Some(outputs.clone()),
                    _ => None,
                };
                if let Some(output) = &partial {
                    match slot {
                        Slot::Regular(_) => {
                            params.phases.entry(phase.name.clone()).or_default().output = output.clone()
                        }
                        Slot::Defer => params.defer_phase.output = output.clone(),
                    }
                }
                self.update(|s| {
                    if let Some(p) = Self::phase_status(s, i, slot) {
                        p.state = State::Failed;
                        if let Some(output) = &partial {
                            p.output = output.clone();
                        }
                    }
                    if let Some(p) = s.progress.as_mut() {
                        p.running_phase.clear();
                    }
                    s.error.get_or_insert(StatusError { message: message.clone() });
                })
                .await;
                self.event(EventType::Warning, "PhaseFailed", &message).await;
                Err(message)
            }
        }
    }

    /// Writes the byte counts a function reports into the phase's progress and the action's
    /// `status.progress` while the phase runs: the first report with bytes at once, then at most
    /// one write per [`EngineConfig::progress_interval`]. Never returns; dropped with the phase.
    async fn report_progress(
        &self,
        i: usize,
        slot: Slot,
        mut rx: watch::Receiver<Option<functions::TransferProgress>>,
    ) -> std::convert::Infallible {
        let mut last: Option<Instant> = None;
        loop {
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
            if let Some(at) = last {
                let wait = self.config().progress_interval.saturating_sub(at.elapsed());
                tokio::time::sleep(wait).await;
            }
            let Some(p) = *rx.borrow_and_update() else { continue };
            if last.is_none() && p.downloaded == 0 && p.uploaded == 0 {
                continue;
            }
            last = Some(Instant::now());
            let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.update(|s| {
                if let Some(ph) = Self::phase_status(s, i, slot)
                    && ph.state == State::Running
                {
                    let progress = ph.progress.get_or_insert_with(Default::default);
                    progress.size_downloaded_b = clamp(p.downloaded);
                    progress.size_uploaded_b = clamp(p.uploaded);
                    progress.estimated_download_size_b = clamp(p.total);
                    progress.estimated_time_seconds = p.eta_secs.map_or(0, |e| e.round() as i64);
                    if let Some(pct) = p.percent {
                        progress.progress_percent = pct.to_string();
                    }
                    progress.last_transition_time = Some(now());
                }
                let progress = s.progress.get_or_insert_with(Default::default);
                progress.size_downloaded_b = clamp(p.downloaded);
                progress.size_uploaded_b = clamp(p.uploaded);
                progress.estimated_download_size_b = clamp(p.total);
            })
            .await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn execute_phase(
        &self,
        i: usize,
        slot: Slot,
        blueprint: &str,
        phase: &BlueprintPhase,
        params: &mut TemplateParams,
        token: &CancellationToken,
        pods: Arc<Mutex<Vec<(String, String)>>>,
    ) -> std::result::Result<JsonMap, PhaseError> {
        let action = &self.actionset.spec.actions[i].name;
        let timeout = match phase.timeout.as_deref() {
            None => self.config().phase_timeout,
            Some(t) => functions::parse_go_duration(t).ok_or_else(|| PhaseError::BadTimeout(t.into()))?,
        };
        let location = Location::phase(blueprint, action, &phase.name);
        let renderer = &self.engine.inner.renderer;
        let (progress_tx, progress_rx) = watch::channel(None);
        let work = async {
            let objects =
                params::resolve_phase_objects(&**self.cluster(), renderer, &location, &phase.object_refs, params)
                    .await?;
            params.phases.insert(phase.name.clone(), PhaseParams { output: JsonMap::new(), ..objects.clone() });
            params.current_phase = Some(objects);
            let args = if functions::renders_own_arguments(&phase.func) {
                phase.args.clone()
            } else {
                // A task pod gets the Profile's credential through its environment: keep the
                // values off its command line (`toJson .Profile` references the variable).
                params.credential_from_env = functions::runs_in_task_pod(&phase.func);
                let rendered = renderer.render_args(&location, &phase.args, params);
                params.credential_from_env = false;
                rendered?
            };
            let uid = self.actionset.metadata.uid.clone().unwrap_or_default();
            let uid_label = uid.clone();
            let ctx = functions::Context {
                cluster: self.cluster().clone(),
                renderer: renderer.clone(),
                location: Location { phase: phase.func.clone(), ..location.clone() },
                params: params.clone(),
                args,
                default_namespace: self.namespace().to_string(),
                owner: (!uid.is_empty()).then(|| Owner {
                    api_version: format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
                    kind: "ActionSet".into(),
                    name: self.name().to_string(),
                    uid,
                }),
                labels: BTreeMap::from([
                    (ACTIONSET_LABEL.to_string(), self.name().to_string()),
                    (ACTIONSET_UID_LABEL.to_string(), uid_label.clone()),
                ]),
                tail_lines: self.config().log_tail_lines,
                poll: self.config().poll_interval,
                ready_timeout: self.config().ready_timeout,
                pods,
                profile: self.actionset.spec.actions[i].profile.clone(),
                agent: self.config().agent.clone(),
                tools_image: self.config().tools_image.clone(),
                task_memory_limit: self.config().task_memory_limit.clone(),
                op_id: format!(
                    "{}/{}/{}/{}/{}",
                    self.namespace(),
                    self.name(),
                    self.actionset.metadata.uid.as_deref().unwrap_or_default(),
                    self.action_key(i),
                    phase.name
                ),
                progress: Some(progress_tx),
            };
            // A bug in a function must fail its phase, not leave the ActionSet running.
            let result = std::panic::AssertUnwindSafe(functions::run(&phase.func, &ctx)).catch_unwind().await;
            match result {
                Ok(r) => Ok::<_, PhaseError>(r?),
                Err(panic) => Err(PhaseError::Panic {
                    function: phase.func.clone(),
                    message: panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default(),
                }),
            }
        };
        let report = self.report_progress(i, slot, progress_rx);
        let work = async {
            tokio::select! {
                r = work => r,
                never = report => match never {},
            }
        };
        tokio::select! {
            r = work => r,
            _ = token.cancelled() => Err(PhaseError::Cancelled(self.cancel.reason())),
            _ = tokio::time::sleep(timeout) => Err(PhaseError::Timeout(timeout)),
        }
    }
}
