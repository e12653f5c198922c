//! The repository behind a Profile, read by the coordinator itself.
//!
//! Data moves only through agents, but some work touches nothing but repository metadata:
//! listing a Profile's backups (`kanctl snapshots`), `LocationDelete`, `BackupDataStats` and
//! `CheckRepository`. Upstream runs those in the controller or in a short task pod; here the
//! coordinator opens the repository in its own process with the Profile's store and the key from
//! the Profile's key Secret ([`super::repokey`]), through the same mapping the agents use
//! ([`super::agent::repository_ref`], [`kanister_agent::repository::store_of_ref`]). Reads
//! never create a repository or a key; [`ensure`] creates the repository before backups.

use kanister_agent::repository::{Closed, RefError, RepoKey, Repository};
use kanister_proto::agent::v1 as pb;
use zeroize::Zeroizing;

use crate::cluster::Cluster;
use crate::crd::ObjectReference;
use crate::render::params::ProfileParams;

/// The snapshot tags the coordinator's data functions write: what produced a snapshot.
pub mod tags {
    /// The operation id of the phase that made the snapshot, `namespace/name/uid/action/phase`
    /// of its ActionSet (`BackupStream`, `BackupData`, `CopyVolumeData`; `BackupDataAll` appends
    /// `/pod`). `BackupData` reports it as its `backupTag` output, and `RestoreData` and
    /// `DeleteData` find snapshots by it.
    pub const BACKUP: &str = "kanister.io/backup-tag";
    /// The pod (`namespace/name`) whose agent made the snapshot.
    pub const POD: &str = "kanister.io/pod";
    /// The container whose view of the volume (or whose command's output) was backed up.
    pub const CONTAINER: &str = "kanister.io/container";
    /// The PVC (`namespace/name`) `CopyVolumeData` backed up.
    pub const VOLUME: &str = "kanister.io/volume";
    /// The path `kando location push` stored the stream at.
    pub const KANDO_PATH: &str = kanister_agent::kando::PATH_TAG;
}

/// Why a Profile's repository could not be opened. Messages carry no secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key Secret could not be read.
    #[error(transparent)]
    Key(#[from] Box<super::repokey::Error>),
    /// The Profile names no store an agent can use.
    #[error(transparent)]
    Profile(#[from] super::agent::Error),
    /// The store could not be built.
    #[error("profile {profile}: {source}")]
    Store {
        /// The Profile (`namespace/name`).
        profile: String,
        /// The cause.
        #[source]
        source: RefError,
    },
    /// The repository could not be read.
    #[error("profile {profile}: {source}")]
    Repository {
        /// The Profile (`namespace/name`).
        profile: String,
        /// The cause.
        #[source]
        source: kanister_agent::Error,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What is at a Profile's location.
#[derive(Debug)]
pub enum Opened {
    /// The repository, open.
    Open(Box<Repository>),
    /// The Profile has no key Secret: nothing was ever backed up through it.
    NoKey,
    /// The location holds no repository.
    NoRepository,
    /// A repository is there, but the Profile's key does not open it (the key Secret was
    /// replaced, or the location belongs to another Profile).
    WrongKey,
}

/// Makes sure the location `r` (of Profile `profile`, `namespace/name`) holds a repository
/// before a backup writes to it, creating it with default parameters when needed.
///
/// Agents create a missing repository on their first backup, and racing creations settle on
/// one through a conditional write of its config ([`Repository::init`]); still, several first
/// backups at once (`BackupDataAll` over several pods) would each derive a key slot and all but
/// one throw it away, and a store without conditional writes would not arbitrate. Here
/// creations are serialised in the coordinator, and a location once found to hold a repository
/// is not asked again by this process.
pub async fn ensure(profile: &str, r: &pb::RepositoryRef) -> Result<()> {
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
    let (repo, key) = closed(r.clone()).map_err(|source| Error::Store { profile: profile.into(), source })?;
    let key = key.expect("repository_ref carries the key it was given");
    repo.open_or_init(&key).await.map_err(|source| Error::Repository { profile: profile.into(), source })?;
    KNOWN.lock().unwrap_or_else(|e| e.into_inner()).insert(r.store_url.clone());
    Ok(())
}

/// The repository `r` names, not yet opened, and its key (`None` when `r` carries none).
fn closed(r: pb::RepositoryRef) -> Result<(Repository<Closed>, Option<RepoKey>), RefError> {
    let store = kanister_agent::repository::store_of_ref(&r.store_url, r.store_options)?;
    let key = match r.key {
        Some(pb::repository_ref::Key::RawKey(k)) => Some(RepoKey::KeyFile(Zeroizing::new(k))),
        Some(pb::repository_ref::Key::Passphrase(p)) => Some(RepoKey::Passphrase(Zeroizing::new(p))),
        None => None,
    };
    Ok((Repository::at(store), key))
}

/// Opens the repository of `profile` (as rendered for a phase, credentials included).
pub async fn open<C: Cluster>(cluster: &C, profile_ref: &ObjectReference, profile: &ProfileParams) -> Result<Opened> {
    let Some(key) = super::repokey::existing(cluster, profile_ref).await.map_err(Box::new)? else {
        return Ok(Opened::NoKey);
    };
    let name = format!("{}/{}", profile_ref.namespace, profile_ref.name);
    let r = super::agent::repository_ref(profile, key)?;
    let (repo, key) = closed(r).map_err(|source| Error::Store { profile: name.clone(), source })?;
    let Some(key) = key else { return Ok(Opened::NoKey) };
    match repo.open(&key).await {
        Ok(repo) => Ok(Opened::Open(Box::new(repo))),
        Err(kanister_agent::Error::NotARepository(_)) => Ok(Opened::NoRepository),
        Err(kanister_agent::Error::Format(kanister_repo::Error::WrongKey { .. })) => Ok(Opened::WrongKey),
        Err(source) => Err(Error::Repository { profile: name, source }),
    }
}
