//! Backing up a byte stream: read ▸ chunk ▸ hash ▸ dedup ▸ compress ▸ encrypt ▸ pack ▸ upload.
//!
//! Stages and their bounds:
//!
//! 1. one blocking thread reads the input (stdin, or a command's stdout) and cuts chunks with
//!    FastCDC; chunks go out in batches of ~1 MiB through a channel of `2 × workers` slots;
//! 2. up to `2 × workers` batches are hashed, checked against the index, and (when new)
//!    compressed and sealed on the blocking pool, results kept in stream order; a blob id is
//!    reserved before the CPU work, so two workers never encode or upload the same blob;
//! 3. the ordered results go into the current pack and the chunk list; a full pack is sealed
//!    and handed to an upload task, at most `uploads` at once (a semaphore);
//! 4. landed packs are indexed every few seconds while the push runs, so an interrupted push
//!    leaves findable packs, and the next push uploads only what had not landed;
//! 5. at the end: the last pack, a consolidated index, then the snapshot. Nothing refers to a
//!    pack before it has landed, so a crash at any point leaves a consistent repository.
//!
//! Memory is bounded by the channel slots, one pack being filled and `uploads` packs in
//! flight, whatever the size of the stream.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kanister_repo::blob::{BlobKind, EncodedBlob};
use kanister_repo::chunker::Chunker;
use kanister_repo::snapshot::{self, IDS_PER_LIST, Root, Snapshot, SnapshotStats};
use kanister_repo::{BlobId, SnapshotId};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::packer::{Dedup, Packer, process_chunk};
use crate::progress::Progress;
use crate::repository::{BackupMarker, Repository, hostname};

/// Where the bytes come from.
pub enum Source {
    /// Any reader (stdin, a file).
    Reader(Box<dyn Read + Send>),
    /// A command whose stdout is the stream; a non-zero exit fails the push.
    Command(Vec<String>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Only the program: arguments may hold secrets.
            Source::Command(c) => write!(f, "Command({})", c.first().map_or("", String::as_str)),
            Source::Reader(_) => f.write_str("Reader"),
        }
    }
}

/// Settings of a push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Tags of the snapshot.
    pub tags: BTreeMap<String, String>,
    /// Host recorded in the snapshot.
    pub hostname: String,
    /// CPU workers (chunks hashed/compressed/encrypted in parallel).
    pub workers: usize,
    /// Packs uploaded at once.
    pub uploads: usize,
    /// Refuse a recognised database dump that lacks its end line ([`crate::dumpcheck`]).
    pub check_dump: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            tags: BTreeMap::new(),
            hostname: hostname(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            uploads: 2,
            check_dump: true,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushStats {
    /// The new snapshot.
    pub snapshot_id: SnapshotId,
    /// Bytes read from the input.
    pub bytes_read: u64,
    /// Of those, bytes not already in the repository.
    pub bytes_new: u64,
    /// Bytes written to the store (packs, indexes, snapshot).
    pub bytes_uploaded: u64,
    /// Chunks in the stream.
    pub chunks: u64,
    /// Chunks that were new.
    pub chunks_new: u64,
    /// Packs written.
    pub packs_uploaded: u64,
    /// Packs left by an interrupted push that were indexed and reused.
    pub packs_recovered: u64,
    /// Fraction of the input already in the repository (0..1).
    pub dedup_ratio: f64,
    /// Input bytes per second.
    pub throughput_bytes_per_sec: f64,
    /// Wall time in seconds.
    pub duration_secs: f64,
}

/// Pushes a stream into the repository and writes a snapshot.
pub async fn push(repo: &Repository, source: Source, opts: &PushOptions, progress: Arc<Progress>) -> Result<PushStats> {
    push_until(repo, source, opts, progress, std::future::pending())
        .await?
        .ok_or_else(|| Error::Task("a push without cancellation was cancelled".into()))
}

/// Like [`push`], but gives up as soon as `cancel` completes, and then returns `Ok(None)`.
///
/// Cancellation is clean: the pipeline is dropped (an input [`Source::Command`] is killed, even
/// when it writes nothing), the backup marker is removed, and no snapshot is written. Packs that
/// had landed stay in the store, findable through the interim indexes or re-indexed by the next
/// push, which reuses them; `check` reports them at most as warnings. A cancel that arrives
/// while the snapshot object itself is being written may still leave that snapshot.
pub async fn push_until(
    repo: &Repository,
    source: Source,
    opts: &PushOptions,
    progress: Arc<Progress>,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<Option<PushStats>> {
    let started = Instant::now();
    let start_time = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let marker = BackupMarker::start(repo, &opts.hostname).await?;
    let result = tokio::select! {
        r = push_inner(repo, source, opts, &progress, started, start_time, &marker) => r.map(Some),
        () = cancel => Ok(None),
    };
    marker.finish(repo).await;
    result
}

async fn push_inner(
    repo: &Repository,
    source: Source,
    opts: &PushOptions,
    progress: &Arc<Progress>,
    started: Instant,
    start_time: String,
    marker: &BackupMarker,
) -> Result<PushStats> {
    let keys = repo.keys().clone();
    let config = repo.config().clone();
    let (dedup, packs_recovered, recovery_bytes) = crate::packer::prepare(repo).await?;
    let mut bytes_uploaded = recovery_bytes;

    let workers = opts.workers.max(1);
    let (tx, rx) = mpsc::channel::<Vec<Vec<u8>>>(workers * 2);
    let params = config.chunker;
    let seed = keys.chunker_seed;
    let reader_progress = progress.clone();
    // Kills the input command when this future is dropped (cancelled): the reader thread may be
    // blocked on the command's stdout and could not notice by itself.
    let child = Arc::new(ChildSlot::default());
    let _kill_on_drop = KillOnDrop(child.clone());
    let check_dump = opts.check_dump;
    let reader = tokio::task::spawn_blocking(move || {
        read_stream(source, params, seed, check_dump, tx, &reader_progress, &child)
    });

    let chunks = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let processed = chunks
        .map(|batch| {
            let (keys, dedup, progress) = (keys.clone(), dedup.clone(), progress.clone());
            let level = config.compression_level;
            tokio::task::spawn_blocking(move || -> Result<Vec<(BlobId, Option<EncodedBlob>)>> {
                let mut out = Vec::with_capacity(batch.len());
                for chunk in &batch {
                    let r = process_chunk(&keys, &dedup, BlobKind::Data, level, chunk)?;
                    if r.1.is_some() {
                        Progress::add(&progress.bytes_new, chunk.len() as u64);
                    }
                    Progress::add(&progress.chunks, 1);
                    out.push(r);
                }
                Ok(out)
            })
        })
        .buffered(workers * 2);
    let mut processed = Box::pin(processed);

    let mut out = Packer::new(repo, opts.uploads.max(1), config.pack_size as usize);
    let mut list: Vec<BlobId> = Vec::with_capacity(IDS_PER_LIST);
    let mut lists: Vec<BlobId> = Vec::new();
    let (mut n_chunks, mut n_new, mut new_bytes) = (0u64, 0u64, 0u64);

    let body = async {
        while let Some(r) = processed.next().await {
            for (id, blob) in r.map_err(|e| Error::Task(e.to_string()))?? {
                n_chunks += 1;
                list.push(id);
                if let Some(b) = blob {
                    n_new += 1;
                    new_bytes += b.raw_len as u64;
                    out.add(b, progress).await?;
                }
                if list.len() == IDS_PER_LIST {
                    let id = add_list(&keys, &dedup, &mut list, config.compression_level, &mut out, progress).await?;
                    lists.push(id);
                }
            }
            out.collect_landed(progress, false).await?;
        }
        Ok::<(), Error>(())
    };
    let body_result = body.await;
    drop(processed);
    // The reader's error (a failing command, an unreadable input) explains a short stream
    // better than anything downstream, so it wins.
    let read_result = reader.await.map_err(|e| Error::Task(e.to_string()))?;
    let verdict = read_result?;
    body_result?;

    if !list.is_empty() || lists.is_empty() {
        let id = add_list(&keys, &dedup, &mut list, config.compression_level, &mut out, progress).await?;
        lists.push(id);
    }
    let packs_uploaded = out.finish(progress).await?;
    bytes_uploaded += out.bytes_uploaded;

    let bytes_read = progress.bytes_read.load(std::sync::atomic::Ordering::Relaxed);
    let duration = started.elapsed().as_secs_f64();
    let mut snap = Snapshot {
        version: snapshot::SNAPSHOT_VERSION,
        time: start_time,
        hostname: opts.hostname.clone(),
        tags: {
            // How the input ended: a dump of a known tool with its end mark, or unverified.
            let mut tags = opts.tags.clone();
            if let Some(v) = verdict {
                tags.entry(crate::dumpcheck::INPUT_TAG.into()).or_insert_with(|| v.tag_value());
            }
            tags
        },
        root: Root::Stream { lists },
        size: bytes_read,
        stats: SnapshotStats {
            bytes_read,
            bytes_new: new_bytes,
            bytes_uploaded,
            chunks: n_chunks,
            chunks_new: n_new,
            duration_secs: duration,
            ..Default::default()
        },
        program: format!("kanister-agent {}", env!("CARGO_PKG_VERSION")),
        parent: None,
    };
    // The snapshot's own size is part of what this push uploaded; estimate it by encoding once.
    let (_, probe) = snap.encode(&keys);
    snap.stats.bytes_uploaded += probe.len() as u64;
    marker.ensure_alive()?;
    let (snapshot_id, snap_len) = repo.write_snapshot(&snap).await?;
    Progress::add(&progress.bytes_stored, snap_len);
    out.delete_interim().await;

    Ok(PushStats {
        snapshot_id,
        bytes_read,
        bytes_new: new_bytes,
        bytes_uploaded: snap.stats.bytes_uploaded,
        chunks: n_chunks,
        chunks_new: n_new,
        packs_uploaded,
        packs_recovered: packs_recovered as u64,
        dedup_ratio: if bytes_read == 0 { 0.0 } else { 1.0 - new_bytes as f64 / bytes_read as f64 },
        throughput_bytes_per_sec: if duration > 0.0 { bytes_read as f64 / duration } else { 0.0 },
        duration_secs: duration,
    })
}

/// Seals the chunk list so far as a list blob, adds it to the pack if new, returns its id.
async fn add_list(
    keys: &kanister_repo::Keys,
    dedup: &Dedup,
    list: &mut Vec<BlobId>,
    level: i32,
    out: &mut Packer<'_>,
    progress: &Progress,
) -> Result<BlobId> {
    let bytes = snapshot::encode_id_list(list);
    list.clear();
    let (id, blob) = process_chunk(keys, dedup, BlobKind::Tree, level, &bytes)?;
    if let Some(b) = blob {
        out.add(b, progress).await?;
    }
    Ok(id)
}

/// Chunks go to the workers in batches of about this many bytes: one hand-off to the blocking
/// pool per batch rather than per 64 KiB chunk (a sixteenth of the wake-ups and context
/// switches, which cost 15% of a push's CPU time when each chunk was its own task).
const BATCH_BYTES: usize = 512 << 10;

/// Reads the source, cuts chunks, sends them on in batches. Runs on a blocking thread.
fn read_stream(
    source: Source,
    params: kanister_repo::chunker::ChunkerParams,
    seed: u64,
    check_dump: bool,
    tx: mpsc::Sender<Vec<Vec<u8>>>,
    progress: &Progress,
    slot: &ChildSlot,
) -> Result<Option<crate::dumpcheck::Verdict>> {
    let (reader, has_child, program): (Box<dyn Read + Send>, _, _) = match source {
        Source::Reader(r) => (r, false, String::new()),
        Source::Command(argv) => {
            let program = argv
                .first()
                .cloned()
                .ok_or_else(|| Error::InputCommand { command: String::new(), status: "is empty".into() })?;
            let mut cmd = std::process::Command::new(&program);
            // The dump command has no business with the repository's or the store's secrets.
            crate::childenv::scrub(&mut cmd);
            let mut child = cmd
                .args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .map_err(|e| Error::InputCommand {
                    command: program.clone(),
                    status: format!("could not start: {e}"),
                })?;
            let stdout = child.stdout.take().expect("stdout is piped");
            slot.set(child);
            (Box::new(stdout), true, program)
        }
    };
    let checked = crate::dumpcheck::DumpCheck::new(reader).refusing(check_dump);
    let outcome = checked.outcome();
    let mut stopped_early = false;
    let (mut batch, mut batch_bytes) = (Vec::new(), 0usize);
    for chunk in Chunker::new(checked, params, seed) {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                if let Some(Err(cut)) = outcome.get() {
                    // A dump cut off: the command's own failure, when it has one, says why.
                    if has_child
                        && let Ok(status) = slot.wait()
                        && !status.success()
                    {
                        return Err(Error::InputCommand { command: program, status: describe_exit(status) });
                    }
                    return Err(Error::IncompleteDump(cut.clone()));
                }
                slot.kill();
                return Err(Error::io("reading the input failed", std::io::Error::other(e.to_string())));
            }
        };
        Progress::add(&progress.bytes_read, chunk.len() as u64);
        batch_bytes += chunk.len();
        batch.push(chunk);
        if batch_bytes >= BATCH_BYTES {
            batch_bytes = 0;
            if tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                // The pipeline stopped (an error downstream, or cancellation).
                stopped_early = true;
                break;
            }
        }
    }
    if !stopped_early && !batch.is_empty() && tx.blocking_send(batch).is_err() {
        stopped_early = true;
    }
    if has_child {
        if stopped_early {
            slot.kill();
        }
        let status = slot.wait().map_err(|e| Error::io("waiting for the input command", e))?;
        if !status.success() && !stopped_early {
            return Err(Error::InputCommand { command: program, status: describe_exit(status) });
        }
    }
    Ok(outcome.get().and_then(|o| o.as_ref().ok().copied()))
}

/// The input command, shared by the reader thread (which waits for it) and the pipeline's
/// [`KillOnDrop`] guard. The thread never holds the lock while blocked, so the guard can always
/// kill the command.
#[derive(Debug, Default)]
struct ChildSlot {
    child: std::sync::Mutex<Option<std::process::Child>>,
    /// Set when the pipeline was dropped: a command started afterwards is killed at once.
    dropped: std::sync::atomic::AtomicBool,
}

impl ChildSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<std::process::Child>> {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, child: std::process::Child) {
        let mut g = self.lock();
        *g = Some(child);
        if self.dropped.load(std::sync::atomic::Ordering::SeqCst) {
            drop(g);
            self.kill();
        }
    }

    fn kill(&self) {
        if let Some(c) = self.lock().as_mut() {
            let _ = c.kill();
        }
    }

    /// Waits for the command to end (polling, so that [`ChildSlot::kill`] is never blocked).
    fn wait(&self) -> std::io::Result<std::process::ExitStatus> {
        loop {
            {
                let mut g = self.lock();
                let c = g.as_mut().ok_or_else(|| std::io::Error::other("no command"))?;
                if let Some(status) = c.try_wait()? {
                    g.take();
                    return Ok(status);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Kills the input command when the push pipeline is dropped before the command ended.
#[derive(Debug)]
struct KillOnDrop(Arc<ChildSlot>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.dropped.store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.kill();
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "failed".into(),
    }
}
