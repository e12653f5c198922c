//! A repository in a store: opening it, its index, its snapshots.
//!
//! Layout under the store's prefix:
//!
//! ```text
//! config                 sealed repository parameters, written once by `repo init`
//! keys/<id>              key slots (the master key, wrapped)
//! data/<xx>/<pack id>    packs
//! index/<index id>       indexes
//! snapshots/<id>         snapshots
//! locks/<id>             markers of running backups (not exclusive; read by `prune`)
//! prune/<id>             packs `prune` has set aside, deleted after the grace period
//! ```
//!
//! Every object except locks is written once and never overwritten. Writers take no global
//! lock: a backup writes packs, then indexes, then its snapshot, so a crash leaves only packs
//! nothing points at, which the next backup reuses (their trailers are re-indexed) and `prune`
//! eventually removes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use kanister_repo::blob::{self, BlobKind};
use kanister_repo::chunker::ChunkerParams;
use kanister_repo::index::{IndexFile, IndexPack};
use kanister_repo::keys::{Argon2Params, Credential, KeySlot, MasterKey};
use kanister_repo::pack::{self, PackEntry};
use kanister_repo::snapshot::{Root, Snapshot};
use kanister_repo::{BlobId, IndexId, Keys, PackId, RepoConfig, SnapshotId};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::store::{Created, Store, StoreError};

/// Object holding the sealed config.
pub const CONFIG: &str = "config";
/// Folder of key slots.
pub const KEYS: &str = "keys";
/// Folder of packs.
pub const DATA: &str = "data";
/// Folder of indexes.
pub const INDEX: &str = "index";
/// Folder of snapshots.
pub const SNAPSHOTS: &str = "snapshots";
/// Folder of backup markers.
pub const LOCKS: &str = "locks";
/// Folder of prune marks.
pub const PRUNE: &str = "prune";

/// Concurrent small reads when loading indexes and snapshots.
const META_CONCURRENCY: usize = 16;

/// The key of a pack object.
pub fn pack_key(id: &PackId) -> String {
    let h = id.to_hex();
    format!("{DATA}/{}/{h}", &h[..2])
}

/// Parses a pack id back from its key.
pub fn pack_id_from_key(key: &str) -> Option<PackId> {
    key.rsplit('/').next()?.parse().ok()
}

/// The secret that opens a repository. Zeroized on drop.
#[derive(Clone)]
pub enum RepoKey {
    /// A passphrase (from `KANISTER_REPO_PASSWORD` or a file).
    Passphrase(Zeroizing<Vec<u8>>),
    /// The contents of a raw key file.
    KeyFile(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RepoKey::Passphrase(_) => "RepoKey::Passphrase(..)",
            RepoKey::KeyFile(_) => "RepoKey::KeyFile(..)",
        })
    }
}

impl RepoKey {
    /// The key from a raw key file, else a passphrase file (its trailing newline dropped), else
    /// the raw key in `KANISTER_REPO_KEY` (how the coordinator hands a Profile's key to task
    /// pods, from a Secret), else the passphrase in `KANISTER_REPO_PASSWORD`. Never a default.
    pub fn from_files_or_env(
        key_file: Option<&std::path::Path>,
        password_file: Option<&std::path::Path>,
    ) -> Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map(Zeroizing::new).map_err(|e| Error::io(format!("cannot read {}", p.display()), e))
        };
        if let Some(p) = key_file {
            return Ok(RepoKey::KeyFile(read(p)?));
        }
        if let Some(p) = password_file {
            let mut b = read(p)?;
            while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                b.pop();
            }
            return Ok(RepoKey::Passphrase(b));
        }
        if let Ok(k) = std::env::var("KANISTER_REPO_KEY")
            && !k.is_empty()
        {
            return Ok(RepoKey::KeyFile(Zeroizing::new(k.into_bytes())));
        }
        match std::env::var("KANISTER_REPO_PASSWORD") {
            Ok(p) if !p.is_empty() => Ok(RepoKey::Passphrase(Zeroizing::new(p.into_bytes()))),
            _ => Err(Error::NoCredential),
        }
    }

    fn credential(&self) -> Credential<'_> {
        match self {
            RepoKey::Passphrase(p) => Credential::Passphrase(p),
            RepoKey::KeyFile(k) => Credential::KeyFile(k),
        }
    }
}

/// Why a `kanister.agent.v1.RepositoryRef` names no usable store.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    /// The URL is malformed or carries what belongs in the options. Names no value.
    #[error("{0}")]
    Invalid(String),
    /// The store could not be built from the URL and options.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store a repository reference names: `url` (`s3://`, `az://`, `gs://`, `file://`; no
/// credentials, no query) and its settings (object_store's keys, case-insensitive). The one
/// mapping used by the agent's service and by the coordinator's own repository reads.
pub fn store_of_ref(url: &str, options: HashMap<String, String>) -> Result<Store, RefError> {
    let u = url::Url::parse(url).map_err(|e| RefError::Invalid(format!("repository.store_url is not a URL: {e}")))?;
    if !u.username().is_empty() || u.password().is_some() || u.query().is_some() {
        return Err(RefError::Invalid(
            "repository.store_url must carry no credentials and no query: put settings in repository.store_options"
                .into(),
        ));
    }
    let mut options: Vec<(String, String)> = options.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    options.sort();
    Ok(Store::open(url, &crate::store::StoreOptions { options, credentials_file: None })?)
}

/// Typestate: a repository not opened yet.
#[derive(Debug)]
pub struct Closed;

/// Typestate: an opened repository (keys and config loaded).
#[derive(Debug, Clone)]
pub struct Open {
    keys: Keys,
    config: RepoConfig,
}

/// A repository in a store. `Repository<Closed>` can only be initialised or opened. An open
/// repository clones cheaply (the store is shared), for tasks that outlive a borrow.
#[derive(Debug, Clone)]
pub struct Repository<S = Open> {
    store: Store,
    state: S,
    _s: PhantomData<S>,
}

/// Parameters of `repo init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Chunk sizes.
    pub chunker: ChunkerParams,
    /// Target pack size.
    pub pack_size: u32,
    /// zstd level.
    pub compression_level: i32,
    /// Argon2 cost for passphrase slots.
    pub argon2: Argon2Params,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            pack_size: kanister_repo::config::DEFAULT_PACK_SIZE,
            compression_level: kanister_repo::config::DEFAULT_COMPRESSION_LEVEL,
            argon2: Argon2Params::default(),
        }
    }
}

impl Repository<Closed> {
    /// The repository at `store`, not opened.
    pub fn at(store: Store) -> Self {
        Repository { store, state: Closed, _s: PhantomData }
    }

    /// Creates a new repository: a random master key, one key slot for `key`, the config.
    pub async fn init(mut self, key: &RepoKey, opts: &InitOptions) -> Result<Repository<Open>> {
        self.store.create_local_root().map_err(|e| Error::io(format!("cannot create {}", self.store), e))?;
        // Key slots without a config are a creation under way or one that crashed: the
        // conditional write of the config below decides.
        if self.store.size(CONFIG).await?.is_some() {
            return Err(Error::AlreadyInitialized(self.store.to_string()));
        }
        let config = RepoConfig::new(opts.chunker, opts.pack_size, opts.compression_level)?;
        let master = MasterKey::generate();
        let keys = master.keys();
        let slot = {
            let (master, key, params) = (master.clone(), key.clone(), opts.argon2);
            tokio::task::spawn_blocking(move || KeySlot::wrap(&master, &key.credential(), params, &slot_label()))
                .await
                .map_err(|e| Error::Task(e.to_string()))??
        };
        // The key slot first, then the config, created only if absent: of writers racing to
        // create a repository here, the one whose config lands wins; the others withdraw their
        // slot and open the winner's. A slot left behind by a crash in between is harmless:
        // `open` uses the slot whose master key opens the config.
        let slot_key = format!("{KEYS}/{}", slot.id);
        self.store.put(&slot_key, Bytes::from(slot.to_json())).await?;
        if self.store.put_new(CONFIG, Bytes::from(config.encode(&keys))).await? == Created::No {
            if let Err(e) = self.store.delete(&slot_key).await {
                tracing::warn!(slot = %slot_key, error = %e, "cannot withdraw the key slot of a lost repository creation");
            }
            return Err(Error::AlreadyInitialized(self.store.to_string()));
        }
        Ok(Repository { store: self.store, state: Open { keys, config }, _s: PhantomData })
    }

    /// Opens the repository with `key`.
    pub async fn open(self, key: &RepoKey) -> Result<Repository<Open>> {
        let mut slots = self.key_slots().await?;
        if slots.is_empty() && self.store.size(CONFIG).await?.is_some() {
            // A creation racing this open writes its slot, then the config: look again.
            slots = self.key_slots().await?;
        }
        if slots.is_empty() {
            // No key slot, but a repository's objects: its keys were lost, which is damage. Never
            // call that "no repository": `repo init` there would hide what is left of it.
            for folder in [CONFIG, DATA, INDEX, SNAPSHOTS] {
                if !self.store.list(folder).await?.is_empty() {
                    return Err(Error::Damaged(format!(
                        "{} holds a repository ({folder} is there) but no key slot under keys/: its keys were \
                         deleted or lost, and without one nothing in it can be read. Restore keys/ from a copy \
                         of the bucket (or the repository-key Secret's slot); do NOT run `repo init` here",
                        self.store
                    )));
                }
            }
            return Err(Error::NotARepository(self.store.to_string()));
        }
        let sealed = match self.store.get(CONFIG).await {
            Ok(b) => b,
            Err(StoreError::NotFound(_)) => return Err(Error::NotARepository(self.store.to_string())),
            Err(e) => return Err(e.into()),
        };
        let key = key.clone();
        let (keys, config) = tokio::task::spawn_blocking(move || open_config(&slots, &key.credential(), &sealed))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        Ok(Repository { store: self.store, state: Open { keys, config }, _s: PhantomData })
    }

    /// Opens the repository, creating it with default parameters when the location holds none:
    /// the first backup to a new Profile location. Only backups call this; reads never create.
    ///
    /// Writers racing to create it end up in one repository where the store creates objects
    /// only if absent (local disk, S3 with conditional writes, GCS, Azure); see [`Self::init`].
    pub async fn open_or_init(self, key: &RepoKey) -> Result<Repository<Open>> {
        let store = self.store.clone();
        match self.open(key).await {
            Err(Error::NotARepository(_)) => {}
            other => return other,
        }
        tracing::info!(store = %store, "creating the repository on first use");
        match Repository::at(store.clone()).init(key, &InitOptions::default()).await {
            Err(Error::AlreadyInitialized(_)) => {}
            other => return other,
        }
        // Another writer created it since we looked (its config is there): use theirs. (A
        // `file://` store opened before its directory existed must look again.)
        let mut store = store;
        store.create_local_root().map_err(|e| Error::io(format!("cannot open {store}"), e))?;
        Repository::at(store).open(key).await
    }

    async fn key_slots(&self) -> Result<Vec<KeySlot>> {
        let mut slots = Vec::new();
        for o in self.store.list(KEYS).await? {
            let bytes = match self.store.get(&o.key).await {
                Ok(b) => b,
                // Withdrawn since the listing by a writer that lost a creation race.
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            slots.push(KeySlot::from_json(&bytes)?);
        }
        Ok(slots)
    }
}

/// The keys and config of a repository: the first key slot `cred` opens whose master key also
/// opens the config (a slot orphaned by a lost creation race opens with the same credential but
/// holds another master key).
fn open_config(slots: &[KeySlot], cred: &Credential<'_>, sealed: &[u8]) -> Result<(Keys, RepoConfig)> {
    let mut mismatch = None;
    // A slot refused before any work (hostile cost parameters) does not stop another slot from
    // opening the repository; if none does, the refusal is the answer.
    let mut refused = None;
    for slot in slots {
        match slot.unwrap(cred) {
            Ok(Some(master)) => {
                let keys = master.keys();
                match RepoConfig::decode(&keys, sealed) {
                    Ok(config) => return Ok((keys, config)),
                    Err(e) => mismatch = Some(e),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(slot = %slot.id.short(), error = %e, "skipping a key slot");
                refused.get_or_insert(e);
            }
        }
    }
    Err(match (mismatch, refused) {
        (Some(e), _) | (None, Some(e)) => e.into(),
        (None, None) => kanister_repo::Error::WrongKey { slots: slots.len() }.into(),
    })
}

fn slot_label() -> String {
    format!("{}@{}", std::env::var("USER").unwrap_or_else(|_| "agent".into()), hostname())
}

/// This machine's (pod's) host name.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// Where a blob is.
#[derive(Debug, Clone, Copy)]
pub struct BlobLocation {
    /// Index of its pack in [`MasterIndex::packs`].
    pub pack: u32,
    /// Its entry in the pack.
    pub entry: PackEntry,
}

/// All index objects merged: every known blob and pack.
///
/// A blob may sit in several packs (two backups that ran at once both stored it); lookups get
/// one location, while [`MasterIndex::entries_of`] keeps every pack's full list, which is
/// what `prune` must reason about. Each entry is stored once, in its pack's list; the lookup
/// table holds only a position (8 bytes), which halves the index's memory.
#[derive(Debug, Default)]
pub struct MasterIndex {
    /// Known packs and their sizes.
    pub packs: Vec<(PackId, u64)>,
    pack_pos: kanister_repo::IdMap<PackId, u32>,
    pack_blobs: Vec<Vec<PackEntry>>,
    blobs: kanister_repo::IdMap<BlobId, Slot>,
    /// The index objects that were read.
    pub index_ids: Vec<IndexId>,
    /// Index objects that could not be read, with the reason.
    pub damaged: Vec<(IndexId, String)>,
}

/// Where in [`MasterIndex::pack_blobs`] a blob's entry is.
#[derive(Debug, Clone, Copy)]
struct Slot {
    pack: u32,
    idx: u32,
}

impl MasterIndex {
    /// Adds a pack's blobs (a pack listed twice is taken once: its content never changes).
    pub fn add_pack(&mut self, p: IndexPack) {
        if self.pack_pos.contains_key(&p.id) {
            return;
        }
        let pos = self.packs.len() as u32;
        self.packs.push((p.id, p.size));
        self.pack_pos.insert(p.id, pos);
        for (i, e) in p.blobs.iter().enumerate() {
            self.blobs.entry(e.id).or_insert(Slot { pack: pos, idx: i as u32 });
        }
        self.pack_blobs.push(p.blobs);
    }

    /// The packs with their blobs, consuming the index (no copy of the entries: what prune
    /// writes when it compacts the index).
    pub fn into_packs(self) -> impl Iterator<Item = IndexPack> {
        self.packs.into_iter().zip(self.pack_blobs).map(|((id, size), blobs)| IndexPack { id, size, blobs })
    }

    /// Whether the pack is indexed.
    pub fn has_pack(&self, id: &PackId) -> bool {
        self.pack_pos.contains_key(id)
    }

    /// The pack of a location.
    pub fn pack_id(&self, loc: &BlobLocation) -> PackId {
        self.packs[loc.pack as usize].0
    }

    /// Every blob of the pack at position `pos` in [`MasterIndex::packs`].
    pub fn entries_of(&self, pos: u32) -> &[PackEntry] {
        &self.pack_blobs[pos as usize]
    }

    /// Stops finding blobs in the given packs; a blob also stored elsewhere is found there.
    pub fn forget_blobs_in(&mut self, packs: &HashSet<PackId>) {
        let gone: HashSet<u32> =
            self.packs.iter().enumerate().filter(|(_, (id, _))| packs.contains(id)).map(|(i, _)| i as u32).collect();
        if gone.is_empty() {
            return;
        }
        self.blobs.retain(|_, s| !gone.contains(&s.pack));
        for (pos, entries) in self.pack_blobs.iter().enumerate() {
            if gone.contains(&(pos as u32)) {
                continue;
            }
            for (i, e) in entries.iter().enumerate() {
                self.blobs.entry(e.id).or_insert(Slot { pack: pos as u32, idx: i as u32 });
            }
        }
    }

    /// Looks a blob up.
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.blobs
            .get(id)
            .map(|s| BlobLocation { pack: s.pack, entry: self.pack_blobs[s.pack as usize][s.idx as usize] })
    }

    /// Whether a blob is indexed.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Whether no blob is indexed.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Every blob with the location lookups give.
    pub fn iter(&self) -> impl Iterator<Item = (&BlobId, BlobLocation)> + '_ {
        self.blobs
            .iter()
            .map(|(id, s)| (id, BlobLocation { pack: s.pack, entry: self.pack_blobs[s.pack as usize][s.idx as usize] }))
    }
}

/// A marker a running backup leaves, so `prune` waits for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lock {
    /// When the backup started (seconds since the epoch).
    pub started: u64,
    /// When the marker was last renewed.
    pub refreshed: u64,
    /// Host (pod) of the backup.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// Which process exactly, so that a prune on the same host can tell that it died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessIdentity>,
}

/// A process, told apart from every other that ever ran on its machine: the boot, the pid
/// namespace (containers of one pod share a host name but not their pids), the pid and the
/// process's start time (pids are reused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// The pid namespace, as `/proc/self/ns/pid` names it.
    pub pid_ns: String,
    /// The pid in that namespace.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: start time in clock ticks after boot.
    pub start_ticks: u64,
}

impl ProcessIdentity {
    /// This process (none where `/proc` is not Linux's).
    pub fn current() -> Option<ProcessIdentity> {
        let pid = std::process::id();
        Some(ProcessIdentity {
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_string(),
            pid_ns: std::fs::read_link("/proc/self/ns/pid").ok()?.to_string_lossy().into_owned(),
            pid,
            start_ticks: start_ticks(pid)?,
        })
    }

    /// Whether this process has certainly ended: it ran in this very boot and pid namespace,
    /// and its pid is gone or belongs to a process started at another time. Anything
    /// uncertain (another host, another container, an unreadable `/proc`) counts as alive.
    pub fn has_ended(&self) -> bool {
        let Some(me) = ProcessIdentity::current() else { return false };
        if me.boot_id != self.boot_id || me.pid_ns != self.pid_ns {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            Ok(_) => start_ticks(self.pid).is_some_and(|t| t != self.start_ticks),
        }
    }
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Suffix of a marker's renewal object.
pub const ALIVE_SUFFIX: &str = ".alive";

/// A backup marker as listed.
#[derive(Debug, Clone)]
pub struct LockInfo {
    /// Its key.
    pub key: String,
    /// When the backup started (store time).
    pub started: SystemTime,
    /// When it last renewed its marker (store time).
    pub alive: SystemTime,
    /// The backup's process is known to have ended (it ran on this host and is gone): its
    /// marker is stale at once.
    pub ended: bool,
}

impl LockInfo {
    /// Whether the backup may still be running, by this machine's clock.
    pub fn is_live(&self) -> bool {
        self.is_live_at(SystemTime::now())
    }

    /// Whether the backup may still be running at `now` (a store time, see
    /// [`crate::exclusive::ExclusiveLock::store_now`]).
    pub fn is_live_at(&self, now: SystemTime) -> bool {
        !self.ended && now.duration_since(self.alive).map_or(true, |age| age < LOCK_STALE_AFTER)
    }
}

/// The marker of a running backup: written at its start, renewed while it runs, removed at
/// its end. `prune` waits for backups that started before it set packs aside.
#[derive(Debug)]
pub struct BackupMarker {
    key: String,
    renewer: tokio::task::JoinHandle<()>,
    renewed: std::sync::Arc<std::sync::Mutex<std::time::Instant>>,
}

impl BackupMarker {
    /// Writes the marker and starts renewing it.
    pub async fn start(repo: &Repository, hostname: &str) -> Result<Self> {
        let lock = Lock {
            started: now_secs(),
            refreshed: now_secs(),
            hostname: hostname.to_string(),
            pid: std::process::id(),
            process: ProcessIdentity::current(),
        };
        let key = repo.write_lock(&lock).await?;
        let (store, alive) = (repo.store().clone(), format!("{key}{ALIVE_SUFFIX}"));
        let renewed = std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        let last = renewed.clone();
        let renewer = tokio::spawn(async move {
            let mut lock = lock;
            let mut tick = tokio::time::interval(LOCK_REFRESH_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                lock.refreshed = now_secs();
                // Renewal rewrites `<key>.alive`: markers are the one kind of object that changes.
                let body = Bytes::from(serde_json::to_vec(&lock).expect("lock serializes"));
                match store.put(&alive, body).await {
                    Ok(()) => *last.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now(),
                    Err(e) => tracing::warn!(error = %e, "cannot renew the backup marker"),
                }
            }
        });
        Ok(BackupMarker { key, renewer, renewed })
    }

    /// Fails when the marker went unrenewed for so long that a prune may have taken it for a
    /// dead backup's and deleted packs this backup deduplicated against (the process was
    /// paused, or the store unreachable). Called right before the snapshot is written: a
    /// backup that fails here writes no snapshot, so nothing points at what may be gone.
    pub fn ensure_alive(&self) -> Result<()> {
        let since = self.renewed.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        if since + LOCK_REFRESH_EVERY >= LOCK_STALE_AFTER {
            return Err(Error::LockLost(format!(
                "the backup marker {} was not renewed for {}; no snapshot was written, run the backup again",
                self.key,
                humantime::format_duration(Duration::from_secs(since.as_secs()))
            )));
        }
        Ok(())
    }

    /// Stops renewing and removes the marker (best effort: a marker left behind goes stale).
    pub async fn finish(mut self, repo: &Repository) {
        self.renewer.abort();
        let _ = (&mut self.renewer).await;
        let _ = repo.store().delete(&format!("{}{ALIVE_SUFFIX}", self.key)).await;
        if let Err(e) = repo.store().delete(&self.key).await {
            tracing::warn!(error = %e, marker = %self.key, "cannot remove the backup marker; prune treats it as stale after 30 minutes");
        }
    }
}

impl Drop for BackupMarker {
    /// A backup dropped without `finish` (cancelled) stops renewing its marker, which then goes
    /// stale instead of holding `prune` back forever.
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// A lock older than this without renewal belongs to a process that died.
pub const LOCK_STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a running backup renews its lock.
pub const LOCK_REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Repository<Open> {
    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The working keys.
    pub fn keys(&self) -> &Keys {
        &self.state.keys
    }

    /// The parameters.
    pub fn config(&self) -> &RepoConfig {
        &self.state.config
    }

    /// Reads and merges every index object. Damaged indexes are listed in
    /// [`MasterIndex::damaged`] rather than failing the load, so that what can be read still is.
    pub async fn load_index(&self) -> Result<MasterIndex> {
        for attempt in 0..2 {
            let listed = self.store.list(INDEX).await?;
            let ids: Vec<IndexId> = listed.iter().filter_map(|o| o.key.rsplit('/').next()?.parse().ok()).collect();
            let keys = self.keys();
            // Merge each index as it arrives and drop it: peak memory is the merged index plus
            // a few index objects, not all of them decoded at once.
            let mut results = futures::stream::iter(ids)
                .map(|id| async move {
                    let r = match self.store.get(&format!("{INDEX}/{id}")).await {
                        Ok(b) => IndexFile::decode(keys, &id, &b).map_err(Error::from),
                        Err(e) => Err(e.into()),
                    };
                    (id, r)
                })
                .buffer_unordered(META_CONCURRENCY);
            let mut mi = MasterIndex::default();
            let mut vanished = false;
            while let Some((id, r)) = results.next().await {
                match r {
                    Ok(f) => {
                        f.packs.into_iter().for_each(|p| mi.add_pack(p));
                        mi.index_ids.push(id);
                    }
                    Err(Error::Store(StoreError::NotFound(_))) => vanished = true,
                    Err(e) => mi.damaged.push((id, e.to_string())),
                }
            }
            // An index deleted between list and get was superseded by a consolidated one
            // written before the deletion: list again to pick that one up.
            if vanished && attempt == 0 {
                continue;
            }
            return Ok(mi);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Writes an index object; returns its id and size.
    pub async fn write_index(&self, f: &IndexFile) -> Result<(IndexId, u64)> {
        let (id, bytes) = f.encode(self.keys());
        let n = bytes.len() as u64;
        self.store.put(&format!("{INDEX}/{id}"), Bytes::from(bytes)).await?;
        Ok((id, n))
    }

    /// Writes a snapshot; returns its id and size.
    pub async fn write_snapshot(&self, s: &Snapshot) -> Result<(SnapshotId, u64)> {
        let (id, bytes) = s.encode(self.keys());
        let n = bytes.len() as u64;
        self.store.put(&format!("{SNAPSHOTS}/{id}"), Bytes::from(bytes)).await?;
        Ok((id, n))
    }

    /// Ids of all snapshots.
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        Ok(self.store.list(SNAPSHOTS).await?.iter().filter_map(|o| o.key.rsplit('/').next()?.parse().ok()).collect())
    }

    /// Reads one snapshot.
    pub async fn snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let bytes = self.store.get(&format!("{SNAPSHOTS}/{id}")).await.map_err(|e| match e {
            StoreError::NotFound(_) => Error::SnapshotNotFound(id.to_string()),
            e => e.into(),
        })?;
        Ok(Snapshot::decode(self.keys(), id, &bytes)?)
    }

    /// Reads every snapshot, with the result of each.
    pub async fn snapshots(&self) -> Result<Vec<(SnapshotId, Result<Snapshot>)>> {
        let ids = self.snapshot_ids().await?;
        Ok(futures::stream::iter(ids)
            .map(|id| async move { (id, self.snapshot(&id).await) })
            .buffer_unordered(META_CONCURRENCY)
            .collect()
            .await)
    }

    /// Finds the snapshot a full id or unique prefix names.
    pub async fn resolve_snapshot(&self, prefix: &str) -> Result<SnapshotId> {
        let p = prefix.trim().to_ascii_lowercase();
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::SnapshotNotFound(prefix.to_string()));
        }
        let matches: Vec<SnapshotId> =
            self.snapshot_ids().await?.into_iter().filter(|id| id.to_hex().starts_with(&p)).collect();
        match matches.len() {
            0 => Err(Error::SnapshotNotFound(prefix.to_string())),
            1 => Ok(matches[0]),
            count => Err(Error::AmbiguousSnapshot { prefix: prefix.to_string(), count }),
        }
    }

    /// Reads and verifies one blob.
    pub async fn read_blob(&self, index: &MasterIndex, id: &BlobId) -> Result<Vec<u8>> {
        let loc = index.get(id).ok_or_else(|| Error::Damaged(format!("blob {id} is in no index")))?;
        let key = pack_key(&index.pack_id(&loc));
        let bytes = self.store.get_range(&key, loc.entry.range()).await?;
        let keys = self.keys().clone();
        let e = loc.entry;
        Ok(tokio::task::spawn_blocking(move || blob::decode(&keys, e.kind, &e.id, &bytes, e.raw_len))
            .await
            .map_err(|e| Error::Task(e.to_string()))??)
    }

    /// Reads a pack's blob list from its trailer (two small range reads).
    pub async fn read_pack_trailer(&self, id: &PackId, size: u64) -> Result<Vec<PackEntry>> {
        let key = pack_key(id);
        if size < pack::PACK_TAIL_LEN as u64 {
            return Err(Error::Damaged(format!("pack {id} is too short to be a pack")));
        }
        let tail = self.store.get_range(&key, size - pack::PACK_TAIL_LEN as u64..size).await?;
        let tl = pack::trailer_len(&tail)? as u64;
        let start = (size - pack::PACK_TAIL_LEN as u64)
            .checked_sub(tl)
            .ok_or_else(|| Error::Damaged(format!("pack {id}: trailer longer than the pack")))?;
        let trailer = self.store.get_range(&key, start..size - pack::PACK_TAIL_LEN as u64).await?;
        Ok(pack::parse_trailer(&self.keys().data_key, id, &trailer)?)
    }

    /// Packs in the store that no index lists and no prune mark has set aside: left by an
    /// interrupted backup (or one still running). Indexes them from their trailers, adds them
    /// to `index` and writes an index object for them. Returns how many packs and the bytes of
    /// the index written.
    pub async fn recover_unindexed_packs(
        &self,
        index: &mut MasterIndex,
        marked: &HashSet<PackId>,
    ) -> Result<(usize, u64)> {
        let orphans: Vec<(PackId, u64)> = self
            .store
            .list(DATA)
            .await?
            .into_iter()
            .filter_map(|o| Some((pack_id_from_key(&o.key)?, o.size)))
            .filter(|(id, _)| !index.has_pack(id) && !marked.contains(id))
            .collect();
        if orphans.is_empty() {
            return Ok((0, 0));
        }
        let found: Vec<IndexPack> = futures::stream::iter(orphans)
            .map(|(id, size)| async move {
                match self.read_pack_trailer(&id, size).await {
                    Ok(blobs) => Some(IndexPack { id, size, blobs }),
                    Err(e) => {
                        tracing::warn!(pack = %id, error = %e, "ignoring an unreadable unindexed pack");
                        None
                    }
                }
            })
            .buffer_unordered(META_CONCURRENCY)
            .filter_map(|p| async move { p })
            .collect()
            .await;
        if found.is_empty() {
            return Ok((0, 0));
        }
        found.iter().for_each(|p| index.add_pack(p.clone()));
        let n = found.len();
        let (_, bytes) = self.write_index(&IndexFile { supersedes: vec![], packs: found }).await?;
        tracing::info!(packs = n, "re-indexed packs left by an interrupted backup");
        Ok((n, bytes))
    }

    /// Every pack named in a prune mark.
    pub async fn prune_marked_packs(&self) -> Result<HashSet<PackId>> {
        let mut out = HashSet::new();
        for (_, _, mark) in self.prune_marks().await? {
            out.extend(mark.packs.iter().map(|p| p.id));
        }
        Ok(out)
    }

    /// Reads every prune mark, with the store's time of writing it.
    pub async fn prune_marks(&self) -> Result<Vec<(String, SystemTime, PruneMark)>> {
        let mut out = Vec::new();
        for o in self.store.list(PRUNE).await? {
            let bytes = self.store.get(&o.key).await?;
            let plain = kanister_repo::crypto::open_object(
                &self.keys().data_key,
                PRUNE_AAD,
                "prune mark",
                &o.key,
                None,
                &bytes,
            )?;
            let wire: PruneMarkWire = serde_json::from_slice(&plain)
                .map_err(|source| kanister_repo::Error::Json { what: "prune mark", source })?;
            let mut packs = Vec::new();
            for p in wire.packs {
                let raw = hex::decode(&p.index).map_err(|e| Error::Damaged(format!("prune mark {}: {e}", o.key)))?;
                let blobs = decode_pack_entries(&raw)
                    .ok_or_else(|| Error::Damaged(format!("prune mark {}: bad entries", o.key)))?;
                packs.push(IndexPack { id: p.id, size: p.size, blobs });
            }
            out.push((o.key, o.last_modified, PruneMark { created: wire.created, packs }));
        }
        Ok(out)
    }

    /// Writes a prune mark.
    pub async fn write_prune_mark(&self, mark: &PruneMark) -> Result<String> {
        let wire = PruneMarkWire {
            created: mark.created,
            packs: mark
                .packs
                .iter()
                .map(|p| PrunePackWire { id: p.id, size: p.size, index: hex::encode(encode_pack_entries(&p.blobs)) })
                .collect(),
        };
        let json = serde_json::to_vec(&wire).expect("prune mark serializes");
        let (id, bytes) = kanister_repo::crypto::seal_object(&self.keys().data_key, PRUNE_AAD, &json);
        let key = format!("{PRUNE}/{}", hex::encode(id));
        self.store.put(&key, Bytes::from(bytes)).await?;
        Ok(key)
    }

    /// Writes a backup marker; returns its key. The marker itself is written once, so the
    /// store's time of writing it says when the backup started; renewals go to `<key>.alive`.
    pub async fn write_lock(&self, lock: &Lock) -> Result<String> {
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let key = format!("{LOCKS}/{}", hex::encode(id));
        self.store.put(&key, Bytes::from(serde_json::to_vec(lock).expect("lock serializes"))).await?;
        Ok(key)
    }

    /// Forgets snapshots (full ids or unique prefixes): deletes their snapshot objects; their
    /// data goes with the next prune. Returns the ids removed and the full ids that were
    /// already gone (a retry of an earlier forget, not an error).
    pub async fn forget(&self, ids: &[String]) -> Result<(Vec<String>, Vec<String>)> {
        let (mut removed, mut absent) = (Vec::new(), Vec::new());
        for p in ids {
            if p.len() == 64
                && let Ok(id) = p.parse::<SnapshotId>()
                && !self.snapshot_ids().await?.contains(&id)
            {
                absent.push(id.to_string());
                continue;
            }
            let id = self.resolve_snapshot(p).await?;
            self.store.delete(&format!("{SNAPSHOTS}/{id}")).await?;
            tracing::info!(snapshot = %id, "snapshot forgotten");
            removed.push(id.to_string());
        }
        Ok((removed, absent))
    }

    /// Reads every backup marker: its key, when it was written and last renewed (store time),
    /// and whether its process is known to have ended.
    pub async fn locks(&self) -> Result<Vec<LockInfo>> {
        let listed = self.store.list(LOCKS).await?;
        let mut out: Vec<LockInfo> = Vec::new();
        for o in listed.iter().filter(|o| !o.key.ends_with(ALIVE_SUFFIX)) {
            // A marker that cannot be read (removed since the listing, or not ours to parse)
            // tells nothing about its process: it counts by its times alone.
            let ended = match self.store.get(&o.key).await {
                Ok(b) => serde_json::from_slice::<Lock>(&b).ok().and_then(|l| l.process).is_some_and(|p| p.has_ended()),
                Err(_) => false,
            };
            out.push(LockInfo { key: o.key.clone(), started: o.last_modified, alive: o.last_modified, ended });
        }
        for o in listed.iter().filter(|o| o.key.ends_with(ALIVE_SUFFIX)) {
            let base = o.key.trim_end_matches(ALIVE_SUFFIX);
            if let Some(l) = out.iter_mut().find(|l| l.key == base) {
                l.alive = l.alive.max(o.last_modified);
            }
        }
        Ok(out)
    }

    /// Visits every blob a snapshot's root references, depth first: metadata blobs (chunk
    /// lists, tree parts) as [`Visit::Blob`] with kind `Tree` before their content, data blobs
    /// with kind `Data`. A metadata blob that cannot be read is reported as
    /// [`Visit::Unreadable`]; the visitor decides whether to go on (`Ok`) or stop (`Err`).
    pub async fn walk_blobs(
        &self,
        index: &MasterIndex,
        root: &Root,
        visit: &mut (dyn FnMut(Visit<'_>) -> Result<()> + Send),
    ) -> Result<()> {
        match root {
            Root::Stream { lists } => {
                for list in lists {
                    visit(Visit::Blob(list, BlobKind::Tree))?;
                    match self
                        .read_blob(index, list)
                        .await
                        .and_then(|b| Ok(kanister_repo::snapshot::decode_id_list(&b)?))
                    {
                        Ok(ids) => {
                            for id in &ids {
                                visit(Visit::Blob(id, BlobKind::Data))?;
                            }
                        }
                        Err(e) => visit(Visit::Unreadable(list, e))?,
                    }
                }
            }
            Root::Tree { dir, .. } => {
                let mut stack: Vec<BlobId> = dir.subtree.iter().rev().copied().collect();
                while let Some(part) = stack.pop() {
                    visit(Visit::Blob(&part, BlobKind::Tree))?;
                    match self.read_blob(index, &part).await.and_then(|b| Ok(kanister_repo::tree::decode_part(&b)?)) {
                        Ok(nodes) => {
                            for n in &nodes {
                                for id in &n.content {
                                    visit(Visit::Blob(id, BlobKind::Data))?;
                                }
                            }
                            for n in nodes.iter().rev() {
                                stack.extend(n.subtree.iter().rev().copied());
                            }
                        }
                        Err(e) => visit(Visit::Unreadable(&part, e))?,
                    }
                }
            }
        }
        Ok(())
    }
}

/// What [`Repository::walk_blobs`] shows its visitor.
#[derive(Debug)]
pub enum Visit<'a> {
    /// A referenced blob.
    Blob(&'a BlobId, BlobKind),
    /// A metadata blob that could not be read: what it references is unknown.
    Unreadable(&'a BlobId, Error),
}

const PRUNE_AAD: &[u8] = b"kanister prune mark";

/// Packs set aside by `prune`, with their index entries so they can be put back if a backup
/// that was running at the time turns out to use them.
#[derive(Debug, Clone)]
pub struct PruneMark {
    /// When the packs were set aside (seconds since the epoch).
    pub created: u64,
    /// The packs.
    pub packs: Vec<IndexPack>,
}

#[derive(Serialize, Deserialize)]
struct PruneMarkWire {
    created: u64,
    packs: Vec<PrunePackWire>,
}

#[derive(Serialize, Deserialize)]
struct PrunePackWire {
    id: PackId,
    size: u64,
    index: String,
}

fn encode_pack_entries(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * pack::ENTRY_LEN);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    entries.iter().for_each(|e| e.encode_into(&mut out));
    out
}

fn decode_pack_entries(b: &[u8]) -> Option<Vec<PackEntry>> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let body = b.get(4..)?;
    if body.len() != n * pack::ENTRY_LEN {
        return None;
    }
    body.chunks_exact(pack::ENTRY_LEN).map(|c| PackEntry::decode(c).ok()).collect()
}

/// Tags given as `key=value`.
pub fn parse_tags(tags: &[String]) -> Result<BTreeMap<String, String>, String> {
    tags.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("invalid tag {t:?}: expected key=value, e.g. --tag namespace=mysql-test")),
        })
        .collect()
}

/// Whether a snapshot carries every tag of `filter`.
pub fn has_tags(s: &Snapshot, filter: &BTreeMap<String, String>) -> bool {
    filter.iter().all(|(k, v)| s.tags.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The decoders of what others can write into the store (backup markers are plain
        /// JSON; prune marks' entry lists; repository references from gRPC requests) return
        /// errors on any input, never panic; entry lists round-trip.
        #[test]
        fn untrusted_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), text in "\\PC{0,80}") {
            let _ = serde_json::from_slice::<Lock>(&bytes);
            let _ = serde_json::from_slice::<crate::exclusive::Holder>(&bytes);
            let _ = serde_json::from_slice::<PruneMarkWire>(&bytes);
            if let Some(entries) = decode_pack_entries(&bytes) {
                prop_assert_eq!(encode_pack_entries(&entries), bytes);
            }
            let _ = store_of_ref(&text, HashMap::from([(text.clone(), text.clone())]));
            let _ = parse_tags(std::slice::from_ref(&text));
        }
    }

    #[test]
    fn a_process_that_exited_has_ended_and_a_running_one_has_not() {
        let me = ProcessIdentity::current().expect("Linux /proc");
        assert!(!me.has_ended(), "this process counts as ended");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let it = ProcessIdentity { pid: child.id(), start_ticks: start_ticks(child.id()).unwrap(), ..me.clone() };
        assert!(!it.has_ended(), "a running child counts as ended");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(it.has_ended(), "a killed child still counts as running");
        // The same pid with another start time is another process: the marker's has ended.
        let reused = ProcessIdentity { start_ticks: me.start_ticks + 1, ..me.clone() };
        assert!(reused.has_ended());
        // Another boot or another pid namespace: nothing can be known, so it is alive.
        assert!(!ProcessIdentity { boot_id: "other".into(), ..it.clone() }.has_ended());
        assert!(!ProcessIdentity { pid_ns: "pid:[1]".into(), ..it }.has_ended());
    }
}
