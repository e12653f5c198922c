//! `BackupData`, `BackupDataAll`, `RestoreData` (into a pod through its sidecar, or into volumes
//! through a task pod) and `RestoreDataAll`: directory trees.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;

use kanister_proto::agent::v1 as pb;
use serde_json::Value;

use super::context::{Context, Error, Result};
use super::data::{
    BackupInfo, agent_of, backup_info, ensure_repository, no_repository, non_empty, report, unexpected, wrong_key,
};
use super::repository::tags::{BACKUP as BACKUP_TAG, CONTAINER as CONTAINER_TAG, POD as POD_TAG};
use super::task::{self, Answer};
use crate::cluster::Cluster;
use crate::crd::JsonMap;
use pb::task_request::Task;
use pb::task_result::Result as TaskOut;

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
