//! Restoring a stream snapshot: plan ▸ fetch ranges ▸ decrypt, decompress, verify ▸ write.
//!
//! Chunk lists are read one at a time; consecutive blobs of one pack are fetched with one
//! range request (at most [`MAX_REQUEST`] of plaintext). Requests run `fetches` at a time and
//! blobs are decoded on the blocking pool, both in stream order, and a dedicated thread writes
//! them out, behind a channel of a few requests: memory stays bounded. Every blob is verified
//! (tag, then hash against its id) before a byte of it is written.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kanister_repo::blob;
use kanister_repo::pack::PackEntry;
use kanister_repo::{BlobId, Keys, PackId, SnapshotId};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repository::{Locate, Repository, pack_key};

/// Largest plaintext fetched by one range request from a local disk.
pub const MAX_REQUEST: u64 = 2 << 20;
/// Largest plaintext a stream restore fetches by one range request from an object store
/// (S3, GCS, Azure): each request costs an HTTP round trip and the server's CPU, so fewer and
/// larger ones are faster (1 GiB from SeaweedFS on loopback: 1.80 s at 2 MiB, 1.54 s at 4 MiB,
/// 1.39 s at 8 MiB), for ~35 MiB more of plaintext in flight.
pub const MAX_REMOTE_REQUEST: u64 = 8 << 20;
/// Bytes of unneeded blobs a request may read through to merge two ranges.
const MAX_GAP: u64 = 64 << 10;

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullStats {
    /// The snapshot.
    pub snapshot_id: SnapshotId,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes read from the store.
    pub bytes_fetched: u64,
    /// Blobs verified.
    pub chunks: u64,
    /// Output bytes per second.
    pub throughput_bytes_per_sec: f64,
    /// Wall time in seconds.
    pub duration_secs: f64,
}

/// One range request: consecutive blobs of one pack.
#[derive(Debug)]
pub(crate) struct Request {
    pack: PackId,
    start: u64,
    end: u64,
    raw: u64,
    blobs: Vec<PackEntry>,
}

/// Groups the blobs `ids` (in order) into range requests.
pub(crate) fn plan(index: &dyn Locate, ids: &[BlobId], snapshot: &SnapshotId) -> Result<Vec<Request>> {
    plan_up_to(index, ids, snapshot, MAX_REQUEST)
}

/// [`plan`] with requests of at most `max_request` bytes of plaintext.
pub(crate) fn plan_up_to(
    index: &dyn Locate,
    ids: &[BlobId],
    snapshot: &SnapshotId,
    max_request: u64,
) -> Result<Vec<Request>> {
    let mut out: Vec<Request> = Vec::new();
    for id in ids {
        let (pack, e) =
            index.locate(id)?.ok_or_else(|| Error::MissingBlob { blob: *id, snapshot: snapshot.to_string() })?;
        let r = e.range();
        if let Some(cur) = out.last_mut()
            && cur.pack == pack
            && r.start >= cur.end
            && r.start - cur.end <= MAX_GAP
            && cur.raw + e.raw_len as u64 <= max_request
        {
            cur.end = r.end;
            cur.raw += e.raw_len as u64;
            cur.blobs.push(e);
            continue;
        }
        out.push(Request { pack, start: r.start, end: r.end, raw: e.raw_len as u64, blobs: vec![e] });
    }
    Ok(out)
}

/// Decrypts, decompresses and verifies the blobs of a fetched request on the blocking pool.
/// Returns the bytes fetched and each blob's plaintext.
pub(crate) async fn decode_request(keys: Keys, req: Request, bytes: Bytes) -> Result<(u64, Vec<Vec<u8>>)> {
    tokio::task::spawn_blocking(move || Ok((req.end - req.start, decode_blobs(&keys, &req, bytes)?)))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Decrypts, decompresses and verifies the blobs of a fetched request (CPU work), decrypting
/// them where they lie (see [`owned`]).
pub(crate) fn decode_blobs(keys: &Keys, req: &Request, bytes: Bytes) -> Result<Vec<Vec<u8>>> {
    let mut bytes = owned(bytes);
    let mut out = Vec::with_capacity(req.blobs.len());
    for e in &req.blobs {
        let s = (e.offset as u64 - req.start) as usize;
        let b = &mut bytes[s..s + e.length as usize];
        out.push(blob::decode_in_place(keys, e.kind, &e.id, b, e.raw_len)?);
    }
    Ok(out)
}

/// Read-and-decode tasks a restore from a local disk keeps in flight per range request the
/// caller allows (`fetches`). Each task's read holds a thread of the blocking pool while it
/// waits for the disk, so a cold disk wants more of them than there are cores: 1 GiB restored
/// into a pipe from a cold page cache took 1.45 s with separate fetch and decode stages, and
/// with this many tasks per fetch (4 fetches): 1.29 s at 2, 1.19 s at 4, 1.17 s at 6
/// (medians of 5), for 29, 32, 37 and 42 MiB of peak RSS.
pub const LOCAL_TASKS_PER_FETCH: usize = 4;

/// Reads `range` of object `key` and runs `work` on its bytes on the blocking pool. From a
/// local disk the read runs in the task that runs `work`, so the bytes are still in the core's
/// cache when it starts and no thread hands them to another; from an object store the range is
/// fetched first.
pub(crate) async fn read_and<T: Send + 'static>(
    store: &crate::store::Store,
    key: &str,
    range: std::ops::Range<u64>,
    work: impl FnOnce(Bytes) -> Result<T> + Send + 'static,
) -> Result<T> {
    let task = match store.local_read(key).await? {
        Some(read) => tokio::task::spawn_blocking(move || work(read.range(range)?)),
        None => {
            let bytes = store.get_range(key, range).await?;
            tokio::task::spawn_blocking(move || work(bytes))
        }
    };
    task.await.map_err(|e| Error::Task(e.to_string()))?
}

/// Fetches one request and decodes it (see [`read_and`]). Returns the bytes fetched and each
/// blob's plaintext.
pub(crate) async fn fetch_and_decode(
    store: &crate::store::Store,
    keys: Keys,
    req: Request,
) -> Result<(u64, Vec<Vec<u8>>)> {
    let key = pack_key(&req.pack);
    read_and(store, &key, req.start..req.end, move |bytes| Ok((req.end - req.start, decode_blobs(&keys, &req, bytes)?)))
        .await
}

/// Bytes to decrypt in place: `bytes` itself when nothing else holds it (a local read, an HTTP
/// body read whole), else a copy.
pub(crate) fn owned(bytes: Bytes) -> bytes::BytesMut {
    bytes.try_into_mut().unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]))
}

/// Fetches one request from the store.
pub(crate) async fn fetch_request(store: &crate::store::Store, req: Request) -> Result<(Request, Bytes)> {
    let bytes = store.get_range(&pack_key(&req.pack), req.start..req.end).await?;
    Ok((req, bytes))
}

/// Standard output as a plain file (a duplicate of descriptor 1, sharing its offset and flags),
/// for writing large data: `std::io::stdout()` is line-buffered and searches every buffer for
/// its last newline (5% of a dump's pull) to flush in pieces.
///
/// When standard output is a pipe, its buffer is raised to [`PIPE_BUFFER`] (the kernel's
/// default limit for an unprivileged process): with the default 64 KiB, the writer and the
/// reading command (`mysql`, `psql`, `gunzip`) take turns on every chunk, and a pull into
/// `| cat` ran at 60% of the speed of a pull into `/dev/null`.
pub fn stdout_file() -> std::io::Result<std::fs::File> {
    use std::os::fd::AsFd;
    let file = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    widen_pipe(&file);
    Ok(file)
}

/// The descriptor an output path names, if it names one: `-` and `/dev/stdout` are 1,
/// `/dev/stderr` 2, `/dev/fd/N` and `/proc/{self,thread-self,PID}/fd/N` are N. Such a path is
/// written through the descriptor (so a shell's `> FILE` or `>> FILE` keeps its meaning),
/// never replaced by a file renamed over it.
pub fn descriptor(path: &str) -> Option<u32> {
    let number = |n: &str| n.parse::<u32>().ok().filter(|_| n.bytes().all(|b| b.is_ascii_digit()));
    match path {
        "-" | "/dev/stdout" => return Some(1),
        "/dev/stderr" => return Some(2),
        "/dev/stdin" => return Some(0),
        _ => {}
    }
    if let Some(n) = path.strip_prefix("/dev/fd/") {
        return number(n);
    }
    let (process, n) = path.strip_prefix("/proc/")?.split_once("/fd/")?;
    (process == "self" || process == "thread-self" || number(process).is_some()).then(|| number(n))?
}

/// Whether an output path means standard output ([`descriptor`] 1), by name or through
/// symlinks.
pub fn is_stdout(path: &str) -> bool {
    matches!(output_of(std::path::Path::new(path)), Ok(Output::Descriptor(1, _)))
}

/// Writes snapshot `id` to standard output, and waits for it to be on disk when standard
/// output is a file (`pull ID > dump.sql`: done means on disk, as for a named output file).
pub async fn pull_to_stdout(
    repo: &Repository,
    id: &SnapshotId,
    fetches: usize,
    workers: usize,
    progress: Arc<Progress>,
) -> Result<PullStats> {
    let out = stdout_file().map_err(|e| Error::io("cannot write to standard output", e))?;
    let (stats, out) = pull(repo, id, out, fetches, workers, progress).await?;
    sync_if_file(&out).map_err(|e| Error::io("cannot write the output to disk", e))?;
    Ok(stats)
}

/// The pipe buffer a pull asks for on its standard output.
pub const PIPE_BUFFER: i32 = 1 << 20;

/// Raises the buffer of `file` to [`PIPE_BUFFER`] when it is a pipe; anything else, and a
/// refusal (a lower `fs.pipe-max-size`), leaves it as it was.
fn widen_pipe(file: &std::fs::File) {
    use std::os::unix::fs::FileTypeExt;
    if file.metadata().is_ok_and(|m| m.file_type().is_fifo()) {
        let _ = nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BUFFER));
    }
}

/// Where writeback of a file being restored stands: every [`WRITEBACK_STEP`] written,
/// writeback of that range is started ([`start_writeback`]), so the `fsync` at the end finds
/// little left to write instead of the whole file. The same call drops the pages of the range
/// before it, whose writeback began a step earlier and which are clean by then: the restore
/// does not fill the page cache (in a pod, its memory limit) with a whole database, and the
/// next writes reuse the pages just freed.
#[derive(Debug, Default)]
pub struct WritebackWindow {
    /// Writeback started up to here.
    started: u64,
    /// Pages dropped up to here.
    dropped: u64,
}

impl WritebackWindow {
    /// With `written` bytes of the file written: the range (offset, length) to hand to
    /// [`start_writeback`] when a step is due. [dropped, started) was written back since the
    /// last step, its clean pages dropped; [started, written) gets its writeback started.
    pub fn step(&mut self, written: u64) -> Option<(u64, u64)> {
        if written - self.started < WRITEBACK_STEP {
            return None;
        }
        let range = (self.dropped, written - self.dropped);
        (self.dropped, self.started) = (self.started, written);
        Some(range)
    }
}

/// A file being restored through [`std::io::Write`], written back as it grows
/// ([`WritebackWindow`]).
#[derive(Debug)]
pub struct WritebackFile {
    file: std::fs::File,
    written: u64,
    window: WritebackWindow,
}

/// How much a restored file grows between two starts of writeback.
pub const WRITEBACK_STEP: u64 = 16 << 20;

impl WritebackFile {
    /// Wraps a file opened for writing at offset 0.
    pub fn new(file: std::fs::File) -> Self {
        Self { file, written: 0, window: WritebackWindow::default() }
    }

    /// Writes what is left and waits for it to be on disk, then hands the file back.
    pub fn sync(self) -> std::io::Result<std::fs::File> {
        self.file.sync_all()?;
        Ok(self.file)
    }
}

/// Starts writeback of `len` bytes of `file` from `offset` (`len` 0: to its end) without
/// waiting for it. `POSIX_FADV_DONTNEED` writes the range's dirty pages out and drops those
/// already clean, so a restore does not crowd the page cache either. Only a hint: a refusal
/// changes nothing but speed, and the `fsync`/`syncfs` that ends a restore still waits for all.
pub fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    let _ =
        nix::fcntl::posix_fadvise(file, offset as i64, len as i64, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
}

/// Waits until what was written to `out` is on disk when `out` is a regular file (standard
/// output redirected to one); a pipe or a terminal has nothing to wait for.
pub fn sync_if_file(out: &std::fs::File) -> std::io::Result<()> {
    if out.metadata()?.is_file() { out.sync_all() } else { Ok(()) }
}

/// Makes the names in directory `dir` durable (after a file was created or renamed in it).
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// What an output path is, its symlinks followed one by one (not canonicalized: that would
/// turn `/dev/stdout` into the file behind the shell's redirect).
#[derive(Debug, PartialEq)]
enum Output {
    /// A descriptor, by one of its names ([`descriptor`]).
    Descriptor(u32, std::path::PathBuf),
    /// A named pipe or a device: written as it is.
    Special(std::path::PathBuf),
    /// A file, there or not yet, and not a symlink: written beside it and renamed over it.
    File(std::path::PathBuf),
}

fn output_of(target: &std::path::Path) -> Result<Output> {
    let mut path = target.to_path_buf();
    for _ in 0..40 {
        if let Some(fd) = path.to_str().and_then(descriptor) {
            return Ok(Output::Descriptor(fd, path));
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&path)
                    .map_err(|e| Error::io(format!("cannot follow the symlink {}", path.display()), e))?;
                // Relative to the link's directory; an absolute one replaces it.
                path = path.parent().map_or(to.clone(), |dir| dir.join(&to));
            }
            Ok(m) if !m.is_file() && !m.is_dir() => return Ok(Output::Special(path)),
            _ => return Ok(Output::File(path)),
        }
    }
    Err(Error::io(
        format!("cannot follow the symlinks at {} (name the file to write instead)", target.display()),
        nix::errno::Errno::ELOOP.into(),
    ))
}

/// How long an unlocked temporary file of a pull must have gone unwritten before another pull
/// removes it: far longer than between a pull's creating its file and locking it.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the temporary files that pulls into the same file left in `dir` when they were
/// killed (`kill -9`, a node lost): each as large as what it had written, and a restore is
/// often retried into the same path until the disk is full. A file is abandoned when no pull
/// holds its lock (the lock goes with the process) and it was last written a while ago.
fn remove_abandoned(dir: &std::path::Path, prefix: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        // Only names a pull makes: the prefix, then a process id.
        let ours = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if !ours {
            continue;
        }
        let path = entry.path();
        let Ok(file) = std::fs::File::open(&path) else { continue };
        let (Ok(()), Ok(m)) = (file.try_lock(), file.metadata()) else { continue };
        let idle = m.modified().ok().and_then(|t| t.elapsed().ok()).unwrap_or_default();
        // Still the file this name leads to (not one renamed into place meanwhile).
        let same = std::fs::symlink_metadata(&path).is_ok_and(|n| (n.dev(), n.ino()) == (m.dev(), m.ino()));
        if m.is_file() && same && idle >= ABANDONED_AFTER {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::warn!(
                    file = %path.display(), bytes = m.len(),
                    "removed what an earlier pull into the same file left when it was stopped"
                ),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot remove an abandoned pull's file"),
            }
        }
    }
}

/// Writes snapshot `id` through `path` as it is (a named pipe, a device, a descriptor's name),
/// from its start or, with `append`, after what it holds; waits for it to be on disk when it is
/// a regular file.
async fn pull_through(
    repo: &Repository,
    id: &SnapshotId,
    path: &std::path::Path,
    append: bool,
    fetches: usize,
    workers: usize,
    progress: Arc<Progress>,
) -> Result<PullStats> {
    let out = std::fs::OpenOptions::new()
        .write(true)
        .append(append)
        .open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    widen_pipe(&out);
    let (stats, out) = pull(repo, id, out, fetches, workers, progress).await?;
    sync_if_file(&out).map_err(|e| Error::io("cannot write the output to disk", e))?;
    Ok(stats)
}

/// Writes snapshot `id` into the file `target`, durably: under a temporary name beside it,
/// fsynced, renamed into place, then its directory fsynced. A failed pull leaves nothing
/// behind, and a file that was already at `target` stays as it was. A device or a named pipe
/// at `target` (a FIFO a restore command reads) is written as it is, a descriptor by any of its
/// names ([`descriptor`]) through it, and a symlink's file is replaced, the link kept.
pub async fn pull_to_path(
    repo: &Repository,
    id: &SnapshotId,
    target: &std::path::Path,
    fetches: usize,
    workers: usize,
    progress: Arc<Progress>,
) -> Result<PullStats> {
    let target = match output_of(target)? {
        Output::Descriptor(1, _) => return pull_to_stdout(repo, id, fetches, workers, progress).await,
        // Another descriptor is opened again by its name, appending (a regular file behind it
        // keeps what it holds, as the shell's `>>` would; `>` emptied it already).
        Output::Descriptor(_, path) => return pull_through(repo, id, &path, true, fetches, workers, progress).await,
        Output::Special(path) => return pull_through(repo, id, &path, false, fetches, workers, progress).await,
        // Through a symlink, the file it leads to is replaced, not the link (renaming over the
        // link would turn it into a file and leave the file it led to as it was).
        Output::File(path) => path,
    };
    let target = target.as_path();
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("pull");
    let prefix = format!(".{name}.partial-");
    remove_abandoned(dir, &prefix);
    let tmp = dir.join(format!("{prefix}{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;
    // Held while the pull writes, so that another pull into the same file knows it is not
    // abandoned ([`remove_abandoned`]); released when the file closes, after the rename. A
    // filesystem without locks does not stop the restore: there a pull idle for a minute may
    // lose its file to another, and fails saying so at its rename.
    if let Err(e) = file.lock() {
        tracing::warn!(file = %tmp.display(), error = %e, "cannot lock the pull's temporary file");
    }
    // No buffer in between: each batch of blobs (up to 2 MiB) is one `writev`.
    let r = pull(repo, id, WritebackFile::new(file), fetches, workers, progress).await;
    let finish = || -> Result<PullStats> {
        let (stats, file) = r?;
        file.sync().map_err(|e| Error::io(format!("cannot write {} to disk", tmp.display()), e))?;
        std::fs::rename(&tmp, target)
            .map_err(|e| Error::io(format!("cannot rename {} into {}", tmp.display(), target.display()), e))?;
        sync_dir(dir).map_err(|e| Error::io(format!("cannot write the directory {} to disk", dir.display()), e))?;
        Ok(stats)
    };
    let res = finish();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

impl std::io::Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_vectored(&[std::io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let n = self.file.write_vectored(bufs)?;
        self.written += n as u64;
        if let Some((offset, len)) = self.window.step(self.written) {
            start_writeback(&self.file, offset, len);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Writes all of `bufs` with as few system calls as the output takes (one `writev` per batch
/// for a file or a pipe), without copying them into a buffer first.
pub fn write_all_vectored(out: &mut impl std::io::Write, bufs: &[Vec<u8>]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> =
        bufs.iter().filter(|b| !b.is_empty()).map(|b| std::io::IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes snapshot `id` to `out` and hands `out` back. On error, what was written is a correct
/// prefix of the stream.
pub async fn pull<W: std::io::Write + Send + 'static>(
    repo: &Repository,
    id: &SnapshotId,
    out: W,
    fetches: usize,
    workers: usize,
    progress: Arc<Progress>,
) -> Result<(PullStats, W)> {
    let started = std::time::Instant::now();
    let snap = repo.snapshot(id).await?;
    progress.total.store(snap.size, std::sync::atomic::Ordering::Relaxed);
    let index = repo.load_lookup().await?;
    for (ix, why) in &index.damaged {
        tracing::warn!(index = %ix, error = %why, "a damaged index was skipped");
    }
    let lists = match &snap.root {
        kanister_repo::snapshot::Root::Stream { lists } => lists,
        kanister_repo::snapshot::Root::Tree { path, .. } => {
            return Err(Error::WrongKind(format!(
                "snapshot {} is a directory tree of {path}: restore it with `kanister-agent restore`",
                id.short()
            )));
        }
    };
    // Fail before writing anything when a chunk list is already known to be missing.
    for list in lists {
        if index.locate(list)?.is_none() {
            return Err(Error::MissingBlob { blob: *list, snapshot: id.to_string() });
        }
    }
    let index: &dyn Locate = &index;
    let keys = repo.keys().clone();
    let store = repo.store().clone();
    let max_request = if store.is_local() { MAX_REQUEST } else { MAX_REMOTE_REQUEST };
    let requests = futures::stream::iter(lists.iter())
        .then(|list| async move {
            let bytes = repo.read_blob(index, list).await?;
            let ids = kanister_repo::snapshot::decode_id_list(&bytes)?;
            plan_up_to(index, &ids, id, max_request)
        })
        .map_ok(|reqs| futures::stream::iter(reqs.into_iter().map(Ok::<_, Error>)))
        .try_flatten();
    // From a local disk a request is read and decoded in one task (see [`fetch_and_decode`]);
    // from an object store, the fetches run apart from the decoding, which keeps the cores busy
    // while requests wait on the network.
    let decoded: futures::stream::BoxStream<'_, Result<(u64, Vec<Vec<u8>>)>> = if store.is_local() {
        let in_flight = fetches.max(1) * LOCAL_TASKS_PER_FETCH;
        requests.map_ok(|req| fetch_and_decode(&store, keys.clone(), req)).try_buffered(in_flight).boxed()
    } else {
        requests
            .map_ok(|req| fetch_request(&store, req))
            .try_buffered(fetches.max(1))
            .map_ok(|(req, bytes)| decode_request(keys.clone(), req, bytes))
            .try_buffered(workers.max(1) * 2)
            .boxed()
    };
    let mut decoded = std::pin::pin!(decoded);

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Vec<u8>>>(4);
    let write_progress = progress.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<W> {
        let mut out = out;
        while let Some(blobs) = rx.blocking_recv() {
            write_all_vectored(&mut out, &blobs).map_err(|e| Error::io("writing the output failed", e))?;
            Progress::add(&write_progress.bytes_read, blobs.iter().map(|b| b.len() as u64).sum());
        }
        out.flush().map_err(|e| Error::io("writing the output failed", e))?;
        Ok(out)
    });

    let (mut written, mut fetched_bytes, mut chunks) = (0u64, 0u64, 0u64);
    let fed = async {
        while let Some((n, blobs)) = decoded.try_next().await? {
            fetched_bytes += n;
            Progress::add(&progress.bytes_stored, n);
            written += blobs.iter().map(|b| b.len() as u64).sum::<u64>();
            chunks += blobs.len() as u64;
            if tx.send(blobs).await.is_err() {
                break; // the writer failed: its error is the one to report
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    drop(tx);
    // Whatever happened upstream, the writer finishes what it was given: a correct prefix.
    let out = writer.await.map_err(|e| Error::Task(e.to_string()))??;
    fed?;
    if written != snap.size {
        return Err(Error::Damaged(format!(
            "snapshot {id} promised {} bytes but its chunks hold {written}",
            snap.size
        )));
    }
    let duration = started.elapsed().as_secs_f64();
    let stats = PullStats {
        snapshot_id: *id,
        bytes_written: written,
        bytes_fetched: fetched_bytes,
        chunks,
        throughput_bytes_per_sec: if duration > 0.0 { written as f64 / duration } else { 0.0 },
        duration_secs: duration,
    };
    Ok((stats, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_names_are_recognized_and_lookalikes_are_not() {
        for (path, fd) in [
            ("-", Some(1)),
            ("/dev/stdout", Some(1)),
            ("/dev/stderr", Some(2)),
            ("/dev/fd/1", Some(1)),
            ("/dev/fd/7", Some(7)),
            ("/proc/self/fd/1", Some(1)),
            ("/proc/thread-self/fd/2", Some(2)),
            ("/proc/1234/fd/3", Some(3)),
            ("/dev/fd/+1", None),
            ("/dev/fd/", None),
            ("/dev/fd/1/x", None),
            ("/proc/self/fd/99999999999", None),
            ("/proc/x/fd/1", None),
            ("/proc/self/fdinfo/1", None),
            ("/dev/shm/dump.sql", None),
            ("dev/stdout", None),
            ("./-", None),
        ] {
            assert_eq!(descriptor(path), fd, "{path}");
        }
    }

    #[test]
    fn an_output_path_is_followed_link_by_link() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::os::unix::fs::symlink("/dev/stdout", d.join("to-stdout")).unwrap();
        std::os::unix::fs::symlink("to-stdout", d.join("chain")).unwrap();
        std::os::unix::fs::symlink("sub/new.sql", d.join("dangling")).unwrap();
        std::os::unix::fs::symlink("loop-b", d.join("loop-a")).unwrap();
        std::os::unix::fs::symlink("loop-a", d.join("loop-b")).unwrap();
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink("fifo", d.join("to-fifo")).unwrap();
        assert_eq!(output_of(&d.join("chain")).unwrap(), Output::Descriptor(1, "/dev/stdout".into()));
        assert_eq!(output_of(&d.join("dangling")).unwrap(), Output::File(d.join("sub/new.sql")));
        assert_eq!(output_of(&d.join("to-fifo")).unwrap(), Output::Special(d.join("fifo")));
        assert_eq!(output_of(&d.join("plain.sql")).unwrap(), Output::File(d.join("plain.sql")));
        let e = output_of(&d.join("loop-a")).unwrap_err().to_string();
        assert!(e.contains("cannot follow the symlinks at") && e.contains("loop-a"), "{e}");
    }

    /// Accepts at most `max` bytes per call, like a pipe that is nearly full.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl std::io::Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[std::io::IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.max {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn requests_stay_within_their_bound_and_keep_the_order() {
        use kanister_repo::index::IndexPack;
        let entries: Vec<PackEntry> = (0..40u32)
            .map(|i| PackEntry {
                id: BlobId([i as u8; 32]),
                kind: kanister_repo::BlobKind::Data,
                offset: i * 1000,
                length: 1000,
                raw_len: 1 << 20,
            })
            .collect();
        let ids: Vec<BlobId> = entries.iter().map(|e| e.id).collect();
        let mut index = crate::repository::MasterIndex::default();
        index.add_pack(IndexPack { id: PackId([7; 32]), size: 40_000, blobs: entries });
        let snap = SnapshotId([0; 32]);
        for (max, per) in [(MAX_REQUEST, 2), (MAX_REMOTE_REQUEST, 8)] {
            let reqs = plan_up_to(&index, &ids, &snap, max).unwrap();
            assert_eq!(reqs.len(), 40 / per, "{max}");
            assert!(reqs.iter().all(|r| r.raw <= max && r.blobs.len() == per));
            let order: Vec<BlobId> = reqs.iter().flat_map(|r| r.blobs.iter().map(|e| e.id)).collect();
            assert_eq!(order, ids);
        }
    }

    #[test]
    fn blobs_decode_alike_from_bytes_held_once_or_shared_and_a_flip_fails() {
        use kanister_repo::blob;
        let keys = kanister_repo::keys::MasterKey::generate().keys();
        let chunks: Vec<Vec<u8>> = (0..5u8)
            .map(|i| format!("INSERT INTO t VALUES ({i});\n").repeat(200 * (i as usize + 1)).into_bytes())
            .collect();
        let (mut pack, mut blobs) = (Vec::new(), Vec::new());
        for c in &chunks {
            let id = blob::blob_id(&keys, c);
            let e = blob::encode(&keys, kanister_repo::BlobKind::Data, id, c, 1).unwrap();
            blobs.push(PackEntry {
                id,
                kind: e.kind,
                offset: pack.len() as u32,
                length: e.bytes.len() as u32,
                raw_len: e.raw_len,
            });
            pack.extend_from_slice(&e.bytes);
        }
        let req = Request { pack: PackId([1; 32]), start: 0, end: pack.len() as u64, raw: 0, blobs };
        // Held once: decrypted where it lies. Shared: copied first, and the other holder's
        // bytes are left as they were.
        assert_eq!(decode_blobs(&keys, &req, Bytes::from(pack.clone())).unwrap(), chunks);
        let shared = Bytes::from(pack.clone());
        assert_eq!(decode_blobs(&keys, &req, shared.clone()).unwrap(), chunks);
        assert_eq!(shared, pack, "a shared buffer was decrypted in place");
        let mut bad = pack.clone();
        let at = req.blobs[3].offset as usize + 30;
        bad[at] ^= 1;
        assert!(decode_blobs(&keys, &req, Bytes::from(bad)).is_err());
    }

    #[test]
    fn short_writes_still_write_every_byte_in_order() {
        let bufs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; (i as usize * 37) % 101]).collect();
        let want: Vec<u8> = bufs.concat();
        for max in [1, 7, 100, 1 << 20] {
            let mut t = Trickle { got: Vec::new(), max, calls: 0 };
            write_all_vectored(&mut t, &bufs).unwrap();
            assert_eq!(t.got, want, "at most {max} bytes per call");
            if max == 1 << 20 {
                assert_eq!(t.calls, 1, "one call when the output takes it all");
            }
        }
    }

    #[test]
    fn a_pipe_gets_the_larger_buffer() {
        let (_r, w) = std::io::pipe().unwrap();
        let w = std::fs::File::from(std::os::fd::OwnedFd::from(w));
        widen_pipe(&w);
        let size = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap();
        let max: i32 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size").unwrap().trim().parse().unwrap();
        assert!(size >= PIPE_BUFFER.min(max), "pipe buffer {size}");
        // A file has no pipe buffer: nothing is asked of it (and nothing fails).
        widen_pipe(&tempfile::tempfile().unwrap());
    }
}
