//! Repository work with no pod to do it in, done by the agent in a task pod: `DeleteData`
//! (forget, and with `reclaimSpace` prune), `LocationDelete`, `BackupDataStats`,
//! `CheckRepository`, the latest backup of a tag for `RestoreData` into volumes, and
//! `kanctl snapshots`.
//!
//! The coordinator never opens a repository: it runs `kanister-agent task` in a task pod of the
//! tools image, in the function's namespace (the Profile's for `kanctl snapshots` and
//! maintenance), with the request in `KANISTER_TASK` ([`pb::TaskRequest`], no secret in it) and
//! the repository as every task pod gets it (store settings as values, credentials and the key
//! from Secrets: [`repository_env`], [`super::repokey`]). Loading an index, walking
//! snapshots and pruning happen there, under the pod's memory limit, and the coordinator reads
//! one answer back: the phase output `taskResult`, a base64-encoded [`pb::TaskResult`] (at most
//! [`crate::output::MAX_OUTPUT_LINE`] bytes), decoded with prost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use kanister_proto::agent::v1 as pb;
use prost::Message as _;

use super::context::{Context, Error, Result};
use crate::cluster::{Cluster, Container, EnvSource, EnvVar, TaskPod};
use crate::crd::{JsonMap, ObjectReference};
use crate::render::params::ProfileParams;
use crate::render::{Location, Renderer, TemplateParams};

/// The environment variable `kanister-agent task` reads its request from.
const REQUEST_ENV: &str = "KANISTER_TASK";
/// The phase output holding the answer.
const RESULT_KEY: &str = "taskResult";

/// What a Profile's location said to a task.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The repository opened; the task's result.
    Open(pb::task_result::Result),
    /// The Profile has no key Secret: nothing was ever backed up through it (no pod ran).
    NoKey,
    /// The location holds no repository.
    NoRepository,
    /// A repository is there, but the Profile's key does not open it.
    WrongKey,
}

/// Runs `task` against the repository of the context's Profile in a task pod named
/// `generate_name...`. Never creates a key or a repository.
pub(crate) async fn run<C: Cluster>(
    ctx: &Context<C>,
    generate_name: &str,
    task: pb::task_request::Task,
) -> Result<Answer> {
    let Some(profile) = &ctx.profile else { return Err(Error::NoProfile(ctx.function())) };
    if super::repokey::existing(&*ctx.cluster, profile).await.map_err(Box::new)?.is_none() {
        return Ok(Answer::NoKey);
    }
    let request = pb::TaskRequest { task: Some(task) };
    let encoded = base64::engine::general_purpose::STANDARD.encode(request.encode_to_vec());
    let command = ["kanister-agent", "task"].map(String::from).into();
    let mut pod = agent_pod(ctx, generate_name, ctx.tools_image.clone(), command).await?;
    pod.env.push(EnvVar { name: REQUEST_ENV.into(), source: EnvSource::Value(encoded) });
    let out = super::context::run_pod(ctx, pod, AGENT_CONTAINER, true).await?;
    let result = decode(&out).map_err(|why| Error::Data {
        function: ctx.function(),
        message: format!(
            "the agent's task pod answered no {RESULT_KEY} ({why}): is {} the tools image of this release?",
            ctx.tools_image
        ),
    })?;
    match pb::TaskRepositoryState::try_from(result.state) {
        Ok(pb::TaskRepositoryState::NoRepository) => Ok(Answer::NoRepository),
        Ok(pb::TaskRepositoryState::WrongKey) => Ok(Answer::WrongKey),
        Ok(pb::TaskRepositoryState::Open) => match result.result {
            Some(r) => Ok(Answer::Open(r)),
            None => {
                Err(Error::Data { function: ctx.function(), message: "the agent's task pod answered no result".into() })
            }
        },
        _ => Err(Error::Data {
            function: ctx.function(),
            message: format!("the agent's task pod answered an unknown repository state {}", result.state),
        }),
    }
}

/// The container of [`agent_pod`]s.
pub(crate) const AGENT_CONTAINER: &str = "container";

/// A task pod in the context's namespace whose one container ([`AGENT_CONTAINER`], image
/// `image`) runs the agent's `command` against the Profile's repository: the store's settings,
/// credentials and key in its environment ([`repository_env`],
/// [`super::repokey`]), and the memory limit of the agent's task pods. Every pod the coordinator
/// starts for repository work is one: tasks, maintenance, `CopyVolumeData` and `RestoreData`
/// into volumes.
pub(crate) async fn agent_pod<C: Cluster>(
    ctx: &Context<C>,
    generate_name: &str,
    image: String,
    command: Vec<String>,
) -> Result<TaskPod> {
    let namespace = ctx.namespace()?;
    let container = Container { name: AGENT_CONTAINER.into(), image, command };
    let mut pod = ctx.task_pod(generate_name, vec![container]).await?;
    limit_memory(&mut pod, AGENT_CONTAINER, &ctx.task_memory_limit);
    pod.env.extend(repository_env(ctx, &namespace).await?);
    Ok(pod)
}

/// Gives container `container` of `pod` the memory limit `limit` (none when empty), under the
/// function's `podOverride`: an override naming the container's resources wins.
fn limit_memory(pod: &mut TaskPod, container: &str, limit: &str) {
    if limit.is_empty() {
        return;
    }
    let ours = serde_json::json!({"name": container, "resources": {"limits": {"memory": limit}}});
    let mut containers = match pod.pod_override.remove("containers") {
        Some(serde_json::Value::Array(theirs)) => theirs,
        Some(other) => vec![other],
        None => Vec::new(),
    };
    // Overrides apply in order: theirs after ours.
    containers.insert(0, ours);
    pod.pod_override.insert("containers".into(), serde_json::Value::Array(containers));
}

/// The answer in a task pod's phase outputs.
fn decode(out: &JsonMap) -> std::result::Result<pb::TaskResult, String> {
    let text = out.get(RESULT_KEY).and_then(|v| v.as_str()).ok_or("no such output")?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| e.to_string())?;
    pb::TaskResult::decode(bytes.as_slice()).map_err(|e| e.to_string())
}

/// A context for repository work of a Profile outside any ActionSet (maintenance, `kanctl
/// snapshots`): task pods in the Profile's namespace, labelled `label`.
pub(crate) fn profile_context<C: Cluster>(
    cluster: Arc<C>,
    config: &super::EngineConfig,
    profile: &ObjectReference,
    params: ProfileParams,
    label: (&str, &str),
) -> Context<C> {
    Context {
        cluster,
        renderer: Renderer::new(),
        location: Location::phase(label.1, label.1, label.1),
        params: TemplateParams { profile: Some(params), ..Default::default() },
        args: JsonMap::new(),
        default_namespace: profile.namespace.clone(),
        owner: None,
        labels: BTreeMap::from([(label.0.to_string(), profile.name.clone())]),
        tail_lines: config.log_tail_lines,
        poll: config.poll_interval,
        ready_timeout: config.ready_timeout,
        deadline: tokio::time::Instant::now() + config.phase_timeout,
        pods: Arc::new(Mutex::new(Vec::new())),
        profile: Some(profile.clone()),
        agent: config.agent.clone(),
        op_id: format!("{}/{}/{}", label.1, profile.namespace, profile.name),
        tools_image: config.tools_image.clone(),
        task_memory_limit: config.task_memory_limit.clone(),
        progress: None,
    }
}

/// Deletes the pods `ctx` created, whatever happened (outside an ActionSet, no phase cleans
/// them up).
pub(crate) async fn delete_pods<C: Cluster>(ctx: &Context<C>) {
    let pods = std::mem::take(&mut *ctx.pods.lock().unwrap_or_else(|e| e.into_inner()));
    for (ns, name) in pods {
        if let Err(e) = ctx.cluster.delete_pod(&ns, &name).await {
            tracing::warn!(pod = %name, namespace = %ns, error = %e, "cannot delete a task pod");
        }
    }
}

/// Prefix of the Secrets holding a Profile's store credentials for task pods.
pub const STORE_SECRET_PREFIX: &str = "kanister-store-";

/// Whether a store setting is a credential (kept in a Secret, never in a pod spec).
fn is_credential(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["key", "secret", "token", "password", "sas"].iter().any(|w| k.contains(w))
}

/// The environment of a task pod that opens the Profile's repository with the agent CLI: the
/// store URL and its plain settings as values (`KANISTER_STORE`, `KANISTER_STORE_OPTIONS`),
/// the credentials (`AWS_*`, `AZURE_*`, `GOOGLE_*`, read by the stores) as `secretKeyRef`s to a
/// Secret the coordinator writes into the pod's namespace. The repository key comes with
/// [`Context::task_pod`] ([`super::repokey`]).
///
/// The Secret is named after its contents (`kanister-store-<profile namespace>-<profile>-<hash>`)
/// and never changed once created: rotated Profile credentials make a new one, and the
/// coordinator needs no right to modify Secrets (RBAC: `get`, `create`).
pub(super) async fn repository_env<C: Cluster>(ctx: &Context<C>, namespace: &str) -> Result<Vec<EnvVar>> {
    let Some(profile) = &ctx.params.profile else {
        return Err(Error::NoProfile(ctx.function()));
    };
    let r = super::agent::repository_ref(profile, zeroize::Zeroizing::new(Vec::new()))
        .map_err(|e| Error::Data { function: ctx.function(), message: e.to_string() })?;
    let mut env = vec![EnvVar { name: "KANISTER_STORE".into(), source: EnvSource::Value(r.store_url) }];
    let (secret, plain): (BTreeMap<String, String>, BTreeMap<String, String>) =
        r.store_options.into_iter().partition(|(k, _)| is_credential(k));
    if !plain.is_empty() {
        let joined: Vec<String> = plain.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(EnvVar { name: "KANISTER_STORE_OPTIONS".into(), source: EnvSource::Value(joined.join(",")) });
    }
    if secret.is_empty() {
        return Ok(env);
    }
    let data: BTreeMap<String, Vec<u8>> =
        secret.into_iter().map(|(k, v)| (k.to_ascii_uppercase(), v.into_bytes())).collect();
    let name = ctx.content_secret(namespace, STORE_SECRET_PREFIX, &data).await?;
    for k in data.keys() {
        env.push(EnvVar { name: k.clone(), source: EnvSource::SecretKey { secret: name.clone(), key: k.clone() } });
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_pods_get_the_memory_limit_under_the_functions_override() {
        let mut pod = TaskPod::default();
        limit_memory(&mut pod, "container", "");
        assert!(pod.pod_override.is_empty(), "no limit: nothing set");
        limit_memory(&mut pod, "container", "1Gi");
        assert_eq!(
            serde_json::Value::Object(pod.pod_override.clone().into_iter().collect()),
            serde_json::json!({"containers": [{"name": "container", "resources": {"limits": {"memory": "1Gi"}}}]})
        );
        // A podOverride of the function (its own limit) comes after ours, so it wins.
        let theirs = serde_json::json!({"name": "container", "resources": {"limits": {"memory": "4Gi"}}});
        let mut pod = TaskPod::default();
        pod.pod_override.insert("containers".into(), serde_json::json!([theirs.clone()]));
        limit_memory(&mut pod, "container", "1Gi");
        assert_eq!(pod.pod_override["containers"][1], theirs);
    }

    use proptest::prelude::*;

    proptest! {
        /// What a task pod prints is decoded in the coordinator: any bytes, any text, and valid
        /// answers with a byte changed give an answer or an error, never a panic.
        #[test]
        fn hostile_answers_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            text in ".{0,80}",
            at in any::<usize>(),
            flip in 1u8..,
        ) {
            let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
            let output = |v: String| JsonMap::from([(RESULT_KEY.to_string(), serde_json::Value::String(v))]);
            let _ = decode(&output(b64(&bytes)));
            let _ = decode(&output(text.clone()));
            let info = pb::SnapshotInfo { id: text.clone(), tags: [(text.clone(), text)].into(), ..Default::default() };
            let listed = pb::ListSnapshotsResponse { snapshots: vec![info] };
            let answer = pb::TaskResult {
                state: pb::TaskRepositoryState::Open.into(),
                result: Some(pb::task_result::Result::Snapshots(listed)),
            };
            let mut valid = answer.encode_to_vec();
            prop_assert_eq!(decode(&output(b64(&valid))).ok(), Some(answer));
            let i = at % valid.len();
            valid[i] ^= flip;
            let _ = decode(&output(b64(&valid)));
        }
    }

    #[test]
    fn answers_decode_and_garbage_is_an_error() {
        let result = pb::TaskResult {
            state: pb::TaskRepositoryState::Open.into(),
            result: Some(pb::task_result::Result::DeleteAt(pb::DeleteAtResult { deleted: 3 })),
        };
        let text = base64::engine::general_purpose::STANDARD.encode(result.encode_to_vec());
        let out = JsonMap::from([(RESULT_KEY.to_string(), serde_json::Value::String(text))]);
        assert_eq!(decode(&out).unwrap(), result);
        assert!(decode(&JsonMap::new()).is_err());
        let out = JsonMap::from([(RESULT_KEY.to_string(), serde_json::Value::String("%%%".into()))]);
        assert!(decode(&out).is_err());
    }
}
