//! The repository format of the Kanister data mover, with no IO and no async runtime.
//!
//! A repository is a set of immutable objects in an object store. This crate knows how to make
//! and read every one of them; the agent crate moves them.
//!
//! - [`id`]: 32-byte ids ([`BlobId`], [`PackId`], [`SnapshotId`], ...), printed as hex.
//! - [`keys`]: the master key, the keys derived from it, and key slots that wrap it with a
//!   passphrase (Argon2id) or a raw key file.
//! - [`crypto`]: XChaCha20-Poly1305 sealing of blobs and metadata objects.
//! - [`chunker`]: FastCDC (v2020) content-defined chunking with a per-repository seed.
//! - [`blob`]: a chunk becomes a blob: keyed BLAKE3 id, zstd (kept raw when it does not
//!   shrink), sealed with its id as associated data; and back, verified.
//! - [`pack`]: blobs grouped into pack objects with a sealed trailer listing them.
//! - [`index`]: index objects mapping blob ids to pack locations.
//! - [`index_run`]: sorted, MAC'd runs of index entries: the local on-disk cache of the index.
//! - [`snapshot`]: snapshot objects naming a root (the chunk lists of a stream), tags and stats.
//! - [`tree`]: directory listings of volume backups (names, modes, owners, times, links).
//! - [`config`]: the repository parameters fixed at init.
//! - [`marker`]: what writers leave to coordinate (backup locks, the maintenance lock's
//!   holder, prune marks), versioned.
//!
//! Object names are content addresses: the unkeyed BLAKE3 hash of the stored bytes, so any
//! flipped bit is detected before decryption is even tried.

pub mod blob;
pub mod chunker;
pub mod config;
pub mod crypto;
pub mod error;
pub mod id;
pub mod index;
pub mod index_run;
pub mod keys;
pub mod marker;
pub mod pack;
pub mod snapshot;
pub mod tree;
mod wire;

pub use blob::{BlobKind, EncodedBlob};
pub use config::RepoConfig;
pub use error::{Error, Result};
pub use id::{BlobId, IdMap, IdSet, IndexId, PackId, SnapshotId};
pub use keys::{KeySlot, Keys, MasterKey};
