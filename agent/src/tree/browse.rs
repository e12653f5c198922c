//! Looking into tree snapshots without restoring them: `ls`, `cat`, `diff`.

use std::collections::BTreeMap;

use kanister_repo::SnapshotId;
use kanister_repo::tree::{Node, NodeKind};
use serde::Serialize;

use super::{display_name, read_listing, tree_root};
use crate::error::{Error, Result};
use crate::repository::{Locate, Repository};

/// Finds the node at `path` (relative, `/`-separated; empty for the top directory).
pub async fn find(repo: &Repository, index: &dyn Locate, id: &SnapshotId, path: &str) -> Result<Node> {
    let snap = repo.snapshot(id).await?;
    let (_, mut node) = tree_root(&snap, id)?;
    for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if node.kind != NodeKind::Dir {
            return Err(not_found(id, path));
        }
        let listing = read_listing(repo, index, &node.subtree).await?;
        node = listing.into_iter().find(|n| n.name == comp.as_bytes()).ok_or_else(|| not_found(id, path))?;
    }
    Ok(node)
}

fn not_found(id: &SnapshotId, path: &str) -> Error {
    Error::io(format!("{path:?} is not in snapshot {}", id.short()), std::io::Error::from(std::io::ErrorKind::NotFound))
}

/// The entries at `path`: a directory's listing, or the single node of a file.
pub async fn ls(repo: &Repository, id: &SnapshotId, path: &str) -> Result<Vec<Node>> {
    let index = repo.load_lookup().await?;
    let node = find(repo, &index, id, path).await?;
    if node.kind == NodeKind::Dir { read_listing(repo, &index, &node.subtree).await } else { Ok(vec![node]) }
}

/// `ls -l` style line for a node.
pub fn long_line(n: &Node) -> String {
    let t = match n.kind {
        NodeKind::File => '-',
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::CharDevice => 'c',
        NodeKind::BlockDevice => 'b',
    };
    let mut perms = String::new();
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        perms.push(if n.mode & (0o400 >> i) != 0 { c } else { '-' });
    }
    let secs = n.mtime_ns.div_euclid(1_000_000_000).max(0) as u64;
    let time = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    let target = n.target.as_ref().map(|t| format!(" -> {}", display_name(t))).unwrap_or_default();
    format!("{t}{perms} {:>5} {:>5} {:>12} {time} {}{target}", n.uid, n.gid, n.size, display_name(&n.name))
}

/// The content of the file at `path`, written to `out`.
pub async fn cat<W: std::io::Write + Send + 'static>(
    repo: &Repository,
    id: &SnapshotId,
    path: &str,
    out: W,
) -> Result<W> {
    let index = repo.load_lookup().await?;
    let node = find(repo, &index, id, path).await?;
    if node.kind != NodeKind::File {
        return Err(Error::WrongKind(format!("{path:?} in snapshot {} is not a file", id.short())));
    }
    let mut out = out;
    for b in &node.content {
        let data = repo.read_blob(&index, b).await?;
        out = tokio::task::spawn_blocking(move || -> Result<W> {
            out.write_all(&data).map_err(|e| Error::io("writing the output failed", e))?;
            Ok(out)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    }
    Ok(out)
}

/// What differs between two tree snapshots.
#[derive(Debug, Default, Serialize)]
pub struct Diff {
    /// Paths only in the second.
    pub added: Vec<String>,
    /// Paths only in the first.
    pub removed: Vec<String>,
    /// Paths in both whose type, content, size, mode, owner or mtime differ.
    pub changed: Vec<String>,
}

fn differs(a: &Node, b: &Node) -> bool {
    a.kind != b.kind
        || a.content != b.content
        || a.size != b.size
        || a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.mtime_ns != b.mtime_ns
        || a.target != b.target
}

/// Compares two tree snapshots, directory by directory.
pub async fn diff(repo: &Repository, a: &SnapshotId, b: &SnapshotId) -> Result<Diff> {
    let index = repo.load_lookup().await?;
    let (_, ra) = tree_root(&repo.snapshot(a).await?, a)?;
    let (_, rb) = tree_root(&repo.snapshot(b).await?, b)?;
    let mut out = Diff::default();
    let mut stack = vec![(String::new(), Some(ra), Some(rb))];
    while let Some((rel, x, y)) = stack.pop() {
        let list = |n: Option<Node>| async {
            match n {
                Some(n) if n.kind == NodeKind::Dir => Ok::<_, Error>(
                    read_listing(repo, &index, &n.subtree).await?.into_iter().map(|c| (c.name.clone(), c)).collect(),
                ),
                _ => Ok(BTreeMap::new()),
            }
        };
        // Identical listings (same parts) hold identical subtrees: skip them.
        if let (Some(p), Some(q)) = (&x, &y)
            && p.subtree == q.subtree
        {
            continue;
        }
        let la: BTreeMap<Vec<u8>, Node> = list(x).await?;
        let lb: BTreeMap<Vec<u8>, Node> = list(y).await?;
        let names: std::collections::BTreeSet<&Vec<u8>> = la.keys().chain(lb.keys()).collect();
        for name in names.into_iter().rev() {
            let path = if rel.is_empty() { display_name(name) } else { format!("{rel}/{}", display_name(name)) };
            match (la.get(name), lb.get(name)) {
                (Some(_), None) => out.removed.push(path.clone()),
                (None, Some(_)) => out.added.push(path.clone()),
                (Some(p), Some(q)) if differs(p, q) && !(p.kind == NodeKind::Dir && q.kind == NodeKind::Dir) => {
                    out.changed.push(path.clone())
                }
                _ => {}
            }
            let (p, q) = (la.get(name).cloned(), lb.get(name).cloned());
            if p.as_ref().is_some_and(|n| n.kind == NodeKind::Dir)
                || q.as_ref().is_some_and(|n| n.kind == NodeKind::Dir)
            {
                stack.push((path, p, q));
            }
        }
    }
    out.added.sort();
    out.removed.sort();
    out.changed.sort();
    Ok(out)
}
