//! One run of an ActionSet: its actions concurrently, each action's phases in order, the status
//! written as it goes (see the guarantees in the [engine](super) docs).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::metrics::{self, PhaseFailure};
use super::{
    ACTIONSET_LABEL, ACTIONSET_UID_LABEL, CancelState, DELETED, Engine, EngineConfig, PhaseError, functions, lock, now,
    params, percent_completed, redact,
};
use crate::cluster::{self, Cluster, EventType, Owner, write_status};
use crate::crd::actionset::{PhaseProgress, PhaseStatus, StatusError};
use crate::crd::{ActionSet, ActionSetStatus, BlueprintPhase, JsonMap, State};
use crate::render::params::PhaseParams;
use crate::render::{Location, TemplateParams};

/// One run of an ActionSet.
pub(super) struct Run<C> {
    pub(super) engine: Engine<C>,
    pub(super) actionset: ActionSet,
    pub(super) status: tokio::sync::Mutex<(ActionSetStatus, String)>,
    pub(super) cancel: Arc<CancelState>,
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

    pub(super) async fn execute(self: Arc<Self>, recover: bool) {
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
        self.engine.inner.metrics.finished(if failed {
            metrics::Finished::Failed
        } else {
            metrics::Finished::Complete
        });
        match &error {
            Some(message) => self.event(EventType::Warning, "ActionSetFailed", message).await,
            None => self.event(EventType::Normal, "ActionSetComplete", "Actionset completed").await,
        }
        tracing::info!(state, "actionset finished");
    }

    /// Ends an ActionSet whose run panicked: `failed`, with the reason, an event and the count.
    pub(super) async fn fail_after_panic(&self, message: &str) {
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
        self.engine.inner.metrics.finished(metrics::Finished::Failed);
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
            let (blueprint, bpa, inline_credentials) =
                match self.engine.blueprint_action(self.namespace(), &spec.blueprint, &spec.name).await {
                    Ok(found) => (found.blueprint, found.action, found.inline_credentials),
                    Err(m) => return fail(m).await,
                };
            let mut params = match params::resolve(&**self.cluster(), spec, Utc::now()).await {
                Ok(p) => TemplateParams { credentials_inline: inline_credentials, ..p },
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
        let failure = result.as_ref().err().map(|e| match e {
            PhaseError::Timeout(_) => PhaseFailure::Timeout,
            PhaseError::Cancelled(_) => PhaseFailure::Cancelled,
            PhaseError::Render(_) | PhaseError::Params(_) | PhaseError::BadTimeout(_) => PhaseFailure::Invalid,
            PhaseError::Function(_) => PhaseFailure::Function,
            PhaseError::Panic { .. } => PhaseFailure::Internal,
        });
        self.engine.inner.metrics.phase(&phase.func, started.elapsed().as_secs_f64(), failure);
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
        let now = tokio::time::Instant::now();
        // A timeout beyond what the clock can add never fires.
        let deadline = now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86400));
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
                params.credential_from_env = functions::runs_in_task_pod(&phase.func) && !params.credentials_inline;
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
                deadline,
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
