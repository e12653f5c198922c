//! The repository behind a Profile, as far as the coordinator deals with it: never opened here.
//!
//! Data moves through agents, and so does every other repository operation: the pod's agent
//! sidecar over gRPC, or `kanister-agent task` in a task pod ([`super::task`]) where no pod is
//! named. The coordinator holds the store's credentials and the repository key only to hand
//! them to the agent. This module has the tags the data functions write and [`ensure`], which
//! asks an agent to create the repository before first backups.

use kanister_proto::agent::v1 as pb;

/// The snapshot tags the coordinator's data functions write: what produced a snapshot.
pub mod tags {
    /// The operation id of the phase that made the snapshot, `namespace/name/uid/action/phase`
    /// of its ActionSet (`BackupStream`, `BackupData`, `CopyVolumeData`; `BackupDataAll` appends
    /// `/pod`). `BackupData` reports it as its `backupTag` output, and `RestoreData` and
    /// `DeleteData` find snapshots by it.
    pub const BACKUP: &str = kanister_profile::BACKUP_TAG;
    /// The pod (`namespace/name`) whose agent made the snapshot.
    pub const POD: &str = "kanister.io/pod";
    /// The container whose view of the volume (or whose command's output) was backed up.
    pub const CONTAINER: &str = "kanister.io/container";
    /// The PVC (`namespace/name`) `CopyVolumeData` backed up.
    pub const VOLUME: &str = "kanister.io/volume";
    /// The path `kando location push` stored the stream at.
    pub const KANDO_PATH: &str = kanister_profile::KANDO_PATH_TAG;
}

/// Why a Profile's repository could not be reached. Messages carry no secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Profile names no store an agent can use.
    #[error(transparent)]
    Profile(#[from] super::agent::Error),
    /// The agent could not create the repository.
    #[error("profile {profile}: cannot create its repository: {source}")]
    Init {
        /// The Profile (`namespace/name`).
        profile: String,
        /// The cause.
        #[source]
        source: super::agent::Error,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Makes sure the location `r` (of Profile `profile`, `namespace/name`) holds a repository
/// before a backup writes to it: the agent `client` creates it with default parameters when
/// needed.
///
/// Agents create a missing repository on their first backup, and racing creations settle on
/// one through a conditional write of its config; still, several first backups at once
/// (`BackupDataAll` over several pods) would each derive a key slot and all but one throw it
/// away, and a store without conditional writes would not arbitrate. Here creations are
/// serialised in the coordinator, and a location once found to hold a repository is not asked
/// again by this process.
pub async fn ensure(profile: &str, client: &mut super::agent::Client, r: &pb::RepositoryRef) -> Result<()> {
    use std::collections::HashSet;
    use std::sync::{LazyLock, Mutex};
    static KNOWN: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);
    static CREATING: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(Default::default);
    let known = |url: &str| KNOWN.lock().unwrap_or_else(|e| e.into_inner()).contains(url);

    if known(&r.store_url) {
        return Ok(());
    }
    let _one_at_a_time = CREATING.lock().await;
    if known(&r.store_url) {
        return Ok(());
    }
    let request = pb::InitRepositoryRequest { repository: Some(r.clone()) };
    match client.init_repository(request).await {
        Ok(r) if r.get_ref().created => tracing::info!(profile, "repository created"),
        Ok(_) => {}
        // An agent older than this coordinator: it creates the repository with the backup.
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            tracing::debug!(profile, "the agent cannot create repositories ahead of a backup")
        }
        Err(status) => {
            let source = super::agent::refused("init-repository", &status);
            return Err(Error::Init { profile: profile.into(), source });
        }
    }
    KNOWN.lock().unwrap_or_else(|e| e.into_inner()).insert(r.store_url.clone());
    Ok(())
}
