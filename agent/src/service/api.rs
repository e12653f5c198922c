//! The `kanister.agent.v1.AgentService` implementation: requests in, operations out.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use kanister_proto::agent::v1 as pb;
use kanister_proto::agent::v1::agent_service_server::AgentService;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::command::{self, Pipes};
use super::error::{Error, Result};
use super::ops::{EventStream, Job, Operation, Registry};
use crate::repository::{RepoKey, Repository};
use crate::store::Store;

/// What a request may leave out: the store and key the agent was started with (mounted files).
#[derive(Debug, Clone, Default)]
pub struct RepoDefaults {
    /// The store (`--store`, `--store-option`, `--store-credentials`).
    pub store: Option<Store>,
    /// The repository key (`--password-file`, `--key-file`).
    pub key: Option<RepoKey>,
}

/// Where one request's repository is, not opened yet.
#[derive(Debug)]
pub(crate) struct RepoTarget {
    store: Store,
    key: RepoKey,
}

impl RepoTarget {
    async fn open(self, op: &Operation) -> Result<Repository> {
        op.until_cancelled(async { Ok(Repository::at(self.store).open(&self.key).await?) }).await
    }

    /// For backups: creates the repository on first use of a location.
    async fn open_for_backup(self, op: &Operation) -> Result<Repository> {
        op.until_cancelled(async { Ok(Repository::at(self.store).open_or_init(&self.key).await?) }).await
    }
}

impl RepoDefaults {
    /// The store and key of a request, falling back to the defaults. Validates without
    /// echoing any setting: errors name what is wrong, never a value.
    pub(crate) fn resolve(&self, r: Option<pb::RepositoryRef>) -> Result<RepoTarget> {
        let r = r.unwrap_or_default();
        let store = if r.store_url.is_empty() {
            if !r.store_options.is_empty() {
                return Err(Error::InvalidArgument(
                    "repository.store_options given without repository.store_url".into(),
                ));
            }
            self.store.clone().ok_or_else(|| {
                Error::InvalidArgument("no store: give repository.store_url, or start the agent with --store".into())
            })?
        } else {
            crate::repository::store_of_ref(&r.store_url, r.store_options).map_err(|e| match e {
                crate::repository::RefError::Invalid(m) => Error::InvalidArgument(m),
                crate::repository::RefError::Store(e) => crate::Error::from(e).into(),
            })?
        };
        let key = match r.key {
            Some(pb::repository_ref::Key::Passphrase(p)) => RepoKey::Passphrase(Zeroizing::new(p)),
            Some(pb::repository_ref::Key::RawKey(k)) => RepoKey::KeyFile(Zeroizing::new(k)),
            None => self.key.clone().ok_or(crate::Error::NoCredential)?,
        };
        Ok(RepoTarget { store, key })
    }
}

/// The service.
#[derive(Debug, Clone)]
pub struct Api {
    pub(crate) registry: Arc<Registry>,
    pub(crate) defaults: Arc<RepoDefaults>,
    pub(crate) interval: Duration,
}

/// A stable hash of a request's parameters. Secrets are left out (only the names of the store
/// options and of the command's variables count), and maps are sorted.
fn digest(parts: &[&dyn DigestPart]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for p in parts {
        p.feed(&mut h);
    }
    h.finish()
}

trait DigestPart {
    fn feed(&self, h: &mut std::hash::DefaultHasher);
}

impl DigestPart for str {
    fn feed(&self, h: &mut std::hash::DefaultHasher) {
        self.hash(h);
    }
}

impl DigestPart for String {
    fn feed(&self, h: &mut std::hash::DefaultHasher) {
        self.hash(h);
    }
}

impl DigestPart for bool {
    fn feed(&self, h: &mut std::hash::DefaultHasher) {
        self.hash(h);
    }
}

impl DigestPart for u64 {
    fn feed(&self, h: &mut std::hash::DefaultHasher) {
        self.hash(h);
    }
}

impl DigestPart for Vec<String> {
    fn feed(&self, h: &mut std::hash::DefaultHasher) {
        self.hash(h);
    }
}

impl DigestPart for std::collections::HashMap<String, String> {
    fn feed(&self, h: &mut std::hash::DefaultHasher) {
        self.iter().collect::<BTreeMap<_, _>>().hash(h);
    }
}

impl DigestPart for Option<pb::RepositoryRef> {
    fn feed(&self, h: &mut std::hash::DefaultHasher) {
        if let Some(r) = self {
            r.store_url.hash(h);
            r.store_options.keys().collect::<std::collections::BTreeSet<_>>().hash(h);
        }
    }
}

impl DigestPart for Option<pb::CommandSpec> {
    fn feed(&self, h: &mut std::hash::DefaultHasher) {
        if let Some(c) = self {
            c.argv.hash(h);
            c.env.keys().collect::<std::collections::BTreeSet<_>>().hash(h);
        }
    }
}

fn tags(m: std::collections::HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    if m.keys().any(String::is_empty) {
        return Err(Error::InvalidArgument("a tag has an empty name".into()));
    }
    Ok(m.into_iter().collect())
}

fn uploads_for(store: &Store) -> usize {
    if store.to_string().starts_with("file://") { 2 } else { 4 }
}

fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Api {
    fn start(
        &self,
        op_id: &str,
        kind: pb::OperationKind,
        digest: u64,
        make: impl FnOnce(Arc<Operation>) -> Result<Job>,
    ) -> Result<Response<EventStream>, Status> {
        let (op, attached) = self.registry.attach_or_start(op_id, kind, digest, make)?;
        if attached {
            tracing::info!(op_id, "attached to the operation");
        }
        Ok(Response::new(op.events(attached, self.interval)))
    }
}

async fn backup_stream(
    op: Arc<Operation>,
    target: RepoTarget,
    command: pb::CommandSpec,
    opts: crate::push::PushOptions,
) -> Result<pb::OperationResult> {
    let repo = target.open_for_backup(&op).await?;
    let (running, stdout, _) = command::spawn(&command, Pipes::Stdout)?;
    tracing::info!(program = running.program(), "command started");
    op.set_phase(pb::Phase::Transferring);
    let at_end = op.clone();
    let stdout = stdout.ok_or_else(|| Error::Internal("the command's stdout is not piped".into()))?;
    let reader = running.stdout_until_exit(stdout, move || at_end.set_phase(pb::Phase::Finishing));
    let source = crate::push::Source::Reader(Box::new(reader));
    let r = crate::push::push_until(&repo, source, &opts, op.progress.clone(), op.cancelled()).await;
    match r {
        Ok(Some(s)) => Ok(pb::OperationResult {
            result: Some(pb::operation_result::Result::Backup(pb::BackupStats {
                snapshot_id: s.snapshot_id.to_string(),
                bytes_read: s.bytes_read,
                size: s.bytes_read,
                bytes_new: s.bytes_new,
                bytes_uploaded: s.bytes_uploaded,
                chunks: s.chunks,
                chunks_new: s.chunks_new,
                packs_uploaded: s.packs_uploaded,
                packs_recovered: s.packs_recovered,
                dedup_ratio: s.dedup_ratio,
                throughput_bytes_per_sec: s.throughput_bytes_per_sec,
                duration_secs: s.duration_secs,
                ..Default::default()
            })),
        }),
        Ok(None) => Err(Error::Cancelled),
        // The command's failure explains a short or broken stream better than anything else.
        Err(e) => Err(running.failure().map_or_else(|| Error::from(e), Error::Command)),
    }
}

async fn restore_stream(
    op: Arc<Operation>,
    target: RepoTarget,
    snapshot: String,
    command: pb::CommandSpec,
) -> Result<pb::OperationResult> {
    let repo = target.open(&op).await?;
    let id = op.until_cancelled(async { Ok(repo.resolve_snapshot(&snapshot).await?) }).await?;
    let (running, _, stdin) = command::spawn(&command, Pipes::Stdin)?;
    tracing::info!(program = running.program(), snapshot = %id, "command started");
    op.set_phase(pb::Phase::Transferring);
    let stdin = stdin.ok_or_else(|| Error::Internal("the command's stdin is not piped".into()))?;
    let progress = op.progress.clone();
    let pulled = on_own_thread(op.cancelled(), move || async move {
        Ok(crate::pull::pull(&repo, &id, stdin, 4, workers(), progress).await?)
    })
    .await;
    let stats = match pulled {
        Ok((stats, stdin)) => {
            drop(stdin); // end of the stream for the command
            op.set_phase(pb::Phase::Finishing);
            op.until_cancelled(running.wait()).await?;
            stats
        }
        Err(e @ Error::Cancelled) => return Err(e),
        Err(e) => {
            // A command that died makes the pull fail on a closed pipe: its own failure says why.
            let _ = tokio::time::timeout(Duration::from_secs(2), running.wait()).await;
            return Err(running.failure().map_or(e, Error::Command));
        }
    };
    if let Some(f) = running.failure() {
        return Err(Error::Command(f));
    }
    Ok(pb::OperationResult {
        result: Some(pb::operation_result::Result::Restore(pb::RestoreStats {
            snapshot_id: stats.snapshot_id.to_string(),
            bytes_written: stats.bytes_written,
            bytes_downloaded: stats.bytes_fetched,
            chunks: stats.chunks,
            throughput_bytes_per_sec: stats.throughput_bytes_per_sec,
            duration_secs: stats.duration_secs,
            ..Default::default()
        })),
    })
}

/// Runs `make()`'s future to its end, or until `cancelled` (then drops it), on a blocking thread
/// of its own: the data path's futures are not all provably `Send` (a rustc limitation with
/// closures in stream combinators), which a detached operation task requires.
async fn on_own_thread<T, F, Fut>(cancelled: impl Future<Output = ()> + Send + 'static, make: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        rt.block_on(async move {
            tokio::select! {
                r = make() => r,
                () = cancelled => Err(Error::Cancelled),
            }
        })
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

/// A path of the request, which must be absolute.
fn absolute(p: &str, field: &str) -> Result<std::path::PathBuf> {
    let path = std::path::PathBuf::from(p);
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!("{field} must be an absolute path")));
    }
    Ok(path)
}

/// Cancellation drops the tree backup (`tree::backup` has no cancellation hook of its own).
async fn backup_paths(
    op: Arc<Operation>,
    target: RepoTarget,
    path: std::path::PathBuf,
    parent: String,
    mut opts: crate::tree::BackupOptions,
) -> Result<pb::OperationResult> {
    let repo = target.open_for_backup(&op).await?;
    if !parent.is_empty() {
        opts.parent = Some(op.until_cancelled(async { Ok(repo.resolve_snapshot(&parent).await?) }).await?);
    }
    op.set_phase(pb::Phase::Transferring);
    tracing::info!(path = %path.display(), "backing up a directory");
    let progress = op.progress.clone();
    let s =
        on_own_thread(
            op.cancelled(),
            move || async move { Ok(crate::tree::backup(&repo, &path, &opts, progress).await?) },
        )
        .await?;
    op.files.store(s.files_read + s.files_reused, std::sync::atomic::Ordering::Relaxed);
    Ok(pb::OperationResult {
        result: Some(pb::operation_result::Result::Backup(pb::BackupStats {
            snapshot_id: s.snapshot_id.to_string(),
            bytes_read: s.bytes_read,
            size: s.bytes_total,
            bytes_new: s.bytes_new,
            bytes_uploaded: s.bytes_uploaded,
            files: s.files_read + s.files_reused,
            files_reused: s.files_reused,
            dirs: s.dirs,
            parent_snapshot_id: s.parent.map(|p| p.to_string()).unwrap_or_default(),
            partial: s.partial,
            errors: s.errors,
            dedup_ratio: if s.bytes_read == 0 { 0.0 } else { 1.0 - s.bytes_new as f64 / s.bytes_read as f64 },
            throughput_bytes_per_sec: if s.duration_secs > 0.0 { s.bytes_read as f64 / s.duration_secs } else { 0.0 },
            duration_secs: s.duration_secs,
            ..Default::default()
        })),
    })
}

async fn restore_paths(
    op: Arc<Operation>,
    target: RepoTarget,
    snapshot: String,
    dir: std::path::PathBuf,
    opts: crate::tree::RestoreOptions,
) -> Result<pb::OperationResult> {
    let repo = target.open(&op).await?;
    let id = op.until_cancelled(async { Ok(repo.resolve_snapshot(&snapshot).await?) }).await?;
    op.set_phase(pb::Phase::Transferring);
    tracing::info!(snapshot = %id, target = %dir.display(), "restoring a directory");
    let progress = op.progress.clone();
    let s = on_own_thread(op.cancelled(), move || async move {
        Ok(crate::tree::restore(&repo, &id, &dir, &opts, progress).await?)
    })
    .await?;
    op.files.store(s.files, std::sync::atomic::Ordering::Relaxed);
    let downloaded = op.progress.snapshot().bytes_stored;
    Ok(pb::OperationResult {
        result: Some(pb::operation_result::Result::Restore(pb::RestoreStats {
            snapshot_id: s.snapshot_id.map(|i| i.to_string()).unwrap_or_default(),
            bytes_written: s.bytes_written,
            bytes_downloaded: downloaded,
            files: s.files,
            dirs: s.dirs,
            deleted: s.deleted,
            warnings: s.warnings,
            throughput_bytes_per_sec: if s.duration_secs > 0.0 {
                s.bytes_written as f64 / s.duration_secs
            } else {
                0.0
            },
            duration_secs: s.duration_secs,
            ..Default::default()
        })),
    })
}

async fn forget(op: Arc<Operation>, target: RepoTarget, ids: Vec<String>) -> Result<pb::OperationResult> {
    let repo = target.open(&op).await?;
    op.set_phase(pb::Phase::Transferring);
    let (removed, already_absent) = op.until_cancelled(async { Ok(repo.forget(&ids).await?) }).await?;
    let out = pb::ForgetResponse { removed, already_absent };
    Ok(pb::OperationResult { result: Some(pb::operation_result::Result::Forget(out)) })
}

async fn prune(
    op: Arc<Operation>,
    target: RepoTarget,
    opts: crate::prune::PruneOptions,
) -> Result<pb::OperationResult> {
    let repo = target.open(&op).await?;
    op.set_phase(pb::Phase::Transferring);
    let r = op.until_cancelled(async { Ok(crate::prune::prune(&repo, &opts).await?) }).await?;
    Ok(pb::OperationResult { result: Some(pb::operation_result::Result::Prune(crate::task::prune_report(r))) })
}

async fn check(op: Arc<Operation>, target: RepoTarget, read_data: bool) -> Result<pb::OperationResult> {
    let repo = target.open(&op).await?;
    op.set_phase(pb::Phase::Transferring);
    let r = op.until_cancelled(async { Ok(crate::check::check(&repo, read_data).await?) }).await?;
    Ok(pb::OperationResult { result: Some(pb::operation_result::Result::Check(crate::task::check_report(r))) })
}

#[tonic::async_trait]
impl AgentService for Api {
    type BackupStreamStream = EventStream;
    type RestoreStreamStream = EventStream;
    type BackupPathsStream = EventStream;
    type RestorePathsStream = EventStream;
    type PruneStream = EventStream;
    type CheckStream = EventStream;
    type AttachStream = EventStream;

    async fn backup_stream(&self, req: Request<pb::BackupStreamRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let d = digest(&[&r.repository, &r.command, &r.tags, &r.hostname]);
        let defaults = self.defaults.clone();
        self.start(&r.op_id, pb::OperationKind::BackupStream, d, move |op| {
            let target = defaults.resolve(r.repository)?;
            let command = r.command.ok_or_else(|| Error::InvalidArgument("command is required".into()))?;
            if command.argv.first().is_none_or(String::is_empty) {
                return Err(Error::InvalidArgument("command.argv is empty".into()));
            }
            let mut opts = crate::push::PushOptions { tags: tags(r.tags)?, ..Default::default() };
            if !r.hostname.is_empty() {
                opts.hostname = r.hostname;
            }
            opts.uploads = uploads_for(&target.store);
            Ok(Box::pin(backup_stream(op, target, command, opts)))
        })
    }

    async fn restore_stream(&self, req: Request<pb::RestoreStreamRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let d = digest(&[&r.repository, &r.snapshot_id, &r.command]);
        let defaults = self.defaults.clone();
        self.start(&r.op_id, pb::OperationKind::RestoreStream, d, move |op| {
            let target = defaults.resolve(r.repository)?;
            let command = r.command.ok_or_else(|| Error::InvalidArgument("command is required".into()))?;
            if command.argv.first().is_none_or(String::is_empty) {
                return Err(Error::InvalidArgument("command.argv is empty".into()));
            }
            if r.snapshot_id.is_empty() {
                return Err(Error::InvalidArgument("snapshot_id is required".into()));
            }
            Ok(Box::pin(restore_stream(op, target, r.snapshot_id, command)))
        })
    }

    async fn backup_paths(&self, req: Request<pb::BackupPathsRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let d = digest(&[&r.repository, &r.path, &r.tags, &r.hostname, &r.parent_snapshot_id, &r.force]);
        let defaults = self.defaults.clone();
        self.start(&r.op_id, pb::OperationKind::BackupPaths, d, move |op| {
            let target = defaults.resolve(r.repository)?;
            let path = absolute(&r.path, "path")?;
            let mut opts = crate::tree::BackupOptions { tags: tags(r.tags)?, force: r.force, ..Default::default() };
            if !r.hostname.is_empty() {
                opts.hostname = r.hostname;
            }
            opts.uploads = uploads_for(&target.store);
            Ok(Box::pin(backup_paths(op, target, path, r.parent_snapshot_id, opts)))
        })
    }

    async fn restore_paths(&self, req: Request<pb::RestorePathsRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let d = digest(&[&r.repository, &r.snapshot_id, &r.target, &r.delete_extra, &r.include, &r.exclude]);
        let defaults = self.defaults.clone();
        self.start(&r.op_id, pb::OperationKind::RestorePaths, d, move |op| {
            let target = defaults.resolve(r.repository)?;
            let dir = absolute(&r.target, "target")?;
            if r.snapshot_id.is_empty() {
                return Err(Error::InvalidArgument("snapshot_id is required".into()));
            }
            let opts = crate::tree::RestoreOptions { include: r.include, exclude: r.exclude, delete: r.delete_extra };
            Ok(Box::pin(restore_paths(op, target, r.snapshot_id, dir, opts)))
        })
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let r = req.into_inner();
        let filter = tags(r.tags)?;
        let target = self.defaults.resolve(r.repository)?;
        let repo = Repository::at(target.store).open(&target.key).await.map_err(Error::from)?;
        let snapshots = crate::task::list(&repo, &filter, false).await.map_err(Error::from)?;
        Ok(Response::new(pb::ListSnapshotsResponse { snapshots }))
    }

    async fn forget(&self, req: Request<pb::ForgetRequest>) -> Result<Response<pb::ForgetResponse>, Status> {
        let r = req.into_inner();
        let d = digest(&[&r.repository, &r.snapshot_ids]);
        let defaults = self.defaults.clone();
        let (op, _) = self.registry.attach_or_start(&r.op_id, pb::OperationKind::Forget, d, move |op| {
            if r.snapshot_ids.is_empty() {
                return Err(Error::InvalidArgument("snapshot_ids is empty".into()));
            }
            let target = defaults.resolve(r.repository)?;
            Ok(Box::pin(forget(op, target, r.snapshot_ids)))
        })?;
        match op.result().await.map_err(|e| e.in_op(&op.id, op.kind))?.result {
            Some(pb::operation_result::Result::Forget(f)) => Ok(Response::new(f)),
            _ => Err(Error::Internal("forget returned no result".into()).into()),
        }
    }

    async fn prune(&self, req: Request<pb::PruneRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let d = digest(&[&r.repository, &r.grace_period_secs, &r.dry_run]);
        let defaults = self.defaults.clone();
        self.start(&r.op_id, pb::OperationKind::Prune, d, move |op| {
            let target = defaults.resolve(r.repository)?;
            let grace = if r.grace_period_secs == 0 {
                Duration::from_secs(3600)
            } else {
                Duration::from_secs(r.grace_period_secs)
            };
            Ok(Box::pin(prune(
                op,
                target,
                crate::prune::PruneOptions { dry_run: r.dry_run, ..crate::prune::PruneOptions::with_grace(grace) },
            )))
        })
    }

    async fn check(&self, req: Request<pb::CheckRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let d = digest(&[&r.repository, &r.read_data]);
        let defaults = self.defaults.clone();
        self.start(&r.op_id, pb::OperationKind::Check, d, move |op| {
            let target = defaults.resolve(r.repository)?;
            Ok(Box::pin(check(op, target, r.read_data)))
        })
    }

    async fn attach(&self, req: Request<pb::AttachRequest>) -> Result<Response<EventStream>, Status> {
        let id = req.into_inner().op_id;
        let op = self.registry.get(&id).ok_or(Error::UnknownOp(id))?;
        Ok(Response::new(op.events(true, self.interval)))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        let state = self.registry.cancel(&req.into_inner().op_id)?;
        Ok(Response::new(pb::CancelResponse { state: state as i32 }))
    }

    async fn init_repository(
        &self,
        req: Request<pb::InitRepositoryRequest>,
    ) -> Result<Response<pb::InitRepositoryResponse>, Status> {
        let target = self.defaults.resolve(req.into_inner().repository)?;
        let created = match Repository::at(target.store.clone()).open(&target.key).await {
            Ok(_) => false,
            Err(crate::Error::NotARepository(_)) => {
                // A racing creation settles on one repository (a conditional write of its
                // config); whoever lost opens the winner's.
                Repository::at(target.store).open_or_init(&target.key).await.map_err(Error::from)?;
                true
            }
            Err(e) => return Err(Error::from(e).into()),
        };
        Ok(Response::new(pb::InitRepositoryResponse { created }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    const SECRET: &str = "Zq9-never-echoed-9qZ";

    /// What a handler checks before any work, for one request's parts.
    fn validate(
        defaults: &RepoDefaults,
        repository: Option<pb::RepositoryRef>,
        t: std::collections::HashMap<String, String>,
    ) {
        let _ = digest(&[&repository, &t]);
        if let Err(e) = defaults.resolve(repository) {
            let text = format!("{e} {e:?} {}", Status::from(e.clone()).message());
            assert!(!text.contains(SECRET), "a request's secret is echoed: {text}");
        }
        let _ = tags(t);
    }

    proptest! {
        /// Requests are untrusted bytes from the network: any bytes decode to a request or an
        /// error, and validating what decodes never panics and never echoes a store option's
        /// value or a key (the secret planted in every option value here).
        #[test]
        fn hostile_requests_are_refused_without_panics_or_echoed_secrets(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            url in "(s3|gs|az|file|http|x)://[a-z0-9./?=&%-]{0,40}",
            keys in proptest::collection::vec("[a-z_]{0,24}", 0..4),
        ) {
            let defaults = RepoDefaults::default();
            if let Ok(r) = pb::BackupStreamRequest::decode(bytes.as_slice()) {
                let _ = super::super::ops::check_id(&r.op_id);
                validate(&defaults, r.repository, r.tags);
            }
            if let Ok(r) = pb::RestoreStreamRequest::decode(bytes.as_slice()) {
                validate(&defaults, r.repository, Default::default());
            }
            if let Ok(r) = pb::RepositoryRef::decode(bytes.as_slice()) {
                validate(&defaults, Some(r), Default::default());
            }
            let options = keys.into_iter().map(|k| (k, SECRET.to_string())).collect();
            let key = Some(pb::repository_ref::Key::Passphrase(SECRET.as_bytes().to_vec()));
            validate(&defaults, Some(pb::RepositoryRef { store_url: url.clone(), store_options: options, key }), Default::default());
            let with_secret_in_url = format!("{url}?aws_secret_access_key={SECRET}");
            validate(&defaults, Some(pb::RepositoryRef { store_url: with_secret_in_url, ..Default::default() }), Default::default());
        }
    }
}
