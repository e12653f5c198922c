//! Errors of the repository format.

use crate::id::BlobId;

/// What went wrong while encoding or decoding a repository object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Authenticated decryption failed: wrong key, or the bytes were changed.
    #[error("cannot decrypt {what}: wrong key or damaged data")]
    Decrypt {
        /// The object or blob that failed.
        what: String,
    },
    /// A blob decrypted, but its content does not hash to its id.
    #[error("blob {0} is damaged: its content does not match its id")]
    BlobMismatch(BlobId),
    /// zstd could not decompress a blob.
    #[error("cannot decompress blob {id}: {source}")]
    Decompress {
        /// The blob.
        id: BlobId,
        /// The zstd error.
        #[source]
        source: std::io::Error,
    },
    /// zstd could not compress a chunk (out of memory, in practice).
    #[error("cannot compress a chunk: {0}")]
    Compress(#[source] std::io::Error),
    /// An object is shorter or otherwise not shaped like the format says.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// The kind of object.
        what: &'static str,
        /// What exactly is wrong.
        detail: String,
    },
    /// An object was written by a newer version of the format.
    #[error("{what} has format version {found}, this agent reads up to {supported}: upgrade the agent")]
    Version {
        /// The kind of object.
        what: &'static str,
        /// The version in the object.
        found: u32,
        /// The newest version this code reads.
        supported: u32,
    },
    /// No key slot could be opened with the given passphrase or key file.
    #[error("wrong passphrase or key file: none of the repository's {slots} key slot(s) opens with it")]
    WrongKey {
        /// How many slots were tried.
        slots: usize,
    },
    /// Argon2 rejected its parameters.
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// A JSON object failed to (de)serialize.
    #[error("malformed {what}: {source}")]
    Json {
        /// The kind of object.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A parameter is outside what the format allows.
    #[error("invalid parameter: {0}")]
    Invalid(String),
    /// Reading the source stream failed.
    #[error("reading the input failed: {0}")]
    Read(#[source] std::io::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Malformed { what, detail: detail.into() }
    }
}
