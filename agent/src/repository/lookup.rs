//! The index that backups and restores look blobs up in, in memory that does not grow with the
//! repository.
//!
//! The index objects of the store are kept on local disk as sorted runs
//! ([`kanister_repo::index_run`]): pages of entries sorted by blob id, with the first id of
//! every page (the fence) held in memory. A lookup reads one 4 KiB page (rarely two) and
//! verifies its MAC. A blob costs ~50 bytes of disk and about half a byte of memory (its
//! share of the fence and the pack table); ten million blobs are ~480 MB in the cache directory
//! and ~5.5 MB of fence and pack tables in memory.
//!
//! The cache follows the store, never the other way round:
//! - a run lists the index objects it was made from; a run naming one the store no longer has
//!   (prune compacted it away) is deleted, so a run never points at a pack prune removed;
//! - index objects no run covers are read from the store and sorted into a new run (an external
//!   sort: at most [`SORT_ENTRIES`] entries in memory, spilled to sorted files and merged);
//! - more than [`MAX_RUNS`] runs: the smallest are merged into one;
//! - a run whose footer or a page does not verify (damage, truncation, an edit: the MACs are
//!   keyed by the repository) is deleted and rebuilt; a backup that meets a damaged page stores
//!   the chunk again rather than trust it, a restore stops and says to run again.
//!
//! Files are written under a temporary name and renamed, so a kill leaves a whole run or a
//! temporary file, which a later load removes. Several agents may share a cache directory:
//! runs are immutable, and an open run survives another agent deleting it.
//!
//! Without a usable cache directory the index objects are held in memory, as a
//! [`MasterIndex`], with a warning.

use std::collections::{BinaryHeap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kanister_repo::index::IndexFile;
use kanister_repo::index_run::{PAGE_LEN, Page, RUN_ENTRY_LEN, RunEntry, RunFooter, RunKey, TAIL_LEN, encode_page};
use kanister_repo::pack::PackEntry;
use kanister_repo::{BlobId, IdMap, IdSet, IndexId, PackId};
use rand::RngCore;

use super::master_index::MasterIndex;
use super::{INDEX, Repository};
use crate::error::{Error, Result};
use crate::store::StoreError;

/// Entries sorted in memory before they are spilled to a file while a run is built (52 bytes
/// each: ~27 MB).
pub const SORT_ENTRIES: usize = 512 * 1024;
/// Runs kept before the smallest are merged.
pub const MAX_RUNS: usize = 8;
/// Index objects read from the store at once while a run is built.
const BUILD_CONCURRENCY: usize = 4;
/// A temporary file this old was left by a killed agent.
const STALE_TEMP: Duration = Duration::from_secs(3600);
const RUN_SUFFIX: &str = ".kix";
const TEMP_PREFIX: &str = ".tmp-";

/// Something blobs can be looked up in.
pub trait Locate: Send + Sync {
    /// The pack and entry of a blob; `None` when no index lists it.
    fn locate(&self, id: &BlobId) -> Result<Option<(PackId, PackEntry)>>;
}

impl Locate for MasterIndex {
    fn locate(&self, id: &BlobId) -> Result<Option<(PackId, PackEntry)>> {
        Ok(self.get(id).map(|l| (self.pack_id(&l), l.entry)))
    }
}

/// The index of a backup or restore: runs on disk, plus what is held in memory (packs added
/// while it runs, or every index object when there is no cache directory).
#[derive(Debug, Default)]
pub struct LookupIndex {
    runs: Vec<RunFile>,
    memory: MasterIndex,
    forgotten: IdSet<PackId>,
    /// Index objects that could not be read, with the reason.
    pub damaged: Vec<(IndexId, String)>,
}

impl LookupIndex {
    /// Whether a blob is indexed.
    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        Ok(self.locate(id)?.is_some())
    }

    /// Whether a pack is indexed.
    pub fn has_pack(&self, id: &PackId) -> bool {
        self.memory.has_pack(id) || self.runs.iter().any(|r| r.pack_pos.contains_key(id))
    }

    /// Adds a pack's blobs (held in memory).
    pub fn add_pack(&mut self, p: kanister_repo::index::IndexPack) {
        self.memory.add_pack(p);
    }

    /// Stops finding blobs in the given packs; a blob also stored elsewhere is found there.
    pub fn forget_blobs_in(&mut self, packs: &HashSet<PackId>) {
        self.memory.forget_blobs_in(packs);
        self.forgotten.extend(packs.iter().copied());
    }

    /// Number of blob entries (a blob stored in two packs counts twice).
    pub fn entries(&self) -> u64 {
        self.memory.len() as u64 + self.runs.iter().map(|r| r.footer.entries).sum::<u64>()
    }

    /// Number of runs on disk.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

impl Locate for LookupIndex {
    fn locate(&self, id: &BlobId) -> Result<Option<(PackId, PackEntry)>> {
        if let Some(found) = self.memory.locate(id)? {
            return Ok(Some(found));
        }
        for r in &self.runs {
            if let Some(found) = r.find(id, &self.forgotten)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}

/// One run on disk, its footer verified.
#[derive(Debug)]
struct RunFile {
    path: PathBuf,
    file: File,
    key: RunKey,
    footer: RunFooter,
    pack_pos: IdMap<PackId, u32>,
    /// Set once a page failed to verify (the file is then deleted; it stays open).
    damaged: AtomicBool,
}

impl RunFile {
    /// Opens and verifies a run's footer.
    fn open(path: &Path, key: &RunKey) -> std::result::Result<Self, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len < TAIL_LEN as u64 {
            return Err("shorter than a run's tail".into());
        }
        let mut tail = [0u8; TAIL_LEN];
        file.read_exact_at(&mut tail, len - TAIL_LEN as u64).map_err(|e| e.to_string())?;
        let footer_len = RunFooter::footer_len(&tail).map_err(|e| e.to_string())?;
        let pages_len = (len - TAIL_LEN as u64)
            .checked_sub(footer_len)
            .filter(|p| p % PAGE_LEN as u64 == 0)
            .ok_or("its footer length does not fit the file")?;
        let mut footer = vec![0u8; footer_len as usize];
        file.read_exact_at(&mut footer, pages_len).map_err(|e| e.to_string())?;
        let footer = RunFooter::decode(key, &footer).map_err(|e| e.to_string())?;
        if footer.fence.len() as u64 != pages_len / PAGE_LEN as u64 {
            return Err("its fence does not match its pages".into());
        }
        let pack_pos = footer.packs.iter().enumerate().map(|(i, (id, _))| (*id, i as u32)).collect();
        Ok(RunFile {
            path: path.to_path_buf(),
            file,
            key: key.clone(),
            footer,
            pack_pos,
            damaged: AtomicBool::new(false),
        })
    }

    fn damage(&self, what: String) -> Error {
        if !self.damaged.swap(true, Ordering::Relaxed) {
            tracing::warn!(run = %self.path.display(), error = %what, "removing a damaged index cache file");
            let _ = std::fs::remove_file(&self.path);
        }
        Error::IndexCache(format!("{}: {what}", self.path.display()))
    }

    /// Reads and verifies page `no` into `buf`.
    fn page<'b>(&self, no: usize, buf: &'b mut [u8; PAGE_LEN]) -> Result<Page<'b>> {
        if self.damaged.load(Ordering::Relaxed) {
            return Err(self.damage("damaged earlier".into()));
        }
        self.file
            .read_exact_at(buf, no as u64 * PAGE_LEN as u64)
            .map_err(|e| self.damage(format!("reading page {no}: {e}")))?;
        Page::open(&self.key, &self.footer.run_id, no as u64, buf).map_err(|e| self.damage(e.to_string()))
    }

    /// The entry at `i` of `page` as a location, checking its pack position.
    fn location(&self, page: &Page<'_>, i: usize) -> Result<(PackId, PackEntry)> {
        let e = page.entry(i).map_err(|e| self.damage(e.to_string()))?;
        let (pack, _) = self
            .footer
            .packs
            .get(e.pack as usize)
            .ok_or_else(|| self.damage(format!("an entry names pack {} of {}", e.pack, self.footer.packs.len())))?;
        Ok((*pack, e.entry))
    }

    /// The first location of `id` in a pack not in `forgotten`.
    fn find(&self, id: &BlobId, forgotten: &IdSet<PackId>) -> Result<Option<(PackId, PackEntry)>> {
        let fence = &self.footer.fence;
        // The first page whose first id is not less than `id`; `id` may also end the page
        // before it, and entries of one id may continue over several pages.
        let first_not_less = fence.partition_point(|f| f.0 < id.0);
        let mut no = first_not_less.saturating_sub(1);
        let mut buf = [0u8; PAGE_LEN];
        while no < fence.len() {
            if no >= first_not_less && fence[no] != *id {
                break;
            }
            let page = self.page(no, &mut buf)?;
            let mut i = page.lower_bound(id);
            while i < page.len() && page.id(i) == &id.0[..] {
                let found = self.location(&page, i)?;
                if !forgotten.contains(&found.0) {
                    return Ok(Some(found));
                }
                i += 1;
            }
            if i < page.len() {
                break;
            }
            no += 1;
        }
        Ok(None)
    }

    /// Every entry in order, with its pack's id.
    fn entries(&self) -> impl Iterator<Item = Result<(PackId, PackEntry)>> + '_ {
        let mut buf = [0u8; PAGE_LEN];
        (0..self.footer.fence.len()).flat_map(move |no| {
            let page: Result<Vec<(PackId, PackEntry)>> =
                self.page(no, &mut buf).and_then(|p| (0..p.len()).map(|i| self.location(&p, i)).collect());
            match page {
                Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            }
        })
    }
}

/// Writes a run: pages as entries come (sorted), the footer at the end, then renames the
/// temporary file into place.
struct RunWriter {
    out: BufWriter<File>,
    temp: PathBuf,
    dir: PathBuf,
    key: RunKey,
    run_id: [u8; 16],
    page: Vec<RunEntry>,
    fence: Vec<BlobId>,
    entries: u64,
    last: Option<([u8; 32], u32)>,
}

impl RunWriter {
    fn new(dir: &Path, key: &RunKey) -> std::io::Result<Self> {
        let mut run_id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut run_id);
        let temp = dir.join(format!("{TEMP_PREFIX}{}", hex::encode(run_id)));
        let out = BufWriter::with_capacity(256 * 1024, File::create_new(&temp)?);
        Ok(RunWriter {
            out,
            temp,
            dir: dir.to_path_buf(),
            key: key.clone(),
            run_id,
            page: Vec::with_capacity(kanister_repo::index_run::PER_PAGE),
            fence: Vec::new(),
            entries: 0,
            last: None,
        })
    }

    /// Adds the next entry; an entry equal to the one before (the same blob in the same pack,
    /// from two index objects) is written once.
    fn push(&mut self, e: RunEntry) -> std::io::Result<()> {
        let k = e.sort_key();
        if let Some(last) = self.last {
            if last == k {
                return Ok(());
            }
            debug_assert!(last < k, "run entries come sorted");
        }
        self.last = Some(k);
        self.page.push(e);
        self.entries += 1;
        if self.page.len() == kanister_repo::index_run::PER_PAGE {
            self.flush_page()?;
        }
        Ok(())
    }

    fn flush_page(&mut self) -> std::io::Result<()> {
        if self.page.is_empty() {
            return Ok(());
        }
        self.fence.push(self.page[0].entry.id);
        let bytes = encode_page(&self.key, &self.run_id, self.fence.len() as u64 - 1, &self.page);
        self.page.clear();
        self.out.write_all(&bytes)
    }

    fn finish(mut self, index_ids: Vec<IndexId>, packs: Vec<(PackId, u64)>) -> std::io::Result<PathBuf> {
        self.flush_page()?;
        let fence = std::mem::take(&mut self.fence);
        let footer = RunFooter { run_id: self.run_id, entries: self.entries, index_ids, packs, fence };
        self.out.write_all(&footer.encode(&self.key))?;
        self.out.flush()?;
        // A cache: no fsync. A run torn by a crash fails its MACs and is built again.
        let path = self.dir.join(format!("run-{}{RUN_SUFFIX}", hex::encode(self.run_id)));
        std::fs::rename(&self.temp, &path)?;
        Ok(path)
    }
}

impl Drop for RunWriter {
    fn drop(&mut self) {
        // Not finished (an error or a panic): nothing is left behind. After `finish` the
        // temporary name no longer exists and this fails quietly.
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Merges sorted sources into `out`, in order; equal entries are written once (by the writer).
fn merge<I>(mut sources: Vec<I>, out: &mut RunWriter) -> Result<()>
where
    I: Iterator<Item = Result<RunEntry>>,
{
    let mut heads: Vec<Option<RunEntry>> = Vec::with_capacity(sources.len());
    let mut heap = BinaryHeap::new();
    for (i, s) in sources.iter_mut().enumerate() {
        let head = s.next().transpose()?;
        if let Some(e) = &head {
            heap.push(std::cmp::Reverse((e.sort_key(), i)));
        }
        heads.push(head);
    }
    while let Some(std::cmp::Reverse((_, i))) = heap.pop() {
        let e = heads[i].take().expect("a source in the heap has a head");
        out.push(e).map_err(|err| Error::io("writing an index cache run", err))?;
        heads[i] = sources[i].next().transpose()?;
        if let Some(next) = &heads[i] {
            heap.push(std::cmp::Reverse((next.sort_key(), i)));
        }
    }
    Ok(())
}

/// Sorts entries in run order ([`RunEntry::sort_key`], compared in place).
fn sort_run(entries: &mut [RunEntry]) {
    entries.sort_unstable_by(|a, b| a.entry.id.0.cmp(&b.entry.id.0).then(a.pack.cmp(&b.pack)));
}

/// A sorted spill file of a run being built.
struct Spill(tempfile::NamedTempFile);

impl Spill {
    fn write(dir: &Path, entries: &mut Vec<RunEntry>) -> std::io::Result<Self> {
        sort_run(entries);
        let file = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir)?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        let mut b = Vec::with_capacity(RUN_ENTRY_LEN);
        for e in entries.drain(..) {
            b.clear();
            e.encode_into(&mut b);
            out.write_all(&b)?;
        }
        out.flush()?;
        Ok(Spill(out.into_inner().map_err(|e| e.into_error())?))
    }

    fn read(&self) -> std::io::Result<impl Iterator<Item = Result<RunEntry>> + use<>> {
        let mut r = BufReader::with_capacity(64 * 1024, self.0.reopen()?);
        let mut b = [0u8; RUN_ENTRY_LEN];
        Ok(std::iter::from_fn(move || match r.read_exact(&mut b) {
            Ok(()) => Some(RunEntry::decode(&b).map_err(Error::from)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
            Err(e) => Some(Err(Error::io("reading an index cache spill", e))),
        }))
    }
}

/// Builds one run from index objects as they arrive: sorted in memory up to [`SORT_ENTRIES`],
/// spilled, merged at the end.
struct RunBuilder {
    dir: PathBuf,
    key: RunKey,
    packs: Vec<(PackId, u64)>,
    pack_pos: IdMap<PackId, u32>,
    index_ids: Vec<IndexId>,
    buf: Vec<RunEntry>,
    spills: Vec<Spill>,
}

impl RunBuilder {
    fn new(dir: &Path, key: &RunKey) -> Self {
        RunBuilder {
            dir: dir.to_path_buf(),
            key: key.clone(),
            packs: Vec::new(),
            pack_pos: IdMap::default(),
            index_ids: Vec::new(),
            buf: Vec::new(),
            spills: Vec::new(),
        }
    }

    /// Adds an index object's packs (a pack already added is skipped: its content never
    /// changes). The sort buffer is allocated once, at [`SORT_ENTRIES`], and spilled before a
    /// pack would overflow it (only a pack larger than the buffer by itself grows it).
    async fn add(&mut self, id: IndexId, f: IndexFile) -> Result<()> {
        self.index_ids.push(id);
        for p in f.packs {
            if self.pack_pos.contains_key(&p.id) {
                continue;
            }
            if !self.buf.is_empty() && self.buf.len() + p.blobs.len() > SORT_ENTRIES {
                self.spill().await?;
            }
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(SORT_ENTRIES.max(p.blobs.len()));
            }
            let pos = self.packs.len() as u32;
            self.packs.push((p.id, p.size));
            self.pack_pos.insert(p.id, pos);
            self.buf.extend(p.blobs.into_iter().map(|entry| RunEntry { pack: pos, entry }));
        }
        Ok(())
    }

    /// Sorts the buffer into a spill file, on the blocking pool; the buffer is kept for reuse.
    async fn spill(&mut self) -> Result<()> {
        let (dir, mut buf) = (self.dir.clone(), std::mem::take(&mut self.buf));
        let (spill, buf) = tokio::task::spawn_blocking(move || (Spill::write(&dir, &mut buf), buf))
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        self.buf = buf;
        self.spills.push(spill.map_err(|e| Error::io("writing an index cache spill", e))?);
        Ok(())
    }

    /// Sorts what is left, merges the spills and writes the run.
    fn finish(mut self) -> Result<PathBuf> {
        let io = |e| Error::io(format!("writing an index cache run in {}", self.dir.display()), e);
        let mut out = RunWriter::new(&self.dir, &self.key).map_err(io)?;
        if self.spills.is_empty() {
            sort_run(&mut self.buf);
            for e in self.buf.drain(..) {
                out.push(e).map_err(io)?;
            }
        } else {
            if !self.buf.is_empty() {
                self.spills.push(Spill::write(&self.dir, &mut self.buf).map_err(io)?);
            }
            let sources = self.spills.iter().map(Spill::read).collect::<std::io::Result<Vec<_>>>().map_err(io)?;
            merge(sources, &mut out)?;
        }
        out.finish(self.index_ids, self.packs).map_err(io)
    }
}

/// Merges runs into one: their entries with pack positions of a joint pack table.
fn merge_runs(dir: &Path, key: &RunKey, runs: &[&RunFile]) -> Result<PathBuf> {
    let io = |e| Error::io(format!("writing an index cache run in {}", dir.display()), e);
    let mut packs: Vec<(PackId, u64)> = Vec::new();
    let mut pack_pos: IdMap<PackId, u32> = IdMap::default();
    let mut index_ids: Vec<IndexId> = Vec::new();
    for r in runs {
        for (id, size) in &r.footer.packs {
            pack_pos.entry(*id).or_insert_with(|| {
                packs.push((*id, *size));
                packs.len() as u32 - 1
            });
        }
        index_ids.extend(r.footer.index_ids.iter().copied());
    }
    let mut seen = IdSet::default();
    index_ids.retain(|i| seen.insert(*i));
    let mut out = RunWriter::new(dir, key).map_err(io)?;
    let pack_pos = &pack_pos;
    let sources = runs
        .iter()
        .map(|r| r.entries().map(move |e| e.map(|(pack, entry)| RunEntry { pack: pack_pos[&pack], entry })))
        .collect();
    merge(sources, &mut out)?;
    out.finish(index_ids, packs).map_err(io)
}

/// Where a repository's runs go: `root/index-v1/<name from the key>`, created private.
fn repository_dir(root: &Path, key: &RunKey) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = root.join("index-v1").join(key.repository_name());
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
    let meta = std::fs::metadata(&dir)?;
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(std::io::Error::other(format!("{} belongs to another user", dir.display())));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir)
}

/// Opens the runs in `dir`: keeps those covering only index objects in `listed`, deletes the
/// others (stale or damaged) and temporary files left by a killed agent.
fn open_runs(dir: &Path, key: &RunKey, listed: &IdSet<IndexId>) -> std::io::Result<Vec<RunFile>> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name.starts_with(TEMP_PREFIX) {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > STALE_TEMP);
            if old {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        if !name.ends_with(RUN_SUFFIX) {
            continue;
        }
        match RunFile::open(&path, key) {
            Ok(r) if r.footer.index_ids.iter().all(|i| listed.contains(i)) => runs.push(r),
            Ok(_) => {
                tracing::debug!(run = %path.display(), "removing an index cache run of index objects that are gone");
                let _ = std::fs::remove_file(&path);
            }
            // Deleted by another agent between the listing and the open.
            Err(_) if !path.exists() => {}
            Err(why) => {
                tracing::warn!(run = %path.display(), error = %why, "removing a damaged index cache run");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(runs)
}

impl Repository {
    /// The index a backup or restore looks blobs up in: on-disk runs in the cache directory
    /// brought up to date with the store's index objects (see the module documentation), or
    /// every index object in memory when there is no usable cache directory. Damaged index
    /// objects are listed in [`LookupIndex::damaged`] rather than failing the load.
    pub async fn load_lookup(&self) -> Result<LookupIndex> {
        let key = RunKey::of(self.keys());
        let dir = match self.cache_root() {
            Some(root) => match repository_dir(root, &key) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    tracing::warn!(
                        dir = %root.display(), error = %e,
                        "the index cache directory is unusable: holding the index in memory \
                         (set KANISTER_CACHE_DIR to a writable directory)"
                    );
                    None
                }
            },
            None => None,
        };
        for attempt in 0..2 {
            let listed: IdSet<IndexId> =
                self.store().list(INDEX).await?.iter().filter_map(|o| o.key.rsplit('/').next()?.parse().ok()).collect();
            let mut li = LookupIndex::default();
            if let Some(dir) = &dir {
                let (d, k, l) = (dir.clone(), key.clone(), listed.clone());
                li.runs = tokio::task::spawn_blocking(move || open_runs(&d, &k, &l))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))?
                    .map_err(|e| Error::io(format!("reading the index cache {}", dir.display()), e))?;
            }
            let covered: IdSet<IndexId> = li.runs.iter().flat_map(|r| r.footer.index_ids.iter().copied()).collect();
            let new: Vec<IndexId> = listed.iter().filter(|i| !covered.contains(i)).copied().collect();
            let vanished = if new.is_empty() {
                false
            } else {
                match &dir {
                    Some(dir) => self.add_run(&mut li, dir, &key, new).await?,
                    None => self.add_in_memory(&mut li, new).await,
                }
            };
            // An index deleted between list and get was superseded by a consolidated one
            // written before the deletion: list again to pick that one up.
            if vanished && attempt == 0 {
                continue;
            }
            if let Some(dir) = &dir
                && li.runs.len() > MAX_RUNS
            {
                compact(&mut li, dir, &key).await?;
            }
            return Ok(li);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// The index objects `ids` as a new run; falls back to memory when the run cannot be
    /// written (a full disk). Returns whether an index object vanished.
    async fn add_run(&self, li: &mut LookupIndex, dir: &Path, key: &RunKey, ids: Vec<IndexId>) -> Result<bool> {
        let mut builder = RunBuilder::new(dir, key);
        let mut vanished = false;
        let mut failed = None;
        let mut objects = self.index_objects(ids.clone(), BUILD_CONCURRENCY);
        while let Some((id, r)) = objects.next().await {
            match r {
                Ok(f) => {
                    if let Err(e) = builder.add(id, f).await {
                        failed = Some(e);
                        break;
                    }
                }
                Err(Error::Store(StoreError::NotFound(_))) => vanished = true,
                Err(e) => li.damaged.push((id, e.to_string())),
            }
        }
        drop(objects);
        let built = match failed {
            Some(e) => Err(e),
            None => tokio::task::spawn_blocking(move || {
                let key = builder.key.clone();
                let path = builder.finish()?;
                RunFile::open(&path, &key).map_err(|why| Error::IndexCache(format!("{}: {why}", path.display())))
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))?,
        };
        match built {
            Ok(run) => li.runs.push(run),
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the index cache: holding new index objects in memory");
                li.damaged.clear();
                return Ok(self.add_in_memory(li, ids).await);
            }
        }
        Ok(vanished)
    }

    /// Reads index objects `ids` into memory. Returns whether one vanished.
    async fn add_in_memory(&self, li: &mut LookupIndex, ids: Vec<IndexId>) -> bool {
        let vanished = self.merge_index_objects(&mut li.memory, ids).await;
        li.damaged.append(&mut li.memory.damaged);
        vanished
    }
}

/// Merges the smallest runs until at most [`MAX_RUNS`] are left (size-tiered: a large run is
/// rewritten only when the runs next to it in size have grown as large).
async fn compact(li: &mut LookupIndex, dir: &Path, key: &RunKey) -> Result<()> {
    let mut runs = std::mem::take(&mut li.runs);
    runs.sort_by_key(|r| r.footer.entries);
    let take = runs.len() - MAX_RUNS + 1;
    let small: Vec<RunFile> = runs.drain(..take).collect();
    let (d, k) = (dir.to_path_buf(), key.clone());
    let merged = tokio::task::spawn_blocking(move || {
        let refs: Vec<&RunFile> = small.iter().collect();
        let merged = merge_runs(&d, &k, &refs).and_then(|path| {
            RunFile::open(&path, &k).map_err(|why| Error::IndexCache(format!("{}: {why}", path.display())))
        });
        (merged, small)
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?;
    match merged {
        (Ok(run), small) => {
            for r in &small {
                let _ = std::fs::remove_file(&r.path);
            }
            runs.push(run);
        }
        // A failed merge loses nothing: the small runs stay.
        (Err(e), small) => {
            tracing::warn!(error = %e, "cannot merge index cache runs; keeping them");
            runs.extend(small);
        }
    }
    li.runs = runs;
    Ok(())
}
