//! The Kanister functions the engine runs, with upstream names, arguments and outputs.
//!
//! Served here: `KubeExec`, `KubeExecAll`, `KubeTask`, `MultiContainerRun`, `PrepareData`,
//! `ScaleWorkload`, `KubeOps`. Elsewhere, one module per family: `Wait`, `WaitV2`
//! ([`super::wait`]); the data functions ([`super::data`] and the modules it names); the CSI
//! snapshot functions ([`super::csi`]). [`run`] dispatches on the catalogue's runner.
//!
//! Task pods of an action with a Profile get the Profile's repository key in their environment
//! (`KANISTER_REPO_KEY` from the coordinator's key Secret, see [`super::repokey`]), so that
//! `kando location push/pull/delete` in upstream-style blueprints can open the repository.
//!
//! The arguments of functions whose pod the coordinator creates ([`runs_in_task_pod`]) render
//! `{{ toJson .Profile }}` with a reference to `KANISTER_PROFILE_CREDENTIAL` in place of the
//! credential's secret values, and a task pod whose arguments hold that reference gets the
//! variable from a Secret in its namespace (named after its contents,
//! `kanister-profile-<profile namespace>-<profile>-<hash>`, key `credential`, never changed
//! once created). So upstream's `kando location push --profile '{{ toJson .Profile }}'` puts no
//! store secret on a command line. Templates that ask for a value itself
//! (`{{ .Profile.Credential.KeyPair.Secret }}`) get it, as upstream; `KubeExec` runs in a pod
//! whose environment the coordinator cannot change, so it renders `toJson .Profile` with the
//! values, as upstream.
//!
//! Outputs follow the `###Phase-output###:` protocol ([`crate::output`]) on a command's stdout
//! (exec) or a pod's log (task pods).

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

pub use super::context::{CREDENTIAL_SECRET_KEY, CREDENTIAL_SECRET_PREFIX, Context, Error, Result, TransferProgress};
use super::context::{all_errors, partial, run_pod, words};
use crate::cluster::{Chunk, Cluster, Container, ExecRequest, ObjectRef, Stream};
use crate::crd::{JsonMap, ObjectReference};
use crate::output::Parser;

/// Runs `function` through its runner in the catalogue ([`crate::functions`]) and returns its
/// output.
pub async fn run<C: Cluster>(function: &str, ctx: &Context<C>) -> Result<JsonMap> {
    use crate::functions::Runner as R;
    let Some(runner) = crate::functions::lookup(function).and_then(|f| f.runner) else {
        return Err(Error::Unsupported { name: function.to_string() });
    };
    match runner {
        R::KubeExec => kube_exec(ctx).await,
        R::KubeExecAll => kube_exec_all(ctx).await,
        R::KubeTask => kube_task(ctx).await,
        R::PrepareData => prepare_data(ctx).await,
        R::MultiContainerRun => multi_container_run(ctx).await,
        R::ScaleWorkload => scale_workload(ctx).await,
        R::Wait => super::wait::wait(ctx, false).await,
        R::WaitV2 => super::wait::wait(ctx, true).await,
        R::KubeOps => kube_ops(ctx).await,
        R::BackupStream => super::streams::backup_stream(ctx).await,
        R::RestoreStream => super::streams::restore_stream(ctx).await,
        R::BackupData => super::paths::backup_data(ctx).await,
        R::RestoreData => super::paths::restore_data(ctx).await,
        R::DeleteData => super::repo_tasks::delete_data(ctx).await,
        R::BackupDataAll => super::paths::backup_data_all(ctx).await,
        R::RestoreDataAll => super::paths::restore_data_all(ctx).await,
        R::DeleteDataAll => super::repo_tasks::delete_data_all(ctx).await,
        R::LocationDelete => super::repo_tasks::location_delete(ctx).await,
        R::BackupDataStats => super::repo_tasks::backup_data_stats(ctx).await,
        R::CheckRepository => super::repo_tasks::check_repository(ctx).await,
        R::CopyVolumeData => super::volumes::copy_volume_data(ctx).await,
        R::CreateCSISnapshot => super::csi::create_csi_snapshot(ctx).await,
        R::CreateCSISnapshotStatic => super::csi::create_csi_snapshot_static(ctx).await,
        R::RestoreCSISnapshot => super::csi::restore_csi_snapshot(ctx).await,
        R::DeleteCSISnapshot => super::csi::delete_csi_snapshot(ctx).await,
        R::DeleteCSISnapshotContent => super::csi::delete_csi_snapshot_content(ctx).await,
    }
}

/// Whether the engine must leave the arguments unrendered (the function renders them itself).
pub fn renders_own_arguments(function: &str) -> bool {
    crate::functions::lookup(function).is_some_and(|f| f.renders_own_arguments)
}

/// Whether the function runs its commands in a pod the coordinator creates, whose environment
/// it controls: its arguments render the Profile's credential by reference (module docs).
pub fn runs_in_task_pod(function: &str) -> bool {
    crate::functions::lookup(function).is_some_and(|f| f.task_pod)
}

async fn exec_one<C: Cluster>(ctx: &Context<C>, request: ExecRequest) -> Result<JsonMap> {
    let what = format!(
        "command in pod {}/{}{}",
        request.namespace,
        request.pod,
        if request.container.is_empty() { String::new() } else { format!(" container {}", request.container) }
    );
    let (tx, mut rx) = mpsc::channel::<Chunk>(16);
    let tail_lines = ctx.tail_lines;
    let consume = async move {
        let mut stdout = Parser::new(tail_lines);
        let mut stderr = Parser::new(tail_lines);
        while let Some(chunk) = rx.recv().await {
            match chunk.stream {
                Stream::Stdout => stdout.feed(&chunk.data),
                Stream::Stderr => stderr.feed(&chunk.data),
            }
        }
        (stdout.finish(), stderr.finish().1)
    };
    let (status, ((outputs, out_tail), err_tail)) = tokio::join!(ctx.cluster.exec(&request, tx), consume);
    let status = status?;
    if !status.success() {
        let mut tail = if err_tail.is_empty() { out_tail } else { err_tail };
        tail.redact(&ctx.secrets());
        return Err(Error::CommandFailed { what, status, tail });
    }
    outputs.map_err(|source| Error::Output { what, source })
}

async fn kube_exec<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let request = ExecRequest {
        namespace: ctx.str("namespace")?,
        pod: ctx.str("pod")?,
        container: ctx.opt_str("container")?.unwrap_or_default(),
        command: ctx.command("command")?,
    };
    exec_one(ctx, request).await
}

async fn kube_exec_all<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let namespace = ctx.str("namespace")?;
    let pods = words(ctx, "pods")?;
    let containers = words(ctx, "containers")?;
    let command = ctx.command("command")?;
    let runs = pods.iter().flat_map(|p| containers.iter().map(move |c| (p, c))).map(|(p, c)| {
        exec_one(
            ctx,
            ExecRequest {
                namespace: namespace.clone(),
                pod: p.clone(),
                container: c.clone(),
                command: command.clone(),
            },
        )
    });
    let mut out = JsonMap::new();
    let mut errors = Vec::new();
    for r in futures::future::join_all(runs).await {
        match r {
            Ok(o) => out.extend(o),
            Err(e) => errors.push(e),
        }
    }
    match all_errors(errors) {
        None => Ok(out),
        Some(e) => Err(partial(out, e)),
    }
}

async fn kube_task<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let container = Container { name: "container".into(), image: ctx.str("image")?, command: ctx.command("command")? };
    let pod = ctx.task_pod("kanister-job-", vec![container]).await?;
    run_pod(ctx, pod, "container", true).await
}

async fn prepare_data<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let container = Container { name: "container".into(), image: ctx.str("image")?, command: ctx.command("command")? };
    let mut pod = ctx.task_pod("prepare-data-job-", vec![container]).await?;
    let mut volumes = ctx.opt_string_map("volumes")?;
    if volumes.is_empty() {
        // Upstream default: every PVC of the workload at /mnt/prepare_data/<pvc>.
        let workload = ctx.params.stateful_set.as_ref().or(ctx.params.deployment.as_ref());
        for pvcs in workload.into_iter().flat_map(|w| w.persistent_volume_claims.values()) {
            for pvc in pvcs.keys() {
                volumes.insert(pvc.clone(), format!("/mnt/prepare_data/{pvc}"));
            }
        }
        if volumes.is_empty() {
            return Err(ctx.invalid("volumes", "given when the workload has no PVCs"));
        }
    }
    pod.volumes = volumes;
    pod.service_account = ctx.opt_str("serviceaccount")?.unwrap_or_default();
    let fail_on_error = ctx.opt_bool("failOnError", false)?;
    run_pod(ctx, pod, "container", fail_on_error).await
}

async fn multi_container_run<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let background = Container {
        name: "background".into(),
        image: ctx.str("backgroundImage")?,
        command: ctx.command("backgroundCommand")?,
    };
    let output =
        Container { name: "output".into(), image: ctx.str("outputImage")?, command: ctx.command("outputCommand")? };
    let mut pod = ctx.task_pod("kanister-job-", vec![background, output]).await?;
    if let Some(image) = ctx.opt_str("initImage")? {
        pod.init_containers.push(Container { name: "init".into(), image, command: ctx.command("initCommand")? });
    }
    pod.shared_dir = Some(ctx.opt_str("sharedVolumeDir")?.unwrap_or_else(|| "/tmp/".into()));
    run_pod(ctx, pod, "output", true).await
}

async fn scale_workload<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let replicas: i32 = match ctx.args.get("replicas") {
        Some(Value::Number(n)) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => return Err(ctx.missing("replicas")),
    }
    .ok_or_else(|| ctx.invalid("replicas", "an integer"))?;
    let p = &ctx.params;
    let (mut kind, mut name, mut namespace) = match (&p.stateful_set, &p.deployment, &p.deployment_config) {
        (Some(w), _, _) => ("StatefulSet".to_string(), w.name.clone(), w.namespace.clone()),
        (_, Some(w), _) => ("Deployment".to_string(), w.name.clone(), w.namespace.clone()),
        (_, _, Some(w)) => ("DeploymentConfig".to_string(), w.name.clone(), w.namespace.clone()),
        _ => Default::default(),
    };
    if let Some(k) = ctx.opt_str("kind")? {
        kind = k;
    }
    if let Some(n) = ctx.opt_str("name")? {
        name = n;
    }
    if let Some(n) = ctx.opt_str("namespace")? {
        namespace = n;
    }
    if kind.is_empty() || name.is_empty() || namespace.is_empty() {
        return Err(ctx.invalid("namespace/name/kind", "given when the action's object is not a workload"));
    }
    let workload = ObjectRef::new(&kind, &namespace, &name);
    if !matches!(workload.kind_key().as_str(), "statefulset" | "deployment" | "deploymentconfig") {
        return Err(ctx.invalid("kind", "StatefulSet, Deployment or DeploymentConfig"));
    }
    let current = ctx.cluster.get(&workload).await?;
    let original = current.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    ctx.cluster.scale(&workload, replicas).await?;
    if ctx.opt_bool("waitForReady", true)? {
        ctx.cluster.wait_ready(&workload, ctx.ready_timeout).await?;
    }
    Ok(JsonMap::from([("originalReplicaCount".to_string(), Value::from(original))]))
}

/// Parses a Go duration (`300ms`, `1.5h`, `1h30m`, `10s`) exactly as Go does; `None` for
/// anything Go refuses, an overflow, or a negative duration ([`super::duration`] says why).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    super::duration::parse(s.trim()).ok()
}

async fn kube_ops<C: Cluster>(ctx: &Context<C>) -> Result<JsonMap> {
    let operation = ctx.str("operation")?;
    let namespace = ctx.opt_str("namespace")?.filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into());
    let object_ref = || -> Result<ObjectRef> {
        let v = ctx.args.get("objectReference").cloned().ok_or_else(|| ctx.missing("objectReference"))?;
        let r: ObjectReference =
            serde_json::from_value(v).map_err(|_| ctx.invalid("objectReference", "an object reference"))?;
        if r.name.is_empty() || (r.resource.is_empty() && r.kind.is_empty()) {
            return Err(ctx.invalid("objectReference", "an object reference with name and resource"));
        }
        let mut o = ObjectRef::from_reference(&r);
        if o.namespace.is_empty() {
            o.namespace = namespace.clone();
        }
        Ok(o)
    };
    let spec = || -> Result<Value> {
        let text = ctx.str("spec")?;
        serde_norway::from_str(&text).map_err(|_| ctx.invalid("spec", "a YAML or JSON object"))
    };
    let object = match operation.as_str() {
        "create" => ctx.cluster.apply(spec()?, &namespace).await?,
        "patch" => {
            let o = object_ref()?;
            ctx.cluster.patch(&o, spec()?).await?;
            o
        }
        "delete" => {
            let o = object_ref()?;
            ctx.cluster.delete(&o).await?;
            o
        }
        _ => return Err(ctx.invalid("operation", "create, patch or delete")),
    };
    let (group, version) = object.api_version.rsplit_once('/').unwrap_or(("", object.api_version.as_str()));
    let mut out = JsonMap::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            out.insert(k.into(), Value::String(v.into()));
        }
    };
    put("apiVersion", version);
    put("group", group);
    let resource = if object.kind.is_empty() { String::new() } else { format!("{}s", object.kind_key()) };
    put("resource", &resource);
    put("kind", &object.kind);
    put("name", &object.name);
    put("namespace", &object.namespace);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("abc"), None);
    }
}
