//! The secret that opens a repository, and where it comes from.

use zeroize::Zeroizing;

use kanister_repo::keys::Credential;

use crate::error::{Error, Result};

/// The secret that opens a repository. Zeroized on drop.
#[derive(Clone)]
pub enum RepoKey {
    /// A passphrase (from `KANISTER_REPO_PASSWORD` or a file).
    Passphrase(Zeroizing<Vec<u8>>),
    /// The contents of a raw key file.
    KeyFile(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RepoKey::Passphrase(_) => "RepoKey::Passphrase(..)",
            RepoKey::KeyFile(_) => "RepoKey::KeyFile(..)",
        })
    }
}

impl RepoKey {
    /// The key from a raw key file, else a passphrase file (its trailing newline dropped), else
    /// the raw key in `KANISTER_REPO_KEY` (how the coordinator hands a Profile's key to task
    /// pods, from a Secret), else the passphrase in `KANISTER_REPO_PASSWORD`. Never a default.
    pub fn from_files_or_env(
        key_file: Option<&std::path::Path>,
        password_file: Option<&std::path::Path>,
    ) -> Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map(Zeroizing::new).map_err(|e| Error::io(format!("cannot read {}", p.display()), e))
        };
        if let Some(p) = key_file {
            return Ok(RepoKey::KeyFile(read(p)?));
        }
        if let Some(p) = password_file {
            let mut b = read(p)?;
            while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                b.pop();
            }
            return Ok(RepoKey::Passphrase(b));
        }
        if let Ok(k) = std::env::var("KANISTER_REPO_KEY")
            && !k.is_empty()
        {
            return Ok(RepoKey::KeyFile(Zeroizing::new(k.into_bytes())));
        }
        match std::env::var("KANISTER_REPO_PASSWORD") {
            Ok(p) if !p.is_empty() => Ok(RepoKey::Passphrase(Zeroizing::new(p.into_bytes()))),
            _ => Err(Error::NoCredential),
        }
    }

    pub(super) fn credential(&self) -> Credential<'_> {
        match self {
            RepoKey::Passphrase(p) => Credential::Passphrase(p),
            RepoKey::KeyFile(k) => Credential::KeyFile(k),
        }
    }
}
