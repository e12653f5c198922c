//! Backing up a directory tree.
//!
//! The walk is depth first in name order. Non-directory entries of a directory are processed
//! in runs: small files are read, chunked, hashed, compressed and sealed on the blocking pool,
//! several at once, and their results taken in order; a large file is streamed through the
//! chunk pipeline on its own. Each finished directory listing is cut into parts of about
//! 1 MiB and stored as tree blobs; the parent directory records their ids.
//!
//! A file whose size or mtime changes while it is read is read again (twice at most) and then
//! recorded as it was read last, flagged `changed_during_backup`. A file or directory that
//! cannot be read is listed in the result's `errors` and the snapshot is marked partial.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kanister_repo::blob::{BlobKind, EncodedBlob};
use kanister_repo::chunker::{Chunker, ChunkerParams};
use kanister_repo::snapshot::{Root, Snapshot, SnapshotStats};
use kanister_repo::tree::{Node, NodeKind, PART_TARGET, approx_size, encode_part};
use kanister_repo::{BlobId, Keys, SnapshotId};

use super::{BackupOptions, BackupStats, read_listing};
use crate::error::{Error, Result};
use crate::packer::{Dedup, Packer, process_chunk};
use crate::progress::Progress;
use crate::repository::{BackupMarker, Repository};

/// Files up to this size are read whole by one worker; larger ones are streamed.
const SMALL_FILE: u64 = 4 << 20;
/// Entries processed per run (bounds memory for huge directories).
const RUN: usize = 256;
/// Attempts at reading a file that keeps changing.
const ATTEMPTS: usize = 3;
/// At most this many paths are kept in `errors` / `changed`.
const MAX_LISTED: usize = 1000;

/// Backs up the directory `path` as a new snapshot.
pub async fn backup(
    repo: &Repository,
    path: &Path,
    opts: &BackupOptions,
    progress: Arc<Progress>,
) -> Result<BackupStats> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::io(
            format!("{} is not a directory", path.display()),
            std::io::Error::from(std::io::ErrorKind::NotADirectory),
        ));
    }
    let marker = BackupMarker::start(repo, &opts.hostname).await?;
    let r = run(repo, path, meta, opts, progress).await;
    marker.finish(repo).await;
    r
}

/// The path as recorded and matched against parents: no trailing slash.
fn path_key(path: &Path) -> String {
    let s = path.to_string_lossy();
    let t = s.trim_end_matches('/');
    if t.is_empty() { "/".into() } else { t.to_string() }
}

async fn find_parent(repo: &Repository, opts: &BackupOptions, key: &str) -> Result<Option<(SnapshotId, Node)>> {
    if let Some(id) = opts.parent {
        let snap = repo.snapshot(&id).await?;
        let (_, dir) = super::tree_root(&snap, &id)?;
        return Ok(Some((id, dir)));
    }
    let mut best: Option<(String, SnapshotId, Node)> = None;
    for (id, s) in repo.snapshots().await? {
        let Ok(s) = s else { continue };
        if let Root::Tree { path, dir } = &s.root
            && path == key
            && match &opts.parent_tags {
                Some(wanted) => crate::repository::has_tags(&s, wanted),
                None => s.tags == opts.tags,
            }
            && best.as_ref().is_none_or(|(t, _, _)| s.time > *t)
        {
            best = Some((s.time.clone(), id, dir.clone()));
        }
    }
    Ok(best.map(|(_, id, dir)| (id, dir)))
}

struct Entry {
    name: Vec<u8>,
    meta: Metadata,
}

/// Lists a directory, sorted by name, with `lstat` of every entry.
fn list_dir(path: &Path, rel: &str) -> std::io::Result<(Vec<Entry>, Vec<String>)> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for e in std::fs::read_dir(path)? {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                errors.push(format!("{rel}: {err}"));
                continue;
            }
        };
        match e.metadata() {
            Ok(meta) => out.push(Entry { name: e.file_name().as_bytes().to_vec(), meta }),
            Err(err) => errors.push(format!("{}: {err}", join_rel(rel, e.file_name().as_bytes()))),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, errors))
}

fn join_rel(rel: &str, name: &[u8]) -> String {
    let n = String::from_utf8_lossy(name);
    if rel.is_empty() { n.into_owned() } else { format!("{rel}/{n}") }
}

fn time_ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// A node with the metadata of `meta`; content and listing left empty.
fn base_node(name: &[u8], meta: &Metadata) -> Option<Node> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        NodeKind::File
    } else if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::CharDevice
    } else if ft.is_block_device() {
        NodeKind::BlockDevice
    } else {
        return None; // sockets
    };
    Some(Node {
        name: name.to_vec(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: time_ns(meta.mtime(), meta.mtime_nsec()),
        ctime_ns: time_ns(meta.ctime(), meta.ctime_nsec()),
        inode: meta.ino(),
        size: if kind == NodeKind::File { meta.len() } else { 0 },
        link_id: None,
        target: None,
        rdev: matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice).then(|| meta.rdev()),
        content: vec![],
        subtree: vec![],
        changed_during_backup: false,
    })
}

/// The shared state of one backup.
struct Walker<'r> {
    repo: &'r Repository,
    keys: Keys,
    dedup: Dedup,
    level: i32,
    params: ChunkerParams,
    workers: usize,
    force: bool,
    progress: Arc<Progress>,
    packer: Packer<'r>,
    hardlinks: HashMap<(u64, u64), Vec<BlobId>>,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    files_read: u64,
    files_reused: u64,
    files_new: u64,
    dirs: u64,
    bytes_total: u64,
    bytes_new: u64,
    errors: Vec<String>,
    changed: Vec<String>,
    warnings: Vec<String>,
    error_count: u64,
}

impl Counters {
    fn error(&mut self, e: String) {
        tracing::warn!(problem = %e, "cannot back up a path");
        self.error_count += 1;
        if self.errors.len() < MAX_LISTED {
            self.errors.push(e);
        }
    }
}

/// A directory listing being cut into parts.
#[derive(Default)]
struct PartBuilder {
    nodes: Vec<Node>,
    size: usize,
    parts: Vec<BlobId>,
}

impl PartBuilder {
    async fn push(&mut self, node: Node, w: &mut Walker<'_>) -> Result<()> {
        let n = approx_size(&node);
        if self.size + n > PART_TARGET && !self.nodes.is_empty() {
            self.flush(w).await?;
        }
        self.size += n;
        self.nodes.push(node);
        Ok(())
    }

    async fn flush(&mut self, w: &mut Walker<'_>) -> Result<()> {
        let bytes = encode_part(&self.nodes);
        self.nodes.clear();
        self.size = 0;
        let (id, blob) = process_chunk(&w.keys, &w.dedup, BlobKind::Tree, w.level, &bytes)?;
        if let Some(b) = blob {
            w.packer.add(b, &w.progress).await?;
        }
        self.parts.push(id);
        Ok(())
    }

    async fn finish(mut self, w: &mut Walker<'_>) -> Result<Vec<BlobId>> {
        if !self.nodes.is_empty() {
            self.flush(w).await?;
        }
        Ok(self.parts)
    }
}

/// A directory on the walk's current path.
struct Frame {
    abs: PathBuf,
    rel: String,
    entries: Vec<Entry>,
    pos: usize,
    parent: HashMap<Vec<u8>, Node>,
    /// The parent snapshot's listing parts of this directory.
    parent_parts: Vec<BlobId>,
    /// Every node so far equals the parent's node of the same name.
    same: bool,
    /// Nodes so far.
    count: usize,
    builder: PartBuilder,
    node: Node,
}

impl Frame {
    fn new(
        abs: PathBuf,
        rel: String,
        entries: Vec<Entry>,
        parent: HashMap<Vec<u8>, Node>,
        parent_parts: Vec<BlobId>,
        node: Node,
    ) -> Self {
        let same = !parent_parts.is_empty() || parent.is_empty();
        Frame { abs, rel, entries, pos: 0, parent, parent_parts, same, count: 0, builder: PartBuilder::default(), node }
    }

    /// Adds a node to the listing, noting whether the listing still equals the parent's.
    async fn push(&mut self, node: Node, w: &mut Walker<'_>) -> Result<()> {
        self.same = self.same && self.parent.get(&node.name) == Some(&node);
        self.count += 1;
        self.builder.push(node, w).await
    }

    /// The listing's parts: the parent's own when nothing differs (no encoding, no hashing),
    /// else the parts just built.
    async fn finish(self, w: &mut Walker<'_>) -> Result<Vec<BlobId>> {
        if self.same && self.count == self.parent.len() && !self.parent_parts.is_empty() {
            return Ok(self.parent_parts);
        }
        self.builder.finish(w).await
    }
}

/// How one non-directory entry will be handled.
enum Job {
    /// Already complete (symlinks, FIFOs, devices, unchanged files).
    Ready(Node),
    /// Read whole on the blocking pool.
    Small(Node, PathBuf, String),
    /// Streamed by the walker itself.
    Large(Node, PathBuf, String),
    /// Another name of an inode met earlier in this backup.
    Link(Node, (u64, u64)),
    /// Left out, with the reason.
    Skip(String),
}

/// The outcome of reading one file.
struct FileRead {
    ids: Vec<BlobId>,
    blobs: Vec<EncodedBlob>,
    new_bytes: u64,
    size: u64,
    meta: Option<Metadata>,
    changed: bool,
}

fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(path)
}

fn unchanged(a: &Metadata, b: &Metadata) -> bool {
    a.len() == b.len() && a.mtime() == b.mtime() && a.mtime_nsec() == b.mtime_nsec() && a.ino() == b.ino()
}

/// Reads a small file whole: chunks, ids, new blobs. Runs on the blocking pool.
fn read_small(
    path: &Path,
    keys: &Keys,
    dedup: &Dedup,
    level: i32,
    params: ChunkerParams,
    progress: &Progress,
) -> std::io::Result<FileRead> {
    let mut out = FileRead { ids: vec![], blobs: vec![], new_bytes: 0, size: 0, meta: None, changed: false };
    for attempt in 0..ATTEMPTS {
        let f = open_nofollow(path)?;
        let before = f.metadata()?;
        let mut ids = Vec::new();
        let mut size = 0u64;
        for chunk in Chunker::new(&f, params, keys.chunker_seed) {
            let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
            size += chunk.len() as u64;
            Progress::add(&progress.bytes_read, chunk.len() as u64);
            let (id, blob) = process_chunk(keys, dedup, BlobKind::Data, level, &chunk)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if let Some(b) = blob {
                out.new_bytes += chunk.len() as u64;
                // Every claimed blob must be stored, even from an attempt that is retried.
                out.blobs.push(b);
            }
            ids.push(id);
        }
        let after = f.metadata()?;
        out.ids = ids;
        out.size = size;
        out.meta = Some(after.clone());
        if unchanged(&before, &after) && size == after.len() {
            return Ok(out);
        }
        tracing::debug!(path = %path.display(), attempt, "file changed while read; reading it again");
    }
    out.changed = true;
    Ok(out)
}

async fn run(
    repo: &Repository,
    path: &Path,
    root_meta: Metadata,
    opts: &BackupOptions,
    progress: Arc<Progress>,
) -> Result<BackupStats> {
    let started = Instant::now();
    let start_time = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let key = path_key(path);
    let parent = find_parent(repo, opts, &key).await?;
    let (dedup, _, recovery_bytes) = crate::packer::prepare(repo).await?;
    let config = repo.config().clone();
    let mut w = Walker {
        repo,
        keys: repo.keys().clone(),
        dedup,
        level: config.compression_level,
        params: config.chunker,
        workers: opts.workers.max(1),
        force: opts.force,
        progress: progress.clone(),
        packer: Packer::new(repo, opts.uploads.max(1), config.pack_size as usize),
        hardlinks: HashMap::new(),
        stats: Counters::default(),
    };

    let root_node = base_node(b"", &root_meta).expect("a directory is a node");
    let parent_listing = match &parent {
        Some((_, dir)) => w.parent_listing(dir).await,
        None => HashMap::new(),
    };
    let (entries, errs) = tokio::task::spawn_blocking({
        let p = path.to_path_buf();
        move || list_dir(&p, "")
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
    .map_err(|e| Error::io(format!("cannot list {}", path.display()), e))?;
    errs.into_iter().for_each(|e| w.stats.error(e));
    let parent_parts = parent.as_ref().map(|(_, d)| d.subtree.clone()).unwrap_or_default();
    let mut stack =
        vec![Frame::new(path.to_path_buf(), String::new(), entries, parent_listing, parent_parts, root_node)];

    let root = loop {
        let top = stack.last_mut().expect("the loop ends when the stack empties");
        if top.pos >= top.entries.len() {
            let mut frame = stack.pop().expect("not empty");
            let mut node = std::mem::replace(&mut frame.node, base_node(b"", &root_meta).expect("a directory"));
            node.subtree = frame.finish(&mut w).await?;
            w.stats.dirs += 1;
            match stack.last_mut() {
                None => break node,
                Some(p) => p.push(node, &mut w).await?,
            }
            continue;
        }
        if top.entries[top.pos].meta.is_dir() {
            let e = &top.entries[top.pos];
            top.pos += 1;
            let abs = top.abs.join(OsStr::from_bytes(&e.name));
            let rel = join_rel(&top.rel, &e.name);
            let node = base_node(&e.name, &e.meta).expect("a directory is a node");
            let parent_dir = top.parent.get(&e.name).filter(|n| n.kind == NodeKind::Dir).cloned();
            let listed = tokio::task::spawn_blocking({
                let (abs, rel) = (abs.clone(), rel.clone());
                move || list_dir(&abs, &rel)
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
            match listed {
                Ok((entries, errs)) => {
                    errs.into_iter().for_each(|e| w.stats.error(e));
                    let parent = match &parent_dir {
                        Some(d) => w.parent_listing(d).await,
                        None => HashMap::new(),
                    };
                    let parent_parts = parent_dir.map(|d| d.subtree).unwrap_or_default();
                    stack.push(Frame::new(abs, rel, entries, parent, parent_parts, node));
                }
                Err(err) => {
                    w.stats.error(format!("{rel}: {err}"));
                    w.stats.dirs += 1;
                    let top = stack.last_mut().expect("not empty");
                    top.push(node, &mut w).await?;
                }
            }
            continue;
        }
        // A run of non-directories.
        let start = top.pos;
        let end = (start..top.entries.len().min(start + RUN))
            .find(|&i| top.entries[i].meta.is_dir())
            .unwrap_or(top.entries.len().min(start + RUN));
        top.pos = end;
        let jobs: Vec<Job> =
            (start..end).map(|i| w.classify(&top.entries[i], &top.abs, &top.rel, &top.parent)).collect();
        let nodes = w.run_jobs(jobs).await?;
        let top = stack.last_mut().expect("not empty");
        for n in nodes {
            top.push(n, &mut w).await?;
        }
    };

    w.packer.finish(&progress).await?;
    let bytes_uploaded = recovery_bytes + w.packer.bytes_uploaded;
    let s = w.stats;
    let duration = started.elapsed().as_secs_f64();
    let bytes_read = progress.bytes_read.load(std::sync::atomic::Ordering::Relaxed);
    let mut snap = Snapshot {
        version: kanister_repo::snapshot::SNAPSHOT_VERSION,
        time: start_time,
        hostname: opts.hostname.clone(),
        tags: opts.tags.clone(),
        root: Root::Tree { path: key, dir: root },
        size: s.bytes_total,
        stats: SnapshotStats {
            bytes_read,
            bytes_new: s.bytes_new,
            bytes_uploaded,
            duration_secs: duration,
            files_read: s.files_read,
            files_reused: s.files_reused,
            files_new: s.files_new,
            dirs: s.dirs,
            errors: s.errors.clone(),
            changed: s.changed.clone(),
            ..Default::default()
        },
        program: format!("kanister-agent {}", env!("CARGO_PKG_VERSION")),
        parent: parent.as_ref().map(|(id, _)| *id),
    };
    let (_, probe) = snap.encode(&w.keys);
    snap.stats.bytes_uploaded += probe.len() as u64;
    let (snapshot_id, _) = repo.write_snapshot(&snap).await?;
    w.packer.delete_interim().await;
    Ok(BackupStats {
        snapshot_id,
        parent: snap.parent,
        files_read: s.files_read,
        files_reused: s.files_reused,
        files_new: s.files_new,
        dirs: s.dirs,
        bytes_total: s.bytes_total,
        bytes_read,
        bytes_new: s.bytes_new,
        bytes_uploaded: snap.stats.bytes_uploaded,
        partial: s.error_count > 0,
        errors: s.errors,
        changed: s.changed,
        warnings: s.warnings,
        duration_secs: duration,
    })
}

impl Walker<'_> {
    /// The parent snapshot's listing of a directory, by name. Unreadable parents are ignored:
    /// everything is then read again, which is slower but never wrong.
    async fn parent_listing(&self, dir: &Node) -> HashMap<Vec<u8>, Node> {
        match read_listing(self.repo, self.dedup.index(), &dir.subtree).await {
            Ok(nodes) => nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the parent snapshot's listing; reading the files again");
                HashMap::new()
            }
        }
    }

    fn classify(&mut self, e: &Entry, dir: &Path, rel: &str, parent: &HashMap<Vec<u8>, Node>) -> Job {
        let rel = join_rel(rel, &e.name);
        let abs = dir.join(OsStr::from_bytes(&e.name));
        let Some(mut node) = base_node(&e.name, &e.meta) else {
            return Job::Skip(format!("{rel}: sockets are not backed up"));
        };
        match node.kind {
            NodeKind::Symlink => match std::fs::read_link(&abs) {
                Ok(t) => {
                    node.target = Some(t.as_os_str().as_bytes().to_vec());
                    Job::Ready(node)
                }
                Err(err) => {
                    self.stats.error(format!("{rel}: {err}"));
                    Job::Skip(String::new())
                }
            },
            NodeKind::File => {
                let key = (e.meta.dev(), e.meta.ino());
                if e.meta.nlink() > 1 {
                    node.link_id = Some(e.meta.ino());
                    if self.hardlinks.contains_key(&key) {
                        return Job::Link(node, key);
                    }
                    // Reserve: later names of this inode in the same run link to this one.
                    self.hardlinks.insert(key, Vec::new());
                }
                let prev = parent.get(&e.name);
                let same = prev.is_some_and(|p| {
                    p.kind == NodeKind::File
                        && p.size == node.size
                        && p.mtime_ns == node.mtime_ns
                        && p.ctime_ns == node.ctime_ns
                        && p.inode == node.inode
                        && !p.changed_during_backup
                        && p.content.iter().all(|id| self.dedup.index().contains(id))
                });
                if same && !self.force {
                    node.content = prev.expect("checked").content.clone();
                    if node.link_id.is_some() {
                        self.hardlinks.insert(key, node.content.clone());
                    }
                    self.stats.files_reused += 1;
                    return Job::Ready(node);
                }
                if prev.is_none() {
                    self.stats.files_new += 1;
                }
                if node.size <= SMALL_FILE { Job::Small(node, abs, rel) } else { Job::Large(node, abs, rel) }
            }
            _ => Job::Ready(node),
        }
    }

    /// Processes a run of jobs (several small files at once), returns the nodes in order.
    async fn run_jobs(&mut self, jobs: Vec<Job>) -> Result<Vec<Node>> {
        let (keys, dedup, level, params, progress) =
            (self.keys.clone(), self.dedup.clone(), self.level, self.params, self.progress.clone());
        let results = futures::stream::iter(jobs)
            .map(|job| {
                let (keys, dedup, progress) = (keys.clone(), dedup.clone(), progress.clone());
                async move {
                    match job {
                        Job::Small(node, abs, rel) => {
                            let r = tokio::task::spawn_blocking(move || {
                                read_small(&abs, &keys, &dedup, level, params, &progress)
                            })
                            .await
                            .map_err(|e| Error::Task(e.to_string()))?;
                            Ok::<_, Error>((Job::Ready(node), Some((rel, r))))
                        }
                        other => Ok((other, None)),
                    }
                }
            })
            .buffered(self.workers * 2);
        let mut results = std::pin::pin!(results);
        let mut nodes = Vec::new();
        while let Some(r) = results.next().await {
            let (job, read) = r?;
            match (job, read) {
                (Job::Ready(mut node), Some((rel, read))) => match read {
                    Ok(fr) => {
                        for b in fr.blobs {
                            self.packer.add(b, &self.progress).await?;
                        }
                        self.file_done(&mut node, fr.ids, fr.size, fr.meta.as_ref(), fr.new_bytes, fr.changed, &rel);
                        nodes.push(node);
                    }
                    Err(err) => self.stats.error(format!("{rel}: {err}")),
                },
                (Job::Ready(node), None) => {
                    if node.kind == NodeKind::File {
                        self.stats.bytes_total += node.size;
                    }
                    nodes.push(node)
                }
                (Job::Large(mut node, abs, rel), _) => match self.read_large(&abs).await {
                    Ok(fr) => {
                        self.file_done(&mut node, fr.ids, fr.size, fr.meta.as_ref(), fr.new_bytes, fr.changed, &rel);
                        nodes.push(node);
                    }
                    Err(Error::Io { source, .. }) => self.stats.error(format!("{rel}: {source}")),
                    Err(e) => return Err(e),
                },
                (Job::Link(mut node, key), _) => {
                    // The first name was taken earlier in order; an unreadable first name
                    // leaves no content to link to, and this name is then read itself.
                    node.content = self.hardlinks.get(&key).cloned().unwrap_or_default();
                    node.size = if node.content.is_empty() { 0 } else { node.size };
                    self.stats.bytes_total += node.size;
                    nodes.push(node);
                }
                (Job::Skip(why), _) => {
                    if !why.is_empty() {
                        self.stats.warnings.push(why);
                    }
                }
                (Job::Small(..), _) => unreachable!("small jobs come back as ready"),
            }
        }
        Ok(nodes)
    }

    #[allow(clippy::too_many_arguments)]
    fn file_done(
        &mut self,
        node: &mut Node,
        ids: Vec<BlobId>,
        size: u64,
        meta: Option<&Metadata>,
        new_bytes: u64,
        changed: bool,
        rel: &str,
    ) {
        node.content = ids;
        node.size = size;
        if let Some(m) = meta {
            node.mtime_ns = time_ns(m.mtime(), m.mtime_nsec());
            node.ctime_ns = time_ns(m.ctime(), m.ctime_nsec());
        }
        node.changed_during_backup = changed;
        if changed && self.stats.changed.len() < MAX_LISTED {
            self.stats.changed.push(rel.to_string());
        }
        self.stats.files_read += 1;
        self.stats.bytes_total += size;
        self.stats.bytes_new += new_bytes;
        if let Some(m) = meta
            && node.link_id.is_some()
        {
            self.hardlinks.insert((m.dev(), m.ino()), node.content.clone());
        }
    }

    /// Streams a large file through the chunk pipeline, retrying while it changes.
    async fn read_large(&mut self, abs: &Path) -> Result<FileRead> {
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            let file = open_nofollow(abs).map_err(|e| Error::io(abs.display().to_string(), e))?;
            let before = file.metadata().map_err(|e| Error::io(abs.display().to_string(), e))?;
            let probe = file.try_clone().map_err(|e| Error::io(abs.display().to_string(), e))?;
            let (ids, size, new_bytes) = self.store_reader(Box::new(file)).await?;
            let after = probe.metadata().map_err(|e| Error::io(abs.display().to_string(), e))?;
            let stable = unchanged(&before, &after) && size == after.len();
            let fr = FileRead { ids, blobs: vec![], new_bytes, size, meta: Some(after), changed: !stable };
            if stable {
                return Ok(fr);
            }
            tracing::debug!(path = %abs.display(), attempt, "file changed while read; reading it again");
            last = Some(fr);
        }
        Ok(last.expect("at least one attempt"))
    }

    /// Chunks a reader on a blocking thread and stores its new blobs; returns the chunk ids,
    /// the bytes read and the new bytes.
    async fn store_reader(&mut self, reader: Box<dyn Read + Send>) -> Result<(Vec<BlobId>, u64, u64)> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(self.workers * 4);
        let (params, seed, progress) = (self.params, self.keys.chunker_seed, self.progress.clone());
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for chunk in Chunker::new(reader, params, seed) {
                let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
                Progress::add(&progress.bytes_read, chunk.len() as u64);
                if tx.blocking_send(chunk).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let chunks = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        let processed = chunks
            .map(|chunk| {
                let (keys, dedup, level) = (self.keys.clone(), self.dedup.clone(), self.level);
                tokio::task::spawn_blocking(move || {
                    let n = chunk.len() as u64;
                    process_chunk(&keys, &dedup, BlobKind::Data, level, &chunk).map(|r| (r, n))
                })
            })
            .buffered(self.workers * 4);
        let mut processed = Box::pin(processed);
        let (mut ids, mut size, mut new_bytes) = (Vec::new(), 0u64, 0u64);
        let mut failure = None;
        while let Some(r) = processed.next().await {
            match r.map_err(|e| Error::Task(e.to_string())).and_then(|r| r) {
                Ok(((id, blob), n)) => {
                    ids.push(id);
                    size += n;
                    if let Some(b) = blob {
                        new_bytes += n;
                        self.packer.add(b, &self.progress).await?;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(processed);
        let read = reader.await.map_err(|e| Error::Task(e.to_string()))?;
        if let Some(e) = failure {
            return Err(e);
        }
        read.map_err(|e| Error::io("reading a file failed", e))?;
        Ok((ids, size, new_bytes))
    }
}
