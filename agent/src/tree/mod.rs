//! Volume backups: directory trees in and out of the repository.
//!
//! - [`backup`]: walks a directory (never following symlinks), stores every file's content
//!   through the same chunk ▸ dedup ▸ compress ▸ encrypt ▸ pack pipeline as streams, and
//!   records names, types, modes, owners, times, symlink targets, hard links, FIFOs and
//!   devices. Unchanged files (same size, mtime, ctime and inode as in the parent snapshot)
//!   reuse the parent's chunk list without being opened.
//! - [`restore`]: writes a snapshot's tree into a target directory, verifying every blob,
//!   refusing names that could escape the target, restoring metadata as well as content.
//! - [`browse`]: `ls`, `cat` and `diff` without restoring.
//!
//! Memory: the walk holds the listing of the directories on the current path, the blobs of at
//! most a few small files in flight and the packer's buffers; never the whole file list.

pub mod backup;
pub mod browse;
pub mod restore;

use std::collections::BTreeMap;

use kanister_repo::SnapshotId;
use kanister_repo::tree::Node;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::repository::{Locate, Repository};

pub use backup::backup;
pub use restore::restore;

/// Settings of a tree backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Tags of the snapshot.
    pub tags: BTreeMap<String, String>,
    /// Host recorded in the snapshot.
    pub hostname: String,
    /// Parent snapshot; by default the latest with the same path and [`Self::parent_tags`].
    pub parent: Option<SnapshotId>,
    /// The tags a parent must carry (it may carry others); `None`: exactly [`Self::tags`].
    /// Lets each backup carry a tag of its own and still find its parent.
    pub parent_tags: Option<BTreeMap<String, String>>,
    /// Read every file even when the parent says it is unchanged.
    pub force: bool,
    /// CPU workers.
    pub workers: usize,
    /// Packs uploaded at once.
    pub uploads: usize,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            tags: BTreeMap::new(),
            hostname: crate::repository::hostname(),
            parent: None,
            parent_tags: None,
            force: false,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            uploads: 2,
        }
    }
}

/// What a tree backup did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupStats {
    /// The new snapshot.
    pub snapshot_id: SnapshotId,
    /// The snapshot it was made incrementally from.
    pub parent: Option<SnapshotId>,
    /// Files opened and read.
    pub files_read: u64,
    /// Unchanged files taken from the parent without being opened.
    pub files_reused: u64,
    /// Files that were not in the parent.
    pub files_new: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of file content in the snapshot.
    pub bytes_total: u64,
    /// Bytes read from files.
    pub bytes_read: u64,
    /// Bytes that were new to the repository.
    pub bytes_new: u64,
    /// Bytes written to the store.
    pub bytes_uploaded: u64,
    /// Whether something could not be backed up (see `errors`).
    pub partial: bool,
    /// Paths that could not be backed up, with the reason.
    pub errors: Vec<String>,
    /// Paths that kept changing while read.
    pub changed: Vec<String>,
    /// Things skipped on purpose (sockets), with the reason.
    pub warnings: Vec<String>,
    /// Wall time in seconds.
    pub duration_secs: f64,
}

/// Settings of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore only paths matching one of these globs (relative to the snapshot's top).
    pub include: Vec<String>,
    /// Skip paths matching one of these globs.
    pub exclude: Vec<String>,
    /// Delete files in the target that the snapshot does not have.
    pub delete: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreStats {
    /// The snapshot.
    pub snapshot_id: Option<SnapshotId>,
    /// Files written (hard links included).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, FIFOs, devices.
    pub others: u64,
    /// Bytes of file content written.
    pub bytes_written: u64,
    /// Target entries deleted (`--delete`).
    pub deleted: u64,
    /// Things that could not be restored as recorded (e.g. ownership without privileges).
    pub warnings: Vec<String>,
    /// Wall time in seconds.
    pub duration_secs: f64,
    /// Of which seconds spent waiting, at the end, for the restored files to be on disk.
    pub sync_secs: f64,
}

/// Reads every node of a directory listing (all its parts).
pub async fn read_listing(repo: &Repository, index: &dyn Locate, parts: &[kanister_repo::BlobId]) -> Result<Vec<Node>> {
    let mut out = Vec::new();
    for p in parts {
        let bytes = repo.read_blob(index, p).await?;
        out.extend(kanister_repo::tree::decode_part(&bytes)?);
    }
    Ok(out)
}

/// The top directory of a tree snapshot, or an error naming what the snapshot is instead.
pub fn tree_root(snap: &kanister_repo::snapshot::Snapshot, id: &SnapshotId) -> Result<(String, Node)> {
    match &snap.root {
        kanister_repo::snapshot::Root::Tree { path, dir } => Ok((path.clone(), dir.clone())),
        kanister_repo::snapshot::Root::Stream { .. } => Err(Error::WrongKind(format!(
            "snapshot {} is a stream: write it out with `kanister-agent pull`",
            id.short()
        ))),
    }
}

/// Displays name bytes.
pub fn display_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}
