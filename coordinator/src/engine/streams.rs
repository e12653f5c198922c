//! `BackupStream` and `RestoreStream`: a dump or restore command run by the pod's agent sidecar,
//! streamed through the repository.

use kanister_proto::agent::v1 as pb;
use serde_json::Value;

use super::context::{Context, Error, Result};
use super::data::{agent_target, ensure_repository, report};
use super::repository::tags::{BACKUP as BACKUP_TAG, CONTAINER as CONTAINER_TAG, POD as POD_TAG};
use crate::cluster::Cluster;
use crate::crd::JsonMap;

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
