//! Errors of the agent, with the hint a user needs to fix each.

use crate::store::StoreError;

/// What can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An object is damaged, or the key is wrong.
    #[error(transparent)]
    Format(#[from] kanister_repo::Error),
    /// There is no repository at the URL.
    #[error("no repository at {0}")]
    NotARepository(String),
    /// `repo init` found a repository already there.
    #[error("a repository already exists at {0}")]
    AlreadyInitialized(String),
    /// Neither a passphrase nor a key file was given.
    #[error("no repository key given")]
    NoCredential,
    /// No snapshot matches the given id or prefix.
    #[error("no snapshot matches {0:?}")]
    SnapshotNotFound(String),
    /// More than one snapshot matches the given prefix.
    #[error("{prefix:?} matches {count} snapshots")]
    AmbiguousSnapshot {
        /// The prefix.
        prefix: String,
        /// How many match.
        count: usize,
    },
    /// A blob the snapshot needs is in no index.
    #[error("blob {blob} of snapshot {snapshot} is in no index: the repository is damaged")]
    MissingBlob {
        /// The blob.
        blob: kanister_repo::BlobId,
        /// The snapshot being read.
        snapshot: String,
    },
    /// The command producing the stream failed.
    #[error("the input command {command:?} {status}; no snapshot was written")]
    InputCommand {
        /// The command.
        command: String,
        /// How it ended.
        status: String,
    },
    /// The input is a database dump that was cut off (see [`crate::dumpcheck`]).
    #[error("{0}")]
    IncompleteDump(String),
    /// Reading the input or writing the output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A worker task died.
    #[error("internal task failed: {0}")]
    Task(String),
    /// The snapshot is not of the kind the command works on.
    #[error("{0}")]
    WrongKind(String),
    /// The repository is damaged (see the check report).
    #[error("{0}")]
    Damaged(String),
    /// A file of the local index cache failed to verify; it was removed.
    #[error("the local index cache is damaged ({0}); the damaged file was removed")]
    IndexCache(String),
    /// Another maintenance (prune, index repair) holds the repository's exclusive lock.
    #[error("another maintenance is running on this repository ({0})")]
    Busy(String),
    /// This maintenance could not renew its exclusive lock in time, so another may have taken
    /// over: it stopped before changing anything more.
    #[error("the maintenance lock was lost ({0}); stopped before changing anything more")]
    LockLost(String),
}

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::NotARepository(_) => {
                Some("check the store URL, or create a repository with `kanister-agent repo init`")
            }
            Error::AlreadyInitialized(_) => Some("use the existing repository, or choose another prefix"),
            Error::NoCredential => Some(
                "set KANISTER_REPO_PASSWORD (a passphrase) or KANISTER_REPO_KEY (a raw key), or pass \
                 --password-file FILE or --key-file FILE (env KANISTER_REPO_PASSWORD_FILE / KANISTER_REPO_KEY_FILE)",
            ),
            Error::Format(kanister_repo::Error::WrongKey { .. }) => {
                Some("use the passphrase or key file the repository was created with")
            }
            // A bad argument or setting: the message says which; nothing is damaged.
            Error::Format(kanister_repo::Error::Invalid(_)) => None,
            Error::Format(_) | Error::MissingBlob { .. } | Error::Damaged(_) => {
                Some("run `kanister-agent check --read-data` to find every damaged object")
            }
            Error::IndexCache(_) => Some(
                "run the command again: the cache is rebuilt from the repository's index objects, which this \
                 does not touch",
            ),
            Error::SnapshotNotFound(_) => Some("list snapshots with `kanister-agent snapshots`"),
            Error::Busy(_) => Some(
                "wait for it to finish (`--wait-lock` waits longer); a lock whose holder died is ignored once it \
                 has not been renewed for 10 minutes",
            ),
            Error::LockLost(_) => Some("run the maintenance again: everything it did so far is safe to repeat"),
            Error::AmbiguousSnapshot { .. } => Some("give more digits of the snapshot id"),
            Error::Store(StoreError::Truncated { .. }) => {
                Some("the repository is damaged: run `kanister-agent check --read-data` to see what it affects")
            }
            Error::Store(StoreError::NotFound(_)) => {
                Some("an object the repository needs is missing: run `kanister-agent check` to see what it affects")
            }
            // object_store names its local backend in every error of it.
            Error::Store(StoreError::Backend { source, .. }) if source.to_string().contains("LocalFileSystem") => {
                Some("check that the repository directory exists and is writable, and the disk has free space")
            }
            Error::Store(StoreError::Backend { .. }) => {
                Some("check the store's endpoint, bucket and credentials (--store-option, --store-credentials)")
            }
            Error::Store(StoreError::Settings(_)) => Some("see `kanister-agent --help` for store URLs and settings"),
            _ => None,
        }
    }
}

pub use kanister_profile::error_chain;

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("backup failed")]
        Wraps(#[source] Middle),
        #[error("backup failed: {0}")]
        Repeats(#[source] Middle),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("reading the index")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn chain_joins_causes_and_leaves_out_repeated_ones() {
        let io = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let e = Outer::Wraps(Middle(io()));
        assert_eq!(error_chain(&e), "backup failed: reading the index: permission denied");
        let e = Outer::Repeats(Middle(io()));
        assert_eq!(error_chain(&e), "backup failed: reading the index: permission denied");
    }
}

#[cfg(test)]
mod hint_tests {
    use super::{Error, StoreError};

    #[test]
    fn a_local_disk_failure_is_not_blamed_on_endpoints_or_credentials() {
        let backend = |store: &'static str| {
            Error::Store(StoreError::Backend {
                op: "put",
                key: "data/ab/cd".into(),
                source: object_store::Error::Generic { store, source: "Unable to rename file".into() },
            })
        };
        assert!(backend("LocalFileSystem").hint().unwrap().contains("directory exists and is writable"));
        assert!(backend("S3").hint().unwrap().contains("endpoint, bucket and credentials"));
    }
}
