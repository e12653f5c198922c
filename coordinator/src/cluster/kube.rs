//! [`KubeCluster`]: the [`Cluster`] of a real API server, through `kube`.
//!
//! - Objects are read and written as `DynamicObject`s; the API resource of a kind comes from a
//!   table of the kinds the engine uses, or from discovery for any other kind.
//! - `exec` uses the pod `exec` subresource over a websocket upgrade.
//! - The ActionSet status is written with `PUT .../actionsets/{name}/status` carrying the
//!   `resourceVersion` read before (optimistic concurrency: a stale write gets 409).
//! - Events go through `kube::runtime::events::Recorder` (the `events.k8s.io/v1` API) and are
//!   read back from the same API, selected by `regarding` (kind, name, UID).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::AsyncBufReadExt as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{
    Api, ApiResource, AttachParams, DeleteParams, DynamicObject, GroupVersionKind, ListParams, LogParams, Patch,
    PatchParams, PostParams,
};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

use super::{
    Chunk, Cluster, Error, Event, EventType, ExecRequest, ExitStatus, ObjectRef, ObservedEvent, Result, SecretData,
    Stream, TaskPod, kind_key, through_outage,
};
use crate::cluster::merge_patch;
use crate::crd::{ActionSet, ActionSetStatus};

/// A [`Cluster`] backed by a Kubernetes API server.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
    recorder: Recorder,
    poll: Duration,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster").field("poll", &self.poll).finish_non_exhaustive()
    }
}

/// Maps a `kube` error on `object` to a cluster error.
fn map_err(object: &ObjectRef, what: &str) -> impl FnOnce(kube::Error) -> Error {
    let object = object.clone();
    let what = what.to_string();
    move |e| match e {
        kube::Error::Api(status) => match status.code {
            404 => Error::NotFound(object),
            409 => Error::Conflict(object),
            429 | 500.. => Error::Transient { what, message: status.message },
            403 => Error::Rejected {
                object,
                message: format!(
                    "{} ({}); the coordinator's ServiceAccount lacks this permission: with the Helm chart, list \
                     the namespace in targetNamespaces (workloads) or watchNamespaces (ActionSets), or add the \
                     rule with rbac.extraRules",
                    status.message, status.reason
                ),
            },
            _ => Error::Rejected { object, message: format!("{} ({})", status.message, status.reason) },
        },
        other => Error::Transient { what, message: other.to_string() },
    }
}

/// Where a followed log stands, so that a resumed read sends each line once: the timestamp of
/// the last line sent and how many lines sent carried it.
#[derive(Debug, Default)]
struct LogCursor {
    last: Option<(Timestamp, usize)>,
    /// Lines of the last timestamp the current read has still to skip.
    skip: usize,
    /// A line without a timestamp was sent: nothing after it can be resumed.
    untimed: bool,
}

impl LogCursor {
    /// Where a resumed read starts: the whole second of the last line (kube rounds sinceTime to
    /// seconds), at or before it.
    fn since(&self) -> Option<Timestamp> {
        self.last.and_then(|(t, _)| Timestamp::from_second(t.as_second()).ok())
    }

    /// A new read starts from [`LogCursor::since`].
    fn resume(&mut self) {
        self.skip = self.last.map_or(0, |(_, n)| n);
    }

    /// Whether a line read with timestamp `at` is new (and counts it as sent).
    fn admit(&mut self, at: Option<Timestamp>) -> bool {
        match (at, self.last) {
            (Some(at), Some((last, n))) => {
                if at < last || (at == last && self.skip > 0) {
                    self.skip = self.skip.saturating_sub(usize::from(at == last));
                    return false;
                }
                self.last = Some((at, if at == last { n + 1 } else { 1 }));
            }
            (Some(at), None) => self.last = Some((at, 1)),
            (None, _) => self.untimed = true,
        }
        true
    }
}

/// How the container ended, if it did; init containers report in a list of their own.
fn terminated<'a>(
    status: &'a k8s_openapi::api::core::v1::PodStatus,
    container: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerStateTerminated> {
    status
        .init_container_statuses
        .iter()
        .chain(&status.container_statuses)
        .flatten()
        .find(|c| c.name == container)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
}

/// Whether the pod ended (no container of it runs again).
fn pod_ended(status: &k8s_openapi::api::core::v1::PodStatus) -> bool {
    matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
}

/// (group, version, plural, namespaced) of the kinds the engine uses.
fn known_resource(kind: &str) -> Option<(&'static str, &'static str, &'static str, &'static str)> {
    Some(match kind_key(kind).as_str() {
        "pod" => ("", "v1", "Pod", "pods"),
        "secret" => ("", "v1", "Secret", "secrets"),
        "configmap" => ("", "v1", "ConfigMap", "configmaps"),
        "persistentvolumeclaim" => ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        "namespace" => ("", "v1", "Namespace", "namespaces"),
        "service" => ("", "v1", "Service", "services"),
        "statefulset" => ("apps", "v1", "StatefulSet", "statefulsets"),
        "deployment" => ("apps", "v1", "Deployment", "deployments"),
        "deploymentconfig" => ("apps.openshift.io", "v1", "DeploymentConfig", "deploymentconfigs"),
        "actionset" => (crate::crd::GROUP, crate::crd::VERSION, "ActionSet", "actionsets"),
        "blueprint" => (crate::crd::GROUP, crate::crd::VERSION, "Blueprint", "blueprints"),
        "profile" => (crate::crd::GROUP, crate::crd::VERSION, "Profile", "profiles"),
        "volumesnapshot" => ("snapshot.storage.k8s.io", "v1", "VolumeSnapshot", "volumesnapshots"),
        "volumesnapshotcontent" => ("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent", "volumesnapshotcontents"),
        "volumesnapshotclass" => ("snapshot.storage.k8s.io", "v1", "VolumeSnapshotClass", "volumesnapshotclasses"),
        _ => return None,
    })
}

impl KubeCluster {
    /// A cluster on `client`; events are reported as `reporter` (the controller's name).
    pub fn new(client: Client, reporter: &str) -> Self {
        let reporter = Reporter { controller: reporter.into(), instance: std::env::var("POD_NAME").ok() };
        KubeCluster { recorder: Recorder::new(client.clone(), reporter), client, poll: Duration::from_secs(2) }
    }

    /// Sets the poll interval of waits (default 2 s).
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The API resource of an object: from the table, or from discovery.
    async fn resource(&self, object: &ObjectRef) -> Result<ApiResource> {
        let (group, version) = match object.api_version.rsplit_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), object.api_version.clone()),
        };
        if let Some((g, v, kind, plural)) = known_resource(&object.kind) {
            let gvk = GroupVersionKind::gvk(g, if version.is_empty() { v } else { &version }, kind);
            return Ok(ApiResource::from_gvk_with_plural(&gvk, plural));
        }
        if object.kind.chars().all(|c| c.is_ascii_lowercase()) && object.kind.ends_with('s') {
            // A plural resource name (upstream objectReference.resource).
            let gvk = GroupVersionKind::gvk(&group, &version, "");
            return Ok(ApiResource::from_gvk_with_plural(&gvk, &object.kind));
        }
        let gvk = GroupVersionKind::gvk(&group, &version, &object.kind);
        kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map(|(r, _)| r)
            .map_err(map_err(object, &format!("discover kind {}", object.kind)))
    }

    async fn api(&self, object: &ObjectRef) -> Result<Api<DynamicObject>> {
        let resource = self.resource(object).await?;
        Ok(if object.namespace.is_empty() {
            Api::all_with(self.client.clone(), &resource)
        } else {
            Api::namespaced_with(self.client.clone(), &object.namespace, &resource)
        })
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The pod, through API server outages.
    async fn get_pod(&self, object: &ObjectRef) -> Result<Pod> {
        let what = format!("get pod {object}");
        through_outage(&what, || async {
            self.pods(&object.namespace).get(&object.name).await.map_err(map_err(object, &what))
        })
        .await
    }

    /// Watches object `object` (in `api`) until `done` holds for it (`None`: it does not exist),
    /// through `kube::runtime::wait`: the API server tells the change, no poll interval adds
    /// latency. Gives what `done` held for, or `Ok(None)` when `deadline` passed first. A watch
    /// the API server broke (a restart) is started again, for up to [`super::OUTAGE`] of failures
    /// in a row; a refused one (no `watch` permission) fails at once, naming the permission.
    async fn await_object<K>(
        &self,
        api: &Api<K>,
        object: &ObjectRef,
        deadline: Option<tokio::time::Instant>,
        done: impl Fn(Option<&K>) -> bool,
    ) -> Result<Option<Option<K>>>
    where
        K: Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + kube::Resource + 'static,
    {
        use kube::runtime::{wait, watcher};
        let what = format!("watch {object}");
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            let attempt = tokio::time::Instant::now();
            // Boxed: the watcher's state machine is large, and the engine's futures that await
            // this one are deep already (a debug build overflowed a worker's stack without it).
            let watch = Box::pin(wait::await_condition(api.clone(), &object.name, &done));
            let result = match deadline {
                Some(at) => match tokio::time::timeout_at(at, watch).await {
                    Ok(r) => r,
                    Err(_) => return Ok(None),
                },
                None => watch.await,
            };
            let cause = match result {
                Ok(found) => return Ok(Some(found)),
                Err(wait::Error::ProbeFailed(e)) => e,
            };
            let error = match cause {
                watcher::Error::InitialListFailed(e)
                | watcher::Error::WatchStartFailed(e)
                | watcher::Error::WatchFailed(e) => map_err(object, &what)(e),
                watcher::Error::WatchError(status) => map_err(object, &what)(kube::Error::Api(status)),
                watcher::Error::NoResourceVersion => {
                    Error::Rejected { object: object.clone(), message: "the API server cannot watch this kind".into() }
                }
            };
            // A watch that ran a while before it broke starts a new count of failures.
            if attempt.elapsed() > Duration::from_secs(10) {
                failing_since = None;
            }
            let since = *failing_since.get_or_insert(attempt);
            if !error.is_retryable() || since.elapsed() >= super::OUTAGE {
                return Err(error);
            }
            tracing::debug!(%what, %error, "the watch broke; watching again");
            tokio::time::sleep(self.poll.min(Duration::from_secs(1))).await;
        }
    }

    /// Whether the container ended (or never will: the pod ended or is gone).
    async fn container_ended(&self, object: &ObjectRef, container: &str) -> Result<bool> {
        let pod = match self.get_pod(object).await {
            Ok(pod) => pod,
            Err(Error::NotFound(_)) => return Ok(true),
            Err(e) => return Err(e),
        };
        let status = pod.status.unwrap_or_default();
        Ok(terminated(&status, container).is_some() || pod_ended(&status))
    }

    fn actionsets(&self, namespace: &str) -> Api<ActionSet> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The pod manifest of a task pod, with `podOverride` merged over it.
    pub fn pod_manifest(pod: &TaskPod) -> Value {
        let volume_mounts = |shared: bool| {
            let mut mounts: Vec<Value> =
                pod.volumes.iter().map(|(pvc, path)| json!({"name": pvc, "mountPath": path})).collect();
            if let (true, Some(dir)) = (shared, &pod.shared_dir) {
                mounts.push(json!({"name": "shared", "mountPath": dir}));
            }
            mounts
        };
        // Environment from Secrets goes in as `secretKeyRef`: the kubelet reads the value, which
        // never becomes part of the pod spec.
        let env: Vec<Value> = pod
            .env
            .iter()
            .map(|e| match &e.source {
                super::EnvSource::Value(v) => json!({"name": e.name, "value": v}),
                super::EnvSource::SecretKey { secret, key } => {
                    json!({"name": e.name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
                }
            })
            .collect();
        let container = |c: &super::Container| {
            let mut v =
                json!({"name": c.name, "image": c.image, "command": c.command, "volumeMounts": volume_mounts(true)});
            if !env.is_empty() {
                v["env"] = Value::Array(env.clone());
            }
            v
        };
        let mut volumes: Vec<Value> =
            pod.volumes.keys().map(|pvc| json!({"name": pvc, "persistentVolumeClaim": {"claimName": pvc}})).collect();
        if pod.shared_dir.is_some() {
            volumes.push(json!({"name": "shared", "emptyDir": {}}));
        }
        let mut spec = json!({
            "restartPolicy": "Never",
            "containers": pod.containers.iter().map(container).collect::<Vec<_>>(),
            "volumes": volumes,
        });
        if !pod.init_containers.is_empty() {
            spec["initContainers"] = Value::Array(pod.init_containers.iter().map(container).collect());
        }
        if !pod.service_account.is_empty() {
            spec["serviceAccountName"] = Value::String(pod.service_account.clone());
        }
        // podOverride: containers merge by name, their env by variable name (as a strategic
        // merge patch: the coordinator's variables stay), everything else as a JSON merge patch.
        let mut over = Value::Object(pod.pod_override.clone().into_iter().collect());
        if let Some(Value::Array(overrides)) = over.as_object_mut().and_then(|o| o.remove("containers"))
            && let Some(Value::Array(containers)) = spec.get_mut("containers")
        {
            for mut o in overrides {
                let name = o.get("name").and_then(Value::as_str).unwrap_or("container").to_string();
                if let Some(c) = containers.iter_mut().find(|c| c["name"] == name.as_str()) {
                    if let Some(Value::Array(env)) = o.as_object_mut().and_then(|o| o.remove("env")) {
                        let mut merged = c.get("env").and_then(Value::as_array).cloned().unwrap_or_default();
                        super::merge_env(&mut merged, &env);
                        c["env"] = Value::Array(merged);
                    }
                    merge_patch(c, &o);
                }
            }
        }
        merge_patch(&mut spec, &over);
        let mut metadata = json!({
            "generateName": pod.generate_name,
            "namespace": pod.namespace,
            "labels": pod.labels,
            "annotations": pod.annotations,
        });
        if let Some(o) = &pod.owner {
            metadata["ownerReferences"] = json!([{
                "apiVersion": o.api_version, "kind": o.kind, "name": o.name, "uid": o.uid,
                "controller": true, "blockOwnerDeletion": true
            }]);
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
    }
}

/// Why a pending pod has not started, as Kubernetes says it.
#[derive(Debug)]
struct Waiting {
    text: String,
    /// It will not start without someone changing something (the image name, the registry's
    /// credentials, a missing Secret or ConfigMap): waiting longer only hides the reason.
    never: bool,
}

/// Waiting reasons of a container that does not get better by waiting. Kubernetes retries
/// these too, with backoff, but a task pod has no one to fix the image or the Secret while it
/// waits (upstream Kanister fails on image pull errors the same way). A pod that is merely
/// unschedulable is not here: an autoscaler may still add a node; its reason goes into the
/// timeout's message instead.
const NEVER_STARTS: [&str; 7] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What keeps a pending pod from starting: its containers' (init containers' first) waiting
/// reasons and an unschedulable condition, with Kubernetes' messages.
fn not_started(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<Waiting> {
    let Some(status) = &pod.status else { return Vec::new() };
    let mut out = Vec::new();
    let containers = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    for c in containers {
        let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else { continue };
        let Some(reason) =
            w.reason.as_deref().filter(|r| !r.is_empty() && *r != "ContainerCreating" && *r != "PodInitializing")
        else {
            continue;
        };
        let message = w.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        out.push(Waiting {
            text: format!("container {} is {reason}{message}", c.name),
            never: NEVER_STARTS.contains(&reason),
        });
    }
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled" && c.status == "False" {
            let reason = c.reason.as_deref().unwrap_or("not scheduled");
            let message = c.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            out.push(Waiting { text: format!("{reason}{message}"), never: false });
        }
    }
    out
}

fn exit_from_status(status: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>) -> ExitStatus {
    let Some(status) = status else { return ExitStatus::exited(None) };
    if status.status.as_deref() == Some("Success") {
        return ExitStatus::exited(Some(0));
    }
    let code = status
        .details
        .and_then(|d| d.causes)
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.and_then(|m| m.parse().ok()));
    ExitStatus::exited(code)
}

async fn pump(mut r: impl tokio::io::AsyncRead + Unpin, stream: Stream, tx: mpsc::Sender<Chunk>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 || tx.send(Chunk { stream, data: buf[..n].to_vec() }).await.is_err() {
            return;
        }
    }
}

impl Cluster for KubeCluster {
    async fn get(&self, object: &ObjectRef) -> Result<Value> {
        let api = self.api(object).await?;
        let o = api.get(&object.name).await.map_err(map_err(object, &format!("get {object}")))?;
        serde_json::to_value(o).map_err(|e| Error::Transient { what: format!("get {object}"), message: e.to_string() })
    }

    async fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Value>> {
        let object = ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: String::new(),
        };
        let api = self.api(&object).await?;
        let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let lp = ListParams::default().labels(&selector.join(","));
        let list = api.list(&lp).await.map_err(map_err(&object, &format!("list {kind} in {namespace}")))?;
        Ok(list.items.into_iter().filter_map(|o| serde_json::to_value(o).ok()).collect())
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<SecretData> {
        let object = ObjectRef::new("Secret", namespace, name);
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), namespace);
        let s = api.get(name).await.map_err(map_err(&object, &format!("get secret {namespace}/{name}")))?;
        let mut data: BTreeMap<String, Vec<u8>> =
            s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        for (k, v) in s.string_data.unwrap_or_default() {
            data.insert(k, v.into_bytes());
        }
        Ok(SecretData { secret_type: s.type_.unwrap_or_else(|| "Opaque".into()), data })
    }

    async fn exec(&self, request: &ExecRequest, output: mpsc::Sender<Chunk>) -> Result<ExitStatus> {
        let object = ObjectRef::new("Pod", &request.namespace, &request.pod);
        let what = format!("exec in pod {}/{}", request.namespace, request.pod);
        let mut ap = AttachParams::default().stdin(false).stdout(true).stderr(true);
        if !request.container.is_empty() {
            ap = ap.container(&request.container);
        }
        let mut process = self
            .pods(&request.namespace)
            .exec(&request.pod, request.command.clone(), &ap)
            .await
            .map_err(map_err(&object, &what))?;
        let status = process.take_status();
        let out = process.stdout().map(|o| tokio::spawn(pump(o, Stream::Stdout, output.clone())));
        let err = process.stderr().map(|e| tokio::spawn(pump(e, Stream::Stderr, output)));
        for t in [out, err].into_iter().flatten() {
            let _ = t.await;
        }
        let status = match status {
            Some(s) => s.await,
            None => None,
        };
        let _ = process.join().await;
        Ok(exit_from_status(status))
    }

    async fn create_pod(&self, pod: &TaskPod) -> Result<String> {
        let object = ObjectRef::new("Pod", &pod.namespace, &pod.generate_name);
        let manifest: Pod = serde_json::from_value(Self::pod_manifest(pod))
            .map_err(|e| Error::Rejected { object: object.clone(), message: format!("invalid pod: {e}") })?;
        let created = self
            .pods(&pod.namespace)
            .create(&PostParams::default(), &manifest)
            .await
            .map_err(map_err(&object, &format!("create pod in {}", pod.namespace)))?;
        Ok(created.metadata.name.unwrap_or_default())
    }

    async fn wait_pod_started(&self, namespace: &str, name: &str, timeout: Duration) -> Result<()> {
        let object = ObjectRef::new("Pod", namespace, name);
        let started = |pod: &Pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
            matches!(phase, "Running" | "Succeeded" | "Failed")
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let seen = self
            .await_object(&self.pods(namespace), &object, Some(deadline), |pod: Option<&Pod>| {
                pod.is_none_or(|p| started(p) || not_started(p).iter().any(|w| w.never))
            })
            .await?;
        let pod = match seen {
            Some(Some(pod)) => pod,
            Some(None) => return Err(Error::NotFound(object)),
            // Timed out: say what the pod waits for.
            None => {
                let pod = self.get_pod(&object).await?;
                if started(&pod) {
                    return Ok(());
                }
                let why = not_started(&pod).iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join("; ");
                let what = if why.is_empty() {
                    format!("pod {namespace}/{name} to start")
                } else {
                    format!("pod {namespace}/{name} to start (it waits: {why})")
                };
                return Err(Error::Timeout { what, after: timeout });
            }
        };
        if started(&pod) {
            return Ok(());
        }
        let never = not_started(&pod).into_iter().find(|w| w.never).map(|w| w.text).unwrap_or_default();
        Err(Error::Rejected { object, message: format!("the pod cannot start: {never}") })
    }

    /// Follows the container's log with timestamps, so that a stream the API server broke (a
    /// restart) resumes where it stopped: reopened from the second of the last line, the lines
    /// already sent skipped. When the stream ends, the pod says whether the container ended; if
    /// so, one last read without follow brings what a broken stream may have missed.
    async fn pod_logs(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
        output: mpsc::Sender<Vec<u8>>,
    ) -> Result<()> {
        let object = ObjectRef::new("Pod", namespace, name);
        let what = format!("logs of {object}");
        let mut cursor = LogCursor::default();
        let mut follow = true;
        loop {
            let lp = LogParams {
                follow,
                container: Some(container.into()),
                timestamps: true,
                since_time: cursor.since(),
                ..Default::default()
            };
            let open = || async { self.pods(namespace).log_stream(name, &lp).await.map_err(map_err(&object, &what)) };
            let mut stream = std::pin::pin!(through_outage(&what, open).await?);
            cursor.resume();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stream.read_until(b'\n', &mut buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(pod = %object, error = %e, "log stream broke; resuming");
                        break;
                    }
                }
                // A line cut short while following: the resumed read has it whole.
                if buf.pop_if(|b| *b == b'\n').is_none() && follow {
                    break;
                }
                let line = String::from_utf8_lossy(&buf);
                let (at, text) = match line.split_once(' ').map(|(t, rest)| (t.parse::<Timestamp>(), rest)) {
                    Some((Ok(at), rest)) => (Some(at), rest),
                    _ => (None, &*line),
                };
                if !cursor.admit(at) {
                    continue;
                }
                let mut data = text.as_bytes().to_vec();
                data.push(b'\n');
                if output.send(data).await.is_err() {
                    return Ok(());
                }
            }
            // A line without a timestamp cannot be resumed after: the stream's end is the end.
            if !follow || cursor.untimed {
                return Ok(());
            }
            follow = !self.container_ended(&object, container).await?;
            if follow {
                tokio::time::sleep(self.poll).await;
            }
        }
    }

    async fn wait_container(&self, namespace: &str, name: &str, container: &str) -> Result<ExitStatus> {
        let object = ObjectRef::new("Pod", namespace, name);
        let seen = self
            .await_object(&self.pods(namespace), &object, None, |pod: Option<&Pod>| {
                pod.is_none_or(|p| {
                    p.status.as_ref().is_some_and(|s| terminated(s, container).is_some() || pod_ended(s))
                })
            })
            .await?;
        let Some(Some(pod)) = seen else { return Err(Error::NotFound(object)) };
        let status = pod.status.unwrap_or_default();
        if let Some(t) = terminated(&status, container) {
            return Ok(ExitStatus {
                code: Some(t.exit_code),
                signal: t.signal.filter(|s| *s != 0),
                reason: t.reason.clone(),
            });
        }
        // A pod that ended before the container ran (its init container failed) never
        // terminates it: waiting longer would wait forever.
        let phase = status.phase.as_deref().unwrap_or_default();
        Ok(ExitStatus::never_started(&format!("the pod ended {phase} before it ran")))
    }

    async fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let object = ObjectRef::new("Pod", namespace, name);
        let what = format!("delete {object}");
        let delete = || async {
            self.pods(namespace).delete(name, &DeleteParams::background()).await.map_err(map_err(&object, &what))
        };
        match through_outage(&what, delete).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }

    async fn scale(&self, workload: &ObjectRef, replicas: i32) -> Result<()> {
        let api = self.api(workload).await?;
        let patch = json!({"spec": {"replicas": replicas}});
        api.patch_scale(&workload.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(map_err(workload, &format!("scale {workload}")))?;
        Ok(())
    }

    async fn wait_ready(&self, workload: &ObjectRef, timeout: Duration) -> Result<()> {
        let ready = |o: &DynamicObject| {
            let field = |p: &str, default: i64| o.data.pointer(p).and_then(Value::as_i64).unwrap_or(default);
            let want = field("/spec/replicas", 1);
            field("/status/readyReplicas", 0) == want && field("/status/replicas", 0) == want
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let api = self.api(workload).await?;
        match self.await_object(&api, workload, Some(deadline), |o: Option<&DynamicObject>| o.is_none_or(ready)).await?
        {
            Some(Some(_)) => Ok(()),
            Some(None) => Err(Error::NotFound(workload.clone())),
            None => Err(Error::Timeout { what: format!("{workload} to be ready"), after: timeout }),
        }
    }

    async fn apply(&self, object: Value, namespace: &str) -> Result<ObjectRef> {
        let s = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
        let mut r = ObjectRef {
            api_version: s("/apiVersion"),
            kind: s("/kind"),
            namespace: s("/metadata/namespace"),
            name: s("/metadata/name"),
        };
        if r.namespace.is_empty() {
            r.namespace = namespace.into();
        }
        let api = self.api(&r).await?;
        let dynamic: DynamicObject = serde_json::from_value(object)
            .map_err(|e| Error::Rejected { object: r.clone(), message: format!("invalid object: {e}") })?;
        let created =
            api.create(&PostParams::default(), &dynamic).await.map_err(map_err(&r, &format!("create {r}")))?;
        r.name = created.metadata.name.unwrap_or_default();
        Ok(r)
    }

    async fn patch(&self, object: &ObjectRef, patch: Value) -> Result<()> {
        let api = self.api(object).await?;
        api.patch(&object.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(map_err(object, &format!("patch {object}")))?;
        Ok(())
    }

    async fn delete(&self, object: &ObjectRef) -> Result<()> {
        let api = self.api(object).await?;
        match api.delete(&object.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err(object, &format!("delete {object}"))(e) {
                Error::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn record_event<K>(&self, regarding: &K, event: Event)
    where
        K: ::kube::Resource<DynamicType = ()> + Sync,
    {
        let ev = KubeEvent {
            type_: match event.type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: event.reason,
            // The Events API limits notes to 1 kB.
            note: Some(event.note.chars().take(1000).collect()),
            action: event.action,
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &regarding.object_ref(&())).await {
            tracing::warn!(error = %e, "failed to publish event");
        }
    }

    async fn events(&self, regarding: &ActionSet) -> Result<Vec<ObservedEvent>> {
        use k8s_openapi::api::events::v1::Event as K8sEvent;
        let namespace = regarding.metadata.namespace.clone().unwrap_or_default();
        let name = regarding.metadata.name.clone().unwrap_or_default();
        let mut fields = format!("regarding.kind=ActionSet,regarding.name={name}");
        if let Some(uid) = regarding.metadata.uid.as_deref().filter(|u| !u.is_empty()) {
            fields.push_str(&format!(",regarding.uid={uid}"));
        }
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let object = ObjectRef { api_version: "events.k8s.io/v1".into(), ..ObjectRef::new("Event", &namespace, "") };
        let list = api
            .list(&ListParams::default().fields(&fields))
            .await
            .map_err(map_err(&object, &format!("list the events of actionset {namespace}/{name}")))?;
        // When it last happened: the series' last observation, else the event's own time.
        let last = |e: &K8sEvent| {
            e.series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
        };
        let mut items = list.items;
        items.sort_by_key(|e| last(e));
        Ok(items
            .iter()
            .map(|e| ObservedEvent {
                type_: if e.type_.as_deref() == Some("Warning") { EventType::Warning } else { EventType::Normal },
                reason: e.reason.clone().unwrap_or_default(),
                note: e.note.clone().unwrap_or_default(),
                time: last(e).map(|t| t.to_string()).unwrap_or_default(),
                count: e.series.as_ref().map(|s| s.count).or(e.deprecated_count).unwrap_or(1).max(1),
            })
            .collect())
    }

    async fn list_actionsets(&self, namespace: &str) -> Result<Vec<ActionSet>> {
        let api: Api<ActionSet> =
            if namespace.is_empty() { Api::all(self.client.clone()) } else { self.actionsets(namespace) };
        let object = ObjectRef::actionset(namespace, "");
        let list = api.list(&ListParams::default()).await.map_err(map_err(&object, "list actionsets"))?;
        Ok(list.items)
    }

    async fn get_actionset(&self, namespace: &str, name: &str) -> Result<ActionSet> {
        let object = ObjectRef::actionset(namespace, name);
        self.actionsets(namespace).get(name).await.map_err(map_err(&object, &format!("get {object}")))
    }

    async fn agent_endpoint(&self, namespace: &str, pod: &str) -> Result<String> {
        let value = self.get(&ObjectRef::new("Pod", namespace, pod)).await?;
        super::agent_endpoint_of(&value, namespace, pod)
    }

    async fn replace_actionset_status(
        &self,
        namespace: &str,
        name: &str,
        resource_version: &str,
        status: &ActionSetStatus,
    ) -> Result<String> {
        let object = ObjectRef::actionset(namespace, name);
        let mut body = ActionSet::new(name, Default::default());
        body.metadata.namespace = Some(namespace.into());
        body.metadata.resource_version = Some(resource_version.into());
        body.status = Some(status.clone());
        let written = self
            .actionsets(namespace)
            .replace_status(name, &PostParams::default(), &body)
            .await
            .map_err(map_err(&object, &format!("write status of {object}")))?;
        Ok(written.metadata.resource_version.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::{LogCursor, Timestamp};
    use rand::{Rng, SeedableRng};

    /// Random logs (runs of lines sharing a timestamp, within a second and across seconds) read
    /// through streams cut after random lines and resumed as the API server serves them (every
    /// line from the whole second of sinceTime on): each line arrives once, in order.
    #[test]
    fn resumed_log_reads_send_every_line_once() {
        let seed: u64 =
            std::env::var("KANISTER_LOG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
        eprintln!("seed {seed} (replay with KANISTER_LOG_SEED={seed})");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for round in 0..500 {
            let mut t: i128 = 1_700_000_000_000_000_000;
            let lines: Vec<(Timestamp, String)> = (0..rng.gen_range(1..60))
                .map(|i| {
                    if rng.gen_bool(0.6) {
                        t += rng.gen_range(1..800_000_000);
                    }
                    (Timestamp::from_nanosecond(t).expect("in range"), format!("line {i}"))
                })
                .collect();
            let mut cursor = LogCursor::default();
            let mut got = Vec::new();
            let mut reads = 0;
            loop {
                reads += 1;
                cursor.resume();
                let start =
                    cursor.since().map_or(0, |s| lines.iter().position(|(at, _)| *at >= s).unwrap_or(lines.len()));
                let cut = rng.gen_range(start..=lines.len());
                for (at, text) in &lines[start..cut] {
                    if cursor.admit(Some(*at)) {
                        got.push(text.clone());
                    }
                }
                if cut == lines.len() {
                    break;
                }
            }
            let want: Vec<String> = lines.iter().map(|(_, l)| l.clone()).collect();
            assert_eq!(got, want, "round {round}, {reads} reads (seed {seed})");
        }
    }

    /// A line without a timestamp stops resumption: what follows it cannot be placed.
    #[test]
    fn an_untimed_line_ends_resumption() {
        let mut cursor = LogCursor::default();
        assert!(cursor.admit(None));
        assert!(cursor.untimed);
    }
}
