//! The repository behind a Profile, read by the coordinator itself.
//!
//! Data moves only through agents, but some work touches nothing but repository metadata:
//! listing a Profile's backups (`kanctl snapshots`), `LocationDelete`, `BackupDataStats` and
//! `CheckRepository`. Upstream runs those in the controller or in a short task pod; here the
//! coordinator opens the repository in its own process with the Profile's store and the key from
//! the Profile's key Secret ([`super::repokey`]), through the same mapping the agents use
//! ([`super::agent::repository_ref`], [`kanister_agent::repository::store_of_ref`]). Nothing
//! here ever creates a repository or a key.

use kanister_agent::repository::{RefError, RepoKey, Repository};
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

/// Opens the repository of `profile` (as rendered for a phase, credentials included).
pub async fn open<C: Cluster>(cluster: &C, profile_ref: &ObjectReference, profile: &ProfileParams) -> Result<Opened> {
    let Some(key) = super::repokey::existing(cluster, profile_ref).await.map_err(Box::new)? else {
        return Ok(Opened::NoKey);
    };
    let name = format!("{}/{}", profile_ref.namespace, profile_ref.name);
    let r = super::agent::repository_ref(profile, key)?;
    let store = kanister_agent::repository::store_of_ref(&r.store_url, r.store_options)
        .map_err(|source| Error::Store { profile: name.clone(), source })?;
    let key = match r.key {
        Some(pb::repository_ref::Key::RawKey(k)) => RepoKey::KeyFile(Zeroizing::new(k)),
        Some(pb::repository_ref::Key::Passphrase(p)) => RepoKey::Passphrase(Zeroizing::new(p)),
        None => return Ok(Opened::NoKey),
    };
    match Repository::at(store).open(&key).await {
        Ok(repo) => Ok(Opened::Open(Box::new(repo))),
        Err(kanister_agent::Error::NotARepository(_)) => Ok(Opened::NoRepository),
        Err(kanister_agent::Error::Format(kanister_repo::Error::WrongKey { .. })) => Ok(Opened::WrongKey),
        Err(source) => Err(Error::Repository { profile: name, source }),
    }
}
