//! Upstream's CSI snapshot functions, with its arguments and outputs, through
//! `snapshot.storage.k8s.io/v1` objects. The snapshot itself is the CSI driver's work (through
//! the cluster's snapshot controller); these functions create and delete the objects and wait
//! for the controller's answer.
//!
//! - `CreateCSISnapshot` (`pvc`, `namespace`, `snapshotClass`; `name` defaults to
//!   `<pvc>-snapshot-xxxxx`, `labels`): creates a VolumeSnapshot of the PVC (which must exist)
//!   and waits until it is ready to use. Outputs `name`, `pvc`, `namespace`, `restoreSize`,
//!   `snapshotContent`.
//! - `CreateCSISnapshotStatic` (`name`, `namespace`, `driver`, `snapshotHandle`,
//!   `snapshotClass`): registers a snapshot the storage already holds: a VolumeSnapshotContent
//!   (with the class's `deletionPolicy`) and its VolumeSnapshot, then waits as above. Outputs
//!   `name`, `namespace`, `restoreSize`, `snapshotContent`.
//! - `RestoreCSISnapshot` (`name`, `pvc`, `namespace`, `storageClass`, `restoreSize`;
//!   `accessModes` default `[ReadWriteOnce]`, `volumeMode` default `Filesystem`, `labels`):
//!   creates PVC `pvc` with the snapshot as its data source.
//! - `DeleteCSISnapshot` (`name`, `namespace`): deletes the VolumeSnapshot and waits until it is
//!   gone; `DeleteCSISnapshotContent` (`name`) deletes a VolumeSnapshotContent. Both succeed
//!   when the object is gone already.
//!
//! A snapshot is ready when its `status.readyToUse` is true and `status.creationTime` set, as
//! upstream decides. A `status.error` fails the phase with its message; a snapshot still not
//! ready shortly before the phase's deadline fails it with what was awaited and where to look,
//! rather than with the engine's bare "timed out".

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::context::{Context, Error, Result};
use crate::cluster::{self, Cluster, ObjectRef};
use crate::crd::JsonMap;

/// The API version of the snapshot objects.
pub const SNAPSHOT_API: &str = "snapshot.storage.k8s.io/v1";

fn snapshot_ref(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef { api_version: SNAPSHOT_API.into(), ..ObjectRef::new("VolumeSnapshot", namespace, name) }
}

fn outputs(pairs: &[(&str, &str)]) -> JsonMap {
    pairs.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect()
}

fn labels_json(labels: &BTreeMap<String, String>) -> Value {
    if labels.is_empty() { Value::Null } else { json!(labels) }
}

/// Waits until VolumeSnapshot `namespace/name` is ready to use; returns its status.
async fn wait_ready<C: Cluster>(ctx: &Context<C>, namespace: &str, name: &str) -> Result<Value> {
    let object = snapshot_ref(namespace, name);
    let give_up = give_up(ctx);
    loop {
        let vs = ctx.cluster.get(&object).await?;
        let status = vs.get("status").cloned().unwrap_or(Value::Null);
        if let Some(message) = status.pointer("/error/message").and_then(Value::as_str) {
            return Err(Error::Data { function: ctx.function(), message: format!("{object} failed: {message}") });
        }
        let ready = status.get("readyToUse").and_then(Value::as_bool) == Some(true);
        if ready && status.get("creationTime").is_some_and(|t| !t.is_null()) {
            return Ok(status);
        }
        let now = tokio::time::Instant::now();
        if now + ctx.poll >= give_up {
            let class = vs.pointer("/spec/volumeSnapshotClassName").and_then(Value::as_str).unwrap_or("(none)");
            return Err(Error::Data {
                function: ctx.function(),
                message: format!(
                    "{object} was not ready to use before the phase's timeout (status.readyToUse: {}): the \
                     cluster's snapshot controller and the CSI driver of VolumeSnapshotClass {class} make it \
                     ready; see `kubectl describe volumesnapshot -n {namespace} {name}`, or raise the phase's \
                     timeout",
                    status.get("readyToUse").map_or("unset".to_string(), Value::to_string),
                ),
            });
        }
        tokio::time::sleep(ctx.poll).await;
    }
}

/// Upstream's outputs of a ready snapshot.
fn snapshot_outputs(name: &str, namespace: &str, status: &Value) -> JsonMap {
    let field = |k: &str| match status.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    outputs(&[
        ("name", name),
        ("namespace", namespace),
        ("restoreSize", &field("restoreSize")),
        ("snapshotContent", &field("boundVolumeSnapshotContentName")),
    ])
}

/// When a wait for the snapshot controller gives up: a little before the phase's deadline, so
/// that the function, not the engine's timeout, says what it waited for.
fn give_up<C>(ctx: &Context<C>) -> tokio::time::Instant {
    let margin = ctx.poll.min(Duration::from_millis(500));
    ctx.deadline.checked_sub(margin).unwrap_or(ctx.deadline)
}

/// `CreateCSISnapshot`.
pub(super) async fn create_csi_snapshot<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let pvc = ctx.str("pvc")?;
    let namespace = ctx.str("namespace")?;
    let class = ctx.str("snapshotClass")?;
    let name = ctx
        .opt_str("name")?
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("{pvc}-snapshot-{}", crate::cluster::generated_suffix()));
    let labels = ctx.opt_string_map("labels")?;
    // As upstream: the claim must exist (a snapshot of a missing one would wait forever).
    let claim = ObjectRef { api_version: "v1".into(), ..ObjectRef::new("PersistentVolumeClaim", &namespace, &pvc) };
    ctx.cluster.get(&claim).await?;
    let snapshot = json!({
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": namespace, "labels": labels_json(&labels)},
        "spec": {"volumeSnapshotClassName": class, "source": {"persistentVolumeClaimName": pvc}},
    });
    ctx.cluster.apply(snapshot, &namespace).await?;
    tracing::info!(snapshot = %name, %namespace, %pvc, "VolumeSnapshot created; waiting until it is ready to use");
    let status = wait_ready(ctx, &namespace, &name).await?;
    let mut out = snapshot_outputs(&name, &namespace, &status);
    out.insert("pvc".into(), Value::String(pvc));
    Ok(out)
}

/// `CreateCSISnapshotStatic`.
pub(super) async fn create_csi_snapshot_static<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let name = ctx.str("name")?;
    let namespace = ctx.str("namespace")?;
    let driver = ctx.str("driver")?;
    let handle = ctx.str("snapshotHandle")?;
    let class_name = ctx.str("snapshotClass")?;
    let class_ref =
        ObjectRef { api_version: SNAPSHOT_API.into(), ..ObjectRef::new("VolumeSnapshotClass", "", &class_name) };
    let class = ctx.cluster.get(&class_ref).await?;
    let deletion_policy = class.get("deletionPolicy").and_then(Value::as_str).unwrap_or("Delete").to_string();
    let content_name = format!("{name}-content-{}", crate::cluster::generated_suffix());
    let content = json!({
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": content_name},
        "spec": {
            "deletionPolicy": deletion_policy,
            "driver": driver,
            "source": {"snapshotHandle": handle},
            "volumeSnapshotClassName": class_name,
            "volumeSnapshotRef": {"kind": "VolumeSnapshot", "name": name, "namespace": namespace},
        },
    });
    // Cluster-scoped: no namespace.
    ctx.cluster.apply(content, "").await?;
    let snapshot = json!({
        "apiVersion": SNAPSHOT_API,
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"volumeSnapshotClassName": class_name, "source": {"volumeSnapshotContentName": content_name}},
    });
    ctx.cluster.apply(snapshot, &namespace).await?;
    let status = wait_ready(ctx, &namespace, &name).await?;
    Ok(snapshot_outputs(&name, &namespace, &status))
}

const ACCESS_MODES: [&str; 3] = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"];

/// `RestoreCSISnapshot`.
pub(super) async fn restore_csi_snapshot<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let name = ctx.str("name")?;
    let pvc = ctx.str("pvc")?;
    let namespace = ctx.str("namespace")?;
    let storage_class = ctx.str("storageClass")?;
    let size = ctx.str("restoreSize")?;
    if !is_quantity(&size) {
        return Err(ctx.invalid("restoreSize", "a Kubernetes quantity such as 10Gi"));
    }
    let access_modes = match ctx.args.get("accessModes") {
        None | Some(Value::Null) => vec!["ReadWriteOnce".to_string()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|m| match m.as_str() {
                Some(m) if ACCESS_MODES.contains(&m) => Ok(m.to_string()),
                _ => Err(ctx.invalid("accessModes", "a list of ReadWriteOnce, ReadOnlyMany, ReadWriteMany")),
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(ctx.invalid("accessModes", "a list of ReadWriteOnce, ReadOnlyMany, ReadWriteMany")),
    };
    let volume_mode = ctx.opt_str("volumeMode")?.unwrap_or_else(|| "Filesystem".into());
    if !matches!(volume_mode.as_str(), "Filesystem" | "Block") {
        return Err(ctx.invalid("volumeMode", "Filesystem or Block"));
    }
    let labels = ctx.opt_string_map("labels")?;
    let claim = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc, "namespace": namespace, "labels": labels_json(&labels)},
        "spec": {
            "accessModes": access_modes,
            "volumeMode": volume_mode,
            "storageClassName": storage_class,
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": name},
            "resources": {"requests": {"storage": size}},
        },
    });
    ctx.cluster.apply(claim, &namespace).await?;
    Ok(outputs(&[("name", &name), ("pvc", &pvc), ("namespace", &namespace)]))
}

/// A Kubernetes quantity: digits (a decimal point allowed), then an optional suffix.
fn is_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "m"].contains(&suffix)
}

/// `DeleteCSISnapshot`.
pub(super) async fn delete_csi_snapshot<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let name = ctx.str("name")?;
    let namespace = ctx.str("namespace")?;
    let object = snapshot_ref(&namespace, &name);
    ctx.cluster.delete(&object).await?;
    // Gone only once the snapshot controller has dropped its finalizers.
    loop {
        match ctx.cluster.get(&object).await {
            Err(cluster::Error::NotFound(_)) => return Ok(JsonMap::new()),
            Err(e) => return Err(e.into()),
            Ok(_) if tokio::time::Instant::now() + ctx.poll >= give_up(ctx) => {
                return Err(Error::Data {
                    function: ctx.function(),
                    message: format!(
                        "{object} is still there before the phase's timeout: its finalizers wait for the \
                         snapshot controller; see `kubectl describe volumesnapshot -n {namespace} {name}`"
                    ),
                });
            }
            Ok(_) => tokio::time::sleep(ctx.poll).await,
        }
    }
}

/// `DeleteCSISnapshotContent`.
pub(super) async fn delete_csi_snapshot_content<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let name = ctx.str("name")?;
    let object = ObjectRef { api_version: SNAPSHOT_API.into(), ..ObjectRef::new("VolumeSnapshotContent", "", &name) };
    ctx.cluster.delete(&object).await?;
    Ok(JsonMap::new())
}

#[cfg(test)]
mod tests {
    use super::is_quantity;

    #[test]
    fn quantities_are_recognised() {
        for ok in ["1Gi", "10Gi", "512Mi", "1", "1.5Gi", "100k", "2T"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "1GB", "1.2.3Gi", "-1Gi", "1 Gi", "ten"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
