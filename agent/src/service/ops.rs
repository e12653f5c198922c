//! Operations: started by id, run detached from the request that started them, attached to by
//! any number of callers, cancelled on request, remembered for a while after they end.
//!
//! Guarantees:
//! - One id, one run: [`Registry::attach_or_start`] starts a job only when no operation with
//!   that id is known; otherwise it attaches (same kind and parameters) or refuses
//!   ([`Error::OpConflict`]). The job runs in its own task: a caller that goes away changes
//!   nothing.
//! - At most `max_running` jobs run at once; up to `max_queued` more wait (phase `QUEUED`);
//!   beyond that a start is refused with [`Error::Exhausted`] and nothing is remembered.
//! - A cancelled job is told through [`Operation::cancelled`]; each job decides how to stop
//!   cleanly (a backup removes its marker and writes no snapshot).
//! - A finished operation keeps its result for `retention` (and the newest `max_finished` of
//!   them are kept at most); an id seen again after that starts a new run.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use kanister_proto::agent::v1 as pb;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use super::error::{Error, Result};
use super::metrics::{Finished, Metrics};
use crate::progress::Progress;

/// What a job returns.
pub type JobResult = Result<pb::OperationResult>;
/// A job, ready to run.
pub type Job = Pin<Box<dyn Future<Output = JobResult> + Send>>;
/// The events of one caller attached to an operation.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::OperationEvent, tonic::Status>> + Send>>;

/// Limits of a [`Registry`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Operations running at once.
    pub max_running: usize,
    /// Operations waiting for a slot; more are refused with `RESOURCE_EXHAUSTED`.
    pub max_queued: usize,
    /// How long a finished operation's result stays available.
    pub retention: Duration,
    /// Finished operations remembered at most.
    pub max_finished: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_running: 2, max_queued: 16, retention: Duration::from_secs(3600), max_finished: 1000 }
    }
}

/// The label of a kind in metrics and logs.
pub fn kind_label(kind: pb::OperationKind) -> &'static str {
    match kind {
        pb::OperationKind::BackupStream => "backup_stream",
        pb::OperationKind::RestoreStream => "restore_stream",
        pb::OperationKind::BackupPaths => "backup_paths",
        pb::OperationKind::RestorePaths => "restore_paths",
        pb::OperationKind::Forget => "forget",
        pb::OperationKind::Prune => "prune",
        pb::OperationKind::Check => "check",
        pb::OperationKind::Unspecified => "unspecified",
    }
}

/// One operation.
#[derive(Debug)]
pub struct Operation {
    /// The caller's id.
    pub id: String,
    /// What it does.
    pub kind: pb::OperationKind,
    /// Hash of the request's parameters (never of its secrets).
    digest: u64,
    /// Live counters, updated by the job.
    pub progress: Arc<Progress>,
    /// Files done (tree operations).
    pub files: AtomicU64,
    phase: AtomicU8,
    cancel: watch::Sender<bool>,
    done: watch::Sender<Option<JobResult>>,
    finished_at: Mutex<Option<Instant>>,
}

impl Operation {
    /// Sets the phase reported in progress events.
    pub fn set_phase(&self, p: pb::Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }

    fn phase(&self) -> pb::Phase {
        pb::Phase::try_from(i32::from(self.phase.load(Ordering::Relaxed))).unwrap_or(pb::Phase::Unspecified)
    }

    /// Completes when the operation is cancelled (by [`Registry::cancel`] or the agent's shutdown).
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.cancel.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Runs `fut` unless the operation is cancelled first (then `fut` is dropped).
    pub async fn until_cancelled<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            r = fut => r,
            () = self.cancelled() => Err(Error::Cancelled),
        }
    }

    /// The state now.
    pub fn state(&self) -> pb::OperationState {
        match &*self.done.borrow() {
            Some(Ok(_)) => pb::OperationState::Succeeded,
            Some(Err(e)) if matches!(e.root(), Error::Cancelled) => pb::OperationState::Cancelled,
            Some(Err(_)) => pb::OperationState::Failed,
            None if self.phase() == pb::Phase::Queued => pb::OperationState::Queued,
            None => pb::OperationState::Running,
        }
    }

    /// The counters as a progress message.
    pub fn progress_message(&self) -> pb::Progress {
        let s = self.progress.snapshot();
        let (uploaded, downloaded) = match self.kind {
            pb::OperationKind::RestoreStream | pb::OperationKind::RestorePaths | pb::OperationKind::Check => {
                (0, s.bytes_stored)
            }
            _ => (s.bytes_stored, 0),
        };
        pb::Progress {
            phase: self.phase() as i32,
            bytes_read: s.bytes_read,
            bytes_new: s.bytes_new,
            bytes_uploaded: uploaded,
            bytes_downloaded: downloaded,
            files: self.files.load(Ordering::Relaxed),
            chunks: s.chunks,
            total_bytes: s.total,
            rate_bytes_per_sec: s.rate(),
            eta_secs: s.eta_secs(),
            elapsed_secs: s.elapsed_secs,
        }
    }

    fn event(&self, attached: bool, result: Option<pb::OperationResult>) -> pb::OperationEvent {
        pb::OperationEvent {
            op_id: self.id.clone(),
            kind: self.kind as i32,
            state: self.state() as i32,
            progress: Some(self.progress_message()),
            attached,
            result,
        }
    }

    /// Waits for the end and returns the result.
    pub async fn result(&self) -> JobResult {
        let mut rx = self.done.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_else(|| Err(Error::Internal("no result".into()))),
            Err(_) => Err(Error::Internal("the operation vanished".into())),
        }
    }

    /// Progress every `interval` (and once at once), then the result: a last event, or the
    /// operation's error as the stream's status.
    pub fn events(self: Arc<Self>, attached: bool, interval: Duration) -> EventStream {
        let rx = self.done.subscribe();
        let s = futures::stream::unfold((self, rx, true, false), move |(op, mut rx, first, over)| async move {
            if over {
                return None;
            }
            if !first && rx.borrow().is_none() {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    _ = rx.changed() => {}
                }
            }
            let result = rx.borrow_and_update().clone();
            match result {
                None => Some((Ok(op.event(attached, None)), (op, rx, false, false))),
                Some(Ok(r)) => Some((Ok(op.event(attached, Some(r))), (op, rx, false, true))),
                Some(Err(e)) => {
                    let status = tonic::Status::from(e.in_op(&op.id, op.kind));
                    Some((Err(status), (op, rx, false, true)))
                }
            }
        });
        Box::pin(s)
    }
}

/// All operations of this agent.
#[derive(Debug)]
pub struct Registry {
    ops: Mutex<HashMap<String, Arc<Operation>>>,
    slots: Arc<Semaphore>,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Jobs not finished yet (running or queued).
    active: watch::Sender<usize>,
    stopping: std::sync::atomic::AtomicBool,
}

/// Longest operation id.
const MAX_ID: usize = 128;

pub(crate) fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b)) {
        return Err(Error::InvalidArgument(format!(
            "op_id must be 1 to {MAX_ID} characters of letters, digits and - _ . : / (got {} characters)",
            id.len()
        )));
    }
    Ok(())
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Self {
        let limits = Limits { max_running: limits.max_running.max(1), ..limits };
        Registry {
            ops: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(limits.max_running)),
            limits,
            metrics,
            active: watch::Sender::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Operation>>> {
        self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The operation `id`, if known.
    pub fn get(&self, id: &str) -> Option<Arc<Operation>> {
        self.lock().get(id).cloned()
    }

    /// Attaches to operation `id` if it exists (same kind and digest), or starts `make()`'s job
    /// under that id. Returns the operation and whether this call attached.
    pub fn attach_or_start(
        self: &Arc<Self>,
        id: &str,
        kind: pb::OperationKind,
        digest: u64,
        make: impl FnOnce(Arc<Operation>) -> Result<Job>,
    ) -> Result<(Arc<Operation>, bool)> {
        check_id(id)?;
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        let mut ops = self.lock();
        self.forget_old(&mut ops);
        if let Some(op) = ops.get(id) {
            if op.kind != kind || op.digest != digest {
                return Err(Error::OpConflict(id.to_string()));
            }
            return Ok((op.clone(), true));
        }
        let active = *self.active.borrow();
        let limit = self.limits.max_running + self.limits.max_queued;
        if active >= limit {
            self.metrics.rejected("exhausted");
            return Err(Error::Exhausted { active, limit });
        }
        let op = Arc::new(Operation {
            id: id.to_string(),
            kind,
            digest,
            progress: Progress::new(),
            files: AtomicU64::new(0),
            phase: AtomicU8::new(pb::Phase::Queued as u8),
            cancel: watch::Sender::new(false),
            done: watch::Sender::new(None),
            finished_at: Mutex::new(None),
        });
        let job = make(op.clone())?;
        ops.insert(id.to_string(), op.clone());
        drop(ops);
        self.active.send_modify(|n| *n += 1);
        let span = tracing::info_span!("operation", op_id = %op.id, kind = kind_label(kind));
        tokio::spawn(self.clone().run(op.clone(), job).instrument(span));
        Ok((op, false))
    }

    async fn run(self: Arc<Self>, op: Arc<Operation>, job: Job) {
        let started = Instant::now();
        self.metrics.queued.inc();
        tracing::info!("operation queued");
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok(),
            () = op.cancelled() => None,
        };
        self.metrics.queued.dec();
        let result = match permit {
            None => Err(Error::Cancelled),
            Some(_permit) => {
                self.metrics.running.inc();
                op.set_phase(pb::Phase::Starting);
                tracing::info!("operation started");
                let r = job.await;
                self.metrics.running.dec();
                r
            }
        };
        op.set_phase(pb::Phase::Done);
        let label = match &result {
            Ok(_) => "succeeded",
            Err(e) if matches!(e.root(), Error::Cancelled) => "cancelled",
            Err(_) => "failed",
        };
        let p = op.progress_message();
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.finished(Finished {
            kind: kind_label(op.kind),
            result: label,
            seconds,
            bytes_read: p.bytes_read,
            bytes_uploaded: p.bytes_uploaded,
            bytes_downloaded: p.bytes_downloaded,
        });
        match &result {
            Ok(_) => tracing::info!(
                result = label,
                bytes_read = p.bytes_read,
                bytes_new = p.bytes_new,
                bytes_uploaded = p.bytes_uploaded,
                bytes_downloaded = p.bytes_downloaded,
                seconds,
                "operation finished"
            ),
            Err(e) => tracing::warn!(result = label, error = %e, seconds, "operation finished"),
        }
        *op.finished_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        op.done.send_replace(Some(result));
        self.active.send_modify(|n| *n -= 1);
    }

    /// Drops finished operations older than the retention, and the oldest beyond the cap.
    fn forget_old(&self, ops: &mut HashMap<String, Arc<Operation>>) {
        let finished = |op: &Operation| *op.finished_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ops.retain(|_, op| finished(op).is_none_or(|t| t.elapsed() < self.limits.retention));
        let mut done: Vec<(Instant, String)> =
            ops.iter().filter_map(|(id, op)| finished(op).map(|t| (t, id.clone()))).collect();
        if done.len() > self.limits.max_finished {
            done.sort();
            for (_, id) in &done[..done.len() - self.limits.max_finished] {
                ops.remove(id);
            }
        }
    }

    /// Asks operation `id` to stop; returns its state when asked.
    pub fn cancel(&self, id: &str) -> Result<pb::OperationState> {
        let op = self.get(id).ok_or_else(|| Error::UnknownOp(id.to_string()))?;
        let state = op.state();
        if matches!(state, pb::OperationState::Queued | pb::OperationState::Running) {
            tracing::info!(op_id = %op.id, "cancelling the operation");
            op.cancel.send_replace(true);
        }
        Ok(state)
    }

    /// Refuses new operations, cancels the running ones and waits for them (at most `grace`).
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let ops: Vec<Arc<Operation>> = self.lock().values().cloned().collect();
        for op in ops {
            op.cancel.send_replace(true);
        }
        let mut rx = self.active.subscribe();
        if tokio::time::timeout(grace, rx.wait_for(|n| *n == 0)).await.is_err() {
            tracing::warn!("operations still running at shutdown after {grace:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max_running: usize, max_queued: usize) -> Arc<Registry> {
        Arc::new(Registry::new(Limits { max_running, max_queued, ..Limits::default() }, Arc::new(Metrics::default())))
    }

    fn job(op: &Arc<Operation>) -> Job {
        let op = op.clone();
        Box::pin(async move {
            op.until_cancelled(std::future::pending::<Result<()>>()).await?;
            Ok(pb::OperationResult::default())
        })
    }

    #[tokio::test]
    async fn same_id_attaches_other_parameters_conflict() {
        let r = registry(1, 1);
        let (a, attached) = r.attach_or_start("op-1", pb::OperationKind::Check, 1, |op| Ok(job(&op))).unwrap();
        assert!(!attached);
        let (b, attached) =
            r.attach_or_start("op-1", pb::OperationKind::Check, 1, |_| panic!("must not start twice")).unwrap();
        assert!(attached && Arc::ptr_eq(&a, &b));
        let e = r.attach_or_start("op-1", pb::OperationKind::Prune, 1, |op| Ok(job(&op))).unwrap_err();
        assert!(matches!(e, Error::OpConflict(_)), "{e}");
        assert!(matches!(
            r.attach_or_start("", pb::OperationKind::Check, 1, |op| Ok(job(&op))),
            Err(Error::InvalidArgument(_))
        ));
        r.cancel("op-1").unwrap();
        assert!(matches!(a.result().await, Err(Error::Cancelled)));
        assert_eq!(a.state(), pb::OperationState::Cancelled);
    }

    #[tokio::test]
    async fn limits_queue_then_refuse() {
        let r = registry(1, 1);
        let (a, _) = r.attach_or_start("a", pb::OperationKind::Check, 0, |op| Ok(job(&op))).unwrap();
        let (b, _) = r.attach_or_start("b", pb::OperationKind::Check, 0, |op| Ok(job(&op))).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(a.state(), pb::OperationState::Running);
        assert_eq!(b.state(), pb::OperationState::Queued);
        let e = r.attach_or_start("c", pb::OperationKind::Check, 0, |op| Ok(job(&op))).unwrap_err();
        assert!(matches!(e, Error::Exhausted { active: 2, limit: 2 }), "{e}");
        assert!(r.get("c").is_none());
        r.cancel("a").unwrap();
        let _ = a.result().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.state(), pb::OperationState::Running);
        r.shutdown(Duration::from_secs(5)).await;
        assert!(matches!(b.result().await, Err(Error::Cancelled)));
        assert!(matches!(
            r.attach_or_start("d", pb::OperationKind::Check, 0, |op| Ok(job(&op))),
            Err(Error::ShuttingDown)
        ));
    }
}
