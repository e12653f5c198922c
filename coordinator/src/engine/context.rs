//! What a function runs with: its [`Context`] (arguments, template parameters, the action's
//! Profile, where progress goes), its [`Error`]s, and the task pods it creates ([`run_pod`]), with
//! the Profile's key and credential in their environment (see [`super::functions`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::cluster::merge_patch;
use crate::cluster::{self, Cluster, Container, Owner, TaskPod};
use crate::crd::{JsonMap, ObjectReference};
use crate::output::{self, LogTail, Parser};
use crate::render::{Location, Renderer, TemplateParams};

/// Errors of the functions. Messages never contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The function is known to Blueprints but not run by this coordinator.
    #[error("function {name:?} is not served by this coordinator{}", unsupported_hint(name))]
    Unsupported {
        /// The function.
        name: String,
    },
    /// A required argument is absent.
    #[error("{function}: missing required argument {argument:?}")]
    MissingArgument {
        /// The function.
        function: String,
        /// The argument.
        argument: String,
    },
    /// An argument has the wrong shape.
    #[error("{function}: argument {argument:?} must be {expected}")]
    InvalidArgument {
        /// The function.
        function: String,
        /// The argument.
        argument: String,
        /// What it must be.
        expected: String,
    },
    /// A command or container ended with a non-zero exit code.
    #[error("{what} {}{tail}", status.describe())]
    CommandFailed {
        /// Which command (`command in pod ns/p container c`).
        what: String,
        /// How it ended.
        status: cluster::ExitStatus,
        /// The last log lines, redacted.
        tail: LogTail,
    },
    /// The phase output protocol was violated.
    #[error("{what}: bad phase output")]
    Output {
        /// Which command.
        what: String,
        /// The cause.
        #[source]
        source: output::Error,
    },
    /// The cluster failed.
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    /// A `Wait` condition was not met in time.
    #[error("conditions not met within {timeout:?}{}", last_error.as_ref().map(|e| format!(" (last evaluation error: {e})")).unwrap_or_default())]
    WaitTimeout {
        /// The timeout.
        timeout: Duration,
        /// The last evaluation error, if any.
        last_error: Option<String>,
    },
    /// Several commands failed (`KubeExecAll`).
    #[error("{} failed: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<Error>),
    /// A fan-out function failed for some pods and succeeded for others: the phase fails, and
    /// the outputs of those that succeeded are recorded (their backups exist).
    #[error("{source}")]
    Partial {
        /// Outputs of the pods that succeeded.
        outputs: JsonMap,
        /// What failed.
        source: Box<Error>,
    },
    /// A template in the arguments (wait conditions) does not render.
    #[error(transparent)]
    Render(#[from] crate::render::Error),
    /// The Profile's repository key could not be provided.
    #[error(transparent)]
    RepositoryKey(#[from] Box<super::repokey::Error>),
    /// A call to an agent sidecar failed.
    #[error("{function} through the agent of pod {pod}: {source}")]
    Agent {
        /// The function.
        function: String,
        /// The pod (`namespace/name`).
        pod: String,
        /// The cause.
        #[source]
        source: super::agent::Error,
    },
    /// No snapshot carries the requested backup tag.
    #[error("{function}: no backup carries backupTag {tag:?}")]
    NoBackup {
        /// The function.
        function: String,
        /// The tag.
        tag: String,
    },
    /// The Profile's repository could not be opened.
    #[error("{function}: {source}")]
    Repository {
        /// The function.
        function: String,
        /// The cause.
        #[source]
        source: Box<super::repository::Error>,
    },
    /// A data function failed in the repository (the message says what and the fix).
    #[error("{function}: {message}")]
    Data {
        /// The function.
        function: String,
        /// What went wrong.
        message: String,
    },
    /// The function needs the action's Profile.
    #[error("{0}: the action has no profile (the repository's store and key come from it)")]
    NoProfile(String),
}

/// Byte counts of a running transfer, reported to the engine, which writes them into the
/// phase's progress (upstream size fields).
///
/// `downloaded` counts bytes read from the source (the command's stdout for a backup, the store
/// for a restore); `uploaded` bytes written to the destination (the store for a backup, the
/// command's stdin for a restore).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TransferProgress {
    /// Bytes read from the source.
    pub downloaded: u64,
    /// Bytes written to the destination.
    pub uploaded: u64,
    /// Bytes expected in all; 0 when unknown (a stream backup).
    pub total: u64,
    /// Percent done, when the total is known.
    pub percent: Option<u8>,
    /// Seconds left, when known.
    pub eta_secs: Option<f64>,
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to use instead of an upstream function this coordinator does not run.
fn unsupported_hint(function: &str) -> &'static str {
    if function.contains("RDS") {
        ": the RDS functions drive AWS's RDS API, which it does not call; back the database up with a \
         KubeTask that runs mysqldump or pg_dump against the RDS endpoint and pipes it into `kando location push`"
    } else {
        ""
    }
}

/// Everything a function needs to run one phase.
pub struct Context<C> {
    /// The cluster.
    pub cluster: Arc<C>,
    /// The renderer (for `Wait`/`WaitV2`, which render their own arguments).
    pub renderer: Renderer,
    /// Where the phase is (for errors).
    pub location: Location,
    /// The template parameters.
    pub params: TemplateParams,
    /// The phase's arguments, rendered (except for `Wait`/`WaitV2`).
    pub args: JsonMap,
    /// The namespace used when a function's `namespace` is absent (the ActionSet's).
    pub default_namespace: String,
    /// Owner of the pods the function creates (the ActionSet).
    pub owner: Option<Owner>,
    /// Labels put on the pods the function creates (besides the blueprint's and ActionSet's).
    pub labels: BTreeMap<String, String>,
    /// How many log lines an error shows.
    pub tail_lines: usize,
    /// Poll interval of waits.
    pub poll: Duration,
    /// How long a workload or pod may take to become ready.
    pub ready_timeout: Duration,
    /// When the phase times out: a function that waits on others (a snapshot controller) stops
    /// shortly before it, to say what it waited for.
    pub deadline: tokio::time::Instant,
    /// The pods created so far (namespace, name); the engine deletes them when the phase ends,
    /// whatever happened.
    pub pods: Arc<Mutex<Vec<(String, String)>>>,
    /// The action's Profile, if any: task pods get its repository key in their environment
    /// ([`super::repokey`]).
    pub profile: Option<ObjectReference>,
    /// How to reach agent sidecars.
    pub agent: super::agent::AgentClientConfig,
    /// The id of an agent operation this phase starts (stable for the phase of this ActionSet).
    pub op_id: String,
    /// Image of task pods that run the agent ([`super::EngineConfig::tools_image`]).
    pub tools_image: String,
    /// Memory limit of the agent's task pods ([`super::EngineConfig::task_memory_limit`]).
    pub task_memory_limit: String,
    /// Where the function reports byte counts while it runs, if anywhere.
    pub progress: Option<tokio::sync::watch::Sender<Option<TransferProgress>>>,
}

impl<C> std::fmt::Debug for Context<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("location", &self.location).finish_non_exhaustive()
    }
}

impl<C: Cluster> Context<C> {
    pub(super) fn function(&self) -> String {
        self.location.phase.clone()
    }

    pub(super) fn missing(&self, argument: &str) -> Error {
        Error::MissingArgument { function: self.function(), argument: argument.into() }
    }

    pub(super) fn invalid(&self, argument: &str, expected: &str) -> Error {
        Error::InvalidArgument { function: self.function(), argument: argument.into(), expected: expected.into() }
    }

    pub(super) fn opt_str(&self, name: &str) -> Result<Option<String>> {
        match self.args.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(self.invalid(name, "a string")),
        }
    }

    pub(super) fn str(&self, name: &str) -> Result<String> {
        self.opt_str(name)?.ok_or_else(|| self.missing(name))
    }

    pub(super) fn namespace(&self) -> Result<String> {
        Ok(self.opt_str("namespace")?.filter(|s| !s.is_empty()).unwrap_or_else(|| self.default_namespace.clone()))
    }

    pub(super) fn command(&self, name: &str) -> Result<Vec<String>> {
        match self.args.get(name) {
            None | Some(Value::Null) => Err(self.missing(name)),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    Value::Bool(b) => Ok(b.to_string()),
                    _ => Err(self.invalid(name, "a list of strings")),
                })
                .collect(),
            Some(_) => Err(self.invalid(name, "a list of strings")),
        }
    }

    pub(super) fn opt_string_map(&self, name: &str) -> Result<BTreeMap<String, String>> {
        match self.args.get(name) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    Value::Number(n) => Ok((k.clone(), n.to_string())),
                    Value::Bool(b) => Ok((k.clone(), b.to_string())),
                    _ => Err(self.invalid(name, "a map of strings")),
                })
                .collect(),
            Some(_) => Err(self.invalid(name, "a map of strings")),
        }
    }

    pub(super) fn opt_bool(&self, name: &str, default: bool) -> Result<bool> {
        match self.args.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) => s.trim().parse().map_err(|_| self.invalid(name, "a boolean")),
            Some(_) => Err(self.invalid(name, "a boolean")),
        }
    }

    pub(super) fn secrets(&self) -> Vec<String> {
        self.params.secret_values()
    }

    /// Pod labels: the ActionSet's, then the phase's `podLabels`, then the engine's.
    pub(super) fn pod_labels(&self) -> Result<BTreeMap<String, String>> {
        let mut labels = self.params.pod_labels.clone();
        labels.extend(self.opt_string_map("podLabels")?);
        labels.extend(self.labels.clone());
        Ok(labels)
    }

    pub(super) fn pod_annotations(&self) -> Result<BTreeMap<String, String>> {
        let mut annotations = self.params.pod_annotations.clone();
        annotations.extend(self.opt_string_map("podAnnotations")?);
        Ok(annotations)
    }

    /// The ActionSet's `podOverride` with the phase's merged over it.
    pub(super) fn pod_override(&self) -> Result<JsonMap> {
        let mut merged = Value::Object(self.params.pod_override.clone().into_iter().collect());
        match self.args.get("podOverride") {
            None | Some(Value::Null) => {}
            Some(v @ Value::Object(_)) => merge_patch(&mut merged, v),
            Some(_) => return Err(self.invalid("podOverride", "a map")),
        }
        Ok(match merged {
            Value::Object(m) => m.into_iter().collect(),
            _ => JsonMap::new(),
        })
    }
}

/// Prefix of the Secrets holding a Profile's credential for task pods (`KANISTER_PROFILE_CREDENTIAL`).
pub const CREDENTIAL_SECRET_PREFIX: &str = "kanister-profile-";
/// The key of those Secrets' data.
pub const CREDENTIAL_SECRET_KEY: &str = "credential";

pub(super) fn words<C: Cluster>(ctx: &Context<C>, name: &str) -> Result<Vec<String>> {
    match ctx.args.get(name) {
        None | Some(Value::Null) => Err(ctx.missing(name)),
        Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_string).collect()),
        Some(Value::Array(_)) => ctx.command(name),
        Some(_) => Err(ctx.invalid(name, "a space-separated string")),
    }
}

/// One error for the failures of a fan-out: `None` when there were none, the error itself when
/// one failed, all of them when several did.
pub(super) fn all_errors(mut errors: Vec<Error>) -> Option<Error> {
    match errors.len() {
        0 => None,
        1 => Some(errors.remove(0)),
        _ => Some(Error::Many(errors)),
    }
}

/// `error`, carrying the outputs of what succeeded when there are any.
pub(super) fn partial(outputs: JsonMap, error: Error) -> Error {
    if outputs.is_empty() { error } else { Error::Partial { outputs, source: Box::new(error) } }
}

/// Creates a pod, streams the log of `container` through the output parser, waits for that
/// container to end and returns the outputs. The engine deletes the pod afterwards.
pub(super) async fn run_pod<C: Cluster>(
    ctx: &Context<C>,
    pod: TaskPod,
    container: &str,
    fail_on_error: bool,
) -> Result<JsonMap> {
    let cluster = &ctx.cluster;
    let name = cluster.create_pod(&pod).await?;
    ctx.pods.lock().unwrap_or_else(|e| e.into_inner()).push((pod.namespace.clone(), name.clone()));
    tracing::info!(pod = %name, namespace = %pod.namespace, "task pod created");
    cluster.wait_pod_started(&pod.namespace, &name, ctx.ready_timeout).await?;
    let (logs, (outputs, mut tail)) = read_log(ctx, &pod.namespace, &name, container).await;
    let what = format!("container {container} of pod {}/{name}", pod.namespace);
    let status = cluster.wait_container(&pod.namespace, &name, container).await?;
    if fail_on_error {
        // The pod succeeded only if every container did: an init container that failed kept
        // the others from starting (it explains the output container's failure best, and the
        // API server refuses the log of a container that never started), and a background
        // container (MultiContainerRun's database client fed through a pipe) may fail while
        // the output container ends well.
        for c in &pod.init_containers {
            failed_container(ctx, &pod.namespace, &name, &c.name).await?;
        }
    }
    logs?;
    if fail_on_error {
        if !status.success() {
            tail.redact(&ctx.secrets());
            return Err(Error::CommandFailed { what, status, tail });
        }
        for c in pod.containers.iter().filter(|c| c.name != container) {
            failed_container(ctx, &pod.namespace, &name, &c.name).await?;
        }
    }
    outputs.map_err(|source| Error::Output { what, source })
}

/// The log of `container` of pod `namespace/pod` to its end, through the output parser: how the
/// reading ended, the phase outputs and the last lines of ordinary text.
async fn read_log<C: Cluster>(
    ctx: &Context<C>,
    namespace: &str,
    pod: &str,
    container: &str,
) -> (cluster::Result<()>, (output::Result<JsonMap>, LogTail)) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let mut parser = Parser::new(ctx.tail_lines);
    let consume = async move {
        while let Some(data) = rx.recv().await {
            parser.feed(&data);
        }
        parser.finish()
    };
    tokio::join!(ctx.cluster.pod_logs(namespace, pod, container, tx), consume)
}

/// Waits for a container of a task pod to end; an error naming it, its exit code and the last
/// lines of its log (secrets redacted) when it did not exit 0.
async fn failed_container<C: Cluster>(ctx: &Context<C>, namespace: &str, pod: &str, container: &str) -> Result<()> {
    let status = ctx.cluster.wait_container(namespace, pod, container).await?;
    if status.success() {
        return Ok(());
    }
    let (logs, (_, mut tail)) = read_log(ctx, namespace, pod, container).await;
    if let Err(e) = logs {
        tracing::warn!(pod, container, error = %e, "cannot read the log of a failed container");
    }
    tail.redact(&ctx.secrets());
    Err(Error::CommandFailed { what: format!("container {container} of pod {namespace}/{pod}"), status, tail })
}

impl<C: Cluster> Context<C> {
    pub(super) async fn task_pod(&self, generate_name: &str, containers: Vec<Container>) -> Result<TaskPod> {
        let namespace = self.namespace()?;
        // Kubernetes has no owners across namespaces: its garbage collector would treat the
        // reference as dangling and delete a running pod. Pods elsewhere are cleaned up by the
        // engine itself (and carry the ActionSet's labels).
        let owner = if namespace == self.default_namespace { self.owner.clone() } else { None };
        let mut env = Vec::new();
        if let Some(profile) = &self.profile {
            env.push(super::repokey::ensure(&*self.cluster, profile, &namespace).await.map_err(Box::new)?);
        }
        if let Some(var) = self.credential_env(&namespace).await? {
            env.push(var);
        }
        Ok(TaskPod {
            env,
            namespace,
            generate_name: generate_name.into(),
            containers,
            labels: self.pod_labels()?,
            annotations: self.pod_annotations()?,
            pod_override: self.pod_override()?,
            owner,
            ..Default::default()
        })
    }
}

impl<C: Cluster> Context<C> {
    /// `KANISTER_PROFILE_CREDENTIAL` from a Secret in `namespace`, when the arguments reference
    /// it (they were rendered with [`TemplateParams::credential_from_env`]) and the Profile has
    /// credential values.
    async fn credential_env(&self, namespace: &str) -> Result<Option<cluster::EnvVar>> {
        use crate::render::params::CREDENTIAL_ENV;
        let (Some(_), Some(profile)) = (&self.profile, &self.params.profile) else { return Ok(None) };
        let referenced = serde_json::to_string(&self.args).is_ok_and(|text| text.contains(CREDENTIAL_ENV));
        if !referenced || !profile.has_credential_values() {
            return Ok(None);
        }
        let json = profile.credential_json();
        let data = BTreeMap::from([(CREDENTIAL_SECRET_KEY.to_string(), json.as_bytes().to_vec())]);
        let secret = self.content_secret(namespace, CREDENTIAL_SECRET_PREFIX, &data).await?;
        Ok(Some(cluster::EnvVar {
            name: CREDENTIAL_ENV.into(),
            source: cluster::EnvSource::SecretKey { secret, key: CREDENTIAL_SECRET_KEY.into() },
        }))
    }

    /// Makes sure a Secret holding `data` exists in `namespace` and returns its name,
    /// `<prefix><profile namespace>-<profile>-<hash of data>`. Named after its contents and
    /// never changed once created: changed data makes a new Secret, and the coordinator needs
    /// no right to modify Secrets (RBAC: `get`, `create`).
    pub(super) async fn content_secret(
        &self,
        namespace: &str,
        prefix: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<String> {
        use base64::Engine as _;
        use sha2::Digest as _;
        let Some(profile_ref) = &self.profile else { return Err(Error::NoProfile(self.function())) };
        let encoded: BTreeMap<&str, String> =
            data.iter().map(|(k, v)| (k.as_str(), base64::engine::general_purpose::STANDARD.encode(v))).collect();
        let mut digest = sha2::Sha256::new();
        for (k, v) in &encoded {
            digest.update(format!("{k}={v}\n"));
        }
        let hash = hex::encode(&digest.finalize()[..5]);
        let name = format!("{prefix}{}-{}-{hash}", profile_ref.namespace, profile_ref.name);
        if let Err(cluster::Error::NotFound(_)) = self.cluster.secret(namespace, &name).await {
            let object = super::repokey::owned_secret(namespace, &name, profile_ref, &encoded);
            if let Err(e) = self.cluster.apply(object, namespace).await {
                // Another run may have created it in the meantime: then it holds the same data.
                if self.cluster.secret(namespace, &name).await.is_err() {
                    return Err(e.into());
                }
            }
        }
        Ok(name)
    }
}
