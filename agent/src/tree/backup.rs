//! Backing up a directory tree.
//!
//! Two halves joined by an ordered, bounded stream:
//! - the **walk** goes depth first in name order: it lists each directory (`lstat` of every
//!   entry), reads the parent snapshot's listing of it, and decides for each entry whether it
//!   is ready (symlinks, devices, files unchanged since the parent), to be read, or another name
//!   of an inode met before. It emits `Enter` / `Leave` for directories and, in between, batches
//!   of entries (up to about 1 MiB of files to read, so a thread hand-off costs little);
//! - batches are read, chunked, hashed, compressed and sealed on the blocking pool, at most
//!   `workers` at once and several batches ahead, across directory boundaries, so the cores
//!   never wait for one directory to finish before the next starts;
//! - the **sink** takes the results in walk order, adds new blobs to the packer, streams large
//!   files through the chunk pipeline itself, and cuts each finished directory listing into
//!   parts of about 1 MiB stored as tree blobs; the parent directory records their ids.
//!
//! A file whose size or mtime changes while it is read is read again (twice at most) and then
//! recorded as it was read last, flagged `changed_during_backup`. A file or directory that
//! cannot be read is listed in the result's `errors` and the snapshot is marked partial.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use kanister_repo::blob::{BlobKind, EncodedBlob};
use kanister_repo::chunker::{Chunker, Cutter};
use kanister_repo::snapshot::{Root, Snapshot, SnapshotStats};
use kanister_repo::tree::{Node, NodeKind, PART_TARGET, approx_size, encode_part};
use kanister_repo::{BlobId, Keys, SnapshotId};

use super::{BackupOptions, BackupStats, read_listing};
use crate::error::{Error, Result};
use crate::packer::{Dedup, Packer, process_chunk};
use crate::progress::Progress;
use crate::repository::{BackupMarker, LookupIndex, Repository};

/// Files up to this size are read whole by one worker; larger ones are streamed.
const SMALL_FILE: u64 = 4 << 20;
/// A batch of entries handed to one worker ends after this many bytes of files to read...
const BATCH_BYTES: u64 = 1 << 20;
/// ...or this many entries.
const BATCH_ENTRIES: usize = 64;
/// Subdirectories of a directory listed (with their parent listings read) ahead of the walk.
const PREFETCH: usize = 8;
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
    let r = run(repo, path, meta, opts, progress, &marker).await;
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

    /// Adds the counts of the other half of the backup.
    fn merge(&mut self, o: Counters) {
        self.files_read += o.files_read;
        self.files_reused += o.files_reused;
        self.files_new += o.files_new;
        self.dirs += o.dirs;
        self.bytes_total += o.bytes_total;
        self.bytes_new += o.bytes_new;
        self.error_count += o.error_count;
        for (mine, theirs) in
            [(&mut self.errors, o.errors), (&mut self.changed, o.changed), (&mut self.warnings, o.warnings)]
        {
            let room = MAX_LISTED.saturating_sub(mine.len());
            mine.extend(theirs.into_iter().take(room));
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
    async fn push(&mut self, node: Node, sink: &mut Sink<'_>) -> Result<()> {
        let n = approx_size(&node);
        if self.size + n > PART_TARGET && !self.nodes.is_empty() {
            self.flush(sink).await?;
        }
        self.size += n;
        self.nodes.push(node);
        Ok(())
    }

    async fn flush(&mut self, sink: &mut Sink<'_>) -> Result<()> {
        let bytes = encode_part(&self.nodes);
        self.nodes.clear();
        self.size = 0;
        let (id, blob) = process_chunk(&sink.keys, &sink.dedup, BlobKind::Tree, sink.level, &bytes)?;
        if let Some(b) = blob {
            sink.packer.add(b, &sink.progress).await?;
        }
        self.parts.push(id);
        Ok(())
    }

    async fn finish(mut self, sink: &mut Sink<'_>) -> Result<Vec<BlobId>> {
        if !self.nodes.is_empty() {
            self.flush(sink).await?;
        }
        Ok(self.parts)
    }
}

/// The parent snapshot's listing of a directory, by name; shared by the walk (to find
/// unchanged files) and the sink (to find unchanged listings).
type ParentListing = Arc<HashMap<Vec<u8>, Node>>;

/// A directory the sink is building the listing of.
struct Frame {
    parent: ParentListing,
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
    fn new(parent: ParentListing, parent_parts: Vec<BlobId>, node: Node) -> Self {
        let same = !parent_parts.is_empty() || parent.is_empty();
        Frame { parent, parent_parts, same, count: 0, builder: PartBuilder::default(), node }
    }

    /// Adds a node to the listing, noting whether the listing still equals the parent's.
    async fn push(&mut self, node: Node, sink: &mut Sink<'_>) -> Result<()> {
        self.same = self.same && self.parent.get(&node.name) == Some(&node);
        self.count += 1;
        self.builder.push(node, sink).await
    }

    /// The listing's parts: the parent's own when nothing differs (no encoding, no hashing),
    /// else the parts just built.
    async fn finish(self, sink: &mut Sink<'_>) -> Result<Vec<BlobId>> {
        if self.same && self.count == self.parent.len() && !self.parent_parts.is_empty() {
            return Ok(self.parent_parts);
        }
        self.builder.finish(sink).await
    }
}

/// An inode with several names: (device, inode).
type LinkKey = (u64, u64);

/// How one non-directory entry will be handled.
enum Job {
    /// Already complete (symlinks, FIFOs, devices, unchanged files); the key when it is the
    /// first name of a hard-linked file.
    Ready(Node, Option<LinkKey>),
    /// Read whole by a worker.
    Small(Node, PathBuf, String),
    /// Streamed by the sink itself.
    Large(Node, PathBuf, String),
    /// Another name of an inode met earlier in this backup.
    Link(Node, LinkKey),
    /// Left out, with the reason.
    Skip(String),
    /// A file a worker read (what `Small` becomes).
    Read(Node, String, std::io::Result<Box<FileRead>>),
}

/// What the walk emits, in depth-first order.
enum Step {
    /// A directory whose entries follow, up to the matching `Leave`.
    Enter { node: Node, parent: ParentListing, parent_parts: Vec<BlobId> },
    /// The end of the directory entered last.
    Leave,
    /// Entries of the current directory, in name order.
    Jobs(Vec<Job>),
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

/// What the workers need to turn file contents into blobs.
#[derive(Clone)]
struct Encoder {
    keys: Keys,
    dedup: Dedup,
    level: i32,
    cutter: Cutter,
    progress: Arc<Progress>,
}

thread_local! {
    /// A worker's buffer for whole small files, reused from file to file.
    static FILE_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads a small file whole: chunks, ids, new blobs. Runs on a worker.
fn read_small(path: &Path, e: &Encoder) -> std::io::Result<FileRead> {
    FILE_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut out = FileRead { ids: vec![], blobs: vec![], new_bytes: 0, size: 0, meta: None, changed: false };
        for attempt in 0..ATTEMPTS {
            let mut f = open_nofollow(path)?;
            let before = f.metadata()?;
            buf.clear();
            buf.reserve(before.len() as usize + 1);
            f.read_to_end(&mut buf)?;
            Progress::add(&e.progress.bytes_read, buf.len() as u64);
            let mut ids = Vec::new();
            for chunk in e.cutter.chunks(&buf) {
                let (id, blob) = process_chunk(&e.keys, &e.dedup, BlobKind::Data, e.level, chunk)
                    .map_err(|err| std::io::Error::other(err.to_string()))?;
                if let Some(b) = blob {
                    out.new_bytes += chunk.len() as u64;
                    // Every claimed blob must be stored, even from an attempt that is retried.
                    out.blobs.push(b);
                }
                ids.push(id);
            }
            let after = f.metadata()?;
            out.ids = ids;
            out.size = buf.len() as u64;
            out.meta = Some(after.clone());
            if unchanged(&before, &after) && out.size == after.len() {
                return Ok(out);
            }
            tracing::debug!(path = %path.display(), attempt, "file changed while read; reading it again");
        }
        out.changed = true;
        // Do not keep a large buffer around for the next, probably small, files.
        if buf.capacity() > 2 * SMALL_FILE as usize {
            *buf = Vec::new();
        }
        Ok(out)
    })
}

/// Reads the files of a batch on the blocking pool, at most `workers` batches at once.
async fn read_batch(jobs: Vec<Job>, encoder: Encoder, slots: Arc<tokio::sync::Semaphore>) -> Result<Vec<Job>> {
    if !jobs.iter().any(|j| matches!(j, Job::Small(..))) {
        return Ok(jobs);
    }
    let _slot = slots.acquire_owned().await.expect("semaphore never closed");
    tokio::task::spawn_blocking(move || {
        jobs.into_iter()
            .map(|job| match job {
                Job::Small(node, abs, rel) => {
                    let r = read_small(&abs, &encoder).map(Box::new);
                    Job::Read(node, rel, r)
                }
                other => other,
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))
}

async fn run(
    repo: &Repository,
    path: &Path,
    root_meta: Metadata,
    opts: &BackupOptions,
    progress: Arc<Progress>,
    marker: &BackupMarker,
) -> Result<BackupStats> {
    let started = Instant::now();
    let start_time = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let key = path_key(path);
    let parent = find_parent(repo, opts, &key).await?;
    tracing::debug!(elapsed = ?started.elapsed(), parent = ?parent.as_ref().map(|p| p.0), "parent chosen");
    let (dedup, _, recovery_bytes) = crate::packer::prepare(repo).await?;
    tracing::debug!(elapsed = ?started.elapsed(), entries = dedup.index().entries(), "index loaded");
    let config = repo.config().clone();
    let workers = opts.workers.max(1);
    let encoder = Encoder {
        keys: repo.keys().clone(),
        dedup: dedup.clone(),
        level: config.compression_level,
        cutter: Cutter::new(config.chunker, repo.keys().chunker_seed),
        progress: progress.clone(),
    };
    let mut sink = Sink {
        keys: repo.keys().clone(),
        dedup: dedup.clone(),
        level: config.compression_level,
        encoder: encoder.clone(),
        workers,
        progress: progress.clone(),
        packer: Packer::new(repo, opts.uploads.max(1), config.pack_size as usize),
        hardlinks: HashMap::new(),
        stats: Counters::default(),
    };

    let walk_stats = Mutex::new(Counters::default());
    let mut walk = Walk {
        repo,
        dedup,
        force: opts.force,
        stack: Vec::new(),
        reserved: HashSet::new(),
        stats: &walk_stats,
        first: None,
    };
    let root_node = base_node(b"", &root_meta).expect("a directory is a node");
    let parent_dir = parent.as_ref().map(|(_, d)| d.clone());
    let parent_parts = parent_dir.as_ref().map(|d| d.subtree.clone()).unwrap_or_default();
    let (listed, parent_listing) =
        list_ahead(repo.clone(), walk.dedup.shared_index(), path.to_path_buf(), String::new(), parent_dir).await;
    let (entries, errs) = listed.map_err(|e| Error::io(format!("cannot list {}", path.display()), e))?;
    errs.into_iter().for_each(|e| walk.stats().error(e));
    walk.push(WalkFrame::new(path.to_path_buf(), String::new(), entries, parent_listing.clone()));
    walk.first = Some(Step::Enter { node: root_node, parent: parent_listing, parent_parts });

    // Batches are read `workers` at once and up to `4 * workers` steps ahead of the sink.
    let slots = Arc::new(tokio::sync::Semaphore::new(workers));
    let steps = futures::stream::unfold(walk, |mut walk| async move {
        let step = walk.next().await?;
        Some((step, walk))
    })
    .map(|step| {
        let (encoder, slots) = (encoder.clone(), slots.clone());
        async move {
            match step {
                Step::Jobs(jobs) => read_batch(jobs, encoder, slots).await.map(Step::Jobs),
                other => Ok(other),
            }
        }
    })
    .buffered(workers * 4);
    let mut frames: Vec<Frame> = Vec::new();
    let mut root = None;
    let mut steps = Box::pin(steps);
    while let Some(step) = steps.next().await {
        match step? {
            Step::Enter { node, parent, parent_parts } => frames.push(Frame::new(parent, parent_parts, node)),
            Step::Leave => {
                let mut frame = frames.pop().expect("a Leave follows its Enter");
                let mut node = std::mem::replace(&mut frame.node, base_node(b"", &root_meta).expect("a directory"));
                node.subtree = frame.finish(&mut sink).await?;
                sink.stats.dirs += 1;
                match frames.last_mut() {
                    None => root = Some(node),
                    Some(p) => p.push(node, &mut sink).await?,
                }
            }
            Step::Jobs(jobs) => {
                for job in jobs {
                    if let Some(node) = sink.take(job).await? {
                        frames.last_mut().expect("jobs come inside a directory").push(node, &mut sink).await?;
                    }
                }
            }
        }
    }
    drop(steps);
    let root = root.expect("the walk leaves the top directory last");

    tracing::debug!(elapsed = ?started.elapsed(), "walk done");
    sink.packer.finish(&progress).await?;
    let bytes_uploaded = recovery_bytes + sink.packer.bytes_uploaded;
    let mut s = sink.stats;
    s.merge(walk_stats.into_inner().unwrap_or_else(|e| e.into_inner()));
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
    let (_, probe) = snap.encode(&sink.keys);
    snap.stats.bytes_uploaded += probe.len() as u64;
    marker.ensure_alive()?;
    let (snapshot_id, _) = repo.write_snapshot(&snap).await?;
    tracing::debug!(elapsed = ?started.elapsed(), snapshot = %snapshot_id, "snapshot written");
    sink.packer.delete_interim().await;
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

/// A directory's listing and the parent snapshot's listing of it, read ahead of the walk.
type Listed = (std::io::Result<(Vec<Entry>, Vec<String>)>, ParentListing);

/// A directory the walk is going through.
struct WalkFrame {
    abs: PathBuf,
    rel: String,
    entries: Vec<Entry>,
    pos: usize,
    parent: ParentListing,
    /// Subdirectories being listed ahead, by entry position, in order.
    ahead: std::collections::VecDeque<(usize, tokio::task::JoinHandle<Listed>)>,
    /// Where to look for the next subdirectory to list ahead.
    scan: usize,
}

/// The walk: lists directories and classifies their entries, in depth-first name order.
struct Walk<'r> {
    repo: &'r Repository,
    dedup: Dedup,
    force: bool,
    stack: Vec<WalkFrame>,
    /// Inodes with several names met so far: later names link to the first.
    reserved: HashSet<LinkKey>,
    stats: &'r Mutex<Counters>,
    /// The top directory's `Enter`, emitted first.
    first: Option<Step>,
}

/// Lists a directory and reads the parent snapshot's listing of it; runs as its own task, so
/// the next directories are read while the walk is busy with this one.
async fn list_ahead(
    repo: Repository,
    index: Arc<LookupIndex>,
    abs: PathBuf,
    rel: String,
    parent_dir: Option<Node>,
) -> Listed {
    let parent = match parent_dir {
        Some(d) => match read_listing(&repo, index.as_ref(), &d.subtree).await {
            Ok(nodes) => nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the parent snapshot's listing; reading the files again");
                HashMap::new()
            }
        },
        None => HashMap::new(),
    };
    let listed = tokio::task::spawn_blocking(move || list_dir(&abs, &rel))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    (listed, Arc::new(parent))
}

impl Drop for WalkFrame {
    /// A walk that ends early (an error, a cancelled backup) stops its read-ahead.
    fn drop(&mut self) {
        for (_, task) in &self.ahead {
            task.abort();
        }
    }
}

impl WalkFrame {
    fn new(abs: PathBuf, rel: String, entries: Vec<Entry>, parent: ParentListing) -> Self {
        WalkFrame { abs, rel, entries, pos: 0, parent, ahead: Default::default(), scan: 0 }
    }

    /// Starts listing subdirectories until [`PREFETCH`] are under way.
    fn list_ahead(&mut self, repo: &Repository, index: &Arc<LookupIndex>) {
        while self.ahead.len() < PREFETCH && self.scan < self.entries.len() {
            let i = self.scan;
            self.scan += 1;
            let e = &self.entries[i];
            if !e.meta.is_dir() {
                continue;
            }
            let parent_dir = self.parent.get(&e.name).filter(|n| n.kind == NodeKind::Dir).cloned();
            let task = list_ahead(
                repo.clone(),
                index.clone(),
                self.abs.join(OsStr::from_bytes(&e.name)),
                join_rel(&self.rel, &e.name),
                parent_dir,
            );
            self.ahead.push_back((i, tokio::spawn(task)));
        }
    }
}

impl Walk<'_> {
    fn stats(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a directory: it becomes the top of the walk and starts listing ahead.
    fn push(&mut self, mut frame: WalkFrame) {
        frame.list_ahead(self.repo, &self.dedup.shared_index());
        self.stack.push(frame);
    }

    /// The next step, or `None` once the top directory is left.
    async fn next(&mut self) -> Option<Step> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let top = self.stack.last_mut()?;
        if top.pos >= top.entries.len() {
            self.stack.pop();
            return Some(Step::Leave);
        }
        if top.entries[top.pos].meta.is_dir() {
            let i = top.pos;
            top.pos += 1;
            let (at, task) = top.ahead.pop_front().expect("every subdirectory is listed ahead, in order");
            // Pairing a directory with another's listing would store a wrong tree: never.
            assert_eq!(at, i, "the read-ahead is in walk order");
            let e = &top.entries[i];
            let abs = top.abs.join(OsStr::from_bytes(&e.name));
            let rel = join_rel(&top.rel, &e.name);
            let node = base_node(&e.name, &e.meta).expect("a directory is a node");
            let parent_parts = top
                .parent
                .get(&e.name)
                .filter(|n| n.kind == NodeKind::Dir)
                .map(|d| d.subtree.clone())
                .unwrap_or_default();
            top.list_ahead(self.repo, &self.dedup.shared_index());
            let (listed, parent) =
                task.await.unwrap_or_else(|e| (Err(std::io::Error::other(e.to_string())), Arc::default()));
            return Some(match listed {
                Ok((entries, errs)) => {
                    errs.into_iter().for_each(|e| self.stats().error(e));
                    self.push(WalkFrame::new(abs, rel, entries, parent.clone()));
                    Step::Enter { node, parent, parent_parts }
                }
                Err(err) => {
                    let mut stats = self.stats();
                    stats.error(format!("{rel}: {err}"));
                    stats.dirs += 1;
                    Step::Jobs(vec![Job::Ready(node, None)])
                }
            });
        }
        // A batch of non-directories.
        let mut jobs = Vec::new();
        let mut bytes = 0u64;
        let top = self.stack.last_mut().expect("checked above");
        let mut c =
            Classifier { reserved: &mut self.reserved, stats: self.stats, dedup: &self.dedup, force: self.force };
        while top.pos < top.entries.len()
            && !top.entries[top.pos].meta.is_dir()
            && jobs.len() < BATCH_ENTRIES
            && bytes < BATCH_BYTES
        {
            let job = c.classify(&top.entries[top.pos], &top.abs, &top.rel, &top.parent);
            top.pos += 1;
            if let Job::Small(n, ..) = &job {
                bytes += n.size;
            }
            jobs.push(job);
        }
        Some(Step::Jobs(jobs))
    }
}

/// Decides how each entry of a directory is handled.
struct Classifier<'a> {
    reserved: &'a mut HashSet<LinkKey>,
    stats: &'a Mutex<Counters>,
    dedup: &'a Dedup,
    force: bool,
}

impl Classifier<'_> {
    fn stats(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `dir` and `rel` are the directory's path and its path in the snapshot; the entry's own
    /// paths are only made when it is read.
    fn classify(&mut self, e: &Entry, dir: &Path, rel: &str, parent: &HashMap<Vec<u8>, Node>) -> Job {
        let (name, meta) = (&e.name, &e.meta);
        let Some(mut node) = base_node(name, meta) else {
            return Job::Skip(format!("{}: sockets are not backed up", join_rel(rel, name)));
        };
        match node.kind {
            NodeKind::Symlink => match std::fs::read_link(dir.join(OsStr::from_bytes(name))) {
                Ok(t) => {
                    node.target = Some(t.as_os_str().as_bytes().to_vec());
                    Job::Ready(node, None)
                }
                Err(err) => {
                    self.stats().error(format!("{}: {err}", join_rel(rel, name)));
                    Job::Skip(String::new())
                }
            },
            NodeKind::File => {
                let key = (meta.dev(), meta.ino());
                let mut link = None;
                if meta.nlink() > 1 {
                    node.link_id = Some(meta.ino());
                    if !self.reserved.insert(key) {
                        return Job::Link(node, key);
                    }
                    link = Some(key);
                }
                let prev = parent.get(name);
                let same = prev.is_some_and(|p| {
                    p.kind == NodeKind::File
                        && p.size == node.size
                        && p.mtime_ns == node.mtime_ns
                        && p.ctime_ns == node.ctime_ns
                        && p.inode == node.inode
                        && !p.changed_during_backup
                        && p.content.iter().all(|id| self.dedup.is_stored(id))
                });
                if same && !self.force {
                    node.content = prev.expect("checked").content.clone();
                    self.stats().files_reused += 1;
                    return Job::Ready(node, link);
                }
                if prev.is_none() {
                    self.stats().files_new += 1;
                }
                let (abs, rel) = (dir.join(OsStr::from_bytes(name)), join_rel(rel, name));
                if node.size <= SMALL_FILE { Job::Small(node, abs, rel) } else { Job::Large(node, abs, rel) }
            }
            _ => Job::Ready(node, None),
        }
    }
}

/// The sink: takes the walk's results in order and stores what is new.
struct Sink<'r> {
    keys: Keys,
    dedup: Dedup,
    level: i32,
    encoder: Encoder,
    workers: usize,
    progress: Arc<Progress>,
    packer: Packer<'r>,
    /// Content of the first name of each hard-linked inode.
    hardlinks: HashMap<LinkKey, Vec<BlobId>>,
    stats: Counters,
}

impl Sink<'_> {
    /// Finishes one entry: the node to list, if any.
    async fn take(&mut self, job: Job) -> Result<Option<Node>> {
        Ok(match job {
            Job::Read(mut node, rel, read) => match read {
                Ok(fr) => {
                    for b in fr.blobs {
                        self.packer.add(b, &self.progress).await?;
                    }
                    self.file_done(&mut node, fr.ids, fr.size, fr.meta.as_ref(), fr.new_bytes, fr.changed, &rel);
                    Some(node)
                }
                Err(err) => {
                    self.stats.error(format!("{rel}: {err}"));
                    None
                }
            },
            Job::Ready(node, link) => {
                if node.kind == NodeKind::File {
                    self.stats.bytes_total += node.size;
                }
                if let Some(key) = link {
                    self.hardlinks.insert(key, node.content.clone());
                }
                Some(node)
            }
            Job::Large(mut node, abs, rel) => match self.read_large(&abs).await {
                Ok(fr) => {
                    self.file_done(&mut node, fr.ids, fr.size, fr.meta.as_ref(), fr.new_bytes, fr.changed, &rel);
                    Some(node)
                }
                Err(Error::Io { source, .. }) => {
                    self.stats.error(format!("{rel}: {source}"));
                    None
                }
                Err(e) => return Err(e),
            },
            Job::Link(mut node, key) => {
                // The first name came earlier in order; an unreadable first name leaves no
                // content to link to, and this name is then recorded empty.
                node.content = self.hardlinks.get(&key).cloned().unwrap_or_default();
                node.size = if node.content.is_empty() { 0 } else { node.size };
                self.stats.bytes_total += node.size;
                Some(node)
            }
            Job::Skip(why) => {
                if !why.is_empty() {
                    self.stats.warnings.push(why);
                }
                None
            }
            Job::Small(..) => unreachable!("workers turn small files into reads"),
        })
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
        let (cutter, progress) = (self.encoder.cutter.clone(), self.progress.clone());
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for chunk in Chunker::with_cutter(reader, cutter) {
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
