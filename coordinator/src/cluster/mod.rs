//! The [`Cluster`] interface: the only code that talks to Kubernetes.
//!
//! Two implementations:
//! - [`kube::KubeCluster`]: a real API server through `kube` (exec over the websocket
//!   subresource, ActionSet status through the status subresource, events through
//!   `kube::runtime::events`).
//! - [`local::LocalCluster`]: this machine. Objects come from YAML files, exec and task pods run
//!   as local processes (the image is recorded, the command runs on the host), scaling records
//!   the replica count. It serves the end-to-end tests and lets a blueprint author try a
//!   blueprint without a cluster.
//!
//! Objects are exchanged as JSON ([`serde_json::Value`], the unstructured form) and addressed by
//! [`ObjectRef`]; typed access is [`get_typed`] over that.

pub mod kube;
pub mod local;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::crd::{ActionSet, ActionSetStatus, JsonMap, ObjectReference};

/// A random 5-character suffix from the alphabet Kubernetes uses for generated names
/// (`metadata.generateName`): the one used for pods of the local cluster, snapshots and
/// ActionSets kanctl names.
pub fn generated_suffix() -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char).collect()
}

/// RFC 7386 JSON merge patch (the `json-patch` crate's).
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    json_patch::merge(target, patch);
}

/// Errors of a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(ObjectRef),
    /// A write lost an optimistic-concurrency race (HTTP 409); re-read and retry.
    #[error("conflict writing {0}: the object changed since it was read")]
    Conflict(ObjectRef),
    /// The request was rejected (bad input, forbidden, unsupported kind...). Not retryable.
    #[error("request on {object} rejected: {message}")]
    Rejected {
        /// The object of the request.
        object: ObjectRef,
        /// Why.
        message: String,
    },
    /// The API server or the local machine failed; retrying may help.
    #[error("{what} failed: {message}")]
    Transient {
        /// What was attempted (`exec in pod ns/p`, `list pods in ns`).
        what: String,
        /// The cause.
        message: String,
    },
    /// A wait ended without the expected state.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it waited.
        after: Duration,
    },
}

impl Error {
    /// Whether the same request may succeed when retried.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Conflict(_) | Error::Transient { .. })
    }
}

/// How long a call rides out an unreachable or overloaded API server (a restart, an upgrade of
/// the control plane) before it fails.
pub const OUTAGE: Duration = Duration::from_secs(120);

/// Runs `call` again after retryable errors ([`Error::is_retryable`]; backoff from 0.25 s,
/// doubling to 5 s) for up to [`OUTAGE`] in all; other errors, and the last retryable one, are
/// returned.
pub async fn through_outage<T, Fut>(what: &str, call: impl FnMut() -> Fut) -> Result<T>
where
    Fut: Future<Output = Result<T>>,
{
    use backon::{ExponentialBuilder, Retryable};
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_total_delay(Some(OUTAGE))
        .without_max_times();
    call.retry(backoff)
        .when(Error::is_retryable)
        .notify(|e, after| tracing::debug!(what, error = %e, ?after, "the API server did not answer; retrying"))
        .await
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The address of an object: `apiVersion`, `kind`, namespace (empty for cluster-scoped) and name.
///
/// `kind` may be given in any case (`statefulset`, as kanctl writes it); implementations compare
/// kinds case-insensitively and also accept the plural resource name (`statefulsets`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ObjectRef {
    /// `apps/v1`, `v1`, `cr.kanister.io/v1alpha1`. Empty: the implementation's default for the
    /// kind.
    pub api_version: String,
    /// `StatefulSet`, `Pod`, `ActionSet`, ...
    pub kind: String,
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// A reference by kind, namespace and name.
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectRef { api_version: String::new(), kind: kind.into(), namespace: namespace.into(), name: name.into() }
    }

    /// The reference to an ActionSet.
    pub fn actionset(namespace: &str, name: &str) -> Self {
        ObjectRef {
            api_version: format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
            ..Self::new("ActionSet", namespace, name)
        }
    }

    /// From an upstream `ObjectReference` (`kind`, or else the `resource` name).
    pub fn from_reference(r: &ObjectReference) -> Self {
        let api_version = match (r.group.as_str(), r.api_version.as_str()) {
            ("", v) => v.to_string(),
            (g, v) if v.contains('/') || v.is_empty() => {
                if v.is_empty() {
                    g.to_string()
                } else {
                    v.to_string()
                }
            }
            (g, v) => format!("{g}/{v}"),
        };
        let kind = if r.kind.is_empty() { r.resource.clone() } else { r.kind.clone() };
        ObjectRef { api_version, kind, namespace: r.namespace.clone(), name: r.name.clone() }
    }

    /// The kind in lower case without a plural `s` (`statefulsets` → `statefulset`).
    pub fn kind_key(&self) -> String {
        kind_key(&self.kind)
    }
}

/// A kind or resource name normalised for comparison: lower case, singular.
pub fn kind_key(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    match k.as_str() {
        "pvc" | "persistentvolumeclaims" => "persistentvolumeclaim".into(),
        "deploymentconfigs" => "deploymentconfig".into(),
        _ => k.strip_suffix('s').filter(|_| k.len() > 3 && !k.ends_with("ss")).map_or(k.clone(), str::to_string),
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A Secret's data, decoded. `Debug` shows the keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData {
    /// `type` (`Opaque`, ...).
    pub secret_type: String,
    /// The decoded values.
    pub data: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretData")
            .field("secret_type", &self.secret_type)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Which stream a chunk of command output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A chunk of a command's output, as it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The stream.
    pub stream: Stream,
    /// The bytes (any split: lines and characters may span chunks).
    pub data: Vec<u8>,
}

/// A command to run in an existing pod's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Namespace of the pod.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// The container; empty: the pod's first container.
    pub container: String,
    /// The command and its arguments.
    pub command: Vec<String>,
}

/// How a command or container ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExitStatus {
    /// The exit code; `None` when the process was killed by a signal or the code is unknown.
    pub code: Option<i32>,
    /// The signal that ended the process, when known.
    pub signal: Option<i32>,
    /// Kubernetes' reason for the end (`OOMKilled`, `Error`, `ContainerCannotRun`, ...).
    pub reason: Option<String>,
}

impl ExitStatus {
    /// A process that ended with `code` (`None`: unknown).
    pub fn exited(code: Option<i32>) -> Self {
        ExitStatus { code, ..Default::default() }
    }

    /// How a local process ended.
    pub fn of_process(s: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        ExitStatus { code: s.code(), signal: s.signal(), reason: None }
    }

    /// A container that never ran, and why.
    pub fn never_started(why: &str) -> Self {
        ExitStatus { code: None, signal: None, reason: Some(format!("{NEVER_STARTED}{why}")) }
    }

    /// Whether the command succeeded (exit code 0).
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// How it ended, for a message after the name of what ran: `failed with exit code 1`,
    /// `was killed by signal 9 (SIGKILL)`, `was killed for using more memory than its limit
    /// (OOMKilled, exit code 137)`.
    pub fn describe(&self) -> String {
        if self.reason.as_deref() == Some("OOMKilled") {
            let code = self.code.map(|c| format!(", exit code {c}")).unwrap_or_default();
            return format!("was killed for using more memory than its limit (OOMKilled{code})");
        }
        if let Some(why) = self.reason.as_deref().and_then(|r| r.strip_prefix(NEVER_STARTED))
            && self.code.is_none()
        {
            return format!("never started: {why}");
        }
        let reason = match self.reason.as_deref() {
            None | Some("Error" | "Completed" | "") => String::new(),
            Some(r) => format!(" ({r})"),
        };
        if let Some(sig) = self.signal {
            return format!("was killed by signal {sig}{}{reason}", signal_name(sig));
        }
        match self.code {
            // A shell or container runtime reports death by signal N as 128 + N.
            Some(c @ 129..=159) => {
                format!("failed with exit code {c}{reason} (128 + signal {}{})", c - 128, signal_name(c - 128))
            }
            Some(c) => format!("failed with exit code {c}{reason}"),
            None => format!("ended without an exit code (killed, or its status was lost){reason}"),
        }
    }
}

/// The reason of an [`ExitStatus::never_started`].
const NEVER_STARTED: &str = "NeverStarted: ";

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        3 => " (SIGQUIT)",
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        13 => " (SIGPIPE)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

/// A container of a task pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Container {
    /// Container name (`container`, `background`, `output`, `init`).
    pub name: String,
    /// Image.
    pub image: String,
    /// Command and arguments.
    pub command: Vec<String>,
}

/// A pod created by a function (KubeTask, PrepareData, MultiContainerRun).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskPod {
    /// Namespace.
    pub namespace: String,
    /// Name prefix; the cluster appends a random suffix (`kanister-job-` → `kanister-job-x7k2p`).
    pub generate_name: String,
    /// Init containers, run to completion in order before the containers.
    pub init_containers: Vec<Container>,
    /// Containers, run together.
    pub containers: Vec<Container>,
    /// PVC name → mount path.
    pub volumes: BTreeMap<String, String>,
    /// A shared `emptyDir` volume (mount path) mounted in every container, if any.
    pub shared_dir: Option<String>,
    /// Service account.
    pub service_account: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Pod spec fields merged over the generated spec (upstream `podOverride`).
    pub pod_override: JsonMap,
    /// Environment variables of every container (init containers included).
    pub env: Vec<EnvVar>,
    /// The owner (the ActionSet): the pod is garbage-collected with it.
    pub owner: Option<Owner>,
}

impl TaskPod {
    /// The `env` entries `podOverride` gives container `container`, as Kubernetes objects
    /// (`{"name", "value"}` or `{"name", "valueFrom": ...}`). Upstream's `podOverride` merges
    /// containers by name; an entry without a name overrides the `container` container.
    pub fn override_env(&self, container: &str) -> Vec<serde_json::Value> {
        let Some(serde_json::Value::Array(containers)) = self.pod_override.get("containers") else {
            return Vec::new();
        };
        containers
            .iter()
            .filter(|c| c.get("name").and_then(serde_json::Value::as_str).unwrap_or("container") == container)
            .filter_map(|c| c.get("env").and_then(serde_json::Value::as_array))
            .flatten()
            .cloned()
            .collect()
    }
}

/// Merges container environment lists as Kubernetes' strategic merge patch does (the key is
/// `name`): an entry of `over` replaces the entry of `base` with its name, or is appended.
/// So a `podOverride` adding `MYSQL_PWD` keeps the variables the coordinator set.
pub fn merge_env(base: &mut Vec<serde_json::Value>, over: &[serde_json::Value]) {
    for entry in over {
        let name = entry.get("name");
        match base.iter_mut().find(|b| name.is_some() && b.get("name") == name) {
            Some(slot) => *slot = entry.clone(),
            None => base.push(entry.clone()),
        }
    }
}

/// An environment variable of a task pod's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The variable's name.
    pub name: String,
    /// Where its value comes from.
    pub source: EnvSource,
}

/// The value of an [`EnvVar`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// A literal value (never a secret: it is part of the pod spec).
    Value(String),
    /// A key of a Secret in the pod's namespace (`valueFrom.secretKeyRef`): the value is read
    /// by the kubelet (or the local cluster) when the container starts and is never part of the
    /// pod spec or a command line.
    SecretKey {
        /// The Secret.
        secret: String,
        /// The key in the Secret.
        key: String,
    },
}

/// An owner reference.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    /// `apiVersion` of the owner.
    pub api_version: String,
    /// `kind` of the owner.
    pub kind: String,
    /// Name of the owner.
    pub name: String,
    /// UID of the owner.
    pub uid: String,
}

/// The type of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something went as expected.
    Normal,
    /// Something failed.
    Warning,
}

/// A Kubernetes event about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Normal or Warning.
    pub type_: EventType,
    /// Short CamelCase reason (`StartedPhase`, `ActionSetFailed`).
    pub reason: String,
    /// Human-readable message (never a secret value).
    pub note: String,
    /// What the coordinator did (`Run`, `Cancel`).
    pub action: String,
}

/// An event as read back from the cluster (what `kubectl describe` lists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedEvent {
    /// Normal or Warning.
    pub type_: EventType,
    /// Short CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub note: String,
    /// RFC 3339: when it last happened; empty when unknown.
    pub time: String,
    /// How many times it happened (repeats aggregated into one event); at least 1.
    pub count: i32,
}

/// Access to a Kubernetes cluster, as the phase engine and the functions need it.
///
/// # Guarantees
/// - Reads (`get`, `list`, `secret`, `pod_logs`, `events`) have no side effect and may be
///   retried freely.
/// - `delete` and `delete_pod` are idempotent: deleting what is already gone succeeds.
/// - `scale` is idempotent (it sets a replica count, it does not add to it).
/// - `replace_actionset_status` writes the whole status through the status subresource with
///   optimistic concurrency: it fails with [`Error::Conflict`] when `resource_version` is stale
///   and never overwrites a newer object. [`write_status`] is the retrying form.
/// - `create_pod` creates a new pod on every call (generated name): it is **not** idempotent, so
///   callers delete the pod they created whatever happens and never retry a create blindly.
/// - `exec` runs the command once; it is **not** retried, because commands (a dump, a restore)
///   need not be idempotent.
/// - `apply` (create) is not idempotent; `patch` is idempotent for a merge patch.
/// - `record_event` is best effort: implementations may aggregate or drop events; callers never
///   depend on an event being stored.
///
/// # Assumptions
/// - Output sinks (`mpsc::Sender`) are drained by the caller; a dropped receiver ends the
///   streaming early without an error.
/// - Every future may be dropped at any await point (cancellation). Implementations leave no
///   local process behind when an `exec` future is dropped; a task pod is left to the caller's
///   `delete_pod` (and to garbage collection through its owner).
///
/// # Caveats
/// - Errors never contain Secret values; Secret data is only returned by [`Cluster::secret`].
/// - `wait_ready` and `wait_container` poll; their latency is the implementation's poll interval.
pub trait Cluster: Send + Sync + 'static {
    /// Reads an object as JSON.
    fn get(&self, object: &ObjectRef) -> impl Future<Output = Result<serde_json::Value>> + Send;

    /// Lists objects of a kind in a namespace (all namespaces when empty) whose labels include
    /// every pair of `labels`.
    fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Vec<serde_json::Value>>> + Send;

    /// Reads a Secret's data, decoded.
    fn secret(&self, namespace: &str, name: &str) -> impl Future<Output = Result<SecretData>> + Send;

    /// Runs a command in a pod's container, streaming its output to `output`, and returns how it
    /// ended.
    fn exec(
        &self,
        request: &ExecRequest,
        output: mpsc::Sender<Chunk>,
    ) -> impl Future<Output = Result<ExitStatus>> + Send;

    /// Creates a task pod and returns its name.
    fn create_pod(&self, pod: &TaskPod) -> impl Future<Output = Result<String>> + Send;

    /// Waits until a pod's containers started (or already ended), for at most `timeout`.
    fn wait_pod_started(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Streams a container's log (stdout and stderr, interleaved by line) to `output` from its
    /// start until the container ends.
    fn pod_logs(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
        output: mpsc::Sender<Vec<u8>>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Waits until a container of a pod terminated and returns how it ended.
    fn wait_container(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
    ) -> impl Future<Output = Result<ExitStatus>> + Send;

    /// Deletes a pod (idempotent).
    fn delete_pod(&self, namespace: &str, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Sets a workload's replica count (`StatefulSet`, `Deployment`, `DeploymentConfig`).
    fn scale(&self, workload: &ObjectRef, replicas: i32) -> impl Future<Output = Result<()>> + Send;

    /// Waits until a workload's ready replicas equal its desired replicas, for at most `timeout`.
    fn wait_ready(&self, workload: &ObjectRef, timeout: Duration) -> impl Future<Output = Result<()>> + Send;

    /// Creates an object from its JSON (which names `apiVersion` and `kind`) in `namespace` (when
    /// the object names none) and returns its reference.
    fn apply(&self, object: serde_json::Value, namespace: &str) -> impl Future<Output = Result<ObjectRef>> + Send;

    /// Applies a JSON merge patch to an object.
    fn patch(&self, object: &ObjectRef, patch: serde_json::Value) -> impl Future<Output = Result<()>> + Send;

    /// Deletes an object (idempotent).
    fn delete(&self, object: &ObjectRef) -> impl Future<Output = Result<()>> + Send;

    /// Records an event about an object (best effort). `regarding` carries the object's UID when
    /// known.
    fn record_event<K>(&self, regarding: &K, event: Event) -> impl Future<Output = ()> + Send
    where
        K: ::kube::Resource<DynamicType = ()> + Sync;

    /// Lists the events recorded about an ActionSet, oldest first. When `regarding` carries
    /// its UID, events about an earlier ActionSet of the same name are left out. Events expire,
    /// so the list may miss old ones.
    fn events(&self, regarding: &ActionSet) -> impl Future<Output = Result<Vec<ObservedEvent>>> + Send;

    /// Lists ActionSets in `namespace` (all namespaces when empty).
    fn list_actionsets(&self, namespace: &str) -> impl Future<Output = Result<Vec<ActionSet>>> + Send;

    /// Reads one ActionSet.
    fn get_actionset(&self, namespace: &str, name: &str) -> impl Future<Output = Result<ActionSet>> + Send;

    /// The gRPC endpoint (`http://host:port`) of the agent sidecar of a pod, for the functions
    /// the agent serves (`BackupStream`, `RestoreStream`). A read: no side effect.
    ///
    /// On Kubernetes, `http://<status.podIP>:7433`, the port overridable by the pod annotation
    /// [`AGENT_PORT_ANNOTATION`] (the scheme is `https` when the engine's agent client uses
    /// TLS). Fails with [`Error::NotFound`] when the pod does not exist and with
    /// [`Error::Rejected`] when it has no address yet or a bad port annotation.
    fn agent_endpoint(&self, namespace: &str, pod: &str) -> impl Future<Output = Result<String>> + Send;

    /// Replaces an ActionSet's status (status subresource) if its `resourceVersion` is still
    /// `resource_version`; returns the new resource version.
    fn replace_actionset_status(
        &self,
        namespace: &str,
        name: &str,
        resource_version: &str,
        status: &ActionSetStatus,
    ) -> impl Future<Output = Result<String>> + Send;
}

/// The pod annotation that overrides the port of a pod's agent sidecar.
pub const AGENT_PORT_ANNOTATION: &str = "kanister.io/agent-port";
/// The port of an agent sidecar without [`AGENT_PORT_ANNOTATION`].
pub const DEFAULT_AGENT_PORT: u16 = 7433;

/// The agent endpoint of a pod from its JSON: `http://<status.podIP>:<port>`, the port from
/// [`AGENT_PORT_ANNOTATION`] or [`DEFAULT_AGENT_PORT`].
pub fn agent_endpoint_of(pod: &serde_json::Value, namespace: &str, name: &str) -> Result<String> {
    let object = || ObjectRef::new("Pod", namespace, name);
    let ip = pod.pointer("/status/podIP").and_then(serde_json::Value::as_str).unwrap_or_default();
    if ip.is_empty() {
        return Err(Error::Rejected { object: object(), message: "the pod has no IP address yet".into() });
    }
    let port = match pod.pointer("/metadata/annotations").and_then(|a| a.get(AGENT_PORT_ANNOTATION)) {
        None => DEFAULT_AGENT_PORT,
        Some(v) => v.as_str().and_then(|p| p.trim().parse::<u16>().ok()).filter(|p| *p != 0).ok_or_else(|| {
            Error::Rejected {
                object: object(),
                message: format!("annotation {AGENT_PORT_ANNOTATION} must be a port number, not {v}"),
            }
        })?,
    };
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_string() };
    Ok(format!("http://{host}:{port}"))
}

/// Reads an object and deserializes it into a typed value.
pub async fn get_typed<T: DeserializeOwned, C: Cluster>(cluster: &C, object: &ObjectRef) -> Result<T> {
    let value = cluster.get(object).await?;
    serde_json::from_value(value)
        .map_err(|e| Error::Rejected { object: object.clone(), message: format!("unexpected shape: {e}") })
}

/// How many times [`write_status`] retries a conflict.
pub const STATUS_RETRIES: usize = 5;

/// Writes `status` over an ActionSet's status, retrying conflicts: on [`Error::Conflict`] it
/// re-reads the ActionSet for its current resource version and writes again (at most
/// [`STATUS_RETRIES`] times). The caller is the only writer of the status, so re-applying its
/// status over a newer object loses nothing. Returns the new resource version.
pub async fn write_status<C: Cluster>(
    cluster: &C,
    namespace: &str,
    name: &str,
    resource_version: &str,
    status: &ActionSetStatus,
) -> Result<String> {
    let mut rv = resource_version.to_string();
    let mut attempt = 0;
    loop {
        match cluster.replace_actionset_status(namespace, name, &rv, status).await {
            Err(Error::Conflict(object)) => {
                attempt += 1;
                if attempt > STATUS_RETRIES {
                    return Err(Error::Conflict(object));
                }
                tracing::debug!(actionset = name, attempt, "status write conflict, re-reading");
                let fresh = cluster.get_actionset(namespace, name).await?;
                rv = fresh.metadata.resource_version.unwrap_or_default();
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExitStatus;

    #[test]
    fn an_exit_status_says_how_the_process_ended() {
        let with = |code: Option<i32>, signal: Option<i32>, reason: Option<&str>| {
            ExitStatus { code, signal, reason: reason.map(str::to_string) }.describe()
        };
        assert_eq!(with(Some(1), None, None), "failed with exit code 1");
        assert_eq!(with(Some(1), None, Some("Error")), "failed with exit code 1");
        assert_eq!(with(None, Some(9), None), "was killed by signal 9 (SIGKILL)");
        assert_eq!(with(Some(143), None, Some("Error")), "failed with exit code 143 (128 + signal 15 (SIGTERM))");
        assert_eq!(
            with(Some(137), None, Some("OOMKilled")),
            "was killed for using more memory than its limit (OOMKilled, exit code 137)"
        );
        assert_eq!(with(Some(128), None, Some("ContainerCannotRun")), "failed with exit code 128 (ContainerCannotRun)");
        assert!(with(None, None, None).contains("without an exit code"));
        let ok = ExitStatus::of_process(std::process::Command::new("true").status().unwrap());
        assert!(ok.success() && ok.signal.is_none());
        let killed =
            ExitStatus::of_process(std::process::Command::new("sh").args(["-c", "kill -9 $$"]).status().unwrap());
        assert_eq!((killed.code, killed.signal), (None, Some(9)));
    }
}
