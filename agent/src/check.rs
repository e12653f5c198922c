//! Verifying a repository: structure always, every blob with `read_data`.
//!
//! Structure: every index opens; every indexed pack exists with the size the index records;
//! every snapshot opens, and every chunk it lists is indexed. With `read_data`, every pack is
//! downloaded, its hash checked against its name, its trailer opened and every blob decrypted,
//! decompressed and hashed. Each problem names the damaged object and the snapshots it harms.

use std::collections::{BTreeSet, HashMap, HashSet};

use futures::StreamExt;
use kanister_repo::PackId;
use serde::Serialize;

use crate::error::Result;
use crate::repository::{DATA, Repository, Visit, pack_id_from_key, pack_key};

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The damaged object, as its key in the store.
    pub object: String,
    /// What is wrong with it.
    pub problem: String,
    /// Snapshots that cannot be fully restored because of it (short ids).
    pub snapshots: Vec<String>,
}

/// The result of a check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// True when no error was found.
    pub ok: bool,
    /// Damage.
    pub errors: Vec<Problem>,
    /// Things that are not damage but deserve a look.
    pub warnings: Vec<Problem>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Indexed packs.
    pub packs: usize,
    /// Indexed blobs.
    pub blobs: usize,
    /// Packs downloaded and verified (with `read_data`).
    pub packs_read: usize,
    /// Bytes downloaded.
    pub bytes_read: u64,
}

/// Checks the repository.
pub async fn check(repo: &Repository, read_data: bool) -> Result<CheckReport> {
    let index = repo.load_index().await?;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for (id, why) in &index.damaged {
        errors.push(Problem { object: format!("index/{id}"), problem: why.clone(), snapshots: vec![] });
    }

    let listed: HashMap<PackId, u64> =
        repo.store().list(DATA).await?.into_iter().filter_map(|o| Some((pack_id_from_key(&o.key)?, o.size))).collect();
    let mut bad: HashMap<u32, String> = HashMap::new();
    for (pos, (id, size)) in index.packs.iter().enumerate() {
        match listed.get(id) {
            None => {
                bad.insert(pos as u32, "is missing from the store".into());
            }
            Some(s) if s != size => {
                bad.insert(pos as u32, format!("has {s} bytes but the index says {size}: truncated or replaced"));
            }
            Some(_) => {}
        }
    }
    for l in repo.store().leftovers().map_err(|e| crate::Error::io("cannot list upload leftovers", e))? {
        warnings.push(Problem {
            object: l.key.clone(),
            problem: format!(
                "is a leftover of an interrupted upload ({} bytes, reclaimable): prune removes it once older than \
                 its grace period",
                l.size
            ),
            snapshots: vec![],
        });
    }
    for l in repo.locks().await?.iter().filter(|l| !l.is_live()) {
        warnings.push(Problem {
            object: l.key.clone(),
            problem: "is the marker of a backup that stopped renewing it (the process died): prune removes it".into(),
            snapshots: vec![],
        });
    }
    let marked = repo.prune_marked_packs().await?;
    for id in listed.keys().filter(|id| !index.has_pack(id) && !marked.contains(id)) {
        warnings.push(Problem {
            object: pack_key(id),
            problem: "is in no index: left by an interrupted backup (the next backup reuses it; prune removes it), \
                      or its index was lost"
                .into(),
            snapshots: vec![],
        });
    }

    // Which snapshots use which pack; which snapshots are broken by missing metadata.
    let mut users: HashMap<u32, BTreeSet<String>> = HashMap::new();
    let snapshots = repo.snapshots().await?;
    let n_snapshots = snapshots.len();
    for (sid, snap) in &snapshots {
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                errors.push(Problem {
                    object: format!("snapshots/{sid}"),
                    problem: e.to_string(),
                    snapshots: vec![sid.short()],
                });
                continue;
            }
        };
        let mut missing = 0usize;
        let mut first_missing = None;
        let short = sid.short();
        repo.walk_blobs(&index, &snap.root, &mut |v| {
            match v {
                Visit::Blob(b, _) => match index.get(b) {
                    Some(l) => {
                        users.entry(l.pack).or_default().insert(short.clone());
                    }
                    None => {
                        missing += 1;
                        first_missing.get_or_insert(*b);
                    }
                },
                Visit::Unreadable(b, e) => {
                    // Missing blobs were counted above; a blob that is indexed but unreadable
                    // damns its pack.
                    if let Some(l) = index.get(b) {
                        bad.entry(l.pack).or_insert_with(|| format!("metadata blob {} cannot be read: {e}", b.short()));
                    }
                }
            }
            Ok(())
        })
        .await?;
        if missing > 0 {
            errors.push(Problem {
                object: format!("snapshots/{sid}"),
                problem: format!(
                    "{missing} of its blobs are in no index (first: {}): a pack or an index is missing",
                    first_missing.map(|b| b.to_string()).unwrap_or_default()
                ),
                snapshots: vec![sid.short()],
            });
        }
    }

    let (mut packs_read, mut bytes_read) = (0usize, 0u64);
    if read_data {
        let todo: Vec<(u32, PackId)> = index
            .packs
            .iter()
            .enumerate()
            .filter(|(pos, _)| !bad.contains_key(&(*pos as u32)))
            .map(|(pos, (id, _))| (pos as u32, *id))
            .collect();
        let keys = repo.keys().clone();
        let expected: HashMap<PackId, HashSet<kanister_repo::BlobId>> = {
            let mut m: HashMap<PackId, HashSet<kanister_repo::BlobId>> = HashMap::new();
            for (id, loc) in index.iter() {
                m.entry(index.pack_id(&loc)).or_default().insert(*id);
            }
            m
        };
        let expected = &expected;
        let mut results = futures::stream::iter(todo)
            .map(|(pos, id)| {
                let keys = keys.clone();
                async move {
                    let bytes = match repo.store().get(&pack_key(&id)).await {
                        Ok(b) => b,
                        Err(e) => return (pos, 0, Err(e.to_string())),
                    };
                    let n = bytes.len() as u64;
                    let verdict = tokio::task::spawn_blocking(move || kanister_repo::pack::verify(&keys, &id, &bytes))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                        .and_then(|entries| {
                            let inside: HashSet<_> = entries.iter().map(|e| e.id).collect();
                            match expected.get(&id).map(|want| want.iter().filter(|b| !inside.contains(b)).count()) {
                                Some(n) if n > 0 => Err(format!("{n} blobs the index places here are not in it")),
                                _ => Ok(()),
                            }
                        });
                    (pos, n, verdict)
                }
            })
            .buffer_unordered(2);
        while let Some((pos, n, verdict)) = results.next().await {
            packs_read += 1;
            bytes_read += n;
            if let Err(e) = verdict {
                bad.insert(pos, e);
            }
        }
    }

    let mut bad: Vec<_> = bad.into_iter().collect();
    bad.sort_by_key(|(pos, _)| *pos);
    for (pos, why) in bad {
        let id = index.packs[pos as usize].0;
        errors.push(Problem {
            object: pack_key(&id),
            problem: why,
            snapshots: users.get(&pos).map(|s| s.iter().cloned().collect()).unwrap_or_default(),
        });
    }
    Ok(CheckReport {
        ok: errors.is_empty(),
        errors,
        warnings,
        snapshots: n_snapshots,
        packs: index.packs.len(),
        blobs: index.len(),
        packs_read,
        bytes_read,
    })
}
