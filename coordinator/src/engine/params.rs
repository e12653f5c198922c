//! Building the template parameters of an action from the cluster (upstream `param.New`,
//! `InitPhaseParams`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::cluster::{self, Cluster, ObjectRef, get_typed, kind_key};
use crate::crd::actionset::ActionSpec;
use crate::crd::{CredentialType, ObjectReference, Profile};
use crate::render::params::{
    ConfigMapParams, CredentialParams, KeyPairParams, ObjectParams, PhaseParams, ProfileParams, SecretParams,
    WorkloadParams,
};
use crate::render::{Location, Renderer, TemplateParams};

/// Errors resolving parameters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object the action refers to could not be read.
    #[error("failed to read {what}")]
    Read {
        /// What was read (`the action's object`, `secret "db"`).
        what: String,
        /// The cause.
        #[source]
        source: Box<cluster::Error>,
    },
    /// A Profile's credential lacks a field.
    #[error("profile {profile}: {problem}")]
    Profile {
        /// The Profile.
        profile: String,
        /// What is wrong (never a secret value).
        problem: String,
    },
    /// A phase's object reference does not render.
    #[error(transparent)]
    Render(#[from] crate::render::Error),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn read(what: impl Into<String>) -> impl FnOnce(cluster::Error) -> Error {
    let what = what.into();
    move |source| Error::Read { what, source: Box::new(source) }
}

/// Resolves everything an action's templates can read, except phase outputs.
pub async fn resolve<C: Cluster>(cluster: &C, action: &ActionSpec, started: DateTime<Utc>) -> Result<TemplateParams> {
    let mut p = TemplateParams::new(started);
    let object = ObjectRef::from_reference(&action.object);
    let kind = object.kind_key();
    let value = match cluster.get(&object).await {
        Ok(v) => v,
        // A Namespace need not be declared to a local cluster.
        Err(cluster::Error::NotFound(_)) if kind == "namespace" => {
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": object.name}})
        }
        Err(e) => return Err(read(format!("the action's object {object}"))(e)),
    };
    if let Value::Object(m) = &value {
        p.object = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    match kind.as_str() {
        "statefulset" => p.stateful_set = Some(workload(cluster, &object, &value).await?),
        "deployment" => p.deployment = Some(workload(cluster, &object, &value).await?),
        "deploymentconfig" => p.deployment_config = Some(workload(cluster, &object, &value).await?),
        "persistentvolumeclaim" => {
            p.pvc = Some(ObjectParams { name: object.name.clone(), namespace: object.namespace.clone() })
        }
        "namespace" => p.namespace = Some(ObjectParams { name: object.name.clone(), namespace: object.name.clone() }),
        _ => {}
    }
    for (name, r) in &action.secrets {
        p.secrets.insert(name.clone(), secret(cluster, r).await?);
    }
    for (name, r) in &action.config_maps {
        p.config_maps.insert(name.clone(), config_map(cluster, r).await?);
    }
    if let Some(r) = &action.profile {
        p.profile = Some(profile(cluster, r).await?);
    }
    p.artifacts_in = action.artifacts.clone();
    p.options = action.options.clone();
    p.pod_override = action.pod_override.clone();
    p.pod_labels = action.pod_labels.clone();
    p.pod_annotations = action.pod_annotations.clone();
    Ok(p)
}

/// Resolves a phase's object references (`objects:`): renders them and reads the Secrets and
/// ConfigMaps they name (`.Phases.<name>.Secrets.<ref>`).
pub async fn resolve_phase_objects<C: Cluster>(
    cluster: &C,
    renderer: &Renderer,
    location: &Location,
    refs: &BTreeMap<String, ObjectReference>,
    params: &TemplateParams,
) -> Result<PhaseParams> {
    let mut out = PhaseParams::default();
    for (name, r) in refs {
        let render = |field: &str, v: &str| {
            let at = Location { argument: format!("objects.{name}.{field}"), ..location.clone() };
            renderer.render(&at, v, params)
        };
        let rendered = r.try_map(render)?;
        let kind = kind_key(if rendered.kind.is_empty() { &rendered.resource } else { &rendered.kind });
        match kind.as_str() {
            "secret" => {
                out.secrets.insert(name.clone(), secret(cluster, &rendered).await?);
            }
            "configmap" => {
                out.config_maps.insert(name.clone(), config_map(cluster, &rendered).await?);
            }
            _ => {}
        }
    }
    Ok(out)
}

async fn secret<C: Cluster>(cluster: &C, r: &ObjectReference) -> Result<SecretParams> {
    let data =
        cluster.secret(&r.namespace, &r.name).await.map_err(read(format!("secret {}/{}", r.namespace, r.name)))?;
    Ok(SecretParams {
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        secret_type: data.secret_type,
        data: data.data,
    })
}

async fn config_map<C: Cluster>(cluster: &C, r: &ObjectReference) -> Result<ConfigMapParams> {
    let object = ObjectRef::new("ConfigMap", &r.namespace, &r.name);
    let v = cluster.get(&object).await.map_err(read(format!("configmap {}/{}", r.namespace, r.name)))?;
    let data = v
        .get("data")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default();
    Ok(ConfigMapParams { name: r.name.clone(), namespace: r.namespace.clone(), data })
}

/// `.Profile`: the Profile `r` with its credentials read from their Secret.
pub async fn profile<C: Cluster>(cluster: &C, r: &ObjectReference) -> Result<ProfileParams> {
    let object = ObjectRef {
        api_version: format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
        ..ObjectRef::new("Profile", &r.namespace, &r.name)
    };
    let profile: Profile =
        get_typed(cluster, &object).await.map_err(read(format!("profile {}/{}", r.namespace, r.name)))?;
    let spec = profile.spec;
    let name = format!("{}/{}", r.namespace, r.name);
    let mut credential = CredentialParams { credential_type: spec.credential.credential_type, ..Default::default() };
    match spec.credential.credential_type {
        CredentialType::KeyPair => {
            let kp = spec.credential.key_pair.as_ref().ok_or_else(|| Error::Profile {
                profile: name.clone(),
                problem: "credential type keyPair without keyPair".into(),
            })?;
            let s = secret(cluster, &kp.secret).await?;
            let field = |f: &str| {
                s.data.get(f).map(|v| String::from_utf8_lossy(v).into_owned()).ok_or_else(|| Error::Profile {
                    profile: name.clone(),
                    problem: format!("secret {}/{} has no key {f:?}", kp.secret.namespace, kp.secret.name),
                })
            };
            credential.key_pair = Some(KeyPairParams { id: field(&kp.id_field)?, secret: field(&kp.secret_field)? });
        }
        CredentialType::Secret => {
            let r = spec.credential.secret.as_ref().ok_or_else(|| Error::Profile {
                profile: name.clone(),
                problem: "credential type secret without secret".into(),
            })?;
            credential.secret = Some(secret(cluster, r).await?);
        }
        CredentialType::Kopia => {}
    }
    if let Some(problem) =
        spec.store_options.iter().find_map(|(k, v)| kanister_profile::check_network_option(k, v).err())
    {
        return Err(Error::Profile { profile: name, problem: format!("storeOptions {problem}") });
    }
    Ok(ProfileParams {
        location: spec.location,
        credential,
        skip_ssl_verify: spec.skip_ssl_verify.unwrap_or(false),
        store_options: spec.store_options,
    })
}

/// `.StatefulSet` / `.Deployment`: the pods selected by `spec.selector.matchLabels`, their
/// containers and their PVCs with mount paths.
async fn workload<C: Cluster>(cluster: &C, object: &ObjectRef, value: &Value) -> Result<WorkloadParams> {
    let selector: BTreeMap<String, String> = value
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default();
    let mut w = WorkloadParams { name: object.name.clone(), namespace: object.namespace.clone(), ..Default::default() };
    if selector.is_empty() {
        return Ok(w);
    }
    let mut pods =
        cluster.list("v1", "Pod", &object.namespace, &selector).await.map_err(read(format!("pods of {object}")))?;
    pods.sort_by_key(|p| p.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string());
    for pod in pods {
        let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let containers: Vec<&Value> =
            pod.pointer("/spec/containers").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
        w.containers.push(
            containers.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).map(str::to_string).collect(),
        );
        let mut pvcs = BTreeMap::new();
        for vol in pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
            let Some(claim) = vol.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str) else { continue };
            let vol_name = vol.get("name").and_then(Value::as_str).unwrap_or_default();
            let mount = containers
                .iter()
                .flat_map(|c| c.get("volumeMounts").and_then(Value::as_array).into_iter().flatten())
                .find(|m| m.get("name").and_then(Value::as_str) == Some(vol_name))
                .and_then(|m| m.get("mountPath").and_then(Value::as_str))
                .unwrap_or_default();
            pvcs.insert(claim.to_string(), mount.to_string());
        }
        if !pvcs.is_empty() {
            w.persistent_volume_claims.insert(name.clone(), pvcs);
        }
        w.pods.push(name);
    }
    Ok(w)
}
