//! The data functions, served by agents: the pod's agent sidecar over gRPC ([`super::agent`]), or
//! the agent in a task pod.
//!
//! `BackupStream` / `RestoreStream` run a dump / restore command in the sidecar and stream it
//! through the repository; their `env` argument adds variables to the command's environment
//! (the way to give it a password: never in `command`). `BackupData` backs up `includePath` as
//! the pod's agent sees it (agent `BackupPaths`), `RestoreData` restores a tree snapshot (by
//! `backupIdentifier`, or the latest one carrying `backupTag`) into `restorePath`
//! (`RestorePaths`), `DeleteData` forgets snapshots and with `reclaimSpace` prunes the repository
//! (in a task pod). `backupArtifactPrefix`, `image` and the other upstream arguments that choose
//! a Kopia repository are accepted and unused: the repository is the Profile's.
//!
//! Those with a pod find its sidecar with [`Cluster::agent_endpoint`] and name the repository of
//! the action's Profile in the gRPC request (store and credentials from the Profile, key from its
//! key Secret, inside the request only); those without one (`DeleteData`, `LocationDelete`,
//! `BackupDataStats`, `CheckRepository`) run the agent in a task pod ([`super::task`]). The
//! coordinator itself never opens a repository. They report the operation's byte counts through
//! [`Context::progress`]. The operation id is derived from the ActionSet, action and phase, so
//! a repeated call attaches to the running operation instead of starting another.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;

use kanister_proto::agent::v1 as pb;
use serde_json::Value;

use super::context::{Context, Error, Result, TransferProgress};
use super::task::{self, Answer};
use crate::cluster::Cluster;
use crate::crd::JsonMap;
use pb::task_request::Task;
use pb::task_result::Result as TaskOut;

/// The agent endpoint of the function's pod (`namespace`, `pod` arguments) and the repository
/// of the action's Profile.
pub(super) async fn agent_target<C: Cluster>(
    ctx: &Context<C>,
) -> Result<(String, super::agent::Client, pb::RepositoryRef)> {
    let namespace = ctx.str("namespace")?;
    let pod = ctx.str("pod")?;
    agent_of(ctx, &namespace, &pod).await
}

/// The agent sidecar of pod `namespace/pod` and the repository of the action's Profile.
async fn agent_of<C: Cluster>(
    ctx: &Context<C>,
    namespace: &str,
    pod: &str,
) -> Result<(String, super::agent::Client, pb::RepositoryRef)> {
    let what = format!("{namespace}/{pod}");
    let agent_err = |source| Error::Agent { function: ctx.function(), pod: what.clone(), source };
    let repository = repository_ref(ctx).await?;
    let endpoint = ctx.cluster.agent_endpoint(namespace, pod).await?;
    let client = super::agent::connect(&endpoint, &ctx.agent).await.map_err(agent_err)?;
    Ok((what, client, repository))
}

/// The action's Profile repository as agents are told of it, key included (created on first
/// use).
async fn repository_ref<C: Cluster>(ctx: &Context<C>) -> Result<pb::RepositoryRef> {
    let (Some(profile_ref), Some(profile)) = (&ctx.profile, &ctx.params.profile) else {
        return Err(Error::NoProfile(ctx.function()));
    };
    let key = super::repokey::value(&*ctx.cluster, profile_ref).await.map_err(Box::new)?;
    super::agent::repository_ref(profile, key)
        .map_err(|source| Error::Repository { function: ctx.function(), source: Box::new(source.into()) })
}

/// Creates the repository `r` of the action's Profile through the agent `client` unless it
/// exists, before a backup ([`super::repository::ensure`]).
async fn ensure_repository<C: Cluster>(
    ctx: &Context<C>,
    client: &mut super::agent::Client,
    r: &pb::RepositoryRef,
) -> Result<()> {
    let profile = ctx.profile.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)).unwrap_or_default();
    super::repository::ensure(&profile, client, r)
        .await
        .map_err(|source| Error::Repository { function: ctx.function(), source: Box::new(source) })
}

fn no_repository() -> &'static str {
    "the Profile's location holds no repository yet (nothing was backed up through it)"
}

fn wrong_key() -> &'static str {
    "the Profile's key Secret (kanister-repo-key-<profile> in the Profile's namespace) does not open the \
     repository at its location: restore the Secret that was used for the backups"
}

/// A task's answer of another kind than asked for.
fn unexpected<C: Cluster>(ctx: &Context<C>) -> Error {
    Error::Data {
        function: ctx.function(),
        message: "the agent's task pod answered another task: is the tools image of this release?".into(),
    }
}

fn report<C>(ctx: &Context<C>, p: &kanister_proto::agent::v1::Progress, backup: bool) {
    let Some(tx) = &ctx.progress else { return };
    let (downloaded, uploaded) =
        if backup { (p.bytes_read, p.bytes_uploaded) } else { (p.bytes_downloaded, p.bytes_read) };
    let percent = (p.total_bytes > 0)
        .then(|| u8::try_from((p.bytes_read.saturating_mul(100) / p.total_bytes).min(100)).unwrap_or(100));
    tx.send_replace(Some(TransferProgress {
        downloaded,
        uploaded,
        total: p.total_bytes,
        percent,
        eta_secs: p.eta_secs,
    }));
}

/// The command of `BackupStream` / `RestoreStream`: `command` (argv, no shell unless it names
/// one) and `env`, variables added to its environment in the sidecar. Passwords belong in
/// `env` (`MYSQL_PWD`, `PGPASSWORD`): they travel inside the gRPC request and reach the
/// command's environment only, never a command line, a status, an event or a log.
fn command_spec<C: Cluster>(ctx: &Context<C>) -> Result<kanister_proto::agent::v1::CommandSpec> {
    let argv = ctx.command("command")?;
    if argv.is_empty() {
        return Err(ctx.invalid("command", "a non-empty list of strings"));
    }
    let env = ctx.opt_string_map("env")?;
    if env.keys().any(|k| k.is_empty() || k.contains(['=', '\0'])) {
        return Err(ctx.invalid("env", "a map of environment variable names (no '=') to values"));
    }
    Ok(kanister_proto::agent::v1::CommandSpec { argv, env: env.into_iter().collect() })
}

pub(super) async fn backup_stream<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let command = command_spec(ctx)?;
    let mut tags: std::collections::HashMap<String, String> = ctx.opt_string_map("tags")?.into_iter().collect();
    let (pod, mut client, repository) = agent_target(ctx).await?;
    ensure_repository(ctx, &mut client, &repository).await?;
    let agent_err = |source| Error::Agent { function: ctx.function(), pod: pod.clone(), source };
    tags.entry(POD_TAG.into()).or_insert_with(|| pod.clone());
    if let Some(container) = ctx.opt_str("container")? {
        tags.entry(CONTAINER_TAG.into()).or_insert(container);
    }
    // Ties the snapshot to its ActionSet and phase (`kanctl snapshots`).
    tags.entry(BACKUP_TAG.into()).or_insert_with(|| ctx.op_id.clone());
    let request = pb::BackupStreamRequest {
        op_id: ctx.op_id.clone(),
        repository: Some(repository),
        command: Some(command),
        tags,
        hostname: String::new(),
    };
    let stream =
        client.backup_stream(request).await.map_err(|s| agent_err(super::agent::refused(&ctx.op_id, &s)))?.into_inner();
    let result = super::agent::follow(&ctx.op_id, stream, |p| report(ctx, p, true)).await.map_err(agent_err)?;
    let Some(pb::operation_result::Result::Backup(stats)) = result.result else {
        return Err(agent_err(super::agent::Error::NoResult(ctx.op_id.clone())));
    };
    Ok(JsonMap::from([
        ("backupID".to_string(), Value::String(stats.snapshot_id)),
        ("size".to_string(), Value::from(stats.bytes_read)),
        ("phySize".to_string(), Value::from(stats.bytes_uploaded)),
    ]))
}

pub(super) async fn restore_stream<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let command = command_spec(ctx)?;
    let snapshot_id = ctx.str("backupID")?;
    if snapshot_id.is_empty() {
        return Err(ctx.invalid("backupID", "a snapshot id"));
    }
    let (pod, mut client, repository) = agent_target(ctx).await?;
    let agent_err = |source| Error::Agent { function: ctx.function(), pod: pod.clone(), source };
    let request = pb::RestoreStreamRequest {
        op_id: ctx.op_id.clone(),
        repository: Some(repository),
        snapshot_id,
        command: Some(command),
    };
    let stream = client
        .restore_stream(request)
        .await
        .map_err(|s| agent_err(super::agent::refused(&ctx.op_id, &s)))?
        .into_inner();
    super::agent::follow(&ctx.op_id, stream, |p| report(ctx, p, false)).await.map_err(agent_err)?;
    Ok(JsonMap::new())
}

use super::repository::tags::{BACKUP as BACKUP_TAG, CONTAINER as CONTAINER_TAG, POD as POD_TAG, VOLUME as VOLUME_TAG};

/// What one pod's tree backup produced.
struct TreeBackup {
    tag: String,
    stats: pb::BackupStats,
}

/// Backs up `path` as the agent of pod `namespace/pod` sees it, incrementally from the latest
/// tree snapshot of the same pod, container and path. The backup tag is the operation id:
/// stable for the phase, so a retry that attaches to the running operation reports the same.
async fn backup_tree<C: Cluster>(
    ctx: &Context<C>,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    path: &str,
    op_id: &str,
    on_progress: impl FnMut(&pb::Progress),
) -> Result<TreeBackup> {
    let (what, mut client, repository) = agent_of(ctx, namespace, pod).await?;
    ensure_repository(ctx, &mut client, &repository).await?;
    let agent_err = |source| Error::Agent { function: ctx.function(), pod: what.clone(), source };
    let mut tags = HashMap::from([(POD_TAG.to_string(), what.clone())]);
    if let Some(c) = container {
        tags.insert(CONTAINER_TAG.into(), c.into());
    }
    // The agent's own parent choice wants equal tags, which the per-backup tag never gives:
    // choose the parent here. Best effort: a first backup finds no repository, and any real
    // problem with it fails the backup itself below.
    let wanted = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    let listed =
        client.list_snapshots(pb::ListSnapshotsRequest { repository: Some(repository.clone()), tags: tags.clone() });
    let parent = match listed.await {
        Ok(list) => list
            .into_inner()
            .snapshots
            .into_iter()
            .rfind(|s| {
                s.kind == "tree" && s.path == wanted && s.tags.get(BACKUP_TAG).map(String::as_str) != Some(op_id)
            })
            .map(|s| s.id)
            .unwrap_or_default(),
        Err(status) => {
            tracing::debug!(pod = %what, code = ?status.code(), "no parent snapshot found");
            String::new()
        }
    };
    tags.insert(BACKUP_TAG.into(), op_id.into());
    let request = pb::BackupPathsRequest {
        op_id: op_id.into(),
        repository: Some(repository),
        path: path.into(),
        tags,
        hostname: String::new(),
        parent_snapshot_id: parent,
        force: false,
    };
    let stream =
        client.backup_paths(request).await.map_err(|s| agent_err(super::agent::refused(op_id, &s)))?.into_inner();
    let result = super::agent::follow(op_id, stream, on_progress).await.map_err(agent_err)?;
    let Some(pb::operation_result::Result::Backup(stats)) = result.result else {
        return Err(agent_err(super::agent::Error::NoResult(op_id.into())));
    };
    if stats.partial {
        let shown: Vec<&str> = stats.errors.iter().take(5).map(String::as_str).collect();
        return Err(Error::Data {
            function: ctx.function(),
            message: format!(
                "the backup of {path} in pod {what} is partial (snapshot {}): {} path(s) could not be read: {}; \
                 fix their permissions or exclude them",
                stats.snapshot_id,
                stats.errors.len(),
                shown.join("; ")
            ),
        });
    }
    Ok(TreeBackup { tag: op_id.into(), stats })
}

fn backup_outputs(b: &TreeBackup) -> JsonMap {
    JsonMap::from([
        ("backupID".to_string(), Value::String(b.stats.snapshot_id.clone())),
        ("backupTag".to_string(), Value::String(b.tag.clone())),
        ("fileCount".to_string(), Value::from(b.stats.files)),
        ("size".to_string(), Value::from(b.stats.size)),
        ("phySize".to_string(), Value::from(b.stats.bytes_uploaded)),
    ])
}

fn non_empty<C: Cluster>(ctx: &Context<C>, name: &str, expected: &str) -> Result<String> {
    let v = ctx.str(name)?;
    if v.is_empty() {
        return Err(ctx.invalid(name, expected));
    }
    Ok(v)
}

pub(super) async fn backup_data<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let path = non_empty(ctx, "includePath", "a directory path")?;
    let (namespace, pod) = (ctx.str("namespace")?, ctx.str("pod")?);
    let container = ctx.opt_str("container")?;
    let b =
        backup_tree(ctx, &namespace, &pod, container.as_deref(), &path, &ctx.op_id, |p| report(ctx, p, true)).await?;
    Ok(backup_outputs(&b))
}

/// The pods of an `*All` function: the `pods` argument (names separated by spaces), else the
/// pods of the action's workload.
fn pods_of<C: Cluster>(ctx: &Context<C>) -> Result<Vec<String>> {
    let given = match ctx.args.get("pods") {
        None | Some(Value::Null) => Vec::new(),
        Some(_) => super::context::words(ctx, "pods")?,
    };
    if !given.is_empty() {
        return Ok(given);
    }
    let p = &ctx.params;
    match [&p.stateful_set, &p.deployment, &p.deployment_config].into_iter().flatten().next() {
        Some(w) if !w.pods.is_empty() => Ok(w.pods.clone()),
        _ => Err(ctx.invalid("pods", "pod names separated by spaces (the action's object has no running pods)")),
    }
}

/// Sums the progress of operations running at once into the phase's progress.
struct ProgressSum<'a, C> {
    ctx: &'a Context<C>,
    backup: bool,
    parts: Mutex<BTreeMap<String, pb::Progress>>,
}

impl<C> ProgressSum<'_, C> {
    fn update(&self, key: &str, p: &pb::Progress) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.insert(key.into(), *p);
        let mut sum = pb::Progress::default();
        for q in parts.values() {
            sum.bytes_read += q.bytes_read;
            sum.bytes_uploaded += q.bytes_uploaded;
            sum.bytes_downloaded += q.bytes_downloaded;
            sum.total_bytes += q.total_bytes;
            sum.eta_secs = match (sum.eta_secs, q.eta_secs) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        drop(parts);
        report(self.ctx, &sum, self.backup);
    }
}

/// One pod's entry of `BackupAllInfo` (upstream's Go field names).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BackupInfo {
    #[serde(default)]
    pod_name: String,
    #[serde(rename = "BackupID")]
    backup_id: String,
    #[serde(default)]
    backup_tag: String,
}

/// Runs `f` for every pod at once: what succeeded, and one error naming every pod that failed
/// (not just the first).
async fn for_each_pod<'a, T, F, Fut>(pods: &'a [String], f: F) -> (Vec<(String, T)>, Option<Error>)
where
    F: Fn(&'a str) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let runs = pods.iter().map(|pod| {
        let run = f(pod);
        async move { run.await.map(|t| (pod.clone(), t)) }
    });
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    for r in futures::future::join_all(runs).await {
        match r {
            Ok(x) => done.push(x),
            Err(e) => errors.push(e),
        }
    }
    (done, super::context::all_errors(errors))
}

pub(super) async fn backup_data_all<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let path = non_empty(ctx, "includePath", "a directory path")?;
    let namespace = ctx.str("namespace")?;
    let container = ctx.opt_str("container")?;
    let pods = pods_of(ctx)?;
    let sum = ProgressSum { ctx, backup: true, parts: Mutex::default() };
    let (done, failed) = for_each_pod(&pods, |pod| {
        let (namespace, container, path, sum) = (&namespace, container.as_deref(), &path, &sum);
        async move {
            let op_id = format!("{}/{pod}", ctx.op_id);
            backup_tree(ctx, namespace, pod, container, path, &op_id, |p| sum.update(pod, p)).await
        }
    })
    .await;
    let info: BTreeMap<&str, BackupInfo> = done
        .iter()
        .map(|(pod, b)| {
            let entry =
                BackupInfo { pod_name: pod.clone(), backup_id: b.stats.snapshot_id.clone(), backup_tag: b.tag.clone() };
            (pod.as_str(), entry)
        })
        .collect();
    let total = |f: fn(&pb::BackupStats) -> u64| Value::from(done.iter().map(|(_, b)| f(&b.stats)).sum::<u64>());
    let outputs = JsonMap::from([
        ("BackupAllInfo".to_string(), Value::String(serde_json::to_string(&info).expect("plain strings serialize"))),
        ("fileCount".to_string(), total(|s| s.files)),
        ("size".to_string(), total(|s| s.size)),
        ("phySize".to_string(), total(|s| s.bytes_uploaded)),
    ]);
    match failed {
        None => Ok(outputs),
        // The snapshots of the pods that succeeded exist: their ids stay findable (to restore
        // or delete them) while the phase fails.
        Some(e) if !done.is_empty() => Err(super::context::partial(outputs, e)),
        Some(e) => Err(e),
    }
}

/// Restores snapshot `snapshot_id` into `target` through the agent of pod `namespace/pod`.
async fn restore_tree<C: Cluster>(
    ctx: &Context<C>,
    namespace: &str,
    pod: &str,
    snapshot: Snapshot,
    target: &str,
    op_id: &str,
    on_progress: impl FnMut(&pb::Progress),
) -> Result<()> {
    let (what, mut client, repository) = agent_of(ctx, namespace, pod).await?;
    let agent_err = |source| Error::Agent { function: ctx.function(), pod: what.clone(), source };
    let snapshot_id = match snapshot {
        Snapshot::Id(id) => id,
        Snapshot::Tag(tag) => {
            let request = pb::ListSnapshotsRequest {
                repository: Some(repository.clone()),
                tags: HashMap::from([(BACKUP_TAG.to_string(), tag.clone())]),
            };
            let list = client
                .list_snapshots(request)
                .await
                .map_err(|s| agent_err(super::agent::refused(op_id, &s)))?
                .into_inner();
            // Oldest first: the latest backup with the tag.
            list.snapshots
                .into_iter()
                .next_back()
                .map(|s| s.id)
                .ok_or_else(|| Error::NoBackup { function: ctx.function(), tag })?
        }
    };
    let request = pb::RestorePathsRequest {
        op_id: op_id.into(),
        repository: Some(repository),
        snapshot_id,
        target: target.into(),
        delete_extra: false,
        include: Vec::new(),
        exclude: Vec::new(),
    };
    let stream =
        client.restore_paths(request).await.map_err(|s| agent_err(super::agent::refused(op_id, &s)))?.into_inner();
    super::agent::follow(op_id, stream, on_progress).await.map_err(agent_err)?;
    Ok(())
}

/// Which snapshot to restore.
enum Snapshot {
    Id(String),
    Tag(String),
}

pub(super) async fn restore_data<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let target = non_empty(ctx, "restorePath", "a directory path")?;
    let id = ctx.opt_str("backupIdentifier")?.filter(|s| !s.is_empty());
    let tag = ctx.opt_str("backupTag")?.filter(|s| !s.is_empty());
    let snapshot = match (id, tag) {
        (Some(id), _) => Snapshot::Id(id),
        (None, Some(tag)) => Snapshot::Tag(tag),
        (None, None) => return Err(ctx.missing("backupIdentifier")),
    };
    let volumes = ctx.opt_string_map("volumes")?;
    match ctx.opt_str("pod")?.filter(|p| !p.is_empty()) {
        Some(pod) => {
            let namespace = ctx.str("namespace")?;
            restore_tree(ctx, &namespace, &pod, snapshot, &target, &ctx.op_id, |p| report(ctx, p, false)).await?;
        }
        None if !volumes.is_empty() => restore_into_volumes(ctx, snapshot, &target, volumes).await?,
        None => {
            return Err(ctx
                .invalid("pod", "the pod whose agent sidecar restores, or volumes (PVC: mount path) to restore into"));
        }
    }
    Ok(JsonMap::new())
}

/// Upstream's `RestoreData` with `volumes` instead of `pod` (the workload is scaled down): a task
/// pod of the tools image mounts the PVCs and restores with the agent CLI, the store's
/// credentials and the repository key in its environment from Secrets. The blueprint's `image`
/// (upstream's kanister-tools) is not used: the restore needs our agent.
async fn restore_into_volumes<C: Cluster>(
    ctx: &Context<C>,
    snapshot: Snapshot,
    target: &str,
    volumes: BTreeMap<String, String>,
) -> Result<()> {
    let id = match snapshot {
        Snapshot::Id(id) => id,
        Snapshot::Tag(tag) => {
            let wanted = HashMap::from([(BACKUP_TAG.to_string(), tag.clone())]);
            let listed =
                match task::run(ctx, "latest-backup-", Task::ListSnapshots(pb::ListSnapshotsTask { tags: wanted }))
                    .await?
                {
                    Answer::Open(TaskOut::Snapshots(l)) => l.snapshots,
                    Answer::Open(_) => return Err(unexpected(ctx)),
                    Answer::NoKey | Answer::NoRepository => {
                        return Err(Error::Data { function: ctx.function(), message: no_repository().into() });
                    }
                    Answer::WrongKey => {
                        return Err(Error::Data { function: ctx.function(), message: wrong_key().into() });
                    }
                };
            // An unreadable snapshot may be the latest with this tag: restoring an older one
            // instead would report success with the wrong data.
            if let Some(s) = listed.iter().find(|s| !s.error.is_empty()) {
                return Err(Error::Data {
                    function: ctx.function(),
                    message: format!(
                        "snapshot {} cannot be read ({}), so the latest backup tagged {tag} is unknown: \
                         run `kanister-agent check` against the repository, or restore by backupID",
                        s.id, s.error
                    ),
                });
            }
            // Oldest first.
            listed
                .into_iter()
                .next_back()
                .map(|s| s.id)
                .ok_or_else(|| Error::NoBackup { function: ctx.function(), tag })?
        }
    };
    let command = ["kanister-agent", "restore", id.as_str(), target].map(String::from).into();
    let mut pod = task::agent_pod(ctx, "restore-data-", ctx.tools_image.clone(), command).await?;
    pod.volumes = volumes;
    super::context::run_pod(ctx, pod, task::AGENT_CONTAINER, true).await?;
    Ok(())
}

fn backup_info<C: Cluster>(ctx: &Context<C>) -> Result<BTreeMap<String, BackupInfo>> {
    let text = ctx.str("backupInfo")?;
    serde_json::from_str(&text).map_err(|e| {
        ctx.invalid(
            "backupInfo",
            &format!(
                "the BackupAllInfo output of BackupDataAll, a JSON object of pod name to \
                 {{\"PodName\", \"BackupID\", \"BackupTag\"}} ({e})"
            ),
        )
    })
}

pub(super) async fn restore_data_all<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let target = non_empty(ctx, "restorePath", "a directory path")?;
    let namespace = ctx.str("namespace")?;
    let info = backup_info(ctx)?;
    let pods = match ctx.args.get("pods") {
        None | Some(Value::Null) => info.keys().cloned().collect(),
        Some(_) => super::context::words(ctx, "pods")?,
    };
    if let Some(pod) = pods.iter().find(|p| !info.contains_key(*p)) {
        return Err(Error::Data {
            function: ctx.function(),
            message: format!(
                "pod {pod} has no backup in backupInfo (it holds {}); restore into pods of the same names",
                info.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let sum = ProgressSum { ctx, backup: false, parts: Mutex::default() };
    for_each_pod(&pods, |pod| {
        let (namespace, target, sum, info) = (&namespace, &target, &sum, &info);
        async move {
            let op_id = format!("{}/{pod}", ctx.op_id);
            let snapshot = Snapshot::Id(info[pod].backup_id.clone());
            restore_tree(ctx, namespace, pod, snapshot, target, &op_id, |p| sum.update(pod, p)).await
        }
    })
    .await
    .1
    .map_or(Ok(JsonMap::new()), Err)
}

/// The ids of `backupID` (one, a comma-separated list, or a list).
fn backup_ids<C: Cluster>(ctx: &Context<C>) -> Result<Vec<String>> {
    let ids: Vec<String> = match ctx.args.get("backupID") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(_)) => ctx.command("backupID")?,
        Some(_) => ctx.str("backupID")?.split(',').map(|s| s.trim().to_string()).collect(),
    };
    Ok(ids.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Forgets snapshots in the Profile's repository (in a task pod: nothing to move), and with
/// `reclaim` prunes what no snapshot uses any more. Forgetting what is already gone, or a
/// location with no repository, succeeds: a retried delete must not fail.
async fn forget<C: Cluster>(ctx: &Context<C>, ids: Vec<String>, tags: &[String], reclaim: bool) -> Result<JsonMap> {
    let list = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let request = pb::ForgetTask {
        snapshot_ids: ids.clone(),
        backup_tags: tags.to_vec(),
        reclaim_space: reclaim,
        wait_lock_secs: 300,
    };
    let r = match task::run(ctx, "delete-data-", Task::Forget(request)).await? {
        Answer::Open(TaskOut::Forget(r)) => r,
        Answer::Open(_) => return Err(unexpected(ctx)),
        Answer::NoKey | Answer::NoRepository => {
            return Ok(JsonMap::from([("removed".into(), list(Vec::new())), ("alreadyAbsent".into(), list(ids))]));
        }
        Answer::WrongKey => return Err(Error::Data { function: ctx.function(), message: wrong_key().into() }),
    };
    if let Some(p) = &r.prune {
        tracing::info!(function = %ctx.function(), packs_deleted = p.packs_deleted, bytes_deleted = p.bytes_deleted, "space reclaimed");
    }
    Ok(JsonMap::from([("removed".into(), list(r.removed)), ("alreadyAbsent".into(), list(r.already_absent))]))
}

pub(super) async fn delete_data<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let ids = backup_ids(ctx)?;
    let tags: Vec<String> = ctx.opt_str("backupTag")?.into_iter().filter(|t| !t.is_empty()).collect();
    if ids.is_empty() && tags.is_empty() {
        return Err(ctx.invalid("backupID", "a snapshot id or a list of them (or give backupTag)"));
    }
    forget(ctx, ids, &tags, ctx.opt_bool("reclaimSpace", false)?).await
}

pub(super) async fn delete_data_all<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let info = backup_info(ctx)?;
    let ids = info.into_values().map(|b| b.backup_id).collect();
    forget(ctx, ids, &[], ctx.opt_bool("reclaimSpace", false)?).await
}

pub(super) async fn location_delete<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let artifact = non_empty(ctx, "artifact", "the path an artifact was pushed at")?;
    // Upstream strips the bucket from the artifact's front; kando addresses by the path given.
    let bucket = ctx.params.profile.as_ref().map(|p| p.location.bucket.as_str()).unwrap_or_default();
    let mut paths = vec![artifact.clone()];
    if let Some(rest) = artifact.strip_prefix(bucket).filter(|_| !bucket.is_empty()) {
        paths.push(rest.to_string());
        paths.push(rest.trim_start_matches('/').to_string());
    }
    paths.dedup();
    let deleted = match task::run(ctx, "location-delete-", Task::DeleteAt(pb::DeleteAtTask { paths })).await? {
        Answer::Open(TaskOut::DeleteAt(r)) => r.deleted,
        Answer::Open(_) => return Err(unexpected(ctx)),
        Answer::NoKey | Answer::NoRepository => 0,
        Answer::WrongKey => return Err(Error::Data { function: ctx.function(), message: wrong_key().into() }),
    };
    tracing::info!(function = %ctx.function(), artifact = %artifact, deleted, "artifact deleted");
    Ok(JsonMap::new())
}

pub(super) async fn backup_data_stats<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let backup_id = non_empty(ctx, "backupID", "a snapshot id")?;
    let mode = ctx.opt_str("statsMode")?.filter(|m| !m.is_empty()).unwrap_or_else(|| "restore-size".into());
    if !matches!(mode.as_str(), "restore-size" | "raw-data") {
        return Err(ctx.invalid("statsMode", "restore-size (the default) or raw-data"));
    }
    let request = pb::StatsTask { snapshot_id: backup_id, raw_data: mode == "raw-data" };
    let (files, size) = match task::run(ctx, "backup-data-stats-", Task::Stats(request)).await? {
        Answer::Open(TaskOut::Stats(r)) => (r.file_count, r.size),
        Answer::Open(_) => return Err(unexpected(ctx)),
        Answer::NoKey | Answer::NoRepository => {
            return Err(Error::Data { function: ctx.function(), message: no_repository().into() });
        }
        Answer::WrongKey => return Err(Error::Data { function: ctx.function(), message: wrong_key().into() }),
    };
    Ok(JsonMap::from([
        ("mode".to_string(), Value::String(mode)),
        ("fileCount".to_string(), Value::String(files.to_string())),
        ("size".to_string(), Value::String(size.to_string())),
    ]))
}

pub(super) async fn check_repository<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let flags = |password_incorrect: bool, unavailable: bool| {
        JsonMap::from([
            ("passwordIncorrect".to_string(), Value::String(password_incorrect.to_string())),
            ("repoUnavailable".to_string(), Value::String(unavailable.to_string())),
        ])
    };
    let r = match task::run(ctx, "check-repository-", Task::Check(pb::CheckTask { read_data: false })).await? {
        Answer::Open(TaskOut::Check(r)) => r,
        Answer::Open(_) => return Err(unexpected(ctx)),
        Answer::NoKey | Answer::NoRepository => return Ok(flags(false, true)),
        Answer::WrongKey => return Ok(flags(true, false)),
    };
    if !r.ok {
        let shown: Vec<String> = r.errors.iter().take(5).map(|p| format!("{}: {}", p.object, p.problem)).collect();
        return Err(Error::Data {
            function: ctx.function(),
            message: format!(
                "the repository is damaged ({} problem(s)): {}; run `kanister-agent check` on it for the whole list",
                r.errors.len(),
                shown.join("; ")
            ),
        });
    }
    let mut out = flags(false, false);
    out.insert("snapshots".into(), Value::from(r.snapshots));
    Ok(out)
}

/// Upstream's `CopyVolumeData`: a task pod of the tools image mounts the PVC and backs it up
/// with the agent CLI, incrementally from the latest backup of the same PVC.
pub(super) async fn copy_volume_data<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let namespace = ctx.namespace()?;
    let pvc = non_empty(ctx, "volume", "the name of a PersistentVolumeClaim")?;
    let mount = ctx.opt_str("mountPath")?.filter(|s| !s.is_empty()).unwrap_or_else(|| format!("/mnt/vol_data/{pvc}"));
    let image = ctx.opt_str("image")?.filter(|s| !s.is_empty()).unwrap_or_else(|| ctx.tools_image.clone());
    let volume = format!("{VOLUME_TAG}={namespace}/{pvc}");
    let command: Vec<String> = [
        "kanister-agent",
        "backup",
        &mount,
        "--create",
        "--tag",
        &volume,
        "--tag",
        &format!("{BACKUP_TAG}={}", ctx.op_id),
        "--match-tag",
        &volume,
        "--phase-output",
    ]
    .map(String::from)
    .into();
    let mut pod = task::agent_pod(ctx, "copy-vol-data-", image, command).await?;
    pod.volumes = BTreeMap::from([(pvc.clone(), mount.clone())]);
    let mut out = super::context::run_pod(ctx, pod, task::AGENT_CONTAINER, true).await?;
    for key in ["backupID", "fileCount", "size", "phySize"] {
        if !out.contains_key(key) {
            return Err(Error::Data {
                function: ctx.function(),
                message: format!(
                    "the agent in the task pod reported no {key}: is {} the tools image?",
                    ctx.tools_image
                ),
            });
        }
    }
    let location = ctx
        .params
        .profile
        .as_ref()
        .map(|p| format!("{}/{}", p.location.bucket, p.location.prefix.trim_matches('/')))
        .unwrap_or_default();
    out.insert("backupRoot".into(), Value::String(mount));
    out.insert("backupArtifactLocation".into(), Value::String(location));
    out.insert("backupTag".into(), Value::String(ctx.op_id.clone()));
    Ok(out)
}
