//! Checks that a Profile's location is usable: its fields, its Secret's keys, and a probe object
//! written, read back and deleted with the Profile's credentials.

use std::sync::Arc;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _};

use crate::cluster::SecretData;
use crate::crd::profile::{CredentialType, LocationType, ProfileSpec};
use crate::render::params::{CredentialParams, KeyPairParams, ProfileParams, SecretParams};

/// A problem of a Profile: where, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileProblem {
    /// The field (`location.bucket`, `credential.keyPair.secretField`, `location`).
    pub field: String,
    /// What is wrong and the fix.
    pub message: String,
}

fn problem(field: &str, message: impl Into<String>) -> ProfileProblem {
    ProfileProblem { field: field.into(), message: message.into() }
}

/// The values the credential's key pair names (id, secret), or the problems finding them.
fn key_pair(spec: &ProfileSpec, secret: &SecretData) -> Result<(String, String), Vec<ProfileProblem>> {
    let Some(kp) = &spec.credential.key_pair else {
        return Err(vec![problem("credential.keyPair", "missing: set idField, secretField and secret")]);
    };
    let get = |field: &str, key: &str| -> Result<String, ProfileProblem> {
        let value = secret.data.get(key).ok_or_else(|| {
            problem(
                &format!("credential.keyPair.{field}"),
                format!("the Secret has no key {key:?}: add it to the Secret or fix {field}"),
            )
        })?;
        String::from_utf8(value.clone())
            .map_err(|_| problem(&format!("credential.keyPair.{field}"), format!("the value of {key:?} is not UTF-8")))
    };
    let id = get("idField", &kp.id_field);
    let sec = get("secretField", &kp.secret_field);
    match (id, sec) {
        (Ok(i), Ok(s)) => Ok((i, s)),
        (i, s) => Err([i.err(), s.err()].into_iter().flatten().collect()),
    }
}

/// The object store of a Profile, rooted at its prefix, through the one mapping from a Profile
/// to a store that the agents use ([`crate::engine::agent::repository_ref`],
/// [`kanister_profile::store::build`]): a Profile that passes the probe names the store a backup
/// then writes to. Missing fields and Secret keys are named first.
fn store(spec: &ProfileSpec, secret: &SecretData) -> Result<Arc<dyn ObjectStore>, Vec<ProfileProblem>> {
    let loc = &spec.location;
    match loc.location_type {
        LocationType::Local => {
            let Some(path) = loc.path.as_deref().filter(|p| !p.is_empty()) else {
                return Err(vec![problem("location.path", "missing: set the directory of a local profile")]);
            };
            // The store of a directory that does not exist is empty: create it, as a backup would.
            let dir = std::path::Path::new(path).join(loc.prefix.trim_matches('/'));
            std::fs::create_dir_all(&dir)
                .map_err(|e| vec![problem("location.path", format!("cannot create {}: {e}", dir.display()))])?;
        }
        LocationType::S3Compliant | LocationType::Gcs if loc.bucket.is_empty() => {
            return Err(vec![problem("location.bucket", "missing: set the bucket (--bucket)")]);
        }
        LocationType::Azure if loc.bucket.is_empty() => {
            return Err(vec![problem("location.bucket", "missing: set the container (--bucket)")]);
        }
        LocationType::S3Compliant | LocationType::Gcs | LocationType::Azure => {}
        LocationType::Kopia => {
            return Err(vec![problem(
                "location.type",
                "kopia profiles cannot be probed: use s3Compliant, gcs, azure or local",
            )]);
        }
    }
    let mut credential = CredentialParams { credential_type: spec.credential.credential_type, ..Default::default() };
    match spec.credential.credential_type {
        CredentialType::KeyPair if loc.location_type != LocationType::Local => {
            let (id, secret) = key_pair(spec, secret)?;
            credential.key_pair = Some(KeyPairParams { id, secret });
        }
        CredentialType::Secret => {
            let r = spec.credential.secret.clone().unwrap_or_default();
            credential.secret = Some(SecretParams {
                name: r.name,
                namespace: r.namespace,
                secret_type: secret.secret_type.clone(),
                data: secret.data.clone(),
            });
        }
        _ => {}
    }
    let params = ProfileParams {
        location: loc.clone(),
        credential,
        skip_ssl_verify: spec.skip_ssl_verify.unwrap_or(false),
        store_options: spec.store_options.clone(),
    };
    let unusable = |e: String| vec![problem("location", format!("cannot use the location: {e}"))];
    let r = crate::engine::agent::repository_ref(&params, zeroize::Zeroizing::new(Vec::new()))
        .map_err(|e| unusable(e.to_string()))?;
    let options: Vec<(String, String)> = r.store_options.into_iter().collect();
    let built =
        kanister_profile::store::build(&r.store_url, Vec::new(), &options).map_err(|e| unusable(e.to_string()))?;
    Ok(built.store)
}

/// The problems of a Profile's fields alone (no Secret read, no probe): `kanctl validate profile
/// --schema-validation-only`, and `-f FILE`.
pub fn schema(spec: &ProfileSpec) -> Vec<ProfileProblem> {
    let loc = &spec.location;
    let mut out = Vec::new();
    match loc.location_type {
        LocationType::Local if loc.path.as_deref().is_none_or(str::is_empty) => {
            out.push(problem("location.path", "missing: set the directory of a local profile"));
        }
        LocationType::S3Compliant | LocationType::Gcs | LocationType::Azure if loc.bucket.is_empty() => {
            out.push(problem("location.bucket", "missing: set the bucket (--bucket)"));
        }
        LocationType::Kopia => out.push(problem(
            "location.type",
            "kopia (a Kopia repository server) is not supported: point the Profile at the object store \
             (s3Compliant, gcs, azure) or a local directory",
        )),
        _ => {}
    }
    match spec.credential.credential_type {
        CredentialType::KeyPair if loc.location_type != LocationType::Local => match &spec.credential.key_pair {
            None => out.push(problem("credential.keyPair", "missing: set idField, secretField and secret")),
            Some(kp) => {
                for (field, value) in
                    [("idField", &kp.id_field), ("secretField", &kp.secret_field), ("secret.name", &kp.secret.name)]
                {
                    if value.is_empty() {
                        out.push(problem(&format!("credential.keyPair.{field}"), "missing"));
                    }
                }
            }
        },
        CredentialType::Secret if spec.credential.secret.as_ref().is_none_or(|r| r.name.is_empty()) => {
            out.push(problem("credential.secret", "missing: name the Secret holding the credential"));
        }
        _ => {}
    }
    for (key, value) in &spec.store_options {
        if let Err(e) = kanister_profile::check_network_option(key, value) {
            out.push(problem("storeOptions", e));
        }
    }
    out
}

/// Every problem of a Profile: fields and Secret first, then the probe (write, read, delete).
pub async fn check(spec: &ProfileSpec, secret: &SecretData) -> Vec<ProfileProblem> {
    let store = match store(spec, secret) {
        Ok(s) => s,
        Err(problems) => return problems,
    };
    let path = StorePath::from(format!("kanister-probe-{:016x}", rand::random::<u64>()));
    let body = b"kanister profile probe".to_vec();
    let what = |op: &str, e: object_store::Error| {
        problem("location", format!("cannot {op} the probe object {path}: {e}; check the location and the credentials"))
    };
    if let Err(e) = store.put(&path, body.clone().into()).await {
        return vec![what("write", e)];
    }
    let mut problems = Vec::new();
    match store.get(&path).await {
        Ok(r) => match r.bytes().await {
            Ok(b) if b.as_ref() == body.as_slice() => {}
            Ok(_) => problems.push(problem("location", format!("the probe object {path} read back differs"))),
            Err(e) => problems.push(what("read", e)),
        },
        Err(e) => problems.push(what("read", e)),
    }
    if let Err(e) = store.delete(&path).await {
        problems.push(what("delete", e));
    }
    problems
}
