//! `ListSnapshots`: what a Profile's repository holds, tied back to the ActionSets that made it.
//!
//! The agent lists the repository's snapshots in a task pod ([`crate::engine::task`]); the
//! coordinator never opens the repository. [`describe`] (pure, no IO) turns the list into
//! answers. A snapshot is tied to the
//! ActionSet, action and output artifact that produced it by, in this order:
//!
//! 1. its backup tag ([`tags::BACKUP`], written by `BackupStream`, `BackupData`,
//!    `BackupDataAll` and `CopyVolumeData`): the phase's operation id
//!    `namespace/name/uid/action/phase[/pod]` names the ActionSet, action and phase even after
//!    the ActionSet was deleted. When the ActionSet still exists (same UID), its object,
//!    blueprint and the artifact referring to the snapshot are added;
//! 2. else an output artifact, of an ActionSet whose action used the Profile, holding the
//!    snapshot's id (full or short), its kando path ([`tags::KANDO_PATH`]: upstream blueprints'
//!    `kando location push --path P` then `kando output s3path P`) or its backup tag. Pushes at
//!    one path by several ActionSets go to the first ActionSet that ended after the snapshot
//!    was made.
//!
//! Nothing else ties a snapshot to an ActionSet: one pushed by hand, or whose ActionSet's
//! artifacts name neither its id nor its path, is listed with its tags only.

use kanister_proto::agent::v1::SnapshotInfo;
use kanister_proto::coordinator::v1 as pb;

use crate::crd::{ActionSet, Artifact, ObjectReference};
use crate::engine::repository::tags;

/// The parts of a backup tag, `namespace/name/uid/action/phase[/pod]`.
#[derive(Debug, PartialEq, Eq)]
struct BackupTag<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    action: &'a str,
    phase: &'a str,
}

/// Parses a backup tag; `None` for a tag not written by the coordinator (a user's
/// `DeleteData --backupTag` value, say).
fn parse_tag(tag: &str) -> Option<BackupTag<'_>> {
    let mut parts = tag.splitn(5, '/');
    let (namespace, name, uid, action, rest) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if namespace.is_empty() || name.is_empty() || action.is_empty() || rest.is_empty() {
        return None;
    }
    // `BackupDataAll` appends `/pod`; phase names hold no `/`.
    let phase = rest.split('/').next().unwrap_or_default();
    // An action that shares its name with another of the ActionSet carries its index.
    let action = match action.rsplit_once(':') {
        Some((a, i)) if i.parse::<usize>().is_ok() => a,
        _ => action,
    };
    Some(BackupTag { namespace, name, uid, action, phase })
}

/// What identifies a snapshot in an artifact's values.
struct Keys<'a> {
    id: String,
    short: String,
    tag: Option<&'a str>,
    path: Option<&'a str>,
}

impl Keys<'_> {
    /// Whether `art` refers to the snapshot.
    fn in_artifact(&self, art: &Artifact) -> bool {
        let trim = |p: &str| p.trim_start_matches('/').to_string();
        art.key_value.values().chain(std::iter::once(&art.kopia_snapshot)).any(|v| {
            !v.is_empty()
                && (v.contains(&self.id)
                    || *v == self.short
                    || self.tag.is_some_and(|t| v == t)
                    || self.path.is_some_and(|p| trim(v) == trim(p)))
        })
    }
}

/// Whether `profile` is the Profile of `a`'s action `spec` (a reference without a namespace
/// matches any).
fn uses(spec: &crate::crd::actionset::ActionSpec, profile: &ObjectReference) -> bool {
    spec.profile
        .as_ref()
        .is_some_and(|p| p.name == profile.name && (p.namespace.is_empty() || p.namespace == profile.namespace))
}

fn completion(a: &ActionSet) -> Option<k8s_openapi::jiff::Timestamp> {
    a.status.as_ref()?.progress.as_ref()?.last_transition_time.as_ref().map(|t| t.0)
}

/// The output artifact of action `i` of `a` that refers to the snapshot.
fn artifact_of<'a>(a: &'a ActionSet, i: usize, keys: &Keys<'_>) -> Option<(&'a String, &'a Artifact)> {
    a.status.as_ref()?.actions.get(i)?.artifacts.iter().find(|(_, art)| keys.in_artifact(art))
}

/// Fills in what `a`'s action `i` and its artifact say.
fn fill(out: &mut pb::Snapshot, a: &ActionSet, i: usize, artifact: Option<(&String, &Artifact)>) {
    out.actionset_namespace = a.metadata.namespace.clone().unwrap_or_default();
    out.actionset_name = a.metadata.name.clone().unwrap_or_default();
    if let Some(spec) = a.spec.actions.get(i) {
        out.action = spec.name.clone();
        let o = &spec.object;
        let kind = if o.kind.is_empty() { &o.resource } else { &o.kind };
        out.object = format!("{kind} {}/{}", o.namespace, o.name);
        out.blueprint = spec.blueprint.clone();
    }
    out.completion_time = completion(a).map(|t| t.to_string()).unwrap_or_default();
    if let Some((name, art)) = artifact {
        out.artifact = name.clone();
        out.key_values = art.key_value.clone().into_iter().collect();
        out.kopia_snapshot = art.kopia_snapshot.clone();
    }
}

/// One snapshot, tied to what produced it.
fn one(snap: SnapshotInfo, profile: &ObjectReference, actionsets: &[ActionSet]) -> pb::Snapshot {
    let mut out = pb::Snapshot { id: snap.id.clone(), short_id: snap.short_id.clone(), ..Default::default() };
    if !snap.error.is_empty() {
        out.error = snap.error;
        return out;
    }
    let path_tag = snap.tags.get(tags::KANDO_PATH).filter(|p| !p.is_empty());
    (out.kind, out.path) = match (snap.kind.as_str(), path_tag) {
        ("stream", Some(p)) => ("kando".into(), p.clone()),
        ("stream", None) => ("stream".into(), String::new()),
        (kind, _) => (kind.into(), snap.path.clone()),
    };
    out.time = snap.time.clone();
    out.tags = snap.tags.clone();
    out.logical_bytes = snap.size;
    out.stored_bytes = snap.bytes_uploaded;
    out.hostname = snap.hostname.clone();
    #[allow(deprecated)]
    {
        out.size_bytes = i64::try_from(snap.size).unwrap_or(i64::MAX);
    }
    let backup_tag = snap.tags.get(tags::BACKUP).map(String::as_str);
    let keys =
        Keys { id: out.id.clone(), short: out.short_id.clone(), tag: backup_tag, path: path_tag.map(String::as_str) };

    if let Some(t) = backup_tag.and_then(parse_tag) {
        out.actionset_namespace = t.namespace.into();
        out.actionset_name = t.name.into();
        out.action = t.action.into();
        out.phase = t.phase.into();
        let same = |a: &&ActionSet| {
            a.metadata.namespace.as_deref() == Some(t.namespace)
                && a.metadata.name.as_deref() == Some(t.name)
                && (t.uid.is_empty() || a.metadata.uid.as_deref() == Some(t.uid))
        };
        if let Some(a) = actionsets.iter().find(same) {
            let named: Vec<usize> = (0..a.spec.actions.len()).filter(|&i| a.spec.actions[i].name == t.action).collect();
            let found = named.iter().find_map(|&i| artifact_of(a, i, &keys).map(|art| (i, Some(art))));
            if let Some((i, art)) = found.or_else(|| named.first().map(|&i| (i, None))) {
                fill(&mut out, a, i, art);
            }
        }
        return out;
    }

    // Artifacts of the ActionSets that used the Profile.
    let made = snap.time.parse::<k8s_openapi::jiff::Timestamp>().ok();
    let mut candidates: Vec<(&ActionSet, usize, (&String, &Artifact))> = Vec::new();
    for a in actionsets {
        for (i, spec) in a.spec.actions.iter().enumerate() {
            if uses(spec, profile)
                && let Some(art) = artifact_of(a, i, &keys)
            {
                candidates.push((a, i, art));
            }
        }
    }
    // The first to end after the snapshot was made; else the last to end. ActionSet times
    // have whole seconds (Kubernetes `Time`), snapshot times microseconds: compare seconds.
    candidates.sort_by_key(|(a, _, _)| completion(a));
    let after = candidates.iter().find(|(a, _, _)| match (made, completion(a)) {
        (Some(m), Some(c)) => c.as_second() >= m.as_second(),
        _ => false,
    });
    if let Some((a, i, art)) = after.or(candidates.last()) {
        fill(&mut out, a, *i, Some(*art));
    }
    out
}

/// The snapshots of the repository of `profile`, newest first (unreadable ones last), each tied
/// to the ActionSet and artifact that produced it where its tags or an artifact say so.
pub fn describe(listed: Vec<SnapshotInfo>, profile: &ObjectReference, actionsets: &[ActionSet]) -> Vec<pb::Snapshot> {
    let mut out: Vec<pb::Snapshot> = listed.into_iter().map(|snap| one(snap, profile, actionsets)).collect();
    out.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.id.cmp(&b.id)));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn profile() -> ObjectReference {
        ObjectReference { namespace: "mysql-test".into(), name: "s3-profile".into(), ..Default::default() }
    }

    fn id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn short(n: u8) -> String {
        id(n)[..8].to_string()
    }

    /// Snapshot `n` as the agent lists it.
    fn snapshot(n: u8, time: &str, tags: &[(&str, &str)], (kind, path): (&str, &str)) -> SnapshotInfo {
        SnapshotInfo {
            id: id(n),
            short_id: short(n),
            time: time.into(),
            hostname: "mysql-release-0".into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            kind: kind.into(),
            path: path.into(),
            size: 1000,
            bytes_uploaded: 300,
            ..Default::default()
        }
    }

    fn stream() -> (&'static str, &'static str) {
        ("stream", "")
    }

    fn tree(path: &str) -> (&'static str, &str) {
        ("tree", path)
    }

    /// A complete ActionSet `ns/name` (uid `u-<name>`) whose action `action` used `profile`
    /// and produced `artifacts`, ending at `ended`.
    fn actionset(
        name: &str,
        action: &str,
        profile: &str,
        ended: &str,
        artifacts: &[(&str, &[(&str, &str)])],
    ) -> ActionSet {
        let arts: BTreeMap<&str, serde_json::Value> = artifacts
            .iter()
            .map(|(n, kv)| (*n, serde_json::json!({"keyValue": kv.iter().cloned().collect::<BTreeMap<_, _>>()})))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cr.kanister.io/v1alpha1",
            "kind": "ActionSet",
            "metadata": {"name": name, "namespace": "kanister", "uid": format!("u-{name}")},
            "spec": {"actions": [{
                "name": action,
                "blueprint": "mysql-blueprint",
                "object": {"kind": "statefulset", "namespace": "mysql-test", "name": "mysql-release"},
                "profile": {"namespace": "mysql-test", "name": profile},
            }]},
            "status": {
                "state": "complete",
                "progress": {"lastTransitionTime": ended},
                "actions": [{"name": action, "object": {}, "artifacts": arts}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn kando_pushes_tie_to_the_artifact_naming_their_path() {
        let path = "/mysql-backups/mysql-test/mysql-release/2025-01-01T10-00-00/dump.sql.gz";
        let first = snapshot(1, "2025-01-01T10:00:00.000001Z", &[(tags::KANDO_PATH, path)], stream());
        // A second push at the same path by another ActionSet, later.
        let second = snapshot(2, "2025-01-02T10:00:00.000001Z", &[(tags::KANDO_PATH, path)], stream());
        let sets = [
            // The artifact holds the path without its leading slash: still the same path.
            actionset(
                "backup-later",
                "backup",
                "s3-profile",
                "2025-01-02T10:00:05Z",
                &[("mysqlCloudDump", &[("s3path", path.trim_start_matches('/'))])],
            ),
            // Ended within the second the push began (ActionSet times have whole seconds).
            actionset(
                "backup-first",
                "backup",
                "s3-profile",
                "2025-01-01T10:00:00Z",
                &[("mysqlCloudDump", &[("s3path", path)])],
            ),
            // Same path, another Profile: never a candidate.
            actionset(
                "backup-other",
                "backup",
                "gcs-profile",
                "2025-01-01T10:00:01Z",
                &[("mysqlCloudDump", &[("s3path", path)])],
            ),
        ];
        let got = describe(vec![first, second], &profile(), &sets);
        assert_eq!(got.len(), 2);
        // Newest first.
        assert_eq!((got[0].id.as_str(), got[0].actionset_name.as_str()), (id(2).as_str(), "backup-later"));
        let s = &got[1];
        assert_eq!(s.actionset_name, "backup-first");
        assert_eq!((s.kind.as_str(), s.path.as_str()), ("kando", path));
        assert_eq!((s.artifact.as_str(), s.key_values["s3path"].as_str()), ("mysqlCloudDump", path));
        assert_eq!((s.action.as_str(), s.blueprint.as_str()), ("backup", "mysql-blueprint"));
        assert_eq!(s.object, "statefulset mysql-test/mysql-release");
        assert_eq!((s.logical_bytes, s.stored_bytes), (1000, 300));
        assert_eq!(s.short_id, short(1));
        assert!(s.completion_time.starts_with("2025-01-01T10:00:00"), "{}", s.completion_time);
        assert_eq!(s.phase, "", "no backup tag, no phase");
    }

    #[test]
    fn backup_tags_name_the_actionset_even_after_it_is_gone() {
        let tag = "kanister/backup-abcde/u-backup-abcde/backup/backupToStore";
        let kept = snapshot(
            1,
            "2025-01-01T10:00:00.000001Z",
            &[(tags::BACKUP, tag), (tags::POD, "db/app-0")],
            tree("/var/lib/mysql"),
        );
        let all_tag = "kanister/backup-gone1/u-gone/backup/backupAll/app-1";
        let orphan = snapshot(2, "2025-01-01T09:00:00.000001Z", &[(tags::BACKUP, all_tag)], tree("/data"));
        let stream_tag = "kanister/backup-abcde/u-backup-abcde/backup/dumpStream";
        let dump = snapshot(3, "2025-01-01T10:00:01.000001Z", &[(tags::BACKUP, stream_tag)], stream());
        let sets = [actionset(
            "backup-abcde",
            "backup",
            "s3-profile",
            "2025-01-01T10:01:00Z",
            &[("volume", &[("backupTag", tag)]), ("dump", &[("backupID", &id(3))])],
        )];
        let got = describe(vec![kept, orphan, dump], &profile(), &sets);
        let by_id = |n: u8| got.iter().find(|s| s.id == id(n)).unwrap();

        let s = by_id(1);
        assert_eq!((s.kind.as_str(), s.path.as_str()), ("tree", "/var/lib/mysql"));
        assert_eq!((s.actionset_name.as_str(), s.phase.as_str()), ("backup-abcde", "backupToStore"));
        assert_eq!(s.artifact, "volume");
        assert_eq!(s.object, "statefulset mysql-test/mysql-release");

        let s = by_id(2);
        assert_eq!(
            (s.actionset_namespace.as_str(), s.actionset_name.as_str(), s.action.as_str(), s.phase.as_str()),
            ("kanister", "backup-gone1", "backup", "backupAll")
        );
        assert_eq!((s.artifact.as_str(), s.object.as_str()), ("", ""), "the ActionSet is gone");

        let s = by_id(3);
        assert_eq!((s.kind.as_str(), s.artifact.as_str(), s.phase.as_str()), ("stream", "dump", "dumpStream"));
    }

    #[test]
    fn untied_and_unreadable_snapshots_are_listed_too() {
        let by_hand = snapshot(1, "2025-01-01T10:00:00.000001Z", &[("owner", "me")], stream());
        // A backup tag someone chose (DeleteData --backupTag): not the coordinator's shape.
        let foreign = snapshot(2, "2025-01-01T11:00:00.000001Z", &[(tags::BACKUP, "nightly")], stream());
        let sets = [actionset("backup-x", "backup", "s3-profile", "2025-01-01T10:00:05Z", &[("a", &[("k", "v")])])];
        let got = describe(
            vec![
                SnapshotInfo {
                    id: id(9),
                    short_id: short(9),
                    error: "snapshot is damaged".into(),
                    ..Default::default()
                },
                by_hand,
                foreign,
            ],
            &profile(),
            &sets,
        );
        assert_eq!(got.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), [id(2), id(1), id(9)]);
        assert!(got[..2].iter().all(|s| s.actionset_name.is_empty() && s.kind == "stream"));
        assert_eq!(got[1].tags["owner"], "me");
        assert_eq!((got[2].error.as_str(), got[2].kind.as_str()), ("snapshot is damaged", ""));
    }

    #[test]
    fn backup_tags_parse() {
        assert_eq!(
            parse_tag("ns/as/uid/backup/phase/pod-0"),
            Some(BackupTag { namespace: "ns", name: "as", uid: "uid", action: "backup", phase: "phase" })
        );
        // The second of two actions named alike.
        assert_eq!(parse_tag("ns/as/uid/backup:1/dump").map(|t| t.action), Some("backup"));
        assert_eq!(parse_tag("ns/as/uid/odd:x/dump").map(|t| t.action), Some("odd:x"));
        for bad in ["nightly", "a/b/c/d", "a/b/c/d/", "/b/c/d/e"] {
            assert_eq!(parse_tag(bad), None, "{bad}");
        }
    }
}
