//! [`LocalCluster`]: a [`Cluster`] on this machine, for end-to-end tests and for trying a
//! blueprint without Kubernetes.
//!
//! - Objects (workloads, pods, Secrets, ConfigMaps, Blueprints, Profiles, ActionSets) come from
//!   YAML files or are created through the API; each has a `resourceVersion` that changes on
//!   every write, so status writes see conflicts as on a real API server.
//! - `exec` runs the command on the host (the pod must exist as an object); task pods run their
//!   containers as host processes, init containers first; the image is only recorded. A task
//!   pod's environment (literals and Secret keys, read from this cluster's Secrets) is set on
//!   its processes, with the `env` a `podOverride` gives a container (values and
//!   `secretKeyRef`s) merged in by name; [`LocalCluster::with_env`] sets variables of every
//!   command, as an image would (a `PATH` holding `kando`).
//!   Every process runs in its own process group, which is killed when the exec future is
//!   dropped, when the pod is deleted and when the cluster is dropped.
//! - `scale` records the replica count and the workload is ready at once.
//! - Events and every exec, pod and scale are recorded for inspection
//!   ([`LocalCluster::events`], [`LocalCluster::execs`], [`LocalCluster::pods`],
//!   [`LocalCluster::scales`]).
//! - With [`LocalCluster::with_state_file`], objects (ActionSet status included) and events are
//!   saved to a JSON file after every write and loaded again by the next instance, so a restarted
//!   coordinator finds what the previous one left.

mod objects;
mod process;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub use self::objects::{LoadError, RecordedEvent};
use self::objects::{State, key_of, object_key, object_ref};
use self::process::{GroupGuard, LocalContainer, LocalPod, kill_group, pump, run_container};
use super::{
    Chunk, Cluster, Container, EnvSource, Error, Event, EventType, ExecRequest, ExitStatus, ObjectRef, ObservedEvent,
    Result, SecretData, Stream, TaskPod, kind_key, merge_patch,
};
use crate::crd::{ActionSet, ActionSetStatus};

/// A recorded exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod.
    pub pod: String,
    /// Container.
    pub container: String,
    /// Command.
    pub command: Vec<String>,
}

/// A recorded task pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    /// Its generated name.
    pub name: String,
    /// What was asked for.
    pub spec: TaskPod,
}

/// A [`Cluster`] on this machine. See the module documentation.
pub struct LocalCluster {
    state: Mutex<State>,
    state_file: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    host_env: Vec<(String, String)>,
    pods: Mutex<HashMap<(String, String), LocalPod>>,
    execs: Mutex<Vec<ExecRecord>>,
    pod_records: Mutex<Vec<PodRecord>>,
    scales: Mutex<Vec<(ObjectRef, i32)>>,
    conflicts: AtomicUsize,
    final_failures: AtomicUsize,
    agents: Mutex<HashMap<(String, String), String>>,
    volumes: Mutex<HashMap<(String, String), PathBuf>>,
    status_writes: Mutex<Vec<(String, String, Value)>>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("objects", &lock(&self.state).objects.len())
            .field("state_file", &self.state_file)
            .finish()
    }
}

impl Default for LocalCluster {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalCluster {
    /// Registers PVC `namespace/pvc` as the host directory `dir`. Local processes cannot mount
    /// anything, so a task pod that mounts the PVC at a path runs with every argument that is
    /// (or starts with) that mount path rewritten to `dir`. A task pod mounting an unregistered
    /// PVC is refused, as the kubelet would not start it.
    pub fn with_volume(self, namespace: &str, pvc: &str, dir: impl Into<PathBuf>) -> Self {
        lock(&self.volumes).insert((namespace.into(), pvc.into()), dir.into());
        self
    }

    /// The task pod's mount paths and the host directories standing for them.
    fn mounts(&self, pod: &TaskPod) -> Result<Vec<(String, PathBuf)>> {
        let volumes = lock(&self.volumes);
        pod.volumes
            .iter()
            .map(|(pvc, mount)| match volumes.get(&(pod.namespace.clone(), pvc.clone())) {
                Some(dir) => Ok((mount.trim_end_matches('/').to_string(), dir.clone())),
                None => Err(Error::NotFound(ObjectRef::new("PersistentVolumeClaim", &pod.namespace, pvc))),
            })
            .collect()
    }

    /// Registers the agent sidecar of pod `namespace/pod`: its gRPC endpoint
    /// (`http://127.0.0.1:port`), as [`Cluster::agent_endpoint`] answers it.
    pub fn with_agent(self, namespace: &str, pod: &str, endpoint: impl Into<String>) -> Self {
        lock(&self.agents).insert((namespace.into(), pod.into()), endpoint.into());
        self
    }

    /// Every status written to ActionSet `namespace/name` so far, oldest first, as JSON.
    pub fn status_writes(&self, namespace: &str, name: &str) -> Vec<Value> {
        lock(&self.status_writes)
            .iter()
            .filter(|(ns, n, _)| ns == namespace && n == name)
            .map(|(_, _, v)| v.clone())
            .collect()
    }

    /// An empty cluster kept in memory.
    pub fn new() -> Self {
        LocalCluster {
            state: Mutex::new(State { next_version: 1, ..Default::default() }),
            state_file: None,
            work_dir: None,
            host_env: Vec::new(),
            pods: Mutex::new(HashMap::new()),
            execs: Mutex::new(Vec::new()),
            pod_records: Mutex::new(Vec::new()),
            scales: Mutex::new(Vec::new()),
            conflicts: AtomicUsize::new(0),
            final_failures: AtomicUsize::new(0),
            agents: Mutex::new(HashMap::new()),
            volumes: Mutex::new(HashMap::new()),
            status_writes: Mutex::new(Vec::new()),
        }
    }

    /// A cluster saved to `path` after every write, starting from what `path` holds if it
    /// exists.
    pub fn with_state_file(path: impl Into<PathBuf>) -> Result<Self, LoadError> {
        let path = path.into();
        let mut cluster = Self::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let state: State =
                    serde_json::from_slice(&bytes).map_err(|source| LoadError::State { path: path.clone(), source })?;
                *lock(&cluster.state) = state;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LoadError::Io { path, source }),
        }
        cluster.state_file = Some(path);
        Ok(cluster)
    }

    /// Runs commands in `dir` (default: the current directory).
    pub fn with_work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Sets an environment variable of every command this cluster runs (exec and task pods), as
    /// an image would (`PATH` with a directory holding `kando`, for example).
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.host_env.push((name.into(), value.into()));
        self
    }

    /// The values of a task pod's environment: literals as given, Secret keys read from the
    /// Secrets of the pod's namespace (a missing Secret or key fails the pod's creation, as the
    /// kubelet refuses to start such a container).
    /// The environment of `container` of `pod`: the pod's variables, then those its
    /// `podOverride` gives the container (literal values and `secretKeyRef`s; a variable of the
    /// same name is replaced, as Kubernetes merges them).
    async fn pod_env(&self, pod: &TaskPod, container: &str) -> Result<Vec<(String, String)>> {
        let reject = |message: String| Error::Rejected {
            object: ObjectRef::new("Pod", &pod.namespace, &pod.generate_name),
            message,
        };
        let mut vars: Vec<(String, EnvSource)> = pod.env.iter().map(|v| (v.name.clone(), v.source.clone())).collect();
        for entry in pod.override_env(container) {
            let name = entry.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let source = match (entry.get("value"), entry.pointer("/valueFrom/secretKeyRef")) {
                (_, Some(r)) => EnvSource::SecretKey {
                    secret: r.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                    key: r.get("key").and_then(Value::as_str).unwrap_or_default().to_string(),
                },
                (Some(Value::String(v)), None) => EnvSource::Value(v.clone()),
                (None, None) if entry.get("valueFrom").is_none() => EnvSource::Value(String::new()),
                _ => {
                    return Err(reject(format!(
                        "podOverride env {name:?}: the local cluster takes a string value or valueFrom.secretKeyRef"
                    )));
                }
            };
            if name.is_empty() {
                return Err(reject("podOverride env entry without a name".into()));
            }
            match vars.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = source,
                None => vars.push((name, source)),
            }
        }
        let mut env = Vec::new();
        for (name, source) in vars {
            let value = match source {
                EnvSource::Value(v) => v,
                EnvSource::SecretKey { secret, key } => {
                    let data = self.secret(&pod.namespace, &secret).await?;
                    let v = data.data.get(&key).ok_or_else(|| Error::Rejected {
                        object: ObjectRef::new("Secret", &pod.namespace, &secret),
                        message: format!("secret has no key {key:?} (environment variable {name})"),
                    })?;
                    String::from_utf8_lossy(v).into_owned()
                }
            };
            env.push((name, value));
        }
        Ok(env)
    }

    /// Makes the next `n` status writes fail with a conflict, as when another writer raced.
    pub fn inject_status_conflicts(&self, n: usize) {
        self.conflicts.store(n, Ordering::SeqCst);
    }

    /// Makes the next `n` writes of a final status (`complete`, `failed`) fail as when the API
    /// server is briefly unreachable: a failure a real server cannot produce on demand.
    pub fn inject_final_status_failures(&self, n: usize) {
        self.final_failures.store(n, Ordering::SeqCst);
    }

    /// The recorded events, oldest first.
    pub fn events(&self) -> Vec<RecordedEvent> {
        lock(&self.state).events.clone()
    }

    /// The recorded execs, oldest first.
    pub fn execs(&self) -> Vec<ExecRecord> {
        lock(&self.execs).clone()
    }

    /// The task pods created, oldest first.
    pub fn pods(&self) -> Vec<PodRecord> {
        lock(&self.pod_records).clone()
    }

    /// Names of the task pods not deleted yet.
    pub fn live_pods(&self) -> Vec<String> {
        lock(&self.pods).keys().map(|(_, n)| n.clone()).collect()
    }

    /// The scale requests, oldest first.
    pub fn scales(&self) -> Vec<(ObjectRef, i32)> {
        lock(&self.scales).clone()
    }
}

impl Cluster for LocalCluster {
    async fn get(&self, object: &ObjectRef) -> Result<Value> {
        self.find(object)
    }

    async fn list(
        &self,
        _api_version: &str,
        kind: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Value>> {
        let kind = kind_key(kind);
        let state = lock(&self.state);
        Ok(state
            .objects
            .values()
            .filter(|v| v.get("kind").and_then(Value::as_str).is_some_and(|k| kind_key(k) == kind))
            .filter(|v| {
                namespace.is_empty() || v.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace)
            })
            .filter(|v| {
                labels.iter().all(|(k, want)| {
                    v.pointer("/metadata/labels").and_then(|l| l.get(k)).and_then(Value::as_str) == Some(want.as_str())
                })
            })
            .cloned()
            .collect())
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<SecretData> {
        let object = ObjectRef::new("Secret", namespace, name);
        let v = self.find(&object)?;
        let mut out = SecretData {
            secret_type: v.get("type").and_then(Value::as_str).unwrap_or("Opaque").to_string(),
            data: BTreeMap::new(),
        };
        if let Some(data) = v.get("data").and_then(Value::as_object) {
            for (k, val) in data {
                let decoded =
                    base64::engine::general_purpose::STANDARD.decode(val.as_str().unwrap_or_default()).map_err(
                        |_| Error::Rejected { object: object.clone(), message: format!("key {k:?} is not base64") },
                    )?;
                out.data.insert(k.clone(), decoded);
            }
        }
        if let Some(data) = v.get("stringData").and_then(Value::as_object) {
            for (k, val) in data {
                out.data.insert(k.clone(), val.as_str().unwrap_or_default().as_bytes().to_vec());
            }
        }
        Ok(out)
    }

    async fn exec(&self, request: &ExecRequest, output: mpsc::Sender<Chunk>) -> Result<ExitStatus> {
        let pod = ObjectRef::new("Pod", &request.namespace, &request.pod);
        let pod_object = self.find(&pod)?;
        let container = if request.container.is_empty() {
            pod_object.pointer("/spec/containers/0/name").and_then(Value::as_str).unwrap_or_default().to_string()
        } else {
            request.container.clone()
        };
        lock(&self.execs).push(ExecRecord {
            namespace: request.namespace.clone(),
            pod: request.pod.clone(),
            container,
            command: request.command.clone(),
        });
        let what = format!("exec in pod {}/{}", request.namespace, request.pod);
        // As in a pod, HOSTNAME is the pod's name.
        let spawned = process::command(&request.command, &what, self.work_dir.as_deref(), &self.host_env)?
            .env("HOSTNAME", &request.pod)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            // As a container runtime answers an exec of a program that is not there: exit 127
            // and a line naming it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let line = format!("exec {}: {e}\n", request.command[0]);
                let _ = output.send(Chunk { stream: Stream::Stderr, data: line.into_bytes() }).await;
                return Ok(ExitStatus::exited(Some(127)));
            }
            Err(e) => return Err(Error::Transient { what: what.clone(), message: e.to_string() }),
        };
        let mut guard = GroupGuard(child.id());
        let out = child.stdout.take().map(|o| tokio::spawn(pump(o, Stream::Stdout, output.clone())));
        let err = child.stderr.take().map(|e| tokio::spawn(pump(e, Stream::Stderr, output)));
        let status = child.wait().await.map_err(|e| Error::Transient { what, message: e.to_string() })?;
        // The command ended: stop what it left in the background, then drain its output.
        if let Some(pgid) = guard.0.take() {
            kill_group(pgid);
        }
        for t in [out, err].into_iter().flatten() {
            let _ = t.await;
        }
        Ok(ExitStatus::of_process(status))
    }

    async fn create_pod(&self, pod: &TaskPod) -> Result<String> {
        let name = format!("{}{}", pod.generate_name, super::generated_suffix());
        let mut containers = HashMap::new();
        let mut plan: Vec<(bool, Container, Arc<LocalContainer>)> = Vec::new();
        for (init, c) in pod.init_containers.iter().map(|c| (true, c)).chain(pod.containers.iter().map(|c| (false, c)))
        {
            let state = LocalContainer::new();
            containers.insert(c.name.clone(), state.clone());
            plan.push((init, c.clone(), state));
        }
        let mounts = self.mounts(pod)?;
        let mut commands = Vec::new();
        for (init, mut c, state) in plan {
            // podOverride applies to the containers, not the init containers (as on a cluster).
            let env = self.pod_env(pod, if init { "" } else { &c.name }).await?;
            for arg in &mut c.command {
                for (mount, dir) in &mounts {
                    if let Some(rest) = arg.strip_prefix(mount.as_str())
                        && (rest.is_empty() || rest.starts_with('/'))
                    {
                        *arg = format!("{}{rest}", dir.display());
                    }
                }
            }
            let what = format!("container {} of pod {}/{name}", c.name, pod.namespace);
            let command =
                process::command(&c.command, &what, self.work_dir.as_deref(), &self.host_env).map(|mut cmd| {
                    cmd.envs(env.iter().map(|(k, v)| (k, v)));
                    cmd
                });
            commands.push((init, command, state));
        }
        let runner = tokio::spawn(async move {
            let mut init_failed = false;
            let mut running = Vec::new();
            for (init, cmd, state) in commands {
                if init_failed {
                    state.append(b"not started: an init container failed\n");
                    state.exit(ExitStatus::exited(None));
                } else if init {
                    init_failed = !run_container(cmd, state).await.success();
                } else {
                    running.push(tokio::spawn(run_container(cmd, state)));
                }
            }
            for r in running {
                let _ = r.await;
            }
        });
        lock(&self.pod_records).push(PodRecord { name: name.clone(), spec: pod.clone() });
        lock(&self.pods).insert((pod.namespace.clone(), name.clone()), LocalPod { containers, runner });
        Ok(name)
    }

    async fn wait_pod_started(&self, namespace: &str, name: &str, _timeout: Duration) -> Result<()> {
        if lock(&self.pods).contains_key(&(namespace.to_string(), name.to_string())) {
            Ok(())
        } else {
            Err(Error::NotFound(ObjectRef::new("Pod", namespace, name)))
        }
    }

    async fn pod_logs(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
        output: mpsc::Sender<Vec<u8>>,
    ) -> Result<()> {
        self.container(namespace, name, container)?.stream_log(output).await;
        Ok(())
    }

    async fn wait_container(&self, namespace: &str, name: &str, container: &str) -> Result<ExitStatus> {
        let container = self.container(namespace, name, container)?;
        container.wait_exit().await.ok_or_else(|| Error::NotFound(ObjectRef::new("Pod", namespace, name)))
    }

    async fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let pod = lock(&self.pods).remove(&(namespace.to_string(), name.to_string()));
        drop(pod);
        Ok(())
    }

    async fn scale(&self, workload: &ObjectRef, replicas: i32) -> Result<()> {
        self.update(workload, |v| {
            merge_patch(
                v,
                &json!({"spec": {"replicas": replicas}, "status": {"replicas": replicas, "readyReplicas": replicas}}),
            );
            Ok(())
        })?;
        lock(&self.scales).push((workload.clone(), replicas));
        Ok(())
    }

    async fn wait_ready(&self, workload: &ObjectRef, _timeout: Duration) -> Result<()> {
        let v = self.find(workload)?;
        let want = v.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let ready = v.pointer("/status/readyReplicas").and_then(Value::as_i64).unwrap_or(want);
        if ready == want {
            Ok(())
        } else {
            Err(Error::Timeout { what: format!("{workload} to be ready"), after: Duration::ZERO })
        }
    }

    async fn apply(&self, mut object: Value, namespace: &str) -> Result<ObjectRef> {
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            if !meta.contains_key("namespace") && !namespace.is_empty() {
                meta.insert("namespace".into(), Value::String(namespace.into()));
            }
            if !meta.contains_key("name")
                && let Some(prefix) = meta.get("generateName").and_then(Value::as_str)
            {
                let name = format!("{prefix}{}", super::generated_suffix());
                meta.insert("name".into(), Value::String(name));
            }
        }
        let r = object_ref(&object);
        if object_key(&object).is_none() {
            return Err(Error::Rejected { object: r, message: "object has no kind or no metadata.name".into() });
        }
        if self.find(&r).is_ok() {
            return Err(Error::Rejected { object: r, message: "already exists".into() });
        }
        self.put(object);
        Ok(r)
    }

    async fn patch(&self, object: &ObjectRef, patch: Value) -> Result<()> {
        self.update(object, |v| {
            merge_patch(v, &patch);
            Ok(())
        })
        .map(drop)
    }

    async fn delete(&self, object: &ObjectRef) -> Result<()> {
        let mut state = lock(&self.state);
        state.objects.remove(&key_of(&object.kind, &object.namespace, &object.name));
        self.save(&state);
        Ok(())
    }

    async fn record_event<K>(&self, regarding: &K, event: Event)
    where
        K: ::kube::Resource<DynamicType = ()> + Sync,
    {
        let type_ = match event.type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        let regarding = regarding.meta();
        tracing::info!(
            kind = %K::kind(&()),
            name = regarding.name.as_deref().unwrap_or_default(),
            reason = %event.reason,
            note = %event.note,
            "{type_} event"
        );
        let mut state = lock(&self.state);
        state.events.push(RecordedEvent {
            kind: K::kind(&()).into_owned(),
            namespace: regarding.namespace.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            type_: type_.into(),
            reason: event.reason,
            note: event.note,
            uid: regarding.uid.clone().unwrap_or_default(),
            time: k8s_openapi::jiff::Timestamp::now().to_string(),
        });
        self.save(&state);
    }

    async fn events(&self, regarding: &ActionSet) -> Result<Vec<ObservedEvent>> {
        let (namespace, name) = (regarding.metadata.namespace.as_deref(), regarding.metadata.name.as_deref());
        let uid = regarding.metadata.uid.as_deref().unwrap_or_default();
        Ok(lock(&self.state)
            .events
            .iter()
            .filter(|e| e.kind.is_empty() || e.kind == "ActionSet")
            .filter(|e| Some(e.namespace.as_str()) == namespace && Some(e.name.as_str()) == name)
            .filter(|e| uid.is_empty() || e.uid.is_empty() || e.uid == uid)
            .map(|e| ObservedEvent {
                type_: if e.type_ == "Warning" { EventType::Warning } else { EventType::Normal },
                reason: e.reason.clone(),
                note: e.note.clone(),
                time: e.time.clone(),
                count: 1,
            })
            .collect())
    }

    async fn list_actionsets(&self, namespace: &str) -> Result<Vec<ActionSet>> {
        let items = self.list("", "ActionSet", namespace, &BTreeMap::new()).await?;
        items
            .into_iter()
            .map(|v| {
                let r = object_ref(&v);
                serde_json::from_value(v).map_err(|e| Error::Rejected { object: r, message: e.to_string() })
            })
            .collect()
    }

    async fn get_actionset(&self, namespace: &str, name: &str) -> Result<ActionSet> {
        super::get_typed(self, &ObjectRef::actionset(namespace, name)).await
    }

    async fn replace_actionset_status(
        &self,
        namespace: &str,
        name: &str,
        resource_version: &str,
        status: &ActionSetStatus,
    ) -> Result<String> {
        let object = ObjectRef::actionset(namespace, name);
        let status = serde_json::to_value(status)
            .map_err(|e| Error::Rejected { object: object.clone(), message: e.to_string() })?;
        let terminal = matches!(status.get("state").and_then(Value::as_str), Some("complete" | "failed"));
        if terminal
            && self.final_failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            return Err(Error::Transient {
                what: format!("write status of {object}"),
                message: "connection reset".into(),
            });
        }
        let injected = self.conflicts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        let version = self.update(&object, |v| {
            let current = v.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
            if injected || current != resource_version {
                return Err(Error::Conflict(object.clone()));
            }
            v["status"] = status.clone();
            Ok(())
        })?;
        lock(&self.status_writes).push((namespace.into(), name.into(), status));
        Ok(version)
    }

    /// A sidecar registered with [`LocalCluster::with_agent`], else the one the Pod object
    /// describes, as on a cluster: its `status.podIP` and agent-port annotation.
    async fn agent_endpoint(&self, namespace: &str, pod: &str) -> Result<String> {
        if let Some(e) = lock(&self.agents).get(&(namespace.to_string(), pod.to_string())).cloned() {
            return Ok(e);
        }
        let value = self.get(&ObjectRef::new("Pod", namespace, pod)).await.map_err(|e| match e {
            Error::NotFound(object) => Error::Rejected {
                object,
                message: "no such Pod: describe it in a YAML file (with status.podIP and the agent-port \
                          annotation) or register its sidecar"
                    .into(),
            },
            e => e,
        })?;
        super::agent_endpoint_of(&value, namespace, pod)
    }
}

impl LocalCluster {
    fn container(&self, namespace: &str, name: &str, container: &str) -> Result<Arc<LocalContainer>> {
        let pods = lock(&self.pods);
        let pod = pods
            .get(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| Error::NotFound(ObjectRef::new("Pod", namespace, name)))?;
        pod.containers.get(container).cloned().ok_or_else(|| Error::Rejected {
            object: ObjectRef::new("Pod", namespace, name),
            message: format!("pod has no container {container:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1, 2]});
        merge_patch(&mut v, &json!({"a": {"b": null, "e": 3}, "d": [3]}));
        assert_eq!(v, json!({"a": {"c": 2, "e": 3}, "d": [3]}));
    }

    #[tokio::test]
    async fn pod_override_env_merges_by_name_and_reads_secrets() {
        use crate::cluster::EnvVar;
        let c = LocalCluster::new();
        c.load_yaml(
            "kind: Secret\napiVersion: v1\nmetadata: {name: db, namespace: ns}\nstringData: {pw: s3cr3t}\n",
            "t",
        )
        .unwrap();
        let pod = TaskPod {
            namespace: "ns".into(),
            generate_name: "t-".into(),
            containers: vec![Container {
                name: "container".into(),
                command: vec!["sh".into(), "-c".into(), "echo \"$A|$B|$PW\"".into()],
                ..Default::default()
            }],
            env: vec![
                EnvVar { name: "A".into(), source: EnvSource::Value("from-pod".into()) },
                EnvVar { name: "B".into(), source: EnvSource::Value("kept".into()) },
            ],
            pod_override: serde_json::from_value(json!({"containers": [{"name": "container", "env": [
                {"name": "A", "value": "overridden"},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}},
            ]}]}))
            .unwrap(),
            ..Default::default()
        };
        let name = c.create_pod(&pod).await.unwrap();
        assert!(c.wait_container("ns", &name, "container").await.unwrap().success());
        let (tx, mut rx) = mpsc::channel(16);
        c.pod_logs("ns", &name, "container", tx).await.unwrap();
        let mut log = Vec::new();
        while let Some(chunk) = rx.recv().await {
            log.extend(chunk);
        }
        assert_eq!(String::from_utf8(log).unwrap(), "overridden|kept|s3cr3t\n");
        // What the local cluster cannot resolve is refused, not ignored.
        let mut bad = pod.clone();
        bad.pod_override = serde_json::from_value(json!({"containers": [{"name": "container", "env": [
            {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}))
        .unwrap();
        let err = c.create_pod(&bad).await.unwrap_err().to_string();
        assert!(err.contains("secretKeyRef"), "{err}");
    }

    #[test]
    fn kinds_compare_case_and_plural_insensitively() {
        assert_eq!(kind_key("statefulsets"), "statefulset");
        assert_eq!(kind_key("StatefulSet"), "statefulset");
        assert_eq!(kind_key("pvc"), "persistentvolumeclaim");
        assert_eq!(kind_key("Ingress"), "ingress");
    }

    #[tokio::test]
    async fn status_writes_check_the_resource_version() {
        let c = LocalCluster::new();
        c.load_yaml(
            "kind: ActionSet\napiVersion: cr.kanister.io/v1alpha1\nmetadata: {name: a, namespace: ns}\nspec: {}\n",
            "t",
        )
        .unwrap();
        let a = c.get_actionset("ns", "a").await.unwrap();
        let rv = a.metadata.resource_version.unwrap();
        let status = ActionSetStatus::default();
        let rv2 = c.replace_actionset_status("ns", "a", &rv, &status).await.unwrap();
        assert!(matches!(c.replace_actionset_status("ns", "a", &rv, &status).await, Err(Error::Conflict(_))));
        c.inject_status_conflicts(2);
        let rv3 = super::super::write_status(&c, "ns", "a", &rv2, &status).await.unwrap();
        assert_ne!(rv3, rv2);
    }

    #[tokio::test]
    async fn task_pod_logs_interleave_streams_by_line_and_report_exit_codes() {
        let c = LocalCluster::new();
        let pod = TaskPod {
            namespace: "ns".into(),
            generate_name: "job-".into(),
            containers: vec![Container {
                name: "container".into(),
                image: "busybox".into(),
                command: vec!["sh".into(), "-c".into(), "echo out; echo err >&2; exit 3".into()],
            }],
            ..Default::default()
        };
        let name = c.create_pod(&pod).await.unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let logs = c.pod_logs("ns", &name, "container", tx);
        let collect = async {
            let mut all = Vec::new();
            while let Some(d) = rx.recv().await {
                all.extend(d);
            }
            all
        };
        let (r, all) = tokio::join!(logs, collect);
        r.unwrap();
        let text = String::from_utf8(all).unwrap();
        assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
        assert_eq!(c.wait_container("ns", &name, "container").await.unwrap().code, Some(3));
        c.delete_pod("ns", &name).await.unwrap();
        c.delete_pod("ns", &name).await.unwrap();
        assert!(c.live_pods().is_empty());
        assert_eq!(c.pods()[0].spec.containers[0].image, "busybox");
    }
}
