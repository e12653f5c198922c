//! `kanister-agent task`: repository work the coordinator hands to a task pod of the agent image
//! (listing snapshots, forgetting and reclaiming space, deleting a kando path, sizing a snapshot,
//! checking), so that no repository is ever opened, and no index loaded, in the coordinator.
//!
//! The request is a [`pb::TaskRequest`], base64-encoded in `KANISTER_TASK`; the repository is
//! the task pod's (`KANISTER_STORE`, credentials and key from Secrets, as every task pod gets
//! them). The answer is one phase-output line, key [`RESULT_KEY`], holding the base64-encoded
//! [`pb::TaskResult`]. A location without a repository, or a key that does not open it, is an
//! answer ([`pb::TaskRepositoryState`]), not a failure: the coordinator decides what it means for
//! the function that asked.

use std::collections::{BTreeMap, HashSet};

use base64::Engine as _;
use kanister_profile::BACKUP_TAG;
use kanister_proto::agent::v1 as pb;
use kanister_repo::SnapshotId;
use kanister_repo::snapshot::{Root, Snapshot};
use prost::Message as _;

use crate::error::{Error, Result};
use crate::repository::{Locate, RepoKey, Repository, Visit, has_tags};
use crate::store::Store;

/// The environment variable holding the request.
pub const REQUEST_ENV: &str = "KANISTER_TASK";
/// The phase-output key of the answer.
pub const RESULT_KEY: &str = "taskResult";

/// Decodes a request as `KANISTER_TASK` carries it.
pub fn decode_request(text: &str) -> Result<pb::TaskRequest> {
    let bad = |why: String| {
        Error::io(format!("{REQUEST_ENV} is not a task request: {why}"), std::io::ErrorKind::InvalidInput.into())
    };
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|e| bad(e.to_string()))?;
    pb::TaskRequest::decode(bytes.as_slice()).map_err(|e| bad(e.to_string()))
}

/// The phase-output line carrying `result`.
pub fn result_line(result: &pb::TaskResult) -> Result<String> {
    crate::kando::output_line(RESULT_KEY, &base64::engine::general_purpose::STANDARD.encode(result.encode_to_vec()))
}

/// Opens the repository at `store` with `key` and runs `request` against it.
pub async fn run(store: Store, key: &RepoKey, request: pb::TaskRequest) -> Result<pb::TaskResult> {
    let repo = match Repository::at(store).open(key).await {
        Ok(repo) => repo,
        Err(Error::NotARepository(_)) => return Ok(state_only(pb::TaskRepositoryState::NoRepository)),
        Err(Error::Format(kanister_repo::Error::WrongKey { .. })) => {
            return Ok(state_only(pb::TaskRepositoryState::WrongKey));
        }
        Err(e) => return Err(e),
    };
    use pb::task_request::Task;
    use pb::task_result::Result as R;
    let result = match request.task {
        None => {
            return Err(Error::io(
                "the task request names no task: is this agent older than the coordinator?",
                std::io::ErrorKind::InvalidInput.into(),
            ));
        }
        Some(Task::ListSnapshots(t)) => R::Snapshots(pb::ListSnapshotsResponse {
            snapshots: list(&repo, &t.tags.into_iter().collect(), true).await?,
        }),
        Some(Task::Forget(t)) => R::Forget(forget(&repo, t).await?),
        Some(Task::DeleteAt(t)) => {
            let mut deleted = 0;
            for path in &t.paths {
                deleted += crate::kando::delete_at(&repo, path).await? as u64;
            }
            R::DeleteAt(pb::DeleteAtResult { deleted })
        }
        Some(Task::Stats(t)) => R::Stats(stats(&repo, &t.snapshot_id, t.raw_data).await?),
        Some(Task::Check(t)) => R::Check(check_report(crate::check::check(&repo, t.read_data).await?)),
    };
    Ok(pb::TaskResult { state: pb::TaskRepositoryState::Open.into(), result: Some(result) })
}

fn state_only(state: pb::TaskRepositoryState) -> pb::TaskResult {
    pb::TaskResult { state: state.into(), result: None }
}

/// The snapshots carrying every tag of `filter`, oldest first; with `unreadable`, those that
/// cannot be read too (with their `error`), else they are left out with a warning.
pub async fn list(
    repo: &Repository,
    filter: &BTreeMap<String, String>,
    unreadable: bool,
) -> Result<Vec<pb::SnapshotInfo>> {
    let mut rows = Vec::new();
    let mut broken = Vec::new();
    for (id, s) in repo.snapshots().await? {
        match s {
            Ok(s) if has_tags(&s, filter) => rows.push((id, s)),
            Ok(_) => {}
            Err(e) if unreadable => broken.push(pb::SnapshotInfo {
                id: id.to_string(),
                short_id: id.short(),
                error: crate::error::error_chain(&e),
                ..Default::default()
            }),
            Err(e) => tracing::warn!(snapshot = %id, error = %e, "skipping an unreadable snapshot"),
        }
    }
    rows.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    let mut out: Vec<pb::SnapshotInfo> = rows.into_iter().map(|(id, s)| snapshot_info(&id, s)).collect();
    out.extend(broken);
    Ok(out)
}

/// A snapshot as the agent's API describes it.
pub fn snapshot_info(id: &SnapshotId, s: Snapshot) -> pb::SnapshotInfo {
    let (kind, path) = match &s.root {
        Root::Stream { .. } => ("stream", String::new()),
        Root::Tree { path, .. } => ("tree", path.clone()),
    };
    pb::SnapshotInfo {
        id: id.to_string(),
        short_id: id.short(),
        kind: kind.into(),
        path,
        time: s.time,
        hostname: s.hostname,
        tags: s.tags.into_iter().collect(),
        size: s.size,
        bytes_new: s.stats.bytes_new,
        bytes_uploaded: s.stats.bytes_uploaded,
        duration_secs: s.stats.duration_secs,
        error: String::new(),
    }
}

async fn forget(repo: &Repository, t: pb::ForgetTask) -> Result<pb::ForgetTaskResult> {
    let mut ids = t.snapshot_ids;
    if !t.backup_tags.is_empty() {
        let tags: HashSet<&String> = t.backup_tags.iter().collect();
        for (id, s) in repo.snapshots().await? {
            if s.is_ok_and(|s| s.tags.get(BACKUP_TAG).is_some_and(|v| tags.contains(v))) {
                ids.push(id.to_string());
            }
        }
    }
    let (removed, already_absent) = repo.forget(&ids).await?;
    let prune = if t.reclaim_space {
        let opts = crate::prune::PruneOptions {
            wait_lock: std::time::Duration::from_secs(t.wait_lock_secs.max(1)),
            ..crate::prune::PruneOptions::with_grace(std::time::Duration::ZERO)
        };
        let r = crate::prune::prune(repo, &opts).await?;
        Some(prune_report(r))
    } else {
        None
    };
    Ok(pb::ForgetTaskResult { removed, already_absent, prune })
}

async fn stats(repo: &Repository, snapshot: &str, raw_data: bool) -> Result<pb::StatsResult> {
    let id = repo.resolve_snapshot(snapshot).await?;
    let snap = repo.snapshot(&id).await?;
    let file_count = match snap.root {
        Root::Stream { .. } => 1,
        Root::Tree { .. } => snap.stats.files_read + snap.stats.files_reused,
    };
    if !raw_data {
        return Ok(pb::StatsResult { file_count, size: snap.size });
    }
    // What the snapshot's blobs take in the store, each counted once.
    let index = repo.load_lookup().await?;
    let mut seen = HashSet::new();
    let mut size = 0u64;
    repo.walk_blobs(&index, &snap.root, &mut |v| {
        if let Visit::Blob(id, _) = v
            && seen.insert(*id)
            && let Some((_, entry)) = index.locate(id)?
        {
            size += u64::from(entry.length);
        }
        Ok(())
    })
    .await?;
    Ok(pb::StatsResult { file_count, size })
}

/// A prune's report as the agent's API gives it.
pub fn prune_report(r: crate::prune::PruneReport) -> pb::PruneReport {
    pb::PruneReport {
        snapshots: r.snapshots as u64,
        packs_set_aside: r.packs_set_aside as u64,
        bytes_set_aside: r.bytes_set_aside,
        packs_deleted: r.packs_deleted as u64,
        bytes_deleted: r.bytes_deleted,
        packs_restored: r.packs_restored as u64,
        packs_waiting: r.packs_waiting as u64,
        waiting_reason: r.waiting_reason.unwrap_or_default(),
        bytes_unused_in_used_packs: r.bytes_unused_in_used_packs,
        indexes_compacted: r.indexes_compacted as u64,
    }
}

/// A check's report as the agent's API gives it.
pub fn check_report(r: crate::check::CheckReport) -> pb::CheckReport {
    let problems = |v: Vec<crate::check::Problem>| {
        v.into_iter().map(|p| pb::Problem { object: p.object, problem: p.problem, snapshots: p.snapshots }).collect()
    };
    pb::CheckReport {
        ok: r.ok,
        errors: problems(r.errors),
        warnings: problems(r.warnings),
        snapshots: r.snapshots as u64,
        packs: r.packs as u64,
        blobs: r.blobs as u64,
        packs_read: r.packs_read as u64,
        bytes_read: r.bytes_read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    proptest! {
        /// Any bytes, any text, and valid requests with a byte changed: never a panic, either a
        /// request or an error naming the variable.
        #[test]
        fn hostile_requests_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            text in ".{0,80}",
            at in any::<usize>(),
            flip in 1u8..,
        ) {
            let refused = |r: Result<pb::TaskRequest>| match r {
                Err(e) => e.to_string().contains(REQUEST_ENV),
                Ok(_) => true,
            };
            prop_assert!(refused(decode_request(&base64::engine::general_purpose::STANDARD.encode(&bytes))));
            prop_assert!(refused(decode_request(&text)));
            let forget = pb::ForgetTask {
                snapshot_ids: vec![text.clone()],
                backup_tags: vec![text.clone(), "ns/as/u/backup/dump".into()],
                reclaim_space: true,
                wait_lock_secs: 300,
            };
            let mut valid = pb::TaskRequest { task: Some(pb::task_request::Task::Forget(forget)) }.encode_to_vec();
            let i = at % valid.len();
            valid[i] ^= flip;
            prop_assert!(refused(decode_request(&base64::engine::general_purpose::STANDARD.encode(&valid))));
        }
    }

    #[test]
    fn requests_round_trip_and_garbage_is_named() {
        let e = decode_request("not base64 !").unwrap_err().to_string();
        assert!(e.contains(REQUEST_ENV) && e.contains("not a task request"), "{e}");
        let req = pb::TaskRequest { task: Some(pb::task_request::Task::Check(pb::CheckTask { read_data: true })) };
        let text = base64::engine::general_purpose::STANDARD.encode(req.encode_to_vec());
        assert_eq!(decode_request(&text).unwrap(), req);
    }
}
