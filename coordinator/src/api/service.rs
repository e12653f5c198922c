//! [`CoordinatorApi`]: the `CoordinatorService` implementation over a [`Cluster`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use kanister_proto::coordinator::v1 as pb;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{Error, Result, probe};
use crate::cluster::{self, Cluster, ObjectRef, get_typed};
use crate::crd::{ActionSet, Blueprint, GROUP, ObjectReference, Profile, ProfileSpec, State, VERSION};
use crate::engine::{Engine, EngineConfig};

/// The `CoordinatorService`. Cheap to clone.
pub struct CoordinatorApi<C> {
    cluster: Arc<C>,
    engine: Option<Engine<C>>,
    /// How task pods run the agent for the API's repository work (`ListSnapshots`).
    tasks: EngineConfig,
    poll: Duration,
    /// Cancelled when the server shuts down: open watches end (clients reconnect elsewhere)
    /// instead of holding the graceful shutdown until their ActionSet finishes.
    pub(super) stopping: CancellationToken,
}

impl<C> Clone for CoordinatorApi<C> {
    fn clone(&self) -> Self {
        CoordinatorApi {
            cluster: self.cluster.clone(),
            engine: self.engine.clone(),
            tasks: self.tasks.clone(),
            poll: self.poll,
            stopping: self.stopping.clone(),
        }
    }
}

impl<C> std::fmt::Debug for CoordinatorApi<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorApi").field("engine", &self.engine.is_some()).field("poll", &self.poll).finish()
    }
}

fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

/// The summary and JSON of an ActionSet.
pub fn to_proto(a: &ActionSet) -> pb::ActionSet {
    let status = a.status.clone().unwrap_or_default();
    let progress = status.progress.clone().unwrap_or_default();
    let state = match (&a.status, status.state) {
        (None, _) | (_, State::Pending) => "pending",
        (_, State::Running) => "running",
        (_, State::Complete) => "complete",
        (_, State::Failed) => "failed",
    };
    pb::ActionSet {
        namespace: a.metadata.namespace.clone().unwrap_or_default(),
        name: a.metadata.name.clone().unwrap_or_default(),
        revision: a.metadata.resource_version.clone().unwrap_or_default(),
        state: state.into(),
        running_phase: progress.running_phase.clone(),
        percent_completed: progress.percent_completed.clone(),
        size_uploaded_bytes: progress.size_uploaded_b,
        size_downloaded_bytes: progress.size_downloaded_b,
        estimated_upload_bytes: progress.estimated_upload_size_b,
        estimated_download_bytes: progress.estimated_download_size_b,
        error: status.error.map(|e| e.message).unwrap_or_default(),
        creation_time: a.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
        last_transition_time: progress.last_transition_time.map(|t| t.0.to_string()).unwrap_or_default(),
        actionset_json: serde_json::to_string(a).unwrap_or_default(),
        events: Vec::new(),
        events_error: String::new(),
    }
}

fn event_to_proto(e: cluster::ObservedEvent) -> pb::Event {
    let type_ = match e.type_ {
        cluster::EventType::Normal => "Normal",
        cluster::EventType::Warning => "Warning",
    };
    pb::Event { r#type: type_.into(), reason: e.reason, message: e.note, time: e.time, count: e.count }
}

fn not_found_or(e: cluster::Error, message: impl FnOnce() -> String) -> Error {
    match e {
        cluster::Error::NotFound(_) => Error::FailedPrecondition(message()),
        other => Error::Cluster(other),
    }
}

/// `key=value,key2=value2` → map.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(Error::InvalidArgument(format!(
                "selector: {p:?} is not key=value; write --selector app=mysql,tier=db"
            ))),
        })
        .collect()
}

impl<C: Cluster> CoordinatorApi<C> {
    /// The API over `cluster`. Watches re-read ActionSets every 250 ms.
    pub fn new(cluster: Arc<C>) -> Self {
        CoordinatorApi {
            cluster,
            engine: None,
            tasks: EngineConfig::default(),
            poll: Duration::from_millis(250),
            stopping: CancellationToken::new(),
        }
    }

    /// Runs the agent's task pods (`ListSnapshots`) as `config` says: its tools image, log
    /// tail and timeouts (the engine's).
    pub fn with_task_config(mut self, config: EngineConfig) -> Self {
        self.tasks = config;
        self
    }

    /// Hands new and cancelled ActionSets to `engine` at once (in-process coordinator).
    pub fn with_engine(mut self, engine: Engine<C>) -> Self {
        self.tasks = engine.config().clone();
        self.engine = Some(engine);
        self
    }

    /// How often a watch re-reads its ActionSet.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    async fn kick(&self, namespace: &str, name: &str) {
        if let Some(engine) = &self.engine
            && let Err(e) = engine.reconcile(namespace, name).await
        {
            tracing::warn!(actionset = name, namespace, error = %e, "reconcile after an API call failed");
        }
    }

    async fn expand(&self, template: &ActionSet, selectors: &[pb::ObjectSelector]) -> Result<ActionSet> {
        let mut out = template.clone();
        let Some(first) = template.spec.actions.first() else {
            return Err(Error::InvalidArgument("the ActionSet has no action: set --action".into()));
        };
        out.spec.actions.clear();
        for sel in selectors {
            let labels = parse_labels(&sel.label_selector)?;
            let kinds: Vec<(&str, &str)> = match sel.kind.to_ascii_lowercase().as_str() {
                "" | "all" => vec![("apps/v1", "Deployment"), ("apps/v1", "StatefulSet")],
                "deployment" => vec![("apps/v1", "Deployment")],
                "statefulset" => vec![("apps/v1", "StatefulSet")],
                "pvc" => vec![("v1", "PersistentVolumeClaim")],
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "kind: {other:?} is not supported; use all, deployment, statefulset or pvc"
                    )));
                }
            };
            for (api, kind) in kinds {
                for obj in self.cluster.list(api, kind, &sel.namespace, &labels).await? {
                    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
                    let mut action = first.clone();
                    action.object = crate::crd::ObjectReference {
                        kind: kind.to_ascii_lowercase(),
                        name: s("/metadata/name"),
                        namespace: s("/metadata/namespace"),
                        ..Default::default()
                    };
                    out.spec.actions.push(action);
                }
            }
        }
        if out.spec.actions.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "selector matched no object: check --selector {:?}, --kind and --selector-namespace",
                selectors.iter().map(|s| s.label_selector.as_str()).collect::<Vec<_>>().join(";")
            )));
        }
        Ok(out)
    }

    /// Checks what an ActionSet refers to; the first problem, naming the field and the fix.
    async fn validate(&self, a: &ActionSet) -> Result<()> {
        let ns = a.metadata.namespace.clone().unwrap_or_default();
        if a.spec.actions.is_empty() {
            return Err(Error::InvalidArgument("the ActionSet has no action: set --action".into()));
        }
        for (i, action) in a.spec.actions.iter().enumerate() {
            if action.name.is_empty() {
                return Err(Error::InvalidArgument(format!("actions[{i}].name is empty: set --action")));
            }
            let bp: Blueprint =
                get_typed(&*self.cluster, &ObjectRef::new("Blueprint", &ns, &action.blueprint)).await.map_err(|e| {
                    not_found_or(e, || {
                        format!(
                            "blueprint {:?} not found in namespace {ns:?}: create it or fix --blueprint",
                            action.blueprint
                        )
                    })
                })?;
            let Some(bp_action) = bp.spec.actions.get(&action.name) else {
                let have: Vec<&str> = bp.spec.actions.keys().map(String::as_str).collect();
                return Err(Error::FailedPrecondition(format!(
                    "action {:?} is not in blueprint {:?} (it has: {}): fix --action",
                    action.name,
                    action.blueprint,
                    have.join(", ")
                )));
            };
            for name in &bp_action.input_artifact_names {
                if !action.artifacts.contains_key(name) {
                    return Err(Error::FailedPrecondition(format!(
                        "input artifact {name:?} required by action {:?} is missing: use --from a complete \
                         ActionSet that produced it",
                        action.name
                    )));
                }
            }
            let o = &action.object;
            if !o.kind.eq_ignore_ascii_case("namespace") && !o.name.is_empty() {
                self.cluster.get(&ObjectRef::from_reference(o)).await.map_err(|e| {
                    not_found_or(e, || {
                        format!("object {} {}/{} not found: fix the target flag", o.kind, o.namespace, o.name)
                    })
                })?;
            }
            if let Some(p) = &action.profile {
                self.cluster.get(&ObjectRef::new("Profile", &p.namespace, &p.name)).await.map_err(|e| {
                    not_found_or(e, || {
                        format!("profile {}/{} not found: create it or fix --profile", p.namespace, p.name)
                    })
                })?;
            }
            for (key, s) in &action.secrets {
                self.cluster.secret(&s.namespace, &s.name).await.map_err(|e| {
                    not_found_or(e, || format!("secret {key}={}/{} not found: fix --secrets", s.namespace, s.name))
                })?;
            }
            for (key, c) in &action.config_maps {
                self.cluster.get(&ObjectRef::new("ConfigMap", &c.namespace, &c.name)).await.map_err(|e| {
                    not_found_or(e, || {
                        format!("config map {key}={}/{} not found: fix --config-maps", c.namespace, c.name)
                    })
                })?;
            }
        }
        Ok(())
    }

    async fn create_actionset(&self, req: pb::CreateActionSetRequest) -> Result<pb::ActionSet> {
        let mut a: ActionSet = serde_json::from_str(&req.actionset_json)
            .map_err(|e| Error::InvalidArgument(format!("actionset_json is not an ActionSet: {e}")))?;
        if a.metadata.name.as_deref().unwrap_or("").is_empty() {
            return Err(Error::InvalidArgument("metadata.name is empty: set --name".into()));
        }
        if a.metadata.namespace.as_deref().unwrap_or("").is_empty() {
            return Err(Error::InvalidArgument("metadata.namespace is empty: set --namespace".into()));
        }
        a.status = None;
        if !req.selectors.is_empty() {
            a = self.expand(&a, &req.selectors).await?;
        }
        if !req.skip_validation {
            self.validate(&a).await?;
        }
        if req.dry_run {
            return Ok(to_proto(&a));
        }
        let ns = a.metadata.namespace.clone().unwrap_or_default();
        let name = a.metadata.name.clone().unwrap_or_default();
        let mut value = serde_json::to_value(&a).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.entry("creationTimestamp")
                .or_insert_with(|| Value::String(k8s_openapi::jiff::Timestamp::now().to_string()));
        }
        match self.cluster.apply(value, &ns).await {
            Err(cluster::Error::Rejected { message, .. }) if message.contains("already exists") => {
                return Err(Error::AlreadyExists(format!(
                    "actionset {ns}/{name} already exists: choose another --name"
                )));
            }
            other => other?,
        };
        tracing::info!(actionset = %name, namespace = %ns, "actionset created");
        self.kick(&ns, &name).await;
        Ok(to_proto(&self.cluster.get_actionset(&ns, &name).await?))
    }

    async fn get(&self, r: &pb::ActionSetRef) -> Result<ActionSet> {
        self.cluster.get_actionset(&r.namespace, &r.name).await.map_err(|e| match e {
            cluster::Error::NotFound(_) => Error::NotFound(format!(
                "actionset {}/{} not found: check the name and --namespace (kanctl get actionsets)",
                r.namespace, r.name
            )),
            other => Error::Cluster(other),
        })
    }

    async fn create_profile(&self, req: pb::CreateProfileRequest) -> Result<pb::ProfileInfo> {
        let (ns, name) = (req.namespace.clone(), req.name.clone());
        if ns.is_empty() || name.is_empty() {
            return Err(Error::InvalidArgument("profile namespace and name are required: set --namespace".into()));
        }
        let location_type = match req.location_type.as_str() {
            "s3Compliant" | "gcs" | "azure" | "local" => req.location_type.clone(),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "location type {other:?} is not supported: use s3compliant, gcp, azure or local"
                )));
            }
        };
        let secret_name = if req.secret_name.is_empty() { format!("{name}-secret") } else { req.secret_name.clone() };
        let b64 = base64::engine::general_purpose::STANDARD;
        let data: serde_json::Map<String, Value> =
            req.credentials.iter().map(|(k, v)| (k.clone(), Value::String(b64.encode(v)))).collect();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name, "namespace": ns},
            "data": data,
        });
        let mut location = json!({"type": location_type});
        for (k, v) in [
            ("bucket", &req.bucket),
            ("endpoint", &req.endpoint),
            ("prefix", &req.prefix),
            ("region", &req.region),
            ("path", &req.path),
        ] {
            if !v.is_empty() {
                location[k] = Value::String(v.clone());
            }
        }
        let mut profile = json!({
            "apiVersion": api_version(), "kind": "Profile",
            "metadata": {"name": name, "namespace": ns},
            "location": location,
            "credential": {"type": "keyPair", "keyPair": {
                "idField": req.id_field, "secretField": req.secret_field,
                "secret": {"apiVersion": "v1", "kind": "Secret", "name": secret_name, "namespace": ns},
            }},
        });
        // No key pair (a local directory needs no credential): the Secret, possibly empty, as a
        // whole, so that nothing refers to a key that is not there.
        if req.id_field.is_empty() {
            profile["credential"] = json!({"type": "secret",
                "secret": {"apiVersion": "v1", "kind": "Secret", "name": secret_name, "namespace": ns}});
        }
        if req.skip_ssl_verify {
            profile["skipSSLVerify"] = Value::Bool(true);
        }
        let spec: Profile = serde_json::from_value(profile.clone())
            .map_err(|e| Error::InvalidArgument(format!("the profile is malformed: {e}")))?;
        let info = pb::ProfileInfo {
            namespace: ns.clone(),
            name: name.clone(),
            secret_name: secret_name.clone(),
            profile_json: profile.to_string(),
        };
        if !req.skip_validation {
            let secret_data = cluster::SecretData {
                secret_type: "Opaque".into(),
                data: req.credentials.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            };
            let problems = probe::check(&spec.spec, &secret_data).await;
            if !problems.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "profile {ns}/{name} is not usable, nothing was created:\n{}",
                    problems.iter().map(|p| format!("  - {}: {}", p.field, p.message)).collect::<Vec<_>>().join("\n")
                )));
            }
        }
        if req.dry_run {
            return Ok(info);
        }
        // The coordinator may create Secrets but never delete them (deploy/README.md, RBAC), so
        // refuse a taken name before writing anything, and name what a late failure leaves behind.
        let taken = || Error::AlreadyExists(format!("profile {ns}/{name} already exists: choose another name"));
        match self.cluster.get(&ObjectRef::new("Profile", &ns, &name)).await {
            Ok(_) => return Err(taken()),
            Err(cluster::Error::NotFound(_)) => {}
            Err(other) => return Err(Error::Cluster(other)),
        }
        self.cluster.apply(secret, &ns).await.map_err(|e| match e {
            cluster::Error::Rejected { message, .. } if message.contains("already exists") => Error::AlreadyExists(
                format!("secret {ns}/{secret_name} already exists: delete it or choose another profile name"),
            ),
            other => Error::Cluster(other),
        })?;
        if let Err(e) = self.cluster.apply(profile, &ns).await {
            let left = format!(
                "the Secret {ns}/{secret_name} was created but not the profile: delete it \
                 (kubectl delete secret -n {ns} {secret_name}) before trying again"
            );
            return Err(match e {
                cluster::Error::Rejected { message, .. } if message.contains("already exists") => {
                    Error::AlreadyExists(format!("{}; {left}", taken()))
                }
                other => Error::Unavailable(format!("creating profile {ns}/{name}: {other}; {left}")),
            });
        }
        tracing::info!(profile = %name, namespace = %ns, "profile created");
        Ok(info)
    }

    async fn validate_profile(&self, ns: &str, name: &str, schema_only: bool) -> Result<Vec<pb::Problem>> {
        let profile: Profile =
            get_typed(&*self.cluster, &ObjectRef::new("Profile", ns, name)).await.map_err(|e| match e {
                cluster::Error::NotFound(_) => {
                    Error::NotFound(format!("profile {ns}/{name} not found: create it with kanctl create profile"))
                }
                other => Error::Cluster(other),
            })?;
        let spec: &ProfileSpec = &profile.spec;
        if schema_only {
            return Ok(probe::schema(spec)
                .into_iter()
                .map(|p| pb::Problem { location: p.field, message: p.message })
                .collect());
        }
        let secret_ref = spec.credential.key_pair.as_ref().map(|k| k.secret.clone()).or(spec.credential.secret.clone());
        let secret = match secret_ref {
            Some(r) => match self.cluster.secret(if r.namespace.is_empty() { ns } else { &r.namespace }, &r.name).await
            {
                Ok(s) => s,
                Err(cluster::Error::NotFound(_)) => {
                    return Ok(vec![pb::Problem {
                        location: "credential.keyPair.secret".into(),
                        message: format!("secret {}/{} not found: create it or fix the reference", r.namespace, r.name),
                    }]);
                }
                Err(e) => return Err(e.into()),
            },
            None => cluster::SecretData::default(),
        };
        Ok(probe::check(spec, &secret)
            .await
            .into_iter()
            .map(|p| pb::Problem { location: p.field, message: p.message })
            .collect())
    }

    async fn list_snapshots(&self, ns: &str, name: &str) -> Result<pb::ListSnapshotsResponse> {
        use crate::engine::task::{self, Answer};
        use kanister_proto::agent::v1::task_request::Task;
        use kanister_proto::agent::v1::task_result::Result as TaskOut;
        use pb::RepositoryState;
        if ns.is_empty() || name.is_empty() {
            return Err(Error::InvalidArgument(
                "the profile's namespace and name are required: set --profile namespace/name".into(),
            ));
        }
        let who = format!("{ns}/{name}");
        self.cluster.get(&ObjectRef::new("Profile", ns, name)).await.map_err(|e| match e {
            cluster::Error::NotFound(_) => {
                Error::NotFound(format!("profile {who} not found: fix --profile (kanctl create profile makes one)"))
            }
            other => Error::Cluster(other),
        })?;
        let r = ObjectReference { namespace: ns.into(), name: name.into(), ..Default::default() };
        let params = crate::engine::params::profile(&*self.cluster, &r).await.map_err(|e| {
            Error::FailedPrecondition(format!(
                "{}: fix the Profile's credential (kanctl validate profile {name} -n {ns})",
                super::error_chain(&e)
            ))
        })?;
        let location = crate::engine::agent::repository_ref(&params, zeroize::Zeroizing::new(Vec::new()))
            .map(|r| r.store_url)
            .map_err(|e| Error::FailedPrecondition(format!("profile {who}: {}", super::error_chain(&e))))?;
        let key_secret = format!("{ns}/{}", crate::engine::repokey::secret_name(&r, ns));
        let empty = |state: RepositoryState, message: String| pb::ListSnapshotsResponse {
            snapshots: Vec::new(),
            state: state.into(),
            message,
            location: location.clone(),
        };
        let label = ("kanister.io/snapshots", "ListSnapshots");
        let ctx = task::profile_context(self.cluster.clone(), &self.tasks, &r, params, label);
        let answer = task::run(&ctx, "kanister-snapshots-", Task::ListSnapshots(Default::default())).await;
        task::delete_pods(&ctx).await;
        let listed = match answer {
            Ok(Answer::Open(TaskOut::Snapshots(list))) => list.snapshots,
            Ok(Answer::NoKey) => {
                return Ok(empty(
                    RepositoryState::NoKey,
                    format!(
                        "profile {who} has no repository key yet (Secret {key_secret}): nothing was backed up \
                         through it"
                    ),
                ));
            }
            Ok(Answer::NoRepository) => {
                return Ok(empty(
                    RepositoryState::NoRepository,
                    format!(
                        "the location of profile {who} ({location}) holds no repository: nothing was backed up \
                         there yet, or the Profile's bucket or prefix changed since the backups"
                    ),
                ));
            }
            Ok(Answer::WrongKey) => {
                return Err(Error::FailedPrecondition(format!(
                    "the repository at {location} does not open with the key of profile {who} (Secret \
                     {key_secret}): the Secret was replaced, or the location holds another Profile's repository; \
                     restore the Secret the backups were made with, or give the Profile its own bucket or prefix"
                )));
            }
            Ok(Answer::Open(_)) => {
                return Err(Error::Unavailable(format!(
                    "the agent listing the snapshots of profile {who} answered another task: is the tools image \
                     ({}) of this release?",
                    self.tasks.tools_image
                )));
            }
            Err(e) => {
                return Err(Error::Unavailable(format!(
                    "cannot list the snapshots of profile {who} at {location}: {}",
                    super::error_chain(&e)
                )));
            }
        };
        let actionsets = self.actionsets_for(ns, &listed).await;
        let snapshots = super::snapshots::describe(listed, &r, &actionsets);
        Ok(pb::ListSnapshotsResponse {
            snapshots,
            state: RepositoryState::Open.into(),
            message: String::new(),
            location,
        })
    }

    /// The ActionSets that may have made `listed`: all of them when the coordinator may list
    /// every namespace, else those of the Profile's namespace and of the namespaces the
    /// snapshots' backup tags name. Best effort: ActionSets that cannot be read leave their
    /// snapshots untied, never fail the listing.
    async fn actionsets_for(
        &self,
        profile_namespace: &str,
        listed: &[kanister_proto::agent::v1::SnapshotInfo],
    ) -> Vec<ActionSet> {
        use crate::engine::repository::tags;
        match self.cluster.list_actionsets("").await {
            Ok(all) => return all,
            Err(e) => tracing::debug!(error = %e, "cannot list the ActionSets of every namespace"),
        }
        let mut namespaces = std::collections::BTreeSet::from([profile_namespace.to_string()]);
        for s in listed {
            if let Some((ns, _)) = s.tags.get(tags::BACKUP).and_then(|t| t.split_once('/')) {
                namespaces.insert(ns.to_string());
            }
        }
        let mut out = Vec::new();
        for ns in namespaces {
            match self.cluster.list_actionsets(&ns).await {
                Ok(list) => out.extend(list),
                Err(e) => tracing::debug!(namespace = %ns, error = %e, "cannot list ActionSets"),
            }
        }
        out
    }
}

type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::ActionSet, Status>>;

#[tonic::async_trait]
impl<C: Cluster> pb::coordinator_service_server::CoordinatorService for CoordinatorApi<C> {
    async fn create_action_set(
        &self,
        request: Request<pb::CreateActionSetRequest>,
    ) -> Result<Response<pb::ActionSet>, Status> {
        Ok(Response::new(self.create_actionset(request.into_inner()).await?))
    }

    async fn get_action_set(&self, request: Request<pb::ActionSetRef>) -> Result<Response<pb::ActionSet>, Status> {
        let a = self.get(request.get_ref()).await?;
        let mut out = to_proto(&a);
        match self.cluster.events(&a).await {
            Ok(events) => out.events = events.into_iter().map(event_to_proto).collect(),
            Err(e) => {
                tracing::warn!(actionset = %out.name, namespace = %out.namespace, error = %e, "cannot read events");
                out.events_error = e.to_string();
            }
        }
        Ok(Response::new(out))
    }

    async fn list_action_sets(
        &self,
        request: Request<pb::ListActionSetsRequest>,
    ) -> Result<Response<pb::ListActionSetsResponse>, Status> {
        let mut all = self.cluster.list_actionsets(&request.get_ref().namespace).await.map_err(Error::from)?;
        all.sort_by(|a, b| {
            (a.metadata.creation_timestamp.as_ref().map(|t| t.0), &a.metadata.name)
                .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), &b.metadata.name))
        });
        Ok(Response::new(pb::ListActionSetsResponse { actionsets: all.iter().map(to_proto).collect() }))
    }

    type WatchActionSetStream = WatchStream;

    async fn watch_action_set(
        &self,
        request: Request<pb::WatchActionSetRequest>,
    ) -> Result<Response<Self::WatchActionSetStream>, Status> {
        let req = request.into_inner();
        let r = pb::ActionSetRef { namespace: req.namespace.clone(), name: req.name.clone() };
        // Fail fast on a missing ActionSet, before the stream starts.
        self.get(&r).await?;
        let (tx, rx) = mpsc::channel(16);
        let api = self.clone();
        tokio::spawn(async move {
            let mut last = req.after_revision;
            loop {
                let a = match api.get(&r).await {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let msg = to_proto(&a);
                let done = matches!(msg.state.as_str(), "complete" | "failed");
                if msg.revision != last {
                    last = msg.revision.clone();
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                if done {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(api.poll) => {}
                    _ = tx.closed() => return,
                    _ = api.stopping.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the coordinator is shutting down: reconnect"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn cancel_action_set(&self, request: Request<pb::ActionSetRef>) -> Result<Response<pb::ActionSet>, Status> {
        let r = request.into_inner();
        let a = self.get(&r).await?;
        if !a.status.as_ref().is_some_and(|s| s.state.is_terminal()) {
            self.cluster
                .patch(&ObjectRef::actionset(&r.namespace, &r.name), json!({"spec": {"cancel": true}}))
                .await
                .map_err(Error::from)?;
            tracing::info!(actionset = %r.name, namespace = %r.namespace, "actionset cancel requested");
            self.kick(&r.namespace, &r.name).await;
        }
        Ok(Response::new(to_proto(&self.get(&r).await?)))
    }

    async fn delete_action_set(
        &self,
        request: Request<pb::ActionSetRef>,
    ) -> Result<Response<pb::DeleteActionSetResponse>, Status> {
        let r = request.into_inner();
        self.cluster.delete(&ObjectRef::actionset(&r.namespace, &r.name)).await.map_err(Error::from)?;
        self.kick(&r.namespace, &r.name).await;
        Ok(Response::new(pb::DeleteActionSetResponse {}))
    }

    async fn create_profile(
        &self,
        request: Request<pb::CreateProfileRequest>,
    ) -> Result<Response<pb::ProfileInfo>, Status> {
        Ok(Response::new(CoordinatorApi::create_profile(self, request.into_inner()).await?))
    }

    async fn validate_profile(
        &self,
        request: Request<pb::ValidateProfileRequest>,
    ) -> Result<Response<pb::ValidationReport>, Status> {
        let r = request.into_inner();
        let problems = CoordinatorApi::validate_profile(self, &r.namespace, &r.name, r.schema_only).await?;
        Ok(Response::new(pb::ValidationReport { problems, warnings: vec![] }))
    }

    async fn validate_blueprint(
        &self,
        request: Request<pb::ValidateBlueprintRequest>,
    ) -> Result<Response<pb::ValidationReport>, Status> {
        let r = request.into_inner();
        let bp: Blueprint = if r.blueprint_yaml.is_empty() {
            get_typed(&*self.cluster, &ObjectRef::new("Blueprint", &r.namespace, &r.name)).await.map_err(
                |e| match e {
                    cluster::Error::NotFound(_) => Error::NotFound(format!(
                        "blueprint {}/{} not found: fix the name or give the file with -f",
                        r.namespace, r.name
                    )),
                    other => Error::Cluster(other),
                },
            )?
        } else {
            serde_norway::from_str(&r.blueprint_yaml)
                .map_err(|e| Error::InvalidArgument(format!("the blueprint does not parse: {e}")))?
        };
        if r.schema_only {
            // It parsed as a Blueprint: that is all the schema says.
            return Ok(Response::new(pb::ValidationReport::default()));
        }
        let to_pb =
            |p: crate::validate::Problem| pb::Problem { location: p.location.to_string(), message: p.kind.to_string() };
        let problems = crate::validate::problems(&bp).into_iter().map(to_pb).collect();
        let warnings = crate::validate::warnings(&bp).into_iter().map(to_pb).collect();
        Ok(Response::new(pb::ValidationReport { problems, warnings }))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(CoordinatorApi::list_snapshots(self, &r.namespace, &r.name).await?))
    }
}
