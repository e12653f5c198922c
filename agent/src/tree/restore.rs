//! Restoring a directory tree into a target directory.
//!
//! Safety: every name is checked before anything is created for it (no `/`, `.`, `..`, NUL,
//! nor empty names); the walk only descends into directories it created or found as real
//! directories (a symlink in the way is replaced, never followed); files are created with
//! `O_EXCL | O_NOFOLLOW`. A snapshot cannot make the restore write outside the target.
//!
//! Content: every blob is verified before it is written; chunks of zeros become holes, so
//! sparse files stay sparse. Metadata: owner (when privileged), mode, mtime; directories get
//! theirs last, after their content. Hard links are re-created as links.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use globset::{Glob, GlobSet, GlobSetBuilder};
use kanister_repo::SnapshotId;
use kanister_repo::tree::{Node, NodeKind, is_safe_name};

use super::{RestoreOptions, RestoreStats, display_name, read_listing, tree_root};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::pull::{fetch_and_decode, owned, plan, read_and};
use crate::repository::{Locate, Repository};

/// Groups of small files (or large files) restored at once.
const GROUPS_AT_ONCE: usize = 3;
/// Files up to this size are restored in groups read pack range by pack range.
const SMALL_FILE: u64 = 4 << 20;
/// Content bytes of one group of small files (bounds memory).
const GROUP_BYTES: u64 = 4 << 20;
/// Largest single range read for a group.
const MAX_READ: u64 = 4 << 20;
/// Unneeded bytes a group read may read through to join two ranges.
const MAX_GAP: u64 = 256 << 10;

fn globs(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = Glob::new(p.trim_start_matches("./").trim_end_matches('/')).map_err(|e| {
            Error::io(
                format!("invalid pattern {p:?}"),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
            )
        })?;
        b.add(g);
    }
    b.build().map_err(|e| Error::io("invalid patterns", std::io::Error::other(e.to_string())))
}

struct DirJob {
    abs: PathBuf,
    rel: String,
    node: Node,
    /// This directory or an ancestor matched an include pattern (or there are none).
    selected: bool,
    /// Whether the directory exists in the target yet.
    exists: bool,
}

/// Restores snapshot `id` into `target`.
///
/// The walk (listings, directories, symlinks, devices) runs ahead and hands out groups of small
/// files of about [`GROUP_BYTES`] and single large files; up to [`GROUPS_AT_ONCE`] of them are
/// read, verified and written at once, each group's files by one blocking task. Hard links and
/// directory metadata come last.
pub async fn restore(
    repo: &Repository,
    id: &SnapshotId,
    target: &Path,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreStats> {
    let started = Instant::now();
    let snap = repo.snapshot(id).await?;
    let (_, root) = tree_root(&snap, id)?;
    progress.total.store(snap.size, std::sync::atomic::Ordering::Relaxed);
    let index = repo.load_lookup().await?;
    std::fs::create_dir_all(target).map_err(|e| Error::io(format!("cannot create {}", target.display()), e))?;
    let mut walk = Walk {
        repo,
        index: &index,
        id,
        target,
        opts,
        include: globs(&opts.include)?,
        exclude: globs(&opts.exclude)?,
        privileged: nix::unistd::geteuid().is_root(),
        stats: RestoreStats { snapshot_id: Some(*id), ..Default::default() },
        finish_dirs: Vec::new(),
        first_of_link: HashMap::new(),
        links: Vec::new(),
        stack: vec![DirJob {
            abs: target.to_path_buf(),
            rel: String::new(),
            node: root,
            selected: opts.include.is_empty(),
            exists: true,
        }],
        group: Vec::new(),
        group_bytes: 0,
        ready: std::collections::VecDeque::new(),
    };

    let privileged = walk.privileged;
    let written: Vec<Vec<(u64, Vec<String>)>> =
        futures::stream::unfold(&mut walk, |w| async move { w.next().await.map(|work| (work, w)) })
            .map(|work| {
                let (keys, store, progress) = (repo.keys().clone(), repo.store().clone(), progress.clone());
                let index: &dyn Locate = &index;
                async move {
                    match work? {
                        Work::Group(files) => {
                            restore_small_group(&store, &keys, index, id, files, opts.delete, privileged, &progress)
                                .await
                        }
                        Work::Large(abs, node) => Ok(vec![
                            restore_file(&store, &keys, index, id, &abs, &node, opts.delete, privileged, &progress)
                                .await?,
                        ]),
                    }
                }
            })
            .buffer_unordered(GROUPS_AT_ONCE)
            .try_collect()
            .await?;
    let Walk { mut stats, finish_dirs, links, .. } = walk;
    for (n, warns) in written.into_iter().flatten() {
        stats.files += 1;
        stats.bytes_written += n;
        push_warnings(&mut stats, warns);
    }
    for (abs, first, _) in links {
        remove_in_the_way(&abs, opts.delete)?;
        std::fs::hard_link(&first, &abs)
            .map_err(|e| Error::io(format!("cannot link {} to {}", abs.display(), first.display()), e))?;
        stats.files += 1;
    }
    // Directories last, deepest first, so writing their content does not change their times.
    for (abs, node) in finish_dirs.iter().rev() {
        let warns = apply_meta(abs, node, privileged);
        push_warnings(&mut stats, warns);
    }
    // Done means on disk: a crash after the restore reports success loses nothing of it.
    let syncing = Instant::now();
    let dirs: Vec<PathBuf> =
        std::iter::once(target.to_path_buf()).chain(finish_dirs.into_iter().map(|(abs, _)| abs)).collect();
    tokio::task::spawn_blocking(move || sync_filesystems(&dirs)).await.map_err(|e| Error::Task(e.to_string()))??;
    stats.sync_secs = syncing.elapsed().as_secs_f64();
    stats.duration_secs = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Waits until everything written under `dirs` (the target and the directories restored into
/// it) is on disk: file content, the new names in their directories, metadata. One `syncfs` per
/// filesystem: a directory that is a mount point inside the target has its own. One `syncfs`
/// at the end costs less than starting writeback file by file (1 GiB in 30,000 files: 2.6 s
/// against 3.4 s), and large files already started theirs every [`crate::pull::WRITEBACK_STEP`].
fn sync_filesystems(dirs: &[PathBuf]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut done = HashSet::new();
    for dir in dirs {
        // The walk made these real directories; whatever replaced one since is not followed.
        let Ok(meta) = std::fs::symlink_metadata(dir) else { continue };
        if !meta.is_dir() || !done.insert(meta.dev()) {
            continue;
        }
        let sync = || -> std::io::Result<()> {
            let d = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags((nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NOFOLLOW).bits())
                .open(dir)?;
            nix::unistd::syncfs(&d).map_err(std::io::Error::from)
        };
        sync().map_err(|e| Error::io(format!("cannot write the restored files under {} to disk", dir.display()), e))?;
    }
    Ok(())
}

/// What the walk hands out to be written.
enum Work {
    /// Small files, about [`GROUP_BYTES`] of content.
    Group(Vec<(PathBuf, Node)>),
    /// A large file, streamed.
    Large(PathBuf, Node),
}

/// The restore's walk over the snapshot's directories, depth first in name order.
struct Walk<'a> {
    repo: &'a Repository,
    index: &'a dyn Locate,
    id: &'a SnapshotId,
    target: &'a Path,
    opts: &'a RestoreOptions,
    include: GlobSet,
    exclude: GlobSet,
    privileged: bool,
    stats: RestoreStats,
    finish_dirs: Vec<(PathBuf, Node)>,
    first_of_link: HashMap<u64, PathBuf>,
    links: Vec<(PathBuf, PathBuf, Node)>,
    stack: Vec<DirJob>,
    /// Small files gathered for the next group.
    group: Vec<(PathBuf, Node)>,
    group_bytes: u64,
    /// Work ready to hand out.
    ready: std::collections::VecDeque<Work>,
}

impl Walk<'_> {
    /// The next work, walking directories until there is some; `None` at the end.
    async fn next(&mut self) -> Option<Result<Work>> {
        loop {
            if let Some(w) = self.ready.pop_front() {
                return Some(Ok(w));
            }
            let Some(dir) = self.stack.pop() else {
                let last = std::mem::take(&mut self.group);
                self.group_bytes = 0;
                return (!last.is_empty()).then_some(Ok(Work::Group(last)));
            };
            if let Err(e) = self.directory(dir).await {
                self.stack.clear();
                return Some(Err(e));
            }
        }
    }

    /// Restores a directory's entries but file contents, which become work.
    async fn directory(&mut self, dir: DirJob) -> Result<()> {
        let nodes = read_listing(self.repo, self.index, &dir.node.subtree).await?;
        let mut names: HashSet<Vec<u8>> = HashSet::new();
        let mut subdirs: Vec<DirJob> = Vec::new();
        let mut parent_ready = dir.exists;
        for node in nodes {
            if !is_safe_name(&node.name) {
                return Err(Error::Damaged(format!(
                    "snapshot {} holds an unsafe entry name {:?} in {:?}: refusing to restore it (nothing is written outside {})",
                    self.id.short(),
                    display_name(&node.name),
                    if dir.rel.is_empty() { "/" } else { dir.rel.as_str() },
                    self.target.display()
                )));
            }
            names.insert(node.name.clone());
            let rel = if dir.rel.is_empty() {
                display_name(&node.name)
            } else {
                format!("{}/{}", dir.rel, display_name(&node.name))
            };
            if self.exclude.is_match(&rel) {
                continue;
            }
            let abs = dir.abs.join(OsStr::from_bytes(&node.name));
            let selected = dir.selected || self.include.is_match(&rel);
            if node.kind == NodeKind::Dir {
                let exists = if selected {
                    prepare_dir(&abs, self.opts.delete)?;
                    true
                } else {
                    false
                };
                subdirs.push(DirJob { abs, rel, node, selected, exists });
                continue;
            }
            if !selected {
                continue;
            }
            if !parent_ready {
                ensure_parent(&dir.abs, self.target)?;
                parent_ready = true;
            }
            match node.kind {
                NodeKind::File => match node.link_id.and_then(|l| self.first_of_link.get(&l)) {
                    Some(first) => self.links.push((abs, first.clone(), node)),
                    None => {
                        if let Some(l) = node.link_id {
                            self.first_of_link.insert(l, abs.clone());
                        }
                        self.add_file(abs, node);
                    }
                },
                _ => restore_special(&abs, &node, self.opts.delete, self.privileged, &mut self.stats)?,
            }
        }
        if self.opts.delete && dir.selected && dir.exists {
            self.stats.deleted += delete_extra(&dir.abs, &dir.rel, &names, &self.exclude)?;
        }
        if dir.exists {
            self.stats.dirs += 1;
            self.finish_dirs.push((dir.abs, dir.node));
        }
        // Depth first, in name order.
        self.stack.extend(subdirs.into_iter().rev());
        Ok(())
    }

    fn add_file(&mut self, abs: PathBuf, node: Node) {
        if node.size > SMALL_FILE {
            self.ready.push_back(Work::Large(abs, node));
            return;
        }
        self.group_bytes += node.size;
        self.group.push((abs, node));
        if self.group_bytes >= GROUP_BYTES {
            self.group_bytes = 0;
            self.ready.push_back(Work::Group(std::mem::take(&mut self.group)));
        }
    }
}

fn push_warnings(stats: &mut RestoreStats, warns: Vec<String>) {
    for w in warns {
        if stats.warnings.len() < 1000 && !stats.warnings.contains(&w) {
            stats.warnings.push(w);
        }
    }
}

/// Makes sure the directory a selected entry goes into exists (restores with `--include`
/// create only the directories they need).
fn ensure_parent(dir: &Path, target: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let rel = dir.strip_prefix(target).unwrap_or(dir);
    let mut cur = target.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        prepare_dir(&cur, false)?;
    }
    Ok(())
}

/// Makes `abs` a real directory: keeps one that exists, replaces a symlink or file in the way.
fn prepare_dir(abs: &Path, delete: bool) -> Result<()> {
    match std::fs::symlink_metadata(abs) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(m) if m.file_type().is_symlink() || delete => {
            std::fs::remove_file(abs).map_err(|e| Error::io(format!("cannot replace {}", abs.display()), e))?
        }
        Ok(_) => {
            return Err(Error::io(
                format!(
                    "cannot restore directory {}: a file is in the way (use --delete to replace it)",
                    abs.display()
                ),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        Err(_) => {}
    }
    std::fs::create_dir(abs).map_err(|e| Error::io(format!("cannot create {}", abs.display()), e))
}

/// Clears the place of a non-directory entry: removes a file or symlink there; a directory
/// only with `--delete`.
fn remove_in_the_way(abs: &Path, delete: bool) -> Result<()> {
    match std::fs::symlink_metadata(abs) {
        Ok(m) if m.is_dir() => {
            if delete {
                std::fs::remove_dir_all(abs).map_err(|e| Error::io(format!("cannot replace {}", abs.display()), e))
            } else {
                Err(Error::io(
                    format!("cannot restore {}: a directory is in the way (use --delete to replace it)", abs.display()),
                    std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                ))
            }
        }
        Ok(_) => std::fs::remove_file(abs).map_err(|e| Error::io(format!("cannot replace {}", abs.display()), e)),
        Err(_) => Ok(()),
    }
}

fn restore_special(abs: &Path, node: &Node, delete: bool, privileged: bool, stats: &mut RestoreStats) -> Result<()> {
    use nix::sys::stat::{Mode, SFlag};
    remove_in_the_way(abs, delete)?;
    let mode = Mode::from_bits_truncate(node.mode);
    let made = match node.kind {
        NodeKind::Symlink => {
            let t = node.target.clone().unwrap_or_default();
            std::os::unix::fs::symlink(OsStr::from_bytes(&t), abs).map_err(|e| e.to_string())
        }
        NodeKind::Fifo => nix::unistd::mkfifo(abs, mode).map_err(|e| e.to_string()),
        NodeKind::CharDevice | NodeKind::BlockDevice if privileged => {
            let kind = if node.kind == NodeKind::CharDevice { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
            nix::sys::stat::mknod(abs, kind, mode, node.rdev.unwrap_or(0)).map_err(|e| e.to_string())
        }
        _ => Err("device files need root to restore".into()),
    };
    match made {
        Ok(()) => {
            stats.others += 1;
            let warns = apply_meta(abs, node, privileged);
            push_warnings(stats, warns);
        }
        Err(e) => push_warnings(stats, vec![format!("{}: not restored: {e}", abs.display())]),
    }
    Ok(())
}

/// Owner, mode, mtime; never following a symlink. Returns warnings.
fn apply_meta(abs: &Path, node: &Node, privileged: bool) -> Vec<String> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let mut warns = Vec::new();
    if privileged || node.uid == nix::unistd::geteuid().as_raw() {
        if let Err(e) = std::os::unix::fs::lchown(abs, Some(node.uid), Some(node.gid)) {
            warns.push(format!("{}: cannot set owner: {e}", abs.display()));
        }
    } else {
        warns.push("ownership not restored: restoring without root keeps the restoring user as owner".into());
    }
    // After chown, which clears setuid/setgid bits.
    if node.kind != NodeKind::Symlink
        && let Err(e) = std::fs::set_permissions(abs, std::fs::Permissions::from_mode(node.mode))
    {
        warns.push(format!("{}: cannot set mode: {e}", abs.display()));
    }
    let t = TimeSpec::new(node.mtime_ns.div_euclid(1_000_000_000), node.mtime_ns.rem_euclid(1_000_000_000));
    if let Err(e) = utimensat(nix::fcntl::AT_FDCWD, abs, &t, &t, UtimensatFlags::NoFollowSymlink) {
        warns.push(format!("{}: cannot set times: {e}", abs.display()));
    }
    warns
}

/// One read of a pack for a group of small files: the blobs in `[start, end)` and where each
/// goes (file, position in the file).
struct GroupRead {
    pack: kanister_repo::PackId,
    start: u64,
    end: u64,
    members: Vec<(kanister_repo::pack::PackEntry, usize, usize)>,
}

/// Decrypts, decompresses and verifies the blobs of a group read (`bytes` from offset
/// `start` of the pack) where they lie. Files of the same content share a blob, which the
/// members, in offset order, list once per file: its bytes are plaintext after the first
/// decryption, so a repeat of the same entry gets a copy of that plaintext. Anything else at
/// an offset already decrypted (an index naming another blob there) fails to open, as a
/// damaged repository should.
fn decode_members(
    keys: &kanister_repo::Keys,
    start: u64,
    bytes: bytes::Bytes,
    members: &[(kanister_repo::pack::PackEntry, usize, usize)],
) -> Result<Vec<(usize, usize, Vec<u8>)>> {
    let mut bytes = owned(bytes);
    let mut out: Vec<(usize, usize, Vec<u8>)> = Vec::with_capacity(members.len());
    let mut last: Option<(kanister_repo::pack::PackEntry, usize)> = None;
    for (e, fi, bi) in members {
        let data = match last {
            Some((prev, at)) if prev == *e => out[at].2.clone(),
            _ => {
                let s = (e.offset as u64 - start) as usize;
                last = Some((*e, out.len()));
                kanister_repo::blob::decode_in_place(
                    keys,
                    e.kind,
                    &e.id,
                    &mut bytes[s..s + e.length as usize],
                    e.raw_len,
                )?
            }
        };
        out.push((*fi, *bi, data));
    }
    Ok(out)
}

/// Restores small files whose content totals about [`GROUP_BYTES`]: their blobs are sorted by
/// pack and offset and read with few large range requests, then the files are written on the
/// blocking pool, several at once.
#[allow(clippy::too_many_arguments)]
async fn restore_small_group(
    store: &crate::store::Store,
    keys: &kanister_repo::Keys,
    index: &dyn Locate,
    id: &SnapshotId,
    files: Vec<(PathBuf, Node)>,
    delete: bool,
    privileged: bool,
    progress: &Arc<Progress>,
) -> Result<Vec<(u64, Vec<String>)>> {
    let mut refs = Vec::new();
    for (fi, (_, node)) in files.iter().enumerate() {
        for (bi, b) in node.content.iter().enumerate() {
            let (pack, entry) =
                index.locate(b)?.ok_or_else(|| Error::MissingBlob { blob: *b, snapshot: id.to_string() })?;
            refs.push((pack, entry, fi, bi));
        }
    }
    refs.sort_by_key(|r| (r.0, r.1.offset));
    let mut reads: Vec<GroupRead> = Vec::new();
    for (pack, e, fi, bi) in refs {
        let r = e.range();
        if let Some(cur) = reads.last_mut()
            && cur.pack == pack
            && r.start <= cur.end + MAX_GAP
            && r.end.max(cur.end) - cur.start <= MAX_READ
        {
            cur.end = cur.end.max(r.end);
            cur.members.push((e, fi, bi));
            continue;
        }
        reads.push(GroupRead { pack, start: r.start, end: r.end, members: vec![(e, fi, bi)] });
    }
    let decoded: Vec<Vec<(usize, usize, Vec<u8>)>> = futures::stream::iter(reads)
        .map(|read| {
            let (keys, progress) = (keys.clone(), progress.clone());
            async move {
                let key = crate::repository::pack_key(&read.pack);
                read_and(store, &key, read.start..read.end, move |bytes| -> Result<Vec<(usize, usize, Vec<u8>)>> {
                    Progress::add(&progress.bytes_stored, bytes.len() as u64);
                    decode_members(&keys, read.start, bytes, &read.members)
                })
                .await
            }
        })
        .buffer_unordered(2)
        .try_collect()
        .await?;
    let mut slots: Vec<Vec<Vec<u8>>> = files.iter().map(|(_, n)| vec![Vec::new(); n.content.len()]).collect();
    for (fi, bi, data) in decoded.into_iter().flatten() {
        slots[fi][bi] = data;
    }
    let progress = progress.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<(u64, Vec<String>)>> {
        files
            .into_iter()
            .zip(slots)
            .map(|((abs, node), blobs)| {
                let mut file = create_file(&abs, delete)?;
                let (written, hole) = write_content(&mut file, blobs, &abs)?;
                let r = finish_file(file, &abs, &node, written, hole, privileged)?;
                Progress::add(&progress.bytes_read, written);
                Ok(r)
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
}

/// Checks the size, ends a file that ends in a hole, sets owner, mode and mtime through the
/// open file, closes it. Returns the bytes written and warnings.
fn finish_file(
    file: std::fs::File,
    abs: &Path,
    node: &Node,
    written: u64,
    ends_in_hole: bool,
    privileged: bool,
) -> Result<(u64, Vec<String>)> {
    if written != node.size {
        return Err(Error::Damaged(format!(
            "{} should hold {} bytes but its chunks hold {written}",
            abs.display(),
            node.size
        )));
    }
    // A trailing hole was skipped with a seek: the length makes it part of the file.
    if ends_in_hole {
        file.set_len(node.size).map_err(|e| Error::io(format!("cannot write {}", abs.display()), e))?;
    }
    Ok((written, apply_file_meta(&file, abs, node, privileged)))
}

/// [`apply_meta`] through an open regular file (no path lookups).
fn apply_file_meta(file: &std::fs::File, abs: &Path, node: &Node, privileged: bool) -> Vec<String> {
    let mut warns = Vec::new();
    if privileged || node.uid == nix::unistd::geteuid().as_raw() {
        if let Err(e) = std::os::unix::fs::fchown(file, Some(node.uid), Some(node.gid)) {
            warns.push(format!("{}: cannot set owner: {e}", abs.display()));
        }
    } else {
        warns.push("ownership not restored: restoring without root keeps the restoring user as owner".into());
    }
    // After chown, which clears setuid/setgid bits.
    if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(node.mode)) {
        warns.push(format!("{}: cannot set mode: {e}", abs.display()));
    }
    let t =
        nix::sys::time::TimeSpec::new(node.mtime_ns.div_euclid(1_000_000_000), node.mtime_ns.rem_euclid(1_000_000_000));
    if let Err(e) = nix::sys::stat::futimens(file, &t, &t) {
        warns.push(format!("{}: cannot set times: {e}", abs.display()));
    }
    warns
}

/// Writes content to an open file: zero chunks as holes. Returns the bytes written and whether
/// the content ended in a hole (then the file must be extended to its length).
fn write_content(file: &mut std::fs::File, blobs: Vec<Vec<u8>>, path: &Path) -> Result<(u64, bool)> {
    let mut w = 0u64;
    let mut hole = false;
    for b in blobs {
        hole = b.iter().all(|&x| x == 0);
        if hole { file.seek(SeekFrom::Current(b.len() as i64)).map(|_| ()) } else { file.write_all(&b) }
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        w += b.len() as u64;
    }
    Ok((w, hole))
}

/// Creates a new file at `abs`; whatever is in the way is handled by [`remove_in_the_way`]
/// (asked only when something is: a fresh restore makes one system call per file here).
fn create_file(abs: &Path, delete: bool) -> Result<std::fs::File> {
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .mode(0o600)
            .open(abs)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            remove_in_the_way(abs, delete)?;
            open()
        }
        r => r,
    }
    .map_err(|e| Error::io(format!("cannot create {}", abs.display()), e))
}

/// Writes one file: content (zero chunks as holes), size, metadata. Returns bytes written.
#[allow(clippy::too_many_arguments)]
async fn restore_file(
    store: &crate::store::Store,
    keys: &kanister_repo::Keys,
    index: &dyn Locate,
    id: &SnapshotId,
    abs: &Path,
    node: &Node,
    delete: bool,
    privileged: bool,
    progress: &Progress,
) -> Result<(u64, Vec<String>)> {
    let mut file = create_file(abs, delete)?;
    let requests = plan(index, &node.content, id)?;
    let decoded = futures::stream::iter(requests.into_iter().map(Ok::<_, Error>))
        .map_ok(|req| fetch_and_decode(store, keys.clone(), req))
        .try_buffered(4);
    let mut decoded = std::pin::pin!(decoded);
    let (mut written, mut hole) = (0u64, false);
    let mut window = crate::pull::WritebackWindow::default();
    while let Some((n, blobs)) = decoded.try_next().await? {
        Progress::add(&progress.bytes_stored, n);
        let path = abs.to_path_buf();
        let step = window.step(written);
        let (f, (w, h)) = tokio::task::spawn_blocking(move || -> Result<(std::fs::File, (u64, bool))> {
            if let Some((offset, len)) = step {
                crate::pull::start_writeback(&file, offset, len);
            }
            let w = write_content(&mut file, blobs, &path)?;
            Ok((file, w))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        file = f;
        written += w;
        hole = h;
        Progress::add(&progress.bytes_read, w);
    }
    finish_file(file, abs, node, written, hole, privileged)
}

/// Deletes entries of `abs` the snapshot's listing does not have (and no exclude protects).
fn delete_extra(abs: &Path, rel: &str, keep: &HashSet<Vec<u8>>, exclude: &GlobSet) -> Result<u64> {
    let mut n = 0;
    let rd = std::fs::read_dir(abs).map_err(|e| Error::io(format!("cannot list {}", abs.display()), e))?;
    for e in rd.flatten() {
        let name = e.file_name();
        if keep.contains(name.as_bytes()) {
            continue;
        }
        let r = if rel.is_empty() {
            display_name(name.as_bytes())
        } else {
            format!("{rel}/{}", display_name(name.as_bytes()))
        };
        if exclude.is_match(&r) {
            continue;
        }
        let p = e.path();
        let res = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
            _ => std::fs::remove_file(&p),
        };
        res.map_err(|err| Error::io(format!("cannot delete {}", p.display()), err))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kanister_repo::blob;
    use kanister_repo::pack::PackEntry;

    #[test]
    fn a_blob_shared_by_files_is_decoded_once_and_another_id_at_its_offset_fails() {
        let keys = kanister_repo::keys::MasterKey::generate().keys();
        let (mut pack, mut entries) = (Vec::new(), Vec::new());
        for c in [b"same content in two files\n".repeat(50), b"another file\n".repeat(80)] {
            let id = blob::blob_id(&keys, &c);
            let e = blob::encode(&keys, kanister_repo::BlobKind::Data, id, &c, 1).unwrap();
            entries.push((
                PackEntry {
                    id,
                    kind: e.kind,
                    offset: 100 + pack.len() as u32,
                    length: e.bytes.len() as u32,
                    raw_len: e.raw_len,
                },
                c,
            ));
            pack.extend_from_slice(&e.bytes);
        }
        let (a, b) = (entries[0].0, entries[1].0);
        // Files 0 and 1 share blob a; file 2 holds b.
        let members = [(a, 0, 0), (a, 1, 0), (b, 2, 0)];
        let out = decode_members(&keys, 100, bytes::Bytes::from(pack.clone()), &members).unwrap();
        let want = [&entries[0].1, &entries[0].1, &entries[1].1];
        assert_eq!(out.len(), 3);
        for ((fi, _, data), w) in out.iter().zip(want) {
            assert_eq!(data, w, "file {fi}");
        }
        // An index naming another blob at a's offset: not a's plaintext, an error.
        let forged = PackEntry { id: b.id, ..a };
        let err = decode_members(&keys, 100, bytes::Bytes::from(pack), &[(a, 0, 0), (forged, 1, 0)]).unwrap_err();
        assert!(err.to_string().contains("cannot decrypt"), "{err}");
    }
}
