//! Object stores named by URL, through the `object_store` crate.
//!
//! | URL | store |
//! |---|---|
//! | `file:///var/backups/repo` | a local directory (the embedded default) |
//! | `s3://bucket/prefix` | S3 or any S3-compatible server (path-style requests) |
//! | `az://container/prefix` | Azure Blob Storage (`azure://` too) |
//! | `gs://bucket/prefix` | Google Cloud Storage |
//!
//! Settings come, later ones winning, from the provider's usual environment variables
//! (`AWS_*`, `AZURE_*`, `GOOGLE_*`), from a credentials file of `key=value` lines (a mounted
//! Secret), from the URL's query (`?endpoint=http://minio:9000&region=us-east-1`) and from
//! `--store-option key=value`. Keys are `object_store`'s configuration keys, e.g.
//! `aws_access_key_id`, `endpoint`, `region`, `azure_storage_account_key`, `use_emulator`,
//! `google_service_account_key`, `base_url`. An `http://` endpoint turns on `allow_http`.
//!
//! Guarantees the repository relies on: a `put` is atomic (readers see the whole object or
//! none), a successful `put` is durable, and names are never reused for different content. On
//! local disk, durable means the file and its directory are fsynced before `put` returns (the
//! object stores acknowledge only what they stored); a push awaits its packs before writing
//! their index and its index before its snapshot, so after a crash a snapshot never names data
//! that did not reach the disk.
//! Every operation may be retried; the cloud clients retry transient errors themselves.

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL or a setting is not one the store client takes (the message names it and the
    /// fix, never a credential).
    #[error(transparent)]
    Settings(#[from] kanister_profile::store::BuildError),
    /// The credentials file could not be read.
    #[error("cannot read the store credentials file {path}: {source}")]
    CredentialsFile {
        /// Its path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The object does not exist.
    /// An object is shorter than the repository knows it to be: damaged, not unreachable.
    #[error("{key} is shorter than expected: read {got} of {wanted} bytes (the object was truncated)")]
    Truncated {
        /// The object.
        key: String,
        /// Bytes asked for.
        wanted: u64,
        /// Bytes there.
        got: u64,
    },
    #[error("{0} does not exist in the store")]
    NotFound(String),
    /// Any other failure of the store.
    #[error("store {op} of {key} failed: {source}")]
    Backend {
        /// The operation.
        op: &'static str,
        /// The object.
        key: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },
}

/// An object of a local store, read on the calling thread (see [`Store::local_read`]).
#[derive(Debug)]
pub struct LocalRead {
    path: PathBuf,
    key: String,
}

impl LocalRead {
    /// Reads a byte range of the object, blocking; the same errors as [`Store::get_range`].
    /// The buffer is not zeroed before the read fills it (object_store's is).
    pub fn range(&self, range: std::ops::Range<u64>) -> Result<Bytes> {
        use std::io::{Read, Seek};
        let want = range.end - range.start;
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(self.key.clone()),
            _ => StoreError::Backend {
                op: "read",
                key: self.key.clone(),
                source: object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(e) },
            },
        };
        let mut file = std::fs::File::open(&self.path).map_err(io)?;
        file.seek(std::io::SeekFrom::Start(range.start)).map_err(io)?;
        let mut buf = Vec::with_capacity(want as usize);
        file.take(want).read_to_end(&mut buf).map_err(io)?;
        if buf.len() as u64 != want {
            return Err(StoreError::Truncated { key: self.key.clone(), wanted: want, got: buf.len() as u64 });
        }
        Ok(Bytes::from(buf))
    }
}

/// What [`Store::put_new`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object is new: this writer made it.
    Yes,
    /// An object already existed under the key; nothing was written.
    No,
    /// The store cannot write conditionally; the object was written unconditionally.
    Unchecked,
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How to reach a store besides its URL.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// `key=value` settings (`--store-option`).
    pub options: Vec<(String, String)>,
    /// A file of `key=value` lines, typically a mounted Secret.
    pub credentials_file: Option<PathBuf>,
}

/// An object listed in the store.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Its key relative to the repository root.
    pub key: String,
    /// Its size.
    pub size: u64,
    /// When it was written.
    pub last_modified: SystemTime,
}

/// A repository's place in an object store: a store and a prefix inside it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    display: String,
    local_root: Option<PathBuf>,
    /// Set while a `file://` store's directory does not exist: reads find nothing.
    missing_root: bool,
    hook: Option<Hook>,
}

/// An operation of [`Store`], as a [`Hook`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// `put` and `put_new`.
    Put,
    /// `get` and `get_range`.
    Get,
    /// `size` and `modified`.
    Head,
    /// `delete`.
    Delete,
    /// `list` (the key is the folder).
    List,
}

/// Called before every operation of a [`Store`] with the operation and its key; the
/// operation starts when the returned future completes. Tests use it to force an interleaving
/// of two processes (pause prune right before it lists the backup markers, say) and to inject
/// latency; nothing in the product sets one.
pub type Hook = Arc<dyn Fn(StoreOp, &str) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// A file an interrupted write left behind: object_store's local store writes `name#N` and
/// renames it into place, so a killed writer leaves the `#N` file, which listings never show.
/// (S3, Azure and GCS writes of the agent are single requests, which a server either completes
/// or discards: they leave nothing.)
#[derive(Debug, Clone)]
pub struct Leftover {
    /// Its path relative to the store's root.
    pub key: String,
    /// Its size.
    pub size: u64,
    /// When it was last written.
    pub last_modified: SystemTime,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.display)
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

pub use kanister_profile::store::{DEFAULT_RETRY_TIMEOUT, NETWORK_OPTION_KEYS, check_network_option, redact_url};

/// Parses a credentials file: `key=value` lines, `#` comments, optional `export `, quotes.
fn read_credentials(path: &FsPath) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| StoreError::CredentialsFile { path: path.to_path_buf(), source })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim().trim_matches('"').trim_matches('\'');
            Some((k.trim().to_ascii_lowercase(), v.to_string()))
        })
        .collect())
}

impl Store {
    /// Opens the store a URL names. Nothing is contacted yet.
    pub fn open(url: &str, opts: &StoreOptions) -> Result<Store> {
        let mut credentials = Vec::new();
        if let Some(path) = &opts.credentials_file {
            credentials.extend(read_credentials(path)?);
        }
        let kanister_profile::store::Built { store: inner, display, local_root } =
            kanister_profile::store::build(url, credentials, &opts.options)?;
        let missing_root = local_root.as_ref().is_some_and(|r| !r.is_dir());
        Ok(Store { inner, display, local_root, missing_root, hook: None })
    }

    /// This store with `hook` called before each operation (see [`Hook`]).
    pub fn with_hook(mut self, hook: Hook) -> Store {
        self.hook = Some(hook);
        self
    }

    /// Whether this is a `file://` store (a request costs no round trip).
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    async fn before(&self, op: StoreOp, key: &str) {
        if let Some(h) = &self.hook {
            h(op, key).await;
        }
    }

    /// Files interrupted writes left under the store's root (see [`Leftover`]); none for
    /// object stores, whose writes are single requests.
    pub fn leftovers(&self) -> std::io::Result<Vec<Leftover>> {
        let Some(root) = self.local_root.as_ref().filter(|r| r.is_dir()) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    dirs.push(entry.path());
                    continue;
                }
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let staged =
                    name.rsplit_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if staged && let Ok(rel) = entry.path().strip_prefix(root) {
                    out.push(Leftover {
                        key: rel.to_string_lossy().into_owned(),
                        size: meta.len(),
                        last_modified: meta.modified()?,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Removes a leftover [`Self::leftovers`] found (gone already is fine).
    pub fn delete_leftover(&self, l: &Leftover) -> std::io::Result<()> {
        let Some(root) = &self.local_root else { return Ok(()) };
        match std::fs::remove_file(root.join(&l.key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Creates the local directory of a `file://` store (for `repo init`).
    pub fn create_local_root(&mut self) -> std::io::Result<()> {
        if let Some(root) = &self.local_root {
            std::fs::create_dir_all(root)?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(root).map_err(std::io::Error::other)?;
            self.inner = Arc::new(fs.with_fsync(true));
            self.missing_root = false;
        }
        Ok(())
    }

    fn check_root(&self, key: &str) -> Result<()> {
        if self.missing_root {
            return Err(StoreError::NotFound(format!("{key} (directory {} is missing)", self.display)));
        }
        Ok(())
    }

    fn backend(op: &'static str, key: &str, source: object_store::Error) -> StoreError {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound(key.to_string()),
            source => StoreError::Backend { op, key: key.to_string(), source },
        }
    }

    /// Writes an object (atomically).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.before(StoreOp::Put, key).await;
        self.check_root(key)?;
        self.inner.put(&Path::from(key), PutPayload::from(bytes)).await.map_err(|e| Self::backend("put", key, e))?;
        self.drop_written_pages(key);
        Ok(())
    }

    /// On local disk, drops the page-cache pages of an object just written and fsynced: a
    /// backup does not read its packs back, so they would only crowd out the cache of the
    /// database beside it (and count against the pod's memory limit), and the next pack's
    /// writes reuse the pages just freed instead of ever new ones (on a VM that hands free
    /// memory back to its host, new pages cost a host fault each: 1.25 s of system time per
    /// 320 MiB written here, 0.11 s with the pages dropped). Only a hint: failures are ignored.
    fn drop_written_pages(&self, key: &str) {
        if let Some(root) = &self.local_root
            && let Ok(f) = std::fs::File::open(root.join(key))
        {
            let _ = nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        }
    }

    /// Writes an object unless one exists under `key`, in one step on the store's side where
    /// it offers that (local disk, GCS, Azure, S3 with conditional writes).
    ///
    /// `Created::No` when the object already existed; `Created::Unchecked` when the store cannot
    /// create conditionally and the object was written as [`Store::put`] would.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<Created> {
        self.before(StoreOp::Put, key).await;
        use object_store::{PutMode, PutOptions};
        self.check_root(key)?;
        let path = Path::from(key);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.inner.put_opts(&path, PutPayload::from(bytes.clone()), opts).await {
            Ok(_) => {
                self.drop_written_pages(key);
                Ok(Created::Yes)
            }
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Created::No)
            }
            Err(object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }) => {
                self.put(key, bytes).await?;
                Ok(Created::Unchecked)
            }
            Err(e) => Err(Self::backend("put", key, e)),
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.before(StoreOp::Get, key).await;
        self.check_root(key)?;
        let r = self.inner.get(&Path::from(key)).await.map_err(|e| Self::backend("get", key, e))?;
        r.bytes().await.map_err(|e| Self::backend("get", key, e))
    }

    /// Reads a byte range of an object.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.before(StoreOp::Get, key).await;
        self.check_root(key)?;
        let want = range.end - range.start;
        let b = match self.inner.get_range(&Path::from(key), range.clone()).await {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => return Err(StoreError::NotFound(key.to_string())),
            Err(e) => {
                // A range past the end of a shortened object is damage, whatever words the
                // backend chose for it.
                if let Ok(m) = self.inner.head(&Path::from(key)).await
                    && m.size < range.end
                {
                    return Err(StoreError::Truncated {
                        key: key.to_string(),
                        wanted: want,
                        got: m.size.saturating_sub(range.start),
                    });
                }
                return Err(Self::backend("read", key, e));
            }
        };
        if b.len() as u64 != want {
            return Err(StoreError::Truncated { key: key.to_string(), wanted: want, got: b.len() as u64 });
        }
        Ok(b)
    }

    /// For a local store, what reads `key` on the calling thread ([`LocalRead::range`]), for
    /// work already on the blocking pool: a restore reads a range and decodes it in one task,
    /// with the bytes still in the core's cache, instead of handing them from one thread to
    /// another. `None` for an object store. Runs the store's hook as [`Store::get_range`] does.
    pub async fn local_read(&self, key: &str) -> Result<Option<LocalRead>> {
        let Some(root) = &self.local_root else { return Ok(None) };
        self.before(StoreOp::Get, key).await;
        self.check_root(key)?;
        Ok(Some(LocalRead { path: root.join(key), key: key.to_string() }))
    }

    /// Size of an object, `None` when it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>> {
        self.before(StoreOp::Head, key).await;
        if self.missing_root {
            return Ok(None);
        }
        match self.inner.head(&Path::from(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::backend("head", key, e)),
        }
    }

    /// Deletes an object; deleting a missing object succeeds.
    /// When the object was last written, on the store's clock (whole seconds, as listings
    /// give it), or `None` when it does not exist.
    pub async fn modified(&self, key: &str) -> Result<Option<SystemTime>> {
        self.before(StoreOp::Head, key).await;
        if self.missing_root {
            return Ok(None);
        }
        match self.inner.head(&Path::from(key)).await {
            Ok(m) => Ok(Some(seconds(m.last_modified.timestamp()))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::backend("head", key, e)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        self.before(StoreOp::Delete, key).await;
        if self.missing_root {
            return Ok(());
        }
        match self.inner.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::backend("delete", key, e)),
        }
    }

    /// Lists the objects under a folder (`"snapshots"`, `"data"`), recursively.
    pub async fn list(&self, folder: &str) -> Result<Vec<ObjectInfo>> {
        self.before(StoreOp::List, folder).await;
        if self.missing_root {
            return Ok(Vec::new());
        }
        let prefix = Path::from(folder);
        let metas: Vec<object_store::ObjectMeta> =
            self.inner.list(Some(&prefix)).try_collect().await.or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(Vec::new()),
                e => Err(Self::backend("list", folder, e)),
            })?;
        Ok(metas
            .into_iter()
            // LocalFileSystem stages writes as `name#N`; our names never hold `#`.
            .filter(|m| !m.location.as_ref().contains('#'))
            .map(|m| ObjectInfo {
                key: m.location.to_string(),
                size: m.size,
                last_modified: seconds(m.last_modified.timestamp()),
            })
            .collect())
    }
}

/// A store time as the repository compares them: whole seconds (S3 gives no more).
fn seconds(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_local_read_gives_what_get_range_gives_bytes_and_errors_alike() {
        let dir = tempfile::tempdir().unwrap();
        let gets = Arc::new(AtomicUsize::new(0));
        let counter = gets.clone();
        let store = Store::open(&format!("file://{}", dir.path().display()), &StoreOptions::default())
            .unwrap()
            .with_hook(Arc::new(move |op, _key| {
                if op == StoreOp::Get {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Box::pin(async {})
            }));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        store.put("data/ab/pack", Bytes::from(data.clone())).await.unwrap();

        let read = store.local_read("data/ab/pack").await.unwrap().expect("a file:// store reads locally");
        assert_eq!(gets.load(Ordering::SeqCst), 1, "the store's hook runs for a local read too");
        for r in [0..1, 10..70_000, 99_999..100_000, 0..100_000] {
            let got = read.range(r.clone()).unwrap();
            assert_eq!(&got[..], &data[r.start as usize..r.end as usize], "{r:?}");
            assert_eq!(got, store.get_range("data/ab/pack", r.clone()).await.unwrap(), "{r:?}");
        }

        // Past the end: the object is reported truncated, with what is there.
        let past = 90_000..100_010;
        match (read.range(past.clone()), store.get_range("data/ab/pack", past).await) {
            (
                Err(StoreError::Truncated { key, wanted, got }),
                Err(StoreError::Truncated { wanted: w2, got: g2, .. }),
            ) => {
                assert_eq!((key.as_str(), wanted, got), ("data/ab/pack", 10_010, 10_000));
                assert_eq!((w2, g2), (wanted, got));
            }
            other => panic!("a range past the end was not reported truncated: {other:?}"),
        }

        // A missing object: not found, named, as get_range says it.
        let gone = store.local_read("data/ab/gone").await.unwrap().unwrap();
        assert!(matches!(gone.range(0..1), Err(StoreError::NotFound(k)) if k == "data/ab/gone"));
        assert!(matches!(store.get_range("data/ab/gone", 0..1).await, Err(StoreError::NotFound(_))));

        // A missing store directory: the same error as every other read.
        let missing = Store::open(&format!("file://{}/nope", dir.path().display()), &StoreOptions::default()).unwrap();
        let err = missing.local_read("data/ab/pack").await.unwrap_err().to_string();
        assert!(err.contains("is missing"), "{err}");
    }
}
