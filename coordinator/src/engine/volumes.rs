//! `CopyVolumeData`: a task pod of the tools image mounts the PVC and backs it up.

use std::collections::BTreeMap;

use serde_json::Value;

use super::context::{Context, Error, Result};
use super::data::non_empty;
use super::repository::tags::{BACKUP as BACKUP_TAG, VOLUME as VOLUME_TAG};
use super::task;
use crate::cluster::Cluster;
use crate::crd::JsonMap;

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
