//! The data functions, served by agents: the pod's agent sidecar over gRPC ([`super::agent`]).
//!
//! `BackupStream` / `RestoreStream` run a dump / restore command in the sidecar and stream it
//! through the repository. `BackupData` backs up `includePath` as the pod's agent sees it (agent
//! `BackupPaths`), `RestoreData` restores a tree snapshot (by `backupIdentifier`, or the latest
//! one carrying `backupTag`) into `restorePath` (`RestorePaths`), `DeleteData` forgets snapshots
//! (`Forget`) and with `reclaimSpace` prunes the repository (`Prune`). `backupArtifactPrefix`,
//! `image` and the other upstream arguments that choose a Kopia repository or a task pod are
//! accepted and unused: the repository is the Profile's, the work is done by the pod's agent.
//!
//! All of them find the sidecar with [`Cluster::agent_endpoint`], open the repository at the
//! action's Profile (store and credentials from the Profile, key from its key Secret, all inside
//! the gRPC request only), and report the operation's byte counts through
//! [`Context::progress`]. The operation id is derived from the ActionSet, action and phase, so
//! a repeated call attaches to the running operation instead of starting another.

use serde_json::Value;

use super::functions::TransferProgress;
use super::functions::{Context, Error, Result};
use crate::cluster::Cluster;
use crate::crd::JsonMap;

/// The agent endpoint of the function's pod and the repository of the action's Profile.
pub(super) async fn agent_target<C: Cluster>(
    ctx: &Context<C>,
) -> Result<(String, super::agent::Client, kanister_proto::agent::v1::RepositoryRef)> {
    let namespace = ctx.str("namespace")?;
    let pod = ctx.str("pod")?;
    let what = format!("{namespace}/{pod}");
    let agent_err = |source| Error::Agent { function: ctx.function(), pod: what.clone(), source };
    let (Some(profile_ref), Some(profile)) = (&ctx.profile, &ctx.params.profile) else {
        return Err(Error::NoProfile(ctx.function()));
    };
    let key = super::repokey::value(&*ctx.cluster, profile_ref).await.map_err(Box::new)?;
    let repository = super::agent::repository_ref(profile, key).map_err(agent_err)?;
    let endpoint = ctx.cluster.agent_endpoint(&namespace, &pod).await?;
    let client = super::agent::connect(&endpoint, &ctx.agent).await.map_err(agent_err)?;
    Ok((what, client, repository))
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

fn command_spec<C: Cluster>(ctx: &Context<C>) -> Result<kanister_proto::agent::v1::CommandSpec> {
    let argv = ctx.command("command")?;
    if argv.is_empty() {
        return Err(ctx.invalid("command", "a non-empty list of strings"));
    }
    Ok(kanister_proto::agent::v1::CommandSpec { argv, env: Default::default() })
}

pub(super) async fn backup_stream<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    use kanister_proto::agent::v1 as pb;
    let command = command_spec(ctx)?;
    let mut tags: std::collections::HashMap<String, String> = ctx.opt_string_map("tags")?.into_iter().collect();
    let (pod, mut client, repository) = agent_target(ctx).await?;
    let agent_err = |source| Error::Agent { function: ctx.function(), pod: pod.clone(), source };
    tags.entry("kanister.io/pod".into()).or_insert_with(|| pod.clone());
    if let Some(container) = ctx.opt_str("container")? {
        tags.entry("kanister.io/container".into()).or_insert(container);
    }
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
    use kanister_proto::agent::v1 as pb;
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

/// The snapshot tag `BackupData` records its `backupTag` in.
const BACKUP_TAG: &str = "kanister.io/backup-tag";

pub(super) async fn backup_data<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    use kanister_proto::agent::v1 as pb;
    let path = ctx.str("includePath")?;
    if path.is_empty() {
        return Err(ctx.invalid("includePath", "a directory path"));
    }
    let container = ctx.opt_str("container")?;
    let (pod, mut client, repository) = agent_target(ctx).await?;
    let agent_err = |source| Error::Agent { function: ctx.function(), pod: pod.clone(), source };
    // Stable for the phase, so that a retry that attaches to the operation reports the same tag.
    let backup_tag = ctx.op_id.clone();
    let mut tags = std::collections::HashMap::from([
        ("kanister.io/pod".to_string(), pod.clone()),
        (BACKUP_TAG.to_string(), backup_tag.clone()),
    ]);
    if let Some(container) = container {
        tags.insert("kanister.io/container".into(), container);
    }
    let request = pb::BackupPathsRequest {
        op_id: ctx.op_id.clone(),
        repository: Some(repository),
        path,
        tags,
        hostname: String::new(),
        parent_snapshot_id: String::new(),
        force: false,
    };
    let stream =
        client.backup_paths(request).await.map_err(|s| agent_err(super::agent::refused(&ctx.op_id, &s)))?.into_inner();
    let result = super::agent::follow(&ctx.op_id, stream, |p| report(ctx, p, true)).await.map_err(agent_err)?;
    let Some(pb::operation_result::Result::Backup(stats)) = result.result else {
        return Err(agent_err(super::agent::Error::NoResult(ctx.op_id.clone())));
    };
    Ok(JsonMap::from([
        ("backupID".to_string(), Value::String(stats.snapshot_id)),
        ("backupTag".to_string(), Value::String(backup_tag)),
        ("fileCount".to_string(), Value::from(stats.files)),
        ("size".to_string(), Value::from(stats.bytes_read)),
        ("phySize".to_string(), Value::from(stats.bytes_uploaded)),
    ]))
}

pub(super) async fn restore_data<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    use kanister_proto::agent::v1 as pb;
    let target = ctx.str("restorePath")?;
    if target.is_empty() {
        return Err(ctx.invalid("restorePath", "a directory path"));
    }
    let id = ctx.opt_str("backupIdentifier")?.filter(|s| !s.is_empty());
    let tag = ctx.opt_str("backupTag")?.filter(|s| !s.is_empty());
    if id.is_none() && tag.is_none() {
        return Err(ctx.missing("backupIdentifier"));
    }
    let (pod, mut client, repository) = agent_target(ctx).await?;
    let agent_err = |source| Error::Agent { function: ctx.function(), pod: pod.clone(), source };
    let snapshot_id = match (id, tag) {
        (Some(id), _) => id,
        (None, Some(tag)) => {
            let request = pb::ListSnapshotsRequest {
                repository: Some(repository.clone()),
                tags: std::collections::HashMap::from([(BACKUP_TAG.to_string(), tag.clone())]),
            };
            let list = client
                .list_snapshots(request)
                .await
                .map_err(|s| agent_err(super::agent::refused(&ctx.op_id, &s)))?
                .into_inner();
            // Oldest first: the latest backup with the tag.
            list.snapshots
                .into_iter()
                .next_back()
                .map(|s| s.id)
                .ok_or_else(|| Error::NoBackup { function: ctx.function(), tag })?
        }
        (None, None) => unreachable!("checked above"),
    };
    let request = pb::RestorePathsRequest {
        op_id: ctx.op_id.clone(),
        repository: Some(repository),
        snapshot_id,
        target,
        delete_extra: false,
        include: Vec::new(),
        exclude: Vec::new(),
    };
    let stream =
        client.restore_paths(request).await.map_err(|s| agent_err(super::agent::refused(&ctx.op_id, &s)))?.into_inner();
    super::agent::follow(&ctx.op_id, stream, |p| report(ctx, p, false)).await.map_err(agent_err)?;
    Ok(JsonMap::new())
}

pub(super) async fn delete_data<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    use kanister_proto::agent::v1 as pb;
    let ids: Vec<String> = match ctx.args.get("backupID") {
        None | Some(Value::Null) => return Err(ctx.missing("backupID")),
        Some(Value::Array(_)) => ctx.command("backupID")?,
        Some(_) => ctx.str("backupID")?.split(',').map(|s| s.trim().to_string()).collect(),
    };
    let ids: Vec<String> = ids.into_iter().filter(|s| !s.is_empty()).collect();
    if ids.is_empty() {
        return Err(ctx.invalid("backupID", "a snapshot id or a list of them"));
    }
    let reclaim = ctx.opt_bool("reclaimSpace", false)?;
    let (pod, mut client, repository) = agent_target(ctx).await?;
    let agent_err = |source| Error::Agent { function: ctx.function(), pod: pod.clone(), source };
    let forget_id = format!("{}/forget", ctx.op_id);
    let request =
        pb::ForgetRequest { op_id: forget_id.clone(), repository: Some(repository.clone()), snapshot_ids: ids };
    let forgotten =
        client.forget(request).await.map_err(|s| agent_err(super::agent::refused(&forget_id, &s)))?.into_inner();
    if reclaim {
        let prune_id = format!("{}/prune", ctx.op_id);
        let request = pb::PruneRequest {
            op_id: prune_id.clone(),
            repository: Some(repository),
            grace_period_secs: 0,
            dry_run: false,
        };
        let stream =
            client.prune(request).await.map_err(|s| agent_err(super::agent::refused(&prune_id, &s)))?.into_inner();
        super::agent::follow(&prune_id, stream, |_| {}).await.map_err(agent_err)?;
    }
    let list = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    Ok(JsonMap::from([
        ("removed".to_string(), list(forgotten.removed)),
        ("alreadyAbsent".to_string(), list(forgotten.already_absent)),
    ]))
}
