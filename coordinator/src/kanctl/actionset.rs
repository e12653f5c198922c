//! `kanctl create actionset`: flags → ActionSet, as upstream's kanctl maps them.
//!
//! [`build`] is pure (no network): the parent ActionSet of `--from` is passed in, and the
//! selectors (`--selector`) are returned for the coordinator to expand.

use std::collections::BTreeMap;

use clap::Args;
use kanister_proto::coordinator::v1::ObjectSelector;

use super::{Error, Result};
use crate::crd::actionset::ActionSpec;
use crate::crd::{ActionSet, ActionSetSpec, ObjectReference, State};

/// Create an ActionSet: run a Blueprint action on objects.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct CreateActionSetArgs {
    /// The Blueprint action to run (`backup`, `restore`, `delete`).
    #[arg(short = 'a', long)]
    pub action: Option<String>,
    /// The Blueprint (in --namespace).
    #[arg(short = 'b', long)]
    pub blueprint: Option<String>,
    /// Namespace of the ActionSet and of the Blueprint.
    #[arg(short = 'n', long, env = "KANCTL_NAMESPACE", default_value_t = super::default_namespace())]
    pub namespace: String,
    /// Name of the ActionSet (default: `<action>-xxxxx`, or `<action>-<parent>-xxxxx` with --from).
    #[arg(short = 'A', long)]
    pub name: Option<String>,
    /// A complete ActionSet to start from: its blueprint, objects, profile, secrets, config
    /// maps and options are copied, and its output artifacts become input artifacts.
    #[arg(short = 'f', long)]
    pub from: Option<String>,
    /// The Profile, `namespace/name` or `name` (in --namespace).
    #[arg(short = 'p', long)]
    pub profile: Option<String>,
    /// Secrets passed to the Blueprint: `key=namespace/name`, comma-separated or repeated.
    #[arg(short = 's', long, value_delimiter = ',')]
    pub secrets: Vec<String>,
    /// ConfigMaps passed to the Blueprint: `key=namespace/name`, comma-separated or repeated.
    #[arg(short = 'c', long = "config-maps", value_delimiter = ',')]
    pub config_maps: Vec<String>,
    /// Options passed to the Blueprint: `key=value`, comma-separated or repeated.
    #[arg(short = 'o', long, value_delimiter = ',')]
    pub options: Vec<String>,
    /// Deployments to act on: `namespace/name`.
    #[arg(short = 'd', long, value_delimiter = ',')]
    pub deployment: Vec<String>,
    /// StatefulSets to act on: `namespace/name`.
    #[arg(short = 't', long, value_delimiter = ',')]
    pub statefulset: Vec<String>,
    /// DeploymentConfigs (OpenShift) to act on: `namespace/name`.
    #[arg(short = 'D', long, value_delimiter = ',')]
    pub deploymentconfig: Vec<String>,
    /// PersistentVolumeClaims to act on: `namespace/name`.
    #[arg(short = 'v', long, value_delimiter = ',')]
    pub pvc: Vec<String>,
    /// Namespaces to act on.
    #[arg(short = 'T', long, value_delimiter = ',')]
    pub namespacetargets: Vec<String>,
    /// Any objects to act on: `group/version/resource/namespace/name` (empty group for core).
    #[arg(short = 'O', long, value_delimiter = ',')]
    pub objects: Vec<String>,
    /// Act on every object matching this label selector (`app=mysql,tier=db`).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Kind of the objects --selector matches: all, deployment, statefulset or pvc.
    #[arg(short = 'k', long, default_value = "all", requires = "selector")]
    pub kind: String,
    /// Namespace --selector searches (default: every namespace).
    #[arg(long = "selector-namespace", requires = "selector")]
    pub selector_namespace: Option<String>,
    /// Labels of the ActionSet: `key=value`, comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Labels of the pods the Blueprint's functions create: `key=value`.
    #[arg(long, value_delimiter = ',')]
    pub podlabels: Vec<String>,
    /// Annotations of the pods the Blueprint's functions create: `key=value`.
    #[arg(long, value_delimiter = ',')]
    pub podannotations: Vec<String>,
    /// Print the ActionSet (YAML) instead of creating it.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not check that the Blueprint, the action and the referenced objects exist.
    #[arg(long)]
    pub skip_validation: bool,
    /// Wait until the ActionSet ends, showing its progress; the exit code tells how it ended.
    #[arg(long)]
    pub wait: bool,
}

pub use crate::cluster::generated_suffix as random_suffix;

fn bad(field: &str, value: &str, expected: &str) -> Error {
    Error::Usage(format!("{field}: {value:?} is not {expected}"))
}

/// `namespace/name` → (namespace, name).
fn ns_name<'a>(flag: &str, s: &'a str) -> Result<(&'a str, &'a str)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok((ns, name)),
        _ => Err(bad(flag, s, "namespace/name, e.g. mysql-test/mysql-release")),
    }
}

/// `key=value` pairs → map.
fn key_values(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(bad(flag, s, "key=value")),
        })
        .collect()
}

/// `key=namespace/name` references (secrets, config maps).
fn references(flag: &str, items: &[String]) -> Result<BTreeMap<String, ObjectReference>> {
    let expected = "key=namespace/name, e.g. mysql=mysql-test/mysql-release";
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (k, r) = s.split_once('=').filter(|(k, _)| !k.is_empty()).ok_or_else(|| bad(flag, s, expected))?;
            let (ns, name) = ns_name(flag, r).map_err(|_| bad(flag, s, expected))?;
            Ok((k.to_string(), ObjectReference { name: name.into(), namespace: ns.into(), ..Default::default() }))
        })
        .collect()
}

fn targets(args: &CreateActionSetArgs) -> Result<Vec<ObjectReference>> {
    let mut out = Vec::new();
    let simple = |flag: &str, kind: &str, items: &[String], out: &mut Vec<ObjectReference>| -> Result<()> {
        for s in items {
            let (ns, name) = ns_name(flag, s)?;
            out.push(ObjectReference {
                kind: kind.into(),
                name: name.into(),
                namespace: ns.into(),
                ..Default::default()
            });
        }
        Ok(())
    };
    simple("--deployment", "deployment", &args.deployment, &mut out)?;
    simple("--statefulset", "statefulset", &args.statefulset, &mut out)?;
    simple("--deploymentconfig", "deploymentconfig", &args.deploymentconfig, &mut out)?;
    simple("--pvc", "pvc", &args.pvc, &mut out)?;
    for ns in &args.namespacetargets {
        if ns.is_empty() || ns.contains('/') {
            return Err(bad("--namespacetargets", ns, "a namespace name"));
        }
        out.push(ObjectReference {
            kind: "namespace".into(),
            name: ns.clone(),
            namespace: ns.clone(),
            ..Default::default()
        });
    }
    for o in &args.objects {
        let parts: Vec<&str> = o.split('/').collect();
        let [group, version, resource, namespace, name] = parts[..] else {
            return Err(bad("--objects", o, "group/version/resource/namespace/name, e.g. apps/v1/deployments/ns/app"));
        };
        if version.is_empty() || resource.is_empty() || name.is_empty() {
            return Err(bad("--objects", o, "group/version/resource/namespace/name, e.g. apps/v1/deployments/ns/app"));
        }
        out.push(ObjectReference {
            group: group.into(),
            api_version: version.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Default::default()
        });
    }
    Ok(out)
}

/// The ActionSet the flags describe, and the selectors the coordinator must expand.
///
/// With `parent` (`--from`), the parent must be complete; the blueprint, objects, profile,
/// secrets, config maps and options are copied from it (flags given here win), and each of its
/// actions' output artifacts become the input artifacts of the matching new action.
pub fn build(args: &CreateActionSetArgs, parent: Option<&ActionSet>) -> Result<(ActionSet, Vec<ObjectSelector>)> {
    let Some(action) = args.action.clone().filter(|a| !a.is_empty()) else {
        return Err(Error::Usage("--action is required: e.g. --action backup".into()));
    };
    let secrets = references("--secrets", &args.secrets)?;
    let config_maps = references("--config-maps", &args.config_maps)?;
    let options = key_values("--options", &args.options)?;
    let labels = key_values("--labels", &args.labels)?;
    let pod_labels = key_values("--podlabels", &args.podlabels)?;
    let pod_annotations = key_values("--podannotations", &args.podannotations)?;
    let profile = args
        .profile
        .as_deref()
        .map(|p| match p.split_once('/') {
            Some(_) => ns_name("--profile", p).map(|(ns, name)| (ns.to_string(), name.to_string())),
            None if !p.is_empty() => Ok((args.namespace.clone(), p.to_string())),
            None => Err(bad("--profile", p, "namespace/name or name")),
        })
        .transpose()?
        .map(|(namespace, name)| ObjectReference { name, namespace, ..Default::default() });
    let objects = targets(args)?;
    let selectors: Vec<ObjectSelector> = args
        .selector
        .iter()
        .map(|l| ObjectSelector {
            kind: args.kind.clone(),
            label_selector: l.clone(),
            namespace: args.selector_namespace.clone().unwrap_or_default(),
        })
        .collect();

    let template = |object: ObjectReference, blueprint: String| ActionSpec {
        name: action.clone(),
        object,
        blueprint,
        secrets: secrets.clone(),
        config_maps: config_maps.clone(),
        options: options.clone(),
        profile: profile.clone(),
        pod_labels: pod_labels.clone(),
        pod_annotations: pod_annotations.clone(),
        ..Default::default()
    };

    let (actions, name) = match parent {
        Some(p) => {
            let pname = p.metadata.name.clone().unwrap_or_default();
            let state = p.status.as_ref().map(|s| s.state);
            if state != Some(State::Complete) {
                let shown = match state {
                    None | Some(State::Pending) => "pending",
                    Some(State::Running) => "running",
                    Some(State::Failed) => "failed",
                    Some(State::Complete) => "complete",
                };
                return Err(Error::Usage(format!(
                    "--from: actionset {pname} is {shown}, not complete: wait for it (kanctl watch {pname}) or pick a \
                     complete one (kanctl get actionsets)"
                )));
            }
            let status = p.status.clone().unwrap_or_default();
            let mut actions = Vec::new();
            for (i, pa) in p.spec.actions.iter().enumerate() {
                let mut a = template(pa.object.clone(), args.blueprint.clone().unwrap_or_else(|| pa.blueprint.clone()));
                if args.profile.is_none() {
                    a.profile = pa.profile.clone();
                }
                if args.secrets.is_empty() {
                    a.secrets = pa.secrets.clone();
                }
                if args.config_maps.is_empty() {
                    a.config_maps = pa.config_maps.clone();
                }
                let mut opts = pa.options.clone();
                opts.extend(options.clone());
                a.options = opts;
                a.artifacts = status.actions.get(i).map(|s| s.artifacts.clone()).unwrap_or_default();
                actions.push(a);
            }
            if !objects.is_empty() {
                // Explicit targets replace the parent's objects; artifacts of the first parent
                // action are passed to each.
                let first = actions.first().cloned().unwrap_or_else(|| template(Default::default(), String::new()));
                actions = objects.iter().map(|o| ActionSpec { object: o.clone(), ..first.clone() }).collect();
            }
            (actions, format!("{action}-{pname}-{}", random_suffix()))
        }
        None => {
            let Some(blueprint) = args.blueprint.clone().filter(|b| !b.is_empty()) else {
                return Err(Error::Usage("--blueprint is required (or --from an earlier ActionSet)".into()));
            };
            if objects.is_empty() && selectors.is_empty() {
                return Err(Error::Usage(
                    "no object to act on: give --statefulset, --deployment, --deploymentconfig, --pvc, \
                     --namespacetargets, --objects or --selector"
                        .into(),
                ));
            }
            let mut actions: Vec<ActionSpec> = objects.into_iter().map(|o| template(o, blueprint.clone())).collect();
            if actions.is_empty() {
                // The coordinator replaces it with one action per object the selector matches.
                actions.push(template(ObjectReference::default(), blueprint));
            }
            (actions, format!("{action}-{}", random_suffix()))
        }
    };
    let mut a = ActionSet::new(args.name.as_deref().unwrap_or(&name), ActionSetSpec { actions, ..Default::default() });
    a.metadata.namespace = Some(args.namespace.clone());
    if !labels.is_empty() {
        a.metadata.labels = Some(labels);
    }
    Ok((a, selectors))
}
