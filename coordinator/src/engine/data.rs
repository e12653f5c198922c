//! The data functions, served by agents: the pod's agent sidecar over gRPC ([`super::agent`]), or
//! the agent in a task pod. This module holds what they share (reaching the agent, the
//! repository reference, progress); the functions are in [`super::streams`], [`super::paths`],
//! [`super::volumes`] and [`super::repo_tasks`].
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
use std::collections::BTreeMap;

use kanister_proto::agent::v1 as pb;

use super::context::{Context, Error, Result, TransferProgress};
use crate::cluster::Cluster;

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
pub(super) async fn agent_of<C: Cluster>(
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
pub(super) async fn repository_ref<C: Cluster>(ctx: &Context<C>) -> Result<pb::RepositoryRef> {
    let (Some(profile_ref), Some(profile)) = (&ctx.profile, &ctx.params.profile) else {
        return Err(Error::NoProfile(ctx.function()));
    };
    let key = super::repokey::value(&*ctx.cluster, profile_ref).await.map_err(Box::new)?;
    super::agent::repository_ref(profile, key)
        .map_err(|source| Error::Repository { function: ctx.function(), source: Box::new(source.into()) })
}

/// Creates the repository `r` of the action's Profile through the agent `client` unless it
/// exists, before a backup ([`super::repository::ensure`]).
pub(super) async fn ensure_repository<C: Cluster>(
    ctx: &Context<C>,
    client: &mut super::agent::Client,
    r: &pb::RepositoryRef,
) -> Result<()> {
    let profile = ctx.profile.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)).unwrap_or_default();
    super::repository::ensure(&profile, client, r)
        .await
        .map_err(|source| Error::Repository { function: ctx.function(), source: Box::new(source) })
}

pub(super) fn no_repository() -> &'static str {
    "the Profile's location holds no repository yet (nothing was backed up through it)"
}

pub(super) fn wrong_key() -> &'static str {
    "the Profile's key Secret (kanister-repo-key-<profile> in the Profile's namespace) does not open the \
     repository at its location: restore the Secret that was used for the backups"
}

/// A task's answer of another kind than asked for.
pub(super) fn unexpected<C: Cluster>(ctx: &Context<C>) -> Error {
    Error::Data {
        function: ctx.function(),
        message: "the agent's task pod answered another task: is the tools image of this release?".into(),
    }
}

pub(super) fn report<C>(ctx: &Context<C>, p: &kanister_proto::agent::v1::Progress, backup: bool) {
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

pub(super) fn non_empty<C: Cluster>(ctx: &Context<C>, name: &str, expected: &str) -> Result<String> {
    let v = ctx.str(name)?;
    if v.is_empty() {
        return Err(ctx.invalid(name, expected));
    }
    Ok(v)
}

/// One pod's entry of `BackupAllInfo` (upstream's Go field names).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct BackupInfo {
    #[serde(default)]
    pub(super) pod_name: String,
    #[serde(rename = "BackupID")]
    pub(super) backup_id: String,
    #[serde(default)]
    pub(super) backup_tag: String,
}

pub(super) fn backup_info<C: Cluster>(ctx: &Context<C>) -> Result<BTreeMap<String, BackupInfo>> {
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
