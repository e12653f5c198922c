//! `DeleteData`, `DeleteDataAll`, `LocationDelete`, `BackupDataStats` and `CheckRepository`:
//! repository work in a task pod of the agent, nothing to move.

use kanister_proto::agent::v1 as pb;
use serde_json::Value;

use super::context::{Context, Error, Result};
use super::data::{backup_info, no_repository, non_empty, unexpected, wrong_key};
use super::task::{self, Answer};
use crate::cluster::Cluster;
use crate::crd::JsonMap;
use pb::task_request::Task;
use pb::task_result::Result as TaskOut;

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
